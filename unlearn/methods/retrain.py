"""retrain: exact unlearning, run through mlflow_forget.py so that it sits in the same
tables as the approximate methods with its cost (RTE). It is main_ideal.py's recipe: a
fresh model initialised as main_baseline.py / main_ideal.py initialise it (same seed),
trained on D_R with the recipe the original model was trained with (read from its
checkpoint: lr, epochs, batch size, momentum, weight decay, milestones, warm-up), keeping
the epoch of best validation accuracy (the forgotten class left out of validation for
class forgetting). With the same seed its weights equal main_ideal.py's bit for bit on
CPU. --unlearn_lr and --unlearn_epochs override the recipe (the result is then no longer
the ideal model). Takes no add-on."""

from __future__ import annotations

from dataclasses import dataclass

from unlearn import register_method
from unlearn.methods.ft import FT


@register_method("retrain")
@dataclass
class Retrain(FT):  # FT's loss, from a fresh initialisation, with the training recipe
    kind = "retrain"
