"""U-LiRA (audits/ulira.py), the shadow ensembles (audits/ensemble.py) and main_audit.py: the design is
balanced, the attack is at chance without a signal and finds a planted one, an ensemble model is the
model trained alone, and the script stores its ensembles once, rebuilds a damaged file and refuses
a store made for another design."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from conftest import run_in_process
from mlflow import MlflowClient
from sklearn.metrics import roc_auc_score

from audits.ensemble import fit_many
from audits.ulira import attack, auc, balanced_design, margins, scores, tpr_at
from models import create_model
from unlearn import train as training
from unlearn.impl import Recipe


def pairs(k: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    member = torch.zeros(k, t, dtype=torch.bool)
    for j in range(k // 2):
        half = torch.rand(t, generator=g) < 0.5
        member[2 * j], member[2 * j + 1] = half, ~half
    return member


def test_the_attack_is_at_chance_without_a_signal_and_finds_a_planted_one():
    g = torch.Generator().manual_seed(1)
    member = pairs(64, 200)
    noise = torch.randn(64, 200, generator=g)
    null = attack(noise, member)["summary"]
    assert abs(null["acc"] - 50) < 2 and abs(null["auc"] - 50) < 2.5, null  # held-out fits: no bias
    assert null["vulnerable"] < 15 and null["tpr@1%"] < 3
    planted = attack(noise + member.double(), member)["summary"]  # IN shifted by one standard deviation
    assert planted["acc"] > 64 and planted["auc"] > 68 and planted["vulnerable"] > 70 and planted["tpr@1%"] > 3
    # a sign flip (unlearning that overshoots: IN below OUT) is found as well
    assert attack(noise - 2 * member.double(), member)["summary"]["auc"] > 80


def test_scores_use_the_other_folds_fits_only():
    member = pairs(8, 6)
    stat = torch.randn(8, 6, generator=torch.Generator().manual_seed(3))
    base = scores(stat, member)
    changed = stat.clone()
    changed[0] += 5  # model 0 is in the first fold: the first fold's scores do not read it
    again = scores(changed, member)
    assert torch.equal(again[1:4], base[1:4]) and not torch.equal(again[4:], base[4:])
    with pytest.raises(ValueError, match="multiple of 4"):
        scores(stat[:6], member[:6])


def test_auc_and_tpr_agree_with_their_definitions():
    g = torch.Generator().manual_seed(2)
    s = torch.cat([torch.randn(300, generator=g) + 0.7, torch.randn(500, generator=g)])
    s[:20] = s[300:320]  # ties across the classes
    label = torch.arange(800) < 300
    assert math.isclose(auc(s, label), roc_auc_score(label.numpy(), s.numpy()), rel_tol=1e-9)
    neg = np.sort(s[~label].numpy())[::-1]
    threshold = neg[5]  # at most 1% of 500 negatives above it
    assert tpr_at(s, label, 0.01) == pytest.approx(float((s[label].numpy() > threshold).mean() * 100))
    assert (s[~label] > threshold).sum() <= 5


def test_margins_are_the_logit_scaled_confidence_and_stay_finite():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0], [800.0, -800.0, 0.0]])
    y = torch.tensor([0, 2, 0])
    p = logits.double().softmax(1)[torch.arange(3), y]
    got = margins(logits, y)
    assert torch.allclose(got[:2], (p.log() - (1 - p).log())[:2])
    assert torch.isfinite(got).all() and got[2] > 700  # log(1 - p) would be -inf there


def test_the_design_is_balanced_stratified_and_seeded():
    train = torch.arange(3, 403)
    y = torch.arange(500) % 10
    d = balanced_design(train, y, 40, 8, seed=5)
    assert len(d.targets) == 40 and torch.isin(d.targets, train).all()
    assert torch.bincount(y[d.targets], minlength=10).tolist() == [4] * 10  # stratified
    assert d.member.sum(0).tolist() == [4] * 40  # every target in exactly K/2 sets
    assert len({len(s) for s in d.train_sets}) == 1 and len({len(c) for c in d.control_sets}) == 1
    for k in range(8):
        assert torch.equal(d.forget_sets[k], d.targets[d.member[k]])
        assert torch.equal(torch.cat([d.forget_sets[k], d.control_sets[k]]).sort().values, d.train_sets[k])
        assert not torch.isin(d.control_sets[k], d.targets).any()
    pair = torch.cat([d.train_sets[0], d.train_sets[1]])
    assert len(pair.unique()) == len(pair) == 400  # complements (the pool of 360 is even)
    again = balanced_design(train, y, 40, 8, seed=5)
    assert torch.equal(again.member, d.member) and torch.equal(again.train_sets[3], d.train_sets[3])
    assert not torch.equal(balanced_design(train, y, 40, 8, seed=6).targets, d.targets)
    for k, t, message in ((6, 40, "multiple of 4"), (4, 40, "at least 8"), (8, 41, "even number"),
                          (8, 300, "between 2 and half")):
        with pytest.raises(ValueError, match=message):
            balanced_design(train, y, t, k, seed=5)


def test_an_ensemble_model_is_the_model_trained_alone(digits_data):
    data = digits_data
    g = torch.Generator().manual_seed(0)
    sets = [data.train_idx[torch.randperm(len(data.train_idx), generator=g)[:300]].sort().values for _ in range(2)]
    recipe = Recipe(lr=0.05, epochs=2, batch_size=128)
    build = lambda: create_model("smallcnn", data.num_classes, data.in_channels)  # noqa: E731
    alone = []
    for k, s in enumerate(sets):
        torch.manual_seed(10 + k)
        m = build()
        training.fit(m, data, s, data.val_idx, recipe, 10 + k, progress=False, log=False)
        alone.append(m.eval())
    told = {"sequential": [], "stacked": []}
    sequential, seq_best = fit_many(build, data, sets, data.val_idx, recipe, [10, 11],  # default mode: sequential
                             on_model=lambda i, m, best: told["sequential"].append((i, m, best)))
    stacked, best = fit_many(build, data, sets, data.val_idx, recipe, [10, 11], "stacked",
                             on_model=lambda i, m, best: told["stacked"].append((i, m, best)))
    for mode, models in (("sequential", sequential), ("stacked", stacked)):  # each model as soon as it is trained
        assert [i for i, _, _ in told[mode]] == [0, 1] and all(m is models[i] for i, m, _ in told[mode])
    assert [b for _, _, b in told["stacked"]] == best and [b for _, _, b in told["sequential"]] == seq_best
    assert all(isinstance(b, int) and 1 <= b <= recipe.epochs for b in seq_best + best)
    x, _ = data.batch(data.val_idx)
    for a, s, v in zip(alone, sequential, stacked):
        assert all(torch.equal(t, s.state_dict()[n]) for n, t in a.state_dict().items())  # bit for bit
        # stacked: the same model up to the rounding of batched convolutions, which 6 SGD steps amplify
        weights = max((t.float() - v.state_dict()[n].float()).abs().max().item() for n, t in a.state_dict().items())
        assert weights < 1e-3, weights
        with torch.no_grad():
            assert (a(x) - v(x)).abs().max() < 1e-2 and torch.equal(a(x).argmax(1), v(x).argmax(1))
    with pytest.raises(ValueError, match="same size"):
        fit_many(build, data, [sets[0], sets[1][:-1]], data.val_idx, recipe, [1, 2], "stacked")


@pytest.mark.parametrize("change", [{"optimizer": "adam"}, {"bn_stats": "freeze"}, {"warmup": 1}, {"amp": True},
                                    {"compile": True}])
def test_a_stacked_ensemble_refuses_what_its_step_does_not_do(digits_data, change):
    sets = [digits_data.train_idx[:64], digits_data.train_idx[64:128]]
    build = lambda: create_model("smallcnn", 10, 1)  # noqa: E731
    with pytest.raises(ValueError, match="stacked ensembles train with SGD"):
        fit_many(build, digits_data, sets, digits_data.val_idx, Recipe(epochs=1, **change), [1, 2], "stacked")


def test_a_stacked_ensemble_keeps_each_models_best_epoch_and_its_weights(digits_data, monkeypatch):
    """Validation accuracies scripted per epoch: model 0 is best after epoch 2, model 1 after epoch 3;
    each comes back with the weights it had then, and the epoch and accuracy are reported."""
    from audits import ensemble

    scripted = iter([torch.tensor([50.0, 60.0]), torch.tensor([70.0, 55.0]), torch.tensor([65.0, 80.0])])
    states = []

    def accuracy_each(ens, data, idx):
        states.append(ens.state())
        return next(scripted)

    monkeypatch.setattr(ensemble, "accuracy_each", accuracy_each)
    sets = [digits_data.train_idx[:64], digits_data.train_idx[64:128]]
    build = lambda: create_model("smallcnn", 10, 1)  # noqa: E731
    ens, info = ensemble.fit_stacked(build, digits_data, sets, digits_data.val_idx, Recipe(lr=0.1, epochs=3,
                                                                                           batch_size=32), [1, 2])
    assert info["best_epoch"] == [2, 3] and info["val"] == [70.0, 80.0]
    got = ens.state()
    for k, epoch in ((0, 2), (1, 3)):
        assert all(torch.equal(got[n][k], states[epoch - 1][n][k]) for n in got)
    assert not all(torch.equal(states[0][n][0], states[1][n][0]) for n in got)  # the epochs' weights differ


def test_a_stacked_ensemble_decays_its_weights_as_the_sequential_one(digits_data):
    """A weight decay large enough to dominate three steps: stacked and sequential still agree."""
    sets = [digits_data.train_idx[:300], digits_data.train_idx[300:600]]
    recipe = Recipe(lr=0.1, epochs=1, batch_size=128, weight_decay=1.0)
    build = lambda: create_model("smallcnn", 10, 1)  # noqa: E731
    sequential, _ = fit_many(build, digits_data, sets, digits_data.val_idx, recipe, [3, 4], "sequential")
    stacked, _ = fit_many(build, digits_data, sets, digits_data.val_idx, recipe, [3, 4], "stacked")
    torch.manual_seed(3)
    start = build().state_dict()
    for a, v in zip(sequential, stacked):
        gap = max((t - v.state_dict()[n]).abs().max().item() for n, t in a.state_dict().items())
        assert gap < 1e-3, gap
    moved = max((start[n] - sequential[0].state_dict()[n]).abs().max().item() for n in start)
    assert moved > 1e-2


def test_ctrl_c_keeps_the_finished_models_and_names_the_command_that_reuses_them(tmp_path, monkeypatch):
    import signal

    import utils
    from experiments import privacy

    asked = []

    def fit_two_then_stop(build, data, sets, val, recipe, seeds, mode, progress, desc, on_model):
        asked.append(len(sets))
        if len(asked) == 1:
            for i in range(2):
                on_model(i, build(), 1)
        raise utils.Interrupted(signal.SIGINT)

    monkeypatch.setattr(privacy, "fit_many", fit_two_then_stop)
    args = ["--dataset", "digits", "--epochs", "2", "--shadows", "8", "--targets", "20", "--unlearn", "GA",
            "--save_dir", str(tmp_path), "--quiet"]
    proc = run_in_process("main_audit.py", *args, check=False)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"interrupted by SIGINT; every model finished is kept in the store under "
                           f"{tmp_path / 'ensembles'}; the same command reuses them and trains the rest: python ")
    assert line.endswith("main_audit.py " + " ".join(args))
    again = run_in_process("main_audit.py", *args, check=False)
    assert again.returncode == 130 and asked == [8, 6]  # the two finished shadows are not trained again


@pytest.mark.slow
def test_main_audit_sanity_store_reuse_repair_and_refusals(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--dataset", "digits", "--subsample", "0.3", "--epochs", "30", "--shadows", "16", "--targets", "40",
              "--seed", "1", "--save_dir", str(tmp_path / "res"), "--tracking_uri", uri, "--quiet"]
    first = run_in_process("main_audit.py", *common, "--unlearn", "GA", "--unlearn_lr", "0.005",
                           "--unlearn_epochs", "5")
    assert "shadow models: training 16 of 16" in first.stdout and "control models: training 16 of 16" in first.stdout
    folder = next((tmp_path / "res" / "ensembles").iterdir())
    run = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("digits-privacy").experiment_id])[0]
    m = run.data.metrics
    # the two sanity cases: retrained controls at chance, the untouched shadows clearly more exposed
    assert abs(m["control/ulira_acc"] - 50) <= 2 * m["control/ulira_acc_std"], m
    assert abs(m["control/ulira_auc"] - 50) <= 2 * m["control/ulira_auc_std"], m
    assert m["original/ulira_auc"] > m["control/ulira_auc"] + 4, m
    assert m["original/ulira_tpr_at_1pct"] > m["control/ulira_tpr_at_1pct"], m
    assert {"ulira_acc", "ulira_auc", "ulira_vulnerable", "ulira_tpr_at_0.1pct", "SVC_MIA"} <= set(m)
    out = next((folder / "audits").iterdir())
    rows = list(csv.DictReader((out / "per_example.csv").open()))
    assert len(rows) == 40 and {r["label"] for r in rows} == {str(c) for c in range(10)}
    for png in ("in_out.png", "roc.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # another method reuses the stored models; a damaged file is trained again, the others kept
    (folder / "control_003.pt").write_bytes(b"not a checkpoint")
    kept = (folder / "shadow_005.pt").stat().st_mtime_ns
    table = tmp_path / "table.md"
    second = run_in_process("main_audit.py", *common, "--methods", "GA+VarGrad", "retrain", "--unlearn_lr", "0.005",
                            "--unlearn_epochs", "5", "--table", str(table))
    assert "shadow models: all 16 reused" in second.stdout and "control models: training 1 of 16" in second.stdout
    assert "control_003.pt is damaged" in second.stderr
    assert (folder / "shadow_005.pt").stat().st_mtime_ns == kept
    rows = {r["method"]: r for r in csv.DictReader(table.with_suffix(".csv").open())}
    assert list(rows) == ["Shadows, not unlearned", "Controls (retrained)", "GA+VarGrad", "retrain"]
    assert rows["retrain"]["ulira_auc"] == rows["Controls (retrained)"]["ulira_auc"]  # retrain is the controls
    assert "| GA+VarGrad |" in table.read_text() and "Made by `python main_audit.py" in table.read_text()

    # a store made for another design, and bad sizes: one line, exit 2, nothing touched
    files = sorted(p.name for p in folder.iterdir())
    other = [*common, "--unlearn", "GA", "--ensemble_dir", str(folder)]
    other[other.index("--targets") + 1] = "20"
    bad = run_in_process("main_audit.py", *other, check=False)
    assert bad.returncode == 2 and "made for another design (design_sha1, targets differ)" in bad.stderr, bad.stderr
    assert sorted(p.name for p in folder.iterdir()) == files
    for flag, value, message in (("--shadows", "6", "multiple of 4"), ("--shadows", "4", "at least 8"),
                                 ("--targets", "400", "between 2 and half")):
        argv = [*common, "--unlearn", "GA"]
        argv[argv.index(flag) + 1] = value
        bad = run_in_process("main_audit.py", *argv, check=False)
        assert bad.returncode == 2 and message in bad.stderr.strip().splitlines()[-1], bad.stderr
