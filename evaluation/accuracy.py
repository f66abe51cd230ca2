"""Accuracy on the splits: RA (retain), FA (forget), UA = 100 - FA, TA (test), VA (validation).

For class forgetting TA and VA are measured on the other classes and the forgotten
class's test accuracy is reported apart (`TA_forgotten_class`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@torch.no_grad()
def logits_of(model: nn.Module, data, x: Tensor, batch_size: int = 1024) -> Tensor:
    """Eval-mode logits of uint8 images `x` (normalised by `data`), in batches."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(data.normalise(chunk)) for chunk in x.split(batch_size)]) if len(x) else \
        torch.empty(0, data.num_classes, device=x.device)
    model.train(was_training)
    return out


def accuracy(logits: Tensor, y: Tensor) -> float:
    """Top-1 accuracy in percent; NaN for an empty set."""
    if len(y) == 0:
        return float("nan")
    return (logits.argmax(1) == y).float().mean().item() * 100


@dataclass
class Outputs:
    """Eval-mode logits of one model on each split, with the labels; every metric reads these."""

    forget: Tensor
    retain: Tensor
    test: Tensor
    val: Tensor
    y_forget: Tensor
    y_retain: Tensor
    y_test: Tensor
    y_val: Tensor
    forgotten_class: int | None = None


def model_outputs(model: nn.Module, data, forget: Tensor, retain: Tensor,
                  forgotten_class: int | None = None) -> Outputs:
    """One forward pass of the model over D_F, D_R, D_V and D_T (logits kept on the CPU)."""
    def train_logits(idx):
        return logits_of(model, data, data.x_train[idx]).cpu(), data.y_train[idx].cpu()

    f, yf = train_logits(forget)
    r, yr = train_logits(retain)
    v, yv = train_logits(data.val_idx)
    t, yt = logits_of(model, data, data.x_test).cpu(), data.y_test.cpu()
    return Outputs(f, r, t, v, yf, yr, yt, yv, forgotten_class)


def utility_view(logits: Tensor, y: Tensor, forgotten: int | None) -> tuple[Tensor, Tensor]:
    """Test/validation samples that measure utility: all, or all but the forgotten class."""
    if forgotten is None:
        return logits, y
    keep = y != forgotten
    return logits[keep], y[keep]


def accuracies(out: Outputs) -> dict[str, float]:
    """RA, FA, UA, TA, VA (percent) and, for class forgetting, TA_forgotten_class."""
    fc = out.forgotten_class
    m = {"RA": accuracy(out.retain, out.y_retain), "FA": accuracy(out.forget, out.y_forget)}
    m["UA"] = 100 - m["FA"]
    m["TA"] = accuracy(*utility_view(out.test, out.y_test, fc))
    m["VA"] = accuracy(*utility_view(out.val, out.y_val, fc))
    if fc is not None:
        m["TA_forgotten_class"] = accuracy(out.test[out.y_test == fc], out.y_test[out.y_test == fc])
    return m


def split_accuracies(model: nn.Module, data, forget: Tensor, retain: Tensor,
                     forgotten_class: int | None = None) -> dict[str, float]:
    """RA, FA, UA, TA, VA of a model (percent); with `forgotten_class`, TA and VA exclude that class."""
    return accuracies(model_outputs(model, data, forget, retain, forgotten_class))
