"""Run a whole benchmark end to end and write a results folder: generate the params,
train the original and ideal models, run the sweep (in parallel, resumable), parse
the MLflow store, and write summary.csv, a Markdown table per forget scenario (mean
+- std over seeds, gap to the ideal model in parentheses, ideal model first, as in
the SalUn paper's Table 1) and PNG plots.

    python benchmark.py                                  # digits-quick: a few minutes on 2 CPU cores
    python benchmark.py --preset cifar10-paper --jobs 1  # a GPU machine
    python benchmark.py --preset cifar10-paper --slurm --partition gpu --gpus 1   # a cluster
    python benchmark.py --preset cifar10-paper --report_only   # tables and plots once the jobs are done
    python benchmark.py --preset zoo                     # every method, published recipes, digits, 3 seeds
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import utils
from evaluation.closeness import avg_gap
from experiments import sweep, tracking
from experiments.forget import audit_list
from experiments.sweep import Grid
from unlearn import parse_unlearn, spec_name
from utils import UserError, run_main

DIGITS_METHODS = ["GA", "GA+Mask", "GA+VarGrad", "NegGrad+", "NegGrad+VarGrad", "FT", "RL", "SalUn"]
PRESETS: dict[str, Grid] = {
    # same lr and epochs for every method: a quick, fair look at what the add-ons change. lr 0.005, not
    # 0.01: at 0.01 GA costs class 3 about 12 points of RA, and the SVC attack's call on the forget set
    # (confidence near 0, where retain and test errors then mix) flips between 0 and 100 from one original
    # model to the next (2 of 12 originals, from either CPU kernel set); at 0.005 none of 12 flips
    "digits-quick": Grid(datasets=["digits"], archs=["smallcnn"], seeds=[1, 2, 3], epochs={"digits": 30},
                         forget=[(-1, 100), (3, None)], unlearn=DIGITS_METHODS, unlearn_lr=[0.005],
                         unlearn_epochs=[5]),
    # real data on a CPU: Fashion-MNIST (Debian's dataset-fashion-mnist, or the idx files under --data),
    # convnet, 8 training epochs; 10% random forgetting and the whole class 0; one lr (1e-3: GA alone then
    # lands on the ideal UA of random forgetting) and epoch count for all; the SVC attack capped at 2000 a side
    "fashionmnist": Grid(datasets=["fashionmnist"], archs=["convnet"], seeds=[1, 2, 3], epochs={"fashionmnist": 8},
                         forget=[(-1, 5400), (0, None)], unlearn=DIGITS_METHODS + ["SCRUB"], unlearn_lr=[0.001],
                         unlearn_epochs=[3], extra_base=["--decreasing_lr", "4,6"], extra=["--mia_svc_max", "2000"]),
    # the same protocol on a 5% subsample, 2 training epochs: what the tests run
    "fashionmnist-test": Grid(datasets=["fashionmnist"], archs=["convnet"], seeds=[1], epochs={"fashionmnist": 2},
                              forget=[(-1, 240)], unlearn=["GA", "GA+VarGrad"], unlearn_lr=[0.01],
                              unlearn_epochs=[1], extra_base=["--subsample", "0.05"], extra=["--subsample", "0.05"]),
    # the size the tests run
    "digits-test": Grid(datasets=["digits"], archs=["smallcnn"], seeds=[1], epochs={"digits": 5},
                        forget=[(3, None)], unlearn=["GA", "GA+VarGrad"], unlearn_lr=[0.01], unlearn_epochs=[2]),
    # ResNet-18 on CIFAR-10 with the papers' recipes (each method's published lr and epochs):
    # 10% random forgetting and class-wise forgetting of class 0
    "cifar10-paper": Grid(datasets=["cifar10"], archs=["resnet18"], seeds=[1, 2, 3], epochs={"cifar10": 182},
                          forget=[(-1, 4500), (0, None)],
                          unlearn=["FT", "GA", "RL", "NegGrad+", "SCRUB", "SalUn", "GA+Mask", "GA+VarGrad",
                                   "NegGrad+Mask", "NegGrad+VarGrad", "RL+VarGrad"],
                          addon_params={"beta": [0.9]}),
}
# every registered method with its published recipe (SalUn = RL+SalUn), and retrain: the zoo table
ZOO_METHODS = ["FT", "GA", "RL", "SalUn", "NegGrad+", "FT_l1", "GA_l1", "SCRUB", "BadTeacher", "BS", "BE",
               "CF-k", "EU-k", "FF", "IU", "SSD", "LFSSD", "retrain"]
ZOO_NEW = ["BS", "BE", "CF-k", "EU-k", "FF", "IU", "SSD", "LFSSD", "retrain"]
PRESETS["zoo"] = Grid(datasets=["digits"], archs=["smallcnn"], seeds=[1, 2, 3], epochs={"digits": 30},
                      forget=[(-1, 100), (3, None)], unlearn=ZOO_METHODS)
# the zoo's methods that the fashionmnist preset lacks, on its models and forget sets, each method's own recipe
FASHION_ZOO = ["BadTeacher"] + ZOO_NEW
PRESETS["fashionmnist-zoo"] = Grid(datasets=["fashionmnist"], archs=["convnet"], seeds=[1, 2, 3],
                                   epochs={"fashionmnist": 8}, forget=[(-1, 5400), (0, None)], unlearn=FASHION_ZOO,
                                   extra_base=["--decreasing_lr", "4,6"], extra=["--mia_svc_max", "2000"])
# backdoor cleansing (main_backdoor.py): 10% of the training set poisoned (as Unlearn-Sparse's 4,500 of
# 45,000) towards class 0; the trigger is Unlearn-Sparse's patch made visible on a black background
# (white), 2 pixels in the corner of the 8x8 digits, its 4 pixels 2 in from the corner on Fashion-MNIST;
# one lr and epoch count for all, as digits-quick and fashionmnist
BACKDOOR_METHODS = ["FT", "FT+VarGrad", "GA", "GA+VarGrad", "RL", "RL+VarGrad", "SalUn"]
PRESETS["backdoor"] = Grid(datasets=["digits"], archs=["smallcnn"], seeds=[1, 2, 3], epochs={"digits": 30},
                           forget=[(0, 120)], unlearn=BACKDOOR_METHODS, unlearn_lr=[0.01], unlearn_epochs=[5],
                           backdoor=["--trigger_size", "2", "--trigger_margin", "0", "--trigger_pattern", "white"])
PRESETS["fashionmnist-backdoor"] = Grid(
    datasets=["fashionmnist"], archs=["convnet"], seeds=[1, 2, 3], epochs={"fashionmnist": 8}, forget=[(0, 5400)],
    unlearn=BACKDOOR_METHODS, unlearn_lr=[0.001], unlearn_epochs=[3], extra_base=["--train_decreasing_lr", "4,6"],
    extra=["--mia_svc_max", "2000"], backdoor=["--trigger_size", "4", "--trigger_pattern", "white"])
# the reporting grids of tune.py's presets: every method at its published recipe (and, with --tuned,
# at the values tune.py chose); random 10% and a whole class, 3 reporting seeds
TUNED_METHODS = ["GA", "GA+Mask", "GA+VarGrad", "NegGrad+", "NegGrad+VarGrad", "RL", "RL+VarGrad", "SalUn",
                 "SCRUB", "FT"]
PRESETS["digits-tuned"] = Grid(datasets=["digits"], archs=["smallcnn"], seeds=[1, 2, 3], epochs={"digits": 30},
                               forget=[(-1, 122), (3, None)], unlearn=TUNED_METHODS)
PRESETS["fashionmnist-tuned"] = Grid(
    datasets=["fashionmnist"], archs=["convnet"], seeds=[1, 2, 3], epochs={"fashionmnist": 3},
    forget=[(-1, 270), (0, None)], unlearn=TUNED_METHODS, extra_base=["--subsample", "0.05"],
    extra=["--subsample", "0.05", "--mia_svc_max", "2000"])
PRESETS["cifar10-tuned"] = Grid(datasets=["cifar10"], archs=["resnet18"], seeds=[1, 2, 3], epochs={"cifar10": 182},
                                forget=[(-1, 4500), (0, None)], unlearn=TUNED_METHODS)
PRESETS["digits-tune-test"] = Grid(datasets=["digits"], archs=["smallcnn"], seeds=[1], epochs={"digits": 5},
                                   forget=[(3, None)], unlearn=["GA", "GA+VarGrad"])
PRESET_NOTES = {
    "digits-quick": "8 methods and add-ons at one lr 0.005, 5 epochs; random N=100 and class 3; digits, 3 seeds "
                    "(minutes on a CPU; the default)",
    "fashionmnist": "digits-quick's methods plus SCRUB at lr 1e-3, 3 epochs; random N=5,400 and class 0; "
                    "Fashion-MNIST, convnet, 3 seeds (about an hour on 2 CPU cores)",
    "fashionmnist-test": "GA and GA+VarGrad on a 5% Fashion-MNIST subsample, 1 seed (what the tests run)",
    "digits-test": "GA and GA+VarGrad, class 3, 1 seed, 5 training epochs (what the tests run)",
    "cifar10-paper": "ResNet-18 on CIFAR-10, 182 epochs, each method's published recipe, 3 seeds (a GPU or --slurm)",
    "zoo": "every method with its published recipe, digits, 3 seeds (shares digits-quick's models)",
    "fashionmnist-zoo": "the zoo's methods that fashionmnist lacks (BadTeacher, BS, ..., retrain), 3 seeds "
                        "(shares fashionmnist's models)",
    "digits-tuned": "tune.py's digits grid: 10 methods at their published recipes, random 10% and class 3 "
                    "(--tuned FILE adds the tuned rows)",
    "fashionmnist-tuned": "tune.py's Fashion-MNIST grid, a 5% subsample (--tuned FILE adds the tuned rows)",
    "cifar10-tuned": "tune.py's CIFAR-10 grid, ResNet-18 (--tuned FILE adds the tuned rows; a GPU or --slurm)",
    "digits-tune-test": "tune.py's test grid: GA and GA+VarGrad, class 3, 1 seed, 5 training epochs",
    "backdoor": "backdoor cleansing (main_backdoor.py) on digits: FT, GA, RL, SalUn and +VarGrad, 3 seeds",
    "fashionmnist-backdoor": "backdoor cleansing on Fashion-MNIST, the same methods, 3 seeds",
}
# presets that train exactly the models of another: they share its checkpoints folder (beside --out)
SHARES_MODELS_WITH = {"zoo": "digits-quick", "fashionmnist-zoo": "fashionmnist"}
TABLE = ["UA", "RA", "TA", "MIA"]  # shown as mean +- std (gap to ideal)
BACKDOOR_TABLE = ["ASR"]  # backdoor runs add the attack success rate
EXTRA = ["rUA", "FID_forget", "avg_gap", "RTE"]
AUDIT_TABLE = ["relearn_UA", "relearn_rounds", "probe_UA", "CKA_forget"]  # with --audits (audits/)


def scenario_name(c: int | str, n: int | str | None) -> str:
    """A forget scenario's name in the tables (and tune.py's studies): `random N=100`, `class 3`, `class 3 N=50`."""
    if str(c) == "-1":
        return f"random N={n}"
    return f"class {c}" if n in (None, "None", "") else f"class {c} N={n}"


def scenario_of(params) -> str:
    """The forget scenario of a run, from its parameters (a dict or a row of the runs frame)."""
    c, n = params.get("param.class_to_replace", "0"), params.get("param.num_indexes_to_replace", "None")
    if pd.notna(params.get("param.trigger_size")) and params.get("param.trigger_size") not in (None, ""):
        return f"backdoor target {c} N={n}"
    return scenario_name(c, n)


def collect_runs(uri: str, hashes: set[str], tuned: set[str] = frozenset()) -> pd.DataFrame:
    """The finished runs of this benchmark's params lines (by command hash): tracking.frame,
    with the columns the tables group by (scenario, method, seed, bn_stats) and each run's
    kept-share history. Runs of the `tuned` hashes are named `METHOD (tuned)`."""
    runs = tracking.frame(uri, None, sweep.FINISHED)
    runs = runs[runs["command_hash"].isin(hashes)].reset_index(drop=True)
    if runs.empty:
        return runs
    c = tracking.client(uri)
    return runs.assign(
        seed=runs["param.seed"],
        method=[spec_name(m, a) + (" (tuned)" if h in tuned else "")
                for m, a, h in zip(runs["param.method"], runs["param.addon"], runs["command_hash"])],
        scenario=runs.apply(scenario_of, axis=1),
        # runs made before --bn_stats existed updated the statistics
        bn_stats=runs.get("param.bn_stats", pd.Series("update", index=runs.index)).fillna("update"),
        kept_history=[[m.value for m in sorted(c.get_metric_history(rid, "train/kept_share"), key=lambda m: m.step)]
                      for rid in runs["run_id"]])


def ideal_train_time(path: str | None) -> float:
    if not isinstance(path, str) or not Path(path).is_file():
        return float("nan")
    return float(utils.read_torch_file(path).get("train_time_s", float("nan")))


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """The tables' metrics: TABLE, ASR where backdoor runs are summarised, and the audits the runs made."""
    return (TABLE + (BACKDOOR_TABLE if "ASR" in runs or "ASR_mean" in runs else [])
            + [k for k in AUDIT_TABLE if k in runs or f"{k}_mean" in runs])


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per scenario and method, the ideal and original models first (one reference row per
    seed), then the methods by name: `seeds`, `bn_stats`, `<metric>_mean` and `<metric>_std` over
    seeds, and `kept_history` (the add-ons' kept share per epoch, averaged over seeds)."""
    cols = metric_columns(runs)
    keys = cols + EXTRA
    parts = []
    for scen, group in runs.groupby("scenario", sort=False):
        ref = group.drop_duplicates("seed")
        ideal, orig = (ref.reindex(columns=[f"{prefix}/{k}" for k in cols]).set_axis(cols, axis=1)
                       for prefix in ("ideal", "original"))
        per_run = pd.concat([
            ideal.assign(method="Ideal (retrain)", rUA=1.0, FID_forget=0.0, avg_gap=0.0,
                         RTE=ref["ideal_checkpoint"].map(ideal_train_time)),
            orig.assign(method="Original", rUA=0.0),
            group.sort_values("method", kind="stable"),
        ]).reindex(columns=keys + ["method", "bn_stats", "kept_history"]).astype({k: float for k in keys})
        by = per_run.groupby("method", sort=False)
        stats = by[keys].agg(["mean", "std"])
        stats.columns = [f"{k}_{s}" for k, s in stats.columns]
        for k in keys:  # one seed: std 0, as a spread of one value
            stats[f"{k}_std"] = stats[f"{k}_std"].mask(stats[f"{k}_std"].isna() & stats[f"{k}_mean"].notna(), 0.0)
        stats.insert(0, "bn_stats", by["bn_stats"].agg(lambda v: ",".join(sorted(set(v.dropna())))))
        stats.insert(0, "seeds", by.size())
        stats["kept_history"] = by["kept_history"].agg(_mean_history)
        parts.append(stats.reset_index().assign(scenario=scen))
    front = ["scenario", "method", "seeds", "bn_stats"]
    out = pd.concat(parts, ignore_index=True)
    return out[front + [c for c in out if c not in front]]


def _mean_history(histories: pd.Series) -> list[float]:
    """The element-wise mean of the runs' per-epoch histories, cut to the shortest; [] when none."""
    hist = [h for h in histories if isinstance(h, list) and h]
    if not hist:
        return []
    width = min(len(h) for h in hist)
    return np.mean([h[:width] for h in hist], axis=0).tolist()


def fmt(mean: float, std: float, gap: float | None = None, digits: int = 2) -> str:
    if pd.isna(mean):
        return "-"
    text = f"{mean:.{digits}f} ± {std:.{digits}f}"
    return text + (f" ({gap:.{digits}f})" if gap is not None and not pd.isna(gap) else "")


def markdown(scen: str, table: pd.DataFrame) -> str:
    """One scenario's rows of the aggregate as the Markdown table of the SalUn paper's Table 1."""
    cols = metric_columns(table)
    ideal = table.set_index("method").loc["Ideal (retrain)"]
    head = "| Method | " + " | ".join(cols) + " | rUA | FID (forget) | Avg. Gap | RTE (s) | seeds |"
    lines = [f"### {scen}", "", head, "|" + "---|" * (len(cols) + 6)]
    for _, row in table.iterrows():
        first = row["method"] == "Ideal (retrain)"
        cells = [fmt(row[f"{k}_mean"], row[f"{k}_std"], 0.0 if first else abs(row[f"{k}_mean"] - ideal[f"{k}_mean"]))
                 for k in cols]
        cells += [fmt(row[f"{k}_mean"], row[f"{k}_std"], digits=3 if k == "rUA" else 2) for k in EXTRA]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + f" | {row['seeds']} |")
    lines.append("")
    bn = sorted({b for b in table["bn_stats"] if b})
    lines.append("UA, RA, TA, MIA in %: mean ± std over seeds (|gap| to the ideal model). rUA: 1 = the ideal "
                 "model's UA; - where the ideal and original UA differ by less than 1 point or 5 forget samples' "
                 "worth, too few for a ratio. FID: to the ideal model's logits on the forget set. RTE: unlearning "
                 f"wall time (ideal: retraining time). Batch-norm running statistics during unlearning (`--bn_stats`): "
                 f"{', '.join(bn) or 'update'}."
                 + (" ASR: attack success rate, % of triggered test images of the other classes classified "
                    "as the target (Original: the backdoored model)." if "ASR" in cols else "")
                 + (" Audits (docs/evaluation.md), each asked of every model with the same seed and budget: "
                    "relearn_UA, UA after a short fine-tune on the retain set only; relearn_rounds, rounds of 500 "
                    "samples (retain set plus a tenth of the forget set) until the other nine tenths are as "
                    "accurate as under the original model (the cap: not reached); probe_UA, UA of a linear probe "
                    "on the frozen features; CKA_forget, linear CKA to the ideal model's features on the forget "
                    "set (1: the same)." if set(AUDIT_TABLE) & set(cols) else ""))
    return "\n".join(lines) + "\n"


