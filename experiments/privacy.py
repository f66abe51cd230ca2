"""Per-example privacy audits (main_audit.py): U-LiRA over shadow ensembles.

Flow: resolve (flags, data, the balanced design) -> shadows (load the stored shadow and control
models, train what is missing or damaged) -> unlearn F_k from every shadow with the method under
test, through the library call `unlearn.unlearn` as mlflow_forget.py runs it -> attack (the method,
and the two sanity cases: the controls scored as unlearned models, which must come out at chance,
and the untouched shadows, which must come out vulnerable) -> record (MLflow run, per-example CSV,
plots) -> report.

The ensembles are stored once under --save_dir/ensembles/, in a folder named by a hash of everything
that defines them (data set, subsample, architecture and its ImageNet stem, training recipe, seed, K,
|T|, the ensemble mode, the design's sets), with `design.json` holding that definition; every method
and rerun of one design reuses them. A model file that does not load, or that records another design, is trained again.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import utils
from audits.ensemble import MODES, fit_many
from audits.ulira import FPRS, MIN_SHADOWS, MIN_SIDE, Design, attack, balanced_design, margins
from dataset import ForgetSplit, forget_split, load_data
from evaluation.accuracy import logits_of
from evaluation.mia import attack_features, svc_efficacy, svc_samples
from experiments import forget, references, trainer
from experiments.tracking import Run
from models import create_model
from unlearn import spec_name, unlearn
from unlearn.impl import Diverged, check_sets
from unlearn.train import selection_idx
from utils import UserError

AUDITS = ("ulira", "epsilon", "klom")
RECIPE_PREFIX = "train_"  # --train_momentum...: --momentum and the others name the unlearning recipe
SEED_STRIDE = 1000  # shadow k of --seed s has seed s * SEED_STRIDE + k


def build_parser(doc: str) -> argparse.ArgumentParser:
    parser = forget.build_parser(doc)
    g = parser.add_argument_group("per-example privacy audit (docs/privacy.md)")
    g.add_argument("--audit", default="ulira", choices=AUDITS,
                   help="ulira: U-LiRA over shadow models (default); epsilon: the NeurIPS 2023 challenge's forgetting "
                        "score; klom: KLoM (both on the forget set the flags name, sharing one store of originals and "
                        "oracles)")
    g.add_argument("--methods", nargs="+", default=None, metavar="SPEC",
                   help="audit each of these (METHOD[+ADDON] or retrain) in turn on the same ensembles, each at "
                        "its own published recipe unless the recipe flags say otherwise, and write a table "
                        "(instead of --unlearn)")
    g.add_argument("--tuned", default=None, metavar="FILE",
                   help="also audit each of --methods at the values tune.py chose (tuned.json of the same data set, "
                        "architecture and training epochs; rows `METHOD (tuned)`): epsilon and klom take the "
                        "scenario of the forget set the flags name, ulira the random-forgetting one")
    g.add_argument("--combine", nargs="+", default=None, metavar="CSV",
                   help="train and audit nothing: put the tables these audits wrote (their CSVs, any of ulira, "
                        "epsilon and klom) into one table at --table, with how the scores rank the methods and what "
                        "each add-on changes")
    g.add_argument("--table", default=None, metavar="FILE.md",
                   help="write the methods' table here (default with --methods: table.md, or table_AUDIT.md for "
                        "epsilon and klom, in the ensemble folder); a CSV goes beside it")
    g.add_argument("--shadows", type=int, default=64, metavar="K",
                   help=f"models per ensemble (default 64). ulira: shadow models, a multiple of 4, at least "
                        f"{MIN_SHADOWS}; epsilon: unlearning runs from one original and retrained models; klom: "
                        "originals and oracles; both even, at least 4 (the noise floor splits the oracles in halves)")
    g.add_argument("--targets", type=int, default=200, metavar="N",
                   help="targets |T|, even, drawn stratified by class from the training set (default 200)")
    g.add_argument("--ensemble_mode", default="sequential", choices=MODES,
                   help="train the ensembles one model after another in this process (default; the faster on "
                        "2 CPU cores, benchmarks/ensemble_speed.py) or stacked in one vmapped step")
    g.add_argument("--ensemble_dir", default=None, metavar="DIR",
                   help="where the shadow and control models live (default: a folder under --save_dir/ensembles "
                        "named by the design's hash); a folder made for another design is refused")
    g = parser.add_argument_group("training of the shadow and control models (main_baseline.py's recipe; "
                                  "--epochs is their epoch count)")
    utils.add_train_args(g, RECIPE_PREFIX, skip=("epochs",))
    return parser


@dataclasses.dataclass
class Audit:
    args: argparse.Namespace
    spec: str
    kind: str
    hparams: dict
    recipe: object  # the unlearning recipe (None for a one-shot method)
    train_recipe: object  # the shadows' training recipe
    data: object
    design: Design | None  # U-LiRA's
    split: ForgetSplit | None  # epsilon and klom: the forget set the flags name
    sets: dict  # kind -> the index set each of its models trains on
    device: object
    folder: Path
    key: dict

    def seed(self, k: int) -> int:
        return self.args.seed * SEED_STRIDE + k

    def build(self):
        return create_model(self.args.arch, self.data.num_classes, self.data.in_channels, self.args.imagenet_arch)


def resolve_all(args: argparse.Namespace) -> list[Audit]:
    """--unlearn, or each of --methods, resolved (all checked before anything trains). The data, the
    design and the store are resolved once, with the first; each other method only resolves its own
    method, recipe and sets check, and shares them."""
    specs = args.methods or [args.unlearn]
    entries = [(spec, None) for spec in specs] + tuned_entries(args, specs)
    first = resolve(argparse.Namespace(**(vars(args) | {"unlearn": specs[0]})))
    return [first, *(tuned_part(first, spec, best) for spec, best in entries[1:])]


def tuned_part(first: Audit, spec: str, best: dict | None) -> Audit:
    """The Audit of `spec` on `first`'s data and store: at its published recipe, or at the tuned `best`."""
    values = {"unlearn": spec}
    if best is not None:
        best = dict(best)
        values |= {"unlearn_lr": best.pop("lr", None), "unlearn_epochs": best.pop("epochs", None), **best}
    own = method_part(argparse.Namespace(**(vars(first.args) | values)), first.design, first.split)
    if best is not None:
        own["spec"] += " (tuned)"
    return dataclasses.replace(first, **own)


