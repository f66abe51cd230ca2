"""BE, boundary expanding (Chen et al., "Boundary Unlearning", CVPR 2023), as in
Unlearn-Saliency's `unlearn/boundary_ex.py`: the classifier gains a shadow output class,
and each epoch one pass over D_F trains every forget sample towards it,
L_U = CE(model(x_F), shadow). No retain term. Recipe: Unlearn-Saliency's generic defaults
(SGD, 10 epochs, lr 0.01).

The shadow row of the last linear layer is initialised as torch initialises a linear
layer (uniform in +-1/sqrt(fan_in)), drawn from the run's own generator, and is trained
with the rest. Deviation: Unlearn-Saliency keeps the shadow class in the unlearned model;
here it is removed after the last step (`restore`), so the model keeps the original
output shape and a forget sample's prediction falls to its best real class. The shadow
row is also removed when the run fails."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from unlearn import register_method
from unlearn.methods.common import Method, accuracy, last_linear


def resized(layer: nn.Linear, out_features: int, generator: torch.Generator | None = None) -> nn.Linear:
    """A copy of `layer` with `out_features` rows: the shared rows copied, any new row drawn
    uniform in +-1/sqrt(fan_in) (torch's default initialisation of a linear layer)."""
    new = nn.Linear(layer.in_features, out_features, bias=layer.bias is not None,
                    device=layer.weight.device, dtype=layer.weight.dtype)
    n = min(out_features, layer.out_features)
    bound = 1 / math.sqrt(layer.in_features)
    with torch.no_grad():
        for mine, theirs in ((new.weight, layer.weight), (new.bias, layer.bias)):
            if mine is None:
                continue
            mine[:n] = theirs[:n]
            if out_features > n:
                fresh = torch.rand(mine[n:].shape, generator=generator, device=mine.device, dtype=mine.dtype)
                mine[n:] = fresh * 2 * bound - bound
    new.train(layer.training)
    return new


@register_method("BE")
@dataclass
class BE(Method):
    uses = ("forget",)
    epoch_over = "forget"
    unlearn_epochs, unlearn_lr = 10, 0.01
    shadow: int | None = field(default=None, init=False, repr=False)

    def adapt(self, model, generator):
        parent, attr, layer = last_linear(model)
        self.shadow = layer.out_features
        setattr(parent, attr, resized(layer, layer.out_features + 1, generator))

    def restore(self, model):
        if self.shadow is None:
            return
        parent, attr, layer = last_linear(model)
        setattr(parent, attr, resized(layer, self.shadow))
        self.shadow = None

    def losses(self, model, forget, retain, progress):
        out = model(forget.x)
        target = torch.full_like(forget.y, self.shadow)
        return {"unlearn": F.cross_entropy(out, target), "forget_acc": accuracy(out[:, :self.shadow], forget.y)}
