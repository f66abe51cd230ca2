"""Edges the mutation runs found unchecked (mutmut's survivors): each test here fails on one of the
mutants it was written for, named in its docstring. Numbers are computed by hand, not read back."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_evaluation import _outputs

from evaluation import mia, report
from evaluation.accuracy import split_accuracies
from evaluation.closeness import avg_gap, frechet_distance
from unlearn import make
from unlearn.addons.salun import saliency_mask
from unlearn.methods import ssd as ssd_module
from unlearn.methods.common import Frozen, kl_to_teacher
from unlearn.methods.ssd import SSD, importances


# ---------------------------------------------------------------- methods
def test_kl_to_teacher_divides_by_the_given_n_and_by_one_for_a_single_row():
    """The union passes divide by the size of both sets (n), not by the rows in hand; a single row
    is divided by 1 (mutants: n ignored, max(len, 2))."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    by_hand = (F.softmax(t, 1) * (F.log_softmax(t, 1) - F.log_softmax(s, 1))).sum()
    assert float(kl_to_teacher(s, t, n=7)) == pytest.approx(float(by_hand) / 7, rel=1e-5)
    assert float(kl_to_teacher(s, t)) == pytest.approx(float(by_hand) / 3, rel=1e-5)
    one = (F.softmax(t[:1], 1) * (F.log_softmax(t[:1], 1) - F.log_softmax(s[:1], 1))).sum()
    assert float(kl_to_teacher(s[:1], t[:1])) == pytest.approx(float(one), rel=1e-5)
    # the temperature is 1 unless given: T = 2 softens both sides and multiplies by 4
    soft = (F.softmax(t / 2, 1) * (F.log_softmax(t / 2, 1) - F.log_softmax(s / 2, 1))).sum() * 4 / 3
    assert float(kl_to_teacher(s, t, T=2.0)) == pytest.approx(float(soft), rel=1e-5)
    assert float(kl_to_teacher(s, t, T=2.0)) != pytest.approx(float(kl_to_teacher(s, t)), rel=1e-3)


