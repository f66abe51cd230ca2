"""Where the evaluation and the scripts call into the metrics, with inputs that are not symmetric:
an unlearned model unlike the ideal one, forget logits unlike test logits, an original unlike
both. Arguments swapped at a call site, a metric read on the wrong split or in the wrong
direction, a check left out: each changes a number here."""

from __future__ import annotations

import argparse
import copy
from types import SimpleNamespace

import pytest
import torch

from dataset import UserError, load_data
from evaluation import report
from evaluation.accuracy import Outputs, accuracy
from evaluation.closeness import logit_fid
from experiments import trainer
from experiments.forget import find_ideal
from models import create_model
from unlearn.impl import Recipe


def _outputs(seed: int, scale: dict[str, float], forgotten: int | None = None, classes: int = 4) -> Outputs:
    g = torch.Generator().manual_seed(seed)

    def split(n, s):
        y = torch.arange(n) % classes
        return torch.randn(n, classes, generator=g) * s + 2 * torch.nn.functional.one_hot(y, classes), y

    (f, yf), (r, yr), (t, yt), (v, yv) = (split(n, scale[k]) for k, n in
                                          (("forget", 24), ("retain", 60), ("test", 40), ("val", 20)))
    return Outputs(f, r, t, v, yf, yr, yt, yv, forgotten)


def _kl(p_logits, q_logits):  # KL(softmax(p) || softmax(q)), by hand
    p, q = torch.softmax(p_logits.double(), 1), torch.softmax(q_logits.double(), 1)
    return (p * (p.log() - q.log())).sum(1).mean().item()


def test_references_compare_each_split_with_the_ideal_models_same_split_in_the_published_direction():
    mine = _outputs(0, {"forget": 3.0, "retain": 1.0, "test": 0.5, "val": 1.0})
    ideal = _outputs(1, {"forget": 0.7, "retain": 1.0, "test": 2.0, "val": 1.0})
    m = {"UA": 40.0, "RA": 97.0, "TA": 90.0, "MIA": 55.0}
    i = {"UA": 60.0, "RA": 99.0, "TA": 93.0, "MIA": 80.0}
    o = {"UA": 10.0, "RA": 100.0, "TA": 94.0, "MIA": 5.0}
    res = report.against_references(mine, m, o, i, ideal)
    assert res["rUA"] == pytest.approx((40 - 10) / (60 - 10))
    assert res["UA_gap"] == pytest.approx(20.0)
    assert res["avg_gap"] == pytest.approx((20 + 2 + 3 + 25) / 4)
    assert res["FID_forget"] == pytest.approx(logit_fid(mine.forget, ideal.forget))
    assert res["FID_test"] == pytest.approx(logit_fid(mine.test, ideal.test))
    # the inputs make every wrong pairing give another number
    for wrong in (logit_fid(mine.forget, ideal.test), logit_fid(mine.test, ideal.forget),
                  logit_fid(mine.forget, mine.test)):
        assert abs(wrong - res["FID_forget"]) > 0.1 and abs(wrong - res["FID_test"]) > 0.1
    # KL(ideal || unlearned), docs/design.md, section 4
    assert res["KL_forget"] == pytest.approx(_kl(ideal.forget, mine.forget))
    assert res["KL_test"] == pytest.approx(_kl(ideal.test, mine.test))
    assert abs(_kl(mine.forget, ideal.forget) - res["KL_forget"]) > 0.1
    assert abs(_kl(mine.test, ideal.test) - res["KL_test"]) > 0.1
    assert report.against_references(mine, m, o, None, None) == {}
    assert "rUA" not in report.against_references(mine, m, None, i, ideal)


def test_class_forgetting_attack_sets_are_picked_by_their_labels(monkeypatch):
    out = _outputs(2, {"forget": 1.0, "retain": 1.0, "test": 1.0, "val": 1.0}, forgotten=3)
    seen = {}

    def svc_mia(member_logits, member_y, test_logits, test_y, forget_logits, forget_y):
        seen.update(members=(member_logits, member_y), test=(test_logits, test_y), target=(forget_logits, forget_y))
        return {"MIA": 0.0}

    monkeypatch.setattr(report, "svc_mia", svc_mia)
    m = report.model_metrics(out, seed=0)
    test_y = seen["test"][1]
    assert 3 not in test_y.tolist() and len(test_y) == int((out.y_test != 3).sum())
    assert torch.equal(seen["test"][0], out.test[out.y_test != 3])
    member_logits, member_y = seen["members"]
    assert len(member_y) == len(test_y)  # as many members as non-members (Unlearn-Sparse)
    rows = [int(torch.nonzero((out.retain == row).all(1))[0]) for row in member_logits]
    assert len(set(rows)) == len(rows) and torch.equal(out.y_retain[rows], member_y)  # retain rows, own labels
    assert torch.equal(seen["target"][0], out.forget) and torch.equal(seen["target"][1], out.y_forget)
    # utility without the forgotten class; its own accuracy apart
    keep = out.y_test != 3
    assert m["TA"] == pytest.approx(accuracy(out.test[keep], out.y_test[keep]))
    assert m["TA_forgotten_class"] == pytest.approx(accuracy(out.test[~keep], out.y_test[~keep]))
    assert m["UA"] == pytest.approx(100 - accuracy(out.forget, out.y_forget))


