"""The original and ideal models' figures, computed once per checkpoint and forget set and cached
beside the checkpoint, so that a sweep of many runs evaluates each reference model once. File I/O
and locks: the application layer's side of evaluation/report.py.

    ref_o, _ = reference(original_path, build_original, data, split, forgotten)       # cached
    ref_i, ideal_out = reference(ideal_path, build_ideal, data, split, forgotten)     # cached, with logits
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

import utils
from evaluation.accuracy import Outputs, model_outputs
from evaluation.report import model_metrics

EVAL_VERSION = 2  # bump when a metric's definition changes: cached figures are then recomputed


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
    try:
        with utils.exclusive(cache):  # of runs starting together, one evaluates and the others read its cache
            return _cached_reference(cache, build_model, data, split, forgotten, seed, svc_max)
    except OSError:  # a read-only folder of references: no lock, no cache; computed here
        return _cached_reference(cache, build_model, data, split, forgotten, seed, svc_max)


def _cached_reference(cache: Path, build_model, data, split, forgotten, seed, svc_max):
    if cache.is_file():
        try:
            saved = utils.read_torch_file(cache)
            return saved["metrics"], Outputs(**saved["outputs"])
        except Exception:  # a damaged cache is recomputed
            pass
    out = model_outputs(build_model(), data, split.forget, split.retain, forgotten)
    metrics = model_metrics(out, seed, svc_max)
    tmp = utils.temporary_name(cache)
    try:
        torch.save({"metrics": metrics, "outputs": vars(out)}, tmp)
        os.replace(tmp, cache)
    except OSError:  # a read-only folder of references: fine, just not cached
        tmp.unlink(missing_ok=True)
    return metrics, out
