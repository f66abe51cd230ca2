"""One privacy table from the tables of main_audit.py's three audits (`main_audit.py --combine`).

Reads the CSVs that `--audit ulira`, `--audit epsilon` and `--audit klom` write beside their tables
(any number of each; a later file's row of a method replaces an earlier one) and puts, per method:
the SVC population attack, U-LiRA's AUC and TPR at 1% FPR, the challenge score, and KLoM's 95th
percentiles on the forget, retain and validation sets. Below it: how each score ranks the methods
(best first), Spearman's rho between every two rankings, and what an add-on changes on each score
for every METHOD / METHOD+ADDON pair in the table. Every figure is read from the CSVs, none computed
again; the header quotes the command and the tables it read.
"""

from __future__ import annotations

import csv
import math
import shlex
import sys
from pathlib import Path

import utils
from experiments.privacy import save_table
from unlearn import parse_unlearn
from utils import UserError

# (csv column, header, which audit writes it, how a method's value becomes a distance to the ideal)
COLUMNS = [
    ("SVC_MIA", "SVC MIA", "klom", "retrain"),
    ("ulira_auc", "U-LiRA AUC", "ulira", "50"),
    ("ulira_tpr_at_1pct", "U-LiRA TPR@1%", "ulira", None),
    ("challenge_score", "challenge score", "epsilon", "higher"),
    ("challenge_score_half", "challenge score, K/2", "epsilon", None),
    ("epsilon_mean", "mean epsilon", "epsilon", None),
    ("klom_p95_forget", "KLoM P95 forget", "klom", "lower"),
    ("klom_p95_retain", "KLoM P95 retain", "klom", None),
    ("klom_p95_val", "KLoM P95 val", "klom", None),
    ("klom_p95_forget_half", "KLoM P95 forget, K/2", "klom", None),
]
# the scores whose rankings are compared: (column, name)
RANKED = [("SVC_MIA", "SVC MIA (distance to retrain's)"), ("ulira_auc", "U-LiRA (AUC distance to 50)"),
          ("challenge_score", "challenge score"), ("klom_p95_forget", "KLoM P95 on the forget set")]
REFERENCE_ROWS = {"ulira": "Controls (retrained)", "epsilon": "Oracles vs oracles (noise floor)",
                  "klom": "Oracles vs oracles (noise floor)"}


def kind_of(columns: list[str], path: Path) -> str:
    for kind, key in (("ulira", "ulira_auc"), ("epsilon", "challenge_score"), ("klom", "klom_p95_forget")):
        if key in columns:
            return kind
    raise UserError(f"--combine {path}: not a table of main_audit.py (no ulira_auc, challenge_score or "
                    f"klom_p95_forget column); give the CSVs that main_audit.py --table writes")


def read(paths: list[str]) -> dict[str, dict[str, dict]]:
    """audit -> method -> its row (numbers), from every CSV in `paths`."""
    tables: dict[str, dict[str, dict]] = {}
    for p in map(Path, paths):
        if p.suffix != ".csv":
            p = p.with_suffix(".csv")
        if not p.is_file():
            raise UserError(f"--combine {p} not found; give the CSVs that main_audit.py --table writes")
        with p.open(newline="") as f:
            reader = csv.DictReader(f)
            kind = kind_of(reader.fieldnames or [], p)
            rows = tables.setdefault(kind, {})
            for row in reader:  # a method that diverged has no figures: its cells stay empty
                rows[row["method"]] = {k: float(v) for k, v in row.items()
                                       if k not in ("method", "diverged") and v not in ("", None)}
    return tables


def value(tables: dict, kind: str, method: str, key: str) -> float | None:
    rows = tables.get(kind, {})
    row = rows.get(method) or (rows.get(REFERENCE_ROWS[kind]) if method == "retrain" else None)
    return None if row is None else row.get(key)


def distance(tables: dict, method: str, key: str) -> float | None:
    """How far `method` is from the ideal on the score `key` (lower is better)."""
    kind, rule = next((k, r) for c, _, k, r in COLUMNS if c == key)
    v = value(tables, kind, method, key)
    if v is None:
        return None
    if rule == "retrain":
        ideal = value(tables, kind, "retrain", key)
        return None if ideal is None else abs(v - ideal)
    return abs(v - 50) if rule == "50" else (-v if rule == "higher" else v)


