"""The challenge's forgetting score and KLoM (audits/ensemble_scores.py) against their definitions:
metric.py's statistic, rules, conventions and buckets; KLoM's bins, floor and direction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from audits.ensemble_scores import (
    EPSILON_CAP,
    KLOM_FLOOR,
    confidences,
    epsilons,
    example_epsilon,
    forget_quality,
    klom,
    max_epsilon,
)


def grid_epsilon(u: np.ndarray, r: np.ndarray, delta: float = 1e-5) -> float:
    """metric.py's rules on its grids (step 0.01; intervals in its windows), for comparison."""
    pos, neg = (r, u) if np.median(r) > np.median(u) else (u, r)
    both = np.concatenate([u, r])
    rates = []
    for t in np.linspace(both.min(), both.max(), math.ceil((both.max() - both.min()) * 100)):
        rates.append((np.mean(neg >= t), np.mean(pos < t)))
    ranges = [u.max() - u.min(), r.max() - r.min()]
    pos, neg = (u, r) if ranges[0] < ranges[1] else (r, u)
    w = pos.max() - pos.min()
    for right in np.linspace(pos.min() + w - 2, pos.max() + 2, math.ceil((pos.max() - pos.min() + 4) * 20)):
        for left in np.linspace(right - w - 2, right - w + 2, 80):
            rates.append((np.mean((neg >= left) & (neg <= right)), np.mean((pos < left) | (pos > right))))
    def log(x: float) -> float:
        return math.log(x) if x > 0 else -math.inf

    best = 0.0
    for fpr, fnr in rates:
        if fpr * fnr > 0:
            best = max(best, log(1 - delta - fpr) - log(fnr), log(1 - delta - fnr) - log(fpr))
    return min(best, EPSILON_CAP)


def test_confidence_is_metric_pys_statistic_for_every_model():
    logits = torch.tensor([[[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]], [[1.0, 1.0, 1.0], [5.0, -5.0, 0.0]]])
    y = torch.tensor([0, 2])
    p = logits.double().softmax(-1)
    p_y = torch.stack([p[:, 0, 0], p[:, 1, 2]], 1)  # every model's probability of each example's label
    want = torch.log(p_y) - torch.log(1 - p_y)
    assert torch.allclose(confidences(logits, y), want)


def test_exact_rules_never_fall_below_the_challenges_grid():
    g = np.random.default_rng(0)
    for shift in (0.0, 0.5, 1.5):
        for _ in range(3):
            u, r = g.normal(shift, 1, 16), g.normal(0, 1.3, 16)
            ours = example_epsilon(torch.from_numpy(u), torch.from_numpy(r))
            assert ours >= grid_epsilon(u, r) - 1e-9


def test_conventions_separation_and_peaky_give_the_cap_and_signal_raises_epsilon():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(64, 50, generator=g), torch.randn(64, 50, generator=g)
    assert example_epsilon(a[:, 0] + 100, b[:, 0]) == EPSILON_CAP  # perfectly apart
    assert example_epsilon(torch.full((64,), 0.3), b[:, 0]) == EPSILON_CAP  # one group has no spread ("peaky")
    null, shifted = epsilons(a, b), epsilons(a + 1.5, b)
    assert null.mean() < 2.5 and shifted.mean() > null.mean() + 1
    assert forget_quality(shifted, 64) < forget_quality(null, 64)


def test_forget_quality_buckets():
    eps = torch.tensor([0.0, 0.49, 0.5, 1.2, 6.9, 7.0, 50.0])
    points = [1, 1, 0.5, 0.25, 2.0 ** -13, 0, 0]
    assert max_epsilon(512) == 7 and max_epsilon(64) == 5
    assert forget_quality(eps, 512) == pytest.approx(sum(points) / 7)


