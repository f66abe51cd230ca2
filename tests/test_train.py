"""End to end: main_baseline.py and main_ideal.py on digits, and their bad-input errors."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from conftest import EPOCHS, REPO, load_model, run_in_process, run_script

from dataset import UserError, load_data
from experiments import trainer
from models import create_model
from unlearn.impl import Recipe
from utils import load_checkpoint, read_torch_file


@pytest.mark.slow
def test_original_model_is_accurate_and_records_its_making(digits_models):
    ckpt, _ = load_model(digits_models["original"], dataset="digits", arch="smallcnn")
    assert ckpt["accuracy"]["TA"] >= 90
    assert ckpt["kind"] == "original" and ckpt["epochs"] == EPOCHS and ckpt["seed"] == 1
    assert ckpt["split"]["mode"] == "random" and ckpt["split"]["num_forget"] == 100
    assert ckpt["provenance"]["torch"] == torch.__version__ and "git_commit" in ckpt["provenance"]
    assert ckpt["args"]["dataset"] == "digits"
    record = json.loads(digits_models["original"].with_name(
        digits_models["original"].name.replace(".pth.tar", ".forget.json")).read_text())
    assert record["forget_idx"] == ckpt["forget_idx"].tolist() and len(record["forget_idx"]) == 100


@pytest.mark.slow
def test_ideal_models_forget_accuracy(digits_models):
    rnd, _ = load_model(digits_models["ideal_random"])
    cls, _ = load_model(digits_models["ideal_class"])
    orig, _ = load_model(digits_models["original"])
    assert torch.equal(rnd["forget_idx"], orig["forget_idx"])  # the same D_F from the same arguments
    # random forgetting: unseen samples are classified about as well as the test set
    assert abs(rnd["accuracy"]["FA"] - rnd["accuracy"]["TA"]) < 8
    assert rnd["accuracy"]["FA"] < orig["accuracy"]["FA"] or orig["accuracy"]["FA"] == 100
    # class forgetting: the class was never seen, so it is (almost) never predicted
    assert cls["accuracy"]["FA"] < 5 and cls["accuracy"]["TA"] >= 90
    assert cls["split"]["mode"] == "class"


@pytest.mark.slow
def test_checkpoint_of_other_dataset_or_arch_is_refused(digits_models):
    with pytest.raises(UserError, match="dataset 'digits', but --dataset is 'cifar10'"):
        load_checkpoint(digits_models["original"], dataset="cifar10")
    with pytest.raises(UserError, match="arch 'smallcnn', but --arch is 'resnet18'"):
        load_checkpoint(digits_models["original"], arch="resnet18")


@pytest.mark.slow
def test_cpu_training_is_deterministic(tmp_path):
    args = ["--dataset", "digits", "--epochs", "2", "--seed", "5", "--quiet", "--class_to_replace", "3"]
    proc = run_script("main_baseline.py", *args, "--save_dir", str(tmp_path / "a"))
    run_script("main_baseline.py", *args, "--save_dir", str(tmp_path / "b"))
    # the final line's val acc is the best epoch's, on the same samples (all classes, also when a class is
    # to be forgotten), and says so
    epochs = [float(line.split("val acc ")[1].split()[0]) for line in proc.stdout.splitlines()
              if line.startswith("epoch ")]
    final = proc.stdout.strip().splitlines()[-1]
    assert f"val acc {max(epochs):.2f} (all classes)" in final and "(D_F and D_R, its training set)" in final
    a = read_torch_file(tmp_path / "a" / "5smallcnn_ep2model_SA_best.pth.tar")["state_dict"]
    b = read_torch_file(tmp_path / "b" / "5smallcnn_ep2model_SA_best.pth.tar")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_runs_training_the_same_model_at_once_train_it_once(tmp_path):
    """Two sweep lines that need the same original model: one trains it, the other waits and reuses it;
    each writer has its own temporary file, so neither can corrupt the other's."""
    cmd = [sys.executable, "-u", "main_baseline.py", "--dataset", "digits", "--epochs", "2", "--seed", "3", "--quiet",
           "--save_dir", str(tmp_path)]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sorted("reusing it" in out for out in outs) == [False, True]
    assert sum(out.count("epoch 1/2") for out in outs) == 1  # trained once
    load_checkpoint(tmp_path / "3smallcnn_ep2model_SA_best.pth.tar", dataset="digits")
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow
def test_an_interrupted_training_resumes_to_the_same_weights_bit_for_bit(tmp_path):
    import signal

    from experiments import sweep

    args = ["main_baseline.py", "--dataset", "digits", "--epochs", "8", "--seed", "4", "--quiet",
            "--decreasing_lr", "3,6"]
    name = "4smallcnn_ep8model_SA_best.pth.tar"
    run_script(*args, "--save_dir", str(tmp_path / "whole"))
    proc = subprocess.Popen([sys.executable, "-u", *args, "--save_dir", str(tmp_path / "cut")], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("epoch 3/8"):
            break
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 143 and not (tmp_path / "cut" / name).exists()
    assert (tmp_path / "cut" / name.replace(".pth.tar", ".resume.pt")).is_file()
    # the sweep runner resumes a training line; the line's hash does not change
    line = sweep.Line(1, " ".join(args), [*args, "--save_dir", str(tmp_path / "cut")])
    assert sweep.command_of(line)[-1] == "--resume"
    resumed = run_script(*line.argv, "--resume")
    assert "resuming after epoch" in resumed.stdout and "epoch 1/8" not in resumed.stdout
    whole = read_torch_file(tmp_path / "whole" / name)
    cut = read_torch_file(tmp_path / "cut" / name)
    assert all(torch.equal(whole["state_dict"][k], cut["state_dict"][k]) for k in whole["state_dict"])
    assert [h["utility"] for h in whole["history"]] == [h["utility"] for h in cut["history"]]
    assert cut["best_epoch"] == whole["best_epoch"]
    assert not (tmp_path / "cut" / name.replace(".pth.tar", ".resume.pt")).exists()
    record = json.loads((tmp_path / "cut" / name.replace(".pth.tar", ".forget.json")).read_text())
    assert record["command_hash"] == line.hash
    # a finished checkpoint is never trained over
    again = run_script(*line.argv, "--resume")
    assert "is finished; --resume leaves it as it is" in again.stdout
    assert read_torch_file(tmp_path / "cut" / name)["train_time_s"] == cut["train_time_s"]


@pytest.mark.slow
def test_ctrl_c_says_how_to_go_on_and_a_plain_rerun_keeps_the_progress(tmp_path):
    import shlex
    import signal

    args = ["main_baseline.py", "--dataset", "digits", "--epochs", "6", "--seed", "5", "--quiet",
            "--save_dir", str(tmp_path)]
    state = tmp_path / "5smallcnn_ep6model_SA_best.resume.pt"
    proc = subprocess.Popen([sys.executable, "-u", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("epoch 3/6"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"interrupted by SIGINT; the progress after the last finished epoch is kept in {state}; "
                           "continue with: python ")
    command = shlex.split(line.split("continue with: ", 1)[1])
    assert command[1:] == [*args, "--resume"]
    kept = state.read_bytes()
    # a plain rerun neither trains over the progress nor starts: one line naming --resume and --restart
    again = run_in_process(*args, check=False)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    (line,) = again.stderr.strip().splitlines()
    assert f"{state} holds the progress of an interrupted run" in line and "--resume" in line and "--restart" in line
    assert state.read_bytes() == kept and "epoch 1/6" not in again.stdout
    both = run_in_process(*args, "--resume", "--restart", check=False)
    assert both.returncode == 2 and "give one" in both.stderr and state.read_bytes() == kept
    # the command the interrupt named continues it
    resumed = run_in_process(*command[1:])
    assert "resuming after epoch" in resumed.stdout and not state.exists()


@pytest.mark.slow
def test_restart_throws_the_saved_progress_away_and_trains_from_scratch(tmp_path):
    args = ["main_baseline.py", "--dataset", "digits", "--epochs", "2", "--seed", "5", "--quiet",
            "--save_dir", str(tmp_path)]
    state = tmp_path / "5smallcnn_ep2model_SA_best.resume.pt"
    state.write_bytes(b"progress of an earlier run")
    fresh = run_in_process(*args, "--restart")
    assert "resuming" not in fresh.stdout and not state.exists()
    assert (tmp_path / "5smallcnn_ep2model_SA_best.pth.tar").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("state", ["damaged", "other recipe"])
def test_a_bad_resumable_state_is_named_and_refused(tmp_path, state):
    path = tmp_path / "4smallcnn_ep3model_SA_best.resume.pt"
    if state == "damaged":
        path.write_bytes(b"\x80\x02garbage")
    else:
        torch.save({"loop": {}, "best": {}, "wall": 0.0, "seed": 4, "recipe": {"lr": 0.5}}, path)
    proc = run_in_process("main_baseline.py", "--dataset", "digits", "--epochs", "3", "--seed", "4", "--quiet",
                          "--save_dir", str(tmp_path), "--resume", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {path} ") and ("truncated or foreign" if state == "damaged" else
                                                   "another recipe or seed") in line
    assert not (tmp_path / "4smallcnn_ep3model_SA_best.pth.tar").exists()


@pytest.mark.slow
def test_resnet18_trains_on_digits(tmp_path):
    """The papers' command with --dataset digits in place of cifar10 and a smaller --epochs."""
    run_script("main_baseline.py", "--data", "./data", "--dataset", "digits", "--arch", "resnet18",
               "--save_dir", str(tmp_path), "--epochs", "1", "--num_indexes_to_replace", "45", "--quiet")
    ckpt = load_checkpoint(tmp_path / "2resnet18_ep1model_SA_best.pth.tar", dataset="digits", arch="resnet18")
    assert ckpt["num_classes"] == 10


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--dataset", "cifar10", "--data", "{tmp}/nodata"], "place cifar-10-python.tar.gz"),
    (["--arch", "alexnet"], "invalid choice: 'alexnet' (choose from"),
    (["--dataset", "imagenet"], "invalid choice: 'imagenet' (choose from"),
    (["--class_to_replace", "10"], "outside [-1, 10)"),
    (["--num_indexes_to_replace", "5000"], "larger than class 0 allows: it has"),
    (["--class_to_replace", "-1", "--num_indexes_to_replace", "99999"], "larger than the training set"),
    (["--num_indexes_to_replace", "0"], "at least 1 sample"),
    (["--save_dir", "/proc/not_writable"], "is not writable"),
])
def test_bad_input_gives_one_line_error(tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--save_dir" not in args:
        args += ["--save_dir", str(tmp_path / "out")]
    proc = run_in_process("main_baseline.py", "--epochs", "1", "--quiet", *args, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]
    assert not list(tmp_path.rglob("*.pth.tar"))  # nothing trained, nothing written
    assert not (tmp_path / "out").exists() and not (tmp_path / "nodata").exists()  # no folder left behind


def test_every_script_reads_the_training_recipe_from_one_table():
    """main_baseline.py's --momentum... and main_backdoor.py's --train_momentum... are generated from
    utils.TRAIN_FLAGS: same defaults, and a value given to either reaches the same recipe field."""
    from experiments import backdoor, trainer
    from utils import TRAIN_FLAGS, train_recipe

    defaults = {name: default for name, (_, default, _) in TRAIN_FLAGS.items()}
    base, bd = trainer.build_parser(""), backdoor.build_parser("")
    assert train_recipe(base.parse_args([])) == defaults
    assert train_recipe(bd.parse_args([]), backdoor.RECIPE_PREFIX) == defaults
    given = {"lr": "0.05", "momentum": "0.5", "weight_decay": "0.001", "batch_size": "64", "decreasing_lr": "3,4",
             "warmup": "1", "epochs": "7"}
    expected = {"lr": 0.05, "momentum": 0.5, "weight_decay": 0.001, "batch_size": 64, "decreasing_lr": [3, 4],
                "warmup": 1, "epochs": 7}
    as_base = [w for k, v in given.items() for w in (f"--{k}", v)]
    as_backdoor = [w for k, v in given.items() for w in (f"--{'' if k in ('lr', 'epochs') else 'train_'}{k}", v)]
    assert train_recipe(base.parse_args(as_base)) == expected
    assert train_recipe(bd.parse_args(as_backdoor), backdoor.RECIPE_PREFIX) == expected


TINY = 1e-12


@pytest.mark.parametrize("name, accepted, refused", [
    ("epochs", 1, 0), ("batch_size", 1, 0), ("lr", TINY, 0.0), ("lr", TINY, -TINY)])
def test_training_recipe_boundaries(name, accepted, refused):
    recipe = {"epochs": 1, "batch_size": 1, "lr": 0.1}
    trainer.validate_recipe(recipe | {name: accepted})
    with pytest.raises(UserError, match=f"--{name} must be"):
        trainer.validate_recipe(recipe | {name: refused})
    prefixed = {"batch_size": "train_batch_size"}.get(name, name)  # --epochs and --lr keep their names
    with pytest.raises(UserError, match=f"--{prefixed} must be"):  # main_backdoor.py's flag names
        trainer.validate_recipe(recipe | {name: refused}, "train_")


def test_training_keeps_the_best_validation_epoch_not_the_last(monkeypatch):
    """fit reloads the weights of the epoch whose validation accuracy was highest (the first of
    equals), whatever came after: validation accuracies are scripted, the training is real."""
    data = load_data("digits", "./data", 0)
    snapshots, scripted = [], iter([40.0, 70.0, 55.0, 70.0, 20.0])

    def logits_of(model, data, x):
        snapshots.append(copy.deepcopy(model.state_dict()))
        return torch.zeros(len(x), 10)

    from unlearn import train as training

    monkeypatch.setattr(training, "logits_of", logits_of)
    monkeypatch.setattr(training, "accuracy", lambda logits, y: next(scripted))
    torch.manual_seed(0)
    model = create_model("smallcnn", 10, 1)
    history, best, _ = trainer.fit(model, data, data.train_idx[:256], data.val_idx,
                                   Recipe(lr=0.05, epochs=5, batch_size=64), seed=0, quiet=True, kind="test")
    assert [r["val_acc"] for r in history] == [40.0, 70.0, 55.0, 70.0, 20.0] and best == 2
    kept = model.state_dict()
    assert all(torch.equal(kept[k], snapshots[1][k]) for k in kept)
    assert not all(torch.equal(kept[k], snapshots[-1][k]) for k in kept if kept[k].is_floating_point())
