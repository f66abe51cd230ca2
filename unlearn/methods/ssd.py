"""SSD, selective synaptic dampening (Foster, Schoepf & Brintrup, "Fast Machine Unlearning
Without Retraining Through Selective Synaptic Dampening", AAAI 2024), as in the authors'
`ssd.py` (if-loops/selective-synaptic-dampening), and its label-free variant LFSSD
("Loss-Free Machine Unlearning", ICLR 2024 Tiny Paper, as their README gives it). One
shot, eval mode:

    I_F, I_D = importances over D_F and over the whole training set D:
               mean over batches of (grad of the batch's mean CE)^2           (SSD)
               mean over batches of |grad of mean_batch ||f(x)||_2^2|          (LFSSD, no labels)
    where I_F,i > alpha * I_D,i:   theta_i <- theta_i * min(lambda * I_D,i / I_F,i, 1)

Defaults alpha 10, lambda 1 (their ResNet-18 CIFAR setting; the paper tunes alpha in
[0.1, 100] and lambda in [0.1, 5]). The importances depend on the batch size (a mean of
squared batch-mean gradients): `importance_batch_size` 0, the default, takes their loaders':
128 in random forgetting (`forget_random_main.py`, `-b 128`) and 64 in class forgetting
(`forget_full_class_main.py`, `-b 64`); any other value is used as given, whatever
--batch_size says. As theirs, the passes are unshuffled and unaugmented, and the pass over D
walks D_R, then D_F (their `ConcatDataset((retain, forget))`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from unlearn import register_method
from unlearn.oneshot import OneShot
from unlearn.search import Range


def importances(model, sets, name: str, label_free: bool, batch_size: int | None = None):
    total = [torch.zeros_like(p) for p in sets.params]
    n = 0
    for b in sets.batches(name, batch_size):
        out = model(b.x)
        if label_free:
            for t, g in zip(total, sets.grad(out.pow(2).sum(1).mean())):
                t.add_(g.abs())
        else:
            for t, g in zip(total, sets.grad(F.cross_entropy(out, b.y))):
                t.add_(g * g)
        n += 1
    return [t / n for t in total]


def dampening_factors(i_f, i_d, alpha: float, lam: float):
    """Per coordinate: min(lam * I_D / I_F, 1) where I_F > alpha * I_D, else 1."""
    out = []
    for f, d in zip(i_f, i_d):
        selected = f > alpha * d  # implies f > 0
        ratio = lam * d / torch.where(selected, f, torch.ones_like(f))
        out.append(torch.where(selected, ratio.clamp(max=1.0), torch.ones_like(f)))
    return out


# their loaders' batch sizes: forget_random_main.py's -b 128, forget_full_class_main.py's -b 64
SOURCE_BATCH = {"random": 128, "class": 64}


@register_method("SSD")
@dataclass
class SSD(OneShot):
    alpha: float = 10.0  # selection: dampen where I_F > alpha * I_D
    dampening: float = 1.0  # lambda: the factor is min(lambda * I_D / I_F, 1)
    importance_batch_size: int = 0  # 0: their loaders' (128 random, 64 class forgetting)
    search = {"alpha": Range(0.1, 100.0, log=True), "dampening": Range(0.1, 10.0, log=True)}  # tuned (tune.py)
    label_free: ClassVar[bool] = False

    def __post_init__(self):
        if not self.alpha > 0 or not self.dampening > 0:
            raise ValueError(f"{self.name}: --alpha and --dampening must be positive, "
                             f"got {self.alpha} and {self.dampening}")
        if self.importance_batch_size < 0:
            raise ValueError(f"{self.name}: --importance_batch_size must be 0 (the source's) or positive, "
                             f"got {self.importance_batch_size}")

    def configure(self, setting):  # 0 becomes the size it picks, and is recorded so
        if self.importance_batch_size == 0:
            self.importance_batch_size = SOURCE_BATCH["random" if setting.forgotten_class is None else "class"]

    def update(self, model, sets):
        size = self.importance_batch_size or SOURCE_BATCH["random"]  # unconfigured: random forgetting's
        i_f = importances(model, sets, "forget", self.label_free, size)
        i_d = importances(model, sets, "train", self.label_free, size)
        factors = dampening_factors(i_f, i_d, self.alpha, self.dampening)
        delta = [p.detach() * (w - 1) for p, w in zip(sets.params, factors)]
        dampened = sum((w < 1).sum().item() for w in factors) / sum(w.numel() for w in factors)
        return delta, {"dampened_share": dampened}


@register_method("LFSSD")
@dataclass
class LFSSD(SSD):
    label_free: ClassVar[bool] = True
