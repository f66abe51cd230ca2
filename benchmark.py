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
import csv
import math
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import sweep
import tracking
from sweep import Grid
from unlearn import spec_name
from utils import UserError, run_main

DIGITS_METHODS = ["GA", "GA+Mask", "GA+VarGrad", "NegGrad+", "NegGrad+VarGrad", "FT", "RL", "SalUn"]
PRESETS: dict[str, Grid] = {
    # same lr and epochs for every method: a quick, fair look at what the add-ons change
    "digits-quick": Grid(datasets=["digits"], archs=["smallcnn"], seeds=[1, 2, 3], epochs={"digits": 30},
                         forget=[(-1, 100), (3, None)], unlearn=DIGITS_METHODS, unlearn_lr=[0.01],
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
# the methods the zoo added, on the fashionmnist preset's models and forget sets, each method's own recipe
PRESETS["fashionmnist-zoo"] = Grid(datasets=["fashionmnist"], archs=["convnet"], seeds=[1, 2, 3],
                                   epochs={"fashionmnist": 8}, forget=[(-1, 5400), (0, None)], unlearn=ZOO_NEW,
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
# presets that train exactly the models of another: they share its checkpoints folder (beside --out)
SHARES_MODELS_WITH = {"zoo": "digits-quick", "fashionmnist-zoo": "fashionmnist"}
TABLE = ["UA", "RA", "TA", "MIA"]  # shown as mean +- std (gap to ideal)
BACKDOOR_TABLE = ["ASR"]  # backdoor runs add the attack success rate
EXTRA = ["rUA", "FID_forget", "avg_gap", "RTE"]


def scenario_of(params: dict) -> str:
    c, n = params.get("param.class_to_replace", "0"), params.get("param.num_indexes_to_replace", "None")
    if params.get("param.trigger_size") not in (None, ""):
        return f"backdoor target {c} N={n}"
    return f"random N={n}" if c == "-1" else (f"class {c}" if n in ("None", "") else f"class {c} N={n}")


def mean_std(values: list[float]) -> tuple[float, float]:
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return float("nan"), float("nan")
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def collect_runs(uri: str, hashes: set[str]) -> list[dict]:
    """The finished runs of this benchmark's params lines (by command hash)."""
    import mlruns_parser

    c = tracking.client(uri)
    rows = []
    for run, exp in mlruns_parser.runs(uri, None, sweep.FINISHED):
        if run.data.tags.get("command_hash") not in hashes:
            continue
        row = mlruns_parser.flat_row(run, exp)
        row["seed"] = row["param.seed"]
        row["run_name"] = spec_name(row["param.method"], row["param.addon"])
        row["scenario"] = scenario_of(row)
        row["kept_history"] = [m.value for m in sorted(c.get_metric_history(row["run_id"], "train/kept_share"),
                                                       key=lambda m: m.step)]
        row["ideal_checkpoint"] = run.data.tags.get("ideal_checkpoint")
        row["bn_stats"] = row.get("param.bn_stats", "update")  # runs made before the flag existed updated them
        rows.append(row)
    return rows


def ideal_train_time(path: str | None) -> float:
    import torch

    if not path or not Path(path).is_file():
        return float("nan")
    return float(torch.load(path, map_location="cpu", weights_only=False).get("train_time_s", float("nan")))


def aggregate(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """scenario -> method -> {metric: (mean, std)}, with the ideal and original models first."""
    by = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by[r["scenario"]][r["run_name"]].append(r)
    out: dict[str, dict[str, dict]] = {}
    for scen, methods in by.items():
        table: dict[str, dict] = {}
        per_seed = {r["seed"]: r for runs in methods.values() for r in runs}  # one reference row per seed
        cols = TABLE + (BACKDOOR_TABLE if any("ASR" in r for r in per_seed.values()) else [])
        ideal = {k: [r.get(f"ideal/{k}", float("nan")) for r in per_seed.values()] for k in cols}
        ideal |= {"rUA": [1.0], "FID_forget": [0.0], "avg_gap": [0.0],
                  "RTE": [ideal_train_time(r["ideal_checkpoint"]) for r in per_seed.values()]}
        table["Ideal (retrain)"] = {k: mean_std(v) for k, v in ideal.items()} | {"n": len(per_seed)}
        orig = {k: [r.get(f"original/{k}", float("nan")) for r in per_seed.values()] for k in cols}
        table["Original"] = {k: mean_std(v) for k, v in orig.items()} | {"rUA": (0.0, 0.0), "n": len(per_seed)}
        for name in sorted(methods):
            runs = methods[name]
            table[name] = {k: mean_std([r.get(k, float("nan")) for r in runs]) for k in cols + EXTRA}
            table[name]["n"] = len(runs)
            table[name]["bn_stats"] = ",".join(sorted({r.get("bn_stats", "update") for r in runs}))
            hist = [r["kept_history"] for r in runs if r["kept_history"]]
            if hist:
                width = min(len(h) for h in hist)
                table[name]["kept_history"] = np.mean([h[:width] for h in hist], axis=0).tolist()
        out[scen] = table
    return out


def table_columns(results: dict[str, dict[str, dict]]) -> list[str]:
    """The table's metric columns: TABLE, and ASR where backdoor runs are summarised."""
    return TABLE + (BACKDOOR_TABLE if any("ASR" in t["Original"] for t in results.values()) else [])


def fmt(ms: tuple[float, float], gap: float | None = None, digits: int = 2) -> str:
    m, s = ms
    if math.isnan(m):
        return "-"
    text = f"{m:.{digits}f} ± {s:.{digits}f}"
    return text + (f" ({gap:.{digits}f})" if gap is not None and not math.isnan(gap) else "")


def markdown(scen: str, table: dict[str, dict]) -> str:
    ideal = table["Ideal (retrain)"]
    cols = table_columns({scen: table})
    head = "| Method | " + " | ".join(cols) + " | rUA | FID (forget) | Avg. Gap | RTE (s) | seeds |"
    lines = [f"### {scen}", "", head, "|" + "---|" * (len(cols) + 6)]
    for name, row in table.items():
        cells = [fmt(row[k], abs(row[k][0] - ideal[k][0]) if name != "Ideal (retrain)" else 0.0) for k in cols]
        cells += [fmt(row.get(k, (float("nan"), 0)), digits=3 if k == "rUA" else 2) for k in EXTRA]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['n']} |")
    lines.append("")
    bn = sorted({row["bn_stats"] for row in table.values() if "bn_stats" in row})
    lines.append("UA, RA, TA, MIA in %: mean ± std over seeds (|gap| to the ideal model). rUA: 1 = the ideal "
                 "model's UA. FID: to the ideal model's logits on the forget set. RTE: unlearning wall time "
                 f"(ideal: retraining time). Batch-norm running statistics during unlearning (`--bn_stats`): "
                 f"{', '.join(bn) or 'update'}."
                 + (" ASR: attack success rate, % of triggered test images of the other classes classified "
                    "as the target (Original: the backdoored model)." if "ASR" in cols else ""))
    return "\n".join(lines) + "\n"


def write_outputs(results: dict[str, dict[str, dict]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    with (out / "summary.csv").open("w", newline="") as f:
        w = csv.writer(f)
        keys = table_columns(results) + EXTRA
        w.writerow(["scenario", "method", "seeds", "bn_stats"] + [f"{k}_{s}" for k in keys for s in ("mean", "std")])
        for scen, table in results.items():
            for name, row in table.items():
                w.writerow([scen, name, row["n"], row.get("bn_stats", "")]
                           + [x for k in keys for x in row.get(k, (float("nan"),) * 2)])
    written.append(out / "summary.csv")
    md = "\n".join(markdown(s, t) for s, t in results.items())
    (out / "tables.md").write_text(md)
    written.append(out / "tables.md")
    for scen, table in results.items():
        slug = scen.replace(" ", "_").replace("=", "")
        (out / f"table_{slug}.md").write_text(markdown(scen, table))
        written.append(out / f"table_{slug}.md")
        # UA versus TA: the trade-off, with the ideal model marked
        fig, ax = plt.subplots(figsize=(6, 4.5))
        colours, markers = plt.get_cmap("tab10").colors, "os^DvP<>hp"
        for i, (name, row) in enumerate(table.items()):
            (ta, ta_s), (ua, ua_s) = row["TA"], row["UA"]
            if math.isnan(ta):
                continue
            style = {"Ideal (retrain)": dict(marker="*", s=250, c="gold", edgecolors="k", zorder=5),
                     "Original": dict(marker="X", s=120, c="grey", zorder=4)}.get(
                name, dict(s=60, color=colours[i % 10], marker=markers[i % len(markers)], alpha=0.85))
            ax.errorbar(ta, ua, xerr=ta_s, yerr=ua_s, fmt="none", ecolor="lightgrey", zorder=1)
            ax.scatter(ta, ua, label=name, **style)
        ax.set_xlabel("TA, test accuracy (%)  - higher is better")
        ax.set_ylabel("UA, unlearning accuracy (%)  - closer to ideal")
        ax.set_title(f"UA vs TA, {scen}")
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        fig.savefig(out / f"tradeoff_{slug}.png", dpi=110)
        plt.close(fig)
        written.append(out / f"tradeoff_{slug}.png")
        # Avg. Gap per method
        names = [n for n in table if n not in ("Ideal (retrain)", "Original")]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar(names, [table[n]["avg_gap"][0] for n in names], yerr=[table[n]["avg_gap"][1] for n in names],
               color="tab:blue", capsize=3)
        ax.set_ylabel("Avg. Gap to ideal (points) - lower")
        ax.set_title(f"Avg. Gap, {scen}")
        ax.tick_params(axis="x", rotation=35, labelsize=8)
        fig.tight_layout()
        fig.savefig(out / f"avg_gap_{slug}.png", dpi=110)
        plt.close(fig)
        written.append(out / f"avg_gap_{slug}.png")
    # kept share per epoch of the add-on runs
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for scen, table in results.items():
        for name, row in table.items():
            if "kept_history" in row:
                h = row["kept_history"]
                ax.plot(range(1, len(h) + 1), h, marker="o", label=f"{name}, {scen}")
    if ax.lines:
        ax.set_xlabel("unlearning epoch")
        ax.set_ylabel("share of coordinates kept")
        ax.set_title("Add-ons: kept share per epoch (mean over seeds)")
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "kept_share.png", dpi=110)
        written.append(out / "kept_share.png")
    plt.close(fig)
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="digits-quick", choices=sorted(PRESETS))
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmark_results/PRESET)")
    p.add_argument("--data", default="./data", help="data folder (default ./data)")
    p.add_argument("--jobs", type=int, default=None, help="lines at a time (default: GPUs, else CPU cores)")
    p.add_argument("--report_only", action="store_true", help="only parse the store and write tables and plots")
    p.add_argument("--quiet", action="store_true")
    g = p.add_argument_group("Slurm (submit instead of running here)")
    g.add_argument("--slurm", action="store_true")
    g.add_argument("--partition", default=None)
    g.add_argument("--gpus", type=int, default=1)
    g.add_argument("--time", default="08:00:00")
    g.add_argument("--max_parallel", type=int, default=8)
    a = p.parse_args()
    if a.jobs is not None and a.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {a.jobs}")
    out = a.out or Path("benchmark_results") / a.preset
    out.mkdir(parents=True, exist_ok=True)
    grid = copy.deepcopy(PRESETS[a.preset])
    models = out.parent / SHARES_MODELS_WITH[a.preset] if a.preset in SHARES_MODELS_WITH else out
    grid.data, grid.save_root = a.data, str(models / "checkpoints")
    uri = f"sqlite:///{(out / 'mlruns' / 'mlflow.db').resolve()}"
    base, params = sweep.generate(grid)
    (out / "base_params.txt").write_text("\n".join(base) + "\n")
    (out / "params.txt").write_text("\n".join(params) + "\n")
    print(f"{a.preset}: {len(base)} base lines, {len(params)} unlearning runs -> {out}")
    t0 = time.perf_counter()
    base_lines, param_lines = sweep.read_params(out / "base_params.txt"), sweep.read_params(out / "params.txt")
    if a.slurm:
        opts = sweep.SlurmOptions(partition=a.partition, gpus=a.gpus, time=a.time, max_parallel=a.max_parallel)
        sweep.submit_files([(out / "base_params.txt", base_lines), (out / "params.txt", param_lines)], opts,
                           out / "logs", uri)
        print(f"when the jobs are done: python benchmark.py --preset {a.preset} --out {out} --report_only")
        return
    if not a.report_only:
        jobs = a.jobs or sweep.default_jobs()
        failed = 0
        for name, lines in (("base", base_lines), ("sweep", param_lines)):
            res = sweep.run_local(lines, jobs, out / "logs" / name, uri, progress=not a.quiet)
            failed += sweep.report(res, name)
        if failed:
            print(f"warning: {failed} lines failed; the tables use the runs that finished")
    rows = collect_runs(uri, {line.hash for line in param_lines})
    if not rows:
        raise UserError(f"no finished runs of preset {a.preset} in {uri}; run without --report_only first")
    written = write_outputs(aggregate(rows), out)
    print(f"{len(rows)} runs summarised in {time.perf_counter() - t0:.0f} s:")
    for w in written:
        print(f"  {w}")


if __name__ == "__main__":
    run_main(main)