def _groups(table: pd.DataFrame, tol: float) -> list[tuple[float, float, list]]:
    """Rows whose (TA, UA) means lie within `tol` points of each other, as one point each: the
    trade-off plot labels a shared point once, with every method on it."""
    groups: list[tuple[float, float, list]] = []
    for row in table.itertuples():
        if pd.isna(row.TA_mean):
            continue
        for ta, ua, rows in groups:
            if abs(ta - row.TA_mean) <= tol and abs(ua - row.UA_mean) <= tol:
                rows.append(row)
                break
        else:
            groups.append((row.TA_mean, row.UA_mean, [row]))
    return groups


def tradeoff_plot(plt, table: pd.DataFrame, scen: str, path: Path) -> Path:
    """UA against TA, one numbered point per place: methods that land on the same point (within 2% of
    the plotted span) share one marker and one number, and the legend beside the plot lists each
    number's methods, so none hides another; the ideal model is a star, the original a cross; bars
    are std over seeds."""
    import textwrap

    fig, ax = plt.subplots(figsize=(9, 5))
    special = {"Ideal (retrain)": dict(marker="*", s=260, c="gold", edgecolors="k", zorder=5),
               "Original": dict(marker="X", s=120, c="grey", zorder=4)}
    colours = plt.get_cmap("tab10").colors
    finite = table.dropna(subset=["TA_mean", "UA_mean"])
    span = max(finite["TA_mean"].max() - finite["TA_mean"].min(), finite["UA_mean"].max() - finite["UA_mean"].min(), 1)
    for i, (ta, ua, rows) in enumerate(_groups(table, 0.02 * span), 1):
        names = [r.method for r in rows]
        for r in rows:
            ax.errorbar(r.TA_mean, r.UA_mean, xerr=r.TA_std, yerr=r.UA_std, fmt="none", ecolor="lightgrey", zorder=1)
        style = next((special[n] for n in names if n in special), dict(s=60, color=colours[i % 10], zorder=3))
        label = textwrap.fill(f"{i}: {', '.join(names)}", 38, subsequent_indent="    ")
        ax.scatter(ta, ua, label=label, **style)
        ax.annotate(str(i), (ta, ua), xytext=(5, 4), textcoords="offset points", fontsize=8, fontweight="bold")
    ax.set_xlabel("TA, test accuracy (%): higher is better")
    ax.set_ylabel("UA, unlearning accuracy (%): closer to the ideal star")
    ax.set_title(f"UA vs TA, {scen}: methods on one point (within 2% of the span) share a number", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.margins(x=0.08, y=0.08)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def avg_gap_plot(plt, table: pd.DataFrame, scen: str, path: Path) -> Path:
    """Avg. Gap per method, with two references: 0 is the ideal model, and the dashed line is the
    original model's gap to it (what doing nothing scores)."""
    methods = table[~table["method"].isin(["Ideal (retrain)", "Original"])]
    by = table.set_index("method")
    keys = [k for k in ("UA", "RA", "TA", "MIA") if f"{k}_mean" in by]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.bar(methods["method"], methods["avg_gap_mean"], yerr=methods["avg_gap_std"], color="tab:blue", capsize=3)
    if {"Original", "Ideal (retrain)"} <= set(by.index):
        nothing = avg_gap({k: by.loc["Original", f"{k}_mean"] for k in keys},
                          {k: by.loc["Ideal (retrain)", f"{k}_mean"] for k in keys}, keys)
        ax.axhline(nothing, ls="--", color="grey", lw=1)
        tallest = (methods["avg_gap_mean"] + methods["avg_gap_std"].fillna(0)).max()
        ax.set_ylim(top=1.12 * max(nothing, 0.0 if pd.isna(tallest) else float(tallest)))
        ax.annotate(f"original model: {nothing:.2f}", (0, nothing), xycoords=("axes fraction", "data"),
                    xytext=(2, 3), textcoords="offset points", fontsize=7, color="grey")
    ax.set_ylabel("Avg. Gap to ideal (points)\n0 = the ideal model; lower")
    ax.set_title(f"Avg. Gap, {scen}")
    ax.tick_params(axis="x", rotation=35, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def kept_share_plot(plt, results: pd.DataFrame, path: Path) -> Path | None:
    """The add-ons' kept share per unlearning epoch, whole epochs on the x axis, the legend beside
    the plot (not over the lines); None when no run masked."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 3.8))
    for row in results.itertuples():
        if row.kept_history:
            ax.plot(range(1, len(row.kept_history) + 1), row.kept_history, marker="o",
                    label=f"{row.method}, {row.scenario}")
    if not ax.lines:
        plt.close(fig)
        return None
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("unlearning epoch")
    ax.set_ylabel("share of coordinates kept")
    ax.set_title("Add-ons: kept share per epoch (mean over seeds)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_outputs(results: pd.DataFrame, out: Path, made_by: str = "") -> list[Path]:
    """summary.csv, the Markdown tables and the plots, all read from the aggregate frame; `made_by`
    (the command, commit and machine) heads every Markdown file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = [out / "summary.csv", out / "tables.md"]
    results.drop(columns="kept_history").to_csv(written[0], index=False, na_rep="nan")
    scenarios = list(results.groupby("scenario", sort=False))
    head = f"{made_by}\n\n" if made_by else ""
    written[1].write_text(head + "\n".join(markdown(s, t) for s, t in scenarios))
    for scen, table in scenarios:
        slug = scen.replace(" ", "_").replace("=", "")
        (out / f"table_{slug}.md").write_text(head + markdown(scen, table))
        written.append(out / f"table_{slug}.md")
        written.append(tradeoff_plot(plt, table, scen, out / f"tradeoff_{slug}.png"))
        written.append(avg_gap_plot(plt, table, scen, out / f"avg_gap_{slug}.png"))
    kept = kept_share_plot(plt, results, out / "kept_share.png")
    if kept is not None:
        written.append(kept)
    return written


def main() -> None:
    p = utils.Parser(description=__doc__)
    p.epilog = "presets:\n" + "\n".join(f"  {name:22s} {PRESET_NOTES[name]}" for name in sorted(PRESETS))
    p.add_argument("--preset", default="digits-quick", choices=sorted(PRESETS), metavar="NAME",
                   help="what to run (default digits-quick; the list below)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmark_results/PRESET)")
    p.add_argument("--data", default="./data", help="data folder (default ./data)")
    p.add_argument("--jobs", type=int, default=None, help="lines at a time (default: GPUs, else CPU cores)")
    p.add_argument("--report_only", action="store_true", help="only parse the store and write tables and plots")
    p.add_argument("--quiet", action="store_true", help="no progress bar over the lines")
    p.add_argument("--methods", nargs="+", default=None, metavar="SPEC",
                   help="run these methods (METHOD[+ADDON] or retrain) instead of the preset's, with the preset's "
                        "models, forget sets, seeds and lr (e.g. --preset fashionmnist-zoo --methods NegGrad+ SCRUB)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED",
                   help="run these seeds instead of the preset's (e.g. --seeds 1 for a one-seed look)")
    p.add_argument("--audits", default=None, metavar="NAME[,NAME]",
                   help="add these audits to every unlearning run (relearn, relearn_time, probe, cka; "
                        "docs/evaluation.md) and their columns to the tables")
    p.add_argument("--tuned", type=Path, default=None, metavar="FILE",
                   help="also run the tuned values of tune.py's tuned.json (rows `METHOD (tuned)`); the file must "
                        "come from this preset's setting")
    g = p.add_argument_group("Slurm (submit job arrays instead of running here; then rerun with --report_only)")
    g.add_argument("--slurm", action="store_true", help="write and submit one job array per params file")
    sweep.add_slurm_args(g)
    a = p.parse_args()
    if a.jobs is not None and a.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {a.jobs}")
    out = a.out or Path("benchmark_results") / a.preset
    grid = grid_of(a)
    out.mkdir(parents=True, exist_ok=True)  # after the checks: a refused command writes nothing
    models = out.parent / SHARES_MODELS_WITH[a.preset] if a.preset in SHARES_MODELS_WITH else out
    grid.data, grid.save_root = a.data, str(models / "checkpoints")
    tuned = read_tuned(a.tuned, grid) if a.tuned else None
    command = " ".join(["python benchmark.py", *[x for x in sys.argv[1:] if x != "--report_only"]])
    slurm = sweep.slurm_options(a) if a.slurm else None
    run_grid(grid, out, jobs=a.jobs or sweep.default_jobs(), quiet=a.quiet, tuned=tuned, made_by_command=command,
             report_only=a.report_only, slurm=slurm, name=a.preset)


def grid_of(a: argparse.Namespace) -> Grid:
    """The preset's grid with --methods, --seeds and --audits applied, each checked (one line)."""
    grid = copy.deepcopy(PRESETS[a.preset])
    if a.methods:
        grid.unlearn = checked_methods(a.methods)
    if a.seeds:
        if len(set(a.seeds)) != len(a.seeds) or min(a.seeds) < 0:
            raise UserError(f"--seeds must be distinct non-negative integers, got {' '.join(map(str, a.seeds))}")
        grid.seeds = list(a.seeds)
    if a.audits:
        grid.extra = [*grid.extra, "--audits", ",".join(checked_audits(a.audits))]
    return grid


def checked_audits(text: str) -> list[str]:
    """--audits, checked as mlflow_forget.py checks it (one line naming the bad one)."""
    try:
        return audit_list(text)
    except argparse.ArgumentTypeError as e:
        raise UserError(f"--audits: {e}") from None


def checked_methods(specs: list[str]) -> list[str]:
    """--methods, each checked as --unlearn is (one line naming the bad one)."""
    for spec in specs:
        try:
            parse_unlearn(spec)
        except ValueError as e:
            raise UserError(f"--methods {spec}: {e}") from None
    return list(specs)


def tuned_lines(grid: Grid, tuned: dict) -> list[str]:
    """The params lines of the tuned values in `tuned` (tune.py's tuned.json), for the grid's seeds."""
    from unlearn import ADDONS, METHODS, hyperparameters

    lines = []
    for scen in tuned["scenarios"].values():
        c, n = scen["class_to_replace"], scen["num_indexes_to_replace"]
        for spec, entry in scen["methods"].items():
            m, addon = parse_unlearn(spec)
            best = dict(entry["best"])
            one = copy.deepcopy(grid)
            one.forget, one.unlearn = [(c, n)], [spec]
            one.unlearn_lr, one.unlearn_epochs = [best.pop("lr", None)], [best.pop("epochs", None)]
            one.method_params = {k: [v] for k, v in best.items() if k in hyperparameters(METHODS[m])}
            one.addon_params = {k: [v] for k, v in best.items() if k in hyperparameters(ADDONS[addon])}
            lines += sweep.generate(one)[1]
    return lines


def read_tuned(path: Path, grid: Grid) -> dict:
    """tune.py's tuned.json, checked against the grid it is to be reported with."""
    if not path.is_file():
        raise UserError(f"--tuned {path} not found; make it with: python tune.py --preset NAME --search_only")
    try:
        doc = json.loads(path.read_text())
        mine = {"dataset": grid.datasets[0], "arch": grid.archs[0], "epochs": grid.epochs[grid.datasets[0]],
                "extra_base": grid.extra_base, "extra": grid.extra}
        theirs = {k: doc[k] for k in mine}
        scenarios = {(s["class_to_replace"], s["num_indexes_to_replace"]) for s in doc["scenarios"].values()}
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"--tuned {path} is not a tuned.json of tune.py ({e}); make it again with tune.py") from None
    diff = [f"{k} {theirs[k]!r} (here {mine[k]!r})" for k in mine if theirs[k] != mine[k]]
    stray = sorted(scenarios - {tuple(f) for f in grid.forget}, key=str)
    if diff or stray:
        raise UserError(f"--tuned {path} was made for another setting: "
                        f"{'; '.join(diff + [f'forget scenario {s} not in this preset' for s in stray])}")
    return doc


def run_grid(grid: Grid, out: Path, *, jobs: int, quiet: bool, tuned: dict | None, made_by_command: str,
             report_only: bool, slurm: sweep.SlurmOptions | None = None, name: str = "") -> None:
    """Write the params files of `grid` (and of `tuned` values), run them here or submit them to Slurm,
    then write the tables and plots from the MLflow store in `out`."""
    name = name or out.name
    uri = f"sqlite:///{(out / 'mlruns' / 'mlflow.db').resolve()}"
    base, params = sweep.generate(grid)
    extra = [line for line in tuned_lines(grid, tuned) if line not in params] if tuned else []
    (out / "base_params.txt").write_text("\n".join(base) + "\n")
    (out / "params.txt").write_text("\n".join(params + extra) + "\n")
    print(f"{name}: {len(base)} base lines, {len(params) + len(extra)} unlearning runs"
          + (f" ({len(extra)} tuned)" if tuned else "") + f" -> {out}")
    t0 = time.perf_counter()
    base_lines, param_lines = sweep.read_params(out / "base_params.txt"), sweep.read_params(out / "params.txt")
    tuned_hashes = {line.hash for line in param_lines[len(params):]}
    if slurm is not None:
        sweep.submit_files([(out / "base_params.txt", base_lines), (out / "params.txt", param_lines)], slurm,
                           out / "logs", uri)
        print(f"when the jobs are done: {made_by_command} --report_only")
        return
    if not report_only:
        failed = 0
        for part, lines in (("base", base_lines), ("sweep", param_lines)):
            res = sweep.run_local(lines, jobs, out / "logs" / part, uri, progress=not quiet)
            failed += sweep.report(res, part)
        if failed:
            print(f"warning: {failed} lines failed; the tables use the runs that finished")
    rows = collect_runs(uri, {line.hash for line in param_lines}, tuned_hashes)
    if rows.empty:
        raise UserError(f"no finished runs of {name} in {uri}; run without --report_only first")
    made_by = (f"Made by `{made_by_command}` at commit {utils.git_commit()} on {utils.machine()}, "
               f"{datetime.date.today().isoformat()}"
               + (" (tables rewritten from its MLflow store by --report_only)." if report_only else "."))
    written = write_outputs(aggregate(rows), out, made_by)
    print(f"{len(rows)} runs summarised in {time.perf_counter() - t0:.0f} s:")
    for w in written:
        print(f"  {w}")
    store = (out / "mlruns" / "mlflow.db").resolve()
    print(f"the runs: python mlruns_parser.py --tracking_uri sqlite:///{store} --output {out / 'mlruns_parsed.csv'}")
    print(f"          mlflow ui --backend-store-uri sqlite:///{store}")


if __name__ == "__main__":
    run_main(main)
