"""Every validated argument at its boundary: the last value accepted is accepted, and the first
value refused is refused with the error that names the argument. A check off by one (`<` for `<=`,
a bound left out) fails one of the two sides."""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch.nn as nn
from conftest import run_in_process

from dataset import UserError, forget_split, load_data
from experiments import trainer
from experiments.backdoor import Trigger
from experiments.forget import build_parser
from unlearn import make
from unlearn.methods.common import last_layers

TINY = 1e-12


@pytest.mark.parametrize("spec, name, accepted, refused", [
    # VarGrad (Unlearn-Sparse's `--beta`, `--quantile`; warm-up needs two batches for a variance)
    ("VarGrad", "beta", 0.0, 1.0),
    ("VarGrad", "beta", math.nextafter(1.0, 0.0), -TINY),
    ("VarGrad", "quantile", 1.0, 0.0),
    ("VarGrad", "quantile", TINY, 1.0 + 1e-9),
    ("VarGrad", "warmup_batches", 2, 1),
    ("GA+SalUn", "quantile", 0.0, 1.0),
    ("GA+SalUn", "quantile", math.nextafter(1.0, 0.0), -TINY),
    ("FF", "alpha", TINY, 0.0),
    ("BS", "epsilon", TINY, 0.0),
    ("IU", "alpha", TINY, 0.0),
    ("IU", "iu_samples", 2, 1),
    ("SSD", "alpha", TINY, 0.0),
    ("SSD", "dampening", TINY, 0.0),
    ("LFSSD", "dampening", TINY, 0.0),
])
def test_hyperparameter_boundaries(spec, name, accepted, refused):
    method, addon = make(spec, **{name: accepted})
    assert getattr(method, name, None) == accepted or getattr(addon, name, None) == accepted
    with pytest.raises(ValueError, match=f"--{name}"):
        make(spec, **{name: refused})


@pytest.mark.parametrize("spec", ["CF-k", "EU-k"])
def test_k_boundaries(spec):
    """--k counts weight layers from the top: 1 and all of them are accepted, 0 and one more refused."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 4), nn.Linear(4, 2))
    assert len(last_layers(model, 1, spec)) == 1  # the last linear layer
    assert len(last_layers(model, 3, spec)) == 4  # every layer, the batch norm with its convolution
    for k in (0, 4):
        with pytest.raises(ValueError, match=f"{spec}: --k must be between 1 and 3"):
            last_layers(model, k, spec)


@pytest.mark.parametrize("flag, accepted, refused", [
    ("--unlearn_epochs", "1", "0"),
    ("--batch_size", "1", "0"),
    ("--unlearn_lr", "1e-12", "0"),
    ("--unlearn_lr", "1e-12", "-1e-12"),
    ("--mia_svc_max", "10", "9"),
])
def test_unlearning_cli_boundaries(tmp_path, flag, accepted, refused):
    """mlflow_forget.py checks these before it looks for the original model: the accepted value
    gets as far as the missing checkpoint, the refused one stops at its own one-line error."""
    common = ["--dataset", "digits", "--data", str(tmp_path), "--save_dir", str(tmp_path / "out"),
              "--mask", str(tmp_path / "absent.pth.tar"), "--unlearn", "FT", "--quiet"]
    ok = run_in_process("mlflow_forget.py", *common, flag, accepted, check=False)
    assert ok.returncode == 2 and "absent.pth.tar not found" in ok.stderr, ok.stderr
    bad = run_in_process("mlflow_forget.py", *common, flag, refused, check=False)
    assert bad.returncode == 2 and flag in bad.stderr and "not found" not in bad.stderr, bad.stderr
    assert not (tmp_path / "out").exists()  # nothing written by a refused run


@pytest.mark.parametrize("name, accepted, refused", [
    ("epochs", 1, 0), ("batch_size", 1, 0), ("lr", TINY, 0.0), ("lr", TINY, -TINY)])
def test_training_recipe_boundaries(name, accepted, refused):
    recipe = {"epochs": 1, "batch_size": 1, "lr": 0.1}
    trainer.validate_recipe(recipe | {name: accepted})
    with pytest.raises(UserError, match=f"--{name} must be"):
        trainer.validate_recipe(recipe | {name: refused})
    prefixed = {"batch_size": "train_batch_size"}.get(name, name)  # --epochs and --lr keep their names
    with pytest.raises(UserError, match=f"--{prefixed} must be"):  # main_backdoor.py's flag names
        trainer.validate_recipe(recipe | {name: refused}, "train_")


def test_subsample_boundaries(tmp_path):
    whole = len(load_data("digits", tmp_path, seed=0).y_train)
    assert len(load_data("digits", tmp_path, seed=0, subsample=1.0).y_train) == whole
    assert len(load_data("digits", tmp_path, seed=0, subsample=0.05).y_train) == pytest.approx(0.05 * whole, abs=10)
    for share in (0.0, -0.5, 1.0 + 1e-9):
        with pytest.raises(UserError, match=r"--subsample .*: give a share in \(0, 1\]"):
            load_data("digits", tmp_path, seed=0, subsample=share)


@pytest.mark.parametrize("size, margin, side, ok", [
    (1, 0, 8, True),      # the smallest trigger, in the corner
    (0, 0, 8, False),     # no trigger
    (1, -1, 8, False),    # outside the image
    (6, 2, 8, True),      # size + margin == side: the trigger ends at the opposite edge
    (7, 2, 8, False),     # one pixel too many
])
def test_trigger_boundaries(size, margin, side, ok):
    trigger = Trigger(size=size, margin=margin)
    if ok:
        trigger.check(side, side)
    else:
        with pytest.raises(UserError, match="--trigger_size|does not fit"):
            trigger.check(side, side)


def test_class_and_size_boundaries_name_the_flag():
    """--class_to_replace in [-1, num_classes), N in [1, pool] (random forgetting: pool - 1);
    the sizes at the pool's edge are in test_data.test_forget_set_size_boundaries."""
    from dataset import forget_indices

    y = np.repeat(np.arange(10), 20)
    train = np.arange(len(y))
    for c in (-1, 9):
        assert len(forget_indices(y, train, 0, c, 1, 10)[0]) == 1
    for c in (-2, 10):
        with pytest.raises(UserError, match=f"--class_to_replace {c} is outside"):
            forget_indices(y, train, 0, c, 1, 10)
    with pytest.raises(UserError, match="--num_indexes_to_replace 0: the forget set needs at least 1"):
        forget_indices(y, train, 0, -1, 0, 10)


