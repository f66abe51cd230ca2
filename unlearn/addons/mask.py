"""Mask ("Masking Gradients Can Improve Machine Unlearning"): keep coordinate i only
where the unlearning and utility gradients agree in sign, g_U,i * g_C,i > 0. On the
kept coordinates the step cannot increase L_C to first order (a feasible update)."""

from dataclasses import dataclass

import torch
from torch import Tensor

from unlearn import register_addon
from unlearn.addons.common import Addon, apply_mask, flatten, split_like


def sign_agreement(g_u: Tensor, g_c: Tensor) -> Tensor:
    """Boolean mask of the coordinates where both gradients point the same way (zeros excluded)."""
    return torch.sign(g_u) * torch.sign(g_c) > 0  # signs, not the product: it can underflow to 0


@register_addon("Mask")
@dataclass
class Mask(Addon):
    needs = ("unlearn", "utility")

    def direction(self, g_u, g_c, g_obj):
        keep = split_like(sign_agreement(flatten(g_u), flatten(g_c)), g_u)  # one kernel each over all weights
        return apply_mask(g_obj, keep), keep
