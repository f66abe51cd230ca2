"""The shared unlearning implementation: the toolkit's one training loop, and the only
code that steps the weights (the papers' code keeps it in `unlearn/impl.py` too).

Training the original model, retraining the ideal one and every unlearning
method run through `run()`. A method declares each epoch as an ordered list of
passes; the single extension point is the pair (method, add-on):

    for epoch in range(recipe.epochs):
        for p in method.passes(epoch):             # e.g. SCRUB: [max over D_F, min over D_R]
            for batch in shuffled batches of p.over (forget, retain or their union):
                B_F, B_R = the batches p.uses      # the set p walks, plus a cycled batch of the other
                terms = method.losses(model, B_F, B_R, progress)   # {"unlearn": L_U, "utility": L_C}
                if the add-on reads separate gradients:
                    g_U, g_C = grad L_U, grad L_C   # a term the pass lacks is computed for the
                                                    #   add-on only (-CE(B_F), CE(B_R)), on a batch
                                                    #   of the companion stream if p drew none; its
                                                    #   forward moves no batch-norm statistics
                g_obj = grad of the pass's own terms  # d = g_U + g_C without an add-on
                d, keep = addon.direction(g_U, g_C, g_obj)
                step(params, d, keep)               # SGD or Adam; coordinates outside `keep` do not
                                                    #   move, nor do their momentum, moments or decay

Paired comparisons: the batches, augmentations and random labels a run sees come
from one generator seeded by `seed` (the method's stream). The batches of a term
computed for the add-on only come from a second one (the companion stream), and
what an add-on draws before the first step (warm-up batches) from a third. So
`GA`, `GA+Mask` and `GA+VarGrad` of one seed see the same forget batches in the
same order, and `GA+Mask` and `GA+VarGrad` the same retain batches too.

Usable from a notebook:

    model, history = run(model, data, split.forget, split.retain, *make("NegGrad+VarGrad"),
                         Recipe(lr=0.01, epochs=5), seed=1)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from unlearn.addons.common import Addon, Flat, Grads, flatten
from unlearn.addons.none import NoAddon
from unlearn.methods.common import Batch, Context, Method, Pass, Progress, Setting

CHECK_EVERY = 20  # steps between non-finite checks (each costs one device sync)
COMPANION_STREAM, PREPARE_STREAM, SUBSET_STREAM = 0x5EED, 0xC0FFEE, 0x5AB5E7  # offsets of other generators' seeds
OPTIMIZERS = ("sgd", "adam")
SPEED_OPTIONS = ("amp", "channels_last", "compile")
# what runs when a recipe does not say, per device type (measured on a 2-core AMD EPYC with AVX2: channels-last
# 1.01-1.20x, bf16 autocast 0.05-0.14x there; docs/speed.md); every run records what it used
SPEED_DEFAULTS: dict[str, dict[str, bool]] = {
    "cpu": {"amp": False, "channels_last": True, "compile": False},
    "cuda": {"amp": False, "channels_last": False, "compile": False},
}
BN_STATS = ("update", "freeze")


@dataclass
class Recipe:
    """Optimisation hyper-parameters (SGD as in the papers' code; Adam for BadTeacher)."""

    lr: float = 0.01
    epochs: int = 10
    batch_size: int = 256
    momentum: float = 0.9  # SGD momentum (Adam: beta1 is 0.9, beta2 0.999)
    weight_decay: float = 5e-4  # L2 added to the gradient, as torch.optim.SGD / Adam do
    decreasing_lr: list[int] = field(default_factory=list)  # epochs at which lr is multiplied by 0.1
    warmup: int = 0  # epochs of linear warm-up from lr / steps to lr
    optimizer: str = "sgd"  # "sgd" or "adam"
    bn_stats: str = "update"  # "freeze": batch-norm running statistics never change
    augment: bool = True  # augment the batches the loop draws (where the data set augments at all)
    amp: bool = False  # forwards in bf16 autocast (weights, gradients, optimizer state stay fp32)
    channels_last: bool = False  # channels-last layout of the model's 4-d weights during the run
    compile: bool = False  # torch.compile the model's forward for the run

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.bn_stats not in BN_STATS:
            raise ValueError(f"bn_stats {self.bn_stats!r}: choose one of {', '.join(BN_STATS)}")


def speed_defaults(device: torch.device | str | None) -> dict[str, bool]:
    """The speed options a run on `device` uses when not told (SPEED_DEFAULTS; none for None)."""
    return dict(SPEED_DEFAULTS.get(torch.device(device).type, {})) if device is not None else {}


def recipe_for(method: Method, *, original_epochs: int | None = None, device: torch.device | str | None = None,
               **given) -> Recipe:
    """The recipe `method`'s source runs (its lr, epochs, batch size, optimizer, momentum, weight
    decay, lr milestones, augmentation), with the Recipe fields in `given` overriding it (None means
    the method's). `original_epochs` is the original model's training length, the default length of
    a method that retrains for as long (EU-k). `device`: where it runs, whose SPEED_DEFAULTS fill
    the speed options not given (the scripts' resolution); None leaves Recipe's (all off)."""
    cls = type(method)
    fields = {f.name for f in dataclasses.fields(Recipe)}
    unknown = set(given) - fields
    if unknown:
        raise TypeError(f"no recipe field {', '.join(sorted(unknown))}; the recipe has {', '.join(sorted(fields))}")
    own = dict(lr=cls.unlearn_lr, epochs=cls.unlearn_epochs, batch_size=cls.unlearn_batch_size,
               momentum=cls.unlearn_momentum, weight_decay=cls.unlearn_weight_decay, optimizer=cls.unlearn_optimizer,
               decreasing_lr=list(cls.unlearn_decreasing_lr), augment=cls.augment, **speed_defaults(device))
    if cls.epochs_of_original and given.get("epochs") is None:
        if original_epochs is None:
            raise ValueError(f"{cls.name} trains for the original model's training length: give its epochs")
        own["epochs"] = original_epochs
    return Recipe(**{**own, **{k: v for k, v in given.items() if v is not None}})


class Diverged(RuntimeError):
    """A loss term became non-finite; the weights after this point are meaningless."""


def lr_at(recipe: Recipe, epoch: int, step: int, steps: int) -> float:
    """Learning rate of one step: linear warm-up, then x0.1 at each `decreasing_lr` milestone."""
    if epoch < recipe.warmup:
        return recipe.lr * (epoch * steps + step + 1) / (recipe.warmup * steps)
    return recipe.lr * 0.1 ** sum(epoch >= m for m in recipe.decreasing_lr)


# ----------------------------------------------------------------- optimizers
# The steps below touch every parameter with a fixed number of kernels whatever the
# model's depth: foreach operations over the parameter list, and the masked selects over
# one flat tensor (the optimizer state lives in one, its per-parameter tensors are views).
# Each computes exactly the expression of a per-parameter loop, so the weights are the
# same bit for bit (tested against that loop).
@torch.no_grad()
def sgd_step(params: list[Tensor], d: Grads, keep: list[Tensor] | None, bufs: Flat,
             lr: float, momentum: float, weight_decay: float) -> Tensor | None:
    """SGD with momentum and weight decay along d. Where `keep` is False the coordinate,
    its momentum buffer and its weight decay are all left untouched. Returns `keep` as
    one flat tensor (None without a mask)."""
    g = torch._foreach_add(d, torch._foreach_mul(params, weight_decay)) if weight_decay else d
    if keep is None:
        bufs.flat.mul_(momentum)
        torch._foreach_add_(bufs.views, g)
        torch._foreach_sub_(params, bufs.split(lr * bufs.flat))
        return None
    k = flatten(keep)
    moved = momentum * bufs.flat
    torch._foreach_add_(bufs.split(moved), g)
    bufs.flat.copy_(torch.where(k, moved, bufs.flat))
    torch._foreach_sub_(params, bufs.split(torch.where(k, lr * bufs.flat, 0.0)))
    return k


@torch.no_grad()
def adam_step(params: list[Tensor], d: Grads, keep: list[Tensor] | None, state: dict[str, Flat],
              lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999),
              eps: float = 1e-8) -> Tensor | None:
    """Adam (torch.optim.Adam's update, L2 weight decay) along d. Each coordinate counts its own
    steps, so where `keep` is False its value, both moments and its bias correction stay put;
    without a mask this is exactly torch.optim.Adam. Returns `keep` flat (None without a mask)."""
    b1, b2 = betas
    m, v, t = state["m"].flat, state["v"].flat, state["t"].flat
    g = flatten(d)
    if weight_decay:
        g = g + weight_decay * flatten(params)
    k = flatten(keep) if keep is not None else torch.ones_like(g, dtype=torch.bool)
    t.add_(k.to(t.dtype))
    m.copy_(torch.where(k, b1 * m + (1 - b1) * g, m))
    v.copy_(torch.where(k, b2 * v + (1 - b2) * g * g, v))
    t_safe = t.clamp_min(1)  # a never-stepped coordinate has m = v = 0 and is not moved anyway
    m_hat = m / (1 - b1 ** t_safe)
    denom = (v / (1 - b2 ** t_safe)).sqrt().add_(eps)
    torch._foreach_sub_(params, state["m"].split(torch.where(k, lr * m_hat / denom, 0.0)))
    return k if keep is not None else None


