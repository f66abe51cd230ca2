"""CF-k, catastrophic forgetting of the last k layers (Goel et al., "Towards Adversarial
Evaluation of Machine Unlearning", 2022), as in the SCRUB repository's `cfk_unlearn`
(`MIA_experiments.ipynb`): every layer but the last k is frozen, and the last k are
fine-tuned on D_R, L_C = CE(retain). Their recipe, the default here: plain SGD (no
momentum, no weight decay), lr 0.01, 10 epochs, batch size 64, unaugmented images.

A layer is a convolution or linear layer with its batch norm; k counts them from the
output, classifier included (Goel et al.'s definition). SCRUB's notebooks train ResNet's
last stage with the classifier frozen; `--k 6` on resnet18 trains that stage (five
convolutions) and the classifier. Deviation: the frozen layers' batch-norm running
statistics are frozen too (in SCRUB's code train mode still moves them), so the first
layers leave the run bit-identical."""

from __future__ import annotations

from dataclasses import dataclass, field

from unlearn import register_method
from unlearn.methods.common import Frozen, Method, ce, last_layers
from unlearn.search import Range


@register_method("CF-k")
@dataclass
class CFk(Method):
    k: int = 3  # layers (convolution or linear, from the output) that train
    search = {"k": Range(1, 3, integer=True)}  # tuned (tune.py); smallcnn and convnet have 4 or more layers
    uses = ("retain",)
    epoch_over = "retain"
    unlearn_epochs, unlearn_lr = 10, 0.01
    unlearn_momentum, unlearn_weight_decay = 0.0, 0.0
    unlearn_batch_size = 64
    augment = False
    frozen: Frozen | None = field(default=None, init=False, repr=False)

    def adapt(self, model, generator):
        last = last_layers(model, self.k, self.name)
        self.frozen = Frozen(model, last)

    def restore(self, model):
        if self.frozen is not None:
            self.frozen.undo()
            self.frozen = None

    def losses(self, model, forget, retain, progress):
        loss, acc = ce(model, retain)
        return {"utility": loss, "retain_acc": acc}
