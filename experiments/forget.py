"""From the command line to one tracked unlearning run (the body of mlflow_forget.py).

Flags for method and add-on hyper-parameters are generated from the registries,
so a new method's `alpha: float = 0.5` field is `--alpha` with no code here.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

import utils
from audits import AUDITS, AuditBudget, run_audits
from audits import POLARITY as AUDIT_POLARITY
from dataset import forget_split, load_data
from evaluation.accuracy import model_outputs
from evaluation.report import against_references, model_metrics, polarity, summary_table
from experiments import trainer
from experiments.references import audited, reference
from experiments.tracking import FileRun, Run
from models import from_checkpoint
from unlearn import ADDONS, METHODS, choices_text, hyperparameters, make, parse_unlearn, spec_name, unlearn
from unlearn.api import initial_model
from unlearn.impl import BN_STATS, OPTIMIZERS, Diverged, check_sets, recipe_for
from unlearn.methods.common import Setting
from utils import UserError

# flags of the loop's recipe that a one-shot method does not read
ONE_SHOT_UNUSED = ("unlearn_epochs", "unlearn_lr", "optimizer", "momentum", "weight_decay", "decreasing_lr",
                   "warmup", "bn_stats", "unlearn_aug")
AUGMENT = {"method": None, "on": True, "off": False}  # --unlearn_aug -> Recipe.augment (None: the method's)


def build_parser(doc: str, original: str = "the original model (main_baseline.py's output",
                 ideal: str = "the ideal model (main_ideal.py's output") -> argparse.ArgumentParser:
    parser = utils.Parser(description=doc)
    utils.add_common_args(parser)
    g = parser.add_argument_group("unlearning")
    g.add_argument("--unlearn", default="VarGrad", metavar="METHOD[+ADDON]",
                   help=f"what to run (default VarGrad = GA+VarGrad); {choices_text()}")
    g.add_argument("--mask", default=None, metavar="CHECKPOINT",
                   help=f"{original}; default: its name under --save_dir)")
    g.add_argument("--epochs", type=int, default=182,
                   help="training epochs of the original model: names its checkpoint (default 182)")
    g.add_argument("--ideal", default=None, metavar="CHECKPOINT",
                   help=f"{ideal}; default: its name under --save_dir)")
    g.add_argument("--evaluate", default=None, metavar="CHECKPOINT",
                   help="no unlearning: score this model (the ideal one, or one made elsewhere) with the same "
                        "metrics against the original and ideal models, and log it as a run")
    g.add_argument("--unlearn_epochs", type=int, default=None,
                   help="unlearning epochs (default: the method's; EU-k: the original model's --epochs)")
    g.add_argument("--unlearn_lr", type=float, default=None, help="unlearning learning rate (default: the method's)")
    g.add_argument("--batch_size", type=int, default=None,
                   help="batch size of the passes that set none of their own (default: the method's; 32 for "
                        "NegGrad+, 64 for CF-k and EU-k, else 256)")
    g.add_argument("--optimizer", default=None, choices=OPTIMIZERS,
                   help="sgd or adam (default: the method's; adam for BadTeacher, else sgd)")
    g.add_argument("--momentum", type=float, default=None,
                   help="SGD momentum, Adam's beta1 (default: the method's; 0 for NegGrad+, CF-k and EU-k, "
                        "else 0.9)")
    g.add_argument("--weight_decay", type=float, default=None,
                   help="weight decay (default: the method's; 0 for NegGrad+, BadTeacher, CF-k and EU-k, "
                        "else 5e-4)")
    g.add_argument("--unlearn_aug", default="method", choices=("method", "on", "off"),
                   help="augment the unlearning batches where the data set augments: method (default: as the "
                        "method's source does; off for SCRUB, NegGrad+, CF-k, EU-k and BadTeacher), on, off")
    g.add_argument("--bn_stats", default="update", choices=BN_STATS,
                   help="update: train-mode forwards move batch-norm running statistics, as in the published "
                        "code (default); freeze: they never change, closing that side channel")
    g.add_argument("--decreasing_lr", type=utils.int_list, default=None,
                   help="unlearning epochs at which lr is multiplied by 0.1, comma-separated (default: the "
                        "method's; 10,15,20 for EU-k, else none)")
    g.add_argument("--warmup", type=int, default=0, help="epochs of linear lr warm-up (default 0)")
    g.add_argument("--print_freq", type=int, default=50, help="kept for the papers' commands; unused")
    _registry_flags(parser.add_argument_group("method hyper-parameters (default: each method's own)"), METHODS, set())
    _registry_flags(parser.add_argument_group("add-on hyper-parameters (default: each add-on's own)"), ADDONS,
                    set(_all_fields(METHODS)))
    g = parser.add_argument_group("evaluation")
    g.add_argument("--mia_svc_max", type=int, default=None, metavar="N",
                   help="train the SVC attack on at most N members and N non-members, a seeded subsample "
                        "(default: all test samples and as many retain samples, as published; its cost grows "
                        "with N^2; the fashionmnist preset uses 2000)")
    g = parser.add_argument_group("audits: is it gone or only hidden? Each is also asked of the original and ideal "
                                  "models (cached beside them); docs/evaluation.md")
    g.add_argument("--audits", type=audit_list, default=[], metavar="NAME[,NAME]",
                   help=f"comma-separated, from {', '.join(AUDITS)} (default none)")
    for f in dataclasses.fields(AuditBudget):
        g.add_argument(f"--audit_{f.name}", type=type(f.default), default=f.default, help=f.metadata["help"])
    g = parser.add_argument_group("tracking")
    g.add_argument("--tracking_uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")
    g.add_argument("--experiment", default=None, help="MLflow experiment (default: the data set's name)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def audit_list(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in AUDITS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown audit {', '.join(unknown)}; choose from {', '.join(AUDITS)}")
    return list(dict.fromkeys(names))


def _all_fields(registry: dict) -> dict[str, list]:
    out: dict[str, list] = {}
    for name, cls in registry.items():
        for f in hyperparameters(cls).values():
            out.setdefault(f.name, []).append((name, f.default))
    return out


def _registry_flags(group, registry: dict, skip: set) -> None:
    for field, owners in _all_fields(registry).items():
        if field in skip:
            continue
        kind = type(owners[0][1])
        defaults = "; ".join(f"{n}: {d}" for n, d in owners)
        group.add_argument(f"--{field}", type=kind, default=None, help=f"{defaults}")


def original_path(args: argparse.Namespace) -> Path:
    return Path(args.mask) if args.mask else utils.original_checkpoint_path(
        args.save_dir, args.seed, args.arch or utils.default_arch(args.dataset), args.epochs)


def baseline_command(args: argparse.Namespace, path: Path) -> str:
    arch = args.arch or utils.default_arch(args.dataset)
    return utils.script_command("main_baseline.py", {"data": args.data, "dataset": args.dataset, "arch": arch,
                                                     "seed": args.seed, "epochs": args.epochs,
                                                     "save_dir": str(path.parent)})


def ideal_command(args: argparse.Namespace, n: int) -> str:
    return utils.script_command("main_ideal.py", {
        "data": args.data, "dataset": args.dataset, "arch": args.arch, "seed": args.seed, "epochs": args.epochs,
        "class_to_replace": args.class_to_replace, "num_indexes_to_replace": n, "save_dir": args.save_dir})


def find_ideal(args: argparse.Namespace, split, path: Path, command: str) -> tuple[Path | None, dict | None]:
    """The ideal checkpoint of this seed and forget set (--ideal, else `path`), or (None, None) with
    a note giving the `command` that makes it. One retrained for anything else is refused: every
    closeness metric against it would be wrong."""
    path = Path(args.ideal) if args.ideal else path
    if not path.is_file():
        if args.ideal:
            raise UserError(f"--ideal {path} not found; create it with: {command}")
        print(f"note: no ideal model at {path}; rUA, FID, KL and Avg. Gap need it: {command}")
        return None, None
    ckpt = utils.load_checkpoint(path, dataset=args.dataset, arch=args.arch, made_by=command)
    n = split.info["num_indexes_to_replace"]
    check_ideal(path, ckpt, args.seed, split, args.class_to_replace,
                f"pass the ideal model of this forget set, or make it with: {ideal_command(args, n)}")
    return path, ckpt


def check_ideal(path: Path, ckpt: dict, seed: int, split, class_to_replace: int, remedy: str) -> None:
    """Refuse an ideal model of another seed or forget set (`remedy`: what the user should do)."""
    if ckpt.get("seed") != seed:
        raise UserError(f"ideal model {path} was trained with seed {ckpt.get('seed')}, this run uses --seed "
                        f"{seed}: pass the ideal model of the same seed")
    theirs = ckpt.get("split", {})
    if theirs.get("forget_sha1") != split.info["forget_sha1"]:
        raise UserError(f"ideal model {path} was retrained without another forget set (C="
                        f"{theirs.get('class_to_replace')}, N={theirs.get('num_indexes_to_replace')}) than this "
                        f"run's (C={class_to_replace}, N={split.info['num_indexes_to_replace']}): "
                        f"{remedy}")


class Forgetting:
    """Where one run's models and sets come from. Here: the original model of main_baseline.py, the
    data set and forget set the flags name, and the ideal model of main_ideal.py. main_backdoor.py
    passes its own (backdoor.Backdoor: the poisoned data, the backdoored model, ASR as a metric);
    everything else in `main` is the same run."""

    mode = "forget"

    def original(self, args: argparse.Namespace) -> tuple[Path, dict]:
        path = original_path(args)
        made_by = baseline_command(args, path)
        written = utils.original_checkpoint_path(path.parent, args.seed, args.arch or utils.default_arch(args.dataset),
                                                 args.epochs)
        if written != path:  # a --mask of another name: say which name that command writes
            made_by += f" (it writes {written}; pass that as --mask)"
        return path, utils.load_checkpoint(path, dataset=args.dataset, arch=args.arch, made_by=made_by)

    def data(self, args: argparse.Namespace, ckpt: dict, device):
        data = load_data(args.dataset, args.data, args.seed, ckpt["num_classes"], args.no_aug, args.subsample)
        split = forget_split(data, args.seed, args.class_to_replace, args.num_indexes_to_replace)
        return data.to(device), split.to(device)

    def ideal(self, args: argparse.Namespace, split) -> tuple[Path | None, dict | None]:
        n = split.info["num_indexes_to_replace"]
        return find_ideal(args, split, utils.ideal_checkpoint_path(args.save_dir, args.seed, args.arch, args.epochs,
                                                                   args.class_to_replace, n), ideal_command(args, n))

    def extra_metrics(self, model, data) -> dict[str, float]:
        """Metrics beyond the common ones, for the unlearned and the reference models (none here)."""
        return {}


def unlearned_path(save_dir: Path, args, spec: str, run_id: str, n: int) -> Path:
    safe = spec.replace("+", "_")
    return save_dir / "unlearned" / (f"{args.seed}{args.arch}_ep{args.epochs}_C{args.class_to_replace}_N{n}_"
                                     f"{safe}_{run_id[:8]}.pth.tar")


@dataclasses.dataclass
class Plan:
    """One run, resolved from its flags before anything runs: what runs (method, add-on, recipe), on
    what (data, forget set, original model) and against what (the ideal model)."""

    spec: str  # METHOD[+ADDON], or evaluate:KIND for --evaluate
    kind: str  # the method's: loop, one-shot or retrain
    method: object
    addon: object
    hparams: dict  # the method's and add-on's hyper-parameters given as flags
    arch: str
    path: Path  # the original model
    ckpt: dict
    data: object
    split: object
    device: object
    save_dir: Path
    forgotten: int | None  # the forgotten class, for class forgetting
    setting: Setting
    recipe: object  # the loop's Recipe (None for a one-shot method)
    evaluated: dict | None  # --evaluate's checkpoint
    ideal_path: Path | None
    ideal_ckpt: dict | None
    resolved: dict  # what the flags resolved to, logged as parameters

    def build(self, c: dict):
        """A function building the model of checkpoint `c` on the run's device."""
        return lambda: from_checkpoint(c, self.data.in_channels, self.arch).to(self.device)