def combine(tables: dict) -> tuple[list[str], list[dict], dict]:
    """The Markdown lines of the combined table and its analysis, its rows, and the rank correlations."""
    from scipy.stats import spearmanr

    methods = list(dict.fromkeys(m for kind in ("ulira", "epsilon", "klom") for m in tables.get(kind, {})
                                 if m not in REFERENCE_ROWS.values() and not m.startswith(("Shadows", "Originals"))))
    if "retrain" in methods:
        methods.remove("retrain")
    rows = []
    for m in [*methods, "retrain"]:
        rows.append({"method": m, **{c: v for c, _, kind, _ in COLUMNS
                                     if (v := value(tables, kind, m, c)) is not None}})
    cols = [c for c in COLUMNS if any(c[0] in r for r in rows)]  # the columns some table gave
    lines = ["| method | " + " | ".join(h for _, h, _, _ in cols) + " |", "|" + " --- |" * (len(cols) + 1)]
    for row in rows:
        lines.append(f"| {row['method']} | " + " | ".join(_cell(row.get(c), c) for c, _, _, _ in cols) + " |")
    ranked = [(key, name) for key, name in RANKED if any(c == key for c, _, _, _ in cols)]
    common = [m for m in methods if all(distance(tables, m, key) is not None for key, _ in ranked)]
    rho = {}
    if len(common) >= 3 and len(ranked) >= 2:
        lines += ["", f"Rankings of the {len(common)} methods every score covers, best first:"]
        for key, name in ranked:
            d = {m: distance(tables, m, key) for m in common}
            lines.append(f"* {name}: " + ", ".join(m for m in sorted(common, key=lambda m: d[m])))
        lines += ["", "Spearman's rho between the rankings (1: the same order, -1: reversed):", "",
                  "| | " + " | ".join(n.split(" (")[0] for _, n in ranked) + " |", "|" + " --- |" * (len(ranked) + 1)]
        for a_key, a_name in ranked:
            cells = []
            for b_key, _ in ranked:
                r = spearmanr([distance(tables, m, a_key) for m in common],
                              [distance(tables, m, b_key) for m in common]).statistic
                rho[(a_key, b_key)] = float(r)
                cells.append("n/a" if math.isnan(r) else f"{r:.2f}")
            lines.append(f"| {a_name.split(' (')[0]} | " + " | ".join(cells) + " |")
    pairs = addon_pairs(methods)
    if pairs:
        lines += ["", "What the add-on changes (METHOD+ADDON minus METHOD; - means the table lacks the score):", "",
                  "| pair | " + " | ".join(h for _, h, _, _ in cols) + " |", "|" + " --- |" * (len(cols) + 1)]
        by = {r["method"]: r for r in rows}
        for base, other in pairs:
            cells = [_cell(by[other][c] - by[base][c], c, signed=True) if c in by[other] and c in by[base] else "-"
                     for c, _, _, _ in cols]
            lines.append(f"| {other} vs {base} | " + " | ".join(cells) + " |")
    return lines, rows, rho


def addon_pairs(methods: list[str]) -> list[tuple[str, str]]:
    """(METHOD, METHOD+ADDON) for every add-on row whose plain method is in the table too (tuned rows
    pair with tuned rows)."""
    pairs = []
    for m in methods:
        suffix = " (tuned)" if m.endswith(" (tuned)") else ""
        try:
            method, addon = parse_unlearn(m.removesuffix(" (tuned)"))
        except ValueError:
            continue
        if addon != "none" and method + suffix in methods:
            pairs.append((method + suffix, m))
    return pairs


def _cell(v: float | None, key: str, signed: bool = False) -> str:
    if v is None:
        return ""
    digits = 1 if key in ("SVC_MIA", "ulira_auc", "ulira_tpr_at_1pct") else 3
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def main(args) -> list[dict]:
    tables = read(args.combine)
    if not args.table:
        raise UserError("--combine needs --table FILE.md: where the combined table goes")
    lines, rows, _ = combine(tables)
    head = ["# Privacy scores side by side", "",
            f"Made by `{shlex.join(['python', Path(sys.argv[0]).name, *sys.argv[1:]])}` at commit "
            f"{utils.git_commit()} on {utils.machine()}, from the tables it names (each quotes its own command). "
            "Distances to the ideal: the SVC MIA to retrain's value, U-LiRA's AUC to 50 (chance), the challenge "
            "score higher is better, KLoM lower is better (retrain's row is the oracles' noise floor). The SVC MIA "
            "is the KLoM audit's (the unlearned originals, the forget set the audits name). `K/2`: K/2 models against "
            "the other K/2 oracles, the sizes of the noise floor in retrain's row.", ""]
    save_table(Path(args.table), head + lines, rows)
    return rows