class Stepper:
    """The optimizer state of one run (SGD momentum buffers or Adam moments)."""

    def __init__(self, params: list[Tensor], recipe: Recipe):
        self.params, self.recipe = params, recipe
        if recipe.optimizer == "sgd":
            self.bufs = Flat(params)
        else:
            self.adam = {k: Flat(params) for k in ("m", "v", "t")}

    def _mine(self) -> dict[str, Flat]:
        return {"bufs": self.bufs} if self.recipe.optimizer == "sgd" else self.adam

    def state(self) -> dict:
        return {k: [t.clone() for t in f.views] for k, f in self._mine().items()}

    def load(self, state: dict) -> None:
        for k, f in self._mine().items():
            for t, saved in zip(f.views, state[k], strict=True):
                t.copy_(saved)

    def step(self, d: Grads, keep: list[Tensor] | None, lr: float) -> Tensor | None:
        """One step; returns the flat keep mask (None without one)."""
        r = self.recipe
        if r.optimizer == "sgd":
            return sgd_step(self.params, d, keep, self.bufs, lr, r.momentum, r.weight_decay)
        return adam_step(self.params, d, keep, self.adam, lr, r.weight_decay, (r.momentum, 0.999))


# -------------------------------------------------------------------- batches
def shuffled_batches(idx: Tensor, size: int, gen: torch.Generator) -> list[Tensor]:
    """A shuffled pass over `idx` in batches; a last batch of one sample joins the one before
    (batch norm cannot train on one sample), and a set of one sample is doubled."""
    if len(idx) == 1:
        return [idx.repeat(2)]
    chunks = list(idx[torch.randperm(len(idx), device=idx.device, generator=gen)].split(size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2] = torch.cat(chunks[-2:])
        chunks.pop()
    return chunks


class _Cycle:
    """Endless shuffled batches of one index set, from one generator."""

    def __init__(self, idx: Tensor, size: int, gen: torch.Generator):
        self.idx, self.size, self.gen, self.queue = idx, size, gen, []

    def __next__(self) -> Tensor:
        if not self.queue:
            self.queue = shuffled_batches(self.idx, self.size, self.gen)
        return self.queue.pop(0)


class Stream:
    """One random stream: a generator, and cycled batches of D_F and D_R drawn from it."""

    def __init__(self, data, forget: Tensor, retain: Tensor, seed: int, device: torch.device, augment: bool = True):
        self.data, self.sets, self.augment = data, {"forget": forget, "retain": retain}, augment
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)
        self.cycles: dict[tuple[str, int], _Cycle] = {}

    def cycled(self, name: str, size: int) -> Batch:
        if not len(self.sets[name]):
            raise ValueError(f"a batch of the {name} set was needed, but it is empty")
        key = (name, size)
        if key not in self.cycles:
            self.cycles[key] = _Cycle(self.sets[name], size, self.gen)
        return Batch(*self.data.batch(next(self.cycles[key]), train=self.augment, generator=self.gen))

    def walk(self, p: Pass, size: int) -> list[tuple[Tensor, Tensor | None]]:
        """The batches of one pass: (indices, is-forget flags for a union pass, else None)."""
        if p.over != "union":
            return [(c, None) for c in shuffled_batches(self.sets[p.over], size, self.gen)]
        union = torch.cat([self.sets["forget"], self.sets["retain"]])
        flags = torch.arange(len(union), device=union.device) < len(self.sets["forget"])
        order = shuffled_batches(torch.arange(len(union), device=union.device), size, self.gen)
        return [(union[o], flags[o]) for o in order]

    def draw(self, p: Pass, chunk: Tensor, flags: Tensor | None, size: int) -> dict[str, Batch | None]:
        """The forget and retain batches of one step of pass `p`."""
        x, y = self.data.batch(chunk, train=self.augment, generator=self.gen)
        if flags is not None:  # a union batch, split by membership (either part may be empty)
            return {"forget": Batch(x[flags], y[flags]), "retain": Batch(x[~flags], y[~flags])}
        out: dict[str, Batch | None] = {"forget": None, "retain": None}
        for name in p.uses:
            out[name] = Batch(x, y) if name == p.over else self.cycled(name, p.companion_batch_size or size)
        return out


