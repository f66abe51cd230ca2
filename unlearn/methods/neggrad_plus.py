"""NegGrad+ (Kurmanji et al., SCRUB paper, NeurIPS 2023): fine-tune on retain while
ascending on forget. Loss: alpha * CE(retain) - (1 - alpha) * CE(forget); alpha 0.99."""

from dataclasses import dataclass

from unlearn import register_method
from unlearn.methods.common import Method, ce


@register_method("NegGrad+")
@dataclass
class NegGradPlus(Method):
    alpha: float = 0.99  # weight of the retain term
    uses = ("forget", "retain")
    epoch_over = "retain"
    unlearn_epochs, unlearn_lr = 5, 0.01

    def losses(self, model, forget, retain, progress):
        l_f, f_acc = ce(model, forget)
        l_r, r_acc = ce(model, retain)
        return {"unlearn": -(1 - self.alpha) * l_f, "utility": self.alpha * l_r,
                "forget_acc": f_acc, "retain_acc": r_acc}
