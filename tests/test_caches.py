"""Every cache and store is keyed by everything its value depends on.

A figure read back from a cache that outlived a change of what it was computed from is served
silently. For each cache the toolkit keeps, each part of its key is changed alone: the next read
recomputes (or refuses, in one line); with nothing changed, it reads back. What each key holds, and why,
is written beside the key (experiments/references.py, experiments/privacy.py, experiments/trainer.py,
tune.py, experiments/privacy.py's tuned_entries):

* reference evaluations (`*.eval_*.pt`): references.reference_key
* reference audits (`*.audit_*.pt`): references.audit_key
* ensemble stores (`ensembles/*/design.json`, one file per model): privacy.store_key, privacy._load
* resumable training states (`*.resume.pt`) and finished checkpoints reused by --resume: trainer
* tune.py's studies (their `setting`) and tuned.json read by main_audit.py --tuned
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re

import pytest
import torch

import utils
from audits import AuditBudget
from audits.ulira import balanced_design
from dataset import forget_split, load_data
from experiments import privacy, references, trainer
from models import create_model
from unlearn.impl import Recipe


# ------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def digits():
    return load_data("digits", "./data", seed=1)


def _checkpoint(path, seed: int):
    torch.manual_seed(seed)
    model = create_model("smallcnn", 10, 1)
    utils.save_checkpoint({"state_dict": model.state_dict()}, path)
    return model


def _rewrite_keeping_stat(path, seed: int) -> None:
    """Other weights written into the same file (same inode), with its size and modification time set
    back: only its bytes tell the two apart (as a checkpoint copied over another with `cp -p`)."""
    import io

    st = path.stat()
    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save({"state_dict": create_model("smallcnn", 10, 1).state_dict()}, buffer)
    with open(path, "r+b") as f:
        f.write(buffer.getvalue())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)


def _with_info(split, **change):
    return dataclasses.replace(split, info={**split.info, **change})


class Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self, *a, **k):
        self.calls += 1
        return {"value": float(self.calls)}


# ------------------------------------------------------------------------- reference evaluations
@pytest.fixture
def evaluation(tmp_path, digits, monkeypatch):
    """reference() on a random smallcnn checkpoint; model_metrics replaced by a counter, so a read-back
    returns the first computation's value and a recomputation the next one."""
    path = tmp_path / "1smallcnn_ep3model_SA_best.pth.tar"
    model = _checkpoint(path, 0)
    metrics = Counter()
    monkeypatch.setattr(references, "model_metrics", lambda out, seed, svc_max: metrics())
    split = forget_split(digits, 1, -1, 40)

    def run(path=path, split=split, forgotten=None, seed=1, svc_max=50):
        m, out = references.reference(path, lambda: model, digits, split, forgotten, seed, svc_max)
        return m["value"], out

    return run, path, split, metrics


def test_a_reference_evaluation_is_read_back_when_nothing_changed(evaluation):
    run, path, split, metrics = evaluation
    assert run(forgotten=3)[1].forgotten_class == 3  # the utility view of class forgetting reaches the outputs
    metrics.calls = 0
    first, out = run()
    again, out_again = run()
    assert (first, again, metrics.calls) == (1.0, 1.0, 1)
    assert torch.equal(out.forget, out_again.forget) and torch.equal(out.y_test, out_again.y_test)
    assert out.forgotten_class is None and len(list(path.parent.glob("*.eval_*.pt"))) == 2


EVAL_CHANGES = {
    "checkpoint bytes": lambda path, split: (_rewrite_keeping_stat(path, 1), {}),
    "forget set": lambda path, split: (None, {"split": _with_info(split, forget_sha1="0" * 40)}),
    "split seed": lambda path, split: (None, {"split": _with_info(split, seed=2)}),
    "data set": lambda path, split: (None, {"split": _with_info(split, dataset="fashion-mnist")}),
    "test size": lambda path, split: (None, {"split": _with_info(split, num_test=split.info["num_test"] - 1)}),
    "validation size": lambda path, split: (None, {"split": _with_info(split, num_val=split.info["num_val"] + 1)}),
    "training size": lambda path, split: (None, {"split": _with_info(split, num_train=split.info["num_train"] - 1)}),
    "forgotten class": lambda path, split: (None, {"forgotten": 3}),
    "metric seed": lambda path, split: (None, {"seed": 2}),
    "SVC cap": lambda path, split: (None, {"svc_max": 60}),
}


