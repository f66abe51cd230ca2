"""Evaluation end to end on digits: references, caching, the ideal model's checks, and the parser."""

from __future__ import annotations

import csv

import pytest
from conftest import forget_cmd, only_run, run_in_process
from mlflow import MlflowClient

from dataset import forget_split, load_data
from evaluation.closeness import rua_threshold
from evaluation.report import against_references
from experiments.references import reference
from models import create_model
from utils import load_checkpoint

pytestmark = pytest.mark.slow


def _reference(path, data, split, forgotten=None):
    ckpt = load_checkpoint(path)

    def build():
        m = create_model(ckpt["arch"], ckpt["num_classes"], 1)
        m.load_state_dict(ckpt["state_dict"])
        return m
    return reference(path, build, data, split, forgotten, seed=1)


def test_original_is_more_exposed_than_ideal_on_random_forgetting(digits_models):
    data = load_data("digits", "./data", seed=1)
    split = forget_split(data, 1, -1, 100)
    orig, _ = _reference(digits_models["original"], data, split)
    ideal, _ = _reference(digits_models["ideal_random"], data, split)
    assert orig["MIA"] < ideal["MIA"] and orig["MIA_entropy"] < ideal["MIA_entropy"]
    assert orig["UA"] < ideal["UA"]


def test_ideal_against_itself_and_cache(digits_models):
    data = load_data("digits", "./data", seed=1)
    split = forget_split(data, 1, 3, None)
    orig, _ = _reference(digits_models["original"], data, split, 3)
    ideal, ideal_out = _reference(digits_models["ideal_class"], data, split, 3)
    res = against_references(ideal_out, ideal, orig, ideal, ideal_out)
    assert res["rUA"] == 1 and res["FID_forget"] == pytest.approx(0, abs=1e-6) and res["avg_gap"] == 0
    assert ideal["FA"] < 5 and ideal["TA_forgotten_class"] < 5
    caches = list(digits_models["save_dir"].glob("*_C3_*ideal.eval_*.pt"))
    assert len(caches) == 1
    stamp = caches[0].stat().st_mtime_ns
    again, _ = _reference(digits_models["ideal_class"], data, split, 3)
    assert again == ideal and caches[0].stat().st_mtime_ns == stamp  # read back, not recomputed


