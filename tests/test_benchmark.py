"""benchmark.py end to end on the test-size preset: CSV, tables and non-empty plots."""

from __future__ import annotations

import csv

import pandas as pd
import pytest
from conftest import need_slurm, run_script, submitted_jobs, wait_for_jobs

from benchmark import PRESET_NOTES, PRESETS, aggregate, markdown
from dataset import SYSTEM_FOLDERS
from experiments.sweep import generate

pytestmark = pytest.mark.slow
FASHION = SYSTEM_FOLDERS["fashionmnist"]  # Debian's dataset-fashion-mnist


def test_presets_generate_valid_lines():
    for name, grid in PRESETS.items():
        base, params = generate(grid)
        assert base and params, name
    assert set(PRESET_NOTES) == set(PRESETS)  # --help describes every preset


def test_digits_test_preset_writes_csv_tables_and_plots(tmp_path):
    out = tmp_path / "bench"
    proc = run_script("benchmark.py", "--preset", "digits-test", "--out", str(out), "--jobs", "2", "--quiet")
    assert "2 runs summarised" in proc.stdout
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["method"] for r in rows][:2] == ["Ideal (retrain)", "Original"]
    assert {r["method"] for r in rows} >= {"GA", "GA+VarGrad"}
    ideal = rows[0]
    assert rows[2]["bn_stats"] == "update"
    assert float(ideal["UA_mean"]) > 90  # class forgetting: the ideal model never saw the class
    table = (out / "table_class_3.md").read_text()
    assert table.index("Ideal (retrain)") < table.index("| GA |") and "Avg. Gap" in table
    for png in ("tradeoff_class_3.png", "avg_gap_class_3.png", "kept_share.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    again = run_script("benchmark.py", "--preset", "digits-test", "--out", str(out), "--jobs", "2", "--quiet")
    # resumable: nothing reruns, neither the training stage nor the unlearning stage
    stages = [line for line in again.stdout.splitlines() if " ran, " in line and " skipped " in line]
    assert len(stages) == 2 and all(": 0 ran, " in line and ", 0 failed" in line for line in stages), stages


def test_aggregate_mean_std_and_gap():
    def row(seed, ua, method="GA"):
        return {"scenario": "class 3", "method": method, "seed": str(seed), "UA": ua, "RA": 90.0, "TA": 80.0,
                "MIA": 50.0, "rUA": ua / 100, "FID_forget": 1.0, "avg_gap": 2.0, "RTE": 1.0, "kept_history": [],
                "ideal/UA": 100.0, "ideal/RA": 92.0, "ideal/TA": 81.0, "ideal/MIA": 100.0, "original/UA": 0.0,
                "original/RA": 99.0, "original/TA": 82.0, "original/MIA": 0.0, "ideal_checkpoint": None,
                "bn_stats": "update"}
    table = aggregate(pd.DataFrame([row(1, 60.0), row(2, 80.0, "FT"), row(2, 80.0), row(1, 50.0, "FT")]))
    assert list(table["method"]) == ["Ideal (retrain)", "Original", "FT", "GA"]
    ga = table.set_index("method").loc["GA"]
    assert ga["UA_mean"] == 70.0 and ga["UA_std"] == pytest.approx(14.142, abs=1e-3) and ga["seeds"] == 2
    assert "70.00 ± 14.14 (30.00)" in markdown("class 3", table)
    ideal = table.set_index("method").loc["Ideal (retrain)"]  # one reference row per seed
    assert ideal["seeds"] == 2 and ideal["UA_mean"] == 100.0 and ideal["UA_std"] == 0.0 and ideal["rUA_mean"] == 1.0
    assert ga["bn_stats"] == "update" and "(`--bn_stats`): update." in markdown("class 3", table)
    frozen = aggregate(pd.DataFrame([row(1, 60.0) | {"bn_stats": "freeze"}]))
    assert "(`--bn_stats`): freeze." in markdown("class 3", frozen)
    assert frozen.set_index("method").loc["GA", "UA_std"] == 0.0  # one seed: no spread, not NaN
    assert "ASR" not in markdown("class 3", frozen)


def test_benchmark_on_slurm_then_report_only(tmp_path):
    need_slurm()
    out = tmp_path / "bench"
    proc = run_script("benchmark.py", "--preset", "digits-test", "--out", str(out), "--slurm", "--gpus", "0",
                      "--time", "00:20:00")
    jobs = submitted_jobs(proc.stdout)
    assert len(jobs) == 2 and "--report_only" in proc.stdout
    wait_for_jobs(jobs)
    report = run_script("benchmark.py", "--preset", "digits-test", "--out", str(out), "--report_only")
    assert "2 runs summarised" in report.stdout and (out / "summary.csv").is_file()


def test_fashionmnist_test_preset_runs_on_the_real_files(tmp_path):
    if not FASHION.is_dir():
        pytest.skip(f"Fashion-MNIST is not installed in {FASHION}: `apt-get install dataset-fashion-mnist` "
                    "(.ci/run does)")
    out = tmp_path / "fm"
    proc = run_script("benchmark.py", "--preset", "fashionmnist-test", "--out", str(out), "--jobs", "2", "--quiet")
    assert "2 runs summarised" in proc.stdout
    rows = {r["method"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert set(rows) == {"Ideal (retrain)", "Original", "GA", "GA+VarGrad"}
    assert float(rows["Original"]["TA_mean"]) > 70  # a real classifier, even on the 5% subsample
    assert (out / "tradeoff_random_N240.png").is_file()