@pytest.mark.parametrize("part", list(EVAL_CHANGES))
def test_a_reference_evaluation_is_recomputed_when_one_part_of_its_key_changes(evaluation, part):
    run, path, split, metrics = evaluation
    assert run()[0] == 1.0
    _, kwargs = EVAL_CHANGES[part](path, split)
    assert run(**kwargs)[0] == 2.0, part
    assert metrics.calls == 2


def test_a_reference_evaluation_is_recomputed_after_a_new_metric_version(evaluation, monkeypatch):
    run, *_, metrics = evaluation
    run()
    monkeypatch.setattr(references, "EVAL_VERSION", references.EVAL_VERSION + 1)
    assert run()[0] == 2.0


def test_a_cache_file_holding_another_key_is_recomputed_not_served(evaluation):
    """A file under the right name whose stored key is another's (copied in, or a name clash)."""
    run, path, split, metrics = evaluation
    run()
    (cache,) = path.parent.glob("*.eval_*.pt")
    saved = utils.read_torch_file(cache)
    torch.save({"key": {**saved["key"], "seed": 99}, "value": saved["value"]}, cache)
    assert run()[0] == 2.0
    assert utils.read_torch_file(cache)["key"] == saved["key"]  # rewritten with this run's key
    assert run()[0] == 2.0


def test_the_checkpoint_is_keyed_by_its_bytes_not_its_path(evaluation, tmp_path):
    """A moved or copied folder of references keeps its caches; only what a figure depends on counts."""
    run, path, split, metrics = evaluation
    run()
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for f in path.parent.glob("1smallcnn*"):
        f.rename(moved / f.name)
    assert run(path=moved / path.name)[0] == 1.0


# --------------------------------------------------------------------------- reference audits
@pytest.fixture
def audit_cache(tmp_path, digits, monkeypatch):
    path, other = tmp_path / "ideal.pth.tar", tmp_path / "original.pth.tar"
    model = _checkpoint(path, 0)
    _checkpoint(other, 1)
    audits = Counter()
    monkeypatch.setattr(references, "run_audits", lambda *a, **k: audits())
    split = forget_split(digits, 1, -1, 40)

    def run(names=("probe", "relearn"), split=split, seed=1, budget=None, context=None):
        budget = AuditBudget() if budget is None else budget
        context = {"original": (other, None)} if context is None else context
        return references.audited(path, model, digits, split, list(names), seed, budget, context)["value"]

    return run, path, other, split


def test_audits_get_their_arguments_and_each_key_its_own_file(tmp_path, digits, monkeypatch):
    """The audits run on what audited() was given, and caches of two keys live side by side (each read
    back, none overwriting the other), named after the checkpoint without its .pth.tar."""
    path, other = tmp_path / "ideal.pth.tar", tmp_path / "original.pth.tar"
    model, original = _checkpoint(path, 0), _checkpoint(other, 1)
    split, budget, calls = forget_split(digits, 1, -1, 40), AuditBudget(relearn_epochs=2), []

    def run_audits(names, model_, data, split_, seed, budget_, **others):
        calls.append(seed)
        assert (names, model_, data, split_, budget_) == (["relearn"], model, digits, split, budget)
        assert others == {"original": original}
        return {"relearn_acc": float(seed)}

    monkeypatch.setattr(references, "run_audits", run_audits)
    for seed in (1, 2, 1, 2):
        got = references.audited(path, model, digits, split, ["relearn"], seed, budget, {"original": (other, original)})
        assert got == {"relearn_acc": float(seed)}
    assert calls == [1, 2]
    files = sorted(f.name for f in tmp_path.glob("*.audit_*.pt"))
    assert len(files) == 2 and all(re.fullmatch(r"ideal\.audit_[0-9a-f]{16}\.pt", f) for f in files)


def test_an_audit_cache_holding_another_key_is_recomputed_not_served(audit_cache):
    run, path, *_ = audit_cache
    run()
    (cache,) = path.parent.glob("*.audit_*.pt")
    saved = utils.read_torch_file(cache)
    torch.save({"key": {**saved["key"], "seed": 99}, "value": saved["value"]}, cache)
    assert run() == 2.0 and run() == 2.0


def test_evaluation_caches_of_two_keys_live_side_by_side(evaluation):
    run, path, *_ = evaluation
    assert [run(seed=s)[0] for s in (1, 2, 1, 2)] == [1.0, 2.0, 1.0, 2.0]
    files = sorted(f.name for f in path.parent.glob("*.eval_*.pt"))
    assert len(files) == 2 and all(re.fullmatch(r"1smallcnn_ep3model_SA_best\.eval_[0-9a-f]{16}\.pt", f)
                                   for f in files)


