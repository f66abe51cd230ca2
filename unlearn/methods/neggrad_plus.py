"""NegGrad+ (Kurmanji et al., SCRUB paper, NeurIPS 2023): fine-tune on retain while
ascending on forget. Loss: alpha * CE(retain) - (1 - alpha) * CE(forget), every retain
batch paired with a cycled forget batch. Defaults from the authors' large-scale CIFAR
notebooks (meghdadk/SCRUB, `MIA_experiments.ipynb`): alpha 0.9999, 5 epochs, lr 0.01.

Optimizer: theirs is plain SGD (no momentum, weight_decay 0) with an L2 penalty towards the
original weights inside the alpha term, in eval mode (batch-norm statistics frozen). Here it
is the toolkit's SGD (momentum 0.9, weight decay 5e-4 towards 0, `--bn_stats update`), so
that every method shares one optimizer; pass `--momentum 0 --bn_stats freeze` to come closer."""

from dataclasses import dataclass

from unlearn import register_method
from unlearn.methods.common import Method, ce


@register_method("NegGrad+")
@dataclass
class NegGradPlus(Method):
    alpha: float = 0.9999  # weight of the retain term
    uses = ("forget", "retain")
    epoch_over = "retain"
    unlearn_epochs, unlearn_lr = 5, 0.01

    def losses(self, model, forget, retain, progress):
        l_f, f_acc = ce(model, forget)
        l_r, r_acc = ce(model, retain)
        return {"unlearn": -(1 - self.alpha) * l_f, "utility": self.alpha * l_r,
                "forget_acc": f_acc, "retain_acc": r_acc}
