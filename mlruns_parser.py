"""Flatten the MLflow runs to a CSV: one row per run, with its id, experiment, name, status,
start and end time, failure reason, the tags to group and audit by, every final metric
(`NAME`) and every parameter (`param.NAME`). Unfinished, failed and killed runs are kept,
marked by `status` (and `failure_reason`), never dropped. Beside it, `<output>_polarity.csv`
says, per metric and forget mode, which way is better.

    python mlruns_parser.py                                # default store, all experiments
    python mlruns_parser.py --experiment digits --output digits_runs.csv
    python mlruns_parser.py --filter "params.unlearn = 'GA+VarGrad' and metrics.TA > 90"
    python mlruns_parser.py --tracking_uri http://cluster-head:5000

The same table in a notebook: `mlruns_parser.frame(uri)` returns it as a DataFrame.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

import tracking
import utils
from utils import UserError, run_main, temporary_name

FIXED = ["run_id", "experiment", "run_name", "status", "start_time", "end_time", "failure_reason"]
# tags a user groups and audits by, as columns of their own name
AUDIT = ["command_hash", "forget_sha1", "forget_mode", "num_forget", "checkpoint", "ideal_checkpoint", "git_commit",
         "command"]


def frame(uri: str, experiment: str | None = None, filter_string: str = "") -> pd.DataFrame:
    """Every run of the store (or of one experiment, or matching an MLflow filter) as one row:
    FIXED and AUDIT columns, then the metrics by name, the parameters as `param.NAME` and the
    polarity tags as `polarity.NAME`; `mlflow.search_runs` does the paging."""
    import mlflow

    db = tracking.sqlite_path(uri)
    if db is not None and not db.is_file():
        raise UserError(f"no MLflow store at {db}: run mlflow_forget.py first, or pass --tracking_uri")
    c = tracking.client(uri)
    exps = {e.experiment_id: e.name for e in tracking.retry(c.search_experiments)}
    if experiment is not None:
        exps = {i: n for i, n in exps.items() if n == experiment}
        if not exps:
            raise UserError(f"no experiment {experiment!r} in {uri}")
    mlflow.set_tracking_uri(uri)
    try:
        runs = tracking.retry(mlflow.search_runs, experiment_ids=list(exps), filter_string=filter_string)
    except mlflow.exceptions.MlflowException as e:
        raise UserError(f"--filter {filter_string!r}: {e.message}") from None
    if runs.empty:
        return pd.DataFrame(columns=FIXED + AUDIT)
    tag = runs.get  # a tag column, or None when no run has that tag
    out = pd.DataFrame({
        "run_id": runs["run_id"], "experiment": runs["experiment_id"].map(exps),
        "run_name": tag("tags.mlflow.runName"), "status": runs["status"],
        "start_time": runs["start_time"].map(_iso), "end_time": runs["end_time"].map(_iso),
        "failure_reason": tag("tags.failure_reason"),
        **{k: tag(f"tags.{k}") for k in AUDIT},
    })
    # runs made before the num_forget tag: the N their parameters name
    if "params.num_indexes_to_replace" in runs:
        n = runs["params.num_indexes_to_replace"].where(runs["params.num_indexes_to_replace"] != "None")
        out["num_forget"] = out["num_forget"].fillna(n)
    metrics = runs.filter(like="metrics.", axis=1).rename(columns=lambda k: k.removeprefix("metrics."))
    params = runs.filter(like="params.", axis=1).rename(columns=lambda k: "param." + k.removeprefix("params."))
    polarity = runs.filter(like="tags.polarity.", axis=1).rename(columns=lambda k: k.removeprefix("tags."))
    return pd.concat([out, metrics[sorted(metrics)], params[sorted(params)], polarity[sorted(polarity)]], axis=1)


def _iso(t) -> str:
    return "" if pd.isna(t) else pd.Timestamp(t).tz_convert("UTC").isoformat(timespec="seconds")


def polarity_table(runs: pd.DataFrame) -> pd.DataFrame:
    """metric, forget_mode, polarity: the distinct polarity tags of the runs."""
    cols = [c for c in runs if c.startswith("polarity.")]
    long = runs.melt(id_vars=["forget_mode"], value_vars=cols, var_name="metric", value_name="polarity").dropna()
    long["metric"] = long["metric"].str.removeprefix("polarity.")
    return long[["metric", "forget_mode", "polarity"]].drop_duplicates().sort_values(["metric", "forget_mode"])


def write_csv(runs: pd.DataFrame, path: Path) -> Path:
    """The runs (without the polarity columns) to `path`, and the polarities beside it; returns that file."""
    pol = path.with_name(f"{path.stem}_polarity.csv")
    for frame_, target in ((runs.drop(columns=[c for c in runs if c.startswith("polarity.")]), path),
                           (polarity_table(runs), pol)):
        tmp = temporary_name(target)
        frame_.to_csv(tmp, index=False)
        tmp.replace(target)
    return pol


def main() -> None:
    p = utils.Parser(description=__doc__)
    p.add_argument("--tracking_uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")
    p.add_argument("--experiment", default=None, help="only this experiment (default: all)")
    p.add_argument("--filter", default="", metavar="MLFLOW_FILTER",
                   help="only runs matching this MLflow search filter, e.g. \"params.seed = '1' and "
                        "attributes.status = 'FINISHED'\" (default: all)")
    p.add_argument("--output", default="mlruns_parsed.csv",
                   help="CSV to write (default mlruns_parsed.csv; the polarities go to <output>_polarity.csv)")
    args = p.parse_args()
    uri = tracking.resolve_uri(args.tracking_uri)
    runs = frame(uri, args.experiment, args.filter)
    if runs.empty:
        which = " and ".join(x for x in (f"experiment {args.experiment}" if args.experiment else "",
                                         f"filter {args.filter!r}" if args.filter else "") if x)
        raise UserError(f"no runs in {uri}{f' ({which})' if which else ''}; nothing written")
    pol = write_csv(runs, Path(args.output))
    counts = runs["status"].value_counts().sort_index()
    print(f"{len(runs)} runs ({', '.join(f'{n} {s}' for s, n in counts.items())}) -> {args.output} "
          f"(polarities: {pol})")


if __name__ == "__main__":
    run_main(main)
