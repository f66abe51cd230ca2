"""Helpers shared by the entry scripts: errors, device, seeding, provenance,
checkpoint names and I/O, and the argument groups every script takes.

Library code never picks a device or reads `args`; the entry scripts do both
once, here, and pass plain values on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dataset import DATASETS, UserError  # noqa: F401  (UserError re-exported: the scripts raise it from here)
from models import list_models

REPO = Path(__file__).resolve().parent


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM (Slurm's pre-emption and time-limit signal), raised in the main thread so
    that a run can end as KILLED, saying which signal, before the process exits."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.signame = signum, signal.Signals(signum).name


_deferring = {"depth": 0, "pending": None}


def _raise_interrupted(signum: int, frame) -> None:
    if _deferring["depth"]:
        _deferring["pending"] = signum
        return
    raise Interrupted(signum)


@contextmanager
def signals_deferred():
    """Hold run_main's SIGINT / SIGTERM until the block ends (a store call must not be cut in two)."""
    _deferring["depth"] += 1
    try:
        yield
    finally:
        _deferring["depth"] -= 1
        if not _deferring["depth"] and _deferring["pending"] is not None:
            signum, _deferring["pending"] = _deferring["pending"], None
            raise Interrupted(signum)


def run_main(main: Callable[[], Any]) -> None:
    """Run an entry script's main(); a UserError becomes `error: ...` and exit 2; SIGINT and SIGTERM
    become one `interrupted by SIG...` line (with what is kept and how to go on, where the script set
    the exception's `kept`) and exit 128 + the signal's number."""
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        kept = getattr(e, "kept", None)  # what a script keeps of the stopped work, and how to go on
        print(f"interrupted by {signal.Signals(signum).name}" + (f"; {kept}" if kept else ""), file=sys.stderr)
        sys.exit(128 + signum)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: what is wrong and where the usage is, not the usage itself."""

    def __init__(self, **kw):
        kw.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kw)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (usage: {self.prog} --help)\n")


# ---------------------------------------------------------------- device, seed
def pick_device(gpu: int | None) -> torch.device:
    """CUDA card `gpu` (default 0) when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        index = gpu or 0
        if index >= torch.cuda.device_count():
            raise UserError(f"--gpu {index}: only {torch.cuda.device_count()} CUDA device(s) here")
        return torch.device(f"cuda:{index}")
    if gpu not in (None, 0):
        print(f"warning: --gpu {gpu} given but CUDA is not available; using the CPU", file=sys.stderr)
    return torch.device("cpu")


# Speed options (--amp, --channels_last, --compile) and their default on each device type. An
# option is on by default only where benchmarks/speed.py measured it faster AND a short run
# kept accuracy within noise of fp32 eager (docs/speed.md). CPU: channels-last trained 1.20x
# (convnet 28x28), 1.10x (ResNet-18 32x32), 1.01x (smallcnn 8x8) with Fashion-MNIST accuracy
# within noise; bf16 autocast ran at 0.05-0.14x there (AVX2 only: no native bf16; a Xeon with AMX-bf16 was
# reported 1.2-1.7x faster, but bf16 changes the numbers, so fp32 stays the default on every CPU);
# compile pays 5-52 s of compilation per run for at most 1.22x, a loss for runs of a few
# short epochs. CUDA: nothing has been measured, so all are off.
from unlearn.impl import SPEED_DEFAULTS, SPEED_OPTIONS  # noqa: E402  (the library's; the flags resolve to them)


def device_for(args: argparse.Namespace) -> torch.device:
    """The device of `--gpu`, with the speed options left unset resolved to that device's
    defaults (so the run's params record what ran)."""
    device = pick_device(args.gpu)
    for k in SPEED_OPTIONS:
        if getattr(args, k, None) is None:
            setattr(args, k, SPEED_DEFAULTS.get(device.type, {}).get(k, False))
    return device


def set_seed(seed: int) -> None:
    """Seed every generator the toolkit draws from (Python, NumPy, torch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------ provenance
def git_commit() -> str:
    """The commit of this checkout, with `-dirty` when it has local changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"


