"""mlflow_forget.py end to end on digits: the papers' command, MLflow contents, bad input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import EPOCHS, REPO, run_script
from mlflow import MlflowClient

pytestmark = pytest.mark.slow


def forget_cmd(models: dict, uri: str, *extra: str) -> list[str]:
    """The papers' seed command, with digits in place of cifar10."""
    return ["mlflow_forget.py", "--save_dir", str(models["save_dir"]), "--mask", str(models["original"]),
            "--unlearn", "VarGrad", "--unlearn_epochs", "4", "--unlearn_lr", "0.0001", "--data", "./data",
            "--dataset", "digits", "--seed", "1", "--arch", "smallcnn", "--epochs", str(EPOCHS),
            "--num_indexes_to_replace", "100", "--beta", "0.9", "--quantile", "0.55", "--class_to_replace", "-1",
            "--tracking_uri", uri, "--quiet", *extra]


def only_run(uri: str, experiment: str = "digits"):
    c = MlflowClient(tracking_uri=uri)
    runs = c.search_runs([c.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return c, runs[0]


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
    for k in ("RA", "FA", "UA", "TA", "VA", "RTE", "eval_time"):
        assert k in m
    assert m["UA"] == pytest.approx(100 - m["FA"]) and m["RA"] > 90
    kept = c.get_metric_history(r.info.run_id, "train/kept_share")
    assert len(kept) == 4 and all(0 < k.value < 1 for k in kept)
    assert Path(t["checkpoint"]).is_file() and t["git_commit"] and t["version.torch"]
    arts = [a.path for a in c.list_artifacts(r.info.run_id)]
    assert any(a.endswith("_metrics.json") for a in arts)
    assert (tmp_path / "mlruns" / "artifacts").is_dir()


def test_default_store_is_sqlite_under_mlruns(digits_models, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = forget_cmd(digits_models, "x")[:-3]  # drop --tracking_uri and --quiet
    cmd = [str(REPO / cmd[0]), *cmd[1:], "--unlearn", "FT", "--unlearn_epochs", "1", "--quiet"]
    proc = run_script(*cmd, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": ""} | env)
    assert "sqlite:///mlruns/mlflow.db" in proc.stdout
    _, r = only_run(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert r.info.run_name == "FT" and r.info.status == "FINISHED"


def test_divergence_marks_run_failed(digits_models, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    cmd = forget_cmd(digits_models, uri, "--unlearn", "GA", "--unlearn_lr", "1e6", "--unlearn_epochs", "30")
    proc = run_script(*cmd, check=False)
    assert proc.returncode == 1 and "diverged" in proc.stderr and "Traceback" not in proc.stderr
    _, r = only_run(uri)
    assert r.info.status == "FAILED" and "non-finite" in r.data.tags["failure_reason"]


@pytest.mark.parametrize("change, message", [
    ({"--mask": "{tmp}/nope.pth.tar"}, "not found; create it with: python main_baseline.py"),
    ({"--dataset": "mnist"}, "trained with dataset 'digits', but --dataset is 'mnist'"),
    ({"--arch": "resnet18"}, "trained with arch 'smallcnn', but --arch is 'resnet18'"),
    ({"--unlearn": "Foo"}, "unknown method 'Foo'"),
    ({"--unlearn": "GA+Foo"}, "unknown add-on 'Foo'"),
    ({"--num_indexes_to_replace": "99999"}, "larger than the training set"),
    ({"--quantile": "1.5"}, "--quantile must be in"),
    ({"--unlearn_lr": "0"}, "--unlearn_lr must be positive"),
])
def test_bad_input(digits_models, tmp_path, change, message):
    cmd = forget_cmd(digits_models, f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    for flag, value in change.items():
        cmd[cmd.index(flag) + 1] = value.replace("{tmp}", str(tmp_path))
    proc = run_script(*cmd, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]


def test_help_lists_registered_methods_and_addons():
    out = run_script("mlflow_forget.py", "--help").stdout
    for name in ("VarGrad", "SCRUB", "BadTeacher", "NegGrad+", "--msteps", "--beta", "--kd_T"):
        assert name in out
