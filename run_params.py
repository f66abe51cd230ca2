"""Run params files: locally, N lines at a time, or as Slurm job arrays.

    python run_params.py base_params.txt params.txt --jobs 2      # base first, then the sweep
    python run_params.py params.txt --line 7                      # one line (what a Slurm task runs)
    python run_params.py base_params.txt params.txt --slurm --partition gpu --gpus 1 --time 02:00:00

Locally: a progress bar over lines, a log per line under --log_dir, and a summary of
failures at the end; a failed line never stops the others. Lines that already
finished (an MLflow run tagged with the line's command hash, or a base checkpoint
recorded with it) are skipped, so a killed sweep restarts where it stopped.
With --slurm: writes one sbatch job-array script per file (task i runs line i) and
submits them, each file depending on the one before (afterok); --dry_run only writes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import utils
from experiments import sweep
from utils import UserError, run_main


def main() -> None:
    p = utils.Parser(description=__doc__)
    p.add_argument("files", nargs="+", type=Path, help="params files, run in this order")
    p.add_argument("--jobs", type=int, default=None, help="lines at a time (default: GPUs, else CPU cores)")
    p.add_argument("--log_dir", type=Path, default=Path("logs"), help="a log per line (default logs/)")
    p.add_argument("--tracking_uri", default=None, help="MLflow store the lines log to (default as mlflow_forget)")
    p.add_argument("--line", type=int, default=None, help="run only this 1-based line of the one file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("Slurm")
    g.add_argument("--slurm", action="store_true", help="submit job arrays instead of running here")
    g.add_argument("--dry_run", action="store_true", help="with --slurm: write the sbatch scripts, submit nothing")
    sweep.add_slurm_args(g)
    a = p.parse_args()
    if a.jobs is not None and a.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {a.jobs}")
    if a.line is not None:
        sys.exit(one_line(a))
    files = [(f, sweep.read_params(f)) for f in a.files]  # every file is checked before anything runs
    if a.slurm:
        return submit_all(a, files)
    failed = 0
    for f, lines in files:
        results = sweep.run_local(lines, a.jobs or sweep.default_jobs(), a.log_dir / f.stem, a.tracking_uri,
                                  progress=not a.quiet)
        failed += sweep.report(results, str(f))
    sys.exit(1 if failed else 0)


def one_line(a) -> int:
    if len(a.files) != 1:
        raise UserError("--line takes exactly one params file")
    lines = {line.number: line for line in sweep.read_params(a.files[0])}
    if a.line not in lines:
        raise UserError(f"{a.files[0]} has no command on line {a.line}")
    line = lines[a.line]
    if line.hash in sweep.finished_hashes([line], a.tracking_uri):
        print(f"line {a.line} already finished; skipped")
        return 0
    print(f"# line {a.line}: {line.text}", flush=True)
    env = dict(os.environ)
    if a.tracking_uri:
        env["MLFLOW_TRACKING_URI"] = a.tracking_uri
    return subprocess.run(sweep.command_of(line), env=env).returncode


def submit_all(a, files) -> None:
    sweep.submit_files(files, sweep.slurm_options(a), a.log_dir, a.tracking_uri, dry_run=a.dry_run)


if __name__ == "__main__":
    run_main(main)
