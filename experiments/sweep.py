"""Sweeps: a grid becomes params files, and params files run locally (in parallel,
resumable) or as Slurm job arrays.

The protocol of the papers' code: (1) the grid, in array_param_file.py, writes
`base_params.txt` (original and ideal models) and `params.txt` (one
mlflow_forget.py line per configuration); (2) every base line runs; (3) every
params line runs; results land in MLflow and mlruns_parser.py makes the CSV.

A line is identified by the hash of its command (script name and arguments,
without the interpreter). mlflow_forget.py stores that hash as the run tag
`command_hash`, and main_baseline.py / main_ideal.py store it in the forget-set
record beside their checkpoint, so a rerun skips lines that already finished.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, fields
from pathlib import Path

from dataset import DATASETS
from experiments import backdoor, tracking, trainer
from experiments import forget as forget_run
from models import list_models
from unlearn import ADDONS, METHODS, hyperparameters, parse_unlearn
from utils import REPO, UserError, command_hash, script_argv

SCRIPTS = ("main_baseline.py", "main_ideal.py", "mlflow_forget.py", "main_backdoor.py")
FINISHED = "attributes.status = 'FINISHED'"


# ---------------------------------------------------------------- generation
@dataclass
class Grid:
    """What a sweep covers. Each list is one axis; every combination is one line."""

    datasets: list[str]
    archs: list[str]
    seeds: list[int]
    epochs: dict[str, int]  # training epochs of the original / ideal models, per data set
    forget: list[tuple[int, int | None]]  # (class_to_replace, num_indexes_to_replace); None = whole class
    unlearn: list[str]
    unlearn_lr: list[float | None] = field(default_factory=lambda: [None])  # None: the method's default
    unlearn_epochs: list[int | None] = field(default_factory=lambda: [None])
    addon_params: dict[str, list] = field(default_factory=dict)  # e.g. {"beta": [0.9], "quantile": [0.55]}
    method_params: dict[str, list] = field(default_factory=dict)  # e.g. {"alpha": [0.99]}
    data: str = "./data"
    save_root: str = "./results"
    extra_base: list[str] = field(default_factory=list)  # more main_baseline/main_ideal arguments
    extra: list[str] = field(default_factory=list)  # more mlflow_forget arguments
    # backdoor cleansing instead of forgetting: main_backdoor.py lines with these trigger flags, each
    # forget pair (C, N) then the target class and the number of poisoned samples; extra_base (the
    # training recipe) goes on every line, since each main_backdoor.py line names its models' recipe
    backdoor: list[str] | None = None

    def save_dir(self, dataset: str) -> str:
        return f"{self.save_root}/{dataset}"


def validate(grid: Grid) -> None:
    """Fail at generation, not hours later, on a name nothing knows."""
    for d in grid.datasets:
        if d not in DATASETS:
            raise UserError(f"grid: unknown data set {d!r}; choices: {', '.join(sorted(DATASETS))}")
        if d not in grid.epochs:
            raise UserError(f"grid: no training epochs given for data set {d!r}")
    for a in grid.archs:
        if a not in list_models():
            raise UserError(f"grid: unknown architecture {a!r}; choices: {', '.join(list_models())}")
    for spec in grid.unlearn:
        try:
            parse_unlearn(spec)
        except ValueError as e:
            raise UserError(f"grid: {e}") from None
    known_m = {f for c in METHODS.values() for f in hyperparameters(c)}
    known_a = {f for c in ADDONS.values() for f in hyperparameters(c)}
    for name in grid.method_params:
        if name not in known_m:
            raise UserError(f"grid: no method has a hyper-parameter {name!r}; known: {', '.join(sorted(known_m))}")
    for name in grid.addon_params:
        if name not in known_a:
            raise UserError(f"grid: no add-on has a hyper-parameter {name!r}; known: {', '.join(sorted(known_a))}")


def _flag(name: str, value) -> list[str]:
    return [] if value is None else [f"--{name}", str(value)]


def generate(grid: Grid, python: str = "python -u") -> tuple[list[str], list[str]]:
    """(base lines, params lines): complete, copy-pasteable commands, without duplicates."""
    validate(grid)
    base, params = [], []
    for d, arch, seed in itertools.product(grid.datasets, grid.archs, grid.seeds):
        common = ["--data", grid.data, "--dataset", d, "--arch", arch, "--seed", str(seed),
                  "--epochs", str(grid.epochs[d]), "--save_dir", grid.save_dir(d)]
        if grid.backdoor is None:
            base.append(shlex.join(["main_baseline.py", *common, *grid.extra_base]))
        for c, n in grid.forget:
            forget = ["--class_to_replace", str(c), *_flag("num_indexes_to_replace", n)]
            if grid.backdoor is None:
                script = "mlflow_forget.py"
                base.append(shlex.join(["main_ideal.py", *common, *grid.extra_base, *forget]))
            else:  # the backdoored and the ideal model train apart (the ideal never sees the poisoned set)
                script, forget = "main_backdoor.py", [*forget, *grid.backdoor, *grid.extra_base]
                base += [shlex.join(["main_backdoor.py", *common, *forget, "--train_only", which])
                         for which in ("backdoored", "ideal")]
            for spec, lr, ep in itertools.product(grid.unlearn, grid.unlearn_lr, grid.unlearn_epochs):
                m, a = parse_unlearn(spec)
                # only the hyper-parameters this method and add-on have: no duplicate lines that differ
                # in a flag the run ignores
                axes = {k: v for k, v in grid.method_params.items() if k in hyperparameters(METHODS[m])}
                axes |= {k: v for k, v in grid.addon_params.items() if k in hyperparameters(ADDONS[a])}
                for values in itertools.product(*axes.values()):
                    hp = [x for k, v in zip(axes, values) for x in _flag(k, v)]
                    params.append(shlex.join([
                        script, "--save_dir", grid.save_dir(d), "--unlearn", spec,
                        *_flag("unlearn_epochs", ep), *_flag("unlearn_lr", lr), "--data", grid.data,
                        "--dataset", d, "--seed", str(seed), "--arch", arch, "--epochs", str(grid.epochs[d]),
                        *forget, *hp, *grid.extra]))
    dedup = lambda xs: list(dict.fromkeys(xs))  # noqa: E731  (keeps the order)
    base, params = dedup(base), dedup(params)
    return [f"{python} {line}" for line in base], [f"{python} {line}" for line in params]


# ------------------------------------------------------------------- reading
@dataclass
class Line:
    number: int  # 1-based, as Slurm's array index
    text: str
    argv: list[str]  # [script, *args]

    @property
    def hash(self) -> str:
        return command_hash(self.argv)


@functools.cache  # one parser per script, not one per line of a long params file
def _parser_of(script: str) -> argparse.ArgumentParser:
    if script == "mlflow_forget.py":
        return forget_run.build_parser("")
    if script == "main_backdoor.py":
        return backdoor.build_parser("")
    return trainer.build_parser("")


INTERPRETER = re.compile(r"(.*/)?python(\d+(\.\d+)?)?$")


def read_params(path: Path) -> list[Line]:
    """Every non-blank, non-comment line, checked with its script's own argument parser: an
    interpreter (python, python3, a path to one), one of SCRIPTS, and arguments that script takes.
    Every bad line is reported, with its number, in one error."""
    if not path.is_file():
        raise UserError(f"params file {path} not found; write it with: python array_param_file.py")
    lines, bad = [], []
    for i, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        try:
            tokens = shlex.split(text)
            argv = script_argv(tokens)
        except ValueError as e:
            bad.append(f"{path}:{i}: malformed line ({e}): {text[:120]}")
            continue
        head = tokens[:next(j for j, t in enumerate(tokens) if t.endswith(".py"))]
        if not head or not INTERPRETER.match(head[0]) or any(not t.startswith("-") for t in head[1:]):
            bad.append(f"{path}:{i}: {' '.join(head) or '(nothing)'} is not a Python interpreter (python, python3, "
                       f"or a path to one, with its flags) before {argv[0]}")
            continue
        if argv[0] not in SCRIPTS:
            bad.append(f"{path}:{i}: {argv[0]} is not one of {', '.join(SCRIPTS)}")
            continue
        err = io.StringIO()
        parser = _parser_of(argv[0])
        parser.prog = argv[0]  # its errors name the script of the line, not run_params.py
        try:
            with contextlib.redirect_stderr(err):
                parser.parse_args(argv[1:])
        except SystemExit:
            msg = err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "bad arguments"
            bad.append(f"{path}:{i}: {msg}")
            continue
        lines.append(Line(i, text, argv))
    if bad:
        raise UserError(f"{len(bad)} bad line{'s' if len(bad) > 1 else ''}, nothing run:\n" + "\n".join(bad))
    return lines


# ------------------------------------------------------------------- done?
def finished_hashes(lines: list[Line], tracking_uri: str | None) -> set[str]:
    """Hashes of lines already done: FINISHED MLflow runs, and base checkpoints on disk."""
    done: set[str] = set()
    if any(logs_to_mlflow(line) for line in lines):
        uri = tracking.resolve_uri(tracking_uri)
        db = tracking.sqlite_path(uri)
        if db is None or db.is_file():
            done |= set(tracking.frame(uri, None, FINISHED)["command_hash"].dropna())
    dirs = {Path(flag_value(line.argv, "--save_dir") or "./results") for line in lines
            if line.argv[0] != "mlflow_forget.py"}
    for d in dirs:
        for record in d.glob("*.forget.json"):
            with contextlib.suppress(OSError, ValueError):
                h = json.loads(record.read_text()).get("command_hash")
                if h and record.with_name(record.name.replace(".forget.json", ".pth.tar")).is_file():
                    done.add(h)
    return done


def logs_to_mlflow(line: Line) -> bool:
    """An unlearning line: mlflow_forget.py, or main_backdoor.py without --train_only."""
    return line.argv[0] == "mlflow_forget.py" or (line.argv[0] == "main_backdoor.py"
                                                   and "--train_only" not in line.argv)


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value following `flag` in an argument list, or None."""
    return argv[argv.index(flag) + 1] if flag in argv and argv.index(flag) + 1 < len(argv) else None


