"""The checks that need a GPU, in one command, for the day a CUDA machine is lent:

    python scripts/gpu_check.py              # on a CUDA machine: about 10 minutes
    python scripts/gpu_check.py --dry_run    # its CPU-sized rehearsal, anywhere: about a minute

Without CUDA (and without --dry_run) it refuses with one line and runs nothing. Steps, each
timed, every figure written to one JSON (default benchmark_results/gpu_check_<device>.json):

1. tests: the fast suite (`pytest -m "not slow"`) on this machine. Where CUDA is present the
   bit-for-bit script tests (tests/test_script_numbers.py) skip, as they compare a CUDA run
   with a CPU one; step 2 is their form on a GPU.
2. script = library on the device: main_forget.py runs GA+VarGrad and NegGrad+ (the dry run:
   GA+VarGrad only) on digits on the
   device, and the library's `unlearn.unlearn` repeats each in this process on the same device;
   the JSON records the largest weight difference and whether two library runs agree bit for
   bit (cuDNN may pick non-deterministic kernels: reported, not asserted).
3. speed: `benchmarks.speed`'s epoch, options, add-on and evaluation sections on the device at
   its full sizes (--quick in the dry run), with its recommendation for this machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPECS = ("GA+VarGrad", "NegGrad+")


def _tests(dry_run: bool) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider"]
    if dry_run:  # a rehearsal: two quick modules, not the suite
        cmd += ["tests/test_recipes.py", "tests/test_checkpoints.py"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()[-300:]
    return {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "summary": tail}


def _script_equals_library(device: str, epochs: int, specs: tuple[str, ...] = SPECS) -> dict:
    import torch

    import utils
    from dataset import forget_split, load_data
    from experiments import trainer
    from models import from_checkpoint
    from unlearn import unlearn
    from unlearn.api import initial_model

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        common = ["--dataset", "digits", "--epochs", str(epochs), "--save_dir", tmp, "--seed", "1", "--quiet",
                  "--class_to_replace", "-1", "--num_indexes_to_replace", "100"]
        subprocess.run([sys.executable, "main_baseline.py", *common], cwd=REPO, check=True, capture_output=True)
        ckpt_path = utils.original_checkpoint_path(tmp, 1, "smallcnn", epochs)
        ckpt = utils.load_checkpoint(ckpt_path)
        data = load_data("digits", "./data", 1).to(torch.device(device))
        split = forget_split(data, 1, -1, 100).to(torch.device(device))
        for spec in specs:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "main_forget.py", *common, "--unlearn", spec], cwd=REPO, check=True,
                           capture_output=True)
            script_s = time.perf_counter() - t0
            (saved,) = (Path(tmp) / "unlearned").glob("*.pth.tar")
            script_state = utils.load_checkpoint(saved)["state_dict"]
            saved.unlink()
            runs = []
            for _ in range(2):
                model = from_checkpoint(ckpt, data.in_channels).to(device)
                result = unlearn(model, data, split, spec, seed=1, original_epochs=epochs,
                                 initial_model=initial_model(ckpt, data.in_channels, device),
                                 train_recipe=trainer.recipe_of(ckpt["args"]))
                runs.append({k: v.detach().cpu() for k, v in result.model.state_dict().items()})
            diff = max((runs[0][k].float() - script_state[k].float()).abs().max().item()
                       for k in script_state if script_state[k].is_floating_point())
            out[spec] = {"max_abs_weight_diff_script_vs_library": diff,
                         "library_runs_bit_identical": all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0]),
                         "script_wall_s": script_s}
    return out


def _speed(dry_run: bool, device: str) -> dict:
    from benchmarks import speed

    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--sections", "epoch,options,addons,eval", "--out", str(Path(tmp) / "speed.json")]
        if dry_run:
            argv.append("--quick")
        return speed.main(argv)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry_run", action="store_true", help="the CPU-sized rehearsal (no CUDA needed)")
    p.add_argument("--out", type=Path, default=None,
                   help="the JSON (default benchmark_results/gpu_check_<device>.json)")
    p.add_argument("--skip", default="", help="comma-separated steps to leave out: tests, equivalence, speed")
    a = p.parse_args(argv)
    import torch

    if not a.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device here; scripts/gpu_check.py measures the CUDA path (its CPU-sized rehearsal: "
              "--dry_run)", file=sys.stderr)
        raise SystemExit(2)
    device = "cuda" if torch.cuda.is_available() and not a.dry_run else "cpu"
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    out = a.out or REPO / "benchmark_results" / f"gpu_check_{device}.json"
    report: dict = {"device": device, "dry_run": a.dry_run,
                    "cuda": torch.cuda.get_device_name(0) if device == "cuda" else None, "steps_s": {}}
    steps = (("tests", lambda: _tests(a.dry_run)),
             ("equivalence", lambda: _script_equals_library(device, 1 if a.dry_run else 5,
                                                            SPECS[:1] if a.dry_run else SPECS)),
             ("speed", lambda: _speed(a.dry_run, device)))
    for name, step in steps:
        if name in skip:
            continue
        t0 = time.perf_counter()
        report[name] = step()
        report["steps_s"][name] = time.perf_counter() - t0
        print(f"{name}: done in {report['steps_s'][name]:.0f} s", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"figures -> {out}")
    return report


if __name__ == "__main__":
    main()
