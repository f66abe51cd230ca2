"""Wall time of the membership-inference attacks on CIFAR-10-sized splits, from logits
(the model outputs are computed once per model and are not part of this cost).

    python benchmarks/mia_cost.py                      # 5,000 members, 10,000 test, 4,500 forget
    python benchmarks/mia_cost.py --classes 100        # CIFAR-100-sized probability vectors
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.mia import loss_attack, per_sample_loss, svc_mia  # noqa: E402


def logits(n: int, classes: int, margin: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, classes, generator=g)
    x[torch.arange(n), y] += margin + torch.randn(n, generator=g)
    return x, y


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=5000)
    p.add_argument("--test", type=int, default=10000)
    p.add_argument("--forget", type=int, default=4500)
    p.add_argument("--classes", type=int, default=10)
    a = p.parse_args()
    g = torch.Generator().manual_seed(0)
    mem, test, forget = (logits(a.members, a.classes, 6, g), logits(a.test, a.classes, 3, g),
                         logits(a.forget, a.classes, 5, g))
    t0 = time.perf_counter()
    res = svc_mia(*mem, *test, *forget)
    t1 = time.perf_counter()
    loss = loss_attack(per_sample_loss(*forget), per_sample_loss(*test))
    t2 = time.perf_counter()
    print(f"{torch.get_num_threads()} threads; members {a.members}, test {a.test}, forget {a.forget}, "
          f"{a.classes} classes")
    print(f"SVC attack, 5 features: {t1 - t0:.1f} s   (MIA {res['MIA']:.1f}, MIA_prob {res['MIA_prob']:.1f})")
    print(f"loss attack, 10-fold:   {t2 - t1:.1f} s   (AUC {loss['loss_MIA_auc']:.3f})")


if __name__ == "__main__":
    main()
