r"""Train the original model on the whole training set (Unlearn-Sparse recipe).

Writes {save_dir}/{seed}{arch}_ep{epochs}model_SA_best.pth.tar (the best epoch by
validation accuracy), the file the unlearning commands pass to --mask, and beside
it the record of the forget set the arguments describe.

    python -u main_baseline.py --dataset digits --epochs 30 --save_dir ./results/digits
    python -u main_baseline.py --data ./data --dataset cifar10 --arch resnet18 \
        --save_dir ./results/cifar10 --epochs 10 --num_indexes_to_replace 4500
"""

from experiments import trainer
from utils import run_main


def main() -> None:
    args = trainer.build_parser(__doc__).parse_args()
    trainer.train(args, ideal=False)


if __name__ == "__main__":
    run_main(main)
