"""Trials per second of tune.py's in-process trials against launching mlflow_forget.py once per trial,
on the same trials (the same values, drawn once by a seeded sampler), side by side on this machine.
Each way does what a trial needs: unlearn a fresh copy of the pilot's original and score it (in
process: the validation objective; the script: its own evaluation, as a sweep line would).

    python -m benchmarks.trial_speed                         # digits, GA+VarGrad, 6 trials each way
    python -m benchmarks.trial_speed --spec SCRUB --trials 4

It trains the pilot's original and ideal models (digits, 5 epochs) in a temporary folder first.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import optuna  # noqa: E402

import benchmark  # noqa: E402
import tune  # noqa: E402
import utils  # noqa: E402
from unlearn.search import space_of, suggest  # noqa: E402


def draws(spec: str, n: int, seed: int) -> list[dict]:
    """`n` points of the spec's search space from a seeded random sampler: the trials both ways run."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [suggest(study.ask(), space_of(spec)) for _ in range(n)]


def script_flags(values: dict) -> list[str]:
    names = {"lr": "--unlearn_lr", "epochs": "--unlearn_epochs"}
    return [w for k, v in values.items() for w in (names.get(k, f"--{k}"), str(v))]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", default="GA+VarGrad")
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--seed", type=int, default=2, help="the pilot's seed (default 2)")
    a = p.parse_args(argv)
    trials = draws(a.spec, a.trials, a.seed)
    with tempfile.TemporaryDirectory() as tmp:
        save = Path(tmp)
        common = ["--dataset", "digits", "--epochs", "5", "--save_dir", str(save), "--seed", str(a.seed),
                  "--quiet", "--class_to_replace", "3"]
        for script in ("main_baseline.py", "main_ideal.py"):
            subprocess.run([sys.executable, str(REPO / script), *common], check=True, capture_output=True)
        grid = tune.dataclasses.replace(benchmark.PRESETS["digits-tune-test"], epochs={"digits": 5})
        t0 = time.perf_counter()
        pilot = tune.Pilot(grid, 3, None, a.seed, None, 1.0, save_dir=save)
        setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        for values in trials:
            pilot.metrics(tune.run_trial(pilot, a.spec, values))
        inside = time.perf_counter() - t0
        t0 = time.perf_counter()
        for values in trials:
            subprocess.run([sys.executable, str(REPO / "mlflow_forget.py"), *common, "--unlearn", a.spec,
                            *script_flags(values), "--tracking_uri", f"sqlite:///{save / 'mlflow.db'}"],
                           check=True, capture_output=True)
        outside = time.perf_counter() - t0
    found = {"trials": a.trials, "spec": a.spec, "in_process_s": inside, "pilot_setup_s": setup,
             "per_process_s": outside, "ratio": outside / inside}
    print(f"{a.spec}, {a.trials} trials on digits (smallcnn, class 3), {utils.machine()}:")
    print(f"  in process      {a.trials / inside:6.2f} trials/s  ({inside:.1f} s, plus {setup:.1f} s once for the "
          f"pilot's data and models)")
    print(f"  one process     {a.trials / outside:6.2f} trials/s  ({outside:.1f} s: interpreter, imports, "
          f"checkpoint, MLflow run and full evaluation per trial)")
    print(f"  in process is {found['ratio']:.1f}x faster")
    return found


if __name__ == "__main__":
    main()
