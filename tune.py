"""Tuned comparisons: search each method's hyper-parameters with Optuna against the ideal model on a
pilot seed, freeze the best, then run every method at its published recipe and tuned on the
reporting seeds, and write the tables.

    python tune.py --preset digits-tuned                 # search, freeze, report (2 CPU cores: see docs/tuning.md)
    python tune.py --preset digits-tuned --search_only   # only the search and tuned.json
    python benchmark.py --preset digits-tuned --tuned tune_results/digits-tuned/tuned.json   # report, no search

Protocol (docs/tuning.md):
1. The pilot: seed --pilot_seed, distinct from the reporting seeds, with its own original model, ideal
   model and forget set (main_baseline.py and main_ideal.py lines, as the benchmark's).
2. Per forget scenario and method: one Optuna study (TPE sampler seeded with the pilot seed, median
   pruner on the per-epoch objective), --trials trials, in-process through the library call
   (`unlearn.unlearn`, the recipe resolved as mlflow_forget.py resolves it). The space: the lr over four
   decades around the published one, the epochs from 1 to twice the published count, and each method's
   and add-on's declared ranges (unlearn/search.py). The objective reads no test sample: the mean
   absolute gap to the ideal model on UA, RA, VA and an SVC attack with validation non-members
   (evaluation/selection.py). The rule: the complete trial of lowest objective.
3. tuned.json: per scenario and method the space, budget, rule, pilot seed, best values and objective.
4. The report: the preset's methods at their published recipes and tuned, on the reporting seeds,
   through the normal sweep (MLflow, resumable); tables with both rows, TA on the test set.

Studies live in an SQLite file in the results folder (or --storage: a database URL, or a journal file
for workers on a shared disk); a rerun continues each study where it stopped.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import multiprocessing
import sys
import time
from pathlib import Path

import benchmark
import utils
from benchmark import scenario_name
from experiments import sweep, tracking
from experiments.forget import check_ideal
from experiments.sweep import Grid
from unlearn import parse_unlearn, spec_name
from utils import UserError, run_main


@dataclasses.dataclass
class TunePreset:
    report: str  # the benchmark preset whose grid is searched and reported (data, models, scenarios, methods)
    trials: int  # per scenario and method
    pilot_seed: int
    note: str


PRESETS: dict[str, TunePreset] = {
    "digits-tuned": TunePreset(
        "digits-tuned", trials=20, pilot_seed=7,
        note="10 methods, 20 trials each, random 10% (N=122) and class 3; digits, smallcnn; pilot seed 7, "
             "reporting seeds 1-3"),
    "fashionmnist-tuned": TunePreset(
        "fashionmnist-tuned", trials=12, pilot_seed=7,
        note="10 methods, 12 trials each, on a 5% Fashion-MNIST subsample (2,700 training samples): random 10% "
             "(N=270) and class 0; convnet, 3 training epochs; pilot seed 7, reporting seeds 1-3"),
    "digits-tune-test": TunePreset(
        "digits-tune-test", trials=3, pilot_seed=2,
        note="GA and GA+VarGrad, 3 trials, class 3, 5 training epochs, pilot seed 2, reporting seed 1 (the tests)"),
    "cifar10-tuned": TunePreset(
        "cifar10-tuned", trials=30, pilot_seed=7,
        note="ResNet-18 on CIFAR-10, 182 epochs, 30 trials per method and scenario (a GPU or a Slurm cluster)"),
}


# ----------------------------------------------------------------------------- the setting
def setting_of(grid: Grid, spec: str, c: int, n: int | None, pilot_seed: int, trials: int, space: dict,
               methods: list[str]) -> dict:
    """What a study was started for: a rerun with any other value is refused."""
    return {"dataset": grid.datasets[0], "arch": grid.archs[0], "epochs": grid.epochs[grid.datasets[0]],
            "class_to_replace": c, "num_indexes_to_replace": n, "pilot_seed": pilot_seed, "method": spec,
            "methods": list(methods), "trials": trials, "space": {k: r.text() for k, r in space.items()},
            "extra_base": list(grid.extra_base), "extra": list(grid.extra)}


def study_name(c: int, n: int | None, spec: str) -> str:
    return f"{scenario_name(c, n)} | {spec}"


def open_study(storage, name: str, setting: dict, pilot_seed: int):
    """The study `name`, created with `setting` or checked against the one it was created with."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=pilot_seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                direction="minimize", load_if_exists=True)
    theirs = study.user_attrs.get("setting")
    if theirs is None:
        study.set_user_attr("setting", setting)
    elif theirs != setting:
        diff = ", ".join(f"{k} {theirs.get(k)!r} (now {setting.get(k)!r})"
                         for k in setting if theirs.get(k) != setting[k])
        raise UserError(f"study {name!r} in {storage_text(storage)} was started for another setting: {diff}; "
                        f"use another --out or --storage, or rerun with the study's settings")
    return study


