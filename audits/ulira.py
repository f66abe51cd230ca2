"""U-LiRA: a per-example likelihood-ratio membership attack on unlearned models (Hayes et al.,
"Inexact Unlearning Needs More Careful Evaluations to Avoid a False Sense of Privacy", 2024), in
the form of DeepUnlearn's implementation (Cadet et al., `xcadet/deepunlearn`).

The design (`balanced_design`): a stratified target set T and a pool of the other training samples.
K shadow training sets S_1..S_K come in complement pairs: S_{2j} holds a seeded half of T and a
seeded half of the pool, S_{2j+1} the other halves. So every target is in exactly K/2 sets, and every
set has the same size. Shadow model k trains on S_k; its forget set is F_k = T ∩ S_k; the method under
test unlearns F_k from it. The controls retrain on S_k \\ F_k.

The statistic (`margins`): the logit-scaled confidence log p_y - log(1 - p_y) of a target under a
model, which is the correct logit minus the log-sum-exp of the others (computed that way, it never
rounds to infinity). The NeurIPS 2023 challenge's `metric.py` scores with it; a 0/1 correctness
statistic has zero variance on most targets.

The attack (`attack`): for the attacked model j and target x, a Gaussian is fitted to the statistic
of x under the models that unlearned x (IN: trained on x, then unlearned it) and one to the models
that never trained on x (OUT), both among the models of the other fold (the models are split in two
folds of complement pairs, each attacked with the other's fits); the score is the log-likelihood
ratio, and x is called a member of model j's training set where the score is positive. DeepUnlearn
fits on every model, the attacked one included, with a 0/1 correctness statistic; we hold the
attacked models out and use the logit-scaled confidence (docs/privacy.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

MIN_SIDE = 2  # models on each side of a target's fit: a variance needs 2
MIN_SHADOWS = 4 * MIN_SIDE  # K: two folds, each with K/4 models on each side of every target
SIGMA_FLOOR = 1e-3  # the smallest standard deviation a fit may have (a target every model scores alike)
VULNERABLE = 0.6  # a target whose per-example attack accuracy is above this is vulnerable
FPRS = (0.01, 0.001)


@dataclass
class Design:
    """The shadow sets of one U-LiRA audit (index tensors into the training tensor)."""

    targets: Tensor  # T, sorted
    member: Tensor  # bool [K, |T|]: target t in S_k
    train_sets: list[Tensor]  # S_k, sorted
    forget_sets: list[Tensor]  # F_k = T ∩ S_k
    control_sets: list[Tensor]  # S_k minus F_k

    @property
    def k(self) -> int:
        return len(self.train_sets)


def balanced_design(train_idx: Tensor, y: Tensor, n_targets: int, k: int, seed: int) -> Design:
    """K shadow sets in complement pairs over a target set of `n_targets` drawn stratified by class
    (as equal a share of every class as the number allows) from `train_idx`; seeded by `seed`.
    The pool (the other samples) loses one sample if its size is odd, so that every set has the same
    size."""
    if k < MIN_SHADOWS or k % 4:
        raise ValueError(f"U-LiRA needs a multiple of 4 shadow models, at least {MIN_SHADOWS} (two folds of "
                         f"complement pairs, {MIN_SIDE} models on each side of every target in each); got {k}")
    if not 2 <= n_targets <= len(train_idx) // 2:
        raise ValueError(f"{n_targets} targets from {len(train_idx)} training samples: give between 2 and half "
                         f"of them ({len(train_idx) // 2})")
    if n_targets % 2:
        raise ValueError(f"{n_targets} targets: give an even number (each complement pair splits them in halves)")
    g = torch.Generator().manual_seed(seed)
    idx = train_idx.cpu()
    labels = y[idx].cpu()
    classes = labels.unique()
    shuffled = {int(c): idx[labels == c][torch.randperm(int((labels == c).sum()), generator=g)] for c in classes}
    share, extra = divmod(n_targets, len(classes))
    order = torch.randperm(len(classes), generator=g).tolist()  # which classes give one more target
    picked = []
    for rank, c in enumerate(order):
        want = share + (rank < extra)
        have = shuffled[int(classes[c])]
        if want > len(have):
            raise ValueError(f"{n_targets} stratified targets need {want} of class {int(classes[c])}, "
                             f"which has {len(have)} training samples")
        picked.append(have[:want])
    targets = torch.cat(picked).sort().values
    is_target = torch.isin(idx, targets)
    pool = idx[~is_target]
    pool = pool[torch.randperm(len(pool), generator=g)][: len(pool) // 2 * 2]
    member = torch.zeros(k, n_targets, dtype=torch.bool)
    train_sets, forget_sets, control_sets = [], [], []
    for _ in range(k // 2):
        t_half = torch.zeros(n_targets, dtype=torch.bool)
        t_half[torch.randperm(n_targets, generator=g)[: n_targets // 2]] = True
        p_half = torch.zeros(len(pool), dtype=torch.bool)
        p_half[torch.randperm(len(pool), generator=g)[: len(pool) // 2]] = True
        for side in (t_half, ~t_half):
            p_side = p_half if side is t_half else ~p_half
            member[len(train_sets)] = side
            f, c = targets[side], pool[p_side].sort().values
            forget_sets.append(f)
            control_sets.append(c)
            train_sets.append(torch.cat([f, c]).sort().values)
    return Design(targets, member, train_sets, forget_sets, control_sets)


def margins(logits: Tensor, y: Tensor) -> Tensor:
    """log p_y - log(1 - p_y) per row: the correct logit minus the log-sum-exp of the others."""
    logits = logits.double()
    correct = logits.gather(-1, y[..., None]).squeeze(-1)
    others = logits.scatter(-1, y[..., None], float("-inf"))
    return correct - torch.logsumexp(others, -1)


def _log_normal(x: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    return -0.5 * ((x - mu) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)


def scores(stat: Tensor, member: Tensor) -> Tensor:
    """The likelihood-ratio score [K, |T|] of every (attacked model, target): log N(s; IN) - log N(s;
    OUT). The models are split in two folds (the first K/2 and the last K/2, whole complement pairs
    each); each fold is attacked with Gaussians fitted (per target: mean, unbiased variance) on the
    other fold. Held-out fits, not leave-one-out: leaving the attacked model out of its own fit pulls
    the IN mean away from an IN model's value, which biases the per-example ranking over models
    below chance (an AUC of 44% for K = 64 with no signal at all). `stat` [K, |T|] is each model's
    statistic of each target; `member` [K, |T|] whether the target was in its training set."""
    if stat.shape != member.shape:
        raise ValueError(f"statistics {tuple(stat.shape)} and membership {tuple(member.shape)} differ in shape")
    k = stat.shape[0]
    if k < MIN_SHADOWS or k % 4:
        raise ValueError(f"{k} models: the attack needs a multiple of 4, at least {MIN_SHADOWS} (two folds of "
                         f"complement pairs, {MIN_SIDE} models on each side of a target in each)")
    s, m = stat.double(), member
    out = torch.empty_like(s)
    half = k // 2
    for attacked, fitted in ((slice(0, half), slice(half, k)), (slice(half, k), slice(0, half))):
        fits = [_fit(s[fitted], w) for w in (m[fitted], ~m[fitted])]
        out[attacked] = _log_normal(s[attacked], *fits[0]) - _log_normal(s[attacked], *fits[1])
    return out


def _fit(s: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Per target, the mean and standard deviation (unbiased, floored) of s over the rows where w."""
    n = w.sum(0)
    if n.min() < MIN_SIDE:
        raise ValueError(f"a target has {int(n.min())} models on one side of its fit; it needs {MIN_SIDE}: use "
                         "more shadow models")
    x = torch.where(w, s, 0.0)
    mu = x.sum(0) / n
    var = (torch.where(w, (s - mu) ** 2, 0.0)).sum(0) / (n - 1)
    return mu, var.sqrt().clamp_min(SIGMA_FLOOR)