def tuned_entries(args: argparse.Namespace, specs: list[str]) -> list[tuple[str, dict]]:
    """(spec, tuned values) of every spec but retrain, from --tuned (tune.py's tuned.json), checked
    against the flags: the same data set, subsample, architecture and training epochs, and a scenario
    that matches (epsilon, klom: the forget set the flags name; ulira: random forgetting)."""
    if not args.tuned:
        return []
    utils.resolve_arch(args)
    path = Path(args.tuned)
    if not path.is_file():
        raise UserError(f"--tuned {path} not found; make it with: python tune.py --preset NAME --search_only")
    try:
        doc = json.loads(path.read_text())
        extra = doc["extra_base"]
        theirs = {"dataset": doc["dataset"], "arch": doc["arch"], "epochs": doc["epochs"],
                  "subsample": float(extra[extra.index("--subsample") + 1]) if "--subsample" in extra else 1.0}
        scenarios = {name: (s["class_to_replace"], s["num_indexes_to_replace"], s["methods"])
                     for name, s in doc["scenarios"].items()}
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise UserError(f"--tuned {path} is not a tuned.json of tune.py ({e}); make it again with tune.py") from None
    mine = {k: getattr(args, k) for k in theirs}
    diff = [f"{k} {theirs[k]!r} (here {mine[k]!r})" for k in theirs if theirs[k] != mine[k]]
    if diff:
        raise UserError(f"--tuned {path} was made for another setting: {'; '.join(diff)}; give the flags it was "
                        f"made with, or tune this setting with tune.py")
    if args.audit == "ulira":
        match = [n for n, (c, _, _) in scenarios.items() if c == -1]
        wanted = "random forgetting (U-LiRA's targets are random samples)"
    else:
        match = [n for n, (c, n_, _) in scenarios.items()
                 if (c, n_) == (args.class_to_replace, args.num_indexes_to_replace)]
        wanted = f"--class_to_replace {args.class_to_replace} --num_indexes_to_replace {args.num_indexes_to_replace}"
    if len(match) != 1:
        raise UserError(f"--tuned {path} has {len(match)} scenarios for {wanted} (it has: "
                        f"{', '.join(scenarios)}); give a tuned.json with exactly one")
    methods = scenarios[match[0]][2]
    missing = [s for s in specs if s != "retrain" and s not in methods]
    if missing:
        raise UserError(f"--tuned {path} has no tuned values for {', '.join(missing)} in scenario {match[0]!r} (it "
                        f"has {', '.join(methods)}); tune them with tune.py --methods, or leave them out")
    return [(s, methods[s]["best"]) for s in specs if s != "retrain"]


