"""BadTeacher (Chundawat et al., "Can Bad Teaching Induce Forgetting?", AAAI 2023), as in the
authors' `blindspot_unlearner` (vikram2000b/bad-teaching-unlearning): one pass over the
shuffled union of D_F and D_R; each sample is distilled towards a randomly initialised
teacher if it is a forget sample, towards the original model otherwise, at temperature
kd_T (1). L_U = KL(random || model) over the batch's forget rows, L_C = KL(original ||
model) over its retain rows, each divided by the batch size. Published recipe, the
default here: Adam, lr 1e-4, no weight decay, 1 epoch, batch size 256, unaugmented images
(their transform is Resize + ToTensor + Normalize), and D_R subsampled to 30%
(`random.sample(retain_train, int(0.3 * len(retain_train)))`, drawn once before training):
`retain_share` 0.3, drawn from the run's seed (theirs is unseeded); `--retain_share 1` uses
D_R whole. Deviation: their loss uses `kl_div`'s element mean (a further division by the
class count, immaterial under Adam but for its eps)."""

from dataclasses import dataclass

import torch

from unlearn import register_method
from unlearn.methods.common import Method, Pass, kl_to_teacher, teacher_logits, union_logits
from unlearn.search import Range


@register_method("BadTeacher")
@dataclass
class BadTeacher(Method):
    kd_T: float = 1.0
    retain_share: float = 0.3  # share of D_R distilled, a seeded subsample drawn once
    search = {"kd_T": Range(0.5, 8.0, log=True), "retain_share": Range(0.1, 1.0)}  # tuned (tune.py)
    unlearn_epochs, unlearn_lr = 1, 1e-4
    unlearn_optimizer, unlearn_weight_decay = "adam", 0.0
    augment = False

    def __post_init__(self):
        if not 0 < self.retain_share <= 1:
            raise ValueError(f"BadTeacher: --retain_share must be in (0, 1], got {self.retain_share}")

    def subset(self, forget, retain, generator):
        n = int(self.retain_share * len(retain))  # their int(0.3 * len(...)): rounded down
        if n == len(retain):
            return forget, retain
        pick = torch.randperm(len(retain), device=retain.device, generator=generator)[:n]
        return forget, retain[pick.sort().values]

    def setup(self, ctx):
        self.good, self.bad = ctx.original, ctx.random_model()

    def passes(self, epoch):
        return [Pass("union", ("forget", "retain"), None, "union")]

    def losses(self, model, forget, retain, progress):
        out_f, out_r = union_logits(model, forget, retain)
        n = len(forget.y) + len(retain.y)
        return {"unlearn": kl_to_teacher(out_f, teacher_logits(self.bad, forget.x), self.kd_T, n),
                "utility": kl_to_teacher(out_r, teacher_logits(self.good, retain.x), self.kd_T, n)}
