"""SCRUB (Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023), as in the
large-scale setting of the authors' repository (meghdadk/SCRUB, `large_scale_unlearning.ipynb`).
Each epoch: while epoch < `msteps`, a max pass over D_F (batch `forget_batch_size`, 512 there)
with L_U = -KL(original || model) at temperature T; then a min pass over D_R with
L_C = gamma * CE + alpha * KL(original || model). One optimizer step per batch.
Their CIFAR-10 settings: T 4, gamma 0.99, alpha 0.001, msteps 2, SGD lr 5e-4,
momentum 0.9, weight decay 5e-4, 3 epochs (their lr decay at epoch 3 never fires), on
unaugmented images (their loaders take `augment=False`); the retain batches are the run's
256, as their notebook's loader gives."""

from dataclasses import dataclass

import torch.nn.functional as F

from unlearn import register_method
from unlearn.methods.common import Method, Pass, accuracy, kl_to_teacher, teacher_logits
from unlearn.search import Range


@register_method("SCRUB")
@dataclass
class SCRUB(Method):
    alpha: float = 0.001  # weight of the KL term on retain
    gamma: float = 0.99  # weight of the CE term on retain
    msteps: int = 2  # epochs that start with a max pass over the forget set
    kd_T: float = 4.0  # distillation temperature
    forget_batch_size: int = 512  # batch size of the max pass
    search = {"alpha": Range(1e-4, 1.0, log=True), "msteps": Range(1, 5, integer=True)}  # tuned (tune.py)
    unlearn_epochs, unlearn_lr = 3, 5e-4
    augment = False

    def setup(self, ctx):
        self.teacher = ctx.original

    def passes(self, epoch):
        max_pass = [Pass("forget", ("forget",), self.forget_batch_size, "max")] if epoch < self.msteps else []
        return max_pass + [Pass("retain", ("retain",), None, "min")]

    def losses(self, model, forget, retain, progress):
        if forget is not None:  # max pass
            out_f = model(forget.x)
            return {"unlearn": -kl_to_teacher(out_f, teacher_logits(self.teacher, forget.x), self.kd_T),
                    "forget_acc": accuracy(out_f, forget.y)}
        out_r = model(retain.x)
        return {"utility": self.gamma * F.cross_entropy(out_r, retain.y)
                + self.alpha * kl_to_teacher(out_r, teacher_logits(self.teacher, retain.x), self.kd_T),
                "retain_acc": accuracy(out_r, retain.y)}