def slug(spec: str) -> str:
    """A method's name as a file-name part: GA+VarGrad (tuned) -> GA_VarGrad_tuned."""
    return spec.replace("+", "_").replace(" (tuned)", "_tuned")


def main(args: argparse.Namespace) -> list[dict]:
    """U-LiRA of --unlearn, or of each of --methods in turn on the same ensembles; returns their metrics."""
    audits = resolve_all(args)
    models = ensembles(audits[0])
    shadows, controls = models["shadow"], models["control"]
    sanity = {"control": statistics(audits[0], controls), "original": statistics(audits[0], shadows)}
    sanity_mia = {name: [svc_of(m, audits[0], _split(audits[0].design, k, audits[0].device))
                         for k, m in enumerate(models)] for name, models in (("control", controls),
                                                                               ("original", shadows))}
    rows = each_row(audits, lambda audit: run_one(audit, shadows, controls, sanity, sanity_mia))
    if args.table or len(audits) > 1:
        write_table(audits[0], rows, Path(args.table) if args.table else audits[0].folder / "table.md")
    return rows


def run_one(audit: Audit, shadows: list, controls: list, sanity: dict, sanity_mia: dict) -> dict:
    """One method on the stored ensembles: unlearn, attack, log, report; returns its metrics."""
    tracker = open_run(audit)
    with finishing(tracker):
        tracker.params({"statistic": "log p_y - log(1 - p_y)"})
        t0 = time.perf_counter()
        unlearned, mia = unlearn_all(audit, shadows, controls)
        wall = time.perf_counter() - t0
        results = {}
        for name, stat in (("method", statistics(audit, unlearned)), *sanity.items()):
            results[name] = attack(stat, audit.design.member) | {"stat": stat, "member": audit.design.member}
        metrics = figures(results) | {"SVC_MIA": float(np.mean(mia)), "SVC_MIA_std": float(np.std(mia)),
                                      "unlearn_time_s": wall}
        for name, values in sanity_mia.items():
            metrics |= {f"{name}/SVC_MIA": float(np.mean(values)), f"{name}/SVC_MIA_std": float(np.std(values))}
        tracker.metrics(metrics)
        out = audit.folder / "audits" / f"{slug(audit.spec)}_{tracker.id[:8]}"
        out.mkdir(parents=True, exist_ok=True)
        for path in write_outputs(audit, results, out):
            tracker.artifact(path)
    report(audit, metrics, out, tracker)
    return {"method": audit.spec, **metrics}


def _recipe_params(audit: Audit) -> dict:
    r = audit.recipe
    if r is None or audit.kind == "retrain":
        return {"recipe": audit.kind}
    return {"recipe_lr": r.lr, "recipe_epochs": r.epochs, "recipe_optimizer": r.optimizer,
            "recipe_batch_size": r.batch_size}


# --------------------------------------------------------------------------------- resolve
def resolve(args: argparse.Namespace) -> Audit:
    """Check the flags and build the design; a one-line UserError before anything is written."""
    utils.resolve_arch(args)
    if args.audit == "ulira":
        if args.shadows < MIN_SHADOWS or args.shadows % 4:
            raise UserError(f"--shadows {args.shadows}: give a multiple of 4, at least {MIN_SHADOWS} (two folds of "
                            f"complement pairs, each fitting {MIN_SIDE} or more models on each side of every target)")
        if args.targets % 2:
            raise UserError(f"--targets {args.targets}: give an even number (each complement pair splits them in "
                            "halves)")
    elif args.shadows < 4 or args.shadows % 2:
        raise UserError(f"--shadows {args.shadows}: --audit {args.audit} needs an even number, at least 4 (its noise "
                        "floor scores one half of the retrained models against the other)")
    train_with = utils.train_recipe(args, RECIPE_PREFIX)
    trainer.validate_recipe(train_with, RECIPE_PREFIX)
    device = utils.device_for(args)
    utils.set_seed(args.seed)
    data = load_data(args.dataset, args.data, args.seed, None, args.no_aug, args.subsample)
    design, split = None, None
    if args.audit == "ulira":
        try:
            design = balanced_design(data.train_idx, data.y_train, args.targets, args.shadows, args.seed)
        except ValueError as e:
            raise UserError(f"--targets {args.targets}: {e}") from None
        sets = {"shadow": design.train_sets, "control": design.control_sets}
    else:
        split = forget_split(data, args.seed, args.class_to_replace, args.num_indexes_to_replace)
        sets = {"original": [data.train_idx] * args.shadows, "oracle": [split.retain] * args.shadows}
    own = method_part(args, design, split)  # the method's checks, before the store is touched
    shadow_recipe = trainer.recipe_of({**train_with, **speed(args)})
    key = store_key(args, shadow_recipe, design, split)
    if design is not None:
        name = f"{args.dataset}_{args.arch}_K{args.shadows}_T{args.targets}_s{args.seed}"
    else:
        name = (f"{args.dataset}_{args.arch}_N{args.shadows}_C{args.class_to_replace}_"
                f"N{split.info['num_indexes_to_replace']}_s{args.seed}")
    folder = Path(args.ensemble_dir) if args.ensemble_dir else (
        Path(args.save_dir) / "ensembles" / f"{name}_{references.digest(key)[:10]}")
    check_store(folder, key)
    utils.check_writable(args.save_dir)
    return Audit(**own, train_recipe=shadow_recipe, data=data.to(device), design=design,
                 split=split.to(device) if split is not None else None, sets=sets, device=device, folder=folder,
                 key=key)


