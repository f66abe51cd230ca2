"""Backdoor cleansing by unlearning (the body of main_backdoor.py), after Unlearn-Sparse's
`main_backdoor.py` (Jia et al., NeurIPS 2023, Section 6).

1. Poison: N training samples, drawn by the seed uniformly from the training set (every
   class, the target's included: Unlearn-Sparse draws them as its random forget set, and so
   do we: they are the indices of `--class_to_replace -1 --num_indexes_to_replace N`), get a
   trigger patch and the target label `--class_to_replace`.
2. Train the backdoored model on the poisoned training set (main_baseline.py's recipe), or
   reuse the one under --save_dir that was trained on this very poisoned set.
3. Unlearn the poisoned samples (the forget set, with their poisoned labels) with any method
   and add-on, exactly as mlflow_forget.py runs them.
4. Report clean test accuracy (TA) and the attack success rate (ASR) before and after, and
   log the run to MLflow like mlflow_forget.py (metrics `ASR`, and `original/ASR` before).

ASR is the share of triggered test images of the other classes that the model classifies as
the target. (Unlearn-Sparse's `attack_acc` also counts the target class's own test images,
which are trivially "successes"; we leave them out, as the backdoor literature does.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from pathlib import Path

import torch

import utils
from dataset import ForgetSplit, TensorData, forget_indices, load_data, split_of
from evaluation.accuracy import logits_of
from experiments import forget, trainer
from models import create_model
from utils import UserError

CORNERS = {"br": "bottom-right", "bl": "bottom-left", "tr": "top-right", "tl": "top-left"}
PATTERNS = ("black", "white", "checker")


@dataclasses.dataclass(frozen=True)
class Trigger:
    """A square patch of `size` pixels, `margin` pixels in from a corner. Unlearn-Sparse's trigger
    is the default: black (pixels set to 0), 4 pixels, 2 in from the bottom-right corner
    (`data[:, -2 - size:-2, -2 - size:-2, :] *= 0`). `white` sets 255; `checker` alternates
    255 and 0, starting with 255 at the patch's top-left pixel. Every channel gets the same value."""

    size: int = 4
    margin: int = 2
    corner: str = "br"
    pattern: str = "black"

    def check(self, height: int, width: int) -> None:
        if self.size < 1 or self.margin < 0:
            raise UserError(f"--trigger_size {self.size} --trigger_margin {self.margin}: the size must be at least "
                            "1 and the margin at least 0")
        if self.size + self.margin > min(height, width):
            raise UserError(f"a trigger of {self.size} pixels {self.margin} in from the corner does not fit in "
                            f"{height}x{width} images: use --trigger_size + --trigger_margin <= {min(height, width)}")
        if self.corner not in CORNERS or self.pattern not in PATTERNS:
            raise UserError(f"trigger corner {self.corner!r} / pattern {self.pattern!r}: corners are "
                            f"{', '.join(CORNERS)}, patterns {', '.join(PATTERNS)}")

    def region(self, height: int, width: int) -> tuple[slice, slice]:
        """(rows, columns) of the patch in an image of that size."""
        def span(length: int, from_end: bool) -> slice:
            start = length - self.margin - self.size if from_end else self.margin
            return slice(start, start + self.size)
        return span(height, self.corner[0] == "b"), span(width, self.corner[1] == "r")

    def patch(self, device=None) -> torch.Tensor:
        """The patch's uint8 values, (size, size)."""
        if self.pattern == "checker":
            i = torch.arange(self.size, device=device)
            return torch.where((i[:, None] + i[None, :]) % 2 == 0, 255, 0).to(torch.uint8)
        return torch.full((self.size, self.size), 0 if self.pattern == "black" else 255, dtype=torch.uint8,
                          device=device)

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        """A copy of uint8 images x (N, C, H, W) with the trigger applied."""
        rows, cols = self.region(x.shape[-2], x.shape[-1])
        out = x.clone()
        out[..., rows, cols] = self.patch(x.device)
        return out

    @property
    def tag(self) -> str:
        return f"t{self.size}{self.corner}{self.margin}{self.pattern}"


def trigger_of(args: argparse.Namespace) -> Trigger:
    return Trigger(args.trigger_size, args.trigger_margin, args.trigger_corner, args.trigger_pattern)