def batch_norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module, norms: list[nn.Module] | None = None) -> Iterator[None]:
    """Train-mode forwards that leave batch-norm running statistics (and their counters)
    untouched: normalisation still uses the batch's statistics, as in training. `norms`: the
    model's batch-norm layers, found once by the caller (batch_norms) where this runs every step."""
    bns = [m for m in (batch_norms(model) if norms is None else norms) if m.track_running_stats]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


def gradients(loss: Tensor, params: list[Tensor], retain_graph: bool = False) -> Grads:
    """d loss / d params, zeros for a parameter the loss does not reach."""
    gs = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=retain_graph)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(gs, params)]


class Gradients:
    """Gradients on demand, for the step and for an add-on's `prepare` (the prepare stream)."""

    def __init__(self, model: nn.Module, stream: Stream, batch_size: int,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        self.model, self.stream, self.bs, self.autocast = model, stream, batch_size, autocast
        self.params = [p for p in model.parameters() if p.requires_grad]

    def of(self, loss: Tensor, retain_graph: bool = False) -> Grads:
        return gradients(loss, self.params, retain_graph)

    def retain_grads(self, n: int) -> Iterator[Grads]:
        """g_c of n retain batches of the add-on's stream; the model's state is left as it was."""
        with frozen_bn_stats(self.model):
            for _ in range(n):
                b = self.stream.cycled("retain", self.bs)
                with self.autocast():
                    loss = F.cross_entropy(self.model(b.x), b.y)
                yield self.of(loss)

    def forget_grad_sum(self) -> Grads:
        forget = self.stream.sets["forget"]
        if not len(forget):
            raise ValueError("this add-on needs the forget set, but it is empty")
        was_training = self.model.training
        self.model.eval()
        total = [torch.zeros_like(p) for p in self.params]
        for idx in forget.split(self.bs):
            x, y = self.stream.data.batch(idx, train=False)
            with self.autocast():
                loss = -F.cross_entropy(self.model(x), y, reduction="sum")
            for t, g in zip(total, self.of(loss)):
                t.add_(g)
        self.model.train(was_training)
        return total


def retain_batch_size(method: Method, recipe: Recipe) -> int:
    """The size of the retain batches the method's first pass draws (the recipe's if none does): an
    add-on's warm-up estimates the gradient of batches of that size."""
    for p in method.passes(0):
        if p.over == "retain":
            return p.batch_size or recipe.batch_size
        if "retain" in p.uses and p.over != "union":
            return p.companion_batch_size or p.batch_size or recipe.batch_size
    return recipe.batch_size


def check_sets(method: Method, addon: Addon, n_forget: int, n_retain: int) -> None:
    """ValueError when a set that the method's passes or the add-on need is empty."""
    needed = {s for e in range(2) for p in method.passes(e) for s in (p.over, *p.uses)} - {"union"}
    needed |= {{"unlearn": "forget", "utility": "retain"}[t] for t in addon.needs}
    for name, n in (("forget", n_forget), ("retain", n_retain)):
        if name in needed and not n:
            raise ValueError(f"{method.name}+{addon.name} needs a non-empty {name} set")


# ----------------------------------------------------------------------- loop
def run(model: nn.Module, data, forget: Tensor, retain: Tensor, method: Method, addon: Addon | None = None,
        recipe: Recipe | None = None, *, seed: int | None = None,
        on_epoch_end: Callable[[int, dict], dict | None] | None = None,
        progress: bool = True, desc: str = "", on_state: Callable[[dict], None] | None = None,
        resume: dict | None = None, setting: Setting | None = None) -> tuple[nn.Module, list[dict]]:
    """Run `method` with `addon` on the model (in place) and return it with a per-epoch history.

    `data.batch(idx, train, generator)` turns index tensors into (inputs, labels); `forget`
    and `retain` are index tensors into the training tensor. `seed` seeds the method's
    stream of batches (default: drawn from torch's global generator). `on_epoch_end(epoch,
    record)` may evaluate and return figures to add to that epoch's record; its time is
    not counted in `record["time_s"]`. Raises Diverged on a non-finite loss. `setting` (default:
    the data set's name, random forgetting) is what `method.configure` reads first.

    Resuming (what training from scratch needs; FT with no add-on, whose loop state is the
    model, the optimizer state, the epoch and the generators): `on_state(state)` receives the
    loop's state after each epoch (after `on_epoch_end`), and `resume=state` continues from it,
    to the same weights bit for bit on the CPU as a run never stopped.
    """
    recipe = recipe or Recipe()
    addon = addon or NoAddon()
    if method.kind != "loop":
        raise ValueError(f"{method.name} is not a loop method ({method.kind}): "
                         f"use unlearn.unlearn, which dispatches every kind")
    setting = setting or Setting(getattr(data, "name", ""))
    method.configure(setting)
    check_sets(method, addon, len(forget), len(retain))
    if (on_state or resume) and (method.name != "FT" or addon.name != "none"):
        raise ValueError(f"only FT with no add-on (training from scratch) can be resumed, not {method.name}+"
                         f"{addon.name}")
    device = next(model.parameters()).device
    seed = int(torch.randint(2**62, ())) if seed is None else seed
    subset_gen = torch.Generator(device=device)
    subset_gen.manual_seed(seed + SUBSET_STREAM)
    forget, retain = method.subset(forget, retain, subset_gen)
    mine = Stream(data, forget, retain, seed, device, recipe.augment)
    theirs = Stream(data, forget, retain, seed + COMPANION_STREAM, device, recipe.augment)
    method.adapt(model, mine.gen)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every batch but an epoch's last has the same shape
    try:
        return _run(model, data, forget, retain, method, addon, recipe, seed, mine, theirs, on_epoch_end,
                    progress, desc, on_state, resume, setting.forgotten_class)
    finally:
        method.restore(model)
        if recipe.channels_last:
            model.to(memory_format=torch.contiguous_format)
        model.eval()


class _Forward:
    """How the loop calls the model: the module itself, or its torch.compile'd forward (same
    parameters), under bf16 autocast when the recipe says so. Batch norm runs in fp32 under
    autocast (its weights and running statistics are never cast)."""

    def __init__(self, model: nn.Module, recipe: Recipe):
        self.norms = batch_norms(model)  # the module's own batch-norm layers, which a context may switch
        self.model = torch.compile(model) if recipe.compile else model
        self.amp = recipe.amp
        self.device_type = next(model.parameters()).device.type

    def autocast(self):
        return torch.autocast(self.device_type, dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()


def context(model: nn.Module, data, forget: Tensor, retain: Tensor, generator: torch.Generator | None,
            forgotten_class: int | None = None) -> Context:
    mean, std = getattr(data, "mean", None), getattr(data, "std", None)
    return Context(model, data.num_classes, len(forget), len(retain), generator,
                   None if mean is None else (mean, std), forgotten_class)


def _run(model, data, forget, retain, method, addon, recipe, seed, mine, theirs, on_epoch_end, progress, desc,
         on_state=None, resume=None, forgotten_class=None):
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    fwd = _Forward(model, recipe)
    grads = Gradients(model, Stream(data, forget, retain, seed + PREPARE_STREAM, device, recipe.augment),
                       retain_batch_size(method, recipe), fwd.autocast)
    stepper = Stepper(params, recipe)
    model.train()
    bn = frozen_bn_stats(model) if recipe.bn_stats == "freeze" else contextlib.nullcontext()
    with bn:
        method.setup(context(model, data, forget, retain, mine.gen, forgotten_class))
        addon.prepare(grads)
        history, first = [], 0
        if resume is not None:
            model.load_state_dict(resume["model"])
            stepper.load(resume["optimizer"])
            mine.gen.set_state(resume["generator"])
            torch.set_rng_state(resume["torch_rng"])
            if "cuda_rng" in resume:
                torch.cuda.set_rng_state(resume["cuda_rng"], device)
            history, first = list(resume["history"]), resume["epoch"]
        for epoch in range(first, recipe.epochs):
            sync(device)
            t0 = time.perf_counter()
            record = _epoch(fwd, method, addon, recipe, epoch, mine, theirs, grads, stepper, progress, desc)
            sync(device)
            record["time_s"] = time.perf_counter() - t0
            if on_epoch_end is not None:
                record.update(on_epoch_end(epoch, record) or {})
                model.train()
            history.append(record)
            if on_state is not None:
                on_state({"epoch": epoch + 1, "model": {k: v.clone() for k, v in model.state_dict().items()},
                          "optimizer": stepper.state(), "generator": mine.gen.get_state(),
                          "torch_rng": torch.get_rng_state(), "history": list(history),
                          **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {})})
    return model, history


def _epoch(fwd: _Forward, method: Method, addon: Addon, recipe: Recipe, epoch: int, mine: Stream,
           theirs: Stream, grads: Gradients, stepper: Stepper, progress: bool, desc: str) -> dict:
    """One epoch: every pass the method declares, in order."""
    model = fwd.model
    passes = [(p, p.batch_size or recipe.batch_size) for p in method.passes(epoch)]
    walks = [(p, size, mine.walk(p, size)) for p, size in passes]
    steps = sum(len(w) for _, _, w in walks)
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    kept, masked, lr, step = torch.zeros((), device=stepper.params[0].device), 0, recipe.lr, 0
    bar = tqdm(total=steps, desc=f"{desc} epoch {epoch + 1}/{recipe.epochs}".strip(), file=sys.stderr,
               disable=True if not progress else None,  # None: no bar when stderr is not a terminal
               mininterval=1.0, leave=False, dynamic_ncols=True)
    for p, size, walk in walks:
        for chunk, flags in walk:
            b = mine.draw(p, chunk, flags, size)
            with fwd.autocast():
                terms = method.losses(model, b["forget"], b["retain"],
                                      Progress(epoch, recipe.epochs, step, steps, p.name))
            own = [terms[k] for k in ("unlearn", "utility") if k in terms]
            if addon.needs:
                l_u, l_c = terms.get("unlearn"), terms.get("utility")
                # a term for the add-on only: its forward leaves the batch-norm running statistics as they
                # are, so that the run and its plain-method pair make the same statistics updates
                if l_u is None and "unlearn" in addon.needs:
                    f = b["forget"] if b["forget"] is not None and len(b["forget"].y) else theirs.cycled("forget", size)
                    with fwd.autocast(), frozen_bn_stats(model, fwd.norms):
                        l_u = -F.cross_entropy(model(f.x), f.y)
                if l_c is None and "utility" in addon.needs:
                    r = b["retain"] if b["retain"] is not None and len(b["retain"].y) else theirs.cycled("retain", size)
                    with fwd.autocast(), frozen_bn_stats(model, fwd.norms):
                        l_c = F.cross_entropy(model(r.x), r.y)
                g_u = grads.of(l_u, retain_graph=l_c is not None) if l_u is not None else None
                g_c = grads.of(l_c) if l_c is not None else None
                parts = [g for k, g in (("unlearn", g_u), ("utility", g_c)) if k in terms]
                # new tensors, as the add-on may change them in place (one foreach call each, not one per weight)
                g_obj = torch._foreach_add(*parts) if len(parts) == 2 else torch._foreach_mul(parts[0], 1.0)
            else:
                g_u = g_c = None
                g_obj = grads.of(sum(own))
            d, keep = addon.direction(g_u, g_c, g_obj)
            lr = lr_at(recipe, epoch, step, steps)
            kept_flat = stepper.step(d, keep, lr)

            for k, v in terms.items():
                sums[k] = sums.get(k, 0) + v.detach()
                counts[k] = counts.get(k, 0) + 1
            if kept_flat is not None:
                masked += 1
                kept += kept_flat.sum() / kept_flat.numel()
            step += 1
            bar.update()
            if step % CHECK_EVERY == 0 or step == steps:
                _check_finite(sums, epoch, step)
                if progress:
                    bar.set_postfix({k: f"{v.item() / counts[k]:.3g}" for k, v in sums.items()}, refresh=False)
    bar.close()
    # a last step can leave non-finite weights behind finite losses: the losses never see them
    if not torch.stack(torch._foreach_norm(stepper.params)).isfinite().all():
        raise Diverged(f"non-finite weights after epoch {epoch + 1}")
    record = {"epoch": epoch + 1, "lr": lr, "steps": steps}
    record.update({k: v.item() / counts[k] for k, v in sums.items()})
    if masked:  # share of coordinates the add-on let move, averaged over the epoch's steps
        record["kept_share"] = kept.item() / masked
    return record


def _check_finite(sums: dict[str, Tensor], epoch: int, step: int) -> None:
    values = {k: v.item() for k, v in sums.items()}
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise Diverged(f"non-finite {', '.join(bad)} loss by epoch {epoch + 1}, step {step}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
