"""EU-k, exact unlearning of the last k layers (Goel et al., "Towards Adversarial
Evaluation of Machine Unlearning", 2022), as in the SCRUB repository's `euk_unlearn`
(`MIA_experiments.ipynb`): the last k layers are re-initialised and trained from scratch
on D_R while every other layer stays frozen, L_C = CE(retain). Their recipe: plain SGD (no
momentum, no weight decay), lr 0.01, batch size 64, for as many epochs as the original
training; here 10 by default (pass your original's with --unlearn_epochs) and the run's
--batch_size.

Layers are counted as in CF-k (convolution or linear with its batch norm, from the
output, classifier included). Deviations: SCRUB resets the layers to the weights the
original training started from, which are not saved here, so they are re-initialised
with a fresh draw from the run's own generator (batch-norm statistics reset too); the
frozen layers' batch-norm statistics do not move."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unlearn import register_method
from unlearn.methods.cf_k import CFk
from unlearn.methods.common import Frozen, last_layers


def reinitialise(modules, generator: torch.Generator) -> None:
    """Each module's own `reset_parameters()`, drawing from a seed taken from `generator`."""
    seed = int(torch.randint(2**62, (), generator=generator, device=generator.device))
    devices = sorted({p.device.index for m in modules for p in m.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for m in modules:
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()


@register_method("EU-k")
@dataclass
class EUk(CFk):
    def adapt(self, model, generator):
        last = last_layers(model, self.k, self.name)
        reinitialise(last, generator)
        self.frozen = Frozen(model, last)
