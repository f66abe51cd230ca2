"""l1-sparse unlearning (Jia et al., "Model Sparsity Can Simplify Machine Unlearning",
NeurIPS 2023), as in Unlearn-Sparse's `unlearn/FT.py` and `GA.py`. FT_l1: CE(retain) +
alpha_e * ||theta||_1 with alpha_e = alpha * (1 - e / E) constant within epoch e (0-based) of
E: 1, 0.9, ..., 0.1 of alpha over 10 epochs (their `--no-l1-epochs` is 0 here). GA_l1:
-CE(forget) + alpha * ||theta||_1 with alpha constant, as their `GA_l1`. The norm is over
every parameter. Defaults: alpha 5e-4; FT_l1 10 epochs, lr 0.01; GA_l1 as GA, 5 epochs,
lr 1e-4."""

from dataclasses import dataclass

from unlearn import register_method
from unlearn.methods.common import Method, ce, l1_norm
from unlearn.search import Range


@register_method("FT_l1")
@dataclass
class FTL1(Method):
    alpha: float = 5e-4  # l1 strength at the first step
    search = {"alpha": Range(1e-5, 1e-2, log=True)}  # tuned (tune.py)
    uses = ("retain",)
    epoch_over = "retain"
    unlearn_epochs, unlearn_lr = 10, 0.01

    def losses(self, model, forget, retain, progress):
        loss, acc = ce(model, retain)
        alpha_e = self.alpha * (1 - progress.epoch / progress.epochs)
        return {"utility": loss + alpha_e * l1_norm(model), "retain_acc": acc}


@register_method("GA_l1")
@dataclass
class GAL1(Method):
    alpha: float = 5e-4
    search = {"alpha": Range(1e-5, 1e-2, log=True)}  # tuned (tune.py)
    uses = ("forget",)
    epoch_over = "forget"
    unlearn_epochs, unlearn_lr = 5, 1e-4

    def losses(self, model, forget, retain, progress):
        loss, acc = ce(model, forget)
        return {"unlearn": -loss, "utility": self.alpha * l1_norm(model), "forget_acc": acc}
