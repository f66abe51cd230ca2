"""The add-on contract.

Each step the engine hands an add-on three gradient lists (one tensor per
parameter): g_u of the unlearning term, g_c of the utility term (computed for
the add-on even when the method has no such term) and g_obj, the gradient of
the method's own objective. The add-on returns the update direction d and,
when it masks, the boolean `keep` masks; a coordinate outside `keep` does not
move in that step (the engine keeps it out of momentum and weight decay too).

Add-ons never see data: `prepare` may ask the engine for gradients before the
first step (a static saliency mask, a warm-up of running statistics).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import Tensor

Grads = list[Tensor]


def flatten(tensors: list[Tensor]) -> Tensor:
    """The tensors' elements, one after the other, as one flat tensor (logical order)."""
    return torch.cat([t.reshape(-1) for t in tensors])


class Flat:
    """Tensors shaped like `like` (zeros), held as views (`views`) of one flat tensor (`flat`):
    an elementwise operation over all of them is one kernel on `flat`, and `split` shapes a
    flat result back into per-parameter views without copying."""

    def __init__(self, like: list[Tensor], dtype: torch.dtype | None = None):
        self.shapes = [t.shape for t in like]
        self.flat = torch.zeros(sum(t.numel() for t in like), dtype=dtype or like[0].dtype, device=like[0].device)
        self.views = self.split(self.flat)

    def split(self, flat: Tensor) -> list[Tensor]:
        return _split(flat, self.shapes)


def _split(flat: Tensor, shapes: list[torch.Size]) -> list[Tensor]:
    return [v.view(s) for v, s in zip(flat.split([s.numel() for s in shapes]), shapes)]


class GradSource(Protocol):
    def retain_grads(self, n: int) -> Iterator[Grads]:
        """g_c (CE on a retain batch) of `n` successive retain batches."""

    def forget_grad_sum(self) -> Grads:
        """Sum over every forget batch of the gradient of the forget loss (-CE)."""


@dataclass
class Addon:
    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()  # separate gradients read each step: "unlearn", "utility"

    def prepare(self, source: GradSource) -> None:
        """Called once before the first step."""

    def direction(self, g_u: Grads | None, g_c: Grads | None, g_obj: Grads) -> tuple[Grads, list[Tensor] | None]:
        raise NotImplementedError


def apply_mask(g_obj: Grads, keep: list[Tensor]) -> Grads:
    return torch._foreach_mul(g_obj, keep)


def split_like(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    """Views of `flat` shaped like the tensors of `like`, in order (the inverse of `flatten`)."""
    return _split(flat, [t.shape for t in like])
