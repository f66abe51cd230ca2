r"""Backdoor cleansing by unlearning (Unlearn-Sparse's main_backdoor.py): poison N training
samples with a trigger and the target label --class_to_replace, train the backdoored model
(or reuse it from --save_dir), unlearn the poisoned samples with any method and add-on, and
report clean test accuracy (TA) and the attack success rate (ASR) before and after, logged
to MLflow (experiment DATASET-backdoor) like mlflow_forget.py.

    python -u main_backdoor.py --dataset digits --epochs 30 --save_dir ./results/digits-backdoor \
        --class_to_replace 0 --num_indexes_to_replace 120 --trigger_size 2 --trigger_margin 0 \
        --trigger_pattern white --unlearn FT --unlearn_epochs 5 --unlearn_lr 0.01
    python -u main_backdoor.py --data ./data --dataset cifar10 --arch resnet18 --epochs 182 \
        --save_dir ./results/cifar10 --class_to_replace 0 --num_indexes_to_replace 4500 \
        --trigger_size 4 --unlearn FT
    python -u main_backdoor.py ... --train_only ideal     # the ideal model: retrained without them

The poisoned samples are the seed's random forget set of that N (every class); the
backdoored model is {save_dir}/{seed}{arch}_ep{epochs}_backdoor{C}_N{N}_{trigger}.pth.tar,
its ideal model the same name ending _ideal.pth.tar, each with the poisoned set's record
(.forget.json) beside it. --unlearn takes what mlflow_forget.py takes.
"""

from experiments import backdoor
from utils import run_main


def main() -> None:
    backdoor.main(backdoor.build_parser(__doc__).parse_args())


if __name__ == "__main__":
    run_main(main)
