"""The challenge's forgetting score (`--audit epsilon`) and KLoM (`--audit klom`) in main_audit.py.

Both read one store of K originals (trained on the whole training set, seeds differing) and K
oracles (retrained on D_R of the forget set the flags name, the same seeds), kept beside U-LiRA's
under --save_dir/ensembles. The challenge unlearns D_F from the first original K times (seeds
differing) and compares those K models with the K oracles per forget example; KLoM unlearns D_F
once from each original and compares the K results with the oracles per point of D_F, D_R and D_V
(audits/ensemble_scores.py has both definitions and where they follow or leave the sources).

Two reference rows come with every audit: the oracles scored against themselves, one half against
the other (the noise floor: what K models of the same distribution show), and the originals scored
as if they were unlearned models (no unlearning: clearly worse than any method that forgets).
`retrain` is exact: its row is the noise floor.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import utils
from audits.ensemble_scores import confidences, epsilons, forget_quality, klom, max_epsilon
from evaluation.accuracy import accuracy, logits_of
from experiments import privacy
from experiments.tracking import Run
from utils import UserError


def main(args: argparse.Namespace) -> list[dict]:
    audits = privacy.resolve_all(args)
    models = privacy.ensembles(audits[0])
    first = audits[0]
    originals, oracles = outputs(first, models["original"]), outputs(first, models["oracle"])
    score = SCORES[args.audit]
    noise = score(first, *halves(oracles, oracles))
    references = {"noise": noise | halved(noise),
                  "original": score(first, originals, oracles) | halved(score(first, *halves(originals, oracles)))}
    rows = privacy.each_row(audits, lambda audit: run_one(audit, models["original"], models["oracle"], oracles,
                                                          references))
    if args.table or len(audits) > 1:
        write_table(first, rows, Path(args.table) if args.table else first.folder / f"table_{args.audit}.md")
    return rows


def run_one(audit, originals: list, oracles: list, oracle_outputs: dict, references: dict) -> dict:
    """One method: unlearn, score against the oracles' outputs (computed once for every method), log."""
    args = audit.args
    tracker = privacy.open_run(audit)
    with privacy.finishing(tracker):
        t0 = time.perf_counter()
        if audit.kind == "retrain":  # exact: the oracles, one half against the other (the noise floor)
            result = references["noise"]
            mia = [privacy.svc_of(m, audit, audit.split) for m in oracles[:len(oracles) // 2]]
        else:
            sources = [originals[0]] * len(originals) if args.audit == "epsilon" else originals
            unlearned = unlearn_each(audit, sources)
            mine = outputs(audit, unlearned)
            result = SCORES[args.audit](audit, mine, oracle_outputs)
            result |= halved(SCORES[args.audit](audit, *halves(mine, oracle_outputs)))
            mia = [privacy.svc_of(m, audit, audit.split) for m in unlearned]
        metrics = {k: v for k, v in result.items() if not isinstance(v, dict)}
        metrics |= {"SVC_MIA": float(np.mean(mia)), "SVC_MIA_std": float(np.std(mia)),
                    "unlearn_time_s": time.perf_counter() - t0}
        for name, ref in references.items():
            metrics |= {f"{name}/{k}": v for k, v in ref.items() if not isinstance(v, dict)}
        tracker.metrics(metrics)
        out = audit.folder / "audits" / f"{args.audit}_{privacy.slug(audit.spec)}_{tracker.id[:8]}"
        out.mkdir(parents=True, exist_ok=True)
        for path in write_outputs(audit, result, references, out):
            tracker.artifact(path)
    report(audit, metrics, out, tracker)
    return {"method": audit.spec, **metrics}


def unlearn_each(audit, sources: list) -> list:
    """Unlearn D_F from a copy of each source model, run k seeded seed * 1000 + k."""
    return [privacy.unlearned_copy(audit, source, audit.split, k)
            for k, source in enumerate(tqdm(sources, desc=f"{audit.spec} x{len(sources)}", file=sys.stderr,
                                            leave=False, disable=True if audit.args.quiet else None))]


SPLITS = {"epsilon": ("forget", "retain", "test"), "klom": ("forget", "retain", "val")}  # what each score reads


def outputs(audit, models: list) -> dict[str, torch.Tensor]:
    """Every model's logits [K, n, classes] on each split its score reads (D_F, D_R, and D_T or D_V)."""
    data, split = audit.data, audit.split
    where = {"forget": data.x_train[split.forget], "retain": data.x_train[split.retain],
             "val": data.x_train[data.val_idx], "test": data.x_test}
    out = {name: torch.stack([logits_of(m, data, where[name]).cpu() for m in models])
           for name in SPLITS[audit.args.audit]}
    if not all(torch.isfinite(v).all() for v in out.values()):
        raise UserError(f"a model gives non-finite logits ({audit.spec}): the method wrecked it; lower --unlearn_lr "
                        "or --unlearn_epochs")
    return out


def part(out: dict, start: int, stop: int | None) -> dict:
    """Models start..stop of every split's logits."""
    return {name: v[start:stop] for name, v in out.items()}


def halves(unlearned: dict, oracles: dict) -> tuple[dict, dict]:
    """The first half of the `unlearned` models and the second half of the oracles: the sizes the noise
    floor compares (K/2 against K/2, oracles against oracles), so that a score set beside it is read
    at the same resolution (KLoM's histograms and epsilon's buckets both coarsen as K shrinks)."""
    h = len(oracles["forget"]) // 2
    return part(unlearned, 0, h), part(oracles, h, None)


def halved(result: dict) -> dict:
    """`result`'s figures (not its per-example values) renamed KEY_half."""
    return {f"{k}_half": v for k, v in result.items() if not isinstance(v, dict)}


def labels(audit, name: str) -> torch.Tensor:
    data, split = audit.data, audit.split
    idx = {"forget": split.forget, "retain": split.retain, "val": data.val_idx}.get(name)
    return (data.y_train[idx] if idx is not None else data.y_test).cpu()


# ------------------------------------------------------------------------------- the scores
def challenge(audit, unlearned: dict, retrained: dict) -> dict:
    """The challenge's figures for the `unlearned` models' logits against the `retrained` ones'
    (per-example epsilons under "per")."""
    y_f = labels(audit, "forget")
    eps = epsilons(confidences(unlearned["forget"], y_f), confidences(retrained["forget"], y_f))
    k = min(len(unlearned["forget"]), len(retrained["forget"]))
    fq = forget_quality(eps, k)

    def mean_acc(out: dict, name: str) -> float:
        return float(np.mean([accuracy(lg, labels(audit, name)) for lg in out[name]]))

    ra = mean_acc(unlearned, "retain") / mean_acc(retrained, "retain")
    ta = mean_acc(unlearned, "test") / mean_acc(retrained, "test")
    return {"challenge_score": fq * ra * ta, "forget_quality": fq, "epsilon_mean": float(eps.mean()),
            "epsilon_median": float(eps.median()), "RA_ratio": ra, "TA_ratio": ta,
            "max_epsilon": float(max_epsilon(k)), "per": {"epsilon": eps}}


def klom_scores(audit, unlearned: dict, oracles: dict) -> dict:
    """KLoM's 95th percentiles over D_F, D_R and D_V from the two groups' logits, and the per-point
    values under "per"."""
    out, per = {}, {}
    for name in ("forget", "retain", "val"):
        y = labels(audit, name)
        per[name] = klom(confidences(unlearned[name], y), confidences(oracles[name], y))
        out[f"klom_p95_{name}"] = float(torch.quantile(per[name], 0.95))
    return out | {"per": per}


SCORES = {"epsilon": challenge, "klom": klom_scores}


# ------------------------------------------------------------------------------- record
def write_outputs(audit, result: dict, references: dict, out: Path) -> list[Path]:
    """The per-example CSV and a histogram (of epsilon, or of KLoM per split) with the references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split, data, a = audit.split, audit.data, audit.args
    path = out / "per_example.csv"
    if a.audit == "epsilon":
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "label", "epsilon", "noise_epsilon", "original_epsilon"])
            for i, t in enumerate(split.forget.cpu().tolist()):
                w.writerow([t, int(data.y_train[t]), *(f"{float(r['per']['epsilon'][i]):.4f}"
                                                       for r in (result, references["noise"], references["original"]))])
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        bins = np.linspace(0, max(float(result["max_epsilon"]) + 1, 1), 25)
        for name, r in (("method", result), ("oracles vs oracles", references["noise"]),
                        ("originals", references["original"])):
            ax.hist(r["per"]["epsilon"].clamp(max=bins[-1]).numpy(), bins=bins, alpha=0.5, label=name)
        ax.set_xlabel("epsilon per forget example (clipped at the top bin)")
        ax.set_title(f"{audit.spec}: challenge score {result['challenge_score']:.3f}", fontsize=9)
    else:
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["split", "index", "klom", "noise_klom", "original_klom"])
            for name, idx in (("forget", split.forget), ("retain", split.retain), ("val", data.val_idx)):
                for i, t in enumerate(idx.cpu().tolist()):
                    w.writerow([name, t, *(f"{float(r['per'][name][i]):.4f}"
                                           for r in (result, references["noise"], references["original"]))])
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        for name in ("forget", "retain", "val"):
            ax.hist(result["per"][name].numpy(), bins=30, alpha=0.5, label=f"{name} (P95 "
                    f"{result[f'klom_p95_{name}']:.2f})")
        ax.axvline(references["noise"]["klom_p95_forget"], color="k", ls=":", label="noise floor P95 (forget)")
        ax.set_xlabel("KLoM per point")
        ax.set_title(f"{audit.spec}: KLoM(unlearned || oracle)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    png = out / f"{a.audit}.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return [path, png]


FIGURES = {"epsilon": ("challenge_score", "forget_quality", "epsilon_mean", "RA_ratio", "TA_ratio",
                       "challenge_score_half"),
           "klom": ("klom_p95_forget", "klom_p95_retain", "klom_p95_val", "klom_p95_forget_half")}


def report(audit, metrics: dict, out: Path, tracker: Run) -> None:
    a = audit.args

    def line(prefix: str) -> str:
        return "  ".join(f"{k} {metrics[prefix + k]:.3f}" for k in FIGURES[a.audit])
    privacy.print_report(f"{a.audit} of {audit.spec} on {a.dataset}/{a.arch}: K = {len(audit.sets['oracle'])}, "
                         f"forget {len(audit.split.forget)} ({audit.split.info['mode']})",
                         [(audit.spec, line("")), ("oracles vs oracles (halves)", line("noise/")),
                          ("originals, not unlearned", line("original/"))], metrics, out, tracker)


def write_table(audit, rows: list[dict], path: Path) -> None:
    a = audit.args
    keys = FIGURES[a.audit]
    first = next(r for r in rows if "diverged" not in r)
    refs = [{"method": name, **{k.removeprefix(f"{key}/"): v for k, v in first.items() if k.startswith(f"{key}/")}}
            for name, key in (("Originals, not unlearned", "original"), ("Oracles vs oracles (noise floor)", "noise"))]
    title = "challenge forgetting score" if a.audit == "epsilon" else "KLoM (95th percentile per split)"
    lines = [f"# {title} on {a.dataset}/{a.arch}: K = {len(audit.sets['oracle'])}, forget "
             f"{len(audit.split.forget)} ({audit.split.info['mode']}, class {a.class_to_replace})", "",
             f"Made by `{shlex.join(['python', Path(sys.argv[0]).name, *sys.argv[1:]])}` at commit "
             f"{utils.git_commit()} on {utils.machine()}; originals and oracles trained {audit.train_recipe.epochs} "
             f"epochs (lr {audit.train_recipe.lr:g}), seed {a.seed}; {privacy.recipes_text(a, 'the oracles')}. "
             f"`{keys[-1]}`: the first K/2 models against the last K/2 oracles, the sizes of the noise floor's "
             "halves, so that it reads against that row.", "",
             "| method | " + " | ".join(keys) + " | SVC MIA |", "|" + " --- |" * (len(keys) + 2)]
    for row in [*refs, *rows]:
        if "diverged" in row:
            lines.append(privacy.diverged_cells(row, len(keys) + 1))
            continue
        mia = f"{row['SVC_MIA']:.1f}" if "SVC_MIA" in row else ""
        lines.append(f"| {row['method']} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + f" | {mia} |")
    privacy.save_table(path, lines, [*refs, *rows])
