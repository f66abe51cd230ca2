"""The one-shot path: methods that compute one update from statistics of the data
instead of stepping a loss (FF, IU, SSD), and how an add-on restricts that update.

    delta = method.update(model, sets)        # computed on the original model, eval mode
    d, keep = addon.direction(g_u=-delta, g_c, g_obj=-delta)
    theta <- theta - d                        # = theta + delta on the kept coordinates

The update is treated as one step of the loop whose descent direction is -delta, so an
add-on means what it means in the loop: `Mask` keeps the coordinates where the update
does not increase the retain loss to first order (sign(-delta_i) = sign(g_C,i)); `VarGrad`
keeps those where it probably does not; `SalUn` lets only its salient coordinates move.
g_C is the gradient of CE on one retain batch of the companion stream (as the loop's
term computed for the add-on only), in train mode with batch-norm statistics frozen; the
add-on's `prepare` runs first, on the original model, as in the loop. A coordinate that
is not kept keeps its original value. Without an add-on theta <- theta + delta.

Randomness (FF's noise) comes from one generator seeded by `seed`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import Tensor, nn

from unlearn.addons.common import Addon, Grads
from unlearn.addons.none import NoAddon
from unlearn.impl import (
    COMPANION_STREAM,
    PREPARE_STREAM,
    Gradients,
    Stream,
    check_sets,
    context,
    gradients,
    sync,
)
from unlearn.methods.common import Batch, Method, Setting


class OneShot(Method):
    """Base of the one-shot methods: `update(model, sets)` returns the additive change of every
    trainable parameter (and a dict of figures to log); it must not change the model."""

    kind: ClassVar[str] = "one-shot"
    unlearn_epochs: ClassVar[int] = 1  # not used: a one-shot method takes no steps
    uses: ClassVar[tuple[str, ...]] = ("forget", "retain")  # the sets `update` reads (checked non-empty)

    def update(self, model: nn.Module, sets: Sets) -> tuple[Grads, dict[str, float]]:
        raise NotImplementedError


class Sets:
    """Unaugmented, unshuffled passes over D_F ("forget"), D_R ("retain") or D ("train": D_R, then
    D_F), each set in index order, and gradients with respect to the trainable parameters."""

    def __init__(self, model: nn.Module, data, forget: Tensor, retain: Tensor, batch_size: int):
        self.data, self.batch_size = data, batch_size
        # D in SSD's order: D_R, then D_F (each in index order)
        self.sets = {"forget": forget, "retain": retain, "train": torch.cat([retain, forget])}
        self.params = [p for p in model.parameters() if p.requires_grad]

    def __len__(self) -> int:
        return len(self.sets["train"])

    def size(self, name: str) -> int:
        return len(self.sets[name])

    def batches(self, name: str, size: int | None = None, limit: int | None = None) -> Iterator[Batch]:
        idx = self.sets[name][:limit]
        for chunk in idx.split(size or self.batch_size):
            yield Batch(*self.data.batch(chunk, train=False))

    def grad(self, loss: Tensor, retain_graph: bool = False) -> Grads:
        return gradients(loss, self.params, retain_graph)


def apply(model: nn.Module, data, forget: Tensor, retain: Tensor, method: OneShot, addon: Addon | None = None,
          *, seed: int, batch_size: int = 256, forgotten_class: int | None = None) -> dict:
    """Unlearn with a one-shot method (in place); returns the figures of the update, with
    `time_s` its wall time and, under an add-on that masks, `kept_share`."""
    addon = addon or NoAddon()
    if method.kind != "one-shot":
        raise ValueError(f"{method.name} is not a one-shot method; use unlearn.impl.run")
    method.configure(Setting(getattr(data, "name", ""), forgotten_class))
    check_sets(method, addon, len(forget), len(retain))
    device = next(model.parameters()).device
    sync(device)
    t0 = time.perf_counter()
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    sets = Sets(model, data, forget, retain, batch_size)
    record: dict[str, float] = {}
    if not isinstance(addon, NoAddon):
        model.train()
        addon.prepare(Gradients(model, Stream(data, forget, retain, seed + PREPARE_STREAM, device), batch_size))
    model.eval()
    method.setup(context(model, data, forget, retain, gen, forgotten_class))
    delta, figures = method.update(model, sets)
    record.update(figures)
    step = [-d for d in delta]
    if isinstance(addon, NoAddon):
        d, keep = step, None
    else:
        g_c = None
        if "utility" in addon.needs:
            model.train()
            companion = Stream(data, forget, retain, seed + COMPANION_STREAM, device)
            g_c = next(Gradients(model, companion, batch_size).retain_grads(1))
        d, keep = addon.direction(step, g_c, step)
    moved = 0
    with torch.no_grad():
        for p, di in zip(sets.params, d):
            new = p - di
            moved += (new != p).sum()
            p.copy_(new)
    model.eval()
    total = sum(p.numel() for p in sets.params)
    if keep is not None:
        record["kept_share"] = sum(k.sum().item() for k in keep) / total
    record["moved_share"] = float(moved) / total  # coordinates whose value changed
    sync(device)
    record["time_s"] = time.perf_counter() - t0
    return record
