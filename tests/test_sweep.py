"""Sweeps: generation, the local runner (parallel, resumable, failures reported),
concurrent logging to sqlite and to an MLflow server, and Slurm job arrays."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import EPOCHS, REPO, need_slurm, run_script, submitted_jobs, wait_for_jobs
from mlflow import MlflowClient

from array_param_file import default_grid
from experiments.sweep import Grid, generate, read_params
from utils import UserError, command_hash, script_argv


def small_grid(**kw) -> Grid:
    g = default_grid()
    g.seeds, g.unlearn = [1, 2], ["GA", "GA+VarGrad", "NegGrad+VarGrad", "SCRUB"]
    g.addon_params = {"beta": [0.9], "quantile": [0.5, 0.55]}
    g.method_params = {"alpha": [0.9, 0.99]}
    for k, v in kw.items():
        setattr(g, k, v)
    return g


def test_generation_counts_no_duplicates_and_lines_parse(tmp_path):
    base, params = generate(small_grid())
    # base: per seed one original + one ideal per forget scenario
    assert len(base) == 2 * (1 + 2)
    # per seed and scenario: GA 1, GA+VarGrad 2 quantiles, NegGrad+VarGrad 2 alphas x 2 quantiles, SCRUB 2 alphas
    assert len(params) == 2 * 2 * (1 + 2 + 4 + 2)
    assert len(set(base)) == len(base) and len(set(params)) == len(params)
    for name, lines in (("base.txt", base), ("params.txt", params)):
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        parsed = read_params(tmp_path / name)  # every line through its script's own parser
        assert len(parsed) == len(lines)
    assert all("--alpha" not in line for line in params if "--unlearn GA+VarGrad" in line)


@pytest.mark.slow
def test_array_param_file_writes_both_files_and_says_how_many(tmp_path):
    proc = run_script("array_param_file.py", "--out_dir", str(tmp_path), "--seeds", "1", "--unlearn", "GA", "FT")
    assert "base_params.txt: 3 lines" in proc.stdout and "params.txt: 4 lines" in proc.stdout
    assert len((tmp_path / "params.txt").read_text().splitlines()) == 4


@pytest.mark.parametrize("change, message", [
    ({"unlearn": ["GA", "Foo"]}, "unknown method 'Foo'"),
    ({"unlearn": ["GA+Bar"]}, "unknown add-on 'Bar'"),
    ({"datasets": ["imagenet"]}, "unknown data set 'imagenet'"),
    ({"archs": ["alexnet"]}, "unknown architecture 'alexnet'"),
    ({"method_params": {"alhpa": [1]}}, "no method has a hyper-parameter 'alhpa'"),
])
def test_bad_grid_fails_at_generation(change, message):
    with pytest.raises(UserError, match=message):
        generate(small_grid(**change))


def test_benchmark_seeds_methods_and_audits_replace_the_presets_and_are_checked():
    import argparse

    import benchmark

    def grid(**kw):
        a = argparse.Namespace(preset="fashionmnist", methods=None, seeds=None, audits=None)
        return benchmark.grid_of(argparse.Namespace(**(vars(a) | kw)))

    assert grid().seeds == [1, 2, 3]
    g = grid(seeds=[1], methods=["GA", "GA+VarGrad"], audits="probe,cka")
    _, params = generate(g)
    assert g.seeds == [1] and len(params) == 2 * 2  # two methods, two forget scenarios, one seed
    assert all("--seed 1 " in line and "--audits probe,cka" in line for line in params)
    assert benchmark.PRESETS["fashionmnist"].seeds == [1, 2, 3]  # the preset itself is left alone
    for seeds in ([1, 1], [-1]):
        with pytest.raises(UserError, match="--seeds must be distinct non-negative integers"):
            grid(seeds=seeds)


def test_malformed_line_reports_its_number(tmp_path):
    f = tmp_path / "params.txt"
    f.write_text("python -u mlflow_forget.py --dataset digits\n\n# a comment\npython -u mlflow_forget.py --bogus 1\n")
    with pytest.raises(UserError, match=r"params.txt:4: .*unrecognized arguments: --bogus"):
        read_params(f)
    f.write_text("python -u mlflow_forget.py --dataset 'digits\n")
    with pytest.raises(UserError, match="params.txt:1: malformed line"):
        read_params(f)
    f.write_text("python -u rm.py -rf /\n")
    with pytest.raises(UserError, match="params.txt:1: rm.py is not one of"):
        read_params(f)


def test_every_bad_line_is_reported_at_once_in_its_scripts_name(tmp_path):
    f = tmp_path / "params.txt"
    f.write_text("python -u mlflow_forget.py --dataset digits\n"
                 "pyhton -u mlflow_forget.py --dataset digits\n"
                 "python -u mlflow_forget.py --bogus 1\n"
                 "/usr/bin/python3.11 -u main_baseline.py --epochs 2\n"
                 "python3 main_ideal.py --epochs x\n"
                 "bash -c mlflow_forget.py\n")
    with pytest.raises(UserError) as e:
        read_params(f)
    text = str(e.value)
    assert text.startswith("4 bad lines, nothing run")
    assert "params.txt:2: pyhton -u is not a Python interpreter" in text
    assert "params.txt:3: mlflow_forget.py: error: unrecognized arguments: --bogus" in text
    assert "params.txt:5: main_ideal.py: error: argument --epochs" in text
    assert "params.txt:6: bash -c is not a Python interpreter" in text
    assert ":1:" not in text and ":4:" not in text and "run_params.py" not in text


@pytest.mark.slow
def test_runner_bad_jobs_and_missing_file(tmp_path):
    proc = run_script("run_params.py", str(tmp_path / "none.txt"), check=False)
    assert proc.returncode == 2 and "not found" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "p.txt").write_text("python -u mlflow_forget.py\n")
    proc = run_script("run_params.py", str(tmp_path / "p.txt"), "--jobs", "0", check=False)
    assert proc.returncode == 2 and "--jobs must be at least 1" in proc.stderr


def test_command_hash_ignores_interpreter():
    a = script_argv(["python", "-u", "mlflow_forget.py", "--seed", "1"])
    b = script_argv(["/usr/bin/python3", "/repo/mlflow_forget.py", "--seed", "1"])
    assert command_hash(a) == command_hash(b) != command_hash(script_argv(["x.py", "--seed", "2"]))


def forget_lines(models: dict, specs: list[str]) -> list[str]:
    return [f"python -u mlflow_forget.py --save_dir {models['save_dir']} --unlearn {s} --unlearn_epochs 1 "
            f"--unlearn_lr 0.01 --dataset digits --seed 1 --arch smallcnn --epochs {EPOCHS} "
            f"--class_to_replace -1 --num_indexes_to_replace 100" for s in specs]


def runs_of(uri: str) -> list:
    c = MlflowClient(tracking_uri=uri)
    return c.search_runs([e.experiment_id for e in c.search_experiments()])


@pytest.mark.slow
def test_local_runner_runs_reports_failure_and_resumes(digits_models, tmp_path):
    lines = forget_lines(digits_models, ["GA", "FT", "GA+Mask"])
    lines.insert(2, lines[0].replace("--unlearn GA ", "--unlearn GA --mask /nonexistent/original.pth.tar "))
    (tmp_path / "params.txt").write_text("\n".join(lines) + "\n")
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    cmd = ["run_params.py", str(tmp_path / "params.txt"), "--jobs", "2", "--tracking_uri", uri,
           "--log_dir", str(tmp_path / "logs"), "--quiet"]
    proc = run_script(*cmd, check=False)
    assert proc.returncode == 1
    assert "3 ran, 0 skipped (already finished), 1 failed" in proc.stdout
    assert "line 3 failed (exit 2" in proc.stdout and "/nonexistent/original.pth.tar not found" in proc.stdout
    finished = [r for r in runs_of(uri) if r.info.status == "FINISHED"]
    assert sorted(r.info.run_name for r in finished) == ["FT", "GA", "GA+Mask"]
    assert len(list((tmp_path / "logs" / "params").glob("line*.log"))) == 4
    again = run_script(*cmd, check=False)
    assert "0 ran, 3 skipped (already finished), 1 failed" in again.stdout
    assert len([r for r in runs_of(uri) if r.info.status == "FINISHED"]) == 3


EIGHT = ["GA", "GA+Mask", "GA+VarGrad", "FT", "RL", "NegGrad+", "SCRUB", "SalUn"]


@pytest.mark.slow
def test_eight_concurrent_runs_on_the_default_sqlite_store(digits_models, tmp_path):
    (tmp_path / "params.txt").write_text("\n".join(forget_lines(digits_models, EIGHT)) + "\n")
    proc = run_script(str(REPO / "run_params.py"), "params.txt", "--jobs", "8", "--quiet", cwd=tmp_path,
                      env={"MLFLOW_TRACKING_URI": ""})
    assert "8 ran, 0 skipped (already finished), 0 failed" in proc.stdout
    runs = runs_of(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert len(runs) == 8 and all(r.info.status == "FINISHED" for r in runs)
    assert all("UA" in r.data.metrics for r in runs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_eight_concurrent_runs_on_an_mlflow_server(digits_models, tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "art"),
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start in 60 s")
        (tmp_path / "params.txt").write_text("\n".join(forget_lines(digits_models, EIGHT)) + "\n")
        proc = run_script("run_params.py", str(tmp_path / "params.txt"), "--jobs", "8", "--tracking_uri", uri,
                          "--log_dir", str(tmp_path / "logs"), "--quiet")
        assert "8 ran, 0 skipped (already finished), 0 failed" in proc.stdout
        runs = runs_of(uri)
        assert len(runs) == 8 and all(r.info.status == "FINISHED" for r in runs)
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_slurm_job_arrays_run_base_then_sweep(tmp_path):
    need_slurm()
    run_script("array_param_file.py", "--out_dir", str(tmp_path), "--seeds", "4", "--forget", "5",
               "--unlearn", "GA+VarGrad", "FT", "--unlearn_lr", "0.01", "--unlearn_epochs", "2", "--epochs", "5",
               "--save_root", str(tmp_path / "results"), "--hp", "quantile=0.55")
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    proc = run_script("run_params.py", str(tmp_path / "base_params.txt"), str(tmp_path / "params.txt"), "--slurm",
                      "--tracking_uri", uri, "--cpus", "1", "--max_parallel", "2", "--time", "00:20:00",
                      "--log_dir", str(tmp_path / "logs"))
    jobs = submitted_jobs(proc.stdout)
    assert len(jobs) == 2
    script = (tmp_path / "params.sbatch").read_text()
    assert "#SBATCH --array=1-2%2" in script and "--line \"$SLURM_ARRAY_TASK_ID\"" in script
    wait_for_jobs(jobs)
    runs = runs_of(uri)
    logs = "\n".join(p.read_text()[-500:] for p in (tmp_path / "logs").rglob("*.log"))
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs), logs
    hashes = {line.hash for line in read_params(tmp_path / "params.txt")}
    assert {r.data.tags["command_hash"] for r in runs} == hashes


def test_run_params_and_benchmark_offer_the_same_slurm_flags_with_one_set_of_defaults():
    import dataclasses

    from experiments.sweep import SlurmOptions

    def slurm_help(script):
        text = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True,
                              check=True, env={**os.environ, "COLUMNS": "200"}).stdout
        return [line.strip() for line in text.splitlines()
                if any(line.strip().startswith(f"--{f.name} ") for f in dataclasses.fields(SlurmOptions))]

    lines = slurm_help("run_params.py")
    assert len(lines) == len(dataclasses.fields(SlurmOptions))
    assert lines == slurm_help("benchmark.py")
    assert any("--gpus GPUS" in line and "default 0" in line for line in lines)
    assert any("--time TIME" in line and "default 04:00:00" in line for line in lines)
