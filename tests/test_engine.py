"""The engine with every registered method x add-on, the feasibility invariant, the
schedule, and GA's behaviour at a tiny and a large learning rate."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from dataset import forget_split, load_data
from evaluation.accuracy import split_accuracies
from models import create_model
from unlearn import ADDONS, ALIASES, METHODS, make, parse_unlearn
from unlearn.addons.mask import Mask
from unlearn.engine import Diverged, Recipe, lr_at, run, sgd_step
from unlearn.methods.ft import FT


@pytest.fixture(scope="module")
def digits():
    torch.manual_seed(0)
    data = load_data("digits", "./data", seed=0)
    split = forget_split(data, seed=0, class_to_replace=-1, num_indexes=64)
    return data, split


@pytest.fixture(scope="module")
def trained(digits):
    """A smallcnn trained for a few epochs on digits: the 'original' model of these tests."""
    data, split = digits
    torch.manual_seed(0)
    model = create_model("smallcnn", 10, 1)
    run(model, data, split.forget[:0], data.train_idx, FT(), recipe=Recipe(lr=0.1, epochs=8, batch_size=128),
        progress=False)
    return model


@pytest.mark.parametrize("addon", sorted(ADDONS))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_with_every_addon_takes_finite_steps(digits, trained, method, addon):
    data, split = digits
    torch.manual_seed(0)
    model = copy.deepcopy(trained)
    before = [p.detach().clone() for p in model.parameters()]
    m, a = make(f"{method}+{addon}")
    # sets of one batch each: two epochs are two engine steps
    _, hist = run(model, data, split.forget[:16], split.retain[:16], m, a,
                  Recipe(lr=0.01, epochs=2, batch_size=16), progress=False)
    assert len(hist) == 2 and all(h["steps"] == 1 for h in hist)
    for h in hist:
        assert all(math.isfinite(v) for k, v in h.items() if isinstance(v, float)), h
    moved = sum((p.detach() != b).sum().item() for p, b in zip(model.parameters(), before))
    assert moved > 0, f"{method}+{addon} moved no parameter"


class _RecordingMask(Mask):
    """Mask that checks, at each step, that the previous step left masked coordinates alone."""

    def __init__(self, params):
        super().__init__()
        self.params, self.prev, self.checked = params, None, 0

    def direction(self, g_u, g_c, g_obj):
        if self.prev is not None:
            before, keep = self.prev
            for p, b, k in zip(self.params, before, keep):
                assert torch.equal(p.detach()[~k], b[~k]), "a masked coordinate moved"
                self.checked += 1
        d, keep = super().direction(g_u, g_c, g_obj)
        self.prev = ([p.detach().clone() for p in self.params], keep)
        return d, keep


def test_feasibility_masked_coordinates_do_not_move_with_momentum_and_weight_decay(digits, trained):
    data, split = digits
    model = copy.deepcopy(trained)
    params = [p for p in model.parameters() if p.requires_grad]
    addon = _RecordingMask(params)
    m, _ = make("NegGrad+")
    run(model, data, split.forget, split.retain, m, addon,
        Recipe(lr=0.05, epochs=2, batch_size=32, momentum=0.9, weight_decay=5e-3), progress=False)
    assert addon.checked > 10 * len(params)


def test_sgd_step_mask_keeps_buffer_and_skips_weight_decay():
    p = torch.tensor([1.0, 1.0, 1.0])
    buf = torch.tensor([0.5, 0.5, 0.5])
    keep = torch.tensor([True, False, True])
    sgd_step([p], [torch.tensor([1.0, 1.0, 0.0])], [keep], [buf], lr=0.1, momentum=0.9, weight_decay=0.1)
    assert buf.tolist() == pytest.approx([0.45 + 1.0 + 0.1, 0.5, 0.45 + 0.1])
    assert p.tolist() == pytest.approx([1 - 0.1 * 1.55, 1.0, 1 - 0.1 * 0.55])
    # without a mask: plain SGD with momentum, as torch.optim.SGD
    q, ref = torch.nn.Parameter(torch.tensor([1.0, -2.0])), torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.SGD([ref], lr=0.1, momentum=0.9, weight_decay=0.01)
    b = torch.zeros(2)
    for g in ([0.3, -0.1], [0.2, 0.4]):
        sgd_step([q], [torch.tensor(g)], None, [b], 0.1, 0.9, 0.01)
        ref.grad = torch.tensor(g)
        opt.step()
    assert torch.allclose(q, ref)


def test_lr_schedule_warmup_and_milestones():
    r = Recipe(lr=0.1, epochs=10, warmup=1, decreasing_lr=[5, 8])
    assert lr_at(r, 0, 0, 4) == pytest.approx(0.025)
    assert lr_at(r, 0, 3, 4) == pytest.approx(0.1)
    assert lr_at(r, 5, 0, 4) == pytest.approx(0.01)
    assert lr_at(r, 9, 0, 4) == pytest.approx(0.001)


def test_ga_tiny_lr_keeps_utility_and_long_high_lr_drives_forget_accuracy_down(digits, trained):
    data, split = digits
    base = split_accuracies(trained, data, split.forget, split.retain)
    tiny = copy.deepcopy(trained)
    run(tiny, data, split.forget, split.retain, *make("GA"), Recipe(lr=1e-6, epochs=2), progress=False)
    acc_tiny = split_accuracies(tiny, data, split.forget, split.retain)
    assert abs(acc_tiny["RA"] - base["RA"]) < 2
    strong = copy.deepcopy(trained)
    run(strong, data, split.forget, split.retain, *make("GA"), Recipe(lr=0.05, epochs=20, batch_size=32),
        progress=False)
    acc_strong = split_accuracies(strong, data, split.forget, split.retain)
    assert acc_strong["FA"] < base["FA"] - 40


def test_divergence_raises(digits, trained):
    data, split = digits
    model = copy.deepcopy(trained)
    with pytest.raises(Diverged, match="non-finite"):
        run(model, data, split.forget, split.retain, *make("GA"), Recipe(lr=1e6, epochs=30, batch_size=16),
            progress=False)


def test_empty_set_is_refused(digits, trained):
    data, split = digits
    with pytest.raises(ValueError, match="non-empty forget set"):
        run(copy.deepcopy(trained), data, split.forget[:0], split.retain, *make("GA"), progress=False)


@pytest.mark.parametrize("spec, expected", [
    ("VarGrad", ("GA", "VarGrad")), ("FT", ("FT", "none")), ("RL+Mask", ("RL", "Mask")),
    ("NegGrad+", ("NegGrad+", "none")), ("NegGrad+VarGrad", ("NegGrad+", "VarGrad")),
    ("NegGrad++Mask", ("NegGrad+", "Mask")), ("SalUn", ("RL", "SalUn")), ("NGPlus", ("NegGrad+", "none")),
])
def test_parse_unlearn(spec, expected):
    assert parse_unlearn(spec) == expected


@pytest.mark.parametrize("spec", ["Foo", "GA+Bar", "SalUn+Mask", "+Mask"])
def test_parse_unlearn_rejects_unknown_and_lists_choices(spec):
    with pytest.raises(ValueError, match="methods: .*add-ons: "):
        parse_unlearn(spec)


def test_aliases_point_to_registered_names():
    for target in ALIASES.values():
        parse_unlearn(target)


def test_unknown_hyperparameter_fails_loudly():
    with pytest.raises(TypeError, match="no hyper-parameter"):
        make("GA+VarGrad", alpha=0.5)
