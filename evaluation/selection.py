"""Model selection without the test set: the objective tune.py minimises.

The tables judge a model by its gaps to the ideal model on UA, RA, TA and the SVC attack (Avg. Gap,
SalUn's Table 1), all of which read the test set. Choosing hyper-parameters by them would tune on the
test set. Selection reads only training and validation data instead:

* UA and RA as in the tables (the forget and retain sets are training data);
* VA, validation accuracy, in place of TA (without the forgotten class when a class is forgotten);
* MIA_val, the SVC attack on the confidence feature with validation samples as its non-members in
  place of test samples (members: as many retain samples, drawn with the same seeded generator).

The objective is the mean absolute gap of these four to the ideal model's, in points: Avg. Gap with
validation in place of test. A single objective, the one the tables report, so that the tuned row
is the best the search found by the measure the reader compares; DeepUnlearn's min-norm pick on a
Pareto front of several objectives is the published alternative.
"""

from __future__ import annotations

import numpy as np

from evaluation.accuracy import Outputs, accuracies, utility_view
from evaluation.mia import attack_features, svc_efficacy, svc_samples

SELECTION_KEYS = ("UA", "RA", "VA", "MIA_val")


def validation_metrics(out: Outputs, seed: int = 0, svc_max: int | None = None) -> dict[str, float]:
    """UA, RA, VA and MIA_val (percent) of one model's outputs, reading no test sample."""
    acc = accuracies(out)
    val_l, val_y, members = svc_samples(len(out.retain), *utility_view(out.val, out.y_val, out.forgotten_class),
                                        seed, svc_max)
    feat = lambda logits, y: attack_features(logits, y)["confidence"]  # noqa: E731
    mia = svc_efficacy(feat(out.retain[members], out.y_retain[members]), feat(val_l, val_y),
                       feat(out.forget, out.y_forget))
    return {"UA": acc["UA"], "RA": acc["RA"], "VA": acc["VA"], "MIA_val": mia}


def validation_gap(metrics: dict[str, float], ideal: dict[str, float]) -> float:
    """The mean absolute gap (points) to the ideal model over SELECTION_KEYS: lower is better."""
    return float(np.mean([abs(metrics[k] - ideal[k]) for k in SELECTION_KEYS]))
