"""Accuracy on the splits: RA (retain), FA (forget), UA = 100 - FA, TA (test), VA (validation).

For class forgetting TA and VA are measured on the other classes and the forgotten
class's test accuracy is reported apart (`TA_forgotten_class`)."""

from __future__ import annotations

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


def split_accuracies(model: nn.Module, data, forget: Tensor, retain: Tensor,
                     forgotten_class: int | None = None) -> dict[str, float]:
    """RA, FA, UA, TA, VA of a model (percent); with `forgotten_class`, TA excludes that class."""
    def acc_train(idx):
        return accuracy(logits_of(model, data, data.x_train[idx]), data.y_train[idx])

    val = data.val_idx
    if forgotten_class is not None:  # like TA: the forgotten class's validation samples are not utility
        val = val[data.y_train[val] != forgotten_class]
    out = {"RA": acc_train(retain), "FA": acc_train(forget), "VA": acc_train(val)}
    out["UA"] = 100 - out["FA"]
    test_logits = logits_of(model, data, data.x_test)
    if forgotten_class is None:
        out["TA"] = accuracy(test_logits, data.y_test)
    else:
        other = data.y_test != forgotten_class
        out["TA"] = accuracy(test_logits[other], data.y_test[other])
        out["TA_forgotten_class"] = accuracy(test_logits[~other], data.y_test[~other])
    return out