@dataclasses.dataclass
class Scores:
    metrics: dict  # the unlearned model's
    original: dict
    ideal: dict | None
    polarities: dict


def main(args: argparse.Namespace, scenario: Forgetting | None = None, store: str = "mlflow") -> dict:
    """Unlearn, evaluate and log one run; returns the final metrics. `scenario` says where the models
    and sets come from (default: forgetting); `store` "mlflow" logs to MLflow (mlflow_forget.py),
    "files" to a JSON record beside the metrics (main_forget.py)."""
    scenario = scenario or Forgetting()
    plan = resolve(args, scenario)
    provenance = utils.provenance()  # git and package versions, read once for the tags and the checkpoint
    tracker = open_tracker(args, plan, scenario, store, provenance)
    try:
        tracker.params({**vars(args), **plan.resolved})
        model, rte = execute(args, plan, tracker)
        scores = score(args, plan, scenario, model, rte)
        out = record(args, plan, tracker, model, scores, provenance)
    except Diverged as e:
        tracker.end("FAILED", str(e))
        print(f"error: {plan.spec} diverged: {e}; lower --unlearn_lr or --unlearn_epochs "
              f"(run {tracker.id} marked FAILED)", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as e:  # SIGINT, or SIGTERM through utils.run_main: not a failure of the run
        tracker.end("KILLED", f"interrupted by {getattr(e, 'signame', 'SIGINT')}")
        raise
    except BaseException as e:
        tracker.end("FAILED", f"{type(e).__name__}: {e}")
        raise
    tracker.end("FINISHED")
    report(plan, scores, out)
    return scores.metrics


# ------------------------------------------------------------------- 1. resolve the run
def resolve(args: argparse.Namespace, scenario: Forgetting) -> Plan:
    """Check the flags, load the original model, the data and the forget set, resolve the recipe and
    find the ideal model; fails with a one-line UserError before anything is written."""
    method_name, addon_name, method, addon, hparams = method_of(args)
    kind = type(method).kind
    path, ckpt = scenario.original(args)
    args.arch = args.arch or ckpt["arch"]
    if ckpt.get("seed") not in (None, args.seed):
        print(f"warning: {path.name} was trained with seed {ckpt['seed']}, this run uses --seed {args.seed}",
              file=sys.stderr)
    trained_on = (ckpt.get("args") or {}).get("subsample", 1.0)
    if trained_on != args.subsample:
        raise UserError(f"{path} was trained with --subsample {trained_on}, this run has --subsample "
                        f"{args.subsample}: pass the same share")
    device = utils.device_for(args)
    utils.set_seed(args.seed)
    data, split = scenario.data(args, ckpt, device)
    save_dir = utils.check_writable(args.save_dir)  # after the data: a missing data set creates no folder
    forgotten = args.class_to_replace if split.is_class_forgetting else None
    setting = Setting(args.dataset, forgotten, initial_model(ckpt, data.in_channels, device))
    method.configure(setting)  # the source's per-setting defaults, before they are recorded
    try:
        check_sets(method, addon, len(split.forget), len(split.retain))
    except ValueError as e:
        raise UserError(str(e)) from None
    if "relearn_time" in args.audits and len(split.forget) * (1 - args.audit_time_share) < 1:
        raise UserError(f"--audits relearn_time: a forget set of {len(split.forget)} leaves nothing to score on "
                        f"after --audit_time_share {args.audit_time_share}; lower the share or drop the audit")
    evaluated, spec = _evaluated(args, ckpt), spec_name(method_name, addon_name)
    recipe = unlearning_recipe(args, method, kind, path, ckpt)
    ideal_path, ideal_ckpt = scenario.ideal(args, split)
    plan = Plan(spec, kind, method, addon, hparams, args.arch, path, ckpt, data, split, device, save_dir, forgotten,
                setting, recipe, evaluated, ideal_path, ideal_ckpt, {})
    if evaluated is not None:
        plan.spec = f"evaluate:{evaluated.get('kind', 'model')}"
        plan.resolved = {"unlearn_spec": plan.spec, "evaluated_checkpoint": str(Path(args.evaluate).resolve()),
                         "original_checkpoint": str(path)}
    else:
        plan.resolved = _resolved(plan, method_name, addon_name)
    return plan


def method_of(args: argparse.Namespace) -> tuple[str, str, object, object, dict]:
    """(method name, add-on name, method, add-on, their hyper-parameters given as flags)."""
    try:
        method_name, addon_name = parse_unlearn(args.unlearn)
    except ValueError as e:
        raise UserError(str(e)) from None
    for name in ("unlearn_epochs", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1")
    spec = spec_name(method_name, addon_name)
    given = {k: getattr(args, k) for k in set(_all_fields(METHODS)) | set(_all_fields(ADDONS))
             if getattr(args, k) is not None}
    own = set(hyperparameters(METHODS[method_name])) | set(hyperparameters(ADDONS[addon_name]))
    ignored = sorted(set(given) - own)
    if ignored:
        print(f"warning: {', '.join('--' + k for k in ignored)} not used by {spec}; ignored", file=sys.stderr)
    if args.mia_svc_max is not None and args.mia_svc_max < 10:
        raise UserError(f"--mia_svc_max {args.mia_svc_max}: give at least 10 samples")
    if args.unlearn_lr is not None and args.unlearn_lr <= 0:
        raise UserError(f"--unlearn_lr must be positive, got {args.unlearn_lr}")
    try:
        hparams = {k: v for k, v in given.items() if k in own}
        method, addon = make(args.unlearn, **hparams)
    except (ValueError, TypeError) as e:
        raise UserError(str(e)) from None
    kind = type(method).kind
    if kind == "retrain" and addon_name != "none":
        raise UserError(f"--unlearn {args.unlearn}: retrain is exact unlearning and takes no add-on; "
                        f"use --unlearn retrain")
    if kind == "one-shot":
        unused = [f"--{k}" for k in ONE_SHOT_UNUSED if getattr(args, k) not in (None, [], 0, "update", "method")]
        if unused:
            print(f"warning: {', '.join(unused)} not used by {method_name}, a one-shot method; ignored",
                  file=sys.stderr)
    return method_name, addon_name, method, addon, hparams


def _evaluated(args: argparse.Namespace, ckpt: dict) -> dict | None:
    """--evaluate's checkpoint (a model scored without unlearning), checked against the original."""
    if not args.evaluate:
        return None
    evaluated = utils.load_checkpoint(args.evaluate, dataset=args.dataset, arch=args.arch)
    if evaluated.get("num_classes", ckpt["num_classes"]) != ckpt["num_classes"]:
        raise UserError(f"--evaluate {args.evaluate} has {evaluated['num_classes']} classes, the original "
                        f"model {ckpt['num_classes']}")
    return evaluated


def unlearning_recipe(args: argparse.Namespace, method, kind: str, path: Path, ckpt: dict):
    """The loop's recipe: the method's published one with the flags' overrides (`recipe_for`); for
    retrain, the original's training recipe, which main_ideal.py also repeats."""
    speed = {k: getattr(args, k) for k in utils.SPEED_OPTIONS}
    if kind != "retrain":
        return recipe_for(method, original_epochs=ckpt.get("epochs", args.epochs), lr=args.unlearn_lr,
                          epochs=args.unlearn_epochs, batch_size=args.batch_size, momentum=args.momentum,
                          weight_decay=args.weight_decay, decreasing_lr=args.decreasing_lr, warmup=args.warmup,
                          optimizer=args.optimizer, bn_stats=args.bn_stats, augment=AUGMENT[args.unlearn_aug],
                          **speed)
    try:
        trained_with = trainer.recipe_of(ckpt.get("args") or {})
    except KeyError as e:
        raise UserError(f"{path} does not record its training recipe ({e} missing), which retrain repeats: "
                        f"retrain it with {baseline_command(args, path)}") from None
    return dataclasses.replace(trained_with, lr=args.unlearn_lr or trained_with.lr,
                               epochs=args.unlearn_epochs or trained_with.epochs, **speed)


def _resolved(plan: Plan, method_name: str, addon_name: str) -> dict:
    """What the flags resolved to, as the run's parameters: the recipe and every hyper-parameter."""
    r = plan.recipe
    return {"method": method_name, "addon": addon_name, "unlearn_spec": plan.spec, "method_kind": plan.kind,
            **({} if plan.kind == "one-shot" else
               {"recipe_lr": r.lr, "recipe_epochs": r.epochs, "recipe_optimizer": r.optimizer,
                "recipe_weight_decay": r.weight_decay, "recipe_momentum": r.momentum,
                "recipe_batch_size": r.batch_size, "recipe_decreasing_lr": r.decreasing_lr,
                "recipe_augment": r.augment, "bn_stats": r.bn_stats}),
            "original_checkpoint": str(plan.path),
            **{f"method.{k}": getattr(plan.method, k) for k in hyperparameters(type(plan.method))},
            **{f"addon.{k}": getattr(plan.addon, k) for k in hyperparameters(type(plan.addon))}}


def open_tracker(args: argparse.Namespace, plan: Plan, scenario: Forgetting, store: str, provenance: dict) -> Run:
    """The run's record (MLflow, or a JSON file for main_forget.py), tagged with its provenance."""
    split = plan.split
    tags = {**{f"version.{k}": v for k, v in provenance.items()},
            "git_commit": provenance["git_commit"], "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "command_hash": utils.own_command_hash(),
            "forget_sha1": split.info["forget_sha1"], "forget_mode": split.info["mode"],
            "num_forget": len(split.forget)}
    experiment = args.experiment or args.dataset + ("" if scenario.mode == "forget" else f"-{scenario.mode}")
    if store == "files":
        if args.tracking_uri or args.experiment:
            print("warning: --tracking_uri and --experiment are for mlflow_forget.py; main_forget.py logs to "
                  "no store; ignored", file=sys.stderr)
        tracker = FileRun(plan.save_dir / "unlearned", experiment, plan.spec, tags)
    else:
        tracker = Run(args.tracking_uri, experiment, plan.spec, tags)
    r = plan.recipe
    what = ("no unlearning" if plan.evaluated is not None else "one shot" if plan.kind == "one-shot" else
            f"{'retrain from scratch, ' if plan.kind == 'retrain' else ''}{r.optimizer} lr {r.lr:g}, "
            f"{r.epochs} epochs, batch-norm statistics {r.bn_stats}")
    print(f"{plan.spec} on {args.dataset}/{args.arch}: forget {len(split.forget)} ({split.info['mode']}), "
          f"retain {len(split.retain)}, {what}, device {plan.device}; {tracker.where}")
    return tracker


# ------------------------------------------------------------------- 2. execute it
def execute(args: argparse.Namespace, plan: Plan, tracker: Run):
    """Unlearn (or, for --evaluate, nothing); returns (model, RTE: the unlearning wall time in seconds)."""
    model = plan.build(plan.evaluated or plan.ckpt)()
    if plan.evaluated is not None:
        return model, 0.0
    if plan.kind == "retrain":
        return _retrain(args, plan.ckpt, plan.data, plan.split, plan.recipe, tracker, plan.device)
    if plan.kind == "one-shot":
        return model, _one_shot(args, model, plan.data, plan.split, plan.hparams, tracker)
    return model, _unlearn(args, model, plan.data, plan.split, plan.hparams, plan.recipe, tracker, plan.setting)


# ------------------------------------------------------------------- 3. score it
def score(args: argparse.Namespace, plan: Plan, scenario: Forgetting, model, rte: float) -> Scores:
    """Every metric of the unlearned model, and against the original and ideal models (cached)."""
    data, split, forgotten, svc = plan.data, plan.split, plan.forgotten, args.mia_svc_max
    t1 = time.perf_counter()
    out_u = model_outputs(model, data, split.forget, split.retain, forgotten)
    if not all(t.isfinite().all() for t in (out_u.forget, out_u.retain, out_u.test, out_u.val)):
        raise Diverged("the model's outputs are not finite (weights or batch-norm statistics blew up)")
    metrics = model_metrics(out_u, args.seed, svc) | scenario.extra_metrics(model, data)
    build_o = plan.build(plan.ckpt)
    ref_o, _ = reference(plan.path, build_o, data, split, forgotten, args.seed, svc)
    ref_o = ref_o | scenario.extra_metrics(build_o(), data)
    ref_i, out_i, build_i = None, None, None
    if plan.ideal_path:
        build_i = plan.build(plan.ideal_ckpt)
        ref_i, out_i = reference(plan.ideal_path, build_i, data, split, forgotten, args.seed, svc)
        ref_i = ref_i | scenario.extra_metrics(build_i(), data)
    metrics.update(against_references(out_u, metrics, ref_o, ref_i, out_i))
    metrics.update(RTE=rte, eval_time=time.perf_counter() - t1)
    polarities = polarity(split.is_class_forgetting)
    if args.audits:
        t2 = time.perf_counter()
        mine, of_original, of_ideal = audit(args, plan, model, build_o, build_i)
        metrics.update(mine, audit_time=time.perf_counter() - t2)
        ref_o, ref_i = ref_o | of_original, None if ref_i is None else ref_i | of_ideal
        polarities |= AUDIT_POLARITY | {"audit_time": "lower"}
    return Scores(metrics, ref_o, ref_i, polarities)


def audit(args: argparse.Namespace, plan: Plan, model, build_o, build_i) -> tuple[dict, dict, dict | None]:
    """The --audits of the unlearned model and, cached beside them, of the original and ideal models,
    all with this run's seed and budget; the unlearned model's gaps to the ideal model's values."""
    budget = AuditBudget(**{f.name: getattr(args, f"audit_{f.name}") for f in dataclasses.fields(AuditBudget)})
    context = {"original": (plan.path, build_o())} | ({"ideal": (plan.ideal_path, build_i())} if build_i else {})
    models = {k: m for k, (_, m) in context.items()}  # each reference model built once, for all three
    mine = run_audits(args.audits, model, plan.data, plan.split, args.seed, budget, **models)
    common = (plan.data, plan.split, args.audits, args.seed, budget, context)
    of_original = audited(plan.path, models["original"], *common)
    of_ideal = audited(plan.ideal_path, models["ideal"], *common) if build_i else None
    if of_ideal is not None:
        mine |= {f"{k}_gap": abs(mine[k] - of_ideal[k]) for k in mine if f"{k}_gap" in AUDIT_POLARITY and k in of_ideal}
    return mine, of_original, of_ideal


# ------------------------------------------------------------------- 4. record it
def record(args: argparse.Namespace, plan: Plan, tracker: Run, model, scores: Scores, provenance: dict) -> Path:
    """Log the metrics and polarities, save the unlearned model and the metrics file; returns the
    model's path (--evaluate: the evaluated checkpoint's)."""
    metrics, split = scores.metrics, plan.split
    tracker.metrics({**metrics, **{f"original/{k}": v for k, v in scores.original.items()},
                     **{f"ideal/{k}": v for k, v in (scores.ideal or {}).items()}})
    tracker.tags({f"polarity.{k}": scores.polarities[k] for k in metrics if k in scores.polarities}
                 | ({"ideal_checkpoint": str(plan.ideal_path)} if plan.ideal_path else {}))
    if plan.evaluated is None:
        out = unlearned_path(plan.save_dir, args, plan.spec, tracker.id, split.info["num_indexes_to_replace"])
        out.parent.mkdir(parents=True, exist_ok=True)
        ckpt = plan.ckpt
        utils.save_checkpoint({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                               "kind": "unlearned", "arch": args.arch, "dataset": args.dataset,
                               "num_classes": ckpt["num_classes"], "imagenet_arch": ckpt.get("imagenet_arch", False),
                               "seed": args.seed, "epochs": args.epochs, "unlearn": plan.spec, "args": vars(args),
                               "resolved": plan.resolved, "split": split.info, "forget_idx": split.forget.cpu(),
                               "metrics": metrics, "run_id": tracker.id, "provenance": provenance}, out)
    else:
        out = Path(args.evaluate)
    summary = plan.save_dir / "unlearned" / f"{tracker.id}_metrics.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    utils.write_json({"run_id": tracker.id, "unlearn": plan.spec, "metrics": metrics, "original": scores.original,
                      "ideal": scores.ideal, "polarity": scores.polarities, "params": plan.resolved,
                      "ideal_checkpoint": str(plan.ideal_path) if plan.ideal_path else None}, summary)
    tracker.artifact(summary)
    tracker.tags({"checkpoint": str(out.resolve())})
    return out


