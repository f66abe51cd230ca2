"""Training from given weights with best-epoch selection: how the original and the ideal models
are trained (main_baseline.py, main_ideal.py) and how `retrain` unlearns. FT through the loop of
unlearn/impl.py, no forget set; after each epoch the accuracy on the selection samples is read
and the best epoch's weights are kept. Files (resumable states) are the caller's business: it
passes `save_state` and a `saved` state to continue from."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from evaluation.accuracy import accuracy, logits_of
from unlearn.impl import Recipe, run
from unlearn.methods.ft import FT


def selection_idx(data, forgotten: int | None) -> Tensor:
    """The validation samples that select the best epoch: the ideal model of class forgetting never
    saw the class, so it is selected on the other classes."""
    if forgotten is None:
        return data.val_idx
    return data.val_idx[data.y_train[data.val_idx] != forgotten]


def fit(model: nn.Module, data, train_idx: Tensor, val_idx: Tensor, recipe: Recipe, seed: int, *,
        progress: bool = True, log: bool = True, kind: str = "", save_state: Callable[[dict], None] | None = None,
        saved: dict | None = None) -> tuple[list[dict], int, float]:
    """Train from the model's current weights on `train_idx` and reload the epoch of best accuracy
    on `val_idx`; returns (history, best epoch, wall time in seconds). `log` prints a line per epoch,
    `progress` shows a progress bar. `save_state(state)` receives
    after every epoch what `saved` needs to continue: {"loop", "best", "wall"}."""
    best = saved["best"] if saved else {"val": -1.0, "epoch": 0, "state": None}
    spent = saved["wall"] if saved else 0.0

    def on_epoch_end(epoch: int, record: dict) -> dict:
        val = accuracy(logits_of(model, data, data.x_train[val_idx]), data.y_train[val_idx])
        if val > best["val"]:
            best.update(val=val, epoch=epoch + 1, state=copy.deepcopy(model.state_dict()))
        if log:
            print(f"epoch {epoch + 1}/{recipe.epochs}  loss {record['utility']:.4f}  "
                  f"train acc {record['retain_acc']:.2f}  val acc {val:.2f}  lr {record['lr']:.4g}  "
                  f"{record['time_s']:.1f}s", flush=True)
        return {"val_acc": val}

    empty = torch.empty(0, dtype=torch.long, device=train_idx.device)
    t0 = time.perf_counter()

    def on_state(loop: dict) -> None:
        save_state({"loop": loop, "best": best, "wall": spent + time.perf_counter() - t0})

    _, history = run(model, data, empty, train_idx, FT(), recipe=recipe, seed=seed, on_epoch_end=on_epoch_end,
                     progress=progress, desc=kind, on_state=on_state if save_state is not None else None,
                     resume=saved["loop"] if saved else None)
    wall = spent + time.perf_counter() - t0
    model.load_state_dict(best["state"])
    return history, best["epoch"], wall
