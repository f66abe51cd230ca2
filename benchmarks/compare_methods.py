"""FA, RA, TA (and UA, RTE) of several --unlearn specs from one original checkpoint, with the
same seed for all, each method run by the library's one call (`unlearn.unlearn`: its published
recipe, overridden by --unlearn_lr, --unlearn_epochs and --batch_size when given), printed as a
Markdown table (no MLflow).

    python benchmarks/compare_methods.py --mask results/digits/2smallcnn_ep30model_SA_best.pth.tar \
        --class_to_replace -1 --num_indexes_to_replace 100 --unlearn_lr 0.01 --unlearn_epochs 5 \
        --unlearn GA GA+Mask GA+VarGrad FT RL NegGrad+ SCRUB SalUn
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from dataset import forget_split, load_data  # noqa: E402
from evaluation.accuracy import split_accuracies  # noqa: E402
from experiments import trainer  # noqa: E402
from models import from_checkpoint  # noqa: E402
from unlearn import unlearn  # noqa: E402
from unlearn.api import initial_model  # noqa: E402
from unlearn.impl import Diverged  # noqa: E402
from utils import load_checkpoint, pick_device, set_seed  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mask", required=True, help="original checkpoint")
    p.add_argument("--data", default="./data")
    p.add_argument("--class_to_replace", type=int, default=-1)
    p.add_argument("--num_indexes_to_replace", type=int, default=100)
    p.add_argument("--unlearn_lr", type=float, default=None, help="default: each method's published lr")
    p.add_argument("--unlearn_epochs", type=int, default=None, help="default: each method's published epochs")
    p.add_argument("--batch_size", type=int, default=None, help="default: each method's published batch size")
    p.add_argument("--unlearn", nargs="+", default=["GA", "GA+Mask", "GA+VarGrad", "FT", "RL", "NegGrad+",
                                                    "SCRUB", "SalUn"])
    args = p.parse_args()
    ckpt = load_checkpoint(args.mask)
    device = pick_device(None)
    seed = ckpt["seed"]
    data = load_data(ckpt["dataset"], args.data, seed, ckpt["num_classes"]).to(device)
    split = forget_split(data, seed, args.class_to_replace, args.num_indexes_to_replace).to(device)
    original = from_checkpoint(ckpt, data.in_channels).to(device)
    forgotten = args.class_to_replace if split.is_class_forgetting else None
    print(f"{ckpt['dataset']}/{ckpt['arch']} seed {seed}, forget {split.info['mode']} N={len(split.forget)}, "
          f"lr {args.unlearn_lr or 'of each method'}, {args.unlearn_epochs or 'of each method'} epochs, "
          f"device {device}\n")
    print("| run | UA | FA | RA | TA | kept share (last epoch) | RTE (s) |\n|---|---|---|---|---|---|---|")
    acc = split_accuracies(original, data, split.forget, split.retain, forgotten)
    print(f"| original | {acc['UA']:.2f} | {acc['FA']:.2f} | {acc['RA']:.2f} | {acc['TA']:.2f} | | |")
    for spec in args.unlearn:
        set_seed(seed)
        model = copy.deepcopy(original)  # the same seed: every spec sees the same batch stream
        t0 = time.perf_counter()
        try:
            # the library's one call: each method's published recipe, the flags given overriding it
            result = unlearn(model, data, split, spec, seed=seed, original_epochs=ckpt["epochs"],
                             initial_model=initial_model(ckpt, data.in_channels, device),
                             train_recipe=trainer.recipe_of(ckpt["args"]), lr=args.unlearn_lr,
                             epochs=args.unlearn_epochs, batch_size=args.batch_size)
            model, hist = result.model, result.history  # retrain returns a new model
        except Diverged as e:
            print(f"| {spec} | diverged: {e} | | | | | |")
            continue
        rte = time.perf_counter() - t0
        acc = split_accuracies(model, data, split.forget, split.retain, forgotten)
        kept = f"{hist[-1]['kept_share']:.3f}" if "kept_share" in hist[-1] else ""
        print(f"| {spec} | {acc['UA']:.2f} | {acc['FA']:.2f} | {acc['RA']:.2f} | {acc['TA']:.2f} | {kept} | "
              f"{rte:.2f} |")


if __name__ == "__main__":
    main()
