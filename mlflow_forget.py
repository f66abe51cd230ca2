r"""Unlearn the forget set from the original model with one method (and add-on),
evaluate the result and log everything to MLflow.

    python -u mlflow_forget.py --dataset digits --epochs 30 --save_dir ./results/digits \
        --unlearn VarGrad --unlearn_epochs 4 --unlearn_lr 0.0001 --class_to_replace -1 \
        --num_indexes_to_replace 100
    python -u mlflow_forget.py --save_dir ./results/cifar10 \
        --mask ./results/cifar10/1resnet18_ep100model_SA_best.pth.tar --unlearn VarGrad \
        --unlearn_epochs 4 --unlearn_lr 0.0001 --data ./data --dataset cifar10 --seed 1 --arch resnet18 \
        --epochs 100 --num_indexes_to_replace 450 --beta 0.9 --quantile 0.55 --class_to_replace -1

--unlearn takes METHOD or METHOD+ADDON (RL+Mask, NegGrad+VarGrad); a bare add-on
name means gradient ascent with it (VarGrad = GA+VarGrad); SalUn = RL+SalUn.
Runs go to sqlite:///mlruns/mlflow.db unless --tracking_uri or MLFLOW_TRACKING_URI
says otherwise; the unlearned checkpoint goes to {save_dir}/unlearned/.
"""

from experiments import forget
from utils import run_main


def main() -> None:
    forget.main(forget.build_parser(__doc__).parse_args())


if __name__ == "__main__":
    run_main(main)