def report(plan: Plan, scores: Scores, out: Path) -> None:
    """The summary table and the closing line; a warning when the run wrecked the model."""
    metrics, ref_o, spec, classes = scores.metrics, scores.original, plan.spec, plan.ckpt["num_classes"]
    print(summary_table(metrics, ref_o, scores.ideal, spec, scores.polarities))
    asr = f"  ASR {ref_o['ASR']:.2f} -> {metrics['ASR']:.2f}" if "ASR" in metrics else ""
    print(f"done: {spec}  UA {metrics['UA']:.2f}  RA {metrics['RA']:.2f}  TA {metrics['TA']:.2f}  "
          f"VA {metrics['VA']:.2f}{asr}  RTE {metrics['RTE']:.1f}s  -> {out}")
    chance = 100.0 / classes
    if plan.evaluated is None and metrics["RA"] < 2 * chance <= ref_o["RA"]:
        print(f"warning: retain accuracy {metrics['RA']:.1f} is at chance ({chance:.1f} for {classes} "
              f"classes; the original's {ref_o['RA']:.1f}): {spec} wrecked the model; lower --unlearn_lr or "
              f"--unlearn_epochs", file=sys.stderr)


def _one_shot(args, model, data, split, hparams: dict, tracker: Run) -> float:
    """Apply a one-shot method; returns its wall time (RTE) in seconds."""
    record = unlearn(model, data, split, args.unlearn, seed=args.seed, hparams=hparams,
                     batch_size=args.batch_size).history[0]
    print("one shot  " + "  ".join(f"{k} {v:.4g}" for k, v in record.items()), flush=True)
    tracker.metrics({f"train/{k}": v for k, v in record.items()}, step=1)
    return record["time_s"]