def test_klom_bins_floor_and_direction():
    same = torch.randn(10, 4, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(klom(same, same), torch.zeros(4, dtype=torch.double))
    # unlearned all in the bottom bin, oracles spread evenly over the 20 bins of their shared range
    oracle = torch.linspace(0, 19.999, 20)[:, None]
    unlearned = torch.zeros(5, 1)
    assert klom(unlearned, oracle).item() == pytest.approx(math.log(1 / (1 / 20)))
    # the other direction would pay the floor for 19 empty bins: KL(unlearned || oracle) is what we compute
    assert klom(oracle, unlearned).item() == pytest.approx(19 / 20 * math.log((1 / 20) / KLOM_FLOOR) +
                                                           1 / 20 * math.log(1 / 20))
    assert klom(torch.full((4, 1), 1e6), torch.zeros(4, 1)).item() == pytest.approx(math.log(1 / KLOM_FLOOR))


@pytest.mark.slow
def test_main_audit_epsilon_and_klom_share_one_store_and_report_their_references(tmp_path):
    import csv

    from conftest import run_in_process

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--dataset", "digits", "--subsample", "0.3", "--epochs", "5", "--shadows", "4", "--class_to_replace",
              "-1", "--num_indexes_to_replace", "20", "--seed", "1", "--save_dir", str(tmp_path / "res"),
              "--tracking_uri", uri, "--quiet", "--methods", "GA", "retrain", "--unlearn_lr", "0.01"]
    eps = run_in_process("main_audit.py", "--audit", "epsilon", *common, "--table", str(tmp_path / "eps.md"))
    assert "original models: training 4 of 4" in eps.stdout and "oracle models: training 4 of 4" in eps.stdout
    kl = run_in_process("main_audit.py", "--audit", "klom", *common, "--table", str(tmp_path / "klom.md"))
    assert "original models: all 4 reused" in kl.stdout and "oracle models: all 4 reused" in kl.stdout
    for name, keys in (("eps", ("challenge_score", "forget_quality", "RA_ratio")),
                       ("klom", ("klom_p95_forget", "klom_p95_retain", "klom_p95_val"))):
        rows = {r["method"]: r for r in csv.DictReader((tmp_path / f"{name}.csv").open())}
        assert list(rows) == ["Originals, not unlearned", "Oracles vs oracles (noise floor)", "GA", "retrain"]
        for k in keys:  # retrain is exact: its row is the noise floor
            assert rows["retrain"][k] == rows["Oracles vs oracles (noise floor)"][k]
            assert float(rows["GA"][k]) >= 0
        # the K/2 figure reads against the noise floor: the same sizes, and for retrain the same models
        assert rows["retrain"][keys[0] + "_half"] == rows["Oracles vs oracles (noise floor)"][keys[0]]
        assert float(rows["GA"][keys[0] + "_half"]) >= 0 and rows["Originals, not unlearned"][keys[0] + "_half"]
    bad = run_in_process("main_audit.py", "--audit", "klom", *common[:common.index("--methods")], "--shadows", "3",
                         check=False)
    assert bad.returncode == 2 and "even number, at least 4" in bad.stderr


