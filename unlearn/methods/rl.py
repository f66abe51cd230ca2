"""RL, random labelling (Golatkar et al. 2020), as in Unlearn-Saliency's `unlearn/RL.py`
(SalUn, Fan et al. ICLR 2024: 10 epochs, lr 0.013 on CIFAR-10).
`--rl_mode split` (their CIFAR-10 / SVHN branch): each epoch a pass over D_F with fresh
uniformly random labels per batch, L_U = CE(forget, random labels), then a pass over D_R
with L_C = CE(retain). `--rl_mode union` (their CIFAR-100 / Tiny-ImageNet branch): one pass
over the shuffled union of D_F (random labels) and D_R; each batch's mean CE is split into
L_U (its forget rows) and L_C (its retain rows), which add up to it. `--rl_mode auto` (the
default) picks as their `RL.py` does: union on cifar100 and tinyimagenet, split on every
other data set (theirs names only CIFAR-10 and SVHN there). Deviation: their union pass
draws the forget set's random labels once per epoch; here once per batch, as in split."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unlearn import register_method
from unlearn.methods.common import Method, Pass, accuracy, union_logits

UNION_DATASETS = ("cifar100", "tinyimagenet")  # where their RL.py takes the union pass


@register_method("RL")
@dataclass
class RL(Method):
    rl_mode: str = "auto"  # "split": forget pass then retain pass; "union": one pass over D_F + D_R; "auto"
    unlearn_epochs, unlearn_lr = 10, 0.013

    def __post_init__(self):
        if self.rl_mode not in ("auto", "split", "union"):
            raise ValueError(f"RL: --rl_mode must be auto, split or union, got {self.rl_mode!r}")

    def configure(self, setting):  # "auto" becomes the mode it picks, and is recorded so
        if self.rl_mode == "auto":
            self.rl_mode = "union" if setting.dataset in UNION_DATASETS else "split"

    def setup(self, ctx):
        self.num_classes, self.generator = ctx.num_classes, ctx.generator

    def passes(self, epoch):
        if self.rl_mode == "union":  # "auto" before configure: split (the same sets are read)
            return [Pass("union", ("forget", "retain"), None, "union")]
        return [Pass("forget", ("forget",), None, "forget"), Pass("retain", ("retain",), None, "retain")]

    def random_labels(self, y):
        return torch.randint(0, self.num_classes, y.shape, device=y.device, generator=self.generator)

    def losses(self, model, forget, retain, progress):
        if forget is not None and retain is not None:  # a union batch
            out_f, out_r = union_logits(model, forget, retain)
            n = len(forget.y) + len(retain.y)
            return {"unlearn": F.cross_entropy(out_f, self.random_labels(forget.y), reduction="sum") / n,
                    "utility": F.cross_entropy(out_r, retain.y, reduction="sum") / n}
        if forget is not None:
            return {"unlearn": F.cross_entropy(model(forget.x), self.random_labels(forget.y))}
        out_r = model(retain.x)
        return {"utility": F.cross_entropy(out_r, retain.y), "retain_acc": accuracy(out_r, retain.y)}
