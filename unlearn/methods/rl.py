"""RL, random labelling (Golatkar et al. 2020; SalUn: 10 epochs, lr 0.013 on CIFAR-10).
Loss: L_U = CE(forget, uniformly random labels) on B_F, L_C = CE(retain) on B_R.

The published code trains on the union of D_F (relabelled) and D_R; one epoch
passes over D_R here and each term is weighted by its set's share of the union,
so the expected step equals that of the published loop."""

from dataclasses import dataclass

import torch

from unlearn import register_method
from unlearn.methods.common import Method, ce


@register_method("RL")
@dataclass
class RL(Method):
    uses = ("forget", "retain")
    epoch_over = "retain"
    unlearn_epochs, unlearn_lr = 10, 0.013

    def setup(self, ctx):
        self.num_classes = ctx.num_classes
        self.w_forget = ctx.num_forget / (ctx.num_forget + ctx.num_retain)

    def losses(self, model, forget, retain, progress):
        labels = torch.randint(0, self.num_classes, forget.y.shape, device=forget.y.device)
        l_f, _ = ce(model, forget, labels)
        l_r, acc = ce(model, retain)
        return {"unlearn": self.w_forget * l_f, "utility": (1 - self.w_forget) * l_r, "retain_acc": acc}
