"""BS, boundary shrinking (Chen et al., "Boundary Unlearning: Rapid Forgetting of Deep
Networks via Shifting the Decision Space", CVPR 2023), as in Unlearn-Saliency's
`unlearn/boundary_sh.py`: each epoch one pass over D_F. Every forget image is pushed by one
FGSM step of size epsilon (0.1 there, hard-coded "as in the paper") in pixel space, against
a frozen copy of the original model in eval mode, then clipped to [0, 1] and rounded to
the 8-bit grid; the original model's prediction on that neighbour is the image's new label.
L_U = CE(model(x_F), those labels), on the clean image. No retain term.

Recipe: SGD, Unlearn-Saliency's generic defaults (10 epochs, lr 0.01, momentum 0.9, weight
decay 5e-4); their paper tunes the learning rate per experiment. The labels are recomputed
every batch from the frozen original, as theirs are, so augmentation changes them as it
changes the image."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unlearn import register_method
from unlearn.methods.common import Method, accuracy
from unlearn.search import Range


def fgsm_neighbour_labels(teacher, x, y, epsilon: float, pixels=None):
    """The teacher's labels of x moved by one signed-gradient step of `epsilon` in pixel units
    (x is normalised: x = (pixel - mean) / std), clipped to [0, 1] and rounded to k / 255."""
    mean, std = pixels if pixels is not None else (torch.zeros(x.shape[1]), torch.ones(x.shape[1]))
    mean, std = mean.to(x)[:, None, None], std.to(x)[:, None, None]
    with torch.enable_grad():
        x_req = x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(teacher(x_req), y)
        (g,) = torch.autograd.grad(loss, x_req)
    pixel = x.detach() * std + mean  # the sign of the gradient is the same in both units (std > 0)
    moved = torch.round((pixel + epsilon * g.sign()).clamp(0.0, 1.0) * 255) / 255
    with torch.no_grad():
        return teacher((moved - mean) / std).argmax(1)


@register_method("BS")
@dataclass
class BS(Method):
    epsilon: float = 0.1  # FGSM step in pixel units ([0, 1] images), Unlearn-Saliency's hard-coded bound
    search = {"epsilon": Range(0.01, 0.5, log=True)}  # tuned (tune.py)
    uses = ("forget",)
    epoch_over = "forget"
    unlearn_epochs, unlearn_lr = 10, 0.01

    def __post_init__(self):
        if not self.epsilon > 0:
            raise ValueError(f"BS: --epsilon must be positive, got {self.epsilon}")

    def setup(self, ctx):
        self.teacher, self.pixels = ctx.original, ctx.pixels

    def losses(self, model, forget, retain, progress):
        labels = fgsm_neighbour_labels(self.teacher, forget.x, forget.y, self.epsilon, self.pixels)
        out = model(forget.x)
        return {"unlearn": F.cross_entropy(out, labels), "forget_acc": accuracy(out, forget.y),
                "relabelled": (labels != forget.y).float().mean().detach() * 100}
