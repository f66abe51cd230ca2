"""The library's one call: run any registered method (with an add-on) as the scripts run it.

    from unlearn import unlearn
    result = unlearn(model, data, split, "NegGrad+VarGrad", seed=1, original_epochs=30)
    result.model, result.history, result.recipe

It resolves the recipe from the method (its source's lr, epochs, optimizer, momentum, weight
decay, batch size, milestones and augmentation; keyword overrides win), lets the method pick
its per-setting defaults (`Method.configure`), and dispatches: a loop method runs through
`impl.run`, a one-shot method through `oneshot.apply`, `retrain` trains a fresh model on D_R
with the original's recipe (`train_recipe`) and keeps its best validation epoch. mlflow_forget.py
and main_forget.py call it, so a notebook, a tuner or an audit gets the scripts' model, bit for
bit on the CPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from models import create_model
from unlearn import make
from unlearn.impl import SPEED_OPTIONS, Recipe, recipe_for, run, speed_defaults
from unlearn.methods.common import Method, Setting
from unlearn.oneshot import apply
from unlearn.train import fit, selection_idx


def initial_model(ckpt: dict, in_channels: int, device):
    """A builder of the original model as its training started: main_baseline.py seeds torch with its
    --seed right before building the model, so the same seed and architecture rebuild those weights
    exactly (what EU-k resets its layers to). torch's global generator is left as it was."""
    def build():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ckpt["seed"])
            net = create_model(ckpt["arch"], ckpt["num_classes"], in_channels, ckpt.get("imagenet_arch", False))
        return net.to(device)
    return build if ckpt.get("seed") is not None else None


class Unlearned(NamedTuple):
    model: nn.Module  # the unlearned model (the one given, changed in place; retrain: a new one)
    history: list[dict]  # per epoch (a loop), the update's figures (one shot), or training's epochs (retrain)
    recipe: Recipe | None  # what ran (None for a one-shot method)
    method: Method
    addon: Any
    best_epoch: int | None = None  # retrain: the epoch kept


def unlearn(model: nn.Module, data, split, spec: str, *, seed: int, hparams: dict | None = None,
            original_epochs: int | None = None, initial_model: Callable[[], nn.Module] | None = None,
            train_recipe: Recipe | None = None, progress: bool = False, desc: str = "",
            on_epoch_end: Callable[[int, dict], dict | None] | None = None, **overrides) -> Unlearned:
    """Unlearn `split.forget` from `model` with `spec` (`METHOD[+ADDON]`, as --unlearn takes it).

    `hparams`: the method's and add-on's fields (alpha, quantile, ...; None values mean the
    defaults). `overrides`: Recipe fields (lr, epochs, batch_size, momentum, weight_decay,
    optimizer, decreasing_lr, warmup, bn_stats, augment, amp, channels_last, compile); for a
    one-shot method only batch_size is read; speed options not given take the model's device's
    defaults (impl.SPEED_DEFAULTS), as the scripts' flags do. `original_epochs`: the original model's training
    length (EU-k's default length). `initial_model`: a builder of the original model as its
    training started (EU-k's reset, retrain's start; `initial_model(checkpoint, ...)` rebuilds it
    from a checkpoint). `train_recipe`: the original's training recipe, which retrain repeats (lr and
    epochs overridable)."""
    method, addon = make(spec, **{k: v for k, v in (hparams or {}).items() if v is not None})
    forgotten = split.info["class_to_replace"] if split.is_class_forgetting else None
    setting = Setting(getattr(data, "name", ""), forgotten, initial_model)
    method.configure(setting)
    kind = type(method).kind
    if kind == "one-shot":
        unused = sorted(k for k, v in overrides.items() if v is not None and k != "batch_size")
        if unused:
            raise TypeError(f"{method.name} is a one-shot method; it reads no {', '.join(unused)}")
        record = apply(model, data, split.forget, split.retain, method, addon, seed=seed,
                       batch_size=overrides.get("batch_size") or type(method).unlearn_batch_size,
                       forgotten_class=forgotten)
        return Unlearned(model, [record], None, method, addon)
    if kind == "retrain":
        return _retrain(data, split, forgotten, method, addon, seed, initial_model, train_recipe, progress, overrides)
    recipe = recipe_for(method, original_epochs=original_epochs, device=next(model.parameters()).device, **overrides)
    _, history = run(model, data, split.forget, split.retain, method, addon, recipe, seed=seed,
                     on_epoch_end=on_epoch_end, progress=progress, desc=desc, setting=setting)
    return Unlearned(model, history, recipe, method, addon)


def _retrain(data, split, forgotten, method, addon, seed, initial_model, train_recipe, progress,
             overrides) -> Unlearned:
    if addon.name != "none":
        raise ValueError(f"retrain is exact unlearning and takes no add-on, not {addon.name}")
    if initial_model is None or train_recipe is None:
        raise ValueError("retrain needs the original's initial model (initial_model) and training recipe "
                         "(train_recipe)")
    allowed = {"lr", "epochs", *SPEED_OPTIONS}
    stray = sorted(k for k, v in overrides.items() if v is not None and k not in allowed)
    if stray:
        raise TypeError(f"retrain repeats the original's recipe; it takes no {', '.join(stray)}")
    model = initial_model()
    given = {**speed_defaults(next(model.parameters()).device), **overrides}
    recipe = dataclasses.replace(train_recipe, **{k: v for k, v in given.items() if v is not None})
    history, best_epoch, _ = fit(model, data, split.retain, selection_idx(data, forgotten), recipe, seed,
                                 progress=progress, kind="retrain")
    return Unlearned(model, history, recipe, method, addon, best_epoch)
