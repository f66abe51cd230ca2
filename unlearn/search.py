"""Search spaces for tuning (tune.py): what each method and add-on may be tuned over.

Every loop method is searched over the same shape of space: its learning rate on a log scale from
1/100 to 100 times its published lr (four decades: GA's published 1e-4, set on CIFAR-10, needs
1e-3 to 1e-2 on the small data sets), and its epochs from 1 to twice its published
count. A method or add-on adds its own hyper-parameters by declaring `search` next to its fields:

    alpha: float = 0.9999
    search = {"alpha": Range(0.99, 0.99999)}

One-shot methods have no lr or epochs: only their own ranges. `retrain` is the reference, not searched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LR_BELOW, LR_ABOVE = 100.0, 100.0  # the lr range: published / LR_BELOW to published * LR_ABOVE
EPOCHS_TIMES = 2  # the epochs range: 1 to EPOCHS_TIMES * published


@dataclass(frozen=True)
class Range:
    """A closed interval to sample from: log scale with `log`, whole numbers with `integer`."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def check(self, name: str) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"search range of {name}: bounds must be finite, got {self.low}..{self.high}")
        if self.low >= self.high:
            raise ValueError(f"search range of {name} is empty or inverted: {self.low}..{self.high} "
                             f"(give LOW:HIGH with LOW < HIGH)")
        if self.log and self.low <= 0:
            raise ValueError(f"search range of {name} is on a log scale and needs LOW > 0, got {self.low}")

    def text(self) -> str:
        return f"{self.low:g}..{self.high:g}" + (" log" if self.log else "") + (" int" if self.integer else "")


def recipe_space(method_cls: type) -> dict[str, Range]:
    """The lr and epochs ranges of a loop method (none for one-shot methods and retrain)."""
    if method_cls.kind != "loop":
        return {}
    lr, epochs = method_cls.unlearn_lr, method_cls.unlearn_epochs
    return {"lr": Range(lr / LR_BELOW, lr * LR_ABOVE, log=True),
            "epochs": Range(1, max(2, EPOCHS_TIMES * epochs), integer=True)}


def space_of(spec: str, overrides: dict[str, Range] | None = None) -> dict[str, Range]:
    """The search space of `METHOD[+ADDON]`: the recipe's ranges, then the method's and the add-on's
    own (`search`); `overrides` replace ranges by name and may only name what the space has."""
    from unlearn import ADDONS, METHODS, hyperparameters, parse_unlearn

    m, a = parse_unlearn(spec)
    mcls, acls = METHODS[m], ADDONS[a]
    if mcls.kind == "retrain":
        raise ValueError("retrain is the reference the search aims at; it has nothing to tune")
    space = {**recipe_space(mcls), **getattr(mcls, "search", {}), **getattr(acls, "search", {})}
    for cls in (mcls, acls):  # a declared range must name a field
        stray = set(getattr(cls, "search", {})) - set(hyperparameters(cls))
        if stray:
            raise ValueError(f"{cls.name} declares search ranges for {', '.join(sorted(stray))}, which are not "
                             f"its hyper-parameters")
    for name, r in (overrides or {}).items():
        if name not in space:
            raise ValueError(f"{spec} has no hyper-parameter {name!r} to search; its space: {', '.join(space)}")
        space[name] = r
    for name, r in space.items():
        r.check(name)
    return space


def parse_range(text: str) -> tuple[str, Range]:
    """`NAME=LOW:HIGH[:log]` (the --range flag) -> (name, Range); whole numbers stay whole."""
    name, eq, rest = text.partition("=")
    parts = rest.split(":")
    if not eq or not name or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise ValueError(f"--range {text!r}: write NAME=LOW:HIGH or NAME=LOW:HIGH:log")
    try:
        low, high = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"--range {text!r}: LOW and HIGH must be numbers") from None
    integer = all(p.strip().lstrip("-").isdigit() for p in parts[:2])
    r = Range(low, high, log=len(parts) == 3, integer=integer)
    r.check(name)
    return name, r


def suggest(trial, space: dict[str, Range]) -> dict:
    """One point of `space` from an Optuna trial."""
    out = {}
    for name, r in space.items():
        if r.integer:
            out[name] = trial.suggest_int(name, int(r.low), int(r.high), log=r.log)
        else:
            out[name] = trial.suggest_float(name, r.low, r.high, log=r.log)
    return out