def test_frozen_keeps_the_batch_norm_of_the_layers_that_train():
    """CF-k/EU-k freeze all but the last layers: the batch norm inside a trained layer keeps
    tracking its statistics, the others stop; undo gives everything back (mutants: owners empty,
    `and` for `or`)."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2))
    conv1, bn1, conv2, bn2 = model
    frozen = Frozen(model, [conv2, bn2])
    assert not bn1.track_running_stats and bn2.track_running_stats
    assert [p.requires_grad for p in model.parameters()] == [False] * 4 + [True] * 4
    before = bn2.running_mean.clone()
    model.train()(torch.randn(4, 1, 7, 7))
    assert not torch.equal(bn2.running_mean, before)  # the trained layer's statistics move
    frozen.undo()
    assert bn1.track_running_stats is True and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("spec", ["CF-k", "EU-k"])
def test_k_error_names_the_method(spec):
    """The --k error says which method refused it (mutant: the name dropped)."""
    method, _ = make(spec, k=9)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=f"^{spec}: --k must be between 1 and 2"):
        method.adapt(model, torch.Generator().manual_seed(0))


def test_salun_keeps_exactly_one_coordinate_when_that_is_the_share():
    """round((1 - q) n) = 1 keeps the single largest |score| (mutant: `n_keep > 1`)."""
    scores = [torch.tensor([0.1, -3.0, 0.2]), torch.tensor([[0.5, -0.4]])]
    keep = saliency_mask(scores, quantile=0.8)  # 5 coordinates, keep 1
    assert [k.tolist() for k in keep] == [[False, True, False], [[False, False]]]
    assert sum(int(k.sum()) for k in saliency_mask(scores, quantile=0.0)) == 5
    assert sum(int(k.sum()) for k in saliency_mask(scores, quantile=0.95)) == 0


def test_ssd_importances_are_the_mean_over_batches():
    """I = mean over batches of the squared gradient (label-free: of |grad of mean ||f||^2|);
    forget and train sets have different batch counts, so the divisor matters (mutant: n = 1)."""
    w = nn.Parameter(torch.tensor([[1.0, -2.0]]))
    model = lambda x: x @ w.T * torch.ones(1, 2)  # noqa: E731  (two identical logits)
    batches = [SimpleNamespace(x=torch.tensor([[1.0, 0.0]]), y=torch.tensor([0])),
               SimpleNamespace(x=torch.tensor([[0.0, 3.0], [2.0, 1.0]]), y=torch.tensor([1, 0]))]  # a mean over 2 rows
    sets = SimpleNamespace(params=[w], batches=lambda name, size=None: iter(batches),
                           grad=lambda loss: torch.autograd.grad(loss, [w]))
    per_batch = []
    for b in batches:
        (g,) = torch.autograd.grad(F.cross_entropy(model(b.x), b.y), [w])
        per_batch.append(g * g)
    (got,) = importances(model, sets, "forget", label_free=False)
    assert torch.allclose(got, (per_batch[0] + per_batch[1]) / 2)
    free = []
    for b in batches:
        (g,) = torch.autograd.grad(model(b.x).pow(2).sum(1).mean(), [w])
        free.append(g.abs())
    (got,) = importances(model, sets, "forget", label_free=True)
    assert torch.allclose(got, (free[0] + free[1]) / 2)


def test_ssd_update_dampens_by_the_factors_of_forget_against_train_importances_and_logs_their_share(monkeypatch):
    w = nn.Parameter(torch.tensor([2.0, -4.0, 1.0, 8.0]))
    imp = {"forget": [torch.tensor([50.0, 1.0, 0.0, 40.0])], "train": [torch.tensor([1.0, 1.0, 1.0, 2.0])]}
    seen = []

    def fake_importances(model, sets, name, label_free, batch_size):
        seen.append((name, label_free, batch_size))
        return imp[name]

    monkeypatch.setattr(ssd_module, "importances", fake_importances)
    delta, figures = SSD(alpha=10.0, dampening=1.0).update(None, SimpleNamespace(params=[w]))
    # I_F > 10 I_D on coordinates 0 (factor 1/50) and 3 (2/40); the others keep theirs
    assert torch.allclose(w.detach() + delta[0], torch.tensor([2.0 / 50, -4.0, 1.0, 8.0 * 2 / 40]))
    assert figures == {"dampened_share": 0.5}
    assert seen == [("forget", False, 128), ("train", False, 128)]  # unconfigured: random forgetting's 128


# ---------------------------------------------------------------- evaluation
def test_avg_gap_is_nan_when_any_gap_is():
    """A NaN metric (an attack that could not run) makes Avg. Gap NaN, not the mean of the rest.
    (The mutant that drops the finiteness test is equivalent here: np.mean of a NaN is NaN.)"""
    ideal = {"UA": 10.0, "RA": 90.0, "TA": 80.0, "MIA": 20.0}
    assert avg_gap({"UA": 12.0, "RA": 89.0, "TA": 80.0, "MIA": 23.0}, ideal) == pytest.approx(1.5)
    assert math.isnan(avg_gap({"UA": 12.0, "RA": 89.0, "TA": 80.0, "MIA": float("nan")}, ideal))


def test_frechet_distance_of_a_singular_covariance_is_finite():
    """Three samples of ten logits (a small forget set) give a rank-2 covariance whose computed
    eigenvalues dip below zero; they are clipped at 0 before the square root, so the distance of
    the fit to itself is 0, not NaN (mutants: either clip removed)."""
    a = np.random.default_rng(0).normal(size=(3, 10))
    mu, cov = a.mean(0), np.cov(a, rowvar=False)
    assert np.linalg.eigh(cov)[0].min() < 0  # the case this test is about
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)
    other = np.random.default_rng(1).normal(size=(3, 10))
    d = frechet_distance(mu, cov, other.mean(0), np.cov(other, rowvar=False))
    assert math.isfinite(d) and d > 0


def test_split_accuracies_leave_the_forgotten_class_out_of_ta(tmp_path):
    """With `forgotten_class`, TA is the accuracy on the other classes (mutant: the class not
    passed on). A model that always answers 3: TA is 0 without class 3, its share with it."""
    from dataset import load_data

    data = load_data("digits", tmp_path, seed=0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.eye(10)[3] * 10)
    forget, retain = data.train_idx[:5], data.train_idx[5:]
    assert split_accuracies(model, data, forget, retain, forgotten_class=3)["TA"] == 0.0
    share = float((data.y_test == 3).float().mean() * 100)
    assert split_accuracies(model, data, forget, retain)["TA"] == pytest.approx(share)


def test_loss_attack_defaults_are_the_published_protocol():
    """Ten stratified folds and seed 0 unless told (mutants: 11 folds, sklearn's default of 5,
    seed 1); fewer than two folds gives NaN under both names; accuracy is in percent."""
    rng = np.random.default_rng(3)
    forget, test = rng.gamma(1.0, 1.0, 60), rng.gamma(1.3, 1.0, 60)  # overlapping: folds matter
    assert mia.loss_attack(forget, test) == mia.loss_attack(forget, test, seed=0, folds=10)
    assert mia.loss_attack(forget, test) != mia.loss_attack(forget, test, seed=0, folds=5)
    two = mia.loss_attack(forget, test, folds=2)
    assert all(math.isfinite(v) for v in two.values())
    one = mia.loss_attack(forget, test, folds=1)
    assert set(one) == {"loss_MIA_acc", "loss_MIA_auc"} and all(math.isnan(v) for v in one.values())
    separated = mia.loss_attack(np.full(40, 1e-4) * rng.uniform(1, 2, 40), rng.uniform(1, 3, 40))
    assert separated["loss_MIA_acc"] == 100.0 and separated["loss_MIA_auc"] == 1.0


def test_loss_attack_subsamples_without_replacement(monkeypatch):
    """The larger side is cut to the smaller one's size without drawing a sample twice: with equal
    sizes that is all of both sets (mutant: replace=True)."""
    from sklearn import model_selection

    seen = {}

    class Recording(model_selection.StratifiedKFold):
        def split(self, x, y=None, groups=None):
            seen["x"] = np.sort(np.exp(x[:, 0]) - 1e-12)
            return super().split(x, y, groups)

    monkeypatch.setattr(model_selection, "StratifiedKFold", Recording)
    mia.loss_attack(np.arange(1.0, 21.0), np.arange(21.0, 41.0))
    assert np.allclose(seen["x"], np.arange(1.0, 41.0), rtol=1e-9)


def test_svc_attack_uses_the_published_svc_and_breaks_ties_towards_members(monkeypatch):
    """Unlearn-Sparse's SVC: C=3, gamma="auto", RBF kernel. With constant features and as many
    members as non-members every target is called a member (mutants: each setting, `>`)."""
    from sklearn import svm

    made = {}

    class Recording(svm.SVC):
        def __init__(self, **kw):
            made.update(kw)
            super().__init__(**kw)

    monkeypatch.setattr(svm, "SVC", Recording)
    members, non_members = np.array([[0.9], [0.8]]), np.array([[0.1], [0.2]])
    assert mia.svc_efficacy(members, non_members, np.array([[0.85]])) == 0.0
    assert made == {"C": 3, "gamma": "auto", "kernel": "rbf"}
    same = np.ones((2, 1))
    assert mia.svc_efficacy(same, same, np.ones((3, 1))) == 0.0  # a tie: members
    assert mia.svc_efficacy(same[:1], same, np.ones((3, 1))) == 100.0  # fewer members: non-members
    # two features, each constant but unlike the other: still nothing to learn
    flat = np.array([[0.0, 5.0], [0.0, 5.0]])
    made.clear()
    assert mia.svc_efficacy(flat, flat, flat) == 0.0 and made == {}


def test_model_metrics_times_each_part_and_passes_its_seed(monkeypatch):
    """`timings` receives three non-negative wall times that add up to at most the call's; the loss
    attack gets the run's seed (mutants: a timing dropped or added instead of subtracted, the seed
    not passed on)."""
    import time

    seeds = []
    real = report.loss_attack
    monkeypatch.setattr(report, "loss_attack", lambda f, t, seed=0: seeds.append(seed) or real(f, t, seed))
    timings = {}
    t = time.perf_counter()
    report.model_metrics(_outputs(0, n=30), seed=5, timings=timings)
    wall = time.perf_counter() - t
    assert set(timings) == {"svc_attack_s", "loss_attack_s", "rest_s"}
    assert all(0 <= v <= wall for v in timings.values()) and sum(timings.values()) <= wall
    assert seeds == [5]


def test_svc_cap_draws_distinct_test_samples(monkeypatch):
    """The capped SVC's non-members are distinct test samples (mutant: replace=True)."""
    seen = {}
    monkeypatch.setattr(report, "svc_mia", lambda *a: seen.update(test=a[2]) or {"MIA": 0.0})
    out = _outputs(0, n=30)
    for seed in range(5):
        report.model_metrics(out, seed=seed, svc_max=25)
        rows = {tuple(r.tolist()) for r in seen["test"]}
        assert len(seen["test"]) == 25 and len(rows) == 25


