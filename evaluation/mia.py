"""Membership inference on the forget set.

SVC attack (MIA-efficacy, Unlearn-Sparse): an RBF SVC (C=3, gamma="auto") is trained
on one feature of the model's outputs to separate retain samples (members, label 1)
from test samples (non-members, label 0), then applied to D_F; the score is the share
of D_F predicted non-member, in percent. Features: correctness, confidence (the
true-class probability: `MIA`), entropy, modified entropy and the probability vector.
Closer to the ideal model's value is better. The modified entropy follows Song and Mittal
(2021): -(1 - p_y) log p_y - sum over i != y of p_i log(1 - p_i). Unlearn-Sparse's
`SVC_MIA.m_entropy` differs: it takes log p where log(1 - p) belongs, and indexes whole
columns by the set's labels (`modified_probs[:, labels]`) rather than one entry per row,
which gives another feature where a set holds several classes.

Loss attack (our own protocol): logistic regression on the per-sample cross-entropy,
D_F (label 1) versus an equal-size random subset of D_T (label 0), 10-fold stratified
cross validation; accuracy (%) and AUC. 0.5 AUC / 50% accuracy is ideal: the forget
set's losses look like unseen data. It is not SCRUB's (`MIA_experiments.ipynb`), which
keeps only the test samples of the forget set's classes, clips the raw loss to [-100,
100], balances the two groups by subsampling the larger and scores a default logistic
regression by accuracy over 5 stratified shuffle splits (10% held out each). On digits
class 3 (smallcnn, 30 epochs, seeds 1-3) the ideal model scores 95.2-97.6% here and 42-64%
under theirs (46 test samples of the class, so 10 held out per split: a coarse figure):
against test samples of the same class, its forgotten samples look unseen, as they are.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

FEATURES = ("correctness", "confidence", "entropy", "m_entropy", "prob")
EPS = 1e-30


def attack_features(logits: Tensor, y: Tensor) -> dict[str, np.ndarray]:
    """Each attack feature of samples with `logits` and true labels `y`, as (n, d) arrays."""
    p = torch.softmax(logits.double(), 1)
    p_y = p.gather(1, y[:, None]).squeeze(1)
    log_p, log_1mp = torch.log(p.clamp_min(EPS)), torch.log((1 - p).clamp_min(EPS))
    entropy = -(p * log_p).sum(1)
    others = torch.ones_like(p, dtype=torch.bool).scatter_(1, y[:, None], False)
    # Mentr(p, y) = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)
    m_entropy = -(1 - p_y) * torch.log(p_y.clamp_min(EPS)) - (p * log_1mp * others).sum(1)
    feats = {"correctness": (p.argmax(1) == y).double(), "confidence": p_y, "entropy": entropy,
             "m_entropy": m_entropy}
    out = {k: v.cpu().numpy()[:, None] for k, v in feats.items()}
    out["prob"] = p.cpu().numpy()
    return out


def svc_efficacy(members: np.ndarray, non_members: np.ndarray, target: np.ndarray) -> float:
    """Share (%) of `target` that an SVC trained members-vs-non-members calls non-member."""
    from sklearn.svm import SVC

    if len(target) == 0 or len(members) == 0 or len(non_members) == 0:
        return float("nan")
    x = np.concatenate([members, non_members])
    y = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    if np.ptp(x, axis=0).max() == 0:  # one constant feature: nothing to learn, every sample is alike
        clf_pred = np.full(len(target), float(len(members) >= len(non_members)))
    else:
        clf_pred = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y).predict(target)
    return float((1 - clf_pred).mean() * 100)


def svc_samples(n_retain: int, non_logits: Tensor, non_y: Tensor, seed: int,
                svc_max: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """The SVC attack's training sides: the non-members (capped at `svc_max` by a seeded subsample) and
    the indices of as many retain samples as members, drawn next from the same generator."""
    rng = np.random.default_rng(seed)
    if svc_max is not None and len(non_y) > svc_max:
        pick = torch.from_numpy(np.sort(rng.choice(len(non_y), svc_max, replace=False)))
        non_logits, non_y = non_logits[pick], non_y[pick]
    members = torch.from_numpy(np.sort(rng.choice(n_retain, min(n_retain, len(non_y)), replace=False)))
    return non_logits, non_y, members


def svc_mia(member_logits: Tensor, member_y: Tensor, test_logits: Tensor, test_y: Tensor,
            forget_logits: Tensor, forget_y: Tensor) -> dict[str, float]:
    """MIA-efficacy on D_F for every feature; `MIA` is the confidence one."""
    m, t, f = (attack_features(*a) for a in ((member_logits, member_y), (test_logits, test_y),
                                              (forget_logits, forget_y)))
    out = {f"MIA_{k}": svc_efficacy(m[k], t[k], f[k]) for k in FEATURES}
    out["MIA"] = out["MIA_confidence"]
    return out


def per_sample_loss(logits: Tensor, y: Tensor) -> np.ndarray:
    return torch.nn.functional.cross_entropy(logits.double(), y, reduction="none").cpu().numpy()


def loss_attack(forget_loss: np.ndarray, test_loss: np.ndarray, seed: int = 0, folds: int = 10) -> dict[str, float]:
    """Logistic regression on the loss, forget (1) vs test (0), balanced, stratified k-fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    n = min(len(forget_loss), len(test_loss))
    folds = min(folds, n)
    if folds < 2:
        return {"loss_MIA_acc": float("nan"), "loss_MIA_auc": float("nan")}
    rng = np.random.default_rng(seed)
    f = rng.choice(forget_loss, n, replace=False)
    t = rng.choice(test_loss, n, replace=False)
    x = np.log(np.concatenate([f, t]) + 1e-12)[:, None]  # losses span decades; log makes them linear
    y = np.concatenate([np.ones(n), np.zeros(n)])
    score, pred = np.empty(2 * n), np.empty(2 * n)
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        clf = LogisticRegression().fit(x[tr], y[tr])
        score[te], pred[te] = clf.predict_proba(x[te])[:, 1], clf.predict(x[te])
    return {"loss_MIA_acc": float((pred == y).mean() * 100), "loss_MIA_auc": float(roc_auc_score(y, score))}
