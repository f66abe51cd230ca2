"""SalUn (Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight
Saliency", ICLR 2024): before unlearning, score each weight by |sum over D_F of the
gradient of the forget loss| and keep, for the whole run, the coordinates whose score
lies above the `quantile` quantile of all scores (SalUn's default: the median, so half
the weights move).

The gradient is taken at the original weights, in eval mode, as the paper's definition
reads and as the authors' `generate_mask.py` does at its current HEAD (its SGD step after
each forget batch was removed upstream in December 2023, commit b874ee9; the threshold is
global over all weights, as here). Deviations: theirs reads the forget set through its
augmenting, shuffled training loader (crop and flip on CIFAR-10/100 and Tiny-ImageNet),
here the stored images; theirs sums the gradients of per-batch *mean* losses (batches of
256), here the sum is over samples. The two differ by a global factor (1/256, which no
top-k selection sees) and by the weight of the last, shorter batch, which theirs counts
as much as a full one."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from unlearn import register_addon
from unlearn.addons.common import Addon, apply_mask
from unlearn.search import Range


def saliency_mask(scores: list[Tensor], quantile: float) -> list[Tensor]:
    """Keep the round((1 - quantile) * n) coordinates of largest |score| over all tensors
    together; ties are broken by position, so the kept share is exact."""
    flat = torch.cat([s.detach().abs().flatten() for s in scores])
    n_keep = round((1 - quantile) * flat.numel())
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if n_keep > 0:
        keep[torch.topk(flat, n_keep, sorted=False).indices] = True
    return [k.view_as(s) for k, s in zip(keep.split([s.numel() for s in scores]), scores)]


@register_addon("SalUn")
@dataclass
class SalUn(Addon):
    quantile: float = 0.5  # share of weights frozen (the lowest saliency)
    search = {"quantile": Range(0.1, 0.9)}  # tuned (tune.py)
    needs = ()
    keep: list[Tensor] | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if not 0 <= self.quantile < 1:
            raise ValueError(f"SalUn: --quantile must be in [0, 1), got {self.quantile}")

    def prepare(self, source):
        self.keep = saliency_mask(source.forget_grad_sum(), self.quantile)

    def direction(self, g_u, g_c, g_obj):
        return apply_mask(g_obj, self.keep), self.keep
