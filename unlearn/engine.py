"""The engine: the toolkit's one training loop, and the only code that steps the weights.

Training the original model, retraining the ideal one and every unlearning
method run through `run()`. The single extension point is the pair
(method, add-on):

    for epoch in range(recipe.epochs):
        for B_F, B_R in paired batches:            # one pass over method.epoch_over
            terms = method.losses(model, B_F, B_R, progress)   # {"unlearn": L_U, "utility": L_C}
            if the add-on reads separate gradients:
                g_U, g_C = grad L_U, grad L_C       # a term the method lacks is computed
                                                    #   for the add-on only (-CE(B_F), CE(B_R))
            g_obj = grad of the method's own terms  # d = g_U + g_C without an add-on
            d, keep = addon.direction(g_U, g_C, g_obj)
            sgd_step(params, d, keep)               # coordinates outside `keep` do not move,
                                                    #   not even through momentum or weight decay

Usable from a notebook:

    model, history = run(model, data, split.forget, split.retain, *make("NegGrad+VarGrad"),
                         Recipe(lr=0.01, epochs=5))
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from unlearn.addons.common import Addon, Grads
from unlearn.addons.none import NoAddon
from unlearn.methods.common import Batch, Context, Method, Progress

CHECK_EVERY = 20  # steps between non-finite checks (each costs one device sync)


@dataclass
class Recipe:
    """Optimisation hyper-parameters (SGD as in the papers' code)."""

    lr: float = 0.01
    epochs: int = 10
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decreasing_lr: list[int] = field(default_factory=list)  # epochs at which lr is multiplied by 0.1
    warmup: int = 0  # epochs of linear warm-up from lr / steps to lr


class Diverged(RuntimeError):
    """A loss term became non-finite; the weights after this point are meaningless."""


def lr_at(recipe: Recipe, epoch: int, step: int, steps: int) -> float:
    """Learning rate of one step: linear warm-up, then x0.1 at each `decreasing_lr` milestone."""
    if epoch < recipe.warmup:
        return recipe.lr * (epoch * steps + step + 1) / (recipe.warmup * steps)
    return recipe.lr * 0.1 ** sum(epoch >= m for m in recipe.decreasing_lr)


@torch.no_grad()
def sgd_step(params: list[Tensor], d: Grads, keep: list[Tensor] | None, bufs: list[Tensor],
             lr: float, momentum: float, weight_decay: float) -> None:
    """SGD with momentum and weight decay along d. Where `keep` is False the coordinate,
    its momentum buffer and its weight decay are all left untouched."""
    for i, (p, g, buf) in enumerate(zip(params, d, bufs)):
        g = g + weight_decay * p if weight_decay else g
        if keep is None:
            buf.mul_(momentum).add_(g)
            p.sub_(lr * buf)
        else:
            k = keep[i]
            buf.copy_(torch.where(k, momentum * buf + g, buf))
            p.sub_(torch.where(k, lr * buf, 0.0))


def _batches(idx: Tensor, size: int) -> list[Tensor]:
    """A shuffled pass over `idx` in batches; a last batch of one sample joins the one before
    (batch norm cannot train on one sample), and a set of one sample is doubled."""
    if len(idx) == 1:
        return [idx.repeat(2)]
    chunks = list(idx[torch.randperm(len(idx), device=idx.device)].split(size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2] = torch.cat(chunks[-2:])
        chunks.pop()
    return chunks


class _Cycle:
    """Endless shuffled batches of one index set (the set an epoch does not pass over)."""

    def __init__(self, idx: Tensor, size: int):
        self.idx, self.size, self.queue = idx, size, []

    def __next__(self) -> Tensor:
        if not self.queue:
            self.queue = _batches(self.idx, self.size)
        return self.queue.pop(0)


class _Gradients:
    """Gradients on demand, for the step and for an add-on's `prepare`."""

    def __init__(self, model: nn.Module, data, forget: Tensor, retain: Tensor, batch_size: int):
        self.model, self.data, self.bs = model, data, batch_size
        self.forget, self.retain = forget, retain
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.retain_cycle = _Cycle(retain, batch_size) if len(retain) else None

    def of(self, loss: Tensor, retain_graph: bool = False) -> Grads:
        gs = torch.autograd.grad(loss, self.params, allow_unused=True, retain_graph=retain_graph)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(gs, self.params)]

    def retain_grads(self, n: int) -> list[Grads]:
        if n and self.retain_cycle is None:
            raise ValueError("this add-on needs retain batches, but the retain set is empty")
        saved = {k: v.clone() for k, v in self.model.state_dict().items()}  # batch-norm statistics
        out = []
        for _ in range(n):
            x, y = self.data.batch(next(self.retain_cycle), train=True)
            out.append(self.of(F.cross_entropy(self.model(x), y)))
        self.model.load_state_dict(saved)
        return out

    def forget_grad_sum(self) -> Grads:
        if not len(self.forget):
            raise ValueError("this add-on needs the forget set, but it is empty")
        was_training = self.model.training
        self.model.eval()
        total = [torch.zeros_like(p) for p in self.params]
        for idx in self.forget.split(self.bs):
            x, y = self.data.batch(idx, train=False)
            for t, g in zip(total, self.of(-F.cross_entropy(self.model(x), y, reduction="sum"))):
                t.add_(g)
        self.model.train(was_training)
        return total


def check_sets(method: Method, addon: Addon, n_forget: int, n_retain: int) -> tuple[bool, bool]:
    """Which batches a step draws (forget, retain); ValueError when a set it needs is empty."""
    need_f = "forget" in method.uses or "unlearn" in addon.needs
    need_r = "retain" in method.uses or "utility" in addon.needs
    for needed, n, what in ((need_f, n_forget, "forget"), (need_r, n_retain, "retain")):
        if needed and not n:
            raise ValueError(f"{method.name}+{addon.name} needs a non-empty {what} set")
    return need_f, need_r


def run(model: nn.Module, data, forget: Tensor, retain: Tensor, method: Method, addon: Addon | None = None,
        recipe: Recipe | None = None, *, on_epoch_end: Callable[[int, dict], dict | None] | None = None,
        progress: bool = True, desc: str = "") -> tuple[nn.Module, list[dict]]:
    """Run `method` with `addon` on the model (in place) and return it with a per-epoch history.

    `data.batch(idx, train)` turns index tensors into (inputs, labels); `forget` and
    `retain` are index tensors into the training tensor. `on_epoch_end(epoch, record)`
    may evaluate and return figures to add to that epoch's record; its time is not
    counted in `record["time_s"]`. Raises Diverged on a non-finite loss.
    """
    recipe = recipe or Recipe()
    addon = addon or NoAddon()
    need_f, need_r = check_sets(method, addon, len(forget), len(retain))
    epoch_set = forget if method.epoch_over == "forget" else retain
    other = {"forget": _Cycle(forget, recipe.batch_size) if need_f else None,
             "retain": _Cycle(retain, recipe.batch_size) if need_r else None}

    grads = _Gradients(model, data, forget, retain, recipe.batch_size)
    params = grads.params
    bufs = [torch.zeros_like(p) for p in params]
    model.train()
    method.setup(Context(model, data.num_classes, len(forget), len(retain)))
    addon.prepare(grads)

    history = []
    for epoch in range(recipe.epochs):
        sync(params[0].device)
        t0 = time.perf_counter()
        chunks = _batches(epoch_set, recipe.batch_size)
        sums: dict[str, Tensor] = {}
        kept, masked = torch.zeros((), device=params[0].device), False
        bar = tqdm(chunks, desc=f"{desc} epoch {epoch + 1}/{recipe.epochs}".strip(), file=sys.stderr,
                   disable=True if not progress else None,  # None: no bar when stderr is not a terminal
                   mininterval=1.0, leave=False, dynamic_ncols=True)
        for step, idx in enumerate(bar):
            b = {"forget": None, "retain": None}
            for name in ("forget", "retain"):
                if method.epoch_over == name and other[name] is not None:
                    b[name] = Batch(*data.batch(idx, train=True))
                elif other[name] is not None:
                    b[name] = Batch(*data.batch(next(other[name]), train=True))
            prog = Progress(epoch, recipe.epochs, step, len(chunks))
            terms = method.losses(model, b["forget"], b["retain"], prog)
            own = [terms[k] for k in ("unlearn", "utility") if k in terms]
            if addon.needs:
                l_u = terms.get("unlearn")
                if l_u is None and "unlearn" in addon.needs:
                    l_u = -F.cross_entropy(model(b["forget"].x), b["forget"].y)
                l_c = terms.get("utility")
                if l_c is None and "utility" in addon.needs:
                    l_c = F.cross_entropy(model(b["retain"].x), b["retain"].y)
                g_u = grads.of(l_u, retain_graph=True) if l_u is not None else None
                g_c = grads.of(l_c) if l_c is not None else None
                parts = [g for k, g in (("unlearn", g_u), ("utility", g_c)) if k in terms]
                g_obj = [sum(gs) for gs in zip(*parts)]
            else:
                g_u = g_c = None
                g_obj = grads.of(sum(own))
            d, keep = addon.direction(g_u, g_c, g_obj)
            lr = lr_at(recipe, epoch, step, len(chunks))
            sgd_step(params, d, keep, bufs, lr, recipe.momentum, recipe.weight_decay)

            for k, v in terms.items():
                sums[k] = sums.get(k, 0) + v.detach()
            if keep is not None:
                masked = True
                kept += sum(k.sum() for k in keep) / sum(k.numel() for k in keep)
            if step % CHECK_EVERY == CHECK_EVERY - 1 or step == len(chunks) - 1:
                _check_finite(sums, epoch, step)
                if progress:
                    bar.set_postfix({k: f"{v.item() / (step + 1):.3g}" for k, v in sums.items()}, refresh=False)
        bar.close()
        sync(params[0].device)
        record = {"epoch": epoch + 1, "lr": lr, "steps": len(chunks), "time_s": time.perf_counter() - t0}
        record.update({k: v.item() / len(chunks) for k, v in sums.items()})
        if masked:  # share of coordinates the add-on let move, averaged over the epoch's steps
            record["kept_share"] = kept.item() / len(chunks)
        if on_epoch_end is not None:
            record.update(on_epoch_end(epoch, record) or {})
            model.train()
        history.append(record)
    model.eval()
    return model, history


def _check_finite(sums: dict[str, Tensor], epoch: int, step: int) -> None:
    values = {k: v.item() for k, v in sums.items()}
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise Diverged(f"non-finite {', '.join(bad)} loss by epoch {epoch + 1}, step {step + 1}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
