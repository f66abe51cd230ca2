"""Time mlruns_parser.py on a generated MLflow store of many runs shaped like this toolkit's
(parameters, final metrics, per-epoch history, tags), and print the figures.

    python benchmarks/parser_time.py                    # 500 runs in a temporary store
    python benchmarks/parser_time.py --runs 500 --store /tmp/store500   # keep (and reuse) the store

The store is built once per --store folder; the parser runs --repeat times as a user runs it
(a fresh process: `python mlruns_parser.py --tracking_uri ... --output ...`), and the best
and median wall times are printed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_store(uri: str, runs: int) -> None:
    """`runs` runs like mlflow_forget.py's: ~70 parameters, ~60 final metrics, 5 epochs of 6
    training metrics, ~25 tags; a tenth FAILED."""
    import random

    from mlflow.entities import Metric, Param, RunTag

    from experiments import tracking

    c = tracking.client(uri)
    rng = random.Random(0)
    exp = tracking.experiment_id(c, uri, "digits")
    methods = ["GA", "GA+VarGrad", "FT", "RL", "NegGrad+", "SalUn", "SCRUB", "GA+Mask"]
    now = int(time.time() * 1000)
    for i in range(runs):
        spec = methods[i % len(methods)]
        run = c.create_run(exp, run_name=spec, tags={"command_hash": f"{i:020x}", "forget_sha1": f"{i % 6:040x}",
                                                     "forget_mode": "random" if i % 2 else "class",
                                                     "git_commit": "0" * 40, "command": f"mlflow_forget.py --seed {i}",
                                                     **{f"version.p{k}": "1.0" for k in range(9)}})
        rid = run.info.run_id
        params = [Param(f"p{k}", str(rng.random())) for k in range(66)]
        params += [Param("unlearn", spec), Param("seed", str(i % 3 + 1)), Param("class_to_replace", "-1"),
                   Param("num_indexes_to_replace", "100")]
        metrics = [Metric(f"m{k}", rng.random(), now, 0) for k in range(60)]
        metrics += [Metric(f"train/t{k}", rng.random(), now, e) for k in range(6) for e in range(1, 6)]
        tags = [RunTag(f"polarity.m{k}", "lower") for k in range(12)] + [RunTag("checkpoint", f"/x/{rid}.pth.tar")]
        c.log_batch(rid, metrics=metrics, params=params[:100], tags=tags)
        c.set_terminated(rid, "FAILED" if i % 10 == 9 else "FINISHED")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=500)
    p.add_argument("--store", type=Path, default=None, help="folder of the store (default: a temporary one)")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    folder = a.store or Path(tempfile.mkdtemp(prefix="parser_time_"))
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{(folder / 'mlflow.db').resolve()}"
    if not (folder / "mlflow.db").is_file():
        t0 = time.perf_counter()
        build_store(uri, a.runs)
        print(f"built a store of {a.runs} runs in {time.perf_counter() - t0:.1f} s: {folder}")
    times = []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, str(REPO / "mlruns_parser.py"), "--tracking_uri", uri, "--output",
                              str(folder / "parsed.csv")], capture_output=True, text=True, cwd=REPO)
        times.append(time.perf_counter() - t0)
        if out.returncode != 0:
            raise SystemExit(out.stderr)
    print(out.stdout.strip())
    print(f"mlruns_parser.py on {a.runs} runs: best {min(times):.2f} s, median {statistics.median(times):.2f} s "
          f"(wall time of the command, Python start-up and imports included; {a.repeat} runs)")


if __name__ == "__main__":
    main()
