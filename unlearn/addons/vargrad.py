"""VarGrad ("Improving Unlearning with Model Updates Probably Aligned with Gradients",
AISec'25): keep coordinate i when a utility gradient probably agrees in sign with the
unlearning step. Running EMA estimates (factor beta) of the mean m_i and the variance v_i
of one retain batch's utility gradient give, under a Gaussian model of that batch
gradient, p_i = Phi(sign(g_U,i) * m_i / sqrt(v_i + eps)): the probability that a fresh
batch gradient g_C,i agrees in sign with g_U,i (with v the variance of one batch
gradient, not of the mean m, p_i is not the probability that the true, full-data
gradient agrees; that would divide by the standard error, sqrt(v_i / n)). Coordinate i is
kept when p_i > quantile.

Warm-up: before the first step, the mean and variance are estimated exactly (sample mean
and unbiased sample variance, Welford's algorithm) over `warmup_batches` >= 2 retain
batches of the add-on's own stream; the EMA continues from them. An EMA started from zero
without correction is biased low (about 0.54 sigma^2 after five samples at beta 0.9), which
would make short runs keep more than `--quantile` says; a variance from fewer than two
batches is no estimate, so fewer warm-up batches are refused. With beta = 0 the estimate
is the current batch gradient and quantile 0.5 keeps exactly the coordinates of `Mask`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from unlearn import register_addon
from unlearn.addons.common import Addon, apply_mask, flatten, split_like
from unlearn.search import Range

EPS = 1e-16  # added to the variance; far below squared float32 gradients of any size that matters


def ema_moments(mean: Tensor, var: Tensor, g: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """One exponential-moving-average update of the mean and variance with a new sample g."""
    delta = g - mean
    mean = mean + (1 - beta) * delta
    var = beta * (var + (1 - beta) * delta * delta)
    return mean, var


def welford(mean: Tensor, m2: Tensor, g: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Add the n-th sample g (n >= 1) to a running mean and sum of squared deviations m2;
    the unbiased variance of the n samples is m2 / (n - 1)."""
    delta = g - mean
    mean = mean + delta / n
    return mean, m2 + delta * (g - mean)


def alignment_z(g_u: Tensor, mean: Tensor, var: Tensor, eps: float = EPS) -> Tensor:
    """z_i = sign(g_U,i) * m_i / sqrt(v_i + eps); the probability of alignment is Phi(z_i)."""
    return torch.sign(g_u) * mean / torch.sqrt(var + eps)


def aligned_probability(g_u: Tensor, mean: Tensor, var: Tensor, eps: float = EPS) -> Tensor:
    return torch.special.ndtr(alignment_z(g_u, mean, var, eps))


def probably_aligned(g_u: Tensor, mean: Tensor, var: Tensor, quantile: float, eps: float = EPS) -> Tensor:
    """Keep mask p_i > quantile, compared as z_i > Phi^-1(quantile) so that no rounding of Phi
    near 0.5 or 1 changes the decision."""
    threshold = torch.special.ndtri(torch.tensor(quantile, dtype=torch.float64)).item()
    return alignment_z(g_u, mean, var, eps) > threshold


@register_addon("VarGrad")
@dataclass
class VarGrad(Addon):
    beta: float = 0.9  # EMA factor of the running mean and variance
    quantile: float = 0.55  # keep when the probability of alignment exceeds it
    warmup_batches: int = 4  # retain batches that estimate the statistics before the first step (>= 2)
    search = {"beta": Range(0.5, 0.99), "quantile": Range(0.3, 0.9)}  # tuned (tune.py)
    needs = ("unlearn", "utility")
    # the running estimates over all weights, as one flat tensor each (logical order of the parameters)
    mean: Tensor | None = field(default=None, init=False, repr=False)
    var: Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if not 0 <= self.beta < 1:
            raise ValueError(f"VarGrad: --beta must be in [0, 1), got {self.beta}")
        if not 0 < self.quantile <= 1:  # 1 keeps nothing: every coordinate frozen
            raise ValueError(f"VarGrad: --quantile must be in (0, 1], got {self.quantile}")
        if self.warmup_batches < 2:
            raise ValueError(f"VarGrad: --warmup_batches must be at least 2 (a variance needs two batches), "
                             f"got {self.warmup_batches}")

    def prepare(self, source):
        n = 0
        for g_c in source.retain_grads(self.warmup_batches):
            n += 1
            if n == 1:
                self.mean = flatten(g_c)
                m2 = torch.zeros_like(self.mean)
            else:
                self.mean, m2 = welford(self.mean, m2, flatten(g_c), n)
        self.var = m2 / (n - 1)

    def direction(self, g_u, g_c, g_obj):
        # elementwise over all weights at once: a fixed number of kernels whatever the depth
        self.mean, self.var = ema_moments(self.mean, self.var, flatten(g_c), self.beta)
        keep = split_like(probably_aligned(flatten(g_u), self.mean, self.var, self.quantile), g_u)
        return apply_mask(g_obj, keep), keep
