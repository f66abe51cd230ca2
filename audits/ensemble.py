"""Many models of one architecture and recipe trained at once, in one process.

A shadow-model audit (U-LiRA) trains K models on K training sets. One process per model pays
K interpreter start-ups and leaves a CPU idle between tiny batches; K models one after another
in-process still pay K times the per-step overhead of small kernels. Here the K models' weights
are stacked (`torch.func.stack_module_state`) and one vmapped forward and backward steps all of
them: the convolutions of the K models run as one grouped call, the optimizer as one elementwise
update of the stacked weights.

`fit_many` follows `unlearn.train.fit` (how main_baseline.py trains) model by model: model k is
initialised under `torch.manual_seed(seeds[k])`, draws its batches and augmentations from its own
generator seeded with `seeds[k]` exactly as the loop of `unlearn/impl.py` does (one shuffled pass
per epoch, then the augmentation of each batch), steps with the same SGD (momentum, weight decay,
the same lr schedule), and keeps the epoch of best validation accuracy. Only the floating-point
order of the batched convolutions differs, so a model of the ensemble equals the same model
trained alone up to rounding that training amplifies (tests/test_ulira.py states the tolerance).
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm import tqdm

from unlearn import train as training
from unlearn.addons.common import Flat
from unlearn.impl import Diverged, Recipe, lr_at, sgd_step, shuffled_batches

EVAL_CHUNK = 1024  # samples per vmapped evaluation forward


class _Pool(nn.Module):
    """nn.AdaptiveAvgPool2d for the vmapped forward: a mean where the output is 1x1, nothing where the
    input already has the output's size (vmap has no batching rule for the adaptive pool's
    backward, and its fallback loops over the models)."""

    def __init__(self, size):
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def forward(self, x: Tensor) -> Tensor:
        if self.size == (1, 1):
            return x.mean((-2, -1), keepdim=True)
        if tuple(x.shape[-2:]) == self.size:
            return x
        return F.adaptive_avg_pool2d(x, self.size)


def _vmappable(model: nn.Module) -> nn.Module:
    for name, child in model.named_children():
        if isinstance(child, nn.AdaptiveAvgPool2d):
            setattr(model, name, _Pool(child.output_size))
        else:
            _vmappable(child)
    return model


class Ensemble:
    """K models of one architecture held as stacked weights; `model(k)` unstacks one."""

    def __init__(self, models: list[nn.Module]):
        self.k = len(models)
        self.base = _vmappable(copy.deepcopy(models[0]).to("meta"))  # the structure; weights come from the stacks
        params, buffers = stack_module_state(models)
        self.params = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
        self.buffers = {n: b.clone() for n, b in buffers.items()}

    def model(self, k: int, like: nn.Module) -> nn.Module:
        """Model k as an ordinary module (a copy of `like` with model k's weights)."""
        m = copy.deepcopy(like)
        m.load_state_dict({n: t[k].detach().clone() for n, t in {**self.params, **self.buffers}.items()})
        return m.eval()

    def state(self) -> dict[str, Tensor]:
        return {n: t.detach().clone() for n, t in {**self.params, **self.buffers}.items()}

    def _call(self, p, b, x):
        return functional_call(self.base, (p, b), (x,))

    def losses(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-model mean cross-entropy of batches x [K, B, ...], y [K, B] (training mode)."""
        self.base.train()
        return vmap(lambda p, b, xx, yy: F.cross_entropy(self._call(p, b, xx), yy))(self.params, self.buffers, x, y)

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        """Every model's logits [K, N, classes] on one input batch x [N, ...] (evaluation mode)."""
        self.base.eval()
        out = [vmap(self._call, in_dims=(0, 0, None))(self.params, self.buffers, c) for c in x.split(EVAL_CHUNK)]
        return torch.cat(out, 1)


MODES = ("sequential", "stacked")


def fit_many(build: Callable[[], nn.Module], data, train_sets: list[Tensor], val_idx: Tensor, recipe: Recipe,
             seeds: list[int], mode: str = "sequential", progress: bool = False, desc: str = "ensemble",
             on_model: Callable[[int, nn.Module, int], None] | None = None) -> tuple[list[nn.Module], list[int]]:
    """Train one model per (train_sets[k], seeds[k]) as `unlearn.train.fit` does and return the models
    at their epochs of best accuracy on `val_idx`, with those epochs. `mode`: "sequential", one model
    after another in this process (each exactly the model trained alone), or "stacked", all of them
    in one vmapped step (each equal to it up to rounding; every training set must have the same size,
    SGD only). benchmarks/ensemble_speed.py measures which is faster where. `on_model(i, model, best
    epoch)` receives each model as soon as it is trained (sequential: one by one, so that a caller can
    store it; stacked: all at the end)."""
    if len(train_sets) != len(seeds) or not seeds:
        raise ValueError(f"{len(train_sets)} training sets for {len(seeds)} seeds")
    if mode not in MODES:
        raise ValueError(f"ensemble mode {mode!r}: choose one of {', '.join(MODES)}")
    if mode == "stacked":
        ens, info = fit_stacked(build, data, train_sets, val_idx, recipe, seeds, progress, desc)
        with torch.random.fork_rng(devices=[]):
            like = build()
        models = [ens.model(k, like) for k in range(ens.k)]
        for i, (model, best) in enumerate(zip(models, info["best_epoch"])):
            if on_model is not None:
                on_model(i, model, best)
        return models, info["best_epoch"]
    models, epochs = [], []
    for s, idx in tqdm(list(zip(seeds, train_sets)), desc=desc, file=sys.stderr, leave=False,
                       disable=True if not progress else None):
        torch.manual_seed(s)
        model = build()
        _, best, _ = training.fit(model, data, idx, val_idx, recipe, s, progress=False, log=False)
        models.append(model.eval())
        epochs.append(best)
        if on_model is not None:
            on_model(len(models) - 1, model, best)
    return models, epochs


def fit_stacked(build: Callable[[], nn.Module], data, train_sets: list[Tensor], val_idx: Tensor, recipe: Recipe,
                seeds: list[int], progress: bool = False, desc: str = "ensemble") -> tuple[Ensemble, dict]:
    """fit_many's "stacked" mode: returns the ensemble at each model's epoch of best accuracy on
    `val_idx`, and {"best_epoch": [...], "val": [...], "wall_s": ...}."""
    if len({len(s) for s in train_sets}) != 1:
        raise ValueError("every model of a stacked ensemble trains on a set of the same size, got sizes "
                         f"{sorted({len(s) for s in train_sets})}")
    if recipe.optimizer != "sgd" or recipe.bn_stats != "update" or recipe.warmup or recipe.amp or recipe.compile:
        raise ValueError("stacked ensembles train with SGD, no warm-up, batch-norm statistics updated, in fp32 and "
                         "uncompiled (channels_last is ignored)")
    models = []
    for s in seeds:
        torch.manual_seed(s)
        models.append(build())
    ens = Ensemble(models)
    names = list(ens.params)
    params = [ens.params[n] for n in names]
    bufs = Flat(params)
    gens = []
    for s in seeds:
        g = torch.Generator(device=train_sets[0].device)
        g.manual_seed(s)
        gens.append(g)
    best_val = torch.full((ens.k,), -1.0)
    best_epoch = [0] * ens.k
    best = ens.state()
    t0 = time.perf_counter()
    bar = tqdm(total=recipe.epochs, desc=desc, file=sys.stderr, disable=True if not progress else None, leave=False)
    for epoch in range(recipe.epochs):
        walks = [shuffled_batches(s, recipe.batch_size, g) for s, g in zip(train_sets, gens)]
        steps = len(walks[0])
        for step in range(steps):
            xs, ys = zip(*(data.batch(w[step], train=recipe.augment, generator=g) for w, g in zip(walks, gens)))
            loss = ens.losses(torch.stack(xs), torch.stack(ys))
            grads = torch.autograd.grad(loss.sum(), params)
            sgd_step(params, list(grads), None, bufs, lr_at(recipe, epoch, step, steps), recipe.momentum,
                     recipe.weight_decay)
            if not torch.isfinite(loss).all():
                raise Diverged(f"an ensemble model's loss became non-finite in epoch {epoch + 1}, step {step + 1}")
        val = accuracy_each(ens, data, val_idx)
        better = val > best_val
        if better.any():
            now = ens.state()
            for n in best:
                best[n][better] = now[n][better]
            best_val = torch.where(better, val, best_val)
            best_epoch = [epoch + 1 if b else e for b, e in zip(better.tolist(), best_epoch)]
        bar.update()
    bar.close()
    with torch.no_grad():
        for n, t in {**ens.params, **ens.buffers}.items():
            t.copy_(best[n])
    return ens, {"best_epoch": best_epoch, "val": best_val.tolist(), "wall_s": time.perf_counter() - t0}


def accuracy_each(ens: Ensemble, data, idx: Tensor) -> Tensor:
    """Each model's accuracy (in %) on training samples `idx`, unaugmented."""
    x, y = data.batch(idx)
    return (ens.logits(x).argmax(-1) == y).float().mean(1) * 100