def storage_text(storage) -> str:
    return getattr(storage, "url", None) or str(storage)


def make_storage(url: str | None, out: Path):
    """Optuna's storage: an SQLite file in `out` by default; `journal:PATH` a journal file (for workers on
    a shared disk, as Optuna recommends for NFS); anything else a database URL."""
    import optuna

    if url and url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

        path = url.removeprefix("journal:")
        return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    url = url or f"sqlite:///{(out / 'study.db').resolve()}"
    return optuna.storages.RDBStorage(url)


def recover_stale(study) -> int:
    """Trials left RUNNING by a process that was stopped: failed, and their parameters queued again, so
    that no trial is lost and none counts twice. Only for a study no other worker is running."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params)
    return len(stale)


# ------------------------------------------------------------------------------- the pilot
class Pilot:
    """The pilot seed's data, forget set, original and ideal models of one scenario, and the ideal
    model's selection metrics."""

    def __init__(self, grid: Grid, c: int, n: int | None, seed: int, svc_max: int | None, subsample: float,
                 save_dir: str | Path | None = None):
        import torch

        from dataset import forget_split, load_data
        from evaluation.accuracy import model_outputs
        from evaluation.selection import validation_metrics
        from models import from_checkpoint
        from unlearn.api import initial_model

        d, arch, epochs = grid.datasets[0], grid.archs[0], grid.epochs[grid.datasets[0]]
        save_dir = save_dir or grid.save_dir(d)
        self.seed = seed
        orig = utils.original_checkpoint_path(save_dir, seed, arch, epochs)
        self.ckpt = utils.load_checkpoint(orig, dataset=d, arch=arch)
        utils.set_seed(seed)
        data = load_data(d, grid.data, seed, self.ckpt["num_classes"], False, subsample)
        self.split = forget_split(data, seed, c, n)
        self.data = data
        self.forgotten = c if self.split.is_class_forgetting else None
        ideal_path = utils.ideal_checkpoint_path(save_dir, seed, arch, epochs, c,
                                                 self.split.info["num_indexes_to_replace"])
        ideal_ckpt = utils.load_checkpoint(ideal_path, dataset=d, arch=arch)
        check_ideal(ideal_path, ideal_ckpt, seed, self.split, c, "remove it and rerun tune.py to retrain it")

        self.fresh = lambda: from_checkpoint(self.ckpt, data.in_channels, arch)  # noqa: E731
        self.initial_model = initial_model(self.ckpt, data.in_channels, torch.device("cpu"))
        self.outputs = lambda m: model_outputs(m, data, self.split.forget, self.split.retain,  # noqa: E731
                                               self.forgotten)
        self.metrics = lambda m: validation_metrics(self.outputs(m), seed, svc_max)  # noqa: E731
        self.ideal = self.metrics(from_checkpoint(ideal_ckpt, data.in_channels, arch))


def run_trial(pilot: Pilot, spec: str, values: dict, on_epoch_end=None):
    """Unlearn a fresh copy of the pilot's original with `values` (lr, epochs and the method's and add-on's
    hyper-parameters), in-process, exactly as mlflow_forget.py with those flags; returns the model."""
    from unlearn import unlearn

    recipe = {k: values[k] for k in ("lr", "epochs") if k in values}
    hparams = {k: v for k, v in values.items() if k not in recipe}
    model = pilot.fresh()
    utils.set_seed(pilot.seed)  # as mlflow_forget.py seeds before it runs
    unlearn(model, pilot.data, pilot.split, spec, seed=pilot.seed, hparams=hparams,
            original_epochs=pilot.ckpt.get("epochs"), initial_model=pilot.initial_model,
            on_epoch_end=None if on_epoch_end is None else lambda e, r: on_epoch_end(model, e, r), **recipe)
    return model


class Surplus(Exception):
    """A trial started after the study's budget was already taken by other workers' trials."""


