"""mlflow_forget.py end to end on digits: the papers' command, MLflow contents, bad input."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import EPOCHS, REPO, forget_cmd, only_run, run_in_process, run_script

import utils
from dataset import UserError
from experiments.forget import build_parser, find_ideal


@pytest.mark.slow
def test_papers_command_logs_a_complete_run(digits_models, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    proc = run_script(*forget_cmd(digits_models, uri))
    assert "done: GA+VarGrad" in proc.stdout
    c, r = only_run(uri)
    assert r.info.status == "FINISHED" and r.info.run_name == "GA+VarGrad"
    p, m, t = r.data.params, r.data.metrics, r.data.tags
    assert p["beta"] == "0.9" and p["quantile"] == "0.55" and p["unlearn"] == "VarGrad"
    assert p["method"] == "GA" and p["addon"] == "VarGrad" and p["addon.quantile"] == "0.55"
    assert p["recipe_lr"] == "0.0001" and p["recipe_epochs"] == "4"
    # the speed options left unset are resolved to the device's defaults and recorded
    assert {k: p[k] for k in ("amp", "channels_last", "compile")} == {
        k: str(v) for k, v in utils.SPEED_DEFAULTS["cpu"].items()}
    for k in ("RA", "FA", "UA", "TA", "VA", "RTE", "eval_time"):
        assert k in m
    assert m["UA"] == pytest.approx(100 - m["FA"]) and m["RA"] > 90
    kept = c.get_metric_history(r.info.run_id, "train/kept_share")
    assert len(kept) == 4 and all(0 < k.value < 1 for k in kept)
    assert Path(t["checkpoint"]).is_file() and t["git_commit"] and t["version.torch"]
    arts = [a.path for a in c.list_artifacts(r.info.run_id)]
    assert any(a.endswith("_metrics.json") for a in arts)
    assert (tmp_path / "mlruns" / "artifacts").is_dir()


@pytest.mark.slow
def test_main_forget_is_the_same_run_without_mlflow(digits_models, tmp_path):
    """The same command through both scripts: the same metrics; main_forget.py's record holds what
    the MLflow run holds (parameters, tags, per-epoch history, status)."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    cmd = forget_cmd(digits_models, uri)
    run_script(*cmd)
    c, r = only_run(uri)
    save = digits_models["save_dir"]
    proc = run_script("main_forget.py", *cmd[1:])
    assert "warning: --tracking_uri and --experiment are for mlflow_forget.py" in proc.stderr
    assert "UA " in proc.stdout and "polarity" in proc.stdout  # the printed table
    (record_path,) = (save / "unlearned").glob("*_run.json")
    record = json.loads(record_path.read_text())
    metrics = json.loads((save / "unlearned" / f"{record['run_id']}_metrics.json").read_text())
    assert record["status"] == "FINISHED" and record["run_name"] == "GA+VarGrad"
    timing = {"RTE", "eval_time", "train/time_s"}
    # the summary keeps an undefined metric as NaN (rUA where the references are too close); stores drop it
    mine = {k: v for k, v in metrics["metrics"].items() if k not in timing and v == v}
    assert mine == {k: v for k, v in r.data.metrics.items() if "/" not in k and k not in timing}
    assert {k: hist[-1][1] for k, hist in record["metrics"].items() if k not in timing} == \
        {k: v for k, v in r.data.metrics.items() if k not in timing}
    assert [v for _, v in record["metrics"]["train/kept_share"]] == \
        [m.value for m in sorted(c.get_metric_history(r.info.run_id, "train/kept_share"), key=lambda m: m.step)]
    differ = {"tracking_uri"}
    assert {k: v for k, v in record["params"].items() if k not in differ} == \
        {k: v for k, v in r.data.params.items() if k not in differ}
    assert record["tags"]["forget_sha1"] == r.data.tags["forget_sha1"]
    assert Path(record["tags"]["checkpoint"]).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_the_run_killed_not_failed_and_the_sweep_reruns_it(digits_models, tmp_path, sig):
    """SIGTERM is Slurm's pre-emption and time-limit signal; SIGINT is Ctrl-C."""
    from experiments import sweep

    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    cmd = forget_cmd(digits_models, uri, "--unlearn", "FT", "--unlearn_epochs", "500")
    proc = subprocess.Popen([sys.executable, "-u", *cmd], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    for line in proc.stdout:  # wait until it is unlearning
        if line.startswith("epoch 1/"):
            break
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig
    assert err.count("interrupted") == 1 and f"interrupted by {sig.name}" in err and "Traceback" not in err
    _, r = only_run(uri)
    assert r.info.status == "KILLED" and r.data.tags["failure_reason"] == f"interrupted by {sig.name}"
    line = sweep.Line(1, shlex.join(cmd), cmd)
    assert r.data.tags["command_hash"] == line.hash and line.hash not in sweep.finished_hashes([line], uri)


@pytest.mark.slow
def test_default_store_is_sqlite_under_mlruns(digits_models, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = forget_cmd(digits_models, "x")[:-3]  # drop --tracking_uri and --quiet
    cmd = [str(REPO / cmd[0]), *cmd[1:], "--unlearn", "FT", "--unlearn_epochs", "1", "--quiet"]
    proc = run_script(*cmd, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": ""} | env)
    assert "sqlite:///mlruns/mlflow.db" in proc.stdout
    _, r = only_run(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert r.info.run_name == "FT" and r.info.status == "FINISHED"


@pytest.mark.slow
def test_divergence_marks_run_failed(digits_models, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    cmd = forget_cmd(digits_models, uri, "--unlearn", "GA", "--unlearn_lr", "1e6", "--unlearn_epochs", "30")
    proc = run_in_process(*cmd, check=False)
    assert proc.returncode == 1 and "diverged" in proc.stderr and "Traceback" not in proc.stderr
    _, r = only_run(uri)
    assert r.info.status == "FAILED" and "non-finite" in r.data.tags["failure_reason"]


@pytest.mark.slow
@pytest.mark.parametrize("change, message", [
    ({"--mask": "{tmp}/nope.pth.tar"}, "not found; create it with: python main_baseline.py"),
    ({"--dataset": "mnist"}, "trained with dataset 'digits', but --dataset is 'mnist'"),
    ({"--arch": "resnet18"}, "trained with arch 'smallcnn', but --arch is 'resnet18'"),
    ({"--unlearn": "Foo"}, "unknown method 'Foo'"),
    ({"--unlearn": "GA+Foo"}, "unknown add-on 'Foo'"),
    ({"--num_indexes_to_replace": "99999"}, "larger than the training set"),
    ({"--quantile": "1.5"}, "--quantile must be in"),
    ({"--unlearn_lr": "0"}, "--unlearn_lr must be positive"),
    ({"--quantile": "0.55 --warmup_batches 1"}, "--warmup_batches must be at least 2"),
    ({"--unlearn": "RL --rl_mode both"}, "--rl_mode must be auto, split or union"),
    ({"--unlearn": "FT --evaluate {tmp}/missing.pth.tar"}, "missing.pth.tar not found"),
    ({"--mask": "{tmp}/mine.pth.tar"}, "(it writes {tmp}/1smallcnn_ep15model_SA_best.pth.tar; pass that as --mask)"),
])
def test_bad_input(digits_models, tmp_path, change, message):
    cmd = forget_cmd(digits_models, f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    for flag, value in change.items():
        first, *more = value.replace("{tmp}", str(tmp_path)).split()
        cmd[cmd.index(flag) + 1] = first
        cmd += more
    proc = run_in_process(*cmd, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message.replace("{tmp}", str(tmp_path)) in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "foreign", "no_state_dict"])
def test_a_damaged_checkpoint_is_named_with_how_to_make_it_again(digits_models, tmp_path, damage):
    bad = tmp_path / f"1smallcnn_ep{EPOCHS}model_SA_best.pth.tar"
    if damage == "truncated":
        bad.write_bytes(digits_models["original"].read_bytes()[:5000])
    elif damage == "foreign":
        bad.write_text('{"not": "a checkpoint"}')
    else:
        torch.save({"weights": 1}, bad)
    cmd = forget_cmd(digits_models, f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    cmd[cmd.index("--mask") + 1] = str(bad)
    proc = run_in_process(*cmd, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: checkpoint {bad} ")
    assert "make it again with: python main_baseline.py" in line and f"--save_dir {tmp_path}" in line


@pytest.mark.slow
def test_help_lists_registered_methods_and_addons():
    out = run_script("mlflow_forget.py", "--help").stdout
    for name in ("VarGrad", "SCRUB", "BadTeacher", "NegGrad+", "--msteps", "--beta", "--kd_T", "--bn_stats",
                 "--optimizer", "--evaluate", "--rl_mode", "--forget_batch_size"):
        assert name in out
    # the examples keep their line breaks (copy-pasteable shell lines)
    assert "--save_dir ./results/cifar10 \\\n        --mask" in out


def _weights(path) -> dict:
    return utils.read_torch_file(path)["state_dict"]


def _without(cmd: list[str], *flags: str) -> list[str]:
    """The command without each flag's first occurrence and its value."""
    cmd = list(cmd)
    for flag in flags:
        i = cmd.index(flag)
        del cmd[i:i + 2]
    return cmd


def _class_cmd(models: dict, uri: str, *extra: str) -> list[str]:
    """Forget the whole class 3 (its ideal model is in the fixture), lr 0.01, 3 epochs."""
    cmd = _without(forget_cmd(models, uri, "--unlearn_lr", "0.01", "--unlearn_epochs", "3", *extra),
                   "--num_indexes_to_replace")
    cmd[cmd.index("--class_to_replace") + 1] = "3"
    return cmd


@pytest.mark.slow
def test_vargrad_beta0_half_and_mask_end_with_bit_identical_weights(digits_models, tmp_path):
    """The add-on is the only difference between the runs, so the batch streams must match."""
    paths = []
    for spec, extra in (("GA+Mask", []), ("GA+VarGrad", ["--beta", "0", "--quantile", "0.5"])):
        uri = f"sqlite:///{tmp_path}/{spec}/mlflow.db"
        cmd = _without(_class_cmd(digits_models, uri, "--unlearn", spec), "--beta", "--quantile")  # seed's flags
        run_in_process(*cmd, *extra)
        paths.append(only_run(uri)[1].data.tags["checkpoint"])
    a, b = _weights(paths[0]), _weights(paths[1])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], _weights(digits_models["original"])[k]) for k in a)  # it did unlearn


@pytest.mark.slow
def test_frozen_weights_and_frozen_bn_stats_leave_the_model_bit_identical(digits_models, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    run_in_process(*_class_cmd(digits_models, uri, "--quantile", "1", "--bn_stats", "freeze"))
    _, r = only_run(uri)
    assert r.data.params["bn_stats"] == "freeze" and r.data.metrics["train/kept_share"] == 0
    orig, after = _weights(digits_models["original"]), _weights(r.data.tags["checkpoint"])
    assert all(torch.equal(orig[k], after[k]) for k in orig)


@pytest.mark.slow
def test_evaluate_the_ideal_model_scores_exactly_ideal(digits_models, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    proc = run_in_process(*_class_cmd(digits_models, uri, "--evaluate", str(digits_models["ideal_class"])))
    assert "no unlearning" in proc.stdout
    _, r = only_run(uri)
    m, t = r.data.metrics, r.data.tags
    assert r.info.run_name == "evaluate:ideal" and m["RTE"] == 0
    assert m["rUA"] == 1 and m["KL_forget"] == pytest.approx(0, abs=1e-9) and m["avg_gap"] == 0
    assert m["FID_forget"] == pytest.approx(0, abs=1e-6) and m["FID_test"] == pytest.approx(0, abs=1e-6)
    assert m["MIA"] == m["ideal/MIA"] and m["loss_MIA_auc"] == m["ideal/loss_MIA_auc"]
    assert t["polarity.loss_MIA_auc"] == "closer to ideal" and t["polarity.UA"] == "closer to ideal"
    assert "closer to ideal" in next(line for line in proc.stdout.splitlines() if line.startswith("loss_MIA_auc"))


@pytest.mark.slow
def test_random_forgetting_keeps_the_loss_attack_target_of_half(digits_models, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    run_in_process(*forget_cmd(digits_models, uri, "--unlearn", "FT", "--unlearn_epochs", "1"))
    assert only_run(uri)[1].data.tags["polarity.loss_MIA_auc"] == "closer to 0.5"


@pytest.mark.slow
def test_badteacher_runs_its_published_recipe_by_default(digits_models, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    run_in_process(*_without(forget_cmd(digits_models, uri, "--unlearn", "BadTeacher"),
                         "--unlearn_lr", "--unlearn_epochs", "--beta", "--quantile"))
    p = only_run(uri)[1].data.params
    assert (p["recipe_optimizer"], p["recipe_lr"], p["recipe_epochs"], p["recipe_weight_decay"]) == \
        ("adam", "0.0001", "1", "0.0")


def _args(**kw) -> argparse.Namespace:
    base = dict(ideal=None, dataset="digits", arch="smallcnn", seed=1, class_to_replace=-1, data="./data", epochs=2,
                save_dir="results")
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize("flag, accepted, refused", [
    ("--unlearn_epochs", "1", "0"),
    ("--batch_size", "1", "0"),
    ("--unlearn_lr", "1e-12", "0"),
    ("--unlearn_lr", "1e-12", "-1e-12"),
    ("--mia_svc_max", "10", "9"),
])
def test_unlearning_cli_boundaries(tmp_path, flag, accepted, refused):
    """mlflow_forget.py checks these before it looks for the original model: the accepted value
    gets as far as the missing checkpoint, the refused one stops at its own one-line error."""
    common = ["--dataset", "digits", "--data", str(tmp_path), "--save_dir", str(tmp_path / "out"),
              "--mask", str(tmp_path / "absent.pth.tar"), "--unlearn", "FT", "--quiet"]
    ok = run_in_process("mlflow_forget.py", *common, flag, accepted, check=False)
    assert ok.returncode == 2 and "absent.pth.tar not found" in ok.stderr, ok.stderr
    bad = run_in_process("mlflow_forget.py", *common, flag, refused, check=False)
    assert bad.returncode == 2 and flag in bad.stderr and "not found" not in bad.stderr, bad.stderr
    assert not (tmp_path / "out").exists()  # nothing written by a refused run


def test_unlearning_parser_types_and_choices(capsys):
    """The papers' flags parse to typed values; an optimizer outside the choices is refused by the parser."""
    parser = build_parser("doc")
    args = parser.parse_args(["--warmup", "2", "--optimizer", "adam", "--unlearn_lr", "0.01", "--unlearn_epochs", "3",
                              "--beta", "0.9", "--quantile", "0.55", "--class_to_replace", "-1"])
    assert (args.warmup, args.optimizer, args.unlearn_lr, args.unlearn_epochs) == (2, "adam", 0.01, 3)
    assert (args.beta, args.quantile, args.class_to_replace) == (0.9, 0.55, -1)
    with pytest.raises(SystemExit):
        parser.parse_args(["--optimizer", "rmsprop"])
    assert "invalid choice: 'rmsprop'" in capsys.readouterr().err


def test_the_ideal_model_of_another_seed_or_forget_set_is_refused(tmp_path):
    path = tmp_path / "ideal.pth.tar"
    split = SimpleNamespace(info={"forget_sha1": "abc", "num_indexes_to_replace": 5})
    torch.save({"state_dict": {}, "dataset": "digits", "arch": "smallcnn", "seed": 1,
                "split": {"forget_sha1": "abc", "class_to_replace": -1, "num_indexes_to_replace": 5}}, path)
    assert find_ideal(_args(), split, path, "make it")[0] == path
    with pytest.raises(UserError, match="trained with seed 1, this run uses --seed 2"):
        find_ideal(_args(seed=2), split, path, "make it")
    other = SimpleNamespace(info={"forget_sha1": "def", "num_indexes_to_replace": 5})
    with pytest.raises(UserError, match="another forget set"):
        find_ideal(_args(), other, path, "make it")
    with pytest.raises(UserError, match="--ideal .* not found; create it with: make it"):
        find_ideal(_args(ideal=str(tmp_path / "missing.pth.tar")), split, path, "make it")
    assert find_ideal(_args(), split, tmp_path / "absent.pth.tar", "make it") == (None, None)


def test_the_ideal_model_of_another_data_set_or_architecture_is_refused(tmp_path, capsys):
    """The ideal checkpoint is checked like the original: data set, architecture, and a forget-set
    record (one without it is refused as another forget set, not a crash); the messages carry the
    command that makes the right one and both forget sets."""
    path = tmp_path / "ideal.pth.tar"
    split = SimpleNamespace(info={"forget_sha1": "abc", "num_indexes_to_replace": 5})
    record = {"forget_sha1": "xyz", "class_to_replace": 4, "num_indexes_to_replace": 9}
    torch.save({"state_dict": {}, "dataset": "digits", "arch": "smallcnn", "seed": 1, "split": record}, path)
    with pytest.raises(UserError, match="trained with dataset 'digits', but --dataset is 'fashionmnist'"):
        find_ideal(_args(dataset="fashionmnist"), split, path, "make it")
    with pytest.raises(UserError, match="trained with arch 'smallcnn', but --arch is 'resnet18'"):
        find_ideal(_args(arch="resnet18"), split, path, "make it")
    with pytest.raises(UserError, match=r"another forget set \(C=4, N=9\) than this run's \(C=-1, N=5\)"):
        find_ideal(_args(), split, path, "make it")
    torch.save({"state_dict": {}, "dataset": "digits", "arch": "smallcnn", "seed": 1}, path)
    with pytest.raises(UserError, match=r"another forget set \(C=None, N=None\)"):
        find_ideal(_args(), split, path, "make it")
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="make it again with: make it"):
        find_ideal(_args(), split, path, "make it")
    find_ideal(_args(), split, tmp_path / "absent.pth.tar", "python main_ideal.py ...")
    assert "Avg. Gap need it: python main_ideal.py ..." in capsys.readouterr().out