BUDGET_CHANGES = {f.name: (f.default * 2 if not isinstance(f.default, bool) else not f.default)
                  for f in dataclasses.fields(AuditBudget)}


def test_audits_are_read_back_when_nothing_changed_whatever_the_order_of_their_names(audit_cache):
    run, *_ = audit_cache
    assert run(["probe", "relearn"]) == 1.0
    assert run(["relearn", "probe"]) == 1.0


@pytest.mark.parametrize("part", ["checkpoint bytes", "other checkpoint bytes", "other checkpoint's role",
                                  "forget set", "split seed", "test size", "audit names", "seed", "version",
                                  *(f"budget {f}" for f in BUDGET_CHANGES)])
def test_audits_are_recomputed_when_one_part_of_their_key_changes(audit_cache, part, monkeypatch):
    run, path, other, split = audit_cache
    assert run() == 1.0
    kwargs = {}
    if part == "checkpoint bytes":
        _rewrite_keeping_stat(path, 2)
    elif part == "other checkpoint bytes":
        _rewrite_keeping_stat(other, 3)
    elif part == "other checkpoint's role":
        kwargs["context"] = {"ideal": (other, None)}
    elif part == "forget set":
        kwargs["split"] = _with_info(split, forget_sha1="0" * 40)
    elif part == "split seed":
        kwargs["split"] = _with_info(split, seed=2)
    elif part == "test size":
        kwargs["split"] = _with_info(split, num_test=1)
    elif part == "audit names":
        kwargs["names"] = ["probe"]
    elif part == "seed":
        kwargs["seed"] = 2
    elif part == "version":
        monkeypatch.setattr(references, "AUDIT_VERSION", references.AUDIT_VERSION + 1)
    else:
        field = part.removeprefix("budget ")
        kwargs["budget"] = AuditBudget(**{field: BUDGET_CHANGES[field]})
    assert run(**kwargs) == 2.0, part


# ---------------------------------------------------------------------------- ensemble stores
def _store_args(**change) -> argparse.Namespace:
    base = dict(dataset="digits", subsample=1.0, no_aug=False, arch="smallcnn", imagenet_arch=False, seed=1,
                shadows=8, ensemble_mode="sequential", targets=20)
    return argparse.Namespace(**base | change)


@pytest.fixture(scope="module")
def design(digits):
    return balanced_design(digits.train_idx, digits.y_train, 20, 8, 1)


STORE_FLAG_CHANGES = {"dataset": "fashion-mnist", "subsample": 0.5, "no_aug": True, "arch": "resnet18",
                      "imagenet_arch": True, "seed": 2, "shadows": 16, "ensemble_mode": "stacked", "targets": 40}


@pytest.mark.parametrize("part", [*STORE_FLAG_CHANGES, *(f"recipe {f.name}" for f in dataclasses.fields(Recipe)),
                                  "design"])
def test_an_ensemble_store_key_changes_with_each_part_and_another_is_refused(tmp_path, design, digits, part):
    base = privacy.store_key(_store_args(), Recipe(), design, None)
    args, recipe, d = _store_args(), Recipe(), design
    if part in STORE_FLAG_CHANGES:
        args = _store_args(**{part: STORE_FLAG_CHANGES[part]})
    elif part.startswith("recipe "):
        field = part.removeprefix("recipe ")
        value = getattr(recipe, field)
        other = {bool: lambda v: not v, list: lambda v: [*v, 7], str: lambda v: "adam" if v == "sgd" else "freeze"}
        recipe = dataclasses.replace(recipe, **{field: other.get(type(value), lambda v: v * 2 + 1)(value)})
    else:  # the key's "format" is a constant: raised by hand when the record's layout changes
        d = balanced_design(digits.train_idx, digits.y_train, 20, 8, 2)
    key = privacy.store_key(args, recipe, d, None)
    assert key != base and references.digest(key) != references.digest(base)
    folder = tmp_path / "store"
    folder.mkdir()
    utils.write_json(base, folder / "design.json")
    privacy.check_store(folder, base)  # the same design: accepted
    with pytest.raises(utils.UserError, match="holds an ensemble made for another design"):
        privacy.check_store(folder, key)


