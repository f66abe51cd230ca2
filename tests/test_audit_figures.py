"""The audits' figures (audits/) against independent computations: the published formulas written out
again in another form (plain loops, numpy, scipy, sklearn, mpmath at high precision), values worked out
by hand on tiny cases, and properties the figures must have (permutation invariance, symmetry, the
reference's edge conventions). Nothing here compares the code with its own recorded output."""

from __future__ import annotations

import dataclasses
import math
import re
from types import SimpleNamespace

import mpmath
import numpy as np
import pytest
import torch
from scipy.stats import norm, rankdata
from sklearn.metrics import roc_auc_score
from torch import nn

from audits.ensemble import Ensemble, accuracy_each
from audits.ensemble_scores import (
    DELTA,
    EPSILON_CAP,
    _epsilon_of,
    confidences,
    epsilons,
    example_epsilon,
    forget_quality,
    klom,
    max_epsilon,
)
from audits.hidden import AuditBudget, forget_accuracy, linear_cka, relearn_parts
from audits.ulira import _average_ranks, _fit, attack, auc, balanced_design, margins, scores, tpr_at


# ------------------------------------------------------------------------------- references
def exact_logit_confidence(row: list[float], label: int) -> float:
    """log p_y - log(1 - p_y) with p the softmax of `row`, in 400-digit arithmetic (no rounding to 0 or 1)."""
    with mpmath.workdps(400):
        z = [mpmath.e ** mpmath.mpf(v) for v in row]
        p = z[label] / sum(z)
        return float(mpmath.log(p) - mpmath.log(1 - p))