def poison(data: TensorData, seed: int, target: int, n: int | None, trigger: Trigger) -> tuple[TensorData,
                                                                                            ForgetSplit]:
    """The poisoned data set (a copy: `data` is left clean) and its split: the poisoned samples are
    the forget set, the rest of the training set the retain set. A pure function of its arguments;
    `forget_sha1` covers the indices, the target and the trigger."""
    k = data.num_classes
    if not 0 <= target < k:
        raise UserError(f"--class_to_replace {target} is the backdoor's target class: give a class in [0, {k})")
    if n is None:
        raise UserError("main_backdoor.py needs --num_indexes_to_replace N: how many training samples to poison")
    trigger.check(data.x_train.shape[-2], data.x_train.shape[-1])
    y, train_idx = data.y_train.cpu().numpy(), data.train_idx.cpu().numpy()
    chosen, _ = forget_indices(y, train_idx, seed, -1, n, k)  # Unlearn-Sparse: the random forget set
    idx = torch.from_numpy(chosen).to(data.x_train.device)
    x, labels = data.x_train.clone(), data.y_train.clone()
    x[idx] = trigger.stamp(x[idx])
    labels[idx] = target
    poisoned = dataclasses.replace(data, x_train=x, y_train=labels)
    key = json.dumps({"target": target, "trigger": dataclasses.asdict(trigger)}, sort_keys=True).encode()
    return poisoned, split_of(data, chosen, seed, target, "backdoor", salt=key, target=target,
                              trigger=dataclasses.asdict(trigger),
                              num_poisoned_of_target=int((y[chosen] == target).sum()))


@torch.no_grad()
def attack_success_rate(model, data: TensorData, trigger: Trigger, target: int) -> float:
    """Percent of the triggered test images of the other classes that `model` classifies as `target`."""
    x = trigger.stamp(data.x_test[data.y_test != target])
    if len(x) == 0:
        return float("nan")
    return (logits_of(model, data, x).argmax(1) == target).float().mean().item() * 100


def checkpoint_path(args: argparse.Namespace, n: int, which: str) -> Path:
    """The backdoored model of these arguments (`which` = "backdoored"), or its ideal model."""
    trig = trigger_of(args)
    stem = f"{args.seed}{args.arch}_ep{args.epochs}_backdoor{args.class_to_replace}_N{n}_{trig.tag}"
    return Path(args.save_dir) / (stem + (".pth.tar" if which == "backdoored" else "_ideal.pth.tar"))


TRIGGER_FLAGS = ("trigger_size", "trigger_margin", "trigger_corner", "trigger_pattern")
RECIPE_PREFIX = "train_"  # --train_momentum...: --momentum and the others name the unlearning recipe here


def own_command(args: argparse.Namespace, extra: list[str]) -> str:
    """This run's data, trigger and training-recipe flags as a main_backdoor.py command (the ideal
    model it suggests must be trained with the backdoored model's recipe)."""
    flags = {name: getattr(args, name) for name in ("data", "dataset", "arch", "seed", "class_to_replace",
                                                    "num_indexes_to_replace", *TRIGGER_FLAGS, "save_dir")}
    recipe = utils.train_recipe(args, RECIPE_PREFIX)
    flags |= {utils.train_dest(name, RECIPE_PREFIX): value for name, value in recipe.items()}
    return f"{utils.script_command('main_backdoor.py', flags)} {shlex.join(extra)}".rstrip()


