"""Per-model training throughput of the shadow ensembles (audits/ensemble.py), side by side on this
machine: K models trained "stacked" (one vmapped step for all) against "sequential" (one after
another in this process), for each K, and one process per model (a fresh interpreter trains one
model: the sequential time plus its start-up, measured once).

    python -m benchmarks.ensemble_speed                    # digits, smallcnn, K = 1, 8, 32, 64, 1 epoch
    python -m benchmarks.ensemble_speed --ks 1 8 --epochs 2

Each model trains on a seeded half of the digits training set (608 samples) with main_baseline.py's
recipe (SGD, lr 0.1, batch 256). Prints models per minute and the ratios; --json writes them.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import utils  # noqa: E402
from audits.ensemble import fit_many  # noqa: E402
from dataset import load_data  # noqa: E402
from models import create_model  # noqa: E402
from unlearn.impl import Recipe, speed_defaults  # noqa: E402

ONE_MODEL = """
import sys, time, torch
sys.path.insert(0, {repo!r})
from audits.ensemble import fit_many
from dataset import load_data
from models import create_model
from unlearn.impl import Recipe, speed_defaults
data = load_data("digits", "./data", 1)
idx = data.train_idx[torch.randperm(len(data.train_idx), generator=torch.Generator().manual_seed(0))[:608]]
fit_many(lambda: create_model("smallcnn", 10, 1), data, [idx], data.val_idx,
         Recipe(lr=0.1, epochs={epochs}, batch_size=256, **speed_defaults("cpu")), [0])
"""


def halves(data, k: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = len(data.train_idx) // 2
    return [data.train_idx[torch.randperm(len(data.train_idx), generator=g)[:n]].sort().values for _ in range(k)]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    data = load_data("digits", "./data", 1)
    build = lambda: create_model("smallcnn", 10, 1)  # noqa: E731
    rows = []
    for k in a.ks:
        sets = halves(data, k)
        row = {"K": k}
        for mode in ("sequential", "stacked"):
            recipe = Recipe(lr=0.1, epochs=a.epochs, batch_size=256,
                            **(speed_defaults("cpu") if mode == "sequential" else {}))
            t0 = time.perf_counter()
            fit_many(build, data, sets, data.val_idx, recipe, list(range(k)), mode)
            row[mode] = k / (time.perf_counter() - t0) * 60  # models per minute
        rows.append(row)
        print(f"K={k:3d}  sequential {row['sequential']:7.1f}  stacked {row['stacked']:7.1f} models/min  "
              f"stacked/sequential {row['stacked'] / row['sequential']:.2f}x", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", ONE_MODEL.format(repo=str(REPO), epochs=a.epochs)], check=True, cwd=REPO)
    per_process = 60 / (time.perf_counter() - t0)
    best_seq = max(r["sequential"] for r in rows)
    print(f"one process per model: {per_process:.1f} models/min; sequential in-process is "
          f"{best_seq / per_process:.1f}x that")
    out = {"rows": rows, "one_process_per_model": per_process, "epochs": a.epochs,
           "machine": {"processor": utils.provenance().get("cpu", platform.processor() or platform.machine()),
                       "threads": torch.get_num_threads(), "torch": torch.__version__}}
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
