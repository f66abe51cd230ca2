"""Speed, measured side by side: every figure is a ratio of two things timed in the same run,
on whatever device is here (CUDA when present, else the CPU). Writes a JSON of all figures.

    python -m benchmarks.speed                  # full sizes (about 30 minutes on 2 CPU cores)
    python -m benchmarks.speed --quick          # test-size mode: seconds, figures too small to quote
    python -m benchmarks.speed --sections data,eval --out speed.json
    python -m benchmarks.speed --sections epoch --update   # re-measure one section, keep the rest

Sections (--sections, comma-separated; default all):

* data: images/s of our batches (uint8 tensors on the device, indexed batches, batched crop
  and flip) against the torchvision pipeline the papers use (a Dataset serving PIL images
  through `transforms`, batched by a DataLoader with 0 and with 2 worker processes), for
  CIFAR-shaped 32x32x3 with crop and flip and for 28x28x1 as Fashion-MNIST is served (no
  augmentation).
* epoch: one unlearning epoch end to end (FT over D_R, GA over D_F), our loop (`unlearn.impl.run`)
  against a loop written the way the papers' code writes it (the DataLoader of the data
  section, a transfer per batch, fp32, torch.optim.SGD, the loss and accuracy read back every
  step), same model, data, recipe and starting weights: ResNet-18 at 32x32 and the CPU
  default model (convnet) at 28x28. Ours runs twice: like for like (fp32, contiguous, eager)
  and with the device's default speed options (utils.SPEED_DEFAULTS).
* options: training throughput (FT through our loop) of fp32 eager against bf16 autocast
  (--amp), channels-last (--channels_last) and torch.compile (--compile), each alone and
  combined, for the CPU default models (convnet 28x28, smallcnn 8x8) and ResNet-18 at 32x32;
  then the accuracy check: the test accuracy of a short Fashion-MNIST training run (digits
  where it is missing), 3 seeds, with fp32 eager and with every option set faster than it.
* addons: for every loop method, the step time with each add-on over the step time without.
* eval: the wall time of one run's evaluation after the model outputs are computed, split
  into the SVC attack, the loss attack and the rest, for CIFAR-10-sized and
  Fashion-MNIST-sized splits (synthetic logits: the cost depends on the sizes only).

No figure is asserted anywhere: the test suite runs --quick and checks that the JSON is written.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import speed_tables  # noqa: E402
from dataset import TensorData, load_data  # noqa: E402
from evaluation.accuracy import Outputs, accuracy, logits_of  # noqa: E402
from evaluation.report import against_references, model_metrics  # noqa: E402
from models import create_model  # noqa: E402
from unlearn import ADDONS, METHODS, make  # noqa: E402
from unlearn.impl import Recipe, run, shuffled_batches, sync  # noqa: E402
from utils import SPEED_DEFAULTS, cpu_info, pick_device  # noqa: E402

SECTIONS = ("data", "epoch", "options", "addons", "eval")
OPTION_SETS = {"fp32 eager": {}, "amp": {"amp": True}, "channels_last": {"channels_last": True},
               "compile": {"compile": True}, "amp+channels_last": {"amp": True, "channels_last": True},
               "amp+compile": {"amp": True, "compile": True},
               "channels_last+compile": {"channels_last": True, "compile": True},
               "amp+channels_last+compile": {"amp": True, "channels_last": True, "compile": True}}
SHAPES = {"32x32x3": (3, 32, "crop_flip"), "28x28x1": (1, 28, "none"), "8x8x1": (1, 8, "none")}


def images(n: int, channels: int, size: int, augment: str, device, classes: int = 10) -> TensorData:
    """n random uint8 images and labels as our pipeline holds them (all of them training samples)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return TensorData("synthetic", x, y, x[:0], y[:0], torch.arange(n), torch.arange(0), classes,
                      torch.full((channels,), 0.5), torch.full((channels,), 0.25), augment).to(device)