def test_the_store_record_keeps_its_field_names(design, digits):
    """design.json is compared field by field with the flags: renaming a field would refuse every store
    users have trained (hours of models), so the names are the record's format."""
    ulira = privacy.store_key(_store_args(), Recipe(), design, None)
    assert set(ulira) == {"format", "dataset", "subsample", "no_aug", "arch", "imagenet_arch", "recipe", "seed",
                          "shadows", "mode", "targets", "design_sha1"} and ulira["format"] == 1
    assert ulira["recipe"] == dataclasses.asdict(Recipe()) and ulira["mode"] == "sequential"
    split = forget_split(digits, 1, 3, None)
    forget = privacy.store_key(_store_args(), Recipe(), None, split)
    assert set(forget) == set(ulira) - {"targets", "design_sha1"} | {"forget_sha1"}


def test_a_forget_set_store_is_keyed_by_its_forget_set(digits):
    a = forget_split(digits, 1, 3, None)
    b = forget_split(digits, 1, 4, None)
    ka, kb = (privacy.store_key(_store_args(), Recipe(), None, s) for s in (a, b))
    assert ka["forget_sha1"] == a.info["forget_sha1"] and ka != kb
    assert privacy.store_key(_store_args(), Recipe(), None, forget_split(digits, 1, 3, None)) == ka


@pytest.mark.parametrize("part", ["targets", "member", "train_sets"])
def test_the_design_hash_covers_targets_membership_and_every_set(design, part):
    """F_k (targets in S_k) and the controls (S_k minus F_k) follow from these three."""
    changed = dataclasses.replace(design)
    if part == "targets":
        changed.targets = design.targets.clone()
        changed.targets[0] += 1
    elif part == "member":
        changed.member = design.member.clone()
        changed.member[0, 0] = ~changed.member[0, 0]
    else:
        changed.train_sets = [s.clone() for s in design.train_sets]
        changed.train_sets[-1][-1] += 1
    assert privacy.design_hash(changed) != privacy.design_hash(design)


@pytest.mark.parametrize("store", ["design_sha1", "forget_sha1"])
@pytest.mark.parametrize("change", [None, "kind", "k", "design"])
def test_a_stored_model_of_another_kind_index_or_design_is_trained_again(tmp_path, change, store, capsys):
    """U-LiRA's models record the design's sha1; the epsilon and KLoM stores' the forget set's."""
    model = create_model("smallcnn", 10, 1)
    audit = argparse.Namespace(folder=tmp_path, key={store: "abc"}, device="cpu",
                               build=lambda: create_model("smallcnn", 10, 1))
    assert privacy._file(audit, "shadow", 3) == tmp_path / "shadow_003.pt"
    record = {"state_dict": model.state_dict(), "kind": "shadow", "k": 3, "design_sha1": "abc", "best_epoch": 1}
    if change is not None:
        record |= {"kind": "control"} if change == "kind" else {"k": 4} if change == "k" else {"design_sha1": "x"}
    utils.save_checkpoint(record, tmp_path / "shadow_003.pt")
    loaded = privacy._load(audit, "shadow", 3)
    if change is None:
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    else:
        assert loaded is None and "training it again" in capsys.readouterr().err


def test_resolve_names_the_folder_by_the_key_and_refuses_a_store_of_another_design(tmp_path):
    parser = privacy.build_parser("test")
    common = ["--dataset", "digits", "--save_dir", str(tmp_path), "--shadows", "8", "--targets", "20",
              "--epochs", "2", "--unlearn", "GA"]
    audit = privacy.resolve(parser.parse_args(common))
    assert audit.folder.name.endswith(references.digest(audit.key)[:10])
    assert audit.key == privacy.store_key(audit.args, audit.train_recipe, audit.design, None)
    audit.folder.mkdir(parents=True)
    utils.write_json(audit.key, audit.folder / "design.json")
    other = privacy.resolve(parser.parse_args([*common, "--lr", "0.05"]))
    assert other.folder != audit.folder
    with pytest.raises(utils.UserError, match=r"\(recipe differ\)"):
        privacy.resolve(parser.parse_args([*common, "--lr", "0.05", "--ensemble_dir", str(audit.folder)]))