def complement_pairs(k: int, t: int, seed: int) -> np.ndarray:
    """Membership [K, T] in complement pairs: rows 2j and 2j+1 split the targets in exact halves."""
    rng = np.random.default_rng(seed)
    member = np.zeros((k, t), dtype=bool)
    for j in range(k // 2):
        half = np.zeros(t, dtype=bool)
        half[rng.permutation(t)[: t // 2]] = True
        member[2 * j], member[2 * j + 1] = half, ~half
    return member


def lira_scores(stat: np.ndarray, member: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    """The per-(model, target) likelihood ratio by loops and scipy.stats.norm: each half of the models
    is scored with Gaussians (mean, ddof=1 standard deviation, floored) fitted on the other half."""
    k, t = stat.shape
    out = np.empty((k, t))
    folds = [range(0, k // 2), range(k // 2, k)]
    for attacked, fitted in ((folds[0], folds[1]), (folds[1], folds[0])):
        for j in range(t):
            ins = [stat[i, j] for i in fitted if member[i, j]]
            outs = [stat[i, j] for i in fitted if not member[i, j]]
            mu_in, sd_in = np.mean(ins), max(np.std(ins, ddof=1), floor)
            mu_out, sd_out = np.mean(outs), max(np.std(outs, ddof=1), floor)
            for i in attacked:
                out[i, j] = norm.logpdf(stat[i, j], mu_in, sd_in) - norm.logpdf(stat[i, j], mu_out, sd_out)
    return out


def tpr_by_thresholds(score: np.ndarray, label: np.ndarray, fpr: float) -> float:
    """TPR (%) at the lowest threshold t with FPR(t) = share of negatives > t at most `fpr`, trying
    every score and -inf as t (the rates only change at scores)."""
    neg, pos = score[~label], score[label]
    for t in [-math.inf, *sorted(set(score.tolist()))]:
        if np.count_nonzero(neg > t) / len(neg) <= fpr:
            return 100 * np.count_nonzero(pos > t) / len(pos)
    raise AssertionError("no threshold")


def klom_reference(unlearned: np.ndarray, oracle: np.ndarray) -> np.ndarray:
    """KLoM per point as the module docstring describes it, with np.histogram (20 equal bins over the
    pair's shared range, the top edge in the last bin) and the KL written as a loop over the bins."""
    out = []
    for i in range(unlearned.shape[1]):
        p_s, q_s = np.clip(unlearned[:, i], -100, 100), np.clip(oracle[:, i], -100, 100)
        lo, hi = min(p_s.min(), q_s.min()), max(p_s.max(), q_s.max())
        if hi <= lo:
            hi = lo + 1
        p = np.histogram(p_s, bins=20, range=(lo, hi))[0] / len(p_s)
        q = np.histogram(q_s, bins=20, range=(lo, hi))[0] / len(q_s)
        out.append(sum(pb * math.log(pb / max(qb, 1e-5)) for pb, qb in zip(p, q) if pb > 0))
    return np.array(out)


# -------------------------------------------------------------------------------- U-LiRA
def test_margins_and_confidences_match_the_softmax_at_high_precision():
    """Reference: mpmath (400 digits) softmax p_y, then log p_y - log(1 - p_y), on random and extreme logits."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 4, generator=g, dtype=torch.double) * 6
    logits[0, 0] = torch.tensor([40.0, 0.0, -3.0, 1.0])  # p_y within 1e-17 of 1: log(1 - p) is -inf in float64
    logits[1, 1] = torch.tensor([-300.0, 200.0, 199.0, 0.0])  # p_y about e^-200: the label 200 below the top logit
    logits[2, 2] = torch.tensor([0.5, 0.5, 0.5, 0.5])  # p_y = 1/4: log(1/3)
    y = torch.tensor([0, 3, 1, 2, 0])
    want = torch.tensor([[exact_logit_confidence(logits[m, n].tolist(), int(y[n])) for n in range(5)]
                         for m in range(3)], dtype=torch.double)
    assert want[2, 2] == pytest.approx(-math.log(3))
    got_margins = margins(logits, y.expand(3, 5))  # margins: one label per row
    got_conf = confidences(logits, y)  # confidences: one label per example, the same under every model
    for got in (got_margins, got_conf):
        assert got.dtype == torch.double and torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # float32 input is read in float64: a margin of 40 is exact, not the inf a float32 softmax gives
    assert confidences(logits[:1, :1].float(), y[:1])[0, 0].item() == pytest.approx(want[0, 0].item(), rel=1e-12)
    # two classes: the difference of the logits
    two = torch.tensor([[3.0, -1.5], [0.25, 2.0]])
    assert margins(two, torch.tensor([0, 1])).tolist() == [4.5, 1.75]


def test_fit_is_the_masked_mean_and_unbiased_floored_std():
    """Reference: numpy mean and std(ddof=1) over the selected rows of each column, floored at 1e-3."""
    g = np.random.default_rng(1)
    s = g.normal(size=(9, 6))
    w = g.random((9, 6)) < 0.6
    w[:2] = True  # every column has at least 2 rows
    s[:, 5] = 0.7  # a column every row gives alike: the floor
    mu, sd = _fit(torch.from_numpy(s), torch.from_numpy(w))
    for j in range(6):
        col = s[w[:, j], j]
        assert mu[j].item() == pytest.approx(col.mean(), abs=1e-12)
        assert sd[j].item() == pytest.approx(max(col.std(ddof=1), 1e-3), abs=1e-12)
    assert sd[5].item() == 1e-3
    w[:, 2] = False
    w[4, 2] = True  # one model on a side: no variance
    with pytest.raises(ValueError, match="1 models on one side"):
        _fit(torch.from_numpy(s), torch.from_numpy(w))


def test_scores_by_hand_on_one_target():
    """Hand values: K = 8, one target, IN/OUT alternating. Fold B fits IN {1, 3} (mean 2, var 2) and OUT
    {-1, 1} (mean 0, var 2), so fold A's score is ((s - 0)^2 - (s - 2)^2) / 4 = s - 1; fold A fits IN
    {5, 7} and OUT {3, 5}, so fold B's score is s - 5. Each model's score reads its own value only
    through the other fold's fits."""
    member = torch.tensor([True, False] * 4)[:, None]
    stat = torch.tensor([5.0, 3.0, 7.0, 5.0, 1.0, -1.0, 3.0, 1.0])[:, None]
    torch.testing.assert_close(scores(stat, member)[:, 0],
                               torch.tensor([4.0, 2.0, 6.0, 4.0, -4.0, -6.0, -2.0, -4.0], dtype=torch.double))


def test_scores_match_a_scipy_likelihood_ratio_and_are_antisymmetric_in_the_labels():
    """Reference: lira_scores (loops, scipy.stats.norm.logpdf, the fits of the other fold); properties:
    IN and OUT swapped negates every score; permuting models within a fold permutes their scores
    and leaves the other fold's unchanged."""
    g = np.random.default_rng(2)
    member = complement_pairs(16, 10, seed=3)
    stat = g.normal(size=(16, 10)) + 0.8 * member
    stat[8:, 3] = np.where(member[8:, 3], 0.25, stat[8:, 3])  # fold B's IN models agree: the floor
    got = scores(torch.from_numpy(stat), torch.from_numpy(member)).numpy()
    np.testing.assert_allclose(got, lira_scores(stat, member), rtol=1e-9, atol=1e-9)
    swapped = scores(torch.from_numpy(stat), torch.from_numpy(~member)).numpy()
    np.testing.assert_allclose(swapped, -got, rtol=1e-12, atol=1e-12)
    perm = np.r_[np.random.default_rng(4).permutation(8), 8 + np.random.default_rng(5).permutation(8)]
    permuted = scores(torch.from_numpy(stat[perm]), torch.from_numpy(member[perm])).numpy()
    np.testing.assert_allclose(permuted, got[perm], rtol=1e-12, atol=1e-12)


def test_average_ranks_are_scipys_rankdata():
    """Reference: scipy.stats.rankdata(method="average"), with ties of every size, one element, all equal."""
    g = np.random.default_rng(6)
    for x in (g.integers(0, 5, 40).astype(float), g.normal(size=25), np.array([3.0]), np.full(7, 2.5),
              np.array([2.0, 1.0, 2.0, 0.0, 1.0, 2.0])):
        np.testing.assert_array_equal(_average_ranks(torch.from_numpy(x)).numpy(), rankdata(x, method="average"))


def test_auc_counts_pairs_with_ties_as_half():
    """References: sklearn's roc_auc_score and the Mann-Whitney pair count (1 per positive above a negative,
    1/2 per tie) on integer scores with many ties within and across classes, labels interleaved;
    1 and 0 for separated classes, 1/2 when all tie, NaN with one class."""
    g = np.random.default_rng(7)
    s = g.integers(0, 6, 60).astype(float)
    label = g.random(60) < 0.4
    pairs = [1.0 if a > b else 0.5 if a == b else 0.0 for a in s[label] for b in s[~label]]
    got = auc(torch.from_numpy(s), torch.from_numpy(label))
    assert got == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)
    assert got == pytest.approx(roc_auc_score(label, s), abs=1e-12)
    x = torch.tensor([3.0, 4.0, 1.0, 2.0])
    lab = torch.tensor([True, True, False, False])
    assert auc(x, lab) == 1.0 and auc(x, ~lab) == 0.0 and auc(torch.zeros(4), lab) == 0.5
    assert auc(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([True, False, False])) == 1.0
    assert math.isnan(auc(x, torch.ones(4, dtype=torch.bool))) and math.isnan(auc(x, torch.zeros(4, dtype=torch.bool)))


def test_tpr_at_fpr_by_a_loop_over_thresholds():
    """Reference: tpr_by_thresholds (every score as a threshold, members called where score > t, the
    lowest t whose FPR is at most the target). Hand case: negatives 0..9, positives 9, 9.5, 8: at FPR
    10% the threshold is 8 (one negative above), and the positive at 8 is not called: 2/3."""
    neg, pos = np.arange(10.0), np.array([9.0, 9.5, 8.0])
    s, label = np.r_[pos, neg], np.r_[np.ones(3, bool), np.zeros(10, bool)]
    assert tpr_at(torch.from_numpy(s), torch.from_numpy(label), 0.1) == pytest.approx(200 / 3)
    assert tpr_at(torch.from_numpy(s), torch.from_numpy(label), 0.05) == pytest.approx(100 / 3)  # above 9 only
    assert tpr_at(torch.from_numpy(s), torch.from_numpy(label), 1.0) == 100.0  # -inf: everything called
    g = np.random.default_rng(8)
    for n_neg in (7, 50, 200, 1000):
        for ties in (False, True):
            s = g.normal(size=n_neg + 60)
            s[:60] += 1
            if ties:
                s = np.round(s * 2) / 2  # heavy ties, across the classes too
            label = np.arange(len(s)) < 60
            for fpr in (0.001, 0.01, 0.05, 0.1, 0.25, 0.5):
                got = tpr_at(torch.from_numpy(s), torch.from_numpy(label), fpr)
                assert got == pytest.approx(tpr_by_thresholds(s, label, fpr), abs=1e-9), (n_neg, ties, fpr)


def test_tpr_at_reaches_an_fpr_that_floating_point_writes_below_an_integer():
    """Reference: the documented rule by hand. Negatives 0..99: the threshold 70 leaves 29 negatives
    above it, FPR 29/100 = 0.29, allowed; so all four positives (70.5 and up) are called: 100%."""
    neg, pos = torch.arange(100.0), torch.tensor([70.5, 71.5, 72.5, 99.5])
    label = torch.arange(104) < 4
    assert (neg > 70).double().mean().item() <= 0.29
    assert tpr_at(torch.cat([pos, neg]), label, 0.29) == 100.0


def test_attack_summary_and_per_example_figures_match_an_independent_computation():
    """Reference: lira_scores, then numpy and sklearn: per-target accuracy (score > 0 against membership)
    and AUC averaged over targets, their spreads over models (std, ddof=1), the share of targets above
    60% accuracy, the pooled TPR by the threshold loop, and per target the IN/OUT mean and std over all K."""
    g = np.random.default_rng(16)
    member = complement_pairs(20, 12, seed=10)
    stat = g.normal(size=(20, 12)) + 1.2 * member * g.random(12)
    out = attack(torch.from_numpy(stat), torch.from_numpy(member))
    score = lira_scores(stat, member)
    np.testing.assert_allclose(out["score"].numpy(), score, rtol=1e-9, atol=1e-9)
    right = (score > 0) == member
    acc_t = right.mean(0) * 100
    assert {55.0, 60.0} <= set(np.round(acc_t, 9))  # K = 20: targets just below and at the 60% line
    auc_t = np.array([roc_auc_score(member[:, t], score[:, t]) for t in range(12)]) * 100
    auc_k = np.array([roc_auc_score(member[k], score[k]) for k in range(20)]) * 100
    s = out["summary"]
    assert s["acc"] == pytest.approx(acc_t.mean()) and s["auc"] == pytest.approx(auc_t.mean())
    assert s["acc_std"] == pytest.approx(np.std(right.mean(1) * 100, ddof=1))
    assert s["auc_std"] == pytest.approx(np.std(auc_k, ddof=1))
    assert s["vulnerable"] == pytest.approx(np.mean(acc_t > 60) * 100)
    for fpr, key in ((0.01, "tpr@1%"), (0.001, "tpr@0.1%")):
        assert s[key] == pytest.approx(tpr_by_thresholds(score.ravel(), member.ravel(), fpr))
        per_model = [tpr_by_thresholds(score[k], member[k], fpr) for k in range(20)]
        assert s[f"{key}_std"] == pytest.approx(np.std(per_model, ddof=1))
    pe = out["per_example"]
    np.testing.assert_allclose(pe["acc"].numpy(), acc_t)
    np.testing.assert_allclose(pe["auc"].numpy(), auc_t)
    for t in range(12):
        ins, outs = stat[member[:, t], t], stat[~member[:, t], t]
        assert pe["in_mean"][t].item() == pytest.approx(ins.mean()) and pe["out_mean"][t].item() == pytest.approx(
            outs.mean())
        assert pe["in_std"][t].item() == pytest.approx(ins.std(ddof=1))
        assert pe["out_std"][t].item() == pytest.approx(outs.std(ddof=1))


def test_the_design_keeps_its_promises_on_every_pair_and_fold():
    """Properties from balanced_design's docstring on an uneven case (14 targets over 10 classes, an
    odd pool): every pair is a complement (targets and pool), every set holds half the targets and the
    same number of samples, each fold holds every target in K/4 sets (what the attack's fits need),
    the class counts differ by at most one, and the draw depends on the seed only."""
    train = torch.arange(5, 406)  # 401 samples: a pool of 387, one left out
    y = (torch.arange(500) * 7) % 10
    torch.manual_seed(123)
    d = balanced_design(train, y, 14, 16, seed=2)
    counts = torch.bincount(y[d.targets], minlength=10)
    assert sorted(counts.tolist()) == [1] * 6 + [2] * 4
    assert d.k == 16 and (d.member.sum(1) == 7).all()
    assert (d.member[:8].sum(0) == 4).all() and (d.member[8:].sum(0) == 4).all()
    assert {len(s) for s in d.train_sets} == {7 + 193}
    pool = torch.cat([d.control_sets[0], d.control_sets[1]])
    assert len(pool) == len(pool.unique()) == 386 and not torch.isin(pool, d.targets).any()
    for j in range(8):
        a, b = 2 * j, 2 * j + 1
        assert torch.equal(d.member[a], ~d.member[b])
        assert torch.equal(torch.cat([d.control_sets[a], d.control_sets[b]]).sort().values, pool.sort().values)
        union = torch.cat([d.train_sets[a], d.train_sets[b]])
        assert len(union.unique()) == 400 and torch.isin(union, train).all()
    uses = torch.stack([torch.isin(pool, c) for c in d.control_sets]).sum(0)
    assert (uses == 8).all()  # every pool sample, like every target, in half the sets
    torch.manual_seed(456)  # the global RNG plays no part
    again = balanced_design(train, y, 14, 16, seed=2)
    assert torch.equal(again.targets, d.targets) and all(torch.equal(a, b) for a, b in zip(again.train_sets,
                                                                                           d.train_sets))
    few = y.clone()
    few[train] = torch.where(torch.arange(len(train)) < 3, 9, few[train] % 9)  # class 9: 3 samples in train
    with pytest.raises(ValueError, match="need 4 of class 9, which has 3"):
        balanced_design(train, few, 40, 8, seed=0)


# ------------------------------------------------------------------------- challenge score
def test_epsilon_of_a_rule_by_hand():
    """Reference: the formula with the math module: max(log(1 - delta - FPR) - log(FNR), log(1 - delta -
    FNR) - log(FPR)) clipped at 0; NaN for FPR * FNR = 0 unless both are 0 (inf); where 1 - delta - FPR
    < 0 only the other branch counts."""
    def by_hand(fpr, fnr, delta=DELTA):
        def term(a, b):
            return math.log(1 - delta - a) - math.log(b) if 1 - delta - a > 0 else -math.inf
        return max(term(fpr, fnr), term(fnr, fpr), 0.0)

    fpr = torch.tensor([0.1, 0.2, 0.5, 0.01, 1.0, 0.03125, 0.0, 0.25, 0.0], dtype=torch.double)
    fnr = torch.tensor([0.2, 0.1, 0.5, 0.6, 0.01, 0.0625, 0.3, 0.0, 0.0], dtype=torch.double)
    got = _epsilon_of(fpr, fnr, DELTA)
    for i in range(6):
        assert got[i].item() == pytest.approx(by_hand(fpr[i].item(), fnr[i].item()), abs=1e-12), i
    assert got[0].item() == got[1].item() == pytest.approx(math.log(0.8 - DELTA) - math.log(0.1))
    assert got[2].item() == 0.0 and got[4].item() == 0.0  # clipped at 0; FPR = 1 is not NaN
    assert math.isnan(got[6]) and math.isnan(got[7]) and got[8].item() == math.inf
    assert _epsilon_of(torch.tensor([0.1]), torch.tensor([0.2]), 0.05).item() == pytest.approx(
        math.log(0.75) - math.log(0.1))


def test_max_epsilon_is_the_largest_epsilon_k_models_can_show_rounded_up():
    """Property from its docstring: over every pair of rates i/K, j/K (both positive), the largest finite
    epsilon is log(K - 1 - delta K), which max_epsilon(K) = ceil(ln(K - 1)) bounds from above by less
    than 1; hand values for small K."""
    assert [max_epsilon(k) for k in (2, 3, 4, 8, 21, 22, 100)] == [0, 1, 2, 2, 3, 4, 5]
    for k in (3, 4, 5, 8, 16, 21, 22, 32, 55, 64, 100, 149, 150, 512):
        rates = torch.arange(1, k, dtype=torch.double) / k
        eps = _epsilon_of(rates.repeat_interleave(k - 1), rates.repeat(k - 1), DELTA)
        best = eps.max().item()
        assert best == pytest.approx(math.log(k - 1 - DELTA * k), abs=1e-12)
        assert max_epsilon(k) - 1 < best <= max_epsilon(k), k


def test_forget_quality_by_a_loop_for_several_k():
    """Reference: the buckets written as a loop, 2^-floor(2 eps) below ceil(ln(K - 1)), else 0; the same
    epsilons score differently as K moves the cap (4.5 counts at K = 64, cap 5, not at K = 32, cap 4)."""
    eps = torch.tensor([0.0, 0.2, 0.5, 0.99, 1.0, 2.49, 3.0, 3.99, 4.0, 4.5, 4.99, 5.0, 6.5, math.inf],
                       dtype=torch.double)
    for k in (4, 8, 32, 64, 1000):
        cap = math.ceil(math.log(k - 1))
        want = sum(2.0 ** -math.floor(2 * e) if e < cap else 0.0 for e in eps.tolist()) / len(eps)
        assert forget_quality(eps, k) == pytest.approx(want, abs=1e-15), k
    assert forget_quality(torch.tensor([4.5]), 64) == 2.0 ** -9 and forget_quality(torch.tensor([4.5]), 32) == 0.0


def test_example_epsilon_reads_the_groups_as_samples_and_stays_in_range():
    """Properties that hold for any family of rules on rates: reordering the models of a group changes
    nothing, every figure is within [0, cap], epsilons is example_epsilon per column."""
    g = torch.Generator().manual_seed(11)
    u, r = torch.randn(16, 6, generator=g, dtype=torch.double), torch.randn(16, 6, generator=g, dtype=torch.double)
    u[:, 3:] += torch.tensor([0.5, 1.5, 3.0], dtype=torch.double)
    all_eps = epsilons(u, r)
    for i in range(6):
        e = example_epsilon(u[:, i], r[:, i])
        assert 0.0 <= e <= EPSILON_CAP and all_eps[i].item() == e
        assert example_epsilon(u[torch.randperm(16, generator=g), i], r[torch.randperm(16, generator=g), i]) == e
    with pytest.raises(ValueError, match="same forget set"):
        epsilons(u, r[:, :5])


# ----------------------------------------------------------------------------------- KLoM
def test_klom_matches_a_numpy_histogram_kl_on_random_cases():
    """Reference: klom_reference (np.histogram's 20 equal bins, the oracle floored at 1e-5, KL(unlearned ||
    oracle) as a loop), with different numbers of models, clipped margins, and a point whose margins are
    all alike (range widened to 1)."""
    g = np.random.default_rng(12)
    unlearned = g.normal(0, 3, size=(9, 8)) + g.normal(0, 2, size=8)
    oracle = g.normal(0, 3, size=(13, 8))
    unlearned[:, 1] *= 60  # beyond the clip at +-100
    oracle[:, 2] = 150.0
    unlearned[:2, 2] = -250.0
    unlearned[:, 3], oracle[:, 3] = 2.0, 2.0  # one value everywhere: no divergence
    unlearned[:, 4] = g.integers(-10, 11, 9)  # integer margins over [-10, 10]: on the bin edges, width 1
    oracle[:, 4] = g.integers(-10, 11, 13)
    unlearned[0, 4], oracle[0, 4] = -10, 10
    got = klom(torch.from_numpy(unlearned), torch.from_numpy(oracle)).numpy()
    np.testing.assert_allclose(got, klom_reference(unlearned, oracle), rtol=1e-12, atol=1e-12)
    assert got[3] == 0.0 and (got[[0, 1, 2, 5]] > 0).all()


def test_klom_properties_order_scale_and_columns():
    """Properties: identical samples give 0; reordering the models changes nothing; scaling every margin
    by a power of two (bins scale with the range, exactly) changes nothing; each point reads only its
    own column."""
    g = torch.Generator().manual_seed(13)
    u, o = torch.randn(10, 5, generator=g, dtype=torch.double), torch.randn(12, 5, generator=g, dtype=torch.double)
    u[:, 0] += 6
    base = klom(u, o)
    assert torch.equal(klom(o, o), torch.zeros(5, dtype=torch.double))
    assert torch.equal(klom(u[torch.randperm(10, generator=g)], o[torch.randperm(12, generator=g)]), base)
    assert torch.equal(klom(u * 4, o * 4), base) and torch.equal(klom(u / 8, o / 8), base)
    for i in range(5):
        assert klom(u[:, i:i + 1], o[:, i:i + 1]).item() == base[i].item()
    assert base[0] > base[1:].max()  # a shifted point diverges most


# ---------------------------------------------------------------------------- hidden audits
def test_linear_cka_is_the_hsic_of_centred_gram_matrices():
    """Reference: Kornblith et al.'s HSIC form in numpy, HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with
    K = X X^T, L = Y Y^T and HSIC(K, L) = tr(K H L H); properties: symmetric, invariant to a shift of the
    features, to reordering the samples in both, to a scale or a rotation of one side; in [0, 1]; NaN
    for constant features."""
    def hsic_cka(x, y):
        n = len(x)
        h = np.eye(n) - np.ones((n, n)) / n
        kx, ky = x @ x.T, y @ y.T

        def hsic(a, b):
            return np.trace(a @ h @ b @ h)
        return hsic(kx, ky) / math.sqrt(hsic(kx, kx) * hsic(ky, ky))

    g = np.random.default_rng(14)
    a = g.normal(size=(30, 5))
    b = a[:, :3] @ g.normal(size=(3, 8)) + 0.7 * g.normal(size=(30, 8))  # related, another width
    c = g.normal(size=(30, 4)) * np.array([5.0, 1.0, 0.1, 2.0])
    for x, y in ((a, b), (a, c), (b, c), (a, a)):
        assert linear_cka(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(hsic_cka(x, y), abs=1e-12)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    v = linear_cka(ta, tb)
    assert 0.0 < v < 1.0 and linear_cka(tb, ta) == pytest.approx(v, abs=1e-12)
    assert linear_cka(ta + 10, tb - 3) == pytest.approx(v, abs=1e-10)
    perm = torch.from_numpy(g.permutation(30))
    assert linear_cka(ta[perm], tb[perm]) == pytest.approx(v, abs=1e-12)
    q, _ = np.linalg.qr(g.normal(size=(8, 8)))
    assert linear_cka(ta, tb @ torch.from_numpy(q) * 0.01) == pytest.approx(v, abs=1e-10)
    assert linear_cka(ta * torch.tensor([1.0, 9, 1, 1, 1], dtype=torch.double), tb) != pytest.approx(v, abs=1e-3)
    assert math.isnan(linear_cka(torch.ones(30, 5), tb))


def test_relearn_parts_round_the_share_and_draw_every_sample_alike():
    """Properties: the seen part has max(1, round(share * n)) samples, the two parts partition D_F; the
    draw depends on the seed only (not the global RNG), and over seeds every sample is seen about
    `share` of the time (a uniform draw, not a fixed prefix)."""
    for n, share, k in ((4, 0.1, 1), (30, 0.1, 3), (20, 0.18, 4), (7, 1.0, 7), (40, 0.26, 10)):
        split = SimpleNamespace(forget=torch.arange(200, 200 + n))
        seen, held = relearn_parts(split, 5, share)
        assert len(seen) == k and len(held) == n - k
        assert sorted(torch.cat([seen, held]).tolist()) == list(range(200, 200 + n))
    split = SimpleNamespace(forget=torch.arange(10) * 3)
    torch.manual_seed(0)
    first = relearn_parts(split, 9, 0.3)
    torch.manual_seed(1)
    assert all(torch.equal(a, b) for a, b in zip(first, relearn_parts(split, 9, 0.3)))
    times = torch.zeros(30, dtype=torch.long)
    for seed in range(400):
        times[relearn_parts(split, seed, 0.3)[0]] += 1
    assert times[::3].min() > 80 and times[::3].max() < 160  # Binomial(400, 0.3): 120 +- 9


def tiny_data(n: int = 40, features: int = 3, seed: int = 15) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = torch.randint(features, (n,), generator=g)
    return SimpleNamespace(x_train=x, y_train=y, num_classes=features, normalise=lambda v: v * 2 - 1,
                           batch=lambda idx: (x[idx] * 2 - 1, y[idx]))


def test_forget_accuracy_by_hand_with_an_identity_classifier():
    """Hand value: an nn.Linear with identity weights predicts the argmax of the normalised input; the
    accuracy (%) on the chosen samples is the share whose label is that argmax, counted in a loop."""
    data = tiny_data()
    model = nn.Linear(3, 3)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))
        model.bias.zero_()
    idx = torch.tensor([0, 3, 5, 6, 11, 17, 20, 21, 33])
    right = sum(int((data.x_train[i] * 2 - 1).argmax()) == int(data.y_train[i]) for i in idx.tolist())
    assert forget_accuracy(model, data, idx) == pytest.approx(100 * right / len(idx))
    data.y_train[idx] = (data.x_train[idx] * 2 - 1).argmax(1)  # every label the prediction: 100
    assert forget_accuracy(model, data, idx) == 100.0
    data.y_train[idx] = (data.y_train[idx] + 1) % 3  # none: 0
    assert forget_accuracy(model, data, idx) == 0.0


def test_accuracy_each_is_each_models_own_accuracy():
    """Reference: a loop over the models, each alone on the same samples (more than one evaluation chunk
    of 1024); one model's weights chosen so that its accuracy is known by hand (100%)."""
    data = tiny_data(n=1100, features=4)
    models = []
    for k in range(3):
        torch.manual_seed(20 + k)
        models.append(nn.Linear(4, 4))
    with torch.no_grad():
        models[1].weight.copy_(torch.eye(4))
        models[1].bias.zero_()
    data.y_train[:] = (data.x_train * 2 - 1).argmax(1)  # model 1 is always right
    data.y_train[::5] = torch.randint(4, (220,), generator=torch.Generator().manual_seed(1))
    idx = torch.arange(1, 1100, 1)
    x, y = data.batch(idx)
    with torch.no_grad():
        want = [100 * sum(int(m(x[i:i + 1]).argmax()) == int(y[i]) for i in range(len(idx))) / len(idx)
                for m in models]
    got = accuracy_each(Ensemble(models), data, idx)
    assert got.shape == (3,)
    torch.testing.assert_close(got, torch.tensor(want, dtype=got.dtype), rtol=0, atol=1e-4)
    assert len(set(want)) == 3


def test_audit_budget_defaults_are_the_ones_its_flags_and_the_module_state():
    """Reference: the module docstring's recipe (relearn: 5 epochs at lr 1e-4, batches of 128; relearn_time:
    a tenth of D_F, SGD at 0.01, rounds of 500 in batches of 128, 100 rounds, within 5 points; probe:
    10,000 D_R samples) and each flag's own "(default X)" text, which the scripts' --help shows."""
    b = AuditBudget()
    assert (b.relearn_epochs, b.relearn_lr, b.relearn_batch_size) == (5, 1e-4, 128)
    assert (b.time_share, b.time_lr, b.time_round, b.time_batch_size, b.time_cap, b.time_tolerance) == (
        0.1, 0.01, 500, 128, 100, 5.0)
    assert b.probe_max_retain == 10_000
    for f in dataclasses.fields(AuditBudget):
        stated = re.search(r"\(default ([0-9.e-]+)", f.metadata["help"])
        assert stated and float(stated.group(1)) == f.default, f.name


@pytest.mark.parametrize("size", [1, (1, 1), 2, (3, 2), (4, 4)])
def test_the_vmappable_pool_is_the_adaptive_average_pool(size):
    """Reference: nn.AdaptiveAvgPool2d, on inputs larger than, equal to and of the output's size."""
    from audits.ensemble import _Pool

    g = torch.Generator().manual_seed(3)
    for shape in ((2, 3, 4, 4), (2, 3, 6, 8), (2, 3, 3, 2)):
        x = torch.randn(*shape, generator=g, dtype=torch.double)
        torch.testing.assert_close(_Pool(size)(x), nn.AdaptiveAvgPool2d(size)(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [4, 10, 6])
def test_scores_refuse_a_shadow_count_the_folds_cannot_split(k):
    """Two folds of complement pairs: K a multiple of 4 and at least 8, as balanced_design asks."""
    member = torch.from_numpy(complement_pairs(k, 6, seed=1))
    with pytest.raises(ValueError, match="multiple of 4"):
        scores(torch.zeros(k, 6, dtype=torch.double), member)
    with pytest.raises(ValueError, match=r"statistics \(8, 6\) and membership \(8, 5\) differ in shape"):
        scores(torch.zeros(8, 6, dtype=torch.double), torch.zeros(8, 5, dtype=torch.bool))


def test_the_vulnerable_share_counts_targets_above_60_percent_exactly():
    """With K = 200 a target's accuracy moves in steps of 0.5 points: one at 60.5% is above the line
    (a threshold read as 60.6 would miss it), one at 60% is not."""
    k, t = 200, 40
    found = None
    for seed in range(200):
        g = np.random.default_rng(seed)
        member = complement_pairs(k, t, seed=seed)
        stat = g.normal(size=(k, t)) + 0.6 * member * g.random(t)
        acc_t = (((lira_scores(stat, member) > 0) == member).mean(0) * 100).round(9)
        if 60.5 in acc_t and 60.0 in acc_t:
            found = stat, member, acc_t
            break
    assert found is not None
    stat, member, acc_t = found
    out = attack(torch.from_numpy(stat), torch.from_numpy(member))
    assert out["summary"]["vulnerable"] == pytest.approx((acc_t > 60).mean() * 100, abs=1e-9)


def test_klom_clips_margins_on_both_sides_before_binning():
    """Reference: klom_reference. Several margins beyond -100 and +100 on both sides: clipped, they share
    the edge bins; unclipped, they would spread over bins of their own and move every bin edge."""
    unlearned = np.array([[-300.0, 400.0], [-150.0, 150.0], [20.0, -20.0], [30.0, -30.0], [25.0, -10.0]])
    oracle = np.array([[-120.0, 120.0], [-200.0, 300.0], [25.0, -25.0], [28.0, -28.0]])
    got = klom(torch.from_numpy(unlearned), torch.from_numpy(oracle)).numpy()
    np.testing.assert_allclose(got, klom_reference(unlearned, oracle), rtol=1e-12, atol=1e-12)
    unclipped = klom(torch.from_numpy(unlearned / 4), torch.from_numpy(oracle / 4)).numpy()  # nothing clipped
    assert not np.allclose(got, unclipped)  # the clip changes the figure here


@pytest.mark.parametrize("n_targets, ok", [(2, True), (1, False), ("half", True), ("half+2", False)])
def test_the_design_takes_every_target_count_from_2_to_half_the_training_set(n_targets, ok):
    """balanced_design's documented bounds: between 2 and half of the training samples, even."""
    y = torch.arange(40) % 4
    train = torch.arange(40)
    n = {"half": 20, "half+2": 22}.get(n_targets, n_targets)
    if ok:
        d = balanced_design(train, y, n, 8, seed=1)
        assert len(d.targets) == n and all(int(m.sum()) == n // 2 for m in d.member)
    else:
        with pytest.raises(ValueError, match="give between 2 and half of them \\(20\\)"):
            balanced_design(train, y, n, 8, seed=1)


def test_a_class_with_exactly_the_targets_it_must_give_is_enough():
    """Stratified targets: a class of 3 training samples can give its 3 targets (and not 4)."""
    y = torch.tensor([0] * 3 + [1] * 37)
    train = torch.arange(40)
    d = balanced_design(train, y, 6, 8, seed=2)  # 3 per class
    assert int((y[d.targets] == 0).sum()) == 3
    with pytest.raises(ValueError, match="need 4 of class 0, which has 3 training samples"):
        balanced_design(train, y, 8, 8, seed=2)