# ---------------------------------------------------------------- loop plumbing
def test_cycled_batches_come_from_their_own_set_and_size(tmp_path):
    """Each (set, batch size) cycles on its own: a retain batch is drawn from D_R even after a
    forget batch was drawn (mutant: one shared cycle for every key)."""
    from dataset import load_data
    from unlearn.impl import _Stream

    data = load_data("digits", tmp_path, seed=0)
    forget, retain = data.train_idx[:6], data.train_idx[6:40]
    stream = _Stream(data, forget, retain, 0, torch.device("cpu"))
    train = data.normalise(data.x_train)  # digits has no augmentation: batches are rows of it
    for name, idx, size in (("forget", forget, 4), ("retain", retain, 5), ("forget", forget, 2),
                            ("retain", retain, 5)):
        b = stream.cycled(name, size)
        assert len(b.y) == size
        rows = [int(torch.nonzero((train[idx] == x).flatten(1).all(1))[0]) for x in b.x]
        assert torch.equal(b.y, data.y_train[idx][rows])  # each row one of the set's own


def test_last_linear_finds_a_nested_classifier():
    """The classifier inside a sub-module is returned with its own parent and attribute name, so
    replacing it (BE, FF) replaces the right layer (mutants: the parent path mangled)."""
    from unlearn.methods.common import accuracy, last_linear

    head = nn.Linear(4, 3)
    model = nn.Sequential(nn.Linear(2, 4), nn.Sequential(nn.ReLU(), nn.Sequential(nn.Identity(), head)))
    parent, name, layer = last_linear(model)  # "1.1.1": two levels down
    assert parent is model[1][1] and name == "1" and layer is head
    flat = nn.Sequential(nn.Flatten(), nn.Linear(2, 3))
    assert last_linear(flat)[0] is flat and last_linear(flat)[1] == "1"
    with pytest.raises(ValueError, match="^Sequential has no nn.Linear layer"):
        last_linear(nn.Sequential(nn.ReLU()))
    # the per-batch accuracy the loop logs, in percent
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0], [1.0, 0.0]])
    assert float(accuracy(logits, torch.tensor([0, 1, 1, 1]))) == 50.0