def test_a_store_trains_each_kind_on_its_sets_stores_every_model_and_then_reuses_them(tmp_path, monkeypatch, capsys):
    """epsilon's store: K originals on the training set and K oracles on D_R (selected, as main_ideal.py
    selects, without the forgotten class), each with its own seed; every model is written with its kind,
    index, forget-set id and best epoch, and a second run reuses all of them without training."""
    from unlearn.train import selection_idx

    parser = privacy.build_parser("test")
    audit = privacy.resolve(parser.parse_args(["--audit", "epsilon", "--dataset", "digits", "--class_to_replace", "3",
                                               "--shadows", "4", "--epochs", "2", "--unlearn", "GA",
                                               "--save_dir", str(tmp_path), "--quiet"]))
    calls = []

    def fit_many(build, data, sets, val, recipe, seeds, mode, progress, desc, on_model):
        calls.append(desc)
        kind = desc.split()[0]
        assert data is audit.data and recipe is audit.train_recipe and mode == "sequential" and not progress
        assert all(torch.equal(a, b) for a, b in zip(sets, audit.sets[kind])) and len(sets) == 4
        assert torch.equal(val, selection_idx(audit.data, 3 if kind == "oracle" else None))
        assert seeds == [audit.seed(k) for k in range(4)] == [1000 * audit.args.seed + k for k in range(4)]
        models = []
        for i, s in enumerate(seeds):
            torch.manual_seed(s)
            models.append(build())
            on_model(i, models[-1], 2)
        return models, [2] * len(seeds)

    monkeypatch.setattr(privacy, "fit_many", fit_many)
    first = privacy.ensembles(audit)
    assert calls == ["original models", "oracle models"] and set(first) == {"original", "oracle"}
    assert json.loads((audit.folder / "design.json").read_text()) == audit.key
    for kind in first:
        for k, model in enumerate(first[kind]):
            saved = utils.read_torch_file(audit.folder / f"{kind}_{k:03d}.pt")
            assert (saved["kind"], saved["k"], saved["best_epoch"]) == (kind, k, 2)
            assert saved["design_sha1"] == audit.split.info["forget_sha1"]
            assert all(torch.equal(saved["state_dict"][n], t) for n, t in model.state_dict().items())
    capsys.readouterr()
    again = privacy.ensembles(audit)
    assert calls == ["original models", "oracle models"]  # nothing trained the second time
    assert "original models: all 4 reused" in capsys.readouterr().out
    for kind in first:
        for a, b in zip(first[kind], again[kind]):
            assert all(torch.equal(t, b.state_dict()[n]) for n, t in a.state_dict().items())


# ---------------------------------------------------------------------- resumable training states
def _state(path, recipe: Recipe, seed: int, sets: dict) -> None:
    utils.save_checkpoint({"loop": {}, "best": {}, "wall": 0.0, "recipe": dataclasses.asdict(recipe),
                           "seed": seed, "sets": sets}, path)


@pytest.mark.parametrize("part", [None, "seed", *(f"recipe {f.name}" for f in dataclasses.fields(Recipe)),
                                  "data set", "class count", "training set", "validation set"])
def test_a_resumable_state_is_refused_when_one_thing_it_was_trained_for_differs(tmp_path, digits, part):
    split = forget_split(digits, 1, -1, 40)
    sets = trainer.sets_record(digits, split.retain, digits.val_idx)
    path = tmp_path / "x.resume.pt"
    _state(path, Recipe(), 1, sets)
    recipe, seed, mine = Recipe(), 1, sets
    if part == "seed":
        seed = 2
    elif part and part.startswith("recipe "):
        field = part.removeprefix("recipe ")
        value = getattr(recipe, field)
        other = {bool: lambda v: not v, list: lambda v: [*v, 7], str: lambda v: "adam" if v == "sgd" else "freeze"}
        recipe = dataclasses.replace(recipe, **{field: other.get(type(value), lambda v: v * 2 + 1)(value)})
    elif part == "data set":
        mine = trainer.sets_record(dataclasses.replace(digits, name="fashion-mnist"), split.retain, digits.val_idx)
    elif part == "class count":
        mine = trainer.sets_record(dataclasses.replace(digits, num_classes=11), split.retain, digits.val_idx)
    elif part == "training set":
        mine = trainer.sets_record(digits, digits.train_idx, digits.val_idx)
    elif part == "validation set":
        mine = trainer.sets_record(digits, split.retain, load_data("digits", "./data", seed=2).val_idx)
    if part is None:
        assert trainer._load_state(path, recipe, seed, mine)["seed"] == 1
    else:
        assert mine != sets or seed != 1 or recipe != Recipe()
        with pytest.raises(utils.UserError, match="another recipe or seed|other training data"):
            trainer._load_state(path, recipe, seed, mine)


