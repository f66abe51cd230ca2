"""Training from scratch, shared by main_baseline.py (on the whole training set: the
original model) and main_ideal.py (on the retain set only: the ideal model).

Training from scratch is FT from a random initialisation, so it runs through the
same engine loop as unlearning. The best epoch by validation accuracy is kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from pathlib import Path

import torch

import utils
from dataset import ForgetSplit, forget_split, load_data
from evaluation.accuracy import accuracies, accuracy, model_outputs
from models import create_model
from unlearn import train as training
from unlearn.impl import Recipe
from unlearn.methods.common import last_linear
from unlearn.train import selection_idx
from utils import UserError


def build_parser(doc: str) -> argparse.ArgumentParser:
    parser = utils.Parser(description=doc)
    utils.add_common_args(parser)
    g = parser.add_argument_group("training recipe (Unlearn-Sparse defaults)")
    utils.add_train_args(g)
    g.add_argument("--print_freq", type=int, default=50, help="kept for the papers' commands; unused")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from the state it saved after its last epoch "
                             "({checkpoint}.resume.pt), to the same weights bit for bit (on the CPU); a finished "
                             "checkpoint is never trained over (the sweep runner passes --resume)")
    parser.add_argument("--restart", action="store_true",
                        help="throw away the progress an interrupted run saved ({checkpoint}.resume.pt) and train "
                             "from scratch; without --resume or --restart, a run that finds such progress refuses "
                             "to start")
    return parser


def validate_recipe(recipe: dict, prefix: str = "") -> None:
    """Refuse a training recipe (utils.train_recipe's) that cannot train; flags named with `prefix`."""
    for name in ("epochs", "batch_size"):
        if recipe[name] < 1:
            raise UserError(f"--{utils.train_dest(name, prefix)} must be at least 1, got {recipe[name]}")
    if recipe["lr"] <= 0:
        raise UserError(f"--lr must be positive, got {recipe['lr']}")


def setup(args: argparse.Namespace):
    """Everything both scripts do before training: device, data, forget set, model."""
    utils.resolve_arch(args)
    validate_recipe(utils.train_recipe(args))
    device = utils.device_for(args)
    utils.set_seed(args.seed)
    data = load_data(args.dataset, args.data, args.seed, args.num_classes, args.no_aug, args.subsample)
    split = forget_split(data, args.seed, args.class_to_replace, args.num_indexes_to_replace)
    save_dir = utils.check_writable(args.save_dir)  # after the data: a missing data set creates no folder
    model = create_model(args.arch, data.num_classes, data.in_channels, args.imagenet_arch)
    return save_dir, device, data.to(device), split.to(device), model.to(device)


def train(args: argparse.Namespace, ideal: bool) -> Path:
    save_dir, device, data, split, model = setup(args)
    n = split.info["num_indexes_to_replace"]
    if ideal:
        path = utils.ideal_checkpoint_path(save_dir, args.seed, args.arch, args.epochs, args.class_to_replace, n)
        train_idx, kind = split.retain, "ideal"
    else:
        path = utils.original_checkpoint_path(save_dir, args.seed, args.arch, args.epochs)
        train_idx, kind = data.train_idx, "original"
    started = time.time()
    with utils.exclusive(path):  # of two runs training this model at once, the second reuses the first's
        if made_since(path, started, split):
            print(f"{kind} model: another run trained {path} while this one waited for it; reusing it")
            return path
        state = resume_path(path)
        if args.resume and args.restart:
            raise UserError("--resume and --restart: give one (--resume continues the saved progress, --restart "
                            "throws it away)")
        if state.is_file() and not (args.resume or args.restart):
            raise UserError(f"{state} holds the progress of an interrupted run of this model; continue it with "
                            f"--resume, or pass --restart to throw it away: {utils.rerun_command('--resume')}")
        if args.resume and path.is_file():
            check_finished(path, args, split, ideal)
            print(f"{kind} model: {path} is finished; --resume leaves it as it is")
            return path
        return _train(args, kind, path, data, split, model, train_idx, ideal)


def check_finished(path: Path, args: argparse.Namespace, split: ForgetSplit, ideal: bool) -> None:
    """Refuse to reuse a finished checkpoint (--resume) that this run would not have trained: another
    training recipe or seed, other data (data set, sizes, --subsample, --no_aug) or, for an ideal model,
    another forget set. The file name holds only the seed, architecture, epochs and C, N."""
    ckpt = utils.load_checkpoint(path, made_by="a run without --resume, after removing it")
    theirs, mine = ckpt.get("split", {}), split.info
    parts = ["dataset", "seed", "num_train", "num_val", "num_test"] + (["forget_sha1"] if ideal else [])
    differ = [p for p in parts if theirs.get(p) != mine[p]]
    made_with = ckpt.get("args") or {}
    differ += [f"--{flag}" for flag, default in (("no_aug", False), ("subsample", 1.0))
               if made_with.get(flag, default) != getattr(args, flag)]
    try:
        if recipe_of(ckpt["args"]) != recipe_of(args):
            differ.append("training recipe")
    except (KeyError, TypeError):
        differ.append("training recipe (not recorded)")
    if differ:
        raise UserError(f"{path} is finished but was made with another {', '.join(differ)} than this run's flags; "
                        "remove it to train it again, or pass the flags it was made with")


def made_since(path: Path, started: float, split: ForgetSplit) -> bool:
    """Whether `path` was written after `started` for this forget set (by a concurrent run)."""
    record = forget_record_path(path)
    if not (path.is_file() and record.is_file() and path.stat().st_mtime >= started):
        return False
    try:
        return json.loads(record.read_text()).get("forget_sha1") == split.info["forget_sha1"]
    except (OSError, ValueError):
        return False


def _train(args, kind: str, path: Path, data, split: ForgetSplit, model, train_idx, ideal: bool) -> Path:
    n = split.info["num_indexes_to_replace"]
    device = data.x_train.device
    forgotten = args.class_to_replace if split.is_class_forgetting else None
    val_idx = selection_idx(data, forgotten if ideal else None)
    print(f"{kind} model: {args.arch} on {args.dataset} ({len(train_idx)} training samples, "
          f"{len(data.val_idx)} validation, {len(data.y_test)} test), device {device}, "
          f"forget set: {split.info['mode']} C={args.class_to_replace} N={n}")
    state = resume_path(path)
    if args.restart:
        state.unlink(missing_ok=True)
    try:
        history, best_epoch, wall = fit(model, data, train_idx, val_idx, recipe_of(args), args.seed, args.quiet,
                                        kind, state=state, resume=args.resume)
    except KeyboardInterrupt as e:
        e.kept = (f"the progress after the last finished epoch is kept in {state}; continue with: "
                  f"{utils.rerun_command('--resume', drop=('--restart',))}" if state.is_file()
                  else "no epoch had finished, nothing is kept")
        raise

    # the original model is scored on every class, as it was selected; the ideal model of class
    # forgetting on the other classes (it never saw the forgotten one), as it was selected
    scored = forgotten if ideal else None
    acc = trained_accuracies(model, data, split, scored)
    save(path, model, args, kind, split, acc, best_epoch, history, wall)
    state.unlink(missing_ok=True)  # finished: nothing to resume
    print(f"done: {kind} model, best epoch {best_epoch}: {final_figures(acc, ideal, scored)}  wall time {wall:.1f}s "
          f"-> {path}")
    return path


def trained_accuracies(model, data, split: ForgetSplit, forgotten: int | None = None) -> dict[str, float]:
    """RA, FA, UA, TA, VA of a trained model, and `train`: its accuracy on the whole training set."""
    out = model_outputs(model, data, split.forget, split.retain, forgotten)
    acc = accuracies(out)  # D_F and D_R partition the training set: its accuracy needs no other pass
    acc["train"] = accuracy(torch.cat([out.forget, out.retain]), torch.cat([out.y_forget, out.y_retain]))
    return acc


def final_figures(acc: dict, ideal: bool, forgotten: int | None) -> str:
    """The accuracies of a trained model, each saying what it covers."""
    classes = "all classes" if forgotten is None else f"without class {forgotten}"
    if ideal:  # its training set is D_R; D_F it never saw
        trained = f"train acc {acc['RA']:.2f} (D_R, its training set)  forget acc {acc['FA']:.2f} (D_F, unseen)"
    else:
        trained = f"train acc {acc['train']:.2f} (D_F and D_R, its training set)"
    return f"{trained}  val acc {acc['VA']:.2f} ({classes})  test acc {acc['TA']:.2f} ({classes})"


def recipe_of(args) -> Recipe:
    """The training recipe of main_baseline.py / main_ideal.py (args: theirs, or a checkpoint's saved args)."""
    a = args if isinstance(args, dict) else vars(args)
    trained_with = {name: a[name] for name in utils.TRAIN_FLAGS}  # KeyError names a field an old file lacks
    return Recipe(**trained_with | {"decreasing_lr": list(trained_with["decreasing_lr"])},
                  **{k: bool(a.get(k)) for k in utils.SPEED_OPTIONS})


def resume_path(checkpoint: Path) -> Path:
    """Where a training run keeps its resumable state, beside the checkpoint it will write."""
    return checkpoint.with_name(checkpoint.name.removesuffix(".pth.tar") + ".resume.pt")


def fit(model, data, train_idx, val_idx, recipe: Recipe, seed: int, quiet: bool, kind: str,
        state: Path | None = None, resume: bool = False):
    """unlearn.train.fit, with the loop's state saved to the file `state` after every epoch and, with
    `resume`, continued from what is there; returns (history, best epoch, wall time in seconds)."""
    saved = None
    if resume and state is not None and state.is_file():
        saved = _load_state(state, recipe, seed, sets_record(data, train_idx, val_idx))
        print(f"{kind} model: resuming after epoch {saved['loop']['epoch']} of {recipe.epochs} from {state}")

    def save_state(loop_state: dict) -> None:
        utils.save_checkpoint({**loop_state, "recipe": dataclasses.asdict(recipe), "seed": seed,
                               "sets": sets_record(data, train_idx, val_idx)}, state)

    return training.fit(model, data, train_idx, val_idx, recipe, seed, progress=not quiet, kind=kind,
                     save_state=save_state if state is not None else None, saved=saved)


def sets_record(data, train_idx, val_idx) -> dict:
    """What a resumable state records of the data it trains on: the data set, its class count, and the
    sha1 of the training and the validation indices (the forget set, the seed's hold-out, --subsample)."""
    def sha1(idx) -> str:
        return hashlib.sha1(idx.cpu().numpy().astype("int64").tobytes()).hexdigest()

    return {"dataset": data.name, "num_classes": data.num_classes, "train_sha1": sha1(train_idx),
            "val_sha1": sha1(val_idx)}


def _load_state(path: Path, recipe: Recipe, seed: int, sets: dict | None = None) -> dict:
    """A resumable state, refused when damaged or made for another recipe, seed or training data."""
    try:
        saved = utils.read_torch_file(path)
        ok = isinstance(saved, dict) and {"loop", "best", "recipe", "seed", "wall"} <= set(saved)
    except Exception:  # truncated or foreign
        ok = False
    if not ok:
        raise UserError(f"{path} is not a resumable training state (truncated or foreign): remove it and run "
                        "again without --resume")
    if saved["recipe"] != dataclasses.asdict(recipe) or saved["seed"] != seed:
        raise UserError(f"{path} was saved by a run with another recipe or seed: remove it, or pass that run's "
                        "arguments")
    if sets is not None and saved.get("sets") != sets:
        raise UserError(f"{path} was saved by a run on other training data (data set, forget set, --subsample or "
                        "validation hold-out): remove it, or pass that run's arguments")
    return saved


def save(path: Path, model, args, kind: str, split: ForgetSplit, acc: dict, best_epoch: int,
         history: list, wall: float) -> None:
    state = {
        "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
        "kind": kind, "arch": args.arch, "dataset": args.dataset,
        "num_classes": model_num_classes(model), "imagenet_arch": args.imagenet_arch,
        "seed": args.seed, "epochs": args.epochs, "best_epoch": best_epoch,
        "args": vars(args), "split": split.info, "forget_idx": split.forget.cpu(),
        "accuracy": acc, "history": history, "train_time_s": wall, "provenance": utils.provenance(),
    }
    utils.save_checkpoint(state, path)
    utils.write_json({**split.info, "checkpoint": path.name, "command_hash": utils.own_command_hash(),
                      "forget_idx": split.forget.cpu().tolist()},
                     forget_record_path(path))


def forget_record_path(checkpoint: Path) -> Path:
    """The auditable record of the forget set, written beside each checkpoint."""
    return checkpoint.with_name(checkpoint.name.removesuffix(".pth.tar") + ".forget.json")


def model_num_classes(model) -> int:
    return last_linear(model)[2].out_features
