"""Files the toolkit reads back (checkpoints, resume states, cached reference evaluations) load
with torch's weights-only unpickler: a file whose pickle would run code is refused with one line
and runs nothing; the files the toolkit writes, and those it wrote before, still load."""

from __future__ import annotations

import os

import pytest
import torch

import utils
from experiments import trainer
from unlearn.impl import Recipe
from utils import UserError


class _Payload:
    """Unpickling this runs `touch marker`: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _poisoned(path, marker, **extra):
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": _Payload(marker), **extra}, path)
    return path


def test_a_checkpoint_carrying_a_pickled_payload_is_refused_in_one_line_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = _poisoned(tmp_path / "model.pth.tar", marker)
    with pytest.raises(UserError) as e:
        utils.load_checkpoint(path)
    text = str(e.value)
    assert "\n" not in text and "refused" in text and str(path) in text and "system" in text, text
    assert not marker.exists()
    # the plain loader says what it met and runs nothing either
    with pytest.raises(utils.UnsafeFile):
        utils.read_torch_file(path)
    assert not marker.exists()


def test_a_poisoned_resume_state_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = _poisoned(tmp_path / "x.resume.pt", marker, loop={}, best={}, recipe={}, seed=0, wall=0.0)
    with pytest.raises(UserError, match="not a resumable training state"):
        trainer._load_state(path, Recipe(), 0)
    assert not marker.exists()


def test_a_poisoned_evaluation_cache_is_recomputed_and_runs_nothing(tmp_path, monkeypatch):
    from experiments import references as report

    marker = tmp_path / "ran"
    cache = _poisoned(tmp_path / "c.pt", marker)
    computed = []
    monkeypatch.setattr(report, "model_outputs", lambda *a, **k: computed.append(1) or "outputs")
    monkeypatch.setattr(report, "model_metrics", lambda *a, **k: {"UA": 1.0})
    with pytest.raises(TypeError):  # the stub outputs cannot be cached: enough to know they were recomputed
        report._cached_reference(cache, lambda: None, None, type("S", (), {"forget": 0, "retain": 0})(), None, 0,
                                 None)
    assert computed == [1]
    assert not marker.exists()


def test_what_the_toolkit_writes_loads_weights_only_and_older_files_still_load(tmp_path):
    new = tmp_path / "new.pth.tar"
    utils.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "provenance": utils.provenance(),
                           "args": {"decreasing_lr": [91, 136], "lr": 0.1, "arch": None}}, new)
    plain = torch.load(new, weights_only=True)  # no allow-list needed: tensors and plain types only
    assert type(plain["provenance"]["torch"]) is str
    # checkpoints written before provenance stored a str carry torch's TorchVersion
    old = tmp_path / "old.pth.tar"
    torch.save({"state_dict": {"w": torch.ones(3)}, "provenance": {"torch": torch.__version__}}, old)
    assert type(torch.__version__) is not str
    assert utils.load_checkpoint(old)["provenance"]["torch"] == str(torch.__version__)


def test_a_lock_serialises_its_holders_and_leaves_no_file_behind(tmp_path):
    import threading
    import time

    target = tmp_path / "model.pth.tar"
    events = []

    def hold(name):
        with utils.exclusive(target):
            events.append(("in", name))
            time.sleep(0.05)
            events.append(("out", name))

    threads = [threading.Thread(target=hold, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [e[0] for e in events] == ["in", "out"] * 4  # never two holders at once
    assert all(events[i][1] == events[i + 1][1] for i in range(0, 8, 2))
    assert not list(tmp_path.iterdir())  # no zero-byte .lock left
    with pytest.raises(RuntimeError):
        with utils.exclusive(target):
            raise RuntimeError("a failed run")
    assert not list(tmp_path.iterdir())