def store_key(args: argparse.Namespace, recipe, design: Design | None, split: ForgetSplit | None) -> dict:
    """What every model of an ensemble store depends on (its design.json; each part tested alone in
    tests/test_caches.py): the data (data set and --subsample; --no_aug changes the batches), the
    architecture, the shadows' whole training recipe (speed options included), the seed every model's
    seed derives from, K, how they are trained (stacked or sequential sum in other orders), and the sets
    they train on: U-LiRA's design (targets, membership, every shadow's set: its sha1, which --targets
    also names for the folder), or the forget set (its sha1; the oracles train on the rest)."""
    key = {"format": 1, "dataset": args.dataset, "subsample": args.subsample, "no_aug": args.no_aug,
           "arch": args.arch, "imagenet_arch": args.imagenet_arch, "recipe": dataclasses.asdict(recipe),
           "seed": args.seed, "shadows": args.shadows, "mode": args.ensemble_mode}
    if design is not None:
        return key | {"targets": args.targets, "design_sha1": design_hash(design)}
    return key | {"forget_sha1": split.info["forget_sha1"]}


def method_part(args: argparse.Namespace, design: Design | None, split: ForgetSplit | None) -> dict:
    """What is one method's own in an Audit (its args, spec, kind, hyper-parameters and unlearning
    recipe), resolved for `args.unlearn` on the design's sets or the forget set; a one-line UserError."""
    method_name, addon_name, method, addon, hparams = forget.method_of(args)
    kind = type(method).kind
    train_with = utils.train_recipe(args, RECIPE_PREFIX)
    fake = {"epochs": args.epochs, "seed": args.seed, "args": {**train_with, **speed(args)}}
    recipe = forget.unlearning_recipe(args, method, kind, Path("shadow models"), fake) if kind != "one-shot" else None
    if kind == "retrain" and (args.unlearn_lr is not None or args.unlearn_epochs is not None):
        print("warning: retrain is the stored retrained models (controls, or oracles), trained with the ensembles' "
              "recipe; --unlearn_lr and --unlearn_epochs do not apply to it", file=sys.stderr)
    if kind == "loop":
        forget_size, retain_size = ((len(design.forget_sets[0]), len(design.control_sets[0])) if design is not None
                                    else (len(split.forget), len(split.retain)))
        try:
            check_sets(method, addon, forget_size, retain_size)
        except ValueError as e:
            raise UserError(str(e)) from None
    return {"args": args, "spec": spec_name(method_name, addon_name), "kind": kind, "hparams": hparams,
            "recipe": recipe}


def speed(args: argparse.Namespace) -> dict:
    """The speed options the flags resolve to on this run's device (as the scripts resolve them)."""
    from unlearn.impl import speed_defaults

    defaults = speed_defaults(utils.device_for(args))
    return {k: getattr(args, k) if getattr(args, k) is not None else defaults.get(k, False)
            for k in utils.SPEED_OPTIONS}


def design_hash(design: Design) -> str:
    h = hashlib.sha1()
    for t in (design.targets, design.member.to(torch.uint8), *design.train_sets):
        h.update(t.cpu().numpy().astype(np.int64).tobytes())
    return h.hexdigest()


def check_store(folder: Path, key: dict) -> None:
    """Refuse a store folder made for another design (nothing in it is touched)."""
    record = folder / "design.json"
    if not record.is_file():
        return
    try:
        stored = json.loads(record.read_text())
    except ValueError:
        raise UserError(f"{record} is not readable JSON: remove it (the models beside it are retrained or kept "
                        "as they match)") from None
    if stored != key:
        differ = sorted(k for k in set(stored) | set(key) if stored.get(k) != key.get(k))
        raise UserError(f"{folder} holds an ensemble made for another design ({', '.join(differ)} differ): pass "
                        f"another --ensemble_dir, or the flags that made it")