def provenance() -> dict[str, str]:
    """What produced a result: commit, Python and package versions, machine."""
    import sklearn

    info = {
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a plain str: a TorchVersion would need an allow-list to load
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "cuda": torch.version.cuda or "none",
        "host": platform.node(),
    }
    for pkg in ("torchvision", "mlflow", "scipy"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return info


def cpu_info() -> tuple[str, set[str]]:
    """The processor's model name and its feature flags (from /proc/cpuinfo where there is one)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return name, flags
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), name)
    flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
    return name, flags


def machine() -> str:
    """One line naming the machine a result was made on: processor, threads, kernel set, GPU."""
    cpu, _ = cpu_info()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, kernels "
            f"{torch.backends.cpu.get_cpu_capability()}{gpu}, torch {torch.__version__}")


# ----------------------------------------------------------------- checkpoints
def original_checkpoint_path(save_dir: str | Path, seed: int, arch: str, epochs: int) -> Path:
    """The name the papers' commands pass to `--mask`."""
    return Path(save_dir) / f"{seed}{arch}_ep{epochs}model_SA_best.pth.tar"


def ideal_checkpoint_path(save_dir: str | Path, seed: int, arch: str, epochs: int,
                          class_to_replace: int, num_indexes: int) -> Path:
    """The ideal (retrained) model for one forget set; every script derives it from the same args."""
    return Path(save_dir) / f"{seed}{arch}_ep{epochs}_C{class_to_replace}_N{num_indexes}_ideal.pth.tar"


def check_writable(save_dir: str | Path) -> Path:
    """Create `save_dir` if needed and prove a file can be written there, before any training."""
    path = Path(save_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--save_dir {path} is not writable ({e.strerror}); pick another folder") from None
    return path


def temporary_name(path: Path) -> Path:
    """A temporary name beside `path`, unique to this writer (process and call), for write + rename."""
    import uuid

    return path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


_SHA1_MEMO: dict[tuple, str] = {}


def file_sha1(path: str | Path) -> str:
    """sha1 of a file's bytes: what a cache keyed by a checkpoint's content keys it by. Remembered in
    this process per (inode, size, mtime, ctime): a file rewritten in place changes its ctime, which
    no copy or touch can set back, so it is hashed again."""
    import hashlib

    st = os.stat(path)
    memo = (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if memo not in _SHA1_MEMO:
        h = hashlib.sha1()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA1_MEMO[memo] = h.hexdigest()
    return _SHA1_MEMO[memo]


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write atomically (a writer's own temp file + rename) so an interrupted save never leaves half a
    checkpoint, and two writers never write into the same file."""
    tmp = temporary_name(path)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def exclusive(path: Path):
    """Hold an exclusive lock on `path` (through `path`.lock) while the block runs: of two processes
    making the same file, the second waits and can then reuse what the first made."""
    import fcntl

    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:  # the file may have been removed (and made again) by the holder we waited for: lock anew
                same = os.fstat(f.fileno()).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                continue
            try:
                yield
            finally:
                lock.unlink(missing_ok=True)  # removed while held: no zero-byte file stays behind
            return


# Classes a file of this toolkit may hold beyond tensors and plain types: checkpoints written before
# provenance stored torch's version as a str carry a TorchVersion (a str subclass, no code).
SAFE_GLOBALS = [torch.torch_version.TorchVersion]


class UnsafeFile(Exception):
    """A torch file that holds a pickled object of a class outside the allow-list: never unpickled."""


def read_torch_file(path: str | Path) -> Any:
    """torch.load with weights_only=True: tensors, plain Python types and SAFE_GLOBALS only, so a
    file whose pickle names any other class or function (which could run code) is refused, not run.
    Raises UnsafeFile for such a file, and torch's own error for a truncated or foreign one."""
    import pickle

    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise UnsafeFile(f"object ({found.group(1)})") from None
        raise


def first_sentence(text: str) -> str:
    """The first sentence of an error text (torch's run to a paragraph), or its first line."""
    text = text.strip()
    if "WeightsUnpickler error:" in text:  # not a pickle at all: torch's hint about weights_only is beside the point
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    line = text.splitlines()[0] if text else ""
    return re.split(r"(?<=[a-z)])\. ", line)[0].rstrip(".")


def load_checkpoint(path: str | Path, *, dataset: str | None = None, arch: str | None = None,
                    made_by: str = "") -> dict[str, Any]:
    """Load a checkpoint and refuse one made for another data set or architecture."""
    path = Path(path)
    if not path.is_file():
        hint = f"; create it with: {made_by}" if made_by else ""
        raise UserError(f"checkpoint {path} not found{hint}")
    again = f"; remove it and make it again with: {made_by}" if made_by else "; remove it and make it again"
    try:
        ckpt = read_torch_file(path)
    except UnsafeFile as e:
        raise UserError(f"checkpoint {path} was refused: it holds a pickled {e} that is not a tensor or plain "
                        "type and could run code when loaded; load only checkpoints whose origin you trust, saved "
                        "as tensors and plain types") from None
    except Exception as e:  # a truncated or foreign file: say which file, not a traceback
        reason = first_sentence(str(e))
        raise UserError(f"checkpoint {path} could not be read, truncated or not a checkpoint ({type(e).__name__}"
                        f"{': ' + reason if reason else ''}){again}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"checkpoint {path} is not a checkpoint of this toolkit (no state_dict){again}")
    for key, want in (("dataset", dataset), ("arch", arch)):
        have = ckpt.get(key)
        if want is not None and have is not None and have != want:
            raise UserError(f"checkpoint {path} was trained with {key} {have!r}, but --{key} is {want!r}")
    return ckpt


def write_json(obj: Any, path: Path) -> None:
    tmp = temporary_name(path)
    try:
        tmp.write_text(json.dumps(obj, indent=1, default=str))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------ command identity
def script_argv(tokens: list[str]) -> list[str]:
    """[script, *args] of a command line, without the interpreter and its flags."""
    for i, t in enumerate(tokens):
        if t.endswith(".py"):
            return [Path(t).name, *tokens[i + 1:]]
    raise ValueError("no Python script in the line")


def command_hash(argv: list[str]) -> str:
    """The identity of a command: sha1 of its script name and arguments (sweeps skip finished ones)."""
    import hashlib
    import shlex

    return hashlib.sha1(shlex.join(argv).encode()).hexdigest()[:20]


def rerun_command(add: str = "", drop: tuple[str, ...] = ()) -> str:
    """The running script's own command line, to run again: without the flags `drop`, with `add`."""
    import shlex

    argv = [a for a in sys.argv if a not in drop]
    return shlex.join(["python", *argv, *([add] if add and add not in argv else [])])


def own_command_hash() -> str:
    """The hash of the running script's own command line (what its params line hashes to; the
    sweep runner's added --resume is not part of the line)."""
    return command_hash([Path(sys.argv[0]).name, *[a for a in sys.argv[1:] if a != "--resume"]])


# --------------------------------------------------------------- argument groups
def int_list(text: str) -> list[int]:
    """`91,136` -> [91, 136] (the papers' --decreasing_lr format); empty -> []."""
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Data, forget-set, model and device options: the same in every script."""
    g = parser.add_argument_group("data")
    g.add_argument("--data", default="./data", help="folder holding the data sets (default ./data)")
    g.add_argument("--dataset", default="digits", choices=sorted(DATASETS), metavar="NAME",
                   help=f"one of {', '.join(sorted(DATASETS))} (default digits, embedded in scikit-learn)")
    g.add_argument("--no-aug", "--no_aug", dest="no_aug", action="store_true",
                   help="turn off training augmentation (random crop + flip on 32x32 data)")
    g.add_argument("--seed", type=int, default=2, help="seed of the split, forget set and training (default 2)")
    g.add_argument("--subsample", type=float, default=1.0, metavar="SHARE",
                   help="keep this stratified share of the training and test sets, the same for every seed, "
                        "for quick trials (default 1: all)")

    g = parser.add_argument_group("forget set")
    g.add_argument("--class_to_replace", type=int, default=0,
                   help="class to forget from; -1 = random samples across classes (default 0)")
    g.add_argument("--num_indexes_to_replace", type=int, default=None,
                   help="size N of the forget set; the class size (the default) forgets the whole class")

    g = parser.add_argument_group("model")
    g.add_argument("--arch", default=None, choices=list_models(), metavar="ARCH",
                   help=f"one of {', '.join(list_models())} (default: smallcnn on digits, convnet on mnist and "
                        "fashionmnist, else resnet18)")
    g.add_argument("--num_classes", type=int, default=None, help="override the data set's class count")
    g.add_argument("--imagenet_arch", action="store_true", help="ImageNet-style stem (64x64 Tiny-ImageNet)")

    g = parser.add_argument_group("device and output")
    g.add_argument("--gpu", type=int, default=None, help="CUDA card index (default 0 when CUDA is available)")
    g.add_argument("--save_dir", default="./results", help="where checkpoints are written (default ./results)")
    on = {k: [d for d, v in SPEED_DEFAULTS.items() if v[k]] for k in SPEED_OPTIONS}

    def default(k):
        return f"on by default on {', '.join(on[k])}" if on[k] else "off by default on every device"
    g = parser.add_argument_group("speed (the choice is recorded in the run's params; see benchmarks/speed.py)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="train and unlearn in bf16 autocast; weights, gradients, optimizer state and batch-norm "
                        f"statistics stay fp32, evaluation runs in fp32 ({default('amp')})")
    g.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help=f"channels-last memory layout for the convolutions while training ({default('channels_last')})")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help=f"torch.compile the model's forward while training ({default('compile')})")


# The training recipe of the original and ideal models (Unlearn-Sparse's defaults): one table for
# main_baseline.py's and main_ideal.py's flags, main_backdoor.py's (--train_NAME, but for --epochs and
# --lr, which it shares), the recipe a checkpoint records and the commands this toolkit suggests.
TRAIN_FLAGS: dict[str, tuple[Callable, Any, str]] = {
    "epochs": (int, 182, "training epochs (default 182)"),
    "lr": (float, 0.1, "SGD learning rate (default 0.1)"),
    "momentum": (float, 0.9, "SGD momentum (default 0.9)"),
    "weight_decay": (float, 5e-4, "weight decay (default 5e-4)"),
    "batch_size": (int, 256, "batch size (default 256)"),
    "decreasing_lr": (int_list, [91, 136], "epochs at which lr is multiplied by 0.1, comma-separated "
                                           "(default 91,136)"),
    "warmup": (int, 0, "epochs of linear lr warm-up (default 0)"),
}
UNPREFIXED = ("epochs", "lr")  # main_backdoor.py's names for these two are main_baseline.py's


def train_dest(name: str, prefix: str = "") -> str:
    """The flag name of the recipe's `name` for a parser whose recipe flags carry `prefix`."""
    return name if name in UNPREFIXED else prefix + name


def add_train_args(group, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """The training recipe's flags on an argparse group (or parser), named by `train_dest`."""
    for name, (kind, default, text) in TRAIN_FLAGS.items():
        if name not in skip:
            group.add_argument(f"--{train_dest(name, prefix)}", type=kind, default=default, help=text)


def train_recipe(args: argparse.Namespace, prefix: str = "") -> dict:
    """The training recipe of parsed flags, under main_baseline.py's names (what a checkpoint records)."""
    recipe = {name: getattr(args, train_dest(name, prefix)) for name in TRAIN_FLAGS}
    return recipe | {"decreasing_lr": list(recipe["decreasing_lr"])}


def script_command(script: str, flags: dict[str, Any]) -> str:
    """`python SCRIPT --name value ...`, quoted for a shell; a list value is written comma-separated."""
    import shlex

    words = ["python", script]
    for name, value in flags.items():
        words += [f"--{name}", ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)]
    return shlex.join(words)


def default_arch(dataset: str) -> str:
    """The data set's default architecture (smallcnn on digits, convnet on (Fashion-)MNIST, else resnet18)."""
    return DATASETS[dataset].arch


def resolve_arch(args: argparse.Namespace) -> str:
    if args.arch is None:
        args.arch = default_arch(args.dataset)
    return args.arch