# ------------------------------------------------------------------- running
@dataclass
class Result:
    line: Line
    status: str  # "ok", "failed", "skipped"
    returncode: int = 0
    log: Path | None = None
    seconds: float = 0.0


def default_jobs() -> int:
    import torch

    return torch.cuda.device_count() or os.cpu_count() or 1


def command_of(line: Line) -> list[str]:
    """What runs a line: its script and arguments, with --resume for the training scripts, so an
    interrupted training continues where it stopped (the line's hash stays the line's own)."""
    resume = ["--resume"] if line.argv[0] in ("main_baseline.py", "main_ideal.py") and "--resume" not in line.argv \
        else []
    return [sys.executable, "-u", str(REPO / line.argv[0]), *line.argv[1:], *resume]


def run_line(line: Line, log: Path, env: dict[str, str]) -> Result:
    """Run one line from the repository root, its output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log.open("w") as f:
        f.write(f"# line {line.number}: {line.text}\n")
        f.flush()
        proc = subprocess.run(command_of(line), cwd=Path.cwd(), stdout=f, stderr=subprocess.STDOUT, env=env)
    status = "ok" if proc.returncode == 0 else "failed"
    return Result(line, status, proc.returncode, log, time.perf_counter() - t0)


def run_local(lines: list[Line], jobs: int, log_dir: Path, tracking_uri: str | None = None,
              progress: bool = True) -> list[Result]:
    """Run lines `jobs` at a time; finished ones are skipped; a failure never stops the others."""
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    uri = tracking.resolve_uri(tracking_uri)
    if any(logs_to_mlflow(line) for line in lines):
        tracking.client(uri)  # builds a new sqlite store once, before the crowd
    done = finished_hashes(lines, uri)
    results = [Result(line, "skipped") for line in lines if line.hash in done]
    todo = [line for line in lines if line.hash not in done]
    import torch
    from tqdm import tqdm

    gpus = torch.cuda.device_count()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    slots = list(range(jobs))

    def env_for(slot: int) -> dict[str, str]:
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": str(threads),
               "PYTHONWARNINGS": "ignore"}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
        return env

    lock = threading.Lock()

    def work(line: Line) -> Result:
        with lock:
            slot = slots.pop(0)
        try:
            return run_line(line, log_dir / f"line{line.number:04d}.log", env_for(slot))
        finally:
            with lock:
                slots.append(slot)

    bar = tqdm(total=len(lines), initial=len(results), desc="lines", disable=not progress, file=sys.stderr)
    with ThreadPoolExecutor(jobs) as pool:
        for fut in as_completed([pool.submit(work, line) for line in todo]):
            results.append(fut.result())
            bar.update(1)
            bar.set_postfix(failed=sum(r.status == "failed" for r in results), refresh=False)
    bar.close()
    return sorted(results, key=lambda r: r.line.number)


def report(results: Iterable[Result], name: str) -> int:
    """Print the summary; returns the number of failed lines."""
    results = list(results)
    count = {s: sum(r.status == s for r in results) for s in ("ok", "skipped", "failed")}
    print(f"{name}: {count['ok']} ran, {count['skipped']} skipped (already finished), {count['failed']} failed")
    for r in results:
        if r.status == "failed":
            last = ""
            if r.log and r.log.is_file():
                tail = [t for t in r.log.read_text().strip().splitlines() if t.strip()]
                last = tail[-1] if tail else ""
            print(f"  line {r.line.number} failed (exit {r.returncode}, log {r.log}): {last[:200]}")
    return count["failed"]


# --------------------------------------------------------------------- Slurm
@dataclass
class SlurmOptions:
    """What each task of a job array asks Slurm for. run_params.py's and benchmark.py's Slurm flags
    are generated from these fields (`add_slurm_args`), with these defaults, in one place."""

    partition: str | None = field(default=None, metadata={"help": "Slurm partition (default: the cluster's)"})
    gpus: int = field(default=0, metadata={"help": "GPUs per task (default 0; --gpus 1 on a GPU partition)"})
    cpus: int = field(default=2, metadata={"help": "CPUs per task (default 2)"})
    time: str = field(default="04:00:00", metadata={"help": "time limit per task, HH:MM:SS (default 04:00:00)"})
    max_parallel: int = field(default=8, metadata={"help": "tasks of an array running at once, the K of "
                                                           "--array=1-N%K (default 8)"})
    mem: str | None = field(default=None, metadata={"help": "memory per task, e.g. 16G (default: the cluster's)"})


def add_slurm_args(group) -> None:
    """One flag per SlurmOptions field, on an argparse group."""
    for f in fields(SlurmOptions):
        kind = int if f.type in ("int", int) else str
        group.add_argument(f"--{f.name}", type=kind, default=f.default, help=f.metadata["help"].replace("%", "%%"))


def slurm_options(args) -> SlurmOptions:
    """The SlurmOptions of parsed flags (add_slurm_args')."""
    return SlurmOptions(**{f.name: getattr(args, f.name) for f in fields(SlurmOptions)})


def sbatch_script(params: Path, n_lines: int, opts: SlurmOptions, log_dir: Path, job_name: str,
                  tracking_uri: str | None) -> str:
    """A job-array script whose task i runs line i of `params` (through run_params.py, so
    that a finished line is skipped)."""
    uri = tracking.resolve_uri(tracking_uri)
    if tracking.sqlite_path(uri) is not None and not tracking.sqlite_path(uri).is_absolute():
        uri = f"sqlite:///{tracking.sqlite_path(uri).resolve()}"
    return array_script([str(REPO / "run_params.py"), str(params.resolve()), "--line", "$SLURM_ARRAY_TASK_ID"],
                        n_lines, opts, log_dir, job_name, {"MLFLOW_TRACKING_URI": uri})


def array_script(argv: list[str], n_tasks: int, opts: SlurmOptions, log_dir: Path, job_name: str,
                 env: dict[str, str] | None = None) -> str:
    """A job array of `n_tasks` tasks, each running `python ARGV...` from this folder with OMP_NUM_THREADS
    set to its CPUs ($SLURM_ARRAY_TASK_ID in argv is left for the shell to expand)."""
    head = [f"#SBATCH --job-name={job_name}", f"#SBATCH --array=1-{n_tasks}%{opts.max_parallel}",
            f"#SBATCH --output={log_dir.resolve()}/%x_%A_%a.log", f"#SBATCH --time={opts.time}",
            f"#SBATCH --cpus-per-task={opts.cpus}"]
    if opts.partition:
        head.append(f"#SBATCH --partition={opts.partition}")
    if opts.gpus:
        head.append(f"#SBATCH --gres=gpu:{opts.gpus}")
    if opts.mem:
        head.append(f"#SBATCH --mem={opts.mem}")
    words = ['"$SLURM_ARRAY_TASK_ID"' if w == "$SLURM_ARRAY_TASK_ID" else shlex.quote(w) for w in argv]
    body = [f"cd {shlex.quote(str(Path.cwd()))}",
            *[f"export {k}={shlex.quote(v)}" for k, v in (env or {}).items()],
            f"export OMP_NUM_THREADS={opts.cpus}",
            f"exec {shlex.quote(sys.executable)} -u {' '.join(words)}"]
    return "\n".join(["#!/bin/bash", *head, "", *body]) + "\n"


def submit(script: Path, dependency: str | None = None) -> str:
    """sbatch the script; returns the job id."""
    cmd = ["sbatch", "--parsable", *([f"--dependency=afterok:{dependency}"] if dependency else []), str(script)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    except FileNotFoundError:
        raise UserError("sbatch not found: run this on a Slurm login node (or without --slurm)") from None
    except subprocess.CalledProcessError as e:
        raise UserError(f"sbatch refused {script}: {e.stderr.strip()}") from None
    return out.stdout.strip().split(";")[0]


def submit_files(files: list[tuple[Path, list[Line]]], opts: SlurmOptions, log_root: Path,
                 tracking_uri: str | None, dry_run: bool = False) -> list[tuple[Path, str | None]]:
    """Write one job-array script per params file and submit them in order, each depending on
    the one before (afterok). Returns (script, job id or None when dry_run)."""
    if not dry_run and any(logs_to_mlflow(line) for _, lines in files for line in lines):
        tracking.client(tracking.resolve_uri(tracking_uri))  # build a new sqlite store before the tasks start
    out, previous = [], None
    for f, lines in files:
        n = max(line.number for line in lines)  # array index = line number (blank lines are no-ops)
        log_dir = log_root / f.stem
        log_dir.mkdir(parents=True, exist_ok=True)
        script = f.with_suffix(".sbatch")
        script.write_text(sbatch_script(f, n, opts, log_dir, f"unlearn-{f.stem}", tracking_uri))
        previous = None if dry_run else submit(script, previous)
        out.append((script, previous))
        state = "not submitted" if dry_run else f"submitted job {previous}"
        print(f"{script}: {state}, array 1-{n}%{opts.max_parallel}")
    return out
