"""What every method shares: the base record, the context, and small loss helpers.

A method is a dataclass of hyper-parameters (with the published defaults) and
one function, `losses(model, forget, retain, progress)`, that returns its loss
terms: "unlearn" (on the forget batch) and/or "utility" (on the retain batch).
Any other key is a monitored figure (a detached tensor), averaged per epoch.
Methods never see the optimizer, the device or the command line.

An epoch is an ordered list of passes (`passes(epoch)`). The default is one fused
pass over `epoch_over` that also draws a cycled batch of the other set in `uses`
(NegGrad+: every retain batch comes with a forget batch); SCRUB and RL declare
their published sequences of passes instead.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Batch(NamedTuple):
    x: Tensor
    y: Tensor


@dataclass(frozen=True)
class Pass:
    """One pass of an epoch: walk `over` once ("forget", "retain", or "union": the shuffled
    union of both, each batch split into its forget and retain part), with a cycled batch
    of each other set in `uses`; `batch_size` None means the recipe's, `companion_batch_size`
    (the cycled batches' size) None means the pass's own."""

    over: str
    uses: tuple[str, ...]
    batch_size: int | None = None
    name: str = ""
    companion_batch_size: int | None = None


@dataclass(frozen=True)
class Setting:
    """What a method may read of the run's setting to pick its source's defaults before anything
    else happens (RL's passes per data set, SSD's importance batch size per forgetting mode, EU-k's
    initial weights)."""

    dataset: str = ""
    forgotten_class: int | None = None  # the class of class forgetting, None for random forgetting
    initial_model: Callable[[], nn.Module] | None = None  # the model as its training started (EU-k)


@dataclass(frozen=True)
class Progress:
    epoch: int  # 0-based
    epochs: int
    step: int  # within the epoch, over all its passes
    steps: int
    pass_name: str = ""

    @property
    def fraction(self) -> float:
        """Share of the run done before this step, in [0, 1)."""
        return (self.epoch + self.step / self.steps) / self.epochs


class Context:
    """What a method may ask for before unlearning starts (read lazily, copied once)."""

    def __init__(self, model: nn.Module, num_classes: int, num_forget: int, num_retain: int,
                 generator: torch.Generator | None = None, pixels: tuple[Tensor, Tensor] | None = None,
                 forgotten_class: int | None = None):
        self._model = model
        self.num_classes, self.num_forget, self.num_retain = num_classes, num_forget, num_retain
        self.generator = generator  # the run's own stream: draw random labels from it
        self.pixels = pixels  # (mean, std) per channel: input = (pixel in [0, 1] - mean) / std
        self.forgotten_class = forgotten_class  # the class of class forgetting, None for random forgetting

    @cached_property
    def original(self) -> nn.Module:
        """A frozen copy of the model as it was before unlearning (a teacher)."""
        return _frozen(copy.deepcopy(self._model))

    def random_model(self) -> nn.Module:
        """A frozen, freshly initialised network of the same architecture (an incompetent teacher),
        drawn from the run's own stream (`generator`), so the same seed gives the same teacher
        whatever torch's global generator holds."""
        net = copy.deepcopy(self._model)
        reinitialise([m for m in net.modules() if m is not net], self.generator)
        return _frozen(net)


def reinitialise(modules, generator: torch.Generator | None) -> None:
    """Each module's own `reset_parameters()`, drawing from a seed taken from `generator` (the run's
    stream; torch's global generator is left as it was), or from the global one if None."""
    devices = sorted({p.device.index for m in modules for p in m.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        if generator is not None:
            torch.manual_seed(int(torch.randint(2**62, (), generator=generator, device=generator.device)))
        for m in modules:
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()


def _frozen(net: nn.Module) -> nn.Module:
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@dataclass
class Method:
    """Base record. Class attributes say what the engine must provide."""

    name: ClassVar[str]
    uses: ClassVar[tuple[str, ...]] = ("forget", "retain")  # batches `losses` reads (default pass)
    epoch_over: ClassVar[str] = "forget"  # the set the default single pass walks once
    unlearn_epochs: ClassVar[int] = 10  # published defaults, used when the flags are not given
    unlearn_lr: ClassVar[float] = 0.01
    unlearn_optimizer: ClassVar[str] = "sgd"
    unlearn_weight_decay: ClassVar[float] = 5e-4
    unlearn_momentum: ClassVar[float] = 0.9
    unlearn_batch_size: ClassVar[int] = 256  # of the passes that do not set their own
    unlearn_decreasing_lr: ClassVar[tuple[int, ...]] = ()  # epochs at which lr is multiplied by 0.1
    epochs_of_original: ClassVar[bool] = False  # True: the default length is the original's training
    augment: ClassVar[bool] = True  # whether the source augments the batches (where the data set does)
    kind: ClassVar[str] = "loop"  # "loop": run by impl.run; "one-shot": unlearn/oneshot.py; "retrain"

    def configure(self, setting: Setting) -> None:
        """Called first: pick the defaults the source picks per setting (data set, forgetting mode)."""

    def subset(self, forget: Tensor, retain: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The forget and retain indices the run works on (BadTeacher: a share of D_R); default both whole."""
        return forget, retain

    def adapt(self, model: nn.Module, generator: torch.Generator) -> None:
        """Called before anything reads the model's parameters: change which are trainable, or
        its shape (BE's shadow class). Whatever it changes, `restore` undoes after the run."""

    def restore(self, model: nn.Module) -> None:
        """Called after the last step, also when the run fails."""

    def setup(self, ctx: Context) -> None:
        """Called once before the first step."""

    def passes(self, epoch: int) -> list[Pass]:
        """The passes of epoch `epoch` (0-based), in order."""
        return [Pass(self.epoch_over, self.uses)]

    def losses(self, model: nn.Module, forget: Batch | None, retain: Batch | None,
               progress: Progress) -> dict[str, Tensor]:
        raise NotImplementedError


# ------------------------------------------------------------------ helpers
_WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def weight_layers(model: nn.Module) -> list[list[nn.Module]]:
    """The model's convolution and linear layers in registration order, each with the
    normalisation layers registered after it and before the next one (its batch norm)."""
    groups: list[list[nn.Module]] = []
    for m in model.modules():
        if isinstance(m, _WEIGHT_LAYERS):
            groups.append([m])
        elif isinstance(m, _NORMS) and groups:
            groups[-1].append(m)
    return groups


def last_layers(model: nn.Module, k: int, who: str) -> list[nn.Module]:
    """The modules of the last k layers, layers as weight_layers counts them."""
    groups = weight_layers(model)
    if not 1 <= k <= len(groups):
        raise ValueError(f"{who}: --k must be between 1 and {len(groups)} (the model's convolution and "
                         f"linear layers), got {k}")
    return [m for g in groups[-k:] for m in g]


def last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """(parent module, attribute name, layer) of the model's last nn.Linear: its classifier."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to serve as its classifier")
    name, layer = found
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    return parent, name.rpartition(".")[2], layer


class Frozen:
    """Freezes modules entirely: their parameters stop requiring gradients, their batch-norm
    running statistics stop moving; `undo()` gives both back."""

    def __init__(self, model: nn.Module, keep_training: list[nn.Module]):
        trained = {id(p) for m in keep_training for p in m.parameters(recurse=False)}
        self.params = [p for p in model.parameters() if p.requires_grad and id(p) not in trained]
        owners = {id(m) for m in keep_training}
        self.bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                    and m.track_running_stats and id(m) not in owners]
        for p in self.params:
            p.requires_grad_(False)
        for m in self.bns:
            m.track_running_stats = False

    def undo(self) -> None:
        for p in self.params:
            p.requires_grad_(True)
        for m in self.bns:
            m.track_running_stats = True


def ce(model: nn.Module, batch: Batch, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Cross-entropy of the model on a batch (against `labels` if given) and its accuracy (%)."""
    logits = model(batch.x)
    target = batch.y if labels is None else labels
    return F.cross_entropy(logits, target), accuracy(logits, batch.y)


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    return (logits.argmax(1) == y).float().mean().detach() * 100


def kl_to_teacher(student_logits: Tensor, teacher_logits: Tensor, T: float = 1.0, n: int | None = None) -> Tensor:
    """KL(teacher || student) of the softened outputs, times T^2 (Hinton et al. 2015), summed over
    the rows and divided by n (default: the number of rows, i.e. the batch mean)."""
    kl = F.kl_div(F.log_softmax(student_logits / T, 1), F.log_softmax(teacher_logits / T, 1),
                  reduction="sum", log_target=True) * T * T
    return kl / (n if n is not None else max(len(student_logits), 1))


def union_logits(model: nn.Module, forget: Batch, retain: Batch) -> tuple[Tensor, Tensor]:
    """One forward pass over a union batch (batch norm sees it whole), split back into its
    forget and retain rows."""
    out = model(torch.cat([forget.x, retain.x]))
    return out[:len(forget.y)], out[len(forget.y):]


def l1_norm(model: nn.Module) -> Tensor:
    return sum(p.abs().sum() for p in model.parameters())


@torch.no_grad()
def teacher_logits(teacher: nn.Module, x: Tensor) -> Tensor:
    return teacher(x)
