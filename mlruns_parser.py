"""Flatten the MLflow runs to a CSV: one row per run, with its id, experiment, name,
status, start and end time, every parameter (`param.NAME`) and every final metric
(`NAME`). Unfinished and failed runs are kept, marked by `status` (and
`failure_reason`), never dropped.

    python mlruns_parser.py                                # default store, all experiments
    python mlruns_parser.py --experiment digits --output digits_runs.csv
    python mlruns_parser.py --tracking_uri http://cluster-head:5000
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
from pathlib import Path

import tracking
from utils import UserError, run_main

FIXED = ["run_id", "experiment", "run_name", "status", "start_time", "end_time", "failure_reason"]


def iso(ms: int | None) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds") if ms else ""


def flat_row(r, experiment: str) -> dict:
    """One run as a flat dict: fixed columns, `param.NAME` and the final metrics."""
    row = {"run_id": r.info.run_id, "experiment": experiment, "run_name": r.info.run_name,
           "status": r.info.status, "start_time": iso(r.info.start_time), "end_time": iso(r.info.end_time),
           "failure_reason": r.data.tags.get("failure_reason", "")}
    row.update({f"param.{k}": v for k, v in r.data.params.items()})
    row.update(r.data.metrics)
    return row


def runs(uri: str, experiment: str | None, filter_string: str = ""):
    """(run, experiment name) for every run of the store, or of one experiment."""
    db = tracking.sqlite_path(uri)
    if db is not None and not db.is_file():
        raise UserError(f"no MLflow store at {db}: run mlflow_forget.py first, or pass --tracking_uri")
    c = tracking.client(uri)
    exps = {e.experiment_id: e.name for e in tracking.retry(c.search_experiments)}
    if experiment is not None:
        exps = {i: n for i, n in exps.items() if n == experiment}
        if not exps:
            raise UserError(f"no experiment {experiment!r} in {uri}")
    for r in tracking.all_runs(c, list(exps), filter_string):
        yield r, exps[r.info.experiment_id]


def collect(uri: str, experiment: str | None) -> list[dict]:
    """Every run of the store (or of one experiment) as a flat dict."""
    return [flat_row(r, exp) for r, exp in runs(uri, experiment)]


def write_csv(rows: list[dict], path: Path) -> None:
    params = sorted({k for r in rows for k in r if k.startswith("param.")})
    metrics = sorted({k for r in rows for k in r if k not in FIXED and not k.startswith("param.")})
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIXED + metrics + params, restval="")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking_uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")
    p.add_argument("--experiment", default=None, help="only this experiment (default: all)")
    p.add_argument("--output", default="mlruns_parsed.csv", help="CSV to write (default mlruns_parsed.csv)")
    args = p.parse_args()
    uri = tracking.resolve_uri(args.tracking_uri)
    rows = collect(uri, args.experiment)
    if not rows:
        raise UserError(f"no runs in {uri}{f' (experiment {args.experiment})' if args.experiment else ''}; "
                        f"nothing written")
    write_csv(rows, Path(args.output))
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    print(f"{len(rows)} runs ({', '.join(f'{n} {s}' for s, n in sorted(by_status.items()))}) -> {args.output}")


if __name__ == "__main__":
    run_main(main)
