"""Every metric on hand-made logits and features."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.linalg import sqrtm

from dataset import load_data
from evaluation import mia, report
from evaluation.accuracy import Outputs, accuracy, split_accuracies
from evaluation.closeness import avg_gap, frechet_distance, logit_fid, mean_kl, relative_ua
from evaluation.mia import attack_features, loss_attack, svc_efficacy, svc_mia
from evaluation.report import against_references, model_metrics


def test_accuracy_and_ua():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    y = torch.tensor([0, 1, 1, 1])
    assert accuracy(logits, y) == 75.0
    assert math.isnan(accuracy(logits[:0], y[:0]))


def test_rua_endpoints_and_undefined():
    assert relative_ua(ua=30, ua_original=10, ua_ideal=30) == 1
    assert relative_ua(ua=10, ua_original=10, ua_ideal=30) == 0
    assert relative_ua(ua=40, ua_original=10, ua_ideal=30) == 1.5
    with pytest.warns(UserWarning, match="rUA undefined"):
        assert math.isnan(relative_ua(5, 10, 10.05))


def test_fid_zero_for_identical_logits():
    x = torch.randn(200, 10)
    assert logit_fid(x, x.clone()) == pytest.approx(0, abs=1e-8)


def test_fid_matches_closed_form_for_known_gaussians():
    # diagonal: ||mu1 - mu2||^2 + sum (s1 + s2 - 2 sqrt(s1 s2))
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = 1 + 0 + 4 + (1 + 4 - 4) + (4 + 1 - 4) + (9 + 1 - 6)
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected)
    # general SPD matrices: the textbook formula with a matrix square root
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    c1, c2 = a @ a.T + np.eye(5), b @ b.T + 0.1 * np.eye(5)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    ref = np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * sqrtm(c1 @ c2).real)
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(ref, rel=1e-6)


def test_fid_of_sampled_gaussians_is_near_the_closed_form():
    torch.manual_seed(0)
    a = torch.randn(20000, 3)
    b = torch.randn(20000, 3) * 2 + torch.tensor([1.0, 0.0, 0.0])
    expected = 1 + 3 * (1 + 4 - 2 * 2)
    assert logit_fid(a, b) == pytest.approx(expected, rel=0.05)


def test_kl_zero_for_identical_and_matches_hand_value():
    x = torch.randn(50, 4)
    assert mean_kl(x, x) == pytest.approx(0, abs=1e-12)
    p, q = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.9, 0.1]])
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert mean_kl(p.log(), q.log()) == pytest.approx(expected)


def test_modified_entropy_matches_its_formula():
    p = torch.tensor([[0.7, 0.2, 0.1]])
    f = attack_features(p.log(), torch.tensor([0]))
    expected = -(1 - 0.7) * math.log(0.7) - 0.2 * math.log(1 - 0.2) - 0.1 * math.log(1 - 0.1)
    assert f["m_entropy"][0, 0] == pytest.approx(expected)
    assert f["confidence"][0, 0] == pytest.approx(0.7) and f["correctness"][0, 0] == 1
    assert f["entropy"][0, 0] == pytest.approx(-(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)))
    g = attack_features(p.log(), torch.tensor([2]))  # wrong label: log p_y, and log(1 - p) for the others
    expected = -(1 - 0.1) * math.log(0.1) - 0.7 * math.log(0.3) - 0.2 * math.log(0.8)
    assert g["m_entropy"][0, 0] == pytest.approx(expected) and g["correctness"][0, 0] == 0


def _logits(n, peak, rng, k=10):
    """Logits whose true-class margin is `peak` (+ noise): large = member-like, small = non-member-like."""
    y = torch.from_numpy(rng.integers(0, k, n))
    x = torch.from_numpy(rng.normal(0, 1, (n, k)))
    x[torch.arange(n), y] += peak + torch.from_numpy(rng.normal(0, 0.5, n))
    return x, y


def test_svc_mia_on_separable_members_and_non_members():
    rng = np.random.default_rng(0)
    members, non_members = _logits(400, 9.0, rng), _logits(400, 1.0, rng)
    like_members, like_non_members = _logits(200, 9.0, rng), _logits(200, 1.0, rng)
    low = svc_mia(*members, *non_members, *like_members)
    high = svc_mia(*members, *non_members, *like_non_members)
    assert low["MIA"] < 10 and high["MIA"] > 90
    assert low["MIA_m_entropy"] < 10 and high["MIA_m_entropy"] > 90
    assert low["MIA_entropy"] < 15 and high["MIA_entropy"] > 85


def test_svc_efficacy_constant_feature_and_empty_target():
    ones = np.ones((10, 1))
    assert svc_efficacy(ones, ones, ones[:3]) in (0.0, 100.0)
    assert math.isnan(svc_efficacy(ones, ones, ones[:0]))


def test_loss_attack_auc_half_on_same_distribution_and_one_when_separated():
    rng = np.random.default_rng(0)
    same = loss_attack(rng.exponential(1, 2000), rng.exponential(1, 2000))
    assert same["loss_MIA_auc"] == pytest.approx(0.5, abs=0.05)
    assert same["loss_MIA_acc"] == pytest.approx(50, abs=5)
    apart = loss_attack(rng.exponential(0.01, 500), rng.exponential(1, 2000) + 2)
    assert apart["loss_MIA_auc"] > 0.99 and apart["loss_MIA_acc"] > 95


def test_avg_gap():
    assert avg_gap({"UA": 10, "RA": 90, "TA": 80, "MIA": 20}, {"UA": 12, "RA": 94, "TA": 80, "MIA": 10}) == 4
    assert math.isnan(avg_gap({"UA": float("nan"), "RA": 1, "TA": 1, "MIA": 1}, {"UA": 1, "RA": 1, "TA": 1, "MIA": 1}))


def _outputs(seed, n=300, k=5):
    rng = np.random.default_rng(seed)
    parts = [_logits(n, 4.0, rng, k) for _ in range(4)]
    return Outputs(parts[0][0], parts[1][0], parts[2][0], parts[3][0], parts[0][1], parts[1][1], parts[2][1],
                   parts[3][1])


def test_ideal_compared_with_itself_is_perfect():
    ideal, original = _outputs(1), _outputs(2)
    ideal.forget = ideal.forget.clone()
    ideal.forget[torch.arange(60), ideal.y_forget[:60]] -= 50  # never saw them: 60 of 300 wrong, UA >= 20
    original.forget = original.forget.clone()
    original.forget[torch.arange(len(original.y_forget)), original.y_forget] += 50  # memorised: FA 100
    m_i, m_o = model_metrics(ideal), model_metrics(original)
    res = against_references(ideal, m_i, m_o, m_i, ideal)
    assert res["rUA"] == 1 and res["UA_gap"] == 0 and res["avg_gap"] == 0
    assert res["FID_forget"] == pytest.approx(0, abs=1e-8) and res["KL_test"] == pytest.approx(0, abs=1e-12)
    assert against_references(ideal, m_i, m_o, None, None) == {}


def test_svc_cap_subsamples_both_sides_with_a_seed():
    out = _outputs(3, n=300)
    full, capped = model_metrics(out, seed=1), model_metrics(out, seed=1, svc_max=100)
    assert full["MIA_svc_samples"] == 600 and capped["MIA_svc_samples"] == 200
    assert capped == model_metrics(out, seed=1, svc_max=100)  # seeded: the same subsample again
    assert model_metrics(out, seed=1, svc_max=1000) == full  # a cap above the sizes changes nothing
    assert {k: v for k, v in capped.items() if "MIA" not in k} == {k: v for k, v in full.items() if "MIA" not in k}


def test_closeness_edges_rua_threshold_single_and_empty_sets():
    import warnings

    from evaluation.closeness import MIN_RUA_DENOMINATOR, gaussian_fit, logit_fid, mean_kl, relative_ua
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(relative_ua(5.0, 10.0, 10.0 + MIN_RUA_DENOMINATOR / 2))
    # exactly at the threshold rUA is defined
    assert relative_ua(MIN_RUA_DENOMINATOR / 2, 0.0, MIN_RUA_DENOMINATOR) == pytest.approx(0.5)
    # on 100 forget samples the ideal model must differ from the original on 5 of them (5 points): the
    # 2 points of digits random N=100 give no rUA, 5 do; on 5400 samples 1 point is enough
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(relative_ua(3.0, 1.0, 3.0, n_forget=100))
        assert math.isnan(relative_ua(3.0, 1.0, 5.99, n_forget=100))
    assert relative_ua(3.5, 1.0, 6.0, n_forget=100) == pytest.approx(0.5)
    assert relative_ua(2.0, 1.0, 3.0, n_forget=5400) == pytest.approx(0.5)
    one = torch.tensor([[1.0, 2.0, 4.0]])
    mu, cov = gaussian_fit(one)  # one sample: its mean, no spread
    assert np.array_equal(mu, [1.0, 2.0, 4.0]) and np.array_equal(cov, np.zeros((3, 3)))
    two = torch.tensor([[0.0, 0.0], [2.0, 4.0]])
    assert np.allclose(gaussian_fit(two)[1], [[2.0, 4.0], [4.0, 8.0]])  # unbiased
    assert logit_fid(one, one + 1) == pytest.approx(3.0)  # mean gap only
    empty = torch.empty(0, 3)
    assert math.isnan(logit_fid(empty, empty)) and math.isnan(mean_kl(empty, empty))


def test_frechet_distance_of_small_variances():
    # variances below 1 (logits of a confident model on few samples): the root of each eigenvalue
    s1, s2 = np.array([0.01, 0.25, 0.5]), np.array([0.04, 0.09, 0.5])
    expected = float(((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum())
    assert frechet_distance(np.zeros(3), np.diag(s1), np.zeros(3), np.diag(s2)) == pytest.approx(expected)


def test_attack_features_per_sample_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.5]])
    y = torch.tensor([1, 1])  # the first sample wrong, the second right
    f = attack_features(logits, y)
    p = torch.softmax(logits.double(), 1).numpy()
    assert f["correctness"][:, 0].tolist() == [0.0, 1.0]
    for i in range(2):
        py = p[i, 1]
        others = [j for j in range(3) if j != 1]
        m_entropy = -(1 - py) * np.log(py) - sum(p[i, j] * np.log(1 - p[i, j]) for j in others)
        assert f["m_entropy"][i, 0] == pytest.approx(m_entropy)
        assert f["confidence"][i, 0] == pytest.approx(py)
        assert f["entropy"][i, 0] == pytest.approx(-(p[i] * np.log(p[i])).sum())
    assert all(v.shape[0] == 2 for v in f.values())


def test_svc_efficacy_with_a_single_sample_on_each_side():
    members, non_members = np.array([[0.9], [0.95]]), np.array([[0.1], [0.05]])
    assert svc_efficacy(members, non_members, np.array([[0.08]])) == 100.0  # one target, called non-member
    assert svc_efficacy(members[:1], non_members[:1], np.array([[0.92]])) == 0.0
    assert math.isnan(svc_efficacy(members, non_members, np.empty((0, 1))))
    assert math.isnan(svc_efficacy(members[:0], non_members, np.array([[0.5]])))


def _kl(p_logits, q_logits):  # KL(softmax(p) || softmax(q)), by hand
    p, q = torch.softmax(p_logits.double(), 1), torch.softmax(q_logits.double(), 1)
    return (p * (p.log() - q.log())).sum(1).mean().item()


def _asymmetric_outputs(seed: int, scale: dict[str, float], forgotten: int | None = None, classes: int = 4) -> Outputs:
    g = torch.Generator().manual_seed(seed)

    def split(n, s):
        y = torch.arange(n) % classes
        return torch.randn(n, classes, generator=g) * s + 2 * torch.nn.functional.one_hot(y, classes), y

    (f, yf), (r, yr), (t, yt), (v, yv) = (split(n, scale[k]) for k, n in
                                          (("forget", 24), ("retain", 60), ("test", 40), ("val", 20)))
    return Outputs(f, r, t, v, yf, yr, yt, yv, forgotten)


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


def test_references_compare_each_split_with_the_ideal_models_same_split_in_the_published_direction():
    mine = _asymmetric_outputs(0, {"forget": 3.0, "retain": 1.0, "test": 0.5, "val": 1.0})
    ideal = _asymmetric_outputs(1, {"forget": 0.7, "retain": 1.0, "test": 2.0, "val": 1.0})
    m = {"UA": 40.0, "RA": 97.0, "TA": 90.0, "MIA": 55.0}
    i = {"UA": 60.0, "RA": 99.0, "TA": 93.0, "MIA": 80.0}
    o = {"UA": 10.0, "RA": 100.0, "TA": 94.0, "MIA": 5.0}
    res = report.against_references(mine, m, o, i, ideal)
    assert res["rUA"] == pytest.approx((40 - 10) / (60 - 10))
    assert res["UA_gap"] == pytest.approx(20.0)
    assert res["avg_gap"] == pytest.approx((20 + 2 + 3 + 25) / 4)
    assert res["FID_forget"] == pytest.approx(logit_fid(mine.forget, ideal.forget))
    assert res["FID_test"] == pytest.approx(logit_fid(mine.test, ideal.test))
    # the inputs make every wrong pairing give another number
    for wrong in (logit_fid(mine.forget, ideal.test), logit_fid(mine.test, ideal.forget),
                  logit_fid(mine.forget, mine.test)):
        assert abs(wrong - res["FID_forget"]) > 0.1 and abs(wrong - res["FID_test"]) > 0.1
    # KL(ideal || unlearned), docs/design.md, section 4
    assert res["KL_forget"] == pytest.approx(_kl(ideal.forget, mine.forget))
    assert res["KL_test"] == pytest.approx(_kl(ideal.test, mine.test))
    assert abs(_kl(mine.forget, ideal.forget) - res["KL_forget"]) > 0.1
    assert abs(_kl(mine.test, ideal.test) - res["KL_test"]) > 0.1
    assert report.against_references(mine, m, o, None, None) == {}
    assert "rUA" not in report.against_references(mine, m, None, i, ideal)


def test_class_forgetting_attack_sets_are_picked_by_their_labels(monkeypatch):
    out = _asymmetric_outputs(2, {"forget": 1.0, "retain": 1.0, "test": 1.0, "val": 1.0}, forgotten=3)
    seen = {}

    def svc_mia(member_logits, member_y, test_logits, test_y, forget_logits, forget_y):
        seen.update(members=(member_logits, member_y), test=(test_logits, test_y), target=(forget_logits, forget_y))
        return {"MIA": 0.0}

    monkeypatch.setattr(report, "svc_mia", svc_mia)
    m = report.model_metrics(out, seed=0)
    test_y = seen["test"][1]
    assert 3 not in test_y.tolist() and len(test_y) == int((out.y_test != 3).sum())
    assert torch.equal(seen["test"][0], out.test[out.y_test != 3])
    member_logits, member_y = seen["members"]
    assert len(member_y) == len(test_y)  # as many members as non-members (Unlearn-Sparse)
    rows = [int(torch.nonzero((out.retain == row).all(1))[0]) for row in member_logits]
    assert len(set(rows)) == len(rows) and torch.equal(out.y_retain[rows], member_y)  # retain rows, own labels
    assert torch.equal(seen["target"][0], out.forget) and torch.equal(seen["target"][1], out.y_forget)
    # utility without the forgotten class; its own accuracy apart
    keep = out.y_test != 3
    assert m["TA"] == pytest.approx(accuracy(out.test[keep], out.y_test[keep]))
    assert m["TA_forgotten_class"] == pytest.approx(accuracy(out.test[~keep], out.y_test[~keep]))
    assert m["UA"] == pytest.approx(100 - accuracy(out.forget, out.y_forget))