def surplus(trial, budget: int) -> bool:
    """Whether `budget` trials numbered before this one are complete, pruned or running. Trial numbers
    are handed out one at a time by the storage, so of workers racing for the last places exactly the
    budget's first trials run, however the workers interleave (a failed trial frees its place)."""
    from optuna.trial import TrialState

    taken = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                            TrialState.RUNNING))
    return sum(t.number < trial.number for t in taken) >= budget


def objective_for(pilot: Pilot, spec: str, space: dict, uri: str | None, experiment: str, study: str,
                  budget: int):
    """The function Optuna calls per trial: unlearn in-process with the suggested values, return the gap."""
    import optuna

    from unlearn.impl import Diverged
    from unlearn.search import suggest

    def objective(trial) -> float:
        if surplus(trial, budget):  # workers racing past the budget: this one does not run, nor count
            trial.set_user_attr("surplus", True)
            trial.study.stop()
            raise Surplus(f"trial {trial.number}: {budget} trials are done or running")
        values = suggest(trial, space)
        run = tracking.Run(uri, experiment, f"{spec} trial {trial.number}",
                           {"study": study, "trial": trial.number, "kind": "tune-trial"}) if uri else None
        if run:
            run.params({"unlearn": spec, "pilot_seed": pilot.seed, **values})

        def on_epoch_end(model, epoch: int, record: dict) -> dict:
            gap = _score(trial, pilot, model, run, step=epoch + 1)
            trial.report(gap, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch + 1}: objective {gap:.3f}")
            return {"val_gap": gap}

        try:
            model = run_trial(pilot, spec, values, on_epoch_end if "epochs" in space else None)
        except optuna.TrialPruned:
            if run:
                run.end("KILLED", "pruned")
            raise
        except Diverged as e:
            trial.set_user_attr("diverged", str(e))
            if run:
                run.end("FAILED", f"diverged: {e}")
            return 100.0  # the largest gap there is: a diverged run is the worst point
        # scored again, not taken from the last epoch's callback: the method's restore() (BE's shadow
        # class) may change the model after its last epoch
        gap = _score(trial, pilot, model, run, step=values.get("epochs", 1), final=True)
        if run:
            run.end()
        return gap

    return objective


def _score(trial, pilot: Pilot, model, run, step: int, final: bool = False) -> float:
    """The objective of `model` now; the final one also stored on the trial."""
    from evaluation.selection import validation_gap

    m = pilot.metrics(model)
    gap = validation_gap(m, pilot.ideal)
    if final:
        for k, v in m.items():
            trial.set_user_attr(k, v)
    if run:
        run.metrics({**{f"val/{k}": v for k, v in m.items()}, "val_gap": gap}, step=step)
    return gap


# ------------------------------------------------------------------------------- the search
@dataclasses.dataclass
class Job:
    """One study to fill: what a worker needs, picklable."""

    grid: Grid
    c: int
    n: int | None
    spec: str
    space: dict
    setting: dict
    trials: int
    pilot_seed: int
    storage_url: str
    out: Path
    uri: str | None
    svc_max: int | None
    subsample: float


_PILOTS: dict[tuple, Pilot] = {}


def pilot_of(job: Job) -> Pilot:
    """The job's pilot, built once per process and scenario: every method's study of a scenario reads the
    same data, forget set and models (read only; each trial unlearns a fresh copy)."""
    g = job.grid
    key = (g.datasets[0], g.archs[0], g.epochs[g.datasets[0]], g.data, g.save_root, job.c, job.n, job.pilot_seed,
           job.svc_max, job.subsample)
    if key not in _PILOTS:
        _PILOTS[key] = Pilot(g, job.c, job.n, job.pilot_seed, job.svc_max, job.subsample)
    return _PILOTS[key]


