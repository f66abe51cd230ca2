r"""Write the params files of a sweep: `base_params.txt` (one main_baseline.py line per
data set, architecture and seed; one main_ideal.py line per seed and forget scenario)
and `params.txt` (one mlflow_forget.py line per configuration). Run them with
run_params.py (locally or on Slurm), then `python mlruns_parser.py`.

The grid is the plain Python below; flags override any axis for one call:

    python array_param_file.py
    python array_param_file.py --datasets cifar10 --archs resnet18 --epochs 100 --seeds 1 2 3 \
        --forget -1:450 0 --unlearn GA GA+VarGrad NegGrad+VarGrad --unlearn_lr 0.0001 \
        --hp quantile=0.5,0.55 --hp beta=0.9
"""

from __future__ import annotations

import argparse
from pathlib import Path

import utils
from experiments.sweep import Grid, generate
from utils import UserError, run_main

# ----------------------------------------------------------------------- the grid
DATASETS = ["digits"]
ARCHS = ["smallcnn"]
SEEDS = [1, 2, 3]
EPOCHS = {"digits": 30, "mnist": 30, "fashionmnist": 30, "svhn": 100, "cifar10": 182, "cifar100": 182,
          "tinyimagenet": 100}  # training epochs of the original and ideal models
FORGET = [(-1, 100), (3, None)]  # (class_to_replace, num_indexes_to_replace); None = the whole class
UNLEARN = ["GA", "GA+Mask", "GA+VarGrad", "NegGrad+", "NegGrad+VarGrad", "FT", "RL", "SalUn", "SCRUB"]
UNLEARN_LR = [None]  # None: each method's published default
UNLEARN_EPOCHS = [None]
METHOD_PARAMS: dict[str, list] = {}  # e.g. {"alpha": [0.9, 0.99]}
ADDON_PARAMS: dict[str, list] = {"beta": [0.9], "quantile": [None]}  # None: each add-on's default
DATA = "./data"
SAVE_ROOT = "./results"  # checkpoints go to {SAVE_ROOT}/{dataset}
# ---------------------------------------------------------------------------------


def forget_pair(text: str) -> tuple[int, int | None]:
    """`-1:450` -> (-1, 450); `3` -> (3, None), the whole class."""
    c, _, n = text.partition(":")
    try:
        return int(c), (int(n) if n else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C or C:N, got {text!r}") from None


def number(text: str):
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        return float(text)


def default_grid() -> Grid:
    return Grid(datasets=DATASETS, archs=ARCHS, seeds=SEEDS, epochs=EPOCHS, forget=FORGET, unlearn=UNLEARN,
                unlearn_lr=UNLEARN_LR, unlearn_epochs=UNLEARN_EPOCHS, method_params=dict(METHOD_PARAMS),
                addon_params=dict(ADDON_PARAMS), data=DATA, save_root=SAVE_ROOT)


def apply_overrides(grid: Grid, a: argparse.Namespace) -> Grid:
    from unlearn import ADDONS, hyperparameters

    for name in ("datasets", "archs", "seeds", "forget", "unlearn", "unlearn_lr", "unlearn_epochs"):
        if getattr(a, name) is not None:
            setattr(grid, name, getattr(a, name))
    if a.epochs is not None:
        grid.epochs = {d: a.epochs for d in grid.datasets}
    addon_fields = {f for c in ADDONS.values() for f in hyperparameters(c)}
    for item in a.hp:
        name, eq, values = item.partition("=")
        if not eq or not values:
            raise UserError(f"--hp {item!r}: expected NAME=V1,V2")
        target = grid.addon_params if name in addon_fields else grid.method_params
        target[name] = [number(v) for v in values.split(",")]
    grid.data, grid.save_root = a.data or grid.data, a.save_root or grid.save_root
    grid.extra, grid.extra_base = a.extra.split(), a.extra_base.split()
    return grid


def main() -> None:
    p = utils.Parser(description=__doc__)
    p.add_argument("--datasets", nargs="+")
    p.add_argument("--archs", nargs="+")
    p.add_argument("--seeds", nargs="+", type=int)
    p.add_argument("--epochs", type=int, help="training epochs of the original/ideal models, every data set")
    p.add_argument("--forget", nargs="+", type=forget_pair, metavar="C[:N]", help="forget scenarios")
    p.add_argument("--unlearn", nargs="+", metavar="METHOD[+ADDON]")
    p.add_argument("--unlearn_lr", nargs="+", type=number)
    p.add_argument("--unlearn_epochs", nargs="+", type=number)
    p.add_argument("--hp", action="append", default=[], metavar="NAME=V1,V2",
                   help="a method or add-on hyper-parameter axis (repeatable)")
    p.add_argument("--data", default=None, help=f"data folder in the lines (default {DATA})")
    p.add_argument("--save_root", default=None, help=f"checkpoint root in the lines (default {SAVE_ROOT})")
    p.add_argument("--extra", default="", help="more mlflow_forget.py arguments for every line")
    p.add_argument("--extra_base", default="", help="more main_baseline/main_ideal arguments for every line")
    p.add_argument("--out_dir", default=".", help="where base_params.txt and params.txt go (default .)")
    a = p.parse_args()
    base, params = generate(apply_overrides(default_grid(), a))
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "base_params.txt").write_text("\n".join(base) + "\n")
    (out / "params.txt").write_text("\n".join(params) + "\n")
    print(f"{out / 'base_params.txt'}: {len(base)} lines\n{out / 'params.txt'}: {len(params)} lines")


if __name__ == "__main__":
    run_main(main)