def test_run_logs_closeness_to_ideal_and_reference_figures(digits_models, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    proc = run_in_process(*forget_cmd(digits_models, uri, "--unlearn", "NegGrad+VarGrad", "--unlearn_lr", "0.01"))
    assert "polarity" in proc.stdout and "original" in proc.stdout and "ideal" in proc.stdout
    _, r = only_run(uri)
    m, t = r.data.metrics, r.data.tags
    for k in ("FID_forget", "FID_test", "KL_forget", "KL_test", "UA_gap", "avg_gap", "MIA", "MIA_m_entropy",
              "loss_MIA_auc", "loss_MIA_acc", "original/UA", "original/MIA", "ideal/UA", "ideal/MIA", "RTE",
              "eval_time"):
        assert k in m, k
    # rUA is logged exactly when the ideal and the original model differ enough to define it
    assert ("rUA" in m) == (abs(m["ideal/UA"] - m["original/UA"]) >= rua_threshold(100))  # N=100 forget samples
    assert t["polarity.FID_forget"] == "lower" and t["polarity.UA"] == "closer to ideal"
    assert t["ideal_checkpoint"].endswith("_C-1_N100_ideal.pth.tar")


def test_wrong_ideal_is_refused(digits_models, tmp_path):
    cmd = forget_cmd(digits_models, f"sqlite:///{tmp_path}/mlruns/mlflow.db", "--ideal",
                     str(digits_models["ideal_class"]))
    proc = run_in_process(*cmd, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "another forget set" in proc.stderr and "C=3" in proc.stderr


def test_without_ideal_the_run_says_how_to_make_it(digits_models, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    cmd = forget_cmd(digits_models, uri, "--num_indexes_to_replace", "50", "--unlearn", "FT", "--unlearn_epochs", "1")
    proc = run_in_process(*cmd)
    assert proc.stdout.count("python main_ideal.py") == 1 and "--num_indexes_to_replace 50" in proc.stdout
    _, r = only_run(uri)
    assert "MIA" in r.data.metrics and "original/UA" in r.data.metrics and "rUA" not in r.data.metrics


def test_parser_keeps_finished_failed_and_running_runs(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment("digits")
    done = c.create_run(exp, run_name="GA", tags={"command_hash": "abc", "forget_sha1": "f00", "num_forget": "100",
                                                  "forget_mode": "random", "polarity.UA": "closer to ideal"})
    c.log_param(done.info.run_id, "unlearn", "GA")
    c.log_param(done.info.run_id, "seed", "1")
    c.log_metric(done.info.run_id, "UA", 12.5)
    c.set_terminated(done.info.run_id, "FINISHED")
    old = c.create_run(exp, run_name="FT")  # made before the num_forget tag: N from its parameters
    c.log_param(old.info.run_id, "num_indexes_to_replace", "450")
    c.log_param(old.info.run_id, "seed", "2")
    c.set_terminated(old.info.run_id, "FINISHED")
    failed = c.create_run(exp, run_name="GA+Mask")
    c.set_tag(failed.info.run_id, "failure_reason", "non-finite unlearn loss")
    c.set_terminated(failed.info.run_id, "FAILED")
    running = c.create_run(exp, run_name="RL")
    out = tmp_path / "runs.csv"
    proc = run_in_process("mlruns_parser.py", "--tracking_uri", uri, "--output", str(out))
    assert "4 runs" in proc.stdout
    reader = csv.DictReader(out.open())
    assert reader.fieldnames == ["run_id", "experiment", "run_name", "status", "start_time", "end_time",
                                 "failure_reason", "command_hash", "forget_sha1", "forget_mode", "num_forget",
                                 "checkpoint", "ideal_checkpoint", "git_commit", "command", "UA",
                                 "param.num_indexes_to_replace", "param.seed", "param.unlearn"]
    rows = {r["run_id"]: r for r in reader}
    assert rows[done.info.run_id]["status"] == "FINISHED" and rows[done.info.run_id]["UA"] == "12.5"
    assert rows[done.info.run_id]["param.unlearn"] == "GA" and rows[done.info.run_id]["start_time"]
    assert rows[done.info.run_id]["command_hash"] == "abc" and rows[done.info.run_id]["forget_sha1"] == "f00"
    assert rows[done.info.run_id]["num_forget"] == "100" and rows[old.info.run_id]["num_forget"] == "450"
    assert rows[done.info.run_id]["experiment"] == "digits" and rows[done.info.run_id]["run_name"] == "GA"
    assert list(csv.DictReader((tmp_path / "runs_polarity.csv").open())) == [
        {"metric": "UA", "forget_mode": "random", "polarity": "closer to ideal"}]
    seed1 = run_in_process("mlruns_parser.py", "--tracking_uri", uri, "--output", str(tmp_path / "s.csv"), "--filter",
                       "params.seed = '1'")
    assert "1 runs (1 FINISHED)" in seed1.stdout
    assert [r["run_id"] for r in csv.DictReader((tmp_path / "s.csv").open())] == [done.info.run_id]
    bad = run_in_process("mlruns_parser.py", "--tracking_uri", uri, "--filter", "params.seed =", "--output",
                         str(tmp_path / "b.csv"), check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --filter 'params.seed ='")
    assert not (tmp_path / "b.csv").exists()
    assert rows[failed.info.run_id]["status"] == "FAILED"
    assert rows[failed.info.run_id]["failure_reason"] == "non-finite unlearn loss"
    assert rows[running.info.run_id]["status"] == "RUNNING"
    filtered = run_in_process("mlruns_parser.py", "--tracking_uri", uri, "--experiment", "nope", "--output",
                          str(tmp_path / "x.csv"), check=False)
    assert filtered.returncode == 2 and "no experiment 'nope'" in filtered.stderr


def test_parser_on_missing_or_empty_store_writes_nothing(tmp_path):
    out = tmp_path / "runs.csv"
    proc = run_in_process("mlruns_parser.py", "--tracking_uri", f"sqlite:///{tmp_path}/none/mlflow.db", "--output",
                      str(out), check=False)
    assert proc.returncode == 2 and "no MLflow store" in proc.stderr and not out.exists()
    uri = f"sqlite:///{tmp_path}/empty/mlflow.db"
    MlflowClient(tracking_uri=uri).create_experiment("digits") if (tmp_path / "empty").mkdir() is None else None
    proc = run_in_process("mlruns_parser.py", "--tracking_uri", uri, "--output", str(out), check=False)
    assert proc.returncode == 2 and "no runs" in proc.stderr and not out.exists()
