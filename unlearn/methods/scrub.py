"""SCRUB (Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023).
Max steps: L_U = -KL(original || model) on forget at temperature T, for the first
`msteps` epochs; min steps: L_C = gamma * CE(retain) + alpha * KL(original || model)
on retain. SCRUB's CIFAR-10 settings: T 4, gamma 0.99, alpha 0.001, msteps 2,
lr 5e-4, 3 epochs. Max and min steps share one engine step here (one forget batch
and one retain batch), instead of alternating passes."""

from dataclasses import dataclass

from unlearn import register_method
from unlearn.methods.common import Method, accuracy, kl_to_teacher, teacher_logits


@register_method("SCRUB")
@dataclass
class SCRUB(Method):
    alpha: float = 0.001  # weight of the KL term on retain
    gamma: float = 0.99  # weight of the CE term on retain
    msteps: int = 2  # epochs with max steps on the forget set
    kd_T: float = 4.0  # distillation temperature
    uses = ("forget", "retain")
    epoch_over = "retain"
    unlearn_epochs, unlearn_lr = 3, 5e-4

    def setup(self, ctx):
        self.teacher = ctx.original

    def losses(self, model, forget, retain, progress):
        import torch.nn.functional as F

        out_r = model(retain.x)
        terms = {"utility": self.gamma * F.cross_entropy(out_r, retain.y)
                 + self.alpha * kl_to_teacher(out_r, teacher_logits(self.teacher, retain.x), self.kd_T),
                 "retain_acc": accuracy(out_r, retain.y)}
        if progress.epoch < self.msteps:
            out_f = model(forget.x)
            terms["unlearn"] = -kl_to_teacher(out_f, teacher_logits(self.teacher, forget.x), self.kd_T)
            terms["forget_acc"] = accuracy(out_f, forget.y)
        return terms
