"""BadTeacher (Chundawat et al., "Can Bad Teaching Induce Forgetting?", AAAI 2023).
L_U = KL(random teacher || model) on forget, L_C = KL(original || model) on retain,
temperature kd_T (1 in the paper). The paper uses Adam, lr 1e-4, 1 epoch; with this
toolkit's SGD the defaults are lr 0.01, 5 epochs."""

from dataclasses import dataclass

from unlearn import register_method
from unlearn.methods.common import Method, accuracy, kl_to_teacher, teacher_logits


@register_method("BadTeacher")
@dataclass
class BadTeacher(Method):
    kd_T: float = 1.0
    uses = ("forget", "retain")
    epoch_over = "retain"
    unlearn_epochs, unlearn_lr = 5, 0.01

    def setup(self, ctx):
        self.good, self.bad = ctx.original, ctx.random_model()

    def losses(self, model, forget, retain, progress):
        out_f, out_r = model(forget.x), model(retain.x)
        return {"unlearn": kl_to_teacher(out_f, teacher_logits(self.bad, forget.x), self.kd_T),
                "utility": kl_to_teacher(out_r, teacher_logits(self.good, retain.x), self.kd_T),
                "forget_acc": accuracy(out_f, forget.y), "retain_acc": accuracy(out_r, retain.y)}
