"""The two ensemble scores of unlearning the field reports beside U-LiRA: the NeurIPS 2023 Machine
Unlearning Challenge's forgetting score, and KLoM.

**Challenge score** (google-deepmind/unlearning_evaluation, `metric.py`). From one original model,
K unlearning runs of the method (seeds differ) and K models retrained on D_R (seeds differ). Per
forget example, the statistic `conf` = log p_y - log(1 - p_y) under every model gives two samples
of size K. epsilon(x) is the largest privacy loss over decision rules that tell the two groups
apart, at delta = 1e-5:

    epsilon = max(log(1 - delta - FPR) - log(FNR), log(1 - delta - FNR) - log(FPR)), clipped at 0

over single thresholds (positive: `conf >= t`, the positive group being the one of larger median;
ties make the unlearned group positive) and two-threshold intervals (positive: `l <= conf <= r`,
the positive group being the one of smaller range, the right end within 2 of that group's top and the
width within 2 of its range, `metric.py`'s windows). As in `metric.py`: a rule with FPR * FNR = 0
is discarded unless it separates the groups perfectly (then epsilon is infinite), two groups whose
ranges differ by a factor of 100 or more ("peaky") give the cap, and every epsilon is clipped to
[0, 50]. Where `metric.py` tries the ends on a grid of step 0.01 (about 100 per unit, 400 per window),
we take every distinct pooled value in the same windows: rates change only at data values, so this
is the supremum over the same family of rules, never below the grid's figure (a grid point can fall
between two data values and miss a rule). Every interval, not only those in the windows, would
overfit: with K = 64 and no signal at all it gives a mean epsilon of 2.1. The forgetting quality gives each example
2^-floor(2 epsilon) points below ceil(ln(K - 1)) (the largest epsilon K models can show: a rate is
at least 1/K), 0 above, averaged over D_F; the score multiplies it by the unlearned models' mean RA
and TA over the retrained models'.

**KLoM** (Georgiev et al., "Attribute-to-Delete", 2024; EasyDUB's `eval.py`). Per point, the margin
(correct logit minus the log-sum-exp of the others) under N unlearned models and N oracles; both
samples clipped to [-100, 100]; 20 equal bins over their shared range (a range of zero widened to 1);
each histogram normalised; the oracle's bins floored at 1e-5 where the unlearned one has mass;
KL(unlearned || oracle) = sum over those bins of p log(p / q), the direction of EasyDUB and of the
paper's code (the DUB benchmark's `run.py` passes its arguments the other way round, which computes
KL(oracle || unlearned)). EasyDUB's `np.digitize` drops a sample equal to the top edge (the largest
margin of the pair); we count it in the last bin.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DELTA = 1e-5
EPSILON_CAP = 50.0
PEAKY = 0.01  # smallest range / largest range below this: the cap
BUFFER = 2.0  # metric.py's window around the positive group's range for the intervals' ends
KLOM_BINS, KLOM_CLIP, KLOM_FLOOR = 20, 100.0, 1e-5


# ----------------------------------------------------------------------------- challenge
def confidences(logits: Tensor, y: Tensor) -> Tensor:
    """`metric.py`'s statistic, log p_y - log(sum of the other p), as the correct logit minus the
    log-sum-exp of the others (finite where `metric.py` adds 1e-45 inside its logs)."""
    logits = logits.double()
    y = y.expand(logits.shape[:-1])[..., None]  # one label per example, whatever models lead the shape
    correct = logits.gather(-1, y).squeeze(-1)
    return correct - torch.logsumexp(logits.scatter(-1, y, float("-inf")), -1)


def _epsilon_of(fpr: Tensor, fnr: Tensor, delta: float) -> Tensor:
    """Per rule, the privacy loss; NaN where FPR * FNR = 0 without perfect separation, inf with it."""
    with torch.no_grad():
        # metric.py's nanmax: where 1 - delta - FPR < 0, the other branch alone counts
        eps = torch.fmax(torch.log1p(-delta - fpr) - torch.log(fnr), torch.log1p(-delta - fnr) - torch.log(fpr))
        eps = eps.clamp_min(0)
        eps = torch.where(fpr * fnr == 0, float("nan"), eps)
        return torch.where((fpr + fnr) == 0, float("inf"), eps)


def example_epsilon(unlearned: Tensor, retrained: Tensor, delta: float = DELTA) -> float:
    """epsilon of one example from its statistic under the unlearned models and the retrained ones."""
    u, r = unlearned.double(), retrained.double()
    ranges = torch.stack([u.max() - u.min(), r.max() - r.min()])
    if ranges.max() == 0 or ranges.min() / ranges.max() < PEAKY:
        return EPSILON_CAP
    best = []
    # single thresholds: the positive group has the larger median (a tie: the unlearned one)
    pos, neg = (r, u) if r.median() > u.median() else (u, r)
    t = torch.cat([pos, neg]).unique()  # conf >= t, for every distinct value (and above all of them)
    t = torch.cat([t, t[-1:] + 1])
    tpr = (pos[None] >= t[:, None]).double().mean(1)
    fpr = (neg[None] >= t[:, None]).double().mean(1)
    best.append(_epsilon_of(fpr, 1 - tpr, delta))
    # intervals: the positive group has the smaller range (metric.py swaps when pos range >= neg range)
    pos, neg = (u, r) if ranges[0] < ranges[1] else (r, u)
    # metric.py's family: the right end within BUFFER of the positive group's top (from its bottom plus
    # its range w minus BUFFER), the width within BUFFER of w; every pooled value in those windows
    v = torch.cat([pos, neg]).unique()
    w = pos.max() - pos.min()
    right = v[(v >= pos.min() + w - BUFFER) & (v <= pos.max() + BUFFER)]
    lo_end, hi_end = right[:, None] - w - BUFFER, right[:, None] - w + BUFFER
    pairs = ((v[None] >= lo_end) & (v[None] <= hi_end) & (v[None] <= right[:, None])).nonzero()
    left, end = v[pairs[:, 1]], right[pairs[:, 0]]
    inside_pos = ((pos[None] >= left[:, None]) & (pos[None] <= end[:, None])).double().mean(1)
    inside_neg = ((neg[None] >= left[:, None]) & (neg[None] <= end[:, None])).double().mean(1)
    best.append(_epsilon_of(inside_neg, 1 - inside_pos, delta))
    eps = torch.cat(best)
    kept = eps[~eps.isnan()]
    if not len(kept):
        return 0.0
    return float(kept.max().clamp(0, EPSILON_CAP))


def epsilons(unlearned: Tensor, retrained: Tensor, delta: float = DELTA) -> Tensor:
    """Per example, epsilon from statistics [K_u, n] and [K_r, n] (models x examples)."""
    if unlearned.shape[1] != retrained.shape[1]:
        raise ValueError(f"{unlearned.shape[1]} and {retrained.shape[1]} examples: give the same forget set")
    return torch.tensor([example_epsilon(unlearned[:, i], retrained[:, i], delta) for i in range(unlearned.shape[1])],
                        dtype=torch.float64)  # float32 could move an epsilon across a bucket's edge


def max_epsilon(k: int) -> int:
    """The largest epsilon the forgetting quality tells apart with K models (metric.py: ceil(ln(K - 1)))."""
    return math.ceil(math.log(k - 1))


def forget_quality(eps: Tensor, k: int) -> float:
    """Mean over examples of 2^-floor(2 epsilon) below max_epsilon(k), else 0 (metric.py's buckets)."""
    points = torch.where(eps < max_epsilon(k), 2.0 ** -torch.floor(2 * eps), torch.zeros_like(eps))
    return float(points.mean())


# ----------------------------------------------------------------------------------- KLoM
def klom(unlearned: Tensor, oracle: Tensor) -> Tensor:
    """Per point, KL(unlearned || oracle) of the binned margins, from margins [N_u, n] and [N_o, n]."""
    p_s = unlearned.double().clamp(-KLOM_CLIP, KLOM_CLIP)
    q_s = oracle.double().clamp(-KLOM_CLIP, KLOM_CLIP)
    lo = torch.minimum(p_s.min(0).values, q_s.min(0).values)
    hi = torch.maximum(p_s.max(0).values, q_s.max(0).values)
    hi = torch.where(lo >= hi, lo + 1, hi)
    width = (hi - lo) / KLOM_BINS

    def histogram(s: Tensor) -> Tensor:
        b = ((s - lo) / width).floor().long().clamp(0, KLOM_BINS - 1)  # the top edge goes to the last bin
        counts = torch.zeros(KLOM_BINS, s.shape[1], dtype=torch.double).scatter_add_(0, b, torch.ones_like(s))
        return counts / counts.sum(0, keepdim=True)

    p, q = histogram(p_s), histogram(q_s)
    q = torch.where(p > 0, q.clamp_min(KLOM_FLOOR), q)
    terms = torch.where(p > 0, p * torch.log(p / q), torch.zeros_like(p))
    return terms.sum(0)