class PilImages(torch.utils.data.Dataset):
    """The papers' data path: samples served one at a time as PIL images through torchvision
    transforms, as torchvision.datasets.CIFAR10 / FashionMNIST serve them."""

    def __init__(self, data: TensorData):
        from torchvision import transforms

        self.x = data.x_train.cpu().permute(0, 2, 3, 1).numpy()  # HWC uint8, as CIFAR10.data
        self.y = data.y_train.cpu().numpy()
        size = data.image_size
        steps = [transforms.RandomCrop(size, padding=4)] if data.augment != "none" else []
        steps += [transforms.RandomHorizontalFlip()] if data.augment == "crop_flip" else []
        self.transform = transforms.Compose(steps + [transforms.ToTensor(),
                                                     transforms.Normalize(data.mean.tolist(), data.std.tolist())])

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image

        img = self.x[i]
        img = Image.fromarray(img[:, :, 0], mode="L") if img.shape[2] == 1 else Image.fromarray(img)
        return self.transform(img), int(self.y[i])


def torchvision_loader(data: TensorData, batch: int, workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(PilImages(data), batch_size=batch, shuffle=True, num_workers=workers)


def timed(device, fn, *args) -> float:
    """Wall time of fn(*args), the device's queued work included."""
    sync(device)
    t0 = time.perf_counter()
    fn(*args)
    sync(device)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- data
def our_epoch_of_batches(data: TensorData, batch: int, seed: int = 0) -> None:
    gen = torch.Generator(device=data.x_train.device).manual_seed(seed)
    for idx in shuffled_batches(torch.arange(len(data.y_train), device=data.x_train.device), batch, gen):
        data.batch(idx, train=True, generator=gen)


def torchvision_epoch_of_batches(loader, device) -> None:
    for x, y in loader:
        x.to(device), y.to(device)


def data_section(a, device) -> dict:
    out = {}
    for name in ("32x32x3", "28x28x1"):
        c, size, augment = SHAPES[name]
        data = images(a.data_n, c, size, augment, device)
        our_epoch_of_batches(data, a.batch)  # warm-up
        ours = min(timed(device, our_epoch_of_batches, data, a.batch) for _ in range(a.repeats))
        row = {"images": a.data_n, "augment": augment, "batch": a.batch, "ours_img_s": a.data_n / ours}
        for w in (0, 2):
            loader = torchvision_loader(data, a.batch, w)
            row[f"torchvision_{w}_workers_img_s"] = a.data_n / min(
                timed(device, torchvision_epoch_of_batches, loader, device) for _ in range(a.repeats))
        best = max(row["torchvision_0_workers_img_s"], row["torchvision_2_workers_img_s"])
        row["ratio_ours_over_best_torchvision"] = row["ours_img_s"] / best
        out[name] = row
        print(f"data {name} ({augment}): ours {row['ours_img_s']:,.0f} img/s, torchvision "
              f"{row['torchvision_0_workers_img_s']:,.0f} (0 workers) / {row['torchvision_2_workers_img_s']:,.0f} "
              f"(2 workers) img/s: {row['ratio_ours_over_best_torchvision']:.1f}x the faster", flush=True)
    return out


# ---------------------------------------------------------------------------- epoch
def papers_style_epoch(model, loader, ascent: bool, recipe: Recipe, device) -> None:
    """One epoch as the papers' FT.py / GA.py write it: a DataLoader, each batch moved to the
    device, fp32, torch.optim.SGD, and the loss and top-1 accuracy read back every step."""
    optimizer = torch.optim.SGD(model.parameters(), recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    criterion = torch.nn.CrossEntropyLoss()
    model.train()
    losses, top1 = [], []
    for image, target in loader:
        image, target = image.to(device), target.to(device)
        output = model(image)
        loss = -criterion(output, target) if ascent else criterion(output, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.float().item())
        top1.append((output.float().argmax(1) == target).float().mean().item() * 100)


def our_epoch(model, data: TensorData, ascent: bool, recipe: Recipe, seed: int) -> None:
    everything = torch.arange(len(data.y_train), device=data.x_train.device)
    none = everything[:0]
    forget, retain = (everything, none) if ascent else (none, everything)
    method, addon = make("GA" if ascent else "FT")
    run(model, data, forget, retain, method, addon, recipe, seed=seed, progress=False)


def epoch_section(a, device) -> dict:
    out = {}
    setups = [(a.big_arch, "32x32x3", a.resnet_n, a.resnet_batch), ("convnet", "28x28x1", a.convnet_n, a.batch)]
    for arch, shape, n, batch in setups:
        c, size, augment = SHAPES[shape]
        data = images(n, c, size, augment, device)
        loader = torchvision_loader(data, batch, a.loader_workers)
        torch.manual_seed(0)
        start = create_model(arch, 10, c).to(device)
        for method in ("FT", "GA"):
            recipe = Recipe(lr=0.01 if method == "FT" else 1e-4, epochs=1, batch_size=batch)
            # like for like (fp32, contiguous, eager), and with this device's default speed options
            with_defaults = dataclasses.replace(recipe, **SPEED_DEFAULTS.get(device.type, {}))
            ascent = method == "GA"
            times = {"ours": [], "ours_defaults": [], "papers_style": []}
            for rep in range(a.repeats + 1):  # the first of each is a warm-up, not counted
                t_ours = timed(device, our_epoch, copy.deepcopy(start), data, ascent, recipe, rep)
                t_def = timed(device, our_epoch, copy.deepcopy(start), data, ascent, with_defaults, rep)
                t_theirs = timed(device, papers_style_epoch, copy.deepcopy(start), loader, ascent, recipe, device)
                if rep:
                    times["ours"].append(t_ours)
                    times["ours_defaults"].append(t_def)
                    times["papers_style"].append(t_theirs)
            ours, theirs = statistics.median(times["ours"]), statistics.median(times["papers_style"])
            ours_def = statistics.median(times["ours_defaults"])
            key = f"{method} {arch} {shape}"
            defaults = "+".join(k for k, v in SPEED_DEFAULTS.get(device.type, {}).items() if v) or "fp32 eager"
            out[key] = {"images": n, "batch": batch, "loader_workers": a.loader_workers, "ours_s": ours,
                        "papers_style_s": theirs, "ratio_papers_over_ours": theirs / ours,
                        "device_defaults": defaults, "ours_defaults_s": ours_def,
                        "ratio_papers_over_ours_defaults": theirs / ours_def}
            print(f"epoch {key}: ours {ours:.2f} s (fp32 eager), {ours_def:.2f} s ({defaults}); papers' style "
                  f"{theirs:.2f} s: ours {theirs / ours:.2f}x and {theirs / ours_def:.2f}x as fast", flush=True)
    return out


# -------------------------------------------------------------------------- options
def train_epoch_time(arch: str, shape: str, n: int, batch: int, options: dict, device) -> tuple[float, float]:
    """(first epoch s, steady epoch s) of FT through our loop with the options."""
    c, size, augment = SHAPES[shape]
    data = images(n, c, size, augment, device)
    torch.manual_seed(0)
    model = create_model(arch, 10, c).to(device)
    recipe = Recipe(lr=0.01, epochs=2, batch_size=batch, **options)
    idx = torch.arange(n, device=device)
    t0 = time.perf_counter()
    _, hist = run(model, data, idx[:0], idx, make("FT")[0], None, recipe, seed=0, progress=False)
    first_total = time.perf_counter() - t0
    return first_total - hist[1]["time_s"], hist[1]["time_s"]


def test_accuracy(dataset: str, arch: str, options: dict, seeds: list[int], epochs: int, device) -> list[float]:
    """Test accuracy of `arch` trained from scratch on `dataset` with the options (FT through our loop,
    lr 0.05, x0.1 after two thirds of the epochs), one figure per seed."""
    accs = []
    for seed in seeds:
        data = load_data(dataset, "./data", seed).to(device)
        torch.manual_seed(seed)
        model = create_model(arch, data.num_classes, data.in_channels).to(device)
        recipe = Recipe(lr=0.05, epochs=epochs, batch_size=64 if dataset == "digits" else 256,
                        decreasing_lr=[max(1, epochs * 2 // 3)], **options)
        run(model, data, data.train_idx[:0], data.train_idx, make("FT")[0], None, recipe, seed=seed,
            progress=False)
        accs.append(accuracy(logits_of(model, data, data.x_test), data.y_test))
    return accs


def options_section(a, device) -> dict:
    out: dict = {"throughput": {}}
    sets = {k: v for k, v in OPTION_SETS.items() if a.compile or "compile" not in k}
    for arch, shape, n, batch in (("convnet", "28x28x1", a.convnet_n, a.batch),
                                  ("smallcnn", "8x8x1", a.convnet_n, 64),
                                  (a.big_arch, "32x32x3", a.options_resnet_n, a.resnet_batch)):
        rows = {}
        for name, options in sets.items():
            if arch == "resnet18" and "compile" in name and not a.compile_resnet:
                continue
            first, steady = train_epoch_time(arch, shape, n, batch, options, device)
            rows[name] = {"img_s": n / steady, "first_epoch_extra_s": first - steady}
        base = rows["fp32 eager"]["img_s"]
        for name, r in rows.items():
            r["speedup_over_fp32_eager"] = r["img_s"] / base
            print(f"options {arch} {shape} {name}: {r['img_s']:,.1f} img/s ({r['speedup_over_fp32_eager']:.2f}x fp32 "
                  f"eager; the first epoch took {max(0.0, r['first_epoch_extra_s']):.1f} s longer)", flush=True)
        out["throughput"][f"{arch} {shape}"] = rows
    # The accuracy check: fp32 eager and every option set faster than it on the CPU default model
    # (an option that is slower is never a default, so its accuracy decides nothing).
    fastest = out["throughput"]["convnet 28x28x1"]
    checked = ["fp32 eager"] + [k for k, r in fastest.items() if k != "fp32 eager" and r["speedup_over_fp32_eager"] > 1]
    dataset, arch = a.accuracy_dataset, "smallcnn" if a.accuracy_dataset == "digits" else "convnet"
    seeds = list(range(1, a.accuracy_seeds + 1))
    rows = {}
    for name in checked:
        accs = test_accuracy(dataset, arch, OPTION_SETS[name], seeds, a.accuracy_epochs, device)
        rows[name] = {"test_acc": accs, "mean": float(np.mean(accs)), "std": float(np.std(accs))}
        print(f"options accuracy {dataset}/{arch} {name}: {np.mean(accs):.2f} +- {np.std(accs):.2f} "
              f"({len(seeds)} seeds, {a.accuracy_epochs} epochs)", flush=True)
    out["accuracy"] = {"dataset": dataset, "arch": arch, "epochs": a.accuracy_epochs, "seeds": seeds, "sets": rows}
    return out


# --------------------------------------------------------------------------- addons
def addons_section(a, device) -> dict:
    out = {}
    c, size, augment = SHAPES["28x28x1"]
    data = images(a.addon_forget + a.addon_retain, c, size, augment, device)
    idx = torch.arange(len(data.y_train), device=device)
    forget, retain = idx[: a.addon_forget], idx[a.addon_forget:]
    torch.manual_seed(0)
    start = create_model("convnet", 10, c).to(device)
    for method_name in sorted(m for m, cls in METHODS.items() if cls.kind == "loop"):
        row = {}
        for addon_name in sorted(ADDONS, key=lambda s: s != "none"):
            spec = method_name if addon_name == "none" else f"{method_name}+{addon_name}"
            per_step = []
            for rep in range(a.repeats + 1):
                method, addon = make(spec)
                _, hist = run(copy.deepcopy(start), data, forget, retain, method, addon,
                              Recipe(lr=1e-4, epochs=1, batch_size=a.addon_batch), seed=rep, progress=False)
                if rep:
                    per_step.append(hist[0]["time_s"] / hist[0]["steps"])
            row[addon_name] = {"step_ms": 1000 * statistics.median(per_step)}
        for r in row.values():
            r["ratio_over_none"] = r["step_ms"] / row["none"]["step_ms"]
        out[method_name] = row
        print(f"addons {method_name}: " + ", ".join(f"{k} {r['ratio_over_none']:.2f}x" for k, r in row.items()
                                                      if k != "none") +
              f" (none {row['none']['step_ms']:.1f} ms/step)", flush=True)
    return out


# ----------------------------------------------------------------------------- eval
def synthetic_outputs(sizes: dict[str, int], classes: int, margin: float, seed: int) -> Outputs:
    g = torch.Generator().manual_seed(seed)

    def split(n, m):
        y = torch.randint(0, classes, (n,), generator=g)
        x = torch.randn(n, classes, generator=g)
        x[torch.arange(n), y] += m + torch.randn(n, generator=g)
        return x, y

    (f, yf), (r, yr), (t, yt), (v, yv) = (split(sizes[k], margin + d) for k, d in
                                          (("forget", 1), ("retain", 3), ("test", 0), ("val", 0)))
    return Outputs(f, r, t, v, yf, yr, yt, yv)


def eval_section(a, device) -> dict:
    out = {}
    shapes = {"CIFAR-10-sized (4,500 of 45,000 forgotten; 5,000 val; 10,000 test)":
              {"forget": 4500, "retain": 40500, "val": 5000, "test": 10000},
              "Fashion-MNIST-sized (5,400 of 54,000 forgotten; 6,000 val; 10,000 test)":
              {"forget": 5400, "retain": 48600, "val": 6000, "test": 10000}}
    for name, sizes in shapes.items():
        sizes = {k: max(20, v // a.eval_scale) for k, v in sizes.items()}
        mine, ideal = synthetic_outputs(sizes, 10, 3, 0), synthetic_outputs(sizes, 10, 3, 1)
        ref_ideal, ref_original = model_metrics(ideal), model_metrics(synthetic_outputs(sizes, 10, 8, 2))
        t = {}
        t0 = time.perf_counter()
        metrics = model_metrics(mine, timings=t)
        t1 = time.perf_counter()
        against_references(mine, metrics, ref_original, ref_ideal, ideal)
        t["rest_s"] += time.perf_counter() - t1
        t["total_s"] = time.perf_counter() - t0
        out[name] = {"sizes": sizes, **t}
        print(f"eval {name}: {t['total_s']:.1f} s (SVC attack {t['svc_attack_s']:.1f} s, loss attack "
              f"{t['loss_attack_s']:.2f} s, the rest {t['rest_s']:.2f} s)", flush=True)
    return out


# ----------------------------------------------------------------------------- main
def machine(device) -> dict:
    cpu, flags = cpu_info()
    return {"device": str(device), "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "cpu": cpu, "cpu_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "torch": torch.__version__, "python": platform.python_version()}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="test-size mode: tiny sizes, one repeat, no torch.compile")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    p.add_argument("--out", default=None, help="the JSON (default benchmark_results/speed_<device>.json)")
    p.add_argument("--update", action="store_true",
                   help="keep the other sections of an existing --out JSON and replace only those run now "
                        "(each section records when it ran)")
    p.add_argument("--gpu", type=int, default=None)
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="leave torch.compile out of the options section")
    p.add_argument("--accuracy_dataset", choices=("digits", "fashionmnist"), default=None,
                   help="the options section's accuracy check (default: fashionmnist when it is on disk, else "
                        "digits; digits in --quick)")
    p.add_argument("--compile_resnet", action="store_true",
                   help="also compile ResNet-18 in the options section (minutes of compile time on a CPU)")
    return p


def sizes(a: argparse.Namespace) -> None:
    """The sizes of each section, full or quick."""
    full = dict(big_arch="resnet18", data_n=10000, batch=256, repeats=3, resnet_n=512, resnet_batch=128,
                options_resnet_n=64, convnet_n=4096,
                loader_workers=0, accuracy_seeds=3, accuracy_epochs=3, addon_forget=512, addon_retain=2048,
                addon_batch=128, eval_scale=1)
    # quick: the code paths only; a small model stands in for ResNet-18 at 32x32
    quick = dict(big_arch="convnet", data_n=512, batch=64, repeats=1, resnet_n=64, resnet_batch=16,
                 options_resnet_n=64, convnet_n=256,
                 loader_workers=0, accuracy_seeds=1, accuracy_epochs=1, addon_forget=32, addon_retain=64,
                 addon_batch=16, eval_scale=50)
    for k, v in (quick if a.quick else full).items():
        setattr(a, k, v)
    if a.quick:
        a.compile = a.compile_resnet = False
    if a.accuracy_dataset is None:  # Fashion-MNIST when it is here (Debian's package, or --data), else digits
        try:
            load_data("fashionmnist", "./data", 1)
            a.accuracy_dataset = "digits" if a.quick else "fashionmnist"
        except Exception:
            a.accuracy_dataset = "digits"


def main(argv: list[str] | None = None) -> dict:
    a = parser().parse_args(argv)
    sizes(a)
    chosen = [s.strip() for s in a.sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"error: unknown section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    device = pick_device(a.gpu)
    torch.manual_seed(0)
    report = {"machine": machine(device), "quick": a.quick, "sizes": {k: v for k, v in vars(a).items()
                                                                       if k not in ("sections", "out", "gpu")}}
    print(f"speed on {report['machine']['device']} ({report['machine']['cpu']}, {report['machine']['cpu_threads']} "
          f"threads, torch {torch.__version__}){' -- quick mode: sizes too small to quote' if a.quick else ''}")
    sections = {"data": data_section, "epoch": epoch_section, "options": options_section,
                "addons": addons_section, "eval": eval_section}
    out = Path(a.out or f"benchmark_results/speed_{device.type}.json")
    if a.update and out.exists():
        kept = json.loads(out.read_text())
        if kept.get("machine") != report["machine"] or kept.get("quick") != a.quick:
            raise SystemExit(f"error: {out} was measured on another machine or mode; drop --update or pick --out")
        report = {**kept, "sizes": report["sizes"]}
    for name in chosen:
        t0 = time.perf_counter()
        report[name] = sections[name](a, device)
        report.setdefault("section_wall_s", {})[name] = time.perf_counter() - t0
        report.setdefault("section_run_at", {})[name] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out.parent.mkdir(parents=True, exist_ok=True)
    report["recommendation"] = recommendation(report)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(report["recommendation"])
    print(f"figures -> {out}, tables -> {speed_tables.write(out)}")
    return report


def recommendation(report: dict) -> str:
    """What the options section measured on this machine, as advice: each option's best speed-up over
    fp32 eager across the models, and whether the CPU has native bf16. The defaults do not follow it
    (utils/impl SPEED_DEFAULTS are per device type, fp32 everywhere, so that results match across
    machines); this says what to pass here."""
    m = report["machine"]
    native = m.get("amx_bf16") or m.get("avx512_bf16")
    lines = [f"on this machine ({m['cpu']}, kernels {m['cpu_capability']}, native bf16: "
             f"{'yes' if native else 'no'}):"]
    throughput = (report.get("options") or {}).get("throughput") or {}
    for option in ("amp", "channels_last", "compile", "amp+channels_last"):
        ratios = [models[option]["speedup_over_fp32_eager"] for models in throughput.values() if option in models]
        if ratios:
            verdict = "faster: pass --" + option.replace("+", " --") if min(ratios) > 1.05 else \
                "slower or no gain: leave it off" if max(ratios) < 1.0 else "mixed: depends on the model"
            lines.append(f"  {option}: {min(ratios):.2f}-{max(ratios):.2f}x over fp32 eager ({verdict})")
    if len(lines) == 1:
        lines.append("  run the options section to measure (--sections options)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
