"""The original and ideal models' figures, computed once per checkpoint and forget set and cached
beside the checkpoint, so that a sweep of many runs evaluates each reference model once. File I/O
and locks: the application layer's side of evaluation/report.py.

    ref_o, _ = reference(original_path, build_original, data, split, forgotten, seed)  # cached
    ref_i, ideal_out = reference(ideal_path, build_ideal, data, split, forgotten, seed)  # with logits
    audits_i = audited(ideal_path, ideal, data, split, ["probe"], seed, budget, context)   # cached
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch

import utils
from audits import AuditBudget, run_audits
from evaluation.accuracy import Outputs, model_outputs
from evaluation.report import model_metrics

EVAL_VERSION = 2  # bump when a metric's definition changes: cached figures are then recomputed
AUDIT_VERSION = 1  # the same, for the audits (audits/)


# What a cached figure depends on, each part tested alone (tests/test_caches.py): change one and the
# next run recomputes. The data are named by the split's record (`split.info`: the data set, the seed
# of the validation hold-out and of the forget draw, the forget set's sha1, the sizes, which reflect
# --subsample); their pixels are taken to be what that data set's files hold. The device and the
# library versions are not part of a key.
def reference_key(path: Path, split_info: dict, forgotten: int | None, seed: int, svc_max: int | None) -> dict:
    """What a reference model's metrics depend on: the checkpoint's bytes, the whole forget-set record,
    the forgotten class (the utility view leaves it out), the seed of the attacks' subsamples and folds,
    the SVC's cap and the metrics' version."""
    return {"eval_version": EVAL_VERSION, "checkpoint": utils.file_sha1(path), "split": dict(split_info),
            "forgotten": forgotten, "seed": seed, "svc_max": svc_max}


def audit_key(path: Path, split_info: dict, names: list[str], seed: int, budget: AuditBudget,
              context: dict[str, tuple[Path, object]]) -> dict:
    """What a reference model's audits depend on: its checkpoint's bytes, the forget-set record, the
    audits asked for (in any order), every field of their budget, the seed, the bytes of each other
    checkpoint they read (`context`: name -> (path, model)) and the audits' version."""
    return {"audit_version": AUDIT_VERSION, "checkpoint": utils.file_sha1(path), "split": dict(split_info),
            "audits": sorted(names), "budget": dataclasses.asdict(budget), "seed": seed,
            "context": {k: utils.file_sha1(p) for k, (p, _) in sorted(context.items())}}


def digest(key: dict) -> str:
    """A cache file's name part: 16 hex digits of the key's sha1 (the key itself is stored inside)."""
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def reference(path: Path, build_model, data, split, forgotten: int | None, seed: int = 0,
              svc_max: int | None = None) -> tuple[dict[str, float], Outputs]:
    """Metrics and outputs of a reference checkpoint (original or ideal) on this split, computed once
    and cached beside the checkpoint (keyed by `reference_key`), so a sweep of many runs evaluates each
    reference once."""
    key = reference_key(path, split.info, forgotten, seed, svc_max)
    cache = path.with_name(f"{path.name.removesuffix('.pth.tar')}.eval_{digest(key)}.pt")
    return _cached_reference(cache, build_model, data, split, forgotten, seed, svc_max, key)


def _cached_reference(cache: Path, build_model, data, split, forgotten, seed, svc_max, key: dict | None = None):
    def compute() -> dict:
        out = model_outputs(build_model(), data, split.forget, split.retain, forgotten)
        return {"metrics": model_metrics(out, seed, svc_max), "outputs": vars(out)}

    saved = cached(cache, compute, key)
    return saved["metrics"], Outputs(**saved["outputs"])


def audited(path: Path, model, data, split, names: list[str], seed: int, budget: AuditBudget,
            context: dict[str, tuple[Path, object]]) -> dict[str, float]:
    """The audits `names` of the reference checkpoint at `path` (its model: `model`), cached beside it
    as its metrics are (keyed by `audit_key`; `context`: name -> (path, model) of the other checkpoints
    the audits read, passed to them: original, ideal)."""
    key = audit_key(path, split.info, names, seed, budget, context)
    cache = path.with_name(f"{path.name.removesuffix('.pth.tar')}.audit_{digest(key)}.pt")
    return cached(cache, lambda: run_audits(names, model, data, split, seed, budget,
                                            **{k: m for k, (_, m) in context.items()}), key)


def cached(cache: Path, compute, key: dict | None = None) -> dict:
    """`compute()`'s dict, read from the file `cache` when it holds one made for `key`, else computed
    and written there atomically with `key` beside it. Of runs asking at once, one computes while the
    others wait and read; a damaged file, or one whose stored key is not `key` (a name clash, or a file
    copied in), is recomputed; a read-only folder computes without caching."""
    try:
        with utils.exclusive(cache):
            return _read_or_compute(cache, compute, key)
    except OSError:  # a read-only folder of references: no lock, no cache; computed here
        return _read_or_compute(cache, compute, key)


def _read_or_compute(cache: Path, compute, key: dict | None) -> dict:
    if cache.is_file():
        try:
            saved = utils.read_torch_file(cache)
            if saved["key"] == key:
                return saved["value"]
        except Exception:  # a damaged cache is recomputed
            pass
    value = compute()
    tmp = utils.temporary_name(cache)
    try:
        torch.save({"key": key, "value": value}, tmp)
        os.replace(tmp, cache)
    except OSError:  # a read-only folder of references: fine, just not cached
        tmp.unlink(missing_ok=True)
    return value