def test_main_audit_tuned_rows_take_the_scenarios_values_and_refuse_other_settings(tmp_path):
    import json
    from pathlib import Path

    from experiments import privacy
    from utils import UserError

    tuned = json.loads((Path(__file__).parents[1] / "docs" / "digits-tuned" / "tuned.json").read_text())
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps(tuned))

    def audits(*flags):
        args = privacy.build_parser("").parse_args(
            ["--dataset", "digits", "--epochs", "30", "--shadows", "4", "--seed", "1", "--save_dir",
             str(tmp_path / "res"), "--methods", "GA+VarGrad", "SalUn", "retrain", "--tuned", str(path), *flags])
        return {a.spec: a for a in privacy.resolve_all(args)}

    by = audits("--audit", "epsilon", "--class_to_replace", "3")
    assert list(by) == ["GA+VarGrad", "RL+SalUn", "retrain", "GA+VarGrad (tuned)", "RL+SalUn (tuned)"]
    for spec, name in (("GA+VarGrad", "GA+VarGrad"), ("RL+SalUn", "SalUn")):
        best = tuned["scenarios"]["class 3"]["methods"][name]["best"]
        published, mine = by[spec], by[f"{spec} (tuned)"]
        assert (mine.recipe.lr, mine.recipe.epochs) == (best["lr"], best["epochs"])
        assert (published.recipe.lr, published.recipe.epochs) != (mine.recipe.lr, mine.recipe.epochs)
        assert {k: v for k, v in mine.hparams.items()} == {k: v for k, v in best.items() if k not in ("lr", "epochs")}
        assert mine.folder == published.folder  # the same store
    random = tuned["scenarios"]["random N=122"]["methods"]["GA+VarGrad"]["best"]
    for flags in (("--audit", "klom", "--class_to_replace", "-1", "--num_indexes_to_replace", "122"),
                  ("--audit", "ulira", "--shadows", "8")):
        assert audits(*flags)["GA+VarGrad (tuned)"].recipe.lr == random["lr"]
    with pytest.raises(UserError, match="another setting: epochs 30 \\(here 5\\)"):
        audits("--audit", "epsilon", "--class_to_replace", "3", "--epochs", "5")
    with pytest.raises(UserError, match="0 scenarios for --class_to_replace 5"):
        audits("--audit", "epsilon", "--class_to_replace", "5")
    del tuned["scenarios"]["class 3"]["methods"]["SalUn"]
    path.write_text(json.dumps(tuned))
    with pytest.raises(UserError, match="no tuned values for SalUn in scenario 'class 3'"):
        audits("--audit", "epsilon", "--class_to_replace", "3")
    assert not (tmp_path / "res" / "ensembles").exists()  # nothing trained or written by resolving


def test_main_audit_combine_ranks_pairs_and_refuses_other_files(tmp_path):
    from conftest import run_in_process

    from experiments.privacy import save_table
    from experiments.privacy_summary import combine, read

    methods = ["GA", "GA+VarGrad", "RL", "retrain"]
    auc, score, kl, mia = [60.0, 55.0, 52.0, 50.0], [0.0, 0.1, 0.2, 0.3], [5.0, 4.0, 9.0, 3.0], [2.0, 4.0, 30.0, 9.0]
    save_table(tmp_path / "u.md", [], [{"method": "Controls (retrained)", "ulira_auc": 50.0}]
               + [{"method": m, "ulira_auc": a, "ulira_tpr_at_1pct": 1.0} for m, a in zip(methods, auc)])
    save_table(tmp_path / "e.md", [], [{"method": m, "challenge_score": s} for m, s in zip(methods, score)])
    save_table(tmp_path / "k.md", [], [{"method": m, "klom_p95_forget": k, "SVC_MIA": v}
                                       for m, k, v in zip(methods, kl, mia)])
    lines, rows, rho = combine(read([str(tmp_path / f"{n}.csv") for n in "uek"]))
    text = "\n".join(lines)
    assert [r["method"] for r in rows] == methods
    assert "* U-LiRA (AUC distance to 50): RL, GA+VarGrad, GA" in text
    assert "* SVC MIA (distance to retrain's): GA+VarGrad, GA, RL" in text  # |4-9| < |2-9| < |30-9|
    assert rho[("ulira_auc", "challenge_score")] == pytest.approx(1.0)
    assert rho[("ulira_auc", "klom_p95_forget")] == pytest.approx(-0.5)
    assert "| GA+VarGrad vs GA | +2.0 | -5.0 | +0.0 | +0.100 | -1.000 |" in text
    (tmp_path / "other.csv").write_text("method,UA\nGA,1\n")
    bad = run_in_process("main_audit.py", "--combine", str(tmp_path / "other.csv"), "--table",
                         str(tmp_path / "t.md"), check=False)
    assert bad.returncode == 2 and "not a table of main_audit.py" in bad.stderr
    missing = run_in_process("main_audit.py", "--combine", str(tmp_path / "nope.csv"), "--table",
                             str(tmp_path / "t.md"), check=False)
    assert missing.returncode == 2 and "nope.csv not found" in missing.stderr
    assert not (tmp_path / "t.md").exists()


