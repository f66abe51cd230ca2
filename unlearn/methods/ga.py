"""GA, gradient ascent on the forget set (Thudi et al. 2022; Unlearn-Sparse defaults:
5 epochs, lr 1e-4). Loss: L_U = -CE(forget); no utility term."""

from dataclasses import dataclass

from unlearn import register_method
from unlearn.methods.common import Method, ce


@register_method("GA")
@dataclass
class GA(Method):
    uses = ("forget",)
    epoch_over = "forget"
    unlearn_epochs, unlearn_lr = 5, 1e-4

    def losses(self, model, forget, retain, progress):
        loss, acc = ce(model, forget)
        return {"unlearn": -loss, "forget_acc": acc}