def fill(job: Job, progress: bool) -> None:
    """Run trials of one study until it holds `trials` complete or pruned ones (workers share it)."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(job.storage_url, job.out)
    name = study_name(job.c, job.n, job.spec)
    study = open_study(storage, name, job.setting, job.pilot_seed)
    counted = (TrialState.COMPLETE, TrialState.PRUNED)
    left = job.trials - len(study.get_trials(deepcopy=False, states=counted))
    if left <= 0:
        return
    pilot = pilot_of(job)
    objective = objective_for(pilot, job.spec, job.space, job.uri, f"tune-{job.grid.datasets[0]}", name,
                              job.trials)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=job.trials, initial=job.trials - left, desc=name, leave=True, file=sys.stdout)

    def show(study, trial) -> None:
        if bar is not None:
            bar.n = len(study.get_trials(deepcopy=False, states=counted))
            done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            bar.set_postfix_str(f"best {min(t.value for t in done):.3f}" if done else "")
            bar.refresh()

    study.optimize(objective, n_trials=left, callbacks=[MaxTrialsCallback(job.trials, states=counted), show],
                   catch=(Surplus,))
    if bar is not None:
        bar.close()


def _worker(jobs: list[Job], threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    for job in jobs:
        fill(job, progress=False)


def search(jobs: list[Job], workers: int, progress: bool) -> None:
    """Fill every study: in this process, or `workers` processes sharing each study."""
    if workers <= 1:
        for job in jobs:
            fill(job, progress)
        return
    import os

    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(jobs, threads)) for _ in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise UserError(f"{len(bad)} of {workers} search workers failed (exit codes {bad}); rerun to continue "
                        f"the studies where they stopped")


def freeze(jobs: list[Job], path: Path, preset: str, made_by: str) -> dict:
    """tuned.json: per scenario and method, the chosen values and what they were chosen by."""
    import optuna
    from optuna.trial import TrialState

    scenarios: dict = {}
    for job in jobs:
        study = optuna.load_study(study_name=study_name(job.c, job.n, job.spec),
                                  storage=make_storage(job.storage_url, job.out))
        trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
        count = {s.name.lower(): sum(t.state == s for t in trials)
                 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        if not done:
            raise UserError(f"study {study.study_name!r} has no complete trial; rerun to continue it, "
                            f"or raise --trials")
        best = min(done, key=lambda t: (t.value, t.number))
        entry = scenarios.setdefault(scenario_name(job.c, job.n), {"class_to_replace": job.c,
                                                                    "num_indexes_to_replace": job.n, "methods": {}})
        entry["methods"][job.spec] = {
            "best": best.params, "objective": best.value, "best_trial": best.number, "trials": count,
            "space": {k: r.text() for k, r in job.space.items()},
            "val_metrics": {k: best.user_attrs.get(k) for k in ("UA", "RA", "VA", "MIA_val")}}
    job = jobs[0]
    doc = {"made_by": made_by, "preset": preset, "dataset": job.grid.datasets[0], "arch": job.grid.archs[0],
           "epochs": job.grid.epochs[job.grid.datasets[0]], "extra_base": job.grid.extra_base,
           "extra": job.grid.extra, "pilot_seed": job.pilot_seed, "reporting_seeds": job.grid.seeds,
           "budget": {"trials": job.trials, "sampler": f"TPE (seed {job.pilot_seed})",
                      "pruner": "median, per epoch, after 5 trials"},
           "objective": "mean |gap| to the ideal model of UA, RA, VA and MIA_val (validation non-members), points",
           "rule": "the complete trial of lowest objective (ties: the earliest)",
           "scenarios": scenarios}
    utils.write_json(doc, path)
    return doc


def plots(jobs: list[Job], folder: Path) -> list[Path]:
    """Optuna's optimisation history and parameter importances, one PNG each per study."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    warnings.filterwarnings("ignore", module="optuna")  # "experimental" notes and few-trial importance notes
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for job in jobs:
        name = study_name(job.c, job.n, job.spec)
        study = optuna.load_study(study_name=name, storage=make_storage(job.storage_url, job.out))
        stem = "".join(ch if ch.isalnum() or ch in "+-" else "_" for ch in name).strip("_")
        for kind, fn in (("history", ovm.plot_optimization_history), ("importance", ovm.plot_param_importances)):
            try:
                ax = fn(study)
            except (ValueError, RuntimeError) as e:  # e.g. one parameter, or too few complete trials
                print(f"note: no {kind} plot for {name}: {e}", file=sys.stderr)
                continue
            ax.set_title(f"{name}: {kind}")
            path = folder / f"{stem}_{kind}.png"
            ax.figure.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(ax.figure)
            written.append(path)
    return written


