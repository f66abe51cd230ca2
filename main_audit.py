r"""Per-example privacy audit of an unlearning method: U-LiRA (Hayes et al. 2024) over shadow models.

    python main_audit.py --audit ulira --dataset digits --epochs 30 --unlearn GA+VarGrad \\
        --unlearn_lr 0.005 --unlearn_epochs 5 --shadows 64 --targets 200 --seed 1 --save_dir ./results/digits

K shadow models train on balanced halves of the training set (complement pairs over a stratified
target set T and the other samples), each unlearns its targets with the method under test (the flags
of mlflow_forget.py), and a per-example likelihood-ratio attack on log p_y - log(1 - p_y) tells, for
every target and model, whether the model trained on the target and unlearned it, or never saw it.
50% accuracy and AUC are chance. Every audit also reports the two sanity cases: controls retrained
without their targets (must be at chance) and the shadows before unlearning (must be vulnerable).
The shadow and control models are stored once under --save_dir/ensembles and reused by every method.
Logged to MLflow (experiment DATASET-privacy) with a per-example CSV, IN/OUT histograms and ROC curves;
docs/privacy.md.

--audit epsilon (the NeurIPS 2023 challenge's forgetting score) and --audit klom (KLoM) score the
forget set the flags name (--class_to_replace, --num_indexes_to_replace) against K models retrained
without it, from one store of K originals and K oracles that both share.

--combine A.csv B.csv ... --table FILE.md puts the three audits' tables into one, with how each score
ranks the methods and what an add-on changes; --tuned FILE adds each method at tune.py's values.
"""

from pathlib import Path

import utils
from experiments import ensemble_audits, privacy, privacy_summary
from utils import run_main


def main(args):
    if args.combine:
        return privacy_summary.main(args)
    try:
        return privacy.main(args) if args.audit == "ulira" else ensemble_audits.main(args)
    except KeyboardInterrupt as e:
        store = args.ensemble_dir or Path(args.save_dir) / "ensembles"
        e.kept = (f"every model finished is kept in the store under {store}; the same command reuses them and "
                  f"trains the rest: {utils.rerun_command()}")
        raise


if __name__ == "__main__":
    run_main(lambda: main(privacy.build_parser(__doc__).parse_args()))
