"""The hidden-knowledge audits (audits/): their math on hand-made tensors, and on digits the two
cases that must separate: the original model (it knows D_F: nothing to recover, it is there) and
the ideal model (never saw D_F: nothing to recover at all)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from conftest import run_in_process

from audits import AUDITS, AuditBudget, run_audits
from audits.hidden import fit_probe, linear_cka, relearn_parts
from dataset import forget_split
from experiments.forget import audit_list
from models import create_model
from unlearn import make
from unlearn.impl import Recipe, run
from unlearn.methods.ft import FT

SMALL = AuditBudget(relearn_epochs=2, time_cap=8, probe_iterations=50)


def test_linear_cka_is_one_for_a_rotated_and_scaled_copy_and_small_for_unrelated_features():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 6, generator=g)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
    assert linear_cka(a, 3.0 * a @ q) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(a, torch.randn(200, 6, generator=g)) < 0.15
    # by hand: one-dimensional features, CKA is the squared correlation
    x, y = torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([[1.0], [3.0], [2.0]])
    r = torch.corrcoef(torch.cat([x, y], 1).T)[0, 1].item()
    assert linear_cka(x, y) == pytest.approx(r ** 2)


def test_the_probe_reads_a_linearly_separable_label_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(3, (300,), generator=g)
    x = torch.randn(300, 5, generator=g) * 0.3 + torch.nn.functional.one_hot(y, 5).float() * 4
    head = fit_probe(x, y, 3, AuditBudget())
    assert (head(x).argmax(1) == y).float().mean() == 1.0
    assert torch.equal(head(x), fit_probe(x, y, 3, AuditBudget())(x))


def test_relearn_parts_split_the_forget_set_by_seed():
    split = type("S", (), {"forget": torch.arange(100, 150)})()
    seen, held = relearn_parts(split, 3, 0.1)
    assert len(seen) == 5 and len(held) == 45
    assert sorted(torch.cat([seen, held]).tolist()) == list(range(100, 150))
    assert torch.equal(seen, relearn_parts(split, 3, 0.1)[0]) and not torch.equal(seen, relearn_parts(split, 4, 0.1)[0])


@pytest.fixture(scope="module")
def class3(digits_data, digits_smallcnn):
    """Class 3 forgotten: the original (trained on all of D) and the ideal model (on D_R), same recipe."""
    split = forget_split(digits_data, seed=0, class_to_replace=3, num_indexes=None)
    torch.manual_seed(0)
    ideal = create_model("smallcnn", 10, 1)
    run(ideal, digits_data, split.retain[:0], split.retain, FT(), recipe=Recipe(lr=0.1, epochs=8, batch_size=128),
        seed=0, progress=False)
    return split, digits_smallcnn, ideal


def test_the_original_and_the_ideal_model_separate_on_every_audit(digits_data, class3):
    split, original, ideal = class3
    ask = dict(data=digits_data, split=split, seed=1, budget=SMALL, original=original, ideal=ideal)
    of_o = run_audits(list(AUDITS), original, **ask)
    of_i = run_audits(list(AUDITS), ideal, **ask)
    assert of_o["relearn_UA"] < 5 and of_i["relearn_UA"] > 95  # a D_R-only fine-tune teaches no class 3
    assert of_o["relearn_rounds"] == 0 and of_i["relearn_rounds"] >= 1  # the original is there already
    assert of_o["probe_UA"] < 5 < of_i["probe_UA"]  # its features separate class 3; the ideal's less so
    assert of_i["CKA_forget"] == pytest.approx(1.0) and of_o["CKA_forget"] < 0.99


def test_an_audit_works_on_a_copy_and_is_seeded(digits_data, class3, monkeypatch):
    import audits.hidden as hidden

    split, original, ideal = class3
    model = copy.deepcopy(original)
    m, a = make("GA")
    run(model, digits_data, split.forget, split.retain, m, a, Recipe(lr=0.01, epochs=2, batch_size=64), seed=0,
        progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ask = dict(data=digits_data, split=split, budget=SMALL, original=original, ideal=ideal)
    first = run_audits(["relearn", "relearn_time", "probe"], model, seed=1, **ask)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert first == run_audits(["relearn", "relearn_time", "probe"], model, seed=1, **ask)
    # The seed reaches every fine-tune: its batch order and relearn_time's draws. (The figures
    # themselves are counts over ~180 samples: two seeds may well give the same ones on some CPU.)
    calls = {1: [], 2: []}
    real = hidden._fine_tune
    for seed in calls:
        monkeypatch.setattr(hidden, "_fine_tune", lambda net, data, idx, recipe, s, seed=seed:
                            calls[seed].append((s, idx.clone())) or real(net, data, idx, recipe, s))
        run_audits(["relearn", "relearn_time"], model, seed=seed, **ask)
    (r1, _), *time1 = calls[1]
    (r2, _), *time2 = calls[2]
    assert r1 != r2 and time1 and time2  # relearn's batches; relearn_time ran at least one round (GA forgot)
    assert time1[0][0] != time2[0][0] and not torch.equal(time1[0][1], time2[0][1])


def test_relearn_time_needs_the_original_and_cka_the_ideal(digits_data, class3):
    split, original, _ = class3
    with pytest.raises(ValueError, match="original"):
        run_audits(["relearn_time"], original, digits_data, split, 1, SMALL)
    assert run_audits(["cka"], original, digits_data, split, 1, SMALL) == {}
    with pytest.raises(ValueError, match="unknown audit"):
        run_audits(["nope"], original, digits_data, split, 1, SMALL)


def test_audit_names_are_checked_as_flags():
    assert audit_list("probe,relearn,probe") == ["probe", "relearn"]
    with pytest.raises(Exception, match="unknown audit nope; choose from relearn, relearn_time, probe, cka"):
        audit_list("probe,nope")


@pytest.mark.slow
def test_a_run_with_audits_logs_them_for_all_three_models_and_saves_the_same_model(digits_models, tmp_path):
    # the shared models, but this test's own folder for what the runs write (other tests count those files)
    common = [*digits_models["common"], "--class_to_replace", "3", "--unlearn", "GA", "--unlearn_lr", "0.01",
              "--unlearn_epochs", "2", "--save_dir", str(tmp_path), "--mask", str(digits_models["original"]),
              "--ideal", str(digits_models["ideal_class"])]
    plain = run_in_process("main_forget.py", *common)
    audited = run_in_process("main_forget.py", *common, "--audits", "relearn,relearn_time,probe,cka",
                             "--audit_time_cap", "5", "--audit_relearn_epochs", "2")
    assert "relearn_UA" in audited.stdout and "relearn_UA" not in plain.stdout  # the summary table
    save = tmp_path / "unlearned"
    runs = sorted(save.glob("*_metrics.json"), key=lambda p: p.stat().st_mtime)[-2:]
    without, with_audits = (json.loads(p.read_text()) for p in runs)
    assert "relearn_UA" not in without["metrics"]
    m = with_audits["metrics"]
    for k in ("relearn_UA", "relearn_rounds", "probe_UA", "CKA_forget", "relearn_UA_gap", "audit_time"):
        assert math.isfinite(m[k]), k
    assert m["relearn_UA_gap"] == pytest.approx(abs(m["relearn_UA"] - with_audits["ideal"]["relearn_UA"]))
    assert with_audits["ideal"]["CKA_forget"] == pytest.approx(1.0)
    assert with_audits["original"]["relearn_rounds"] == 0
    assert with_audits["polarity"]["relearn_UA"] == "closer to ideal" and with_audits["polarity"]["CKA_forget"] == \
        "higher"
    # the saved unlearned model is the one the run without audits saved: audits work on copies
    ckpts = sorted(save.glob("*_C3_*GA_*.pth.tar"), key=lambda p: p.stat().st_mtime)[-2:]
    a, b = (torch.load(p, weights_only=True)["state_dict"] for p in ckpts)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the ideal and original models' audits are cached beside them and read back by the next run
    caches = sorted(digits_models["save_dir"].glob("*.audit_*.pt"))
    assert len(caches) == 2
    stamps = [p.stat().st_mtime_ns for p in caches]
    again = run_in_process("main_forget.py", *common, "--audits", "relearn,relearn_time,probe,cka",
                           "--audit_time_cap", "5", "--audit_relearn_epochs", "2")
    assert again.returncode == 0 and [p.stat().st_mtime_ns for p in caches] == stamps


@pytest.mark.slow
def test_bad_audit_flags_are_one_line_errors_before_anything_runs(digits_models):
    common = [*digits_models["common"], "--class_to_replace", "3", "--unlearn", "GA"]
    bad = run_in_process("main_forget.py", *common, "--audits", "probe,nope", check=False)
    assert bad.returncode == 2 and "unknown audit nope" in bad.stderr
    bad = run_in_process("main_forget.py", *common, "--audits", "relearn_time", "--audit_time_share", "1.0",
                         check=False)
    assert bad.returncode == 2 and "leaves nothing to score on" in bad.stderr, bad.stderr


def test_the_benchmark_tables_show_the_audits_the_runs_made_with_the_ideal_and_original_rows():
    import pandas as pd

    import benchmark

    keys = ["UA", "RA", "TA", "MIA", "relearn_UA", "relearn_rounds", "probe_UA", "CKA_forget"]
    row = {k: 1.0 for k in keys} | {f"ideal/{k}": 2.0 for k in keys} | {f"original/{k}": 0.0 for k in keys}
    runs = pd.DataFrame([row | {"seed": "1", "relearn_UA": 30.0, "ideal/relearn_UA": 90.0},
                         row | {"seed": "2", "relearn_UA": 50.0, "ideal/relearn_UA": 90.0}]).assign(
        scenario="class 3", method="GA", bn_stats="update", kept_history=[[], []], ideal_checkpoint=None)
    table = benchmark.aggregate(runs)
    assert benchmark.metric_columns(runs) == keys
    text = benchmark.markdown("class 3", table)
    assert all(f" {k} |" in text.splitlines()[2] for k in keys)  # the header
    ga = next(line for line in text.splitlines() if line.startswith("| GA |"))
    assert "40.00 ± 14.14 (50.00)" in ga  # mean, std over seeds, |gap| to the ideal row's 90
    assert "relearn_rounds, rounds of 500" in text
    assert benchmark.metric_columns(runs.drop(columns=["relearn_UA", "relearn_rounds", "probe_UA",
                                                       "CKA_forget"])) == keys[:4]
