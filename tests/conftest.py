"""Shared fixtures: a tiny digits setup trained once per session by the real entry scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 15  # enough for ~97% test accuracy with smallcnn on digits, a few seconds each


def run_script(*args: str, cwd: Path = REPO, env: dict | None = None,
               check: bool = True) -> subprocess.CompletedProcess:
    """Run an entry script as a user would, from the repository root."""
    proc = subprocess.run([sys.executable, "-u", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONHASHSEED": "0", **(env or {})}, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_in_process(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run an entry script's __main__ in this process, from the repository root (no interpreter
    and import start-up, a few seconds per run); exit status, stdout and stderr as run_script
    returns them, and with `check` the same failure."""
    import contextlib
    import io
    import runpy
    import traceback

    out, err, code = io.StringIO(), io.StringIO(), 0
    argv = sys.argv
    sys.argv = [script, *args]
    try:
        with contextlib.chdir(REPO), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(REPO / script), run_name="__main__")
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = argv
    if check and code != 0:
        raise AssertionError(f"{' '.join([script, *args])} failed ({code}):\n{out.getvalue()[-3000:]}\n"
                             f"{err.getvalue()[-3000:]}")
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())


def load_model(path, **checks):
    """A checkpoint (checked as utils.load_checkpoint checks it) and the model it holds."""
    from models import create_model
    from utils import load_checkpoint

    ckpt = load_checkpoint(path, **checks)
    model = create_model(ckpt["arch"], ckpt["num_classes"], 1)
    model.load_state_dict(ckpt["state_dict"])
    return ckpt, model


@pytest.fixture(scope="session")
def digits_models(tmp_path_factory) -> dict:
    """Original model and the ideal models of a random (N=100) and a class (C=3) forget set."""
    save = tmp_path_factory.mktemp("digits")
    common = ["--dataset", "digits", "--epochs", str(EPOCHS), "--save_dir", str(save), "--seed", "1", "--quiet"]
    run_script("main_baseline.py", *common, "--class_to_replace", "-1", "--num_indexes_to_replace", "100")
    run_script("main_ideal.py", *common, "--class_to_replace", "-1", "--num_indexes_to_replace", "100")
    run_script("main_ideal.py", *common, "--class_to_replace", "3")
    return {"save_dir": save, "common": common,
            "original": save / f"1smallcnn_ep{EPOCHS}model_SA_best.pth.tar",
            "ideal_random": save / f"1smallcnn_ep{EPOCHS}_C-1_N100_ideal.pth.tar",
            "ideal_class": next(save.glob(f"1smallcnn_ep{EPOCHS}_C3_N*_ideal.pth.tar"))}


def forget_cmd(models: dict, uri: str, *extra: str) -> list[str]:
    """The papers' seed command, with digits in place of cifar10."""
    return ["mlflow_forget.py", "--save_dir", str(models["save_dir"]), "--mask", str(models["original"]),
            "--unlearn", "VarGrad", "--unlearn_epochs", "4", "--unlearn_lr", "0.0001", "--data", "./data",
            "--dataset", "digits", "--seed", "1", "--arch", "smallcnn", "--epochs", str(EPOCHS),
            "--num_indexes_to_replace", "100", "--beta", "0.9", "--quantile", "0.55", "--class_to_replace", "-1",
            "--tracking_uri", uri, "--quiet", *extra]


def only_run(uri: str, experiment: str = "digits"):
    """The one run of `experiment` in the store at `uri`, and a client."""
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    runs = c.search_runs([c.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return c, runs[0]


@pytest.fixture(scope="session")
def digits_data():
    """The digits data set (seed 0), in memory: the in-process tests' data."""
    from dataset import load_data

    return load_data("digits", "./data", seed=0)


@pytest.fixture(scope="session")
def digits_smallcnn(digits_data):
    """A smallcnn trained on all of digits' training set (FT, lr 0.1, 8 epochs, batches of 128, seed 0):
    the original model of the in-process tests (test_engine, test_zoo), trained once per session.
    Tests work on a copy (copy.deepcopy) and never change it."""
    import torch

    from models import create_model
    from unlearn.impl import Recipe, run
    from unlearn.methods.ft import FT

    torch.manual_seed(0)
    model = create_model("smallcnn", 10, 1)
    idx = digits_data.train_idx
    run(model, digits_data, idx[:0], idx, FT(), recipe=Recipe(lr=0.1, epochs=8, batch_size=128), seed=0,
        progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    yield model
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert not changed, f"a test changed the shared digits_smallcnn ({changed[:3]}): work on a copy"


def slurm_up() -> bool:
    """A Slurm cluster answers here (scripts/slurm_localhost.sh starts one)."""
    import shutil

    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return out.returncode == 0 and any(s.strip().startswith(("idle", "mixed", "alloc")) for s in out.stdout.split())


def wait_for_jobs(jobs: list[str], limit: float = 600) -> None:
    """Wait until the Slurm jobs leave the queue; fail the test, showing the queue, after `limit` s."""
    import time

    deadline = time.time() + limit
    while time.time() < deadline:
        q = subprocess.run(["squeue", "-h", "-j", ",".join(jobs)], capture_output=True, text=True).stdout
        if not q.strip():
            return
        time.sleep(2)
    queue = subprocess.run(["squeue", "-o", "%i %T %M %l %R"], capture_output=True, text=True).stdout
    pytest.fail(f"Slurm jobs {jobs} did not finish in {limit:.0f} s; the queue:\n{queue}")


def need_slurm() -> None:
    """Skip the test, saying how to get one, where no Slurm cluster answers."""
    if not slurm_up():
        pytest.skip("Slurm is not running here: start a one-node cluster with scripts/slurm_localhost.sh "
                    "(root, Debian packages); .ci/run does")


def submitted_jobs(stdout: str) -> list[str]:
    """The job ids a --slurm run printed (`... submitted job ID, ...`)."""
    return [line.split("submitted job ")[1].split(",")[0] for line in stdout.splitlines() if "submitted job" in line]
