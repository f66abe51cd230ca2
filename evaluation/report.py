"""The evaluation of one unlearning run: model outputs once per model and split, every
metric from them, and the summary table. Pure functions over `Outputs`: the original and
ideal models' figures are computed by the same `model_metrics` (and cached beside their
checkpoints by the application layer, experiments/references.py).

    out = model_outputs(model, data, split.forget, split.retain, forgotten)   # logits per split
    mine = model_metrics(out)                                 # accuracy + MIA
    ref_o, ref_i, ideal_out = ...                             # the same, for the original and ideal
    metrics = {**mine, **against_references(out, mine, ref_o, ref_i, ideal_out)}
"""

from __future__ import annotations

import time

from evaluation.accuracy import Outputs, accuracies, utility_view
from evaluation.closeness import avg_gap, logit_fid, mean_kl, relative_ua
from evaluation.mia import loss_attack, per_sample_loss, svc_mia, svc_samples

POLARITY = {
    "UA": "closer to ideal", "FA": "closer to ideal", "RA": "higher", "TA": "higher", "VA": "higher",
    "TA_forgotten_class": "closer to ideal", "MIA": "closer to ideal",
    **{f"MIA_{k}": "closer to ideal" for k in ("correctness", "confidence", "entropy", "m_entropy", "prob")},
    "loss_MIA_acc": "closer to 50", "loss_MIA_auc": "closer to 0.5",
    "MIA_svc_samples": "none (a sample count)",
    "rUA": "closer to 1", "UA_gap": "lower", "FID_forget": "lower", "FID_test": "lower",
    "KL_forget": "lower", "KL_test": "lower", "avg_gap": "lower", "RTE": "lower", "eval_time": "lower",
    "ASR": "lower",  # backdoor runs (main_backdoor.py): attack success rate
}


def polarity(class_forgetting: bool) -> dict[str, str]:
    """Each metric's polarity in this scenario. When a whole class is forgotten, D_F is unlike
    D_T for the ideal model too (it scores a loss-attack AUC of about 0.94 on digits), so the
    loss attack is read against the ideal model, not against 0.5."""
    if not class_forgetting:
        return dict(POLARITY)
    return POLARITY | {"loss_MIA_acc": "closer to ideal", "loss_MIA_auc": "closer to ideal"}


def model_metrics(out: Outputs, seed: int = 0, svc_max: int | None = None,
                  timings: dict[str, float] | None = None) -> dict[str, float]:
    """Accuracies and membership-inference figures of one model (no reference needed).

    The SVC's members are retain samples, as many as there are test samples
    (Unlearn-Sparse); for class forgetting its non-members exclude the forgotten class.
    `svc_max` caps both sides at that many samples (a seeded subsample; the SVC's cost
    grows with the square of its training set); None trains on all, as published.
    `timings`, when given, receives the wall time (s) of the SVC attack, the loss attack and the rest."""
    t0 = time.perf_counter()
    m = accuracies(out)
    test_l, test_y, members = svc_samples(len(out.retain), *utility_view(out.test, out.y_test, out.forgotten_class),
                                          seed, svc_max)
    t1 = time.perf_counter()
    m.update(svc_mia(out.retain[members], out.y_retain[members], test_l, test_y, out.forget, out.y_forget))
    m["MIA_svc_samples"] = float(len(members) + len(test_y))
    t2 = time.perf_counter()
    m.update(loss_attack(per_sample_loss(out.forget, out.y_forget), per_sample_loss(out.test, out.y_test), seed))
    if timings is not None:
        timings.update(svc_attack_s=t2 - t1, loss_attack_s=time.perf_counter() - t2, rest_s=t1 - t0)
    return m


def against_references(out: Outputs, mine: dict, original: dict | None, ideal: dict | None,
                       ideal_out: Outputs | None) -> dict[str, float]:
    """rUA, the UA gap, FID and KL to the ideal model, and Avg. Gap (what needs references)."""
    res: dict[str, float] = {}
    if ideal is None:
        return res
    res["UA_gap"] = abs(mine["UA"] - ideal["UA"])
    if original is not None:
        res["rUA"] = relative_ua(mine["UA"], original["UA"], ideal["UA"], len(out.y_forget))
    res["FID_forget"] = logit_fid(out.forget, ideal_out.forget)
    res["FID_test"] = logit_fid(out.test, ideal_out.test)
    res["KL_forget"] = mean_kl(ideal_out.forget, out.forget)
    res["KL_test"] = mean_kl(ideal_out.test, out.test)
    res["avg_gap"] = avg_gap(mine, ideal)
    return res


def summary_table(unlearned: dict, original: dict | None, ideal: dict | None, name: str = "unlearned",
                  polarities: dict[str, str] = POLARITY) -> str:
    """One screen: original / unlearned / ideal side by side, with each metric's polarity."""
    keys = ["UA", "RA", "TA", "VA", "TA_forgotten_class", "ASR", "MIA", "MIA_entropy", "loss_MIA_auc",
            "relearn_UA", "relearn_rounds", "probe_UA", "CKA_forget"]  # the last four: with --audits
    keys = [k for k in keys if k in unlearned]

    def cell(d, k):
        return f"{d[k]:10.2f}" if d is not None and k in d and d[k] == d[k] else f"{'-':>10}"

    width = max(13, len(name) + 3)  # the run's whole name: "NegGrad+VarGrad" is not cut
    lines = [f"{'metric':22s}{'original':>10}{name:>{width}}{'ideal':>10}   polarity"]
    for k in keys:
        lines.append(f"{k:22s}{cell(original, k)}{'':{width - 10}}{cell(unlearned, k)}{cell(ideal, k)}   "
                     f"{polarities.get(k, '')}")
    for k in ("rUA", "UA_gap", "FID_forget", "FID_test", "KL_forget", "KL_test", "avg_gap", "RTE", "eval_time"):
        if k in unlearned:
            lines.append(f"{k:22s}{'':10}{'':{width - 10}}{unlearned[k]:10.4g}{'':10}   {polarities[k]}")
    return "\n".join(lines)
