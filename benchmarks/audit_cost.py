"""What each audit (audits/) costs per run: the wall time of each, asked of the original and of the
ideal model of one forget set, on this machine. Trains nothing: it reads the checkpoints of
main_baseline.py and main_ideal.py (or a benchmark's checkpoints folder).

    python -m benchmarks.audit_cost --dataset digits --save_dir results/digits --epochs 30 --class_to_replace 3
    python -m benchmarks.audit_cost --dataset fashionmnist --epochs 8 --class_to_replace 0 \\
        --save_dir benchmark_results/fashionmnist/checkpoints/fashionmnist

A run with --audits pays its own audits every time and the original's and ideal's once per forget set
(they are cached beside the checkpoints).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import utils  # noqa: E402
from audits import AUDITS, AuditBudget, run_audits  # noqa: E402
from dataset import forget_split, load_data  # noqa: E402
from models import from_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data", default="./data")
    p.add_argument("--save_dir", required=True, help="where main_baseline.py and main_ideal.py wrote")
    p.add_argument("--arch", default=None)
    p.add_argument("--epochs", type=int, required=True, help="the original's training epochs (names its file)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--class_to_replace", type=int, default=-1)
    p.add_argument("--num_indexes_to_replace", type=int, default=None)
    a = p.parse_args(argv)
    arch = a.arch or utils.default_arch(a.dataset)
    original_path = utils.original_checkpoint_path(a.save_dir, a.seed, arch, a.epochs)
    ckpt = utils.load_checkpoint(original_path, dataset=a.dataset, arch=arch)
    data = load_data(a.dataset, a.data, a.seed, ckpt["num_classes"], subsample=(ckpt.get("args") or {})
                     .get("subsample", 1.0))
    split = forget_split(data, a.seed, a.class_to_replace, a.num_indexes_to_replace)
    ideal_path = utils.ideal_checkpoint_path(a.save_dir, a.seed, arch, a.epochs, a.class_to_replace,
                                             split.info["num_indexes_to_replace"])

    def build(path):
        return from_checkpoint(utils.load_checkpoint(path, dataset=a.dataset, arch=arch), data.in_channels, arch)

    original, ideal = build(original_path), build(ideal_path)
    print(f"audit cost on {utils.cpu_info()[0]} ({torch.get_num_threads()} threads), {a.dataset}/{arch}, forget "
          f"{len(split.forget)} ({split.info['mode']}), retain {len(split.retain)}; budget {AuditBudget()}")
    times: dict = {}
    for name in AUDITS:
        for who, model in (("original", original), ("ideal", ideal)):
            t0 = time.perf_counter()
            found = run_audits([name], model, data, split, a.seed, original=original, ideal=ideal)
            times[(name, who)] = time.perf_counter() - t0
            shown = "  ".join(f"{k} {v:.2f}" for k, v in found.items())
            print(f"{name:13s} {who:9s} {times[(name, who)]:7.1f} s   {shown}", flush=True)
    return times


if __name__ == "__main__":
    main()
