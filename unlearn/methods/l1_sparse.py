"""l1-sparse unlearning (Jia et al., "Model Sparsity Can Simplify Machine Unlearning",
NeurIPS 2023). FT_l1: CE(retain) + alpha_t * ||theta||_1; GA_l1: -CE(forget) + the same
penalty; alpha_t = alpha * (1 - t) decays linearly to 0 over the run (t in [0, 1)).
Defaults: alpha 5e-4; FT_l1 10 epochs, lr 0.01; GA_l1 as GA, 5 epochs, lr 1e-4."""

from dataclasses import dataclass

from unlearn import register_method
from unlearn.methods.common import Method, ce, l1_norm


@register_method("FT_l1")
@dataclass
class FTL1(Method):
    alpha: float = 5e-4  # l1 strength at the first step
    uses = ("retain",)
    epoch_over = "retain"
    unlearn_epochs, unlearn_lr = 10, 0.01

    def losses(self, model, forget, retain, progress):
        loss, acc = ce(model, retain)
        alpha_t = self.alpha * (1 - progress.fraction)
        return {"utility": loss + alpha_t * l1_norm(model), "retain_acc": acc}


@register_method("GA_l1")
@dataclass
class GAL1(Method):
    alpha: float = 5e-4
    uses = ("forget",)
    epoch_over = "forget"
    unlearn_epochs, unlearn_lr = 5, 1e-4

    def losses(self, model, forget, retain, progress):
        loss, acc = ce(model, forget)
        alpha_t = self.alpha * (1 - progress.fraction)
        return {"unlearn": -loss, "utility": alpha_t * l1_norm(model), "forget_acc": acc}