class Backdoor(forget.Forgetting):
    """The scenario of main_backdoor.py for experiments.forget.main: the poisoned data, the backdoored model
    (trained when missing), its ideal model (retrained on the clean retain set) and ASR."""

    mode = "backdoor"

    def __init__(self, args: argparse.Namespace):
        self.trigger = trigger_of(args)
        self.target = args.class_to_replace
        self.device = utils.device_for(args)
        self._sets: tuple[TensorData, ForgetSplit] | None = None

    def data(self, args: argparse.Namespace, ckpt: dict | None = None, device=None):
        if self._sets is None:
            utils.resolve_arch(args)
            utils.set_seed(args.seed)
            clean = load_data(args.dataset, args.data, args.seed, args.num_classes, args.no_aug, args.subsample)
            data, split = poison(clean, args.seed, self.target, args.num_indexes_to_replace, self.trigger)
            self._sets = data.to(self.device), split.to(self.device)
        data, split = self._sets
        if ckpt is not None and ckpt["num_classes"] != data.num_classes:
            raise UserError(f"the backdoored model has {ckpt['num_classes']} classes, the data {data.num_classes}")
        return data, split

    def original(self, args: argparse.Namespace) -> tuple[Path, dict]:
        """The backdoored model (--mask, else its name under --save_dir); trained when missing."""
        utils.resolve_arch(args)
        data, split = self.data(args)
        path = Path(args.mask) if args.mask else checkpoint_path(args, len(split.forget), "backdoored")
        self.train_missing(args, "backdoored", path)
        ckpt = utils.load_checkpoint(path, dataset=args.dataset, arch=args.arch)
        self._same_poison(path, ckpt, split)
        return path, ckpt

    def ideal(self, args: argparse.Namespace, split) -> tuple[Path | None, dict | None]:
        path = checkpoint_path(args, len(split.forget), "ideal")
        return forget.find_ideal(args, split, path, own_command(args, ["--train_only", "ideal"]))

    def extra_metrics(self, model, data) -> dict[str, float]:
        return {"ASR": attack_success_rate(model, data, self.trigger, self.target)}

    @staticmethod
    def _same_poison(path: Path, ckpt: dict, split: ForgetSplit) -> None:
        theirs = ckpt.get("split", {})
        if theirs.get("forget_sha1") != split.info["forget_sha1"]:
            raise UserError(f"{path} was trained on another poisoned set (target {theirs.get('target')}, "
                            f"N={theirs.get('num_indexes_to_replace')}, trigger {theirs.get('trigger')}) than "
                            "these flags describe: pass the matching --mask, or another --save_dir to train one")

    def train_missing(self, args: argparse.Namespace, which: str, path: Path) -> None:
        """Train the model when `path` does not hold it yet; of two runs that need it at once, one
        trains it and the other waits and reuses it."""
        if path.is_file():
            return
        utils.check_writable(path.parent)
        with utils.exclusive(path):
            if not path.is_file():
                self.train(args, which, path)

    def train(self, args: argparse.Namespace, which: str, path: Path) -> Path:
        """Train the backdoored model (on the whole poisoned training set) or the ideal one (on the
        clean retain set), from the same seeded initialisation as main_baseline.py and main_ideal.py;
        save it with the poisoned set's record beside it; print clean TA and ASR."""
        trained_with = utils.train_recipe(args, RECIPE_PREFIX)  # under main_baseline.py's names
        trainer.validate_recipe(trained_with, RECIPE_PREFIX)
        utils.check_writable(args.save_dir)
        data, split = self.data(args)
        utils.set_seed(args.seed)
        model = create_model(args.arch, data.num_classes, data.in_channels, args.imagenet_arch).to(self.device)
        train_idx = data.train_idx if which == "backdoored" else split.retain
        print(f"{which} model: {args.arch} on {args.dataset} ({len(train_idx)} training samples, "
              f"{len(split.forget)} poisoned{' and left out' if which == 'ideal' else ''}; target "
              f"{self.target}, trigger {self.trigger}), device {self.device}")
        recipe = trainer.recipe_of({**vars(args), **trained_with})
        history, best_epoch, wall = trainer.fit(model, data, train_idx, data.val_idx, recipe, args.seed, args.quiet,
                                                which)
        acc = trainer.trained_accuracies(model, data, split) | {
            "ASR": attack_success_rate(model, data, self.trigger, self.target)}
        saved = argparse.Namespace(**{**vars(args), **trained_with})
        trainer.save(path, model, saved, which, split, acc, best_epoch, history, wall)
        print(f"done: {which} model, best epoch {best_epoch}: clean test acc {acc['TA']:.2f}  ASR "
              f"{acc['ASR']:.2f}  poisoned-sample acc (poisoned labels) {acc['FA']:.2f}  wall time {wall:.1f}s "
              f"-> {path}")
        return path


def build_parser(doc: str) -> argparse.ArgumentParser:
    parser = forget.build_parser(doc, original="the backdoored model (trained here when missing",
                                 ideal="the ideal model (--train_only ideal's output")
    g = parser.add_argument_group("backdoor (Unlearn-Sparse's trigger by default; --class_to_replace is the target "
                                  "class, --num_indexes_to_replace the number of poisoned samples)")
    g.add_argument("--trigger_size", type=int, default=4, help="side of the square patch in pixels (default 4)")
    g.add_argument("--trigger_margin", type=int, default=2, help="pixels between patch and corner (default 2)")
    g.add_argument("--trigger_corner", default="br", choices=sorted(CORNERS),
                   help="br (bottom-right, default), bl, tr or tl")
    g.add_argument("--trigger_pattern", default="black", choices=PATTERNS,
                   help="black: pixels set to 0 (Unlearn-Sparse, default); white: 255; checker: 255/0 alternating")
    g.add_argument("--train_only", default=None, choices=("backdoored", "ideal"),
                   help="train (or find) that model and stop, no unlearning: the base lines of a sweep. The "
                        "ideal model is retrained on the clean retain set (main_ideal.py for the poisoned set)")
    g = parser.add_argument_group("training of the backdoored and ideal models (main_baseline.py's recipe; "
                                  "--epochs is their epoch count)")
    utils.add_train_args(g, RECIPE_PREFIX, skip=("epochs",))  # --epochs: the unlearning parser's own
    return parser


def main(args: argparse.Namespace, store: str = "mlflow") -> dict | Path:
    """One backdoor run: train (or reuse) the backdoored model, unlearn the poisoned samples, log.
    With --train_only, train (or find) one model and return its path."""
    scenario = Backdoor(args)
    if args.train_only is None:
        return forget.main(args, scenario, store)
    utils.resolve_arch(args)
    if args.train_only == "backdoored":
        path, _ = scenario.original(args)
    else:
        _, split = scenario.data(args)
        path = checkpoint_path(args, len(split.forget), "ideal")
        scenario.train_missing(args, "ideal", path)
        scenario._same_poison(path, utils.load_checkpoint(path, dataset=args.dataset, arch=args.arch), split)
    print(f"{args.train_only} model: {path}")
    return path