def auc(score: Tensor, label: Tensor) -> float:
    """Area under the ROC curve (ties count half), NaN without both classes."""
    pos, neg = score[label], score[~label]
    if not len(pos) or not len(neg):
        return float("nan")
    ranks = _average_ranks(torch.cat([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _average_ranks(x: Tensor) -> Tensor:
    """1-based ranks, ties given their average rank."""
    order = x.argsort()
    ranks = torch.empty_like(x, dtype=torch.double)
    sorted_x = x[order]
    start = 0
    n = len(x)
    boundaries = torch.nonzero(sorted_x[1:] != sorted_x[:-1]).flatten().tolist() + [n - 1]
    for end in boundaries:
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def tpr_at(score: Tensor, label: Tensor, fpr: float) -> float:
    """True-positive rate at the lowest threshold whose false-positive rate is at most `fpr` (members
    are called where score > threshold); in %. With fewer than 1/fpr negatives that is the TPR at an
    FPR of 0 (above every negative)."""
    neg = score[~label].sort(descending=True).values
    n = len(neg)
    allowed = int(math.floor(fpr * n))  # negatives that may sit above the threshold: the most with a / n <= fpr
    allowed += allowed < n and (allowed + 1) / n <= fpr  # fpr * n can round below an integer (0.29 * 100)
    threshold = neg[allowed] if allowed < n else -float("inf")
    return float((score[label] > threshold).double().mean() * 100)


def attack(stat: Tensor, member: Tensor) -> dict:
    """U-LiRA's figures from the statistics [K, |T|] of K attacked models and their membership.

    Returns the summary (in %, 50 is chance for accuracy and AUC): `acc` and `auc`, the per-example
    attack accuracy (the decision: score > 0) and AUC averaged over the targets; `vulnerable`, the
    share of targets whose accuracy is above 60%; `tpr@1%` and `tpr@0.1%`, the pooled TPR at that
    FPR over every (model, target); each `*_std` is the spread over the attacked models (that
    model's accuracy, AUC or TPR over the targets). `per_example`: per target, `acc`, `auc`, the IN
    and OUT means and standard deviations of the statistic over all K models."""
    score = scores(stat, member)
    called = score > 0
    right = (called == member).double()
    acc_t = right.mean(0) * 100
    auc_t = torch.tensor([auc(score[:, t], member[:, t]) for t in range(stat.shape[1])]) * 100
    acc_k = right.mean(1) * 100
    auc_k = torch.tensor([auc(score[k], member[k]) for k in range(stat.shape[0])]) * 100
    flat_s, flat_m = score.flatten(), member.flatten()
    summary = {"acc": float(acc_t.mean()), "acc_std": float(acc_k.std()),
               "auc": float(auc_t.nanmean()), "auc_std": float(auc_k.std()),
               "vulnerable": float((acc_t > VULNERABLE * 100).double().mean() * 100)}
    for fpr in FPRS:
        key = f"tpr@{fpr * 100:g}%"
        summary[key] = tpr_at(flat_s, flat_m, fpr)
        summary[f"{key}_std"] = float(torch.tensor([tpr_at(score[k], member[k], fpr)
                                                    for k in range(stat.shape[0])]).std())
    s, m = stat.double(), member
    per_example = {"acc": acc_t, "auc": auc_t,
                   "in_mean": _masked(s, m).nanmean(0), "out_mean": _masked(s, ~m).nanmean(0),
                   "in_std": _masked_std(s, m), "out_std": _masked_std(s, ~m)}
    return {"summary": summary, "per_example": per_example, "score": score}


def _masked(s: Tensor, m: Tensor) -> Tensor:
    return torch.where(m, s, float("nan"))


def _masked_std(s: Tensor, m: Tensor) -> Tensor:
    x = _masked(s, m)
    mu = x.nanmean(0)
    n = m.sum(0)
    return (((x - mu) ** 2).nansum(0) / (n - 1).clamp_min(1)).sqrt()