def _args(**kw) -> argparse.Namespace:
    base = dict(ideal=None, dataset="digits", arch="smallcnn", seed=1, class_to_replace=-1, data="./data", epochs=2,
                save_dir="results")
    return argparse.Namespace(**{**base, **kw})


def test_the_ideal_model_of_another_seed_or_forget_set_is_refused(tmp_path):
    path = tmp_path / "ideal.pth.tar"
    split = SimpleNamespace(info={"forget_sha1": "abc", "num_indexes_to_replace": 5})
    torch.save({"state_dict": {}, "dataset": "digits", "arch": "smallcnn", "seed": 1,
                "split": {"forget_sha1": "abc", "class_to_replace": -1, "num_indexes_to_replace": 5}}, path)
    assert find_ideal(_args(), split, path, "make it")[0] == path
    with pytest.raises(UserError, match="trained with seed 1, this run uses --seed 2"):
        find_ideal(_args(seed=2), split, path, "make it")
    other = SimpleNamespace(info={"forget_sha1": "def", "num_indexes_to_replace": 5})
    with pytest.raises(UserError, match="another forget set"):
        find_ideal(_args(), other, path, "make it")
    with pytest.raises(UserError, match="--ideal .* not found; create it with: make it"):
        find_ideal(_args(ideal=str(tmp_path / "missing.pth.tar")), split, path, "make it")
    assert find_ideal(_args(), split, tmp_path / "absent.pth.tar", "make it") == (None, None)


def test_the_ideal_model_of_another_data_set_or_architecture_is_refused(tmp_path, capsys):
    """The ideal checkpoint is checked like the original: data set, architecture, and a forget-set
    record (one without it is refused as another forget set, not a crash); the messages carry the
    command that makes the right one and both forget sets."""
    path = tmp_path / "ideal.pth.tar"
    split = SimpleNamespace(info={"forget_sha1": "abc", "num_indexes_to_replace": 5})
    record = {"forget_sha1": "xyz", "class_to_replace": 4, "num_indexes_to_replace": 9}
    torch.save({"state_dict": {}, "dataset": "digits", "arch": "smallcnn", "seed": 1, "split": record}, path)
    with pytest.raises(UserError, match="trained with dataset 'digits', but --dataset is 'fashionmnist'"):
        find_ideal(_args(dataset="fashionmnist"), split, path, "make it")
    with pytest.raises(UserError, match="trained with arch 'smallcnn', but --arch is 'resnet18'"):
        find_ideal(_args(arch="resnet18"), split, path, "make it")
    with pytest.raises(UserError, match=r"another forget set \(C=4, N=9\) than this run's \(C=-1, N=5\)"):
        find_ideal(_args(), split, path, "make it")
    torch.save({"state_dict": {}, "dataset": "digits", "arch": "smallcnn", "seed": 1}, path)
    with pytest.raises(UserError, match=r"another forget set \(C=None, N=None\)"):
        find_ideal(_args(), split, path, "make it")
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="make it again with: make it"):
        find_ideal(_args(), split, path, "make it")
    find_ideal(_args(), split, tmp_path / "absent.pth.tar", "python main_ideal.py ...")
    assert "Avg. Gap need it: python main_ideal.py ..." in capsys.readouterr().out


def test_training_keeps_the_best_validation_epoch_not_the_last(monkeypatch):
    """fit reloads the weights of the epoch whose validation accuracy was highest (the first of
    equals), whatever came after: validation accuracies are scripted, the training is real."""
    data = load_data("digits", "./data", 0)
    snapshots, scripted = [], iter([40.0, 70.0, 55.0, 70.0, 20.0])

    def logits_of(model, data, x):
        snapshots.append(copy.deepcopy(model.state_dict()))
        return torch.zeros(len(x), 10)

    from unlearn import train as training

    monkeypatch.setattr(training, "logits_of", logits_of)
    monkeypatch.setattr(training, "accuracy", lambda logits, y: next(scripted))
    torch.manual_seed(0)
    model = create_model("smallcnn", 10, 1)
    history, best, _ = trainer.fit(model, data, data.train_idx[:256], data.val_idx,
                                   Recipe(lr=0.05, epochs=5, batch_size=64), seed=0, quiet=True, kind="test")
    assert [r["val_acc"] for r in history] == [40.0, 70.0, 55.0, 70.0, 20.0] and best == 2
    kept = model.state_dict()
    assert all(torch.equal(kept[k], snapshots[1][k]) for k in kept)
    assert not all(torch.equal(kept[k], snapshots[-1][k]) for k in kept if kept[k].is_floating_point())
