"""FT, fine-tuning on the retain set (Warnock et al. 2022; Unlearn-Sparse defaults:
10 epochs, lr 0.01). Loss: L_C = CE(retain). Training from scratch is FT too."""

from dataclasses import dataclass

from unlearn import register_method
from unlearn.methods.common import Method, ce


@register_method("FT")
@dataclass
class FT(Method):
    uses = ("retain",)
    epoch_over = "retain"
    unlearn_epochs, unlearn_lr = 10, 0.01

    def losses(self, model, forget, retain, progress):
        loss, acc = ce(model, retain)
        return {"utility": loss, "retain_acc": acc}