# -------------------------------------------------------------------------------- ensembles
def ensembles(audit: Audit) -> dict[str, list]:
    """Every kind's K models (U-LiRA: `shadow` on S_k and `control` on S_k minus F_k; epsilon and klom:
    `original` on the training set and `oracle` on D_R, seeds differing): loaded where stored and sound,
    trained (and stored, one by one) where missing or damaged."""
    audit.folder.mkdir(parents=True, exist_ok=True)
    utils.write_json(audit.key, audit.folder / "design.json")
    out = {}
    for kind, sets in audit.sets.items():
        count = len(sets)
        models, missing = [None] * count, []
        for k in range(count):
            models[k] = _load(audit, kind, k)
            if models[k] is None:
                missing.append(k)
        if missing:
            t0 = time.perf_counter()
            print(f"{kind} models: training {len(missing)} of {count} ({audit.args.ensemble_mode}, "
                  f"{len(sets[missing[0]])} samples each, {audit.train_recipe.epochs} epochs) -> {audit.folder}",
                  flush=True)
            forgotten = audit.split.info["class_to_replace"] if (
                kind == "oracle" and audit.split.is_class_forgetting) else None
            val = selection_idx(audit.data, forgotten)  # main_ideal.py's rule for a class it never saw
            build = lambda: audit.build().to(audit.device)  # noqa: E731

            def store(i: int, model, epoch: int, kind=kind, missing=missing, models=models) -> None:
                k = missing[i]  # stored as soon as trained: a stopped run keeps what it finished
                models[k] = model.to(audit.device)
                utils.save_checkpoint({"state_dict": {n: v.cpu() for n, v in model.state_dict().items()},
                                       "kind": kind, "k": k, "design_sha1": _store_id(audit),
                                       "best_epoch": epoch}, _file(audit, kind, k))

            try:
                fit_many(build, audit.data, [sets[k].to(audit.device) for k in missing], val, audit.train_recipe,
                         [audit.seed(k) for k in missing], audit.args.ensemble_mode, progress=not audit.args.quiet,
                         desc=f"{kind} models", on_model=store)
            except Diverged as e:
                raise UserError(f"{kind} model training diverged ({e}): lower --lr") from None
            print(f"{kind} models: {len(missing)} trained in {time.perf_counter() - t0:.0f}s", flush=True)
        else:
            print(f"{kind} models: all {count} reused from {audit.folder}", flush=True)
        out[kind] = models
    return out


def _store_id(audit: Audit) -> str:
    """What each stored model records of its design: U-LiRA's sets' hash, or the forget set's."""
    return audit.key.get("design_sha1") or audit.key["forget_sha1"]


def _file(audit: Audit, kind: str, k: int) -> Path:
    return audit.folder / f"{kind}_{k:03d}.pt"


def _load(audit: Audit, kind: str, k: int):
    """Model k of `kind` from the store, or None when it is missing, damaged or of another design."""
    path = _file(audit, kind, k)
    if not path.is_file():
        return None
    try:
        saved = utils.read_torch_file(path)
        assert saved["kind"] == kind and saved["k"] == k and saved["design_sha1"] == _store_id(audit)
        model = audit.build()
        model.load_state_dict(saved["state_dict"])
    except Exception as e:  # truncated, foreign, or of another design: trained again
        print(f"warning: {path} is damaged or not this design's ({type(e).__name__}); training it again",
              file=sys.stderr)
        return None
    return model.to(audit.device).eval()


# ---------------------------------------------------------------------------------- unlearn
def unlearn_all(audit: Audit, shadows: list, controls: list) -> tuple[list, list[float]]:
    """Unlearn F_k from a copy of every shadow k with the method under test (its own seed each), and the
    SVC MIA of each result (D_F against the test set, the shadow's retain set as members). `retrain`
    is exact: its models are the controls."""
    d, a = audit.design, audit.args
    models, mia = [], []
    for k in tqdm(range(d.k), desc=f"{audit.spec} on {d.k} shadows", file=sys.stderr, leave=False,
                  disable=True if a.quiet else None):
        split = _split(d, k, audit.device)
        model = controls[k] if audit.kind == "retrain" else unlearned_copy(audit, shadows[k], split, k)
        models.append(model.eval())
        mia.append(svc_of(model, audit, split))
    return models, mia