def _retrain(args, ckpt, data, split, recipe, tracker: Run, device):
    """main_ideal.py's training, from the same initialisation (its --seed: this run's); returns (model,
    wall time in seconds)."""
    t0 = time.perf_counter()
    result = unlearn(None, data, split, "retrain", seed=args.seed, progress=not args.quiet,
                     initial_model=initial_model({**ckpt, "seed": args.seed}, data.in_channels, device),
                     train_recipe=recipe, **{k: getattr(recipe, k) for k in utils.SPEED_OPTIONS})
    wall = time.perf_counter() - t0
    for record in result.history:
        tracker.metrics({f"train/{k}": v for k, v in record.items() if k != "epoch"}, step=record["epoch"])
    tracker.params({"retrain_best_epoch": result.best_epoch})
    return result.model, wall


def _unlearn(args, model, data, split, hparams: dict, recipe, tracker: Run, setting: Setting) -> float:
    """Run the engine, logging each epoch; returns the unlearning wall time (RTE) in seconds."""
    spent_in_callbacks = 0.0

    def on_epoch_end(epoch: int, record: dict) -> dict:
        nonlocal spent_in_callbacks
        t = time.perf_counter()
        shown = "  ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("epoch", "steps"))
        print(f"epoch {epoch + 1}/{recipe.epochs}  {shown}", flush=True)
        tracker.metrics({f"train/{k}": v for k, v in record.items() if k != "epoch"}, step=epoch + 1)
        spent_in_callbacks += time.perf_counter() - t

    t0 = time.perf_counter()
    unlearn(model, data, split, args.unlearn, seed=args.seed, hparams=hparams, initial_model=setting.initial_model,
            on_epoch_end=on_epoch_end, progress=not args.quiet, desc=args.unlearn, **dataclasses.asdict(recipe))
    return time.perf_counter() - t0 - spent_in_callbacks
