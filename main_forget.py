r"""Unlearn the forget set from the original model with one method (and add-on) and
evaluate the result: mlflow_forget.py's run, flag for flag, with no tracking store.

    python -u main_forget.py --dataset digits --epochs 30 --save_dir ./results/digits \
        --unlearn VarGrad --unlearn_epochs 4 --unlearn_lr 0.0001 --class_to_replace -1 \
        --num_indexes_to_replace 100

Instead of an MLflow run it writes, under {save_dir}/unlearned/: the unlearned
checkpoint, {run_id}_metrics.json (final metrics, the original's and the ideal
model's) and {run_id}_run.json (status, parameters, tags and every metric's
per-epoch history: what MLflow would hold), and prints the summary table.
--tracking_uri and --experiment are accepted, so mlflow_forget.py's commands run
unchanged, and ignored.
"""

from experiments import forget
from utils import run_main


def main() -> None:
    forget.main(forget.build_parser(__doc__).parse_args(), store="files")


if __name__ == "__main__":
    run_main(main)
