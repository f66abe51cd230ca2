"""The original and ideal models' figures, computed once per checkpoint and forget set and cached
beside the checkpoint, so that a sweep of many runs evaluates each reference model once. File I/O
and locks: the application layer's side of evaluation/report.py.

    ref_o, _ = reference(original_path, build_original, data, split, forgotten)       # cached
    ref_i, ideal_out = reference(ideal_path, build_ideal, data, split, forgotten)     # cached, with logits
    audits_i = audited(ideal_path, ideal, data, split, ["probe"], seed, budget, context)   # cached
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

import utils
from audits import AuditBudget, run_audits
from evaluation.accuracy import Outputs, model_outputs
from evaluation.report import model_metrics

EVAL_VERSION = 2  # bump when a metric's definition changes: cached figures are then recomputed
AUDIT_VERSION = 1  # the same, for the audits (audits/)


def _fingerprint(path: Path, split_info: dict, forgotten: int | None, svc_max: int | None) -> str:
    st = path.stat()
    key = f"{EVAL_VERSION}|{st.st_size}|{st.st_mtime_ns}|{split_info['forget_sha1']}|{split_info['num_test']}|" \
          f"{split_info['num_val']}|{forgotten}" + (f"|svc{svc_max}" if svc_max is not None else "")
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def reference(path: Path, build_model, data, split, forgotten: int | None, seed: int = 0,
              svc_max: int | None = None) -> tuple[dict[str, float], Outputs]:
    """Metrics and outputs of a reference checkpoint (original or ideal) on this split,
    computed once and cached beside the checkpoint (keyed by checkpoint, forget set and
    metric version), so a sweep of many runs evaluates each reference once."""
    key = _fingerprint(path, split.info, forgotten, svc_max)
    cache = path.with_name(f"{path.name.removesuffix('.pth.tar')}.eval_{key}.pt")
    return _cached_reference(cache, build_model, data, split, forgotten, seed, svc_max)


def _cached_reference(cache: Path, build_model, data, split, forgotten, seed, svc_max):
    def compute() -> dict:
        out = model_outputs(build_model(), data, split.forget, split.retain, forgotten)
        return {"metrics": model_metrics(out, seed, svc_max), "outputs": vars(out)}

    saved = cached(cache, compute)
    return saved["metrics"], Outputs(**saved["outputs"])


def audited(path: Path, model, data, split, names: list[str], seed: int, budget: AuditBudget,
            context: dict[str, tuple[Path, object]]) -> dict[str, float]:
    """The audits `names` of the reference checkpoint at `path` (its model: `model`), cached beside it as
    its metrics are: keyed by the checkpoint, the forget set, the audits, their budget, the seed and the
    checkpoints the audits read (`context`: name -> (path, model), passed to the audits: original, ideal)."""
    others = "|".join(f"{k}={_stat(p)}" for k, (p, _) in sorted(context.items()))
    key = f"{AUDIT_VERSION}|{_stat(path)}|{split.info['forget_sha1']}|{sorted(names)}|{budget}|{seed}|{others}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    cache = path.with_name(f"{path.name.removesuffix('.pth.tar')}.audit_{digest}.pt")
    return cached(cache, lambda: run_audits(names, model, data, split, seed, budget,
                                            **{k: m for k, (_, m) in context.items()}))


def _stat(path: Path) -> str:
    st = Path(path).stat()
    return f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}"


def cached(cache: Path, compute) -> dict:
    """`compute()`'s dict, read from the file `cache` when it holds one, else computed and written there
    atomically. Of runs asking at once, one computes while the others wait and read; a damaged file is
    recomputed; a read-only folder computes without caching."""
    try:
        with utils.exclusive(cache):
            return _read_or_compute(cache, compute)
    except OSError:  # a read-only folder of references: no lock, no cache; computed here
        return _read_or_compute(cache, compute)


def _read_or_compute(cache: Path, compute) -> dict:
    if cache.is_file():
        try:
            return utils.read_torch_file(cache)
        except Exception:  # a damaged cache is recomputed
            pass
    value = compute()
    tmp = utils.temporary_name(cache)
    try:
        torch.save(value, tmp)
        os.replace(tmp, cache)
    except OSError:  # a read-only folder of references: fine, just not cached
        tmp.unlink(missing_ok=True)
    return value