def unlearned_copy(audit: Audit, source, split: ForgetSplit, k: int):
    """A copy of `source` with split.forget unlearned by the method under test, run k (seed
    seed * 1000 + k), as mlflow_forget.py runs it."""
    a, model = audit.args, copy.deepcopy(source)
    try:
        if audit.kind == "one-shot":
            unlearn(model, audit.data, split, a.unlearn, seed=audit.seed(k), hparams=audit.hparams,
                    batch_size=a.batch_size)
        else:
            unlearn(model, audit.data, split, a.unlearn, seed=audit.seed(k), hparams=audit.hparams,
                    initial_model=initial_of(audit, k), original_epochs=a.epochs, **dataclasses.asdict(audit.recipe))
    except Diverged as e:
        raise MethodDiverged(f"{audit.spec} diverged in run {k}: {e}; lower --unlearn_lr or --unlearn_epochs") \
            from None
    return model.eval()


class MethodDiverged(UserError):
    """A method's unlearning diverged on one of its runs. Alone (--unlearn) it ends the audit with its
    one line; in a --methods table its row says so and the other methods still run (each_row)."""


def each_row(audits: list[Audit], run) -> list[dict]:
    """run(audit) for every audit, in turn. With several methods, one that diverges gets the row
    {method, diverged: why} (its MLflow run ends FAILED) and the others run: an hour's table is not
    lost to one learning rate. Alone, or if every method diverges, the one-line error stands."""
    rows = []
    for audit in audits:
        try:
            rows.append(run(audit))
        except MethodDiverged as e:
            if len(audits) == 1:
                raise
            print(f"warning: {e}; its row in the table says so, the other methods run", file=sys.stderr)
            rows.append({"method": audit.spec, "diverged": str(e)})
    if all("diverged" in r for r in rows):
        raise UserError(f"every method diverged ({'; '.join(r['diverged'] for r in rows)})")
    return rows


def diverged_cells(row: dict, n: int) -> str:
    """A table line for a row that diverged: why in the first cell, '-' in the other n - 1."""
    return f"| {row['method']} | diverged: {row['diverged']} |" + " - |" * (n - 1)


@contextlib.contextmanager
def finishing(tracker: Run):
    """Ends the run FINISHED when the block completes, FAILED (and re-raises) when it does not."""
    try:
        yield
    except BaseException as e:
        tracker.end("FAILED", f"{type(e).__name__}: {e}")
        raise
    tracker.end("FINISHED")


def open_run(audit: Audit) -> Run:
    """The MLflow run of one audited method (experiment DATASET-privacy), with its parameters."""
    args = audit.args
    tracker = Run(args.tracking_uri, args.experiment or f"{args.dataset}-privacy", f"{audit.spec} {args.audit}",
                  tags={"command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                        "git_commit": utils.provenance()["git_commit"], "audit": args.audit})
    tracker.params({**{k: v for k, v in vars(args).items() if k != "methods"}, "unlearn_spec": audit.spec,
                    "ensemble_folder": str(audit.folder), "shadow_seeds": f"{args.seed * SEED_STRIDE}+k",
                    **_recipe_params(audit)})
    return tracker


def _split(d: Design, k: int, device) -> ForgetSplit:
    """Shadow k's forget set F_k and retain set S_k minus F_k."""
    return ForgetSplit(d.forget_sets[k].to(device), d.control_sets[k].to(device),
                       {"mode": "subset", "class_to_replace": -1, "num_indexes_to_replace": len(d.forget_sets[k])})


def initial_of(audit: Audit, k: int):
    def build():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(audit.seed(k))
            return audit.build().to(audit.device)
    return build


def svc_of(model, audit: Audit, split: ForgetSplit) -> float:
    data = audit.data
    f = logits_of(model, data, data.x_train[split.forget]).cpu()
    r = logits_of(model, data, data.x_train[split.retain]).cpu()
    t = logits_of(model, data, data.x_test).cpu()
    t, ty, members = svc_samples(len(r), t, data.y_test.cpu(), audit.args.seed, audit.args.mia_svc_max)
    side = {name: attack_features(x, y)["confidence"] for name, (x, y) in
            {"member": (r[members], data.y_train[split.retain].cpu()[members]), "test": (t, ty),
             "forget": (f, data.y_train[split.forget].cpu())}.items()}
    return svc_efficacy(side["member"], side["test"], side["forget"])


def statistics(audit: Audit, models: list) -> torch.Tensor:
    """[K, |T|]: each model's log p_y - log(1 - p_y) of each target."""
    data, t = audit.data, audit.design.targets.to(audit.device)
    y = data.y_train[t].cpu()
    stat = torch.stack([margins(logits_of(m, data, data.x_train[t]).cpu(), y) for m in models])
    if not torch.isfinite(stat).all():
        bad = int((~torch.isfinite(stat).all(1)).sum())
        raise UserError(f"{bad} of {len(models)} models give non-finite logits on the targets ({audit.spec}): the "
                        "method wrecked them; lower --unlearn_lr or --unlearn_epochs")
    return stat


# ------------------------------------------------------------------------------- record
def figures(results: dict) -> dict[str, float]:
    """The logged metrics: `ulira_<figure>` for the method, `control/...` and `original/...`."""
    out = {}
    for name, r in results.items():
        prefix = "" if name == "method" else f"{name}/"
        out |= {f"{prefix}ulira_{k.replace('@', '_at_').replace('%', 'pct')}": v for k, v in r["summary"].items()}
    return out


def write_outputs(audit: Audit, results: dict, out: Path) -> list[Path]:
    """The per-example CSV, the IN/OUT distributions of the most and least vulnerable targets, and the
    ROC curves (the method, the controls, the untouched shadows); returns the files."""
    d = audit.design
    y = audit.data.y_train[d.targets.to(audit.device)].cpu()
    rows = results["method"]["per_example"]
    path = out / "per_example.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["target", "label", "acc", "auc", "in_mean", "in_std", "out_mean", "out_std",
                    "control_acc", "original_acc"])
        for i, t in enumerate(d.targets.tolist()):
            w.writerow([t, int(y[i]), *(f"{float(rows[k][i]):.4f}" for k in
                                        ("acc", "auc", "in_mean", "in_std", "out_mean", "out_std")),
                        f"{float(results['control']['per_example']['acc'][i]):.4f}",
                        f"{float(results['original']['per_example']['acc'][i]):.4f}"])
    return [path, plot_distributions(audit, results["method"], out / "in_out.png"),
            plot_roc(results, out / "roc.png")]


