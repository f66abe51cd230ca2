"""Images per second of engine steps (forward, the gradients the add-on needs, masked SGD).

Prints one line per --unlearn spec; the time of a step includes everything the
engine does for it. Synthetic 32x32 inputs unless --size says otherwise.

    python benchmarks/step_throughput.py --arch resnet18 --unlearn FT --batch_size 256
    python benchmarks/step_throughput.py --arch resnet18 --unlearn NegGrad+ NegGrad+VarGrad
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset import TensorData  # noqa: E402
from models import create_model  # noqa: E402
from unlearn import make  # noqa: E402
from unlearn.impl import Recipe, run  # noqa: E402
from utils import pick_device  # noqa: E402


def synthetic(n: int, size: int, channels: int, classes: int, device) -> TensorData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return TensorData("synthetic", x, y, x[:0], y[:0], torch.arange(n), torch.arange(0), classes,
                      torch.full((channels,), 0.5), torch.full((channels,), 0.25), "crop_flip").to(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--unlearn", nargs="+", default=["FT"])
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--gpu", type=int, default=None)
    args = p.parse_args()
    device = pick_device(args.gpu)
    torch.manual_seed(0)
    n = args.batch_size * args.steps
    data = synthetic(2 * n, args.size, 3, 10, device)
    forget, retain = torch.arange(n, device=device), torch.arange(n, 2 * n, device=device)
    print(f"device {device}, {torch.get_num_threads()} CPU threads, {args.arch}, batch {args.batch_size}, "
          f"{args.size}x{args.size}")
    for spec in args.unlearn:
        model = create_model(args.arch, 10, 3).to(device)
        method, addon = make(spec)
        bs = args.batch_size
        # Two warm-up steps, then one epoch over `steps` batches of the method's epoch set.
        run(model, data, forget[: 2 * bs], retain[: 2 * bs], method, addon, Recipe(epochs=1, batch_size=bs),
            progress=False)
        method, addon = make(spec)
        model.train()
        t0 = time.perf_counter()
        _, hist = run(model, data, forget, retain, method, addon, Recipe(epochs=1, batch_size=bs), progress=False)
        wall = hist[0]["time_s"]
        total = time.perf_counter() - t0
        steps = hist[0]["steps"]
        print(f"{spec:24s} {steps * bs / wall:9.1f} img/s   {1000 * wall / steps:8.1f} ms/step   "
              f"(setup incl.: {total:.2f}s)")


if __name__ == "__main__":
    main()