@pytest.mark.slow
def test_klom_ranks_the_originals_worse_than_a_method_that_forgets_the_class(tmp_path):
    """The sanity on class forgetting, where the originals know the class and the oracles do not: a
    method that forgets it (FT on D_R, which erodes a class it never sees) scores clearly better on
    D_F than the originals, and the originals clearly worse than the noise floor. K = 32: at K = 8
    every P95 on D_F sits at the floor's ceiling (about 10), the noise floor's included."""
    import csv

    from conftest import run_in_process

    run_in_process("main_audit.py", "--audit", "klom", "--dataset", "digits", "--subsample", "0.3", "--epochs", "5",
                   "--shadows", "32", "--class_to_replace", "3", "--seed", "1", "--save_dir", str(tmp_path / "res"),
                   "--tracking_uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--quiet", "--methods", "FT",
                   "--unlearn_lr", "0.05", "--unlearn_epochs", "5", "--table", str(tmp_path / "klom.md"))
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "klom.csv").open())}
    original, ft = float(rows["Originals, not unlearned"]["klom_p95_forget"]), float(rows["FT"]["klom_p95_forget"])
    noise = float(rows["Oracles vs oracles (noise floor)"]["klom_p95_forget"])
    assert original > ft + 1 and original > noise + 1, (original, ft, noise)
    # at the noise floor's sizes too (K/2 against K/2; measured 10.1 against 7.5, the floor 6.3)
    half = {k: float(rows[k]["klom_p95_forget_half"]) for k in ("Originals, not unlearned", "FT")}
    assert half["Originals, not unlearned"] > half["FT"] + 1, half


def test_a_method_that_diverges_gets_its_row_and_the_others_still_run(tmp_path):
    from types import SimpleNamespace

    from experiments.privacy import MethodDiverged, diverged_cells, each_row, save_table
    from experiments.privacy_summary import combine, read
    from utils import UserError

    ran = []

    def run(audit):
        ran.append(audit.spec)
        if audit.spec.endswith("(tuned)"):
            raise MethodDiverged(f"{audit.spec} diverged in run 3: loss is nan; lower --unlearn_lr")
        return {"method": audit.spec, "klom_p95_forget": 2.0, "SVC_MIA": 5.0}

    audits = [SimpleNamespace(spec=s) for s in ("GA", "GA (tuned)", "GA+VarGrad", "retrain")]
    rows = each_row(audits, run)
    assert ran == ["GA", "GA (tuned)", "GA+VarGrad", "retrain"]  # the ones after it still ran
    assert rows[1] == {"method": "GA (tuned)", "diverged": "GA (tuned) diverged in run 3: loss is nan; lower "
                                                             "--unlearn_lr"}
    assert diverged_cells(rows[1], 3) == f"| GA (tuned) | diverged: {rows[1]['diverged']} | - | - |"
    with pytest.raises(MethodDiverged, match="diverged in run 3"):  # alone, the one-line error stands
        each_row([audits[1]], run)
    with pytest.raises(UserError, match="every method diverged"):
        each_row([audits[1], audits[1]], run)
    save_table(tmp_path / "k.md", [], rows)  # the CSV keeps the row; --combine leaves its cells empty
    lines, combined, _ = combine(read([str(tmp_path / "k.csv")]))
    assert [r["method"] for r in combined] == ["GA", "GA (tuned)", "GA+VarGrad", "retrain"]
    assert combined[1] == {"method": "GA (tuned)"} and "| GA (tuned) |  |  |" in "\n".join(lines)