# ----------------------------------------------------------------------------------- main
def build_parser() -> utils.Parser:
    p = utils.Parser(description=__doc__)
    p.epilog = "presets:\n" + "\n".join(f"  {k:20s} {v.note}" for k, v in PRESETS.items())
    p.add_argument("--preset", required=True, choices=sorted(PRESETS), metavar="NAME",
                   help="what to tune and report (the list below)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default tune_results/PRESET)")
    p.add_argument("--data", default="./data", help="data folder (default ./data)")
    p.add_argument("--methods", nargs="+", default=None, metavar="SPEC", help="tune these instead of the preset's")
    p.add_argument("--trials", type=int, default=None, help="trials per scenario and method (default: the preset's)")
    p.add_argument("--pilot_seed", type=int, default=None, help="the search's seed (default: the preset's); "
                                                                 "must not be a reporting seed")
    p.add_argument("--range", action="append", default=[], metavar="NAME=LOW:HIGH[:log]",
                   help="replace a search range for every method that has NAME (repeatable)")
    p.add_argument("--storage", default=None, help="Optuna storage: a database URL, or journal:PATH (a journal "
                                                     "file on a shared disk); default sqlite in --out")
    p.add_argument("--jobs", type=int, default=1, help="search worker processes sharing each study (default 1)")
    p.add_argument("--search_only", action="store_true", help="search and write tuned.json; no report")
    p.add_argument("--no_mlflow", action="store_true", help="do not log each trial to MLflow")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("Slurm (submit the pilot's trainings and a job array of search workers sharing the "
                             "studies through a journal file; then rerun without --slurm to freeze and report)")
    g.add_argument("--slurm", action="store_true", help="submit instead of searching here")
    g.add_argument("--workers", type=int, default=4, help="search workers, the tasks of the array (default 4)")
    g.add_argument("--dry_run", action="store_true", help="with --slurm: write the sbatch scripts, submit nothing")
    g.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one task of that array
    sweep.add_slurm_args(g)
    return p


def search_argv(a, out: Path) -> list[str]:
    """This run's search settings as tune.py arguments, with absolute paths: what every Slurm worker
    runs, and what the run after them repeats to freeze and report."""
    argv = ["--preset", a.preset, "--out", str(out.resolve()), "--data", str(Path(a.data).resolve()),
            "--storage", a.storage]
    argv += ["--methods", *a.methods] if a.methods else []
    argv += ["--trials", str(a.trials)] if a.trials is not None else []
    argv += ["--pilot_seed", str(a.pilot_seed)] if a.pilot_seed is not None else []
    argv += [w for r in a.range for w in ("--range", r)]
    return argv + (["--no_mlflow"] if a.no_mlflow else [])


def submit_search(a, out: Path, uri: str | None) -> None:
    """The pilot's trainings as one job array, then `--workers` search workers depending on it."""
    opts = sweep.slurm_options(a)
    base = out / "pilot_base_params.txt"
    ((_, pilot_job),) = sweep.submit_files([(base, sweep.read_params(base))], opts, out / "logs", uri,
                                           dry_run=a.dry_run)
    log_dir = out / "logs" / "search"
    log_dir.mkdir(parents=True, exist_ok=True)
    script = out / "search.sbatch"
    argv = [str(utils.REPO / "tune.py"), *search_argv(a, out), "--quiet", "--worker"]
    script.write_text(sweep.array_script(argv, a.workers, opts, log_dir, f"tune-{a.preset}"))
    job = None if a.dry_run else sweep.submit(script, pilot_job)
    print(f"{script}: {'not submitted' if job is None else f'submitted job {job}'}, {a.workers} search workers"
          + (f" after job {pilot_job}" if pilot_job else ""))
    print("when the workers are done: python tune.py " + " ".join(search_argv(a, out)))


def jobs_of(a, preset: TunePreset, grid: Grid, out: Path, uri: str | None) -> list[Job]:
    from unlearn.search import parse_range, space_of

    overrides = {}
    for text in a.range:
        try:
            name, r = parse_range(text)
        except ValueError as e:
            raise UserError(str(e)) from None
        overrides[name] = r
    spaces = {}
    for spec in grid.unlearn:
        try:
            base = space_of(spec)
            spaces[spec] = space_of(spec, {k: v for k, v in overrides.items() if k in base})
        except ValueError as e:
            raise UserError(f"--methods {spec}: {e}") from None
    unknown = set(overrides) - {k for s in spaces.values() for k in s}
    if unknown:
        raise UserError(f"--range {', '.join(sorted(unknown))}: no method of this run searches it")
    svc_max = sweep.flag_value(grid.extra, "--mia_svc_max")
    svc_max = None if svc_max is None else int(svc_max)
    subsample = float(sweep.flag_value(grid.extra, "--subsample") or 1.0)
    trials, pilot = a.trials or preset.trials, a.pilot_seed if a.pilot_seed is not None else preset.pilot_seed
    storage_url = a.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    return [Job(grid, c, n, spec, spaces[spec],
                setting_of(grid, spec, c, n, pilot, trials, spaces[spec], grid.unlearn),
                trials, pilot, storage_url, out, uri, svc_max, subsample)
            for c, n in grid.forget for spec in grid.unlearn]


