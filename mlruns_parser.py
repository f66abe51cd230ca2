"""Flatten the MLflow runs to a CSV: one row per run, with its id, experiment, name, status,
start and end time, failure reason, the tags to group and audit by, every final metric
(`NAME`) and every parameter (`param.NAME`). Unfinished, failed and killed runs are kept,
marked by `status` (and `failure_reason`), never dropped. Beside it, `<output>_polarity.csv`
says, per metric and forget mode, which way is better.

    python mlruns_parser.py                                # default store, all experiments
    python mlruns_parser.py --experiment digits --output digits_runs.csv
    python mlruns_parser.py --filter "params.unlearn = 'GA+VarGrad' and metrics.TA > 90"
    python mlruns_parser.py --tracking_uri http://cluster-head:5000

The same table in a notebook: `experiments.tracking.frame(uri)` returns it as a DataFrame.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

import utils
from experiments import tracking
from experiments.tracking import frame
from utils import UserError, run_main, temporary_name


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
