"""Closeness of the unlearned model to the original and the ideal model.

* rUA = (UA - UA_orig) / (UA_ideal - UA_orig): the fraction of the way from the
  original model's UA to the ideal model's (1 = reached it; 0 = no progress; above
  1 = overshoot); NaN when |UA_ideal - UA_orig| < 0.1 points. Closer to 1 is better.
* FID: Frechet distance between Gaussians fitted to the two models' logit vectors on
  the same samples. Logits, not hidden features: two independently trained
  networks share only their output space. Lower is better.
* KL: mean over samples of KL(ideal || unlearned) of the softmax outputs. Lower is better.
* Avg. Gap: mean |x - x_ideal| over UA, RA, TA, MIA. Lower is better.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor

MIN_RUA_DENOMINATOR = 1.0  # points of UA
MIN_RUA_SAMPLES = 5  # forget samples the ideal and original models must disagree on, in UA


def rua_threshold(n_forget: int | None) -> float:
    """The smallest |UA_ideal - UA_original| (points) over which rUA is a ratio worth reading: 1 point,
    and the UA of MIN_RUA_SAMPLES forget samples (on 100 samples, 5 points): below it the denominator
    is a handful of samples and the ratio is noise (digits random N=100: ideal 2 points above
    the original gave rUA 3.4 +- 2.7)."""
    return max(MIN_RUA_DENOMINATOR, 100.0 * MIN_RUA_SAMPLES / n_forget if n_forget else 0.0)


def relative_ua(ua: float, ua_original: float, ua_ideal: float, n_forget: int | None = None) -> float:
    """rUA; NaN (with a warning) when the original and the ideal model are too close to tell apart:
    their UA differ by less than rua_threshold(n_forget) points."""
    denominator = ua_ideal - ua_original
    threshold = rua_threshold(n_forget)
    if abs(denominator) < threshold:
        warnings.warn(f"rUA undefined: the ideal and original UA differ by {denominator:.3g} points "
                      f"(< {threshold:.3g})", stacklevel=2)
        return float("nan")
    return (ua - ua_original) / denominator


def gaussian_fit(x: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of the rows of x, in float64."""
    a = x.detach().double().cpu().numpy()
    cov = np.cov(a, rowvar=False) if len(a) > 1 else np.zeros((a.shape[1], a.shape[1]))
    return a.mean(0), np.atleast_2d(cov)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2), computed through symmetric
    eigen-decompositions (stable for the singular covariances of small forget sets)."""
    w, v = np.linalg.eigh(cov1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root1 @ cov2 @ root1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)
    return max(value, 0.0)


def logit_fid(logits_a: Tensor, logits_b: Tensor) -> float:
    """FID between the logit distributions of two models on the same samples."""
    if len(logits_a) == 0:
        return float("nan")
    return frechet_distance(*gaussian_fit(logits_a), *gaussian_fit(logits_b))


def mean_kl(logits_ideal: Tensor, logits_model: Tensor) -> float:
    """Mean over samples of KL(softmax(ideal) || softmax(model)), in nats."""
    if len(logits_ideal) == 0:
        return float("nan")
    p_log = torch.log_softmax(logits_ideal.double(), 1)
    q_log = torch.log_softmax(logits_model.double(), 1)
    return (p_log.exp() * (p_log - q_log)).sum(1).mean().item()


def avg_gap(metrics: dict[str, float], ideal: dict[str, float], keys=("UA", "RA", "TA", "MIA")) -> float:
    gaps = [abs(metrics[k] - ideal[k]) for k in keys]
    return float(np.mean(gaps)) if all(math.isfinite(g) for g in gaps) else float("nan")