def open_studies(jobs: list[Job], url: str | None, out: Path):
    """Open (or create) every job's study, refusing one started for another setting, and queue again the
    trials a stopped run left running; returns the storage."""
    storage = make_storage(url, out)
    for job in jobs:
        study = open_study(storage, study_name(job.c, job.n, job.spec), job.setting, job.pilot_seed)
        n = recover_stale(study)
        if n:
            print(f"{study.study_name}: {n} trials left running by a stopped run queued again")
    return storage


def main() -> None:
    a = build_parser().parse_args()
    preset = PRESETS[a.preset]
    if a.trials is not None and a.trials < 1:
        raise UserError(f"--trials must be at least 1, got {a.trials}")
    if a.jobs < 1 or a.workers < 1:
        raise UserError(f"--jobs and --workers must be at least 1, got {a.jobs} and {a.workers}")
    grid = copy.deepcopy(benchmark.PRESETS[preset.report])
    if a.methods:
        grid.unlearn = [spec_name(*parse_unlearn(s)) for s in benchmark.checked_methods(a.methods)]
    pilot = a.pilot_seed if a.pilot_seed is not None else preset.pilot_seed
    if pilot in grid.seeds:
        raise UserError(f"--pilot_seed {pilot} is also a reporting seed ({', '.join(map(str, grid.seeds))}): "
                        f"the search must not see the models it is judged on; pick another")
    out = a.out or Path("tune_results") / a.preset
    if (a.slurm or a.worker) and a.storage is None:  # workers on several nodes share a journal file
        a.storage = f"journal:{(out / 'study.journal').resolve()}"
    grid.data, grid.save_root = a.data, str(out / "checkpoints")
    uri = None if a.no_mlflow else f"sqlite:///{(out / 'mlruns' / 'mlflow.db').resolve()}"
    jobs = jobs_of(a, preset, grid, out, uri)  # bad ranges and methods fail before anything is written
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if a.worker:  # one task of a Slurm array of search workers: the pilot's models are trained
        search(jobs, 1, progress=False)
        return

    storage = open_studies(jobs, a.storage, out)  # one of another setting stops the run before anything trains
    try:
        run_all(a, jobs, grid, pilot, out, uri, storage, t0)
    except KeyboardInterrupt as e:
        e.kept = (f"the finished trials are kept in {storage_text(storage)} and the trained models under "
                  f"{out / 'checkpoints'}; a trial cut short runs again. Continue with: {utils.rerun_command()}")
        raise


def run_all(a, jobs: list[Job], grid: Grid, pilot: int, out: Path, uri: str | None, storage, t0: float) -> None:
    """The pilot's models, the search, tuned.json and its plots, then the report (unless --search_only)."""
    # 1. the pilot's models
    pilot_grid = dataclasses.replace(grid, seeds=[pilot], unlearn=[])
    base, _ = sweep.generate(pilot_grid)
    (out / "pilot_base_params.txt").write_text("\n".join(base) + "\n")
    if a.slurm:
        submit_search(a, out, uri)
        return
    res = sweep.run_local(sweep.read_params(out / "pilot_base_params.txt"), sweep.default_jobs(),
                          out / "logs" / "pilot", uri, progress=not a.quiet)
    if sweep.report(res, "pilot models"):
        raise UserError(f"the pilot's models did not train; see {out / 'logs' / 'pilot'}")

    # 2. the search (a rerun continues each study)
    search(jobs, a.jobs, progress=not a.quiet)
    t_search = time.perf_counter() - t0
    command = " ".join(["python tune.py", *sys.argv[1:]])
    made_by = f"Made by `{command}` at commit {utils.git_commit()} on {utils.machine()}"
    doc = freeze(jobs, out / "tuned.json", a.preset, made_by)
    figs = plots(jobs, out / "plots")
    print(f"search: {len(jobs)} studies in {t_search:.0f} s -> {out / 'tuned.json'}, {len(figs)} plots in "
          f"{out / 'plots'}")
    print(f"the studies: optuna-dashboard {storage_text(storage)} --host 127.0.0.1 --port 8080")
    if a.search_only:
        return

    # 3. the report: published recipes and tuned values on the reporting seeds
    benchmark.run_grid(grid, out, jobs=sweep.default_jobs(), quiet=a.quiet, tuned=doc,
                       made_by_command=command, report_only=False)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    run_main(main)
