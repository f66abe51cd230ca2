r"""Retrain the ideal model from scratch on the retain set D_R = D \ D_F, with the
same seed and recipe as the original model (exact unlearning, the gold standard).

Writes {save_dir}/{seed}{arch}_ep{epochs}_C{class}_N{num}_ideal.pth.tar, a name that
mlflow_forget.py derives from the same arguments, and beside it the forget-set record.
For random forgetting the forget accuracy should sit near the test accuracy; for
class forgetting near 0.

    python -u main_ideal.py --dataset digits --epochs 30 --save_dir ./results/digits \
        --class_to_replace -1 --num_indexes_to_replace 100
"""

from experiments import trainer
from utils import run_main


def main() -> None:
    args = trainer.build_parser(__doc__).parse_args()
    trainer.train(args, ideal=True)


if __name__ == "__main__":
    run_main(main)
