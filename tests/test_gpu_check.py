"""scripts/gpu_check.py: it refuses to run without CUDA in one line, and its CPU-sized rehearsal
writes the JSON of its steps (the speed step is benchmarks/speed.py --quick, tested in test_speed)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_script


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the real check")
def test_it_refuses_without_cuda_in_one_line(tmp_path):
    proc = run_script("scripts/gpu_check.py", "--out", str(tmp_path / "g.json"), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no CUDA device" in proc.stderr and "--dry_run" in proc.stderr
    assert not (tmp_path / "g.json").exists()


@pytest.mark.slow
def test_its_dry_run_checks_script_against_library_and_writes_one_json(tmp_path):
    out = tmp_path / "g.json"
    run_script("scripts/gpu_check.py", "--dry_run", "--skip", "tests,speed", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["dry_run"] is True
    eq = report["equivalence"]["GA+VarGrad"]
    assert eq["max_abs_weight_diff_script_vs_library"] == 0.0 and eq["library_runs_bit_identical"] is True
    assert set(report["steps_s"]) == {"equivalence"}