def test_the_training_data_record_keeps_its_field_names(digits):
    """A resumable state written by the version before is read with these names: renaming one would refuse
    every interrupted run's progress."""
    record = trainer.sets_record(digits, digits.train_idx, digits.val_idx)
    assert set(record) == {"dataset", "num_classes", "train_sha1", "val_sha1"}
    assert record["dataset"] == "digits" and record["num_classes"] == 10


def _train_args(**change) -> argparse.Namespace:
    args = trainer.build_parser("test").parse_args(["--dataset", "digits", "--epochs", "3"])
    return argparse.Namespace(**vars(args) | change)


@pytest.mark.parametrize("part", [None, "lr", "batch_size", "weight_decay", "no_aug", "data set", "split seed",
                                  "subsample", "sizes", "forget set (ideal)", "forget set (original)"])
def test_a_finished_checkpoint_is_reused_by_resume_only_for_the_same_training(tmp_path, digits, part):
    split = forget_split(digits, 1, 3, None)
    path = tmp_path / "model.pth.tar"
    utils.save_checkpoint({"state_dict": {}, "args": vars(_train_args()), "split": split.info}, path)
    args, mine, ideal = _train_args(), split, True
    if part in ("lr", "batch_size", "weight_decay"):
        args = _train_args(**{part: getattr(args, part) * 2})
    elif part == "no_aug":
        args = _train_args(no_aug=True)
    elif part == "data set":
        mine = _with_info(split, dataset="fashion-mnist")
    elif part == "split seed":
        mine = _with_info(split, seed=2)
    elif part == "subsample":
        args = _train_args(subsample=0.5)
    elif part == "sizes":
        mine = _with_info(split, num_train=split.info["num_train"] // 2, num_test=split.info["num_test"] // 2)
    elif part is not None:
        mine, ideal = _with_info(split, forget_sha1="0" * 40), part == "forget set (ideal)"
    if part is None or part == "forget set (original)":  # the original model trains on every sample
        trainer.check_finished(path, args, mine, ideal)
    else:
        with pytest.raises(utils.UserError, match="is finished but was made with another"):
            trainer.check_finished(path, args, mine, ideal)


@pytest.mark.parametrize("flags", [{"no_aug": True}, {"subsample": 0.5}])
def test_a_finished_checkpoint_made_with_the_same_data_flags_is_reused(tmp_path, digits, flags):
    split = forget_split(digits, 1, 3, None)
    path = tmp_path / "model.pth.tar"
    utils.save_checkpoint({"state_dict": {}, "args": vars(_train_args(**flags)), "split": split.info}, path)
    trainer.check_finished(path, _train_args(**flags), split, True)
    with pytest.raises(utils.UserError, match=f"another --{next(iter(flags))}"):
        trainer.check_finished(path, _train_args(), split, True)


def test_a_finished_checkpoint_of_an_older_version_reads_missing_data_flags_as_their_defaults(tmp_path, digits):
    """Checkpoints written before --subsample and --no_aug existed: trained on the whole set, augmented;
    one without a forget-set record or arguments is refused in one line, not a traceback."""
    split = forget_split(digits, 1, 3, None)
    old = {k: v for k, v in vars(_train_args()).items() if k not in ("subsample", "no_aug")}
    path = tmp_path / "model.pth.tar"
    utils.save_checkpoint({"state_dict": {}, "args": old, "split": split.info}, path)
    trainer.check_finished(path, _train_args(), split, True)
    utils.save_checkpoint({"state_dict": {}}, path)
    with pytest.raises(utils.UserError, match="another dataset, seed, num_train, num_val, num_test, forget_sha1, "
                                              "training recipe \\(not recorded\\)"):
        trainer.check_finished(path, _train_args(), split, True)


def test_resume_refuses_a_finished_checkpoint_of_another_recipe_and_keeps_it(tmp_path):
    from conftest import run_in_process

    common = ["main_baseline.py", "--dataset", "digits", "--epochs", "1", "--seed", "4", "--quiet",
              "--save_dir", str(tmp_path)]
    run_in_process(*common)
    path = tmp_path / "4smallcnn_ep1model_SA_best.pth.tar"
    before = path.read_bytes()
    proc = run_in_process(*common, "--resume", "--lr", "0.05", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "is finished but was made with another training recipe" in proc.stderr.strip().splitlines()[-1]
    assert path.read_bytes() == before
    assert "--resume leaves it as it is" in run_in_process(*common, "--resume").stdout


# ------------------------------------------------------------------- tune.py's studies, tuned.json
def test_a_study_refuses_each_part_of_another_setting(tmp_path):
    import tune
    from experiments.sweep import Grid
    from unlearn.search import Range

    grid = Grid(datasets=["digits"], archs=["smallcnn"], seeds=[1], epochs={"digits": 5}, forget=[(-1, 40)],
                unlearn=["GA"], extra_base=["--subsample", "1.0"], extra=["--mia_svc_max", "50"])
    space = {"lr": Range(1e-4, 1e-1, log=True)}
    args = dict(grid=grid, spec="GA", c=-1, n=40, pilot_seed=7, trials=4, space=space, methods=["GA", "FT"])
    base = tune.setting_of(**args)
    changes = {"grid": [dataclasses.replace(grid, datasets=["fashion-mnist"], epochs={"fashion-mnist": 5}),
                        dataclasses.replace(grid, archs=["resnet18"]),
                        dataclasses.replace(grid, epochs={"digits": 6}),
                        dataclasses.replace(grid, extra_base=["--subsample", "0.5"]),
                        dataclasses.replace(grid, extra=["--mia_svc_max", "60"])],
               "spec": ["FT"], "c": [3], "n": [41], "pilot_seed": [8], "trials": [5],
               "space": [{"lr": Range(1e-4, 1e-2, log=True)}], "methods": [["GA"]]}
    storage = tune.make_storage(None, tmp_path)
    tune.open_study(storage, "s", base, pilot_seed=7)
    tune.open_study(storage, "s", tune.setting_of(**args), pilot_seed=7)  # the same: accepted
    seen = 0
    for name, values in changes.items():
        for value in values:
            setting = tune.setting_of(**args | {name: value})
            assert setting != base, name
            with pytest.raises(utils.UserError, match="was started for another setting"):
                tune.open_study(storage, "s", setting, pilot_seed=7)
            seen += 1
    assert seen == 12


def _tuned_doc(**change) -> dict:
    doc = {"dataset": "digits", "arch": "smallcnn", "epochs": 30, "extra_base": ["--subsample", "0.5"],
           "scenarios": {"random 40": {"class_to_replace": -1, "num_indexes_to_replace": 40,
                                       "methods": {"GA": {"best": {"lr": 1e-3, "epochs": 3}}}}}}
    return doc | change


def _tuned_args(tmp_path, doc: dict, **change) -> argparse.Namespace:
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps(doc))
    base = dict(tuned=str(path), dataset="digits", arch="smallcnn", epochs=30, subsample=0.5, audit="epsilon",
                class_to_replace=-1, num_indexes_to_replace=40, imagenet_arch=False)
    return argparse.Namespace(**base | change)


@pytest.mark.parametrize("change, message", [
    ({}, None),
    ({"dataset": "fashion-mnist"}, "made for another setting: dataset"),
    ({"arch": "resnet18"}, "made for another setting: arch"),
    ({"epochs": 31}, "made for another setting: epochs"),
    ({"subsample": 1.0}, "made for another setting: subsample"),
    ({"num_indexes_to_replace": 41}, "0 scenarios for --class_to_replace -1 --num_indexes_to_replace 41"),
    ({"class_to_replace": 3, "num_indexes_to_replace": 40}, "0 scenarios for --class_to_replace 3"),
])
def test_tuned_values_are_read_only_for_the_setting_they_were_tuned_in(tmp_path, change, message):
    args = _tuned_args(tmp_path, _tuned_doc(), **change)
    if message is None:
        assert privacy.tuned_entries(args, ["GA", "retrain"]) == [("GA", {"lr": 1e-3, "epochs": 3})]
    else:
        with pytest.raises(utils.UserError, match=message):
            privacy.tuned_entries(args, ["GA"])
    with pytest.raises(utils.UserError, match="no tuned values for FT"):
        privacy.tuned_entries(_tuned_args(tmp_path, _tuned_doc()), ["GA", "FT"])


def test_a_tuned_file_that_is_missing_or_not_tune_pys_is_refused_in_one_line(tmp_path):
    args = _tuned_args(tmp_path, _tuned_doc())
    (tmp_path / "tuned.json").unlink()
    with pytest.raises(utils.UserError, match="tuned.json not found; make it with: python tune.py --preset NAME"):
        privacy.tuned_entries(args, ["GA"])
    (tmp_path / "tuned.json").write_text(json.dumps({"dataset": "digits"}))
    with pytest.raises(utils.UserError, match="is not a tuned.json of tune.py .*; make it again with tune.py"):
        privacy.tuned_entries(args, ["GA"])
    ulira = _tuned_args(tmp_path, _tuned_doc(), audit="ulira", class_to_replace=3)
    assert privacy.tuned_entries(ulira, ["GA"]) == [("GA", {"lr": 1e-3, "epochs": 3})]  # any random scenario
    doc = _tuned_doc()
    doc["scenarios"]["class 3"] = {"class_to_replace": 3, "num_indexes_to_replace": None, "methods": {}}
    with pytest.raises(utils.UserError, match="has no tuned values for GA in scenario 'class 3'"):
        privacy.tuned_entries(_tuned_args(tmp_path, doc, class_to_replace=3, num_indexes_to_replace=None), ["GA"])


def test_a_training_state_is_saved_each_epoch_with_its_key_and_resumed_from(tmp_path, digits):
    """trainer.fit writes the loop's state with its recipe, seed and training data after every epoch
    (beside the checkpoint: NAME.resume.pt for NAME.pth.tar); resumed from it, nothing is trained again
    and the model and history are the saved ones."""
    state = trainer.resume_path(tmp_path / "1smallcnn_ep2model_SA_best.pth.tar")
    assert state == tmp_path / "1smallcnn_ep2model_SA_best.resume.pt"
    recipe = Recipe(lr=0.05, epochs=2, batch_size=64)
    train_idx = digits.train_idx[:128]
    torch.manual_seed(1)
    model = create_model("smallcnn", 10, 1)
    history, best, _ = trainer.fit(model, digits, train_idx, digits.val_idx, recipe, 1, True, "original", state=state)
    saved = utils.read_torch_file(state)
    assert saved["recipe"] == dataclasses.asdict(recipe) and saved["seed"] == 1
    assert saved["sets"] == trainer.sets_record(digits, train_idx, digits.val_idx) and saved["loop"]["epoch"] == 2
    torch.manual_seed(5)
    again = create_model("smallcnn", 10, 1)
    resumed, best_again, _ = trainer.fit(again, digits, train_idx, digits.val_idx, recipe, 1, True, "original",
                                         state=state, resume=True)
    assert best_again == best and [h["utility"] for h in resumed] == [h["utility"] for h in history]
    assert all(torch.equal(t, again.state_dict()[n]) for n, t in model.state_dict().items())
    with pytest.raises(utils.UserError, match="another recipe or seed"):
        trainer.fit(create_model("smallcnn", 10, 1), digits, train_idx, digits.val_idx, recipe, 2, True, "original",
                    state=state, resume=True)
    fresh = trainer.fit(create_model("smallcnn", 10, 1), digits, train_idx, digits.val_idx, recipe, 2, True,
                        "original", state=state)  # without resume: trained from scratch, the state rewritten
    assert len(fresh[0]) == 2 and utils.read_torch_file(state)["seed"] == 2
    torch.manual_seed(1)
    same_seed = create_model("smallcnn", 10, 1)
    trainer.fit(same_seed, digits, train_idx, digits.val_idx, recipe, 1, True, "original")
    assert all(torch.equal(t, same_seed.state_dict()[n]) for n, t in model.state_dict().items())
    torch.manual_seed(1)
    other_seed = create_model("smallcnn", 10, 1)
    trainer.fit(other_seed, digits, train_idx, digits.val_idx, recipe, 2, True, "original")  # other batches
    assert not all(torch.equal(t, other_seed.state_dict()[n]) for n, t in model.state_dict().items())


@pytest.mark.parametrize("record, reused", [("same", True), ("other", False), ("none", False)])
def test_a_concurrent_runs_checkpoint_is_reused_only_for_this_forget_set(tmp_path, digits, record, reused):
    import time

    split = forget_split(digits, 1, 3, None)
    path = tmp_path / "1smallcnn_ep2_C3_N100_ideal.pth.tar"
    started = time.time() - 5
    utils.save_checkpoint({"state_dict": {}}, path)
    if record != "none":
        sha = split.info["forget_sha1"] if record == "same" else "0" * 40
        trainer.forget_record_path(path).write_text(json.dumps({"forget_sha1": sha}))
    assert trainer.made_since(path, started, split) is reused
    assert trainer.made_since(path, time.time() + 5, split) is False  # written before this run started