def test_num_classes_boundary(tmp_path):
    """digits' labels run to 9: --num_classes 10 is accepted, 9 refused with its own message."""
    assert load_data("digits", tmp_path, seed=0, num_classes=10).num_classes == 10
    with pytest.raises(UserError, match="--num_classes 9 is too small: digits has labels up to 9"):
        load_data("digits", tmp_path, seed=0, num_classes=9)


def test_the_forget_set_record_says_how_the_set_was_drawn(tmp_path):
    data = load_data("digits", tmp_path, seed=2)
    split = forget_split(data, 2, 5, 30)
    forget = split.forget.numpy()
    assert split.info == {
        "dataset": "digits", "seed": 2, "class_to_replace": 5, "num_indexes_to_replace": 30, "mode": "subset",
        "num_train": len(data.train_idx), "num_val": len(data.val_idx), "num_test": len(data.y_test),
        "num_forget": 30, "num_retain": len(data.train_idx) - 30,
        "forget_sha1": hashlib.sha1(forget.astype(np.int64).tobytes()).hexdigest()}
    assert (data.y_train[split.forget] == 5).all()
    assert forget_split(data, 2, -1, 30).info["mode"] == "random"


def test_unlearning_parser_types_and_choices(capsys):
    """The papers' flags parse to typed values; an optimizer outside the choices is refused by the parser."""
    parser = build_parser("doc")
    args = parser.parse_args(["--warmup", "2", "--optimizer", "adam", "--unlearn_lr", "0.01", "--unlearn_epochs", "3",
                              "--beta", "0.9", "--quantile", "0.55", "--class_to_replace", "-1"])
    assert (args.warmup, args.optimizer, args.unlearn_lr, args.unlearn_epochs) == (2, "adam", 0.01, 3)
    assert (args.beta, args.quantile, args.class_to_replace) == (0.9, 0.55, -1)
    with pytest.raises(SystemExit):
        parser.parse_args(["--optimizer", "rmsprop"])
    assert "invalid choice: 'rmsprop'" in capsys.readouterr().err
