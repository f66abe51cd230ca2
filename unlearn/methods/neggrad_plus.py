"""NegGrad+ (Kurmanji et al., SCRUB paper, NeurIPS 2023): fine-tune on retain while
ascending on forget. Loss: alpha * CE(retain) - (1 - alpha) * CE(forget), every retain
batch paired with a cycled forget batch, in train mode.

Recipe as the authors run it (meghdadk/SCRUB: `negative_grad` with the repdistiller loop
`train_negrad`, called in `MIA_experiments.ipynb`, their CIFAR-10 / ResNet-18 runs): plain
SGD (momentum 0, weight decay 0), lr 0.01, 5 epochs, alpha 0.9999, retain batches of 32
with forget batches of 16, unaugmented images (their loaders take `augment=False`), and no
penalty towards the original weights. An epoch is one pass over D_R.

Not offered: `run_neggrad_epoch` of their small-scale notebooks (alpha 0.95, eval mode, an
L2 penalty (wd/2) ||theta - theta_0||^2 with wd 0.1, retain batch 128), which the large-scale
notebooks define but never call."""

from dataclasses import dataclass

from unlearn import register_method
from unlearn.methods.common import Method, Pass, ce
from unlearn.search import Range


@register_method("NegGrad+")
@dataclass
class NegGradPlus(Method):
    alpha: float = 0.9999  # weight of the retain term
    forget_batch_size: int = 16  # of the forget batches paired with each retain batch
    search = {"alpha": Range(0.9, 0.99999)}  # tuned: the retain weight (tune.py)
    uses = ("forget", "retain")
    epoch_over = "retain"
    unlearn_epochs, unlearn_lr = 5, 0.01
    unlearn_momentum, unlearn_weight_decay = 0.0, 0.0
    unlearn_batch_size = 32  # the retain batches
    augment = False

    def passes(self, epoch):
        return [Pass("retain", ("forget", "retain"), None, "", self.forget_batch_size)]

    def losses(self, model, forget, retain, progress):
        l_f, f_acc = ce(model, forget)
        l_r, r_acc = ce(model, retain)
        return {"unlearn": -(1 - self.alpha) * l_f, "utility": self.alpha * l_r,
                "forget_acc": f_acc, "retain_acc": r_acc}
