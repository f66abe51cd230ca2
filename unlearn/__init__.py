"""Unlearning methods and gradient add-ons, registered by name.

`--unlearn` takes `METHOD` or `METHOD+ADDON`. A bare add-on name means gradient
ascent with that add-on (`VarGrad` is `GA+VarGrad`), as in the papers' code;
`ALIASES` holds the other names the seeds' sweeps use.

A new method is one file in `unlearn/methods/` with `@register_method`; a new
add-on is one file in `unlearn/addons/` with `@register_addon`. Both are then
reachable from the command line, get their hyper-parameters as flags, and are
exercised by the registry tests, with no other change.
"""

from __future__ import annotations

import dataclasses
from typing import Any

METHODS: dict[str, type] = {}
ADDONS: dict[str, type] = {}
ALIASES = {"SalUn": "RL+SalUn", "NGPlus": "NegGrad+", "l1-sparse": "FT_l1", "NG": "GA"}


def _registrar(table: dict[str, type], kind: str):
    def register(name: str):
        def wrap(cls):
            if name in table:
                raise ValueError(f"{kind} {name!r} registered twice")
            cls.name = name
            table[name] = cls
            return cls
        return wrap
    return register


register_method = _registrar(METHODS, "method")
register_addon = _registrar(ADDONS, "add-on")


def choices_text() -> str:
    return (f"methods: {', '.join(METHODS)}; add-ons: {', '.join(ADDONS)}; "
            f"aliases: {', '.join(f'{k}={v}' for k, v in ALIASES.items())}")


def parse_unlearn(spec: str) -> tuple[str, str]:
    """`RL+Mask` -> ("RL", "Mask"); `VarGrad` -> ("GA", "VarGrad"); `FT` -> ("FT", "none").

    `NegGrad+VarGrad` and `NegGrad++VarGrad` both mean the NegGrad+ method with VarGrad.
    """
    spec = ALIASES.get(spec, spec)
    if spec in METHODS:
        return spec, "none"
    if spec in ADDONS:
        return "GA", spec
    method, plus, addon = spec.rpartition("+")
    if not plus:
        raise ValueError(f"unknown method {spec!r}; {choices_text()}")
    if method not in METHODS and f"{method}+" in METHODS:
        method = f"{method}+"
    if method in ALIASES:
        raise ValueError(f"{method!r} already names {ALIASES[method]!r}; write the add-on you want "
                         f"in its place; {choices_text()}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} in --unlearn {spec!r}; {choices_text()}")
    if addon not in ADDONS:
        raise ValueError(f"unknown add-on {addon!r} in --unlearn {spec!r}; {choices_text()}")
    return method, addon


def spec_name(method: str, addon: str) -> str:
    """The display name of a pair: `GA+VarGrad`, `NegGrad+VarGrad`, `FT` (no add-on)."""
    if addon == "none":
        return method
    return f"{method}{'' if method.endswith('+') else '+'}{addon}"


def hyperparameters(cls: type) -> dict[str, dataclasses.Field]:
    """The constructor fields of a method or add-on (state fields have init=False)."""
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def build(cls: type, **kw: Any):
    """Instantiate a method or add-on; keys it does not have fail loudly, None means its default."""
    fields = hyperparameters(cls)
    unknown = set(kw) - set(fields)
    if unknown:
        raise TypeError(f"{cls.name} has no hyper-parameter {', '.join(sorted(unknown))}; "
                        f"it takes {', '.join(fields) or 'none'}")
    return cls(**{k: v for k, v in kw.items() if v is not None})


def make(spec: str, **hparams: Any):
    """Build (method, add-on) from `--unlearn`-style text; each takes the hyper-parameters it declares."""
    m, a = parse_unlearn(spec)
    mcls, acls = METHODS[m], ADDONS[a]
    mine = lambda cls: {k: v for k, v in hparams.items() if k in hyperparameters(cls)}  # noqa: E731
    stray = set(hparams) - set(hyperparameters(mcls)) - set(hyperparameters(acls))
    if stray:
        raise TypeError(f"{spec}: no hyper-parameter {', '.join(sorted(stray))}")
    return build(mcls, **mine(mcls)), build(acls, **mine(acls))


from unlearn import addons, methods  # noqa: E402,F401  (registers everything)
from unlearn.api import unlearn  # noqa: E402,F401  (the library entry point)
