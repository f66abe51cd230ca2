"""EU-k, exact unlearning of the last k layers (Goel et al., "Towards Adversarial
Evaluation of Machine Unlearning", 2022), as in the SCRUB repository's `euk_unlearn`
(`MIA_experiments.ipynb`): the last k layers are reset to the weights the original
training started from and trained again on D_R while every other layer stays frozen,
L_C = CE(retain).

Recipe as theirs, the default here: plain SGD (no momentum, no weight decay), lr 0.01 divided
by 10 at epochs 10, 15 and 20, batch size 64, unaugmented images, for as many epochs as the
original model trained (the original checkpoint's --epochs).

The initial weights: their `model_initial` is the checkpoint `main.py` saved before training.
The original model here was built by main_baseline.py right after seeding torch with its
--seed, so the run rebuilds those weights exactly from the checkpoint's seed and architecture
(`Setting.initial_model`; unlearn/cli.py). Without one (a model whose start is unknown, a
library call that passes none) the layers are re-initialised with a fresh draw from the
run's own generator instead, and the run says so. Only the parameters are reset: their copy
leaves the batch-norm running statistics as trained, and so does this one.

Layers are counted as in CF-k (convolution or linear with its batch norm, from the output,
classifier included). The classifier keeps its trained weights, as in theirs, and is one of
the k layers that train. Deviation: theirs counts the stage before the classifier and keeps
the classifier frozen; here `k` counts the classifier as Goel et al. do, so it trains. The
frozen layers' batch-norm statistics do not move."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

from unlearn import register_method
from unlearn.methods.cf_k import CFk
from unlearn.methods.common import Frozen, last_layers, last_linear, reinitialise


@torch.no_grad()
def reset_to(modules, initial_modules) -> None:
    """Copy the parameters (not the buffers) of `initial_modules` into `modules`, pairwise."""
    for m, m0 in zip(modules, initial_modules, strict=True):
        for (name, p), (name0, p0) in zip(m.named_parameters(recurse=False), m0.named_parameters(recurse=False),
                                          strict=True):
            if name != name0 or p.shape != p0.shape:
                raise ValueError(f"EU-k: the initial model's layer {name0} {tuple(p0.shape)} does not match "
                                 f"{name} {tuple(p.shape)}")
            p.copy_(p0.to(p.device))


@register_method("EU-k")
@dataclass
class EUk(CFk):
    unlearn_decreasing_lr = (10, 15, 20)
    epochs_of_original = True
    initial_model: object = field(default=None, init=False, repr=False)

    def configure(self, setting):
        if setting.initial_model is not None:
            self.initial_model = setting.initial_model

    def adapt(self, model, generator):
        last = last_layers(model, self.k, self.name)
        classifier = last_linear(model)[2]
        reset = [m for m in last if m is not classifier]
        if self.initial_model is not None:
            initial = self.initial_model()
            its_classifier = last_linear(initial)[2]
            reset_to(reset, [m for m in last_layers(initial, self.k, self.name) if m is not its_classifier])
        else:
            print("note: EU-k: the original model's initial weights are not known here; the last layers are "
                  "re-initialised with a fresh draw", file=sys.stderr)
            buffers = [[b.clone() for b in m.buffers(recurse=False)] for m in reset]
            reinitialise(reset, generator)
            with torch.no_grad():  # batch norm's reset_parameters resets its statistics too: keep them
                for m, saved in zip(reset, buffers):
                    for b, b0 in zip(m.buffers(recurse=False), saved):
                        b.copy_(b0)
        self.frozen = Frozen(model, last)