def plot_distributions(audit: Audit, result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = result["per_example"]["acc"]
    order = acc.argsort()
    picks = [("least vulnerable", int(order[0])), ("most vulnerable", int(order[-1]))]
    stat, member = result["stat"], audit.design.member
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, (title, t) in zip(axes, picks):
        s = stat[:, t].numpy()
        m = member[:, t].numpy()
        bins = np.linspace(s.min(), s.max() + 1e-9, 16)
        ax.hist(s[m], bins=bins, alpha=0.6, label="IN (unlearned)")
        ax.hist(s[~m], bins=bins, alpha=0.6, label="OUT (never trained on)")
        ax.set_title(f"{title}: target {int(audit.design.targets[t])}, acc {float(acc[t]):.0f}%", fontsize=9)
        ax.set_xlabel("log p_y - log(1 - p_y)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"U-LiRA, {audit.spec}: the statistic over the {audit.design.k} shadow models", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for name, r in results.items():
        fpr, tpr = roc(r["score"].flatten(), r["member"].flatten())
        ax.plot(fpr, tpr, label=f"{name} (AUC {r['summary']['auc']:.1f})")
    ax.plot([1e-4, 1], [1e-4, 1], "k:", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(1e-3, 1)
    ax.set_ylim(1e-3, 1)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.legend(fontsize=8)
    ax.set_title("U-LiRA, pooled over targets and models", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def roc(score: torch.Tensor, label: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    order = score.argsort(descending=True)
    hit = label[order].double()
    tpr = hit.cumsum(0) / max(hit.sum().item(), 1)
    fpr = (1 - hit).cumsum(0) / max((1 - hit).sum().item(), 1)
    return fpr.numpy(), tpr.numpy()


def report(audit: Audit, metrics: dict, out: Path, tracker: Run) -> None:
    def line(prefix: str) -> str:
        g = lambda k: metrics[f"{prefix}ulira_{k}"]  # noqa: E731
        return (f"acc {g('acc'):5.1f} ± {g('acc_std'):4.1f}  AUC {g('auc'):5.1f} ± {g('auc_std'):4.1f}  "
                f"vulnerable {g('vulnerable'):5.1f}%  " +
                "  ".join(f"TPR@{f * 100:g}%FPR {g(f'tpr_at_{f * 100:g}pct'):5.1f}" for f in FPRS))
    print_report(f"U-LiRA, {audit.spec} on {audit.args.dataset}/{audit.args.arch}: K={audit.design.k}, "
                 f"|T|={len(audit.design.targets)}, statistic log p_y - log(1 - p_y) (50 is chance)",
                 [(audit.spec, line("")), ("controls (retrained: chance)", line("control/")),
                  ("shadows, not unlearned", line("original/"))], metrics, out, tracker)


def print_report(header: str, rows: list[tuple[str, str]], metrics: dict, out: Path, tracker: Run) -> None:
    """What a run prints at its end: the method's and the references' figures, the population attack,
    and where everything went."""
    print(header)
    for name, text in rows:
        print(f"  {name:30s} {text}")
    print(f"  SVC MIA (population attack) {metrics['SVC_MIA']:.1f} ± {metrics['SVC_MIA_std']:.1f}; "
          f"unlearning {metrics['unlearn_time_s']:.0f}s")
    print(f"per-example CSV and plots: {out}; {tracker.where}")


def write_table(audit: Audit, rows: list[dict], path: Path) -> None:
    """The methods side by side (U-LiRA and the SVC population attack on the same unlearned shadow
    models), the two sanity rows first, and whether the two attacks rank the methods alike."""
    from scipy.stats import spearmanr

    a, first = audit.args, next(r for r in rows if "diverged" not in r)
    sanity = [{"method": name, **{k.removeprefix(f"{key}/"): v for k, v in first.items() if k.startswith(f"{key}/")}}
              for name, key in (("Shadows, not unlearned", "original"), ("Controls (retrained)", "control"))]
    ideal_mia = first["control/SVC_MIA"]
    cols = [("SVC_MIA", "SVC MIA"), ("ulira_acc", "U-LiRA acc"), ("ulira_auc", "U-LiRA AUC"),
            ("ulira_vulnerable", "vulnerable %"), ("ulira_tpr_at_1pct", "TPR@1%FPR"),
            ("ulira_tpr_at_0.1pct", "TPR@0.1%FPR")]
    lines = [f"# U-LiRA on {a.dataset}/{a.arch}: K = {audit.design.k} shadow models, |T| = "
             f"{len(audit.design.targets)} targets",
             "", f"Made by `{shlex.join(['python', Path(sys.argv[0]).name, *sys.argv[1:]])}` at commit "
                 f"{utils.git_commit()} on {utils.machine()}; shadows trained {audit.train_recipe.epochs} epochs "
                 f"(lr {audit.train_recipe.lr:g}, batch {audit.train_recipe.batch_size}), seed {a.seed}; "
                 f"{recipes_text(a, 'the controls')}. Mean ± std over the attacked models (U-LiRA) or over the "
                 "unlearned shadows (SVC MIA, the confidence attack with the shadow's retain set as members and "
                 "the test set as non-members). "
                 "U-LiRA: 50 is chance (the ideal); the SVC MIA is read against the controls' value.", "",
             "| method | " + " | ".join(c for _, c in cols) + " |", "|" + " --- |" * (len(cols) + 1)]
    for row in [*sanity, *rows]:
        if "diverged" in row:
            lines.append(diverged_cells(row, len(cols)))
            continue
        cells = [f"{row[k]:.1f} ± {row[k + '_std']:.1f}" if k + "_std" in row else f"{row[k]:.1f}" for k, _ in cols]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    methods = [r for r in rows if r["method"] != "retrain" and "diverged" not in r]
    if len(methods) >= 3:
        svc_gap = [abs(r["SVC_MIA"] - ideal_mia) for r in methods]
        ulira_gap = [abs(r["ulira_auc"] - 50) for r in methods]
        rho = spearmanr(svc_gap, ulira_gap).statistic
        order = lambda gaps: ", ".join(r["method"] for _, r in sorted(zip(gaps, methods), key=lambda p: p[0]))  # noqa: E731
        lines += ["", f"Ranking, best first. By the SVC MIA's distance to the controls' {ideal_mia:.1f}: "
                      f"{order(svc_gap)}. By U-LiRA's AUC distance to 50: {order(ulira_gap)}. "
                      f"Spearman's rho between the two: {rho:.2f}."]
    save_table(path, lines, [*sanity, *rows])


def recipes_text(a: argparse.Namespace, retrained: str) -> str:
    """Which recipe the table's method rows ran, for its header."""
    given = "" if a.unlearn_lr is None and a.unlearn_epochs is None else \
        f" with the lr and epochs the command gives (retrain: {retrained}, as trained)"
    tuned = f"; rows `(tuned)` at the values tune.py chose in {a.tuned}" if a.tuned else ""
    return f"each method at its published recipe{given}{tuned}"


def save_table(path: Path, lines: list[str], rows: list[dict]) -> None:
    """The Markdown `lines` at `path`, and every figure of `rows` in a CSV beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    with path.with_suffix(".csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["method", *sorted({k for r in rows for k in r} - {"method"})])
        w.writeheader()
        for r in rows:
            w.writerow(r)
    print(f"table: {path} and {path.with_suffix('.csv')}")
