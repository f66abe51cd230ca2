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
from unlearn import ADDONS, ALIASES, METHODS, make, parse_unlearn, spec_name
from unlearn.addons.common import Flat
from unlearn.addons.mask import Mask
from unlearn.impl import Diverged, Recipe, lr_at, run, sgd_step
from unlearn.methods.ft import FT


@pytest.fixture(scope="module")
def digits(digits_data):
    return digits_data, forget_split(digits_data, seed=0, class_to_replace=-1, num_indexes=64)


@pytest.fixture(scope="module")
def trained(digits_smallcnn):
    """The session's smallcnn trained on digits (conftest): the 'original' model of these tests."""
    return digits_smallcnn


LOOP_METHODS = sorted(m for m, cls in METHODS.items() if cls.kind == "loop")


@pytest.mark.parametrize("addon", sorted(ADDONS))
@pytest.mark.parametrize("method", LOOP_METHODS)
def test_every_method_with_every_addon_takes_finite_steps(digits, trained, method, addon):
    data, split = digits
    torch.manual_seed(0)
    model = copy.deepcopy(trained)
    before = [p.detach().clone() for p in model.parameters()]
    m, a = make(f"{method}+{addon}")
    # sets of one batch each: one step per pass (two for a pass over their union)
    _, hist = run(model, data, split.forget[:16], split.retain[:16], m, a,
                  Recipe(lr=0.01, epochs=2, batch_size=16), seed=0, progress=False)
    assert [h["steps"] for h in hist] == [sum(1 + (p.over == "union") for p in m.passes(e)) for e in range(2)]
    for h in hist:
        assert all(math.isfinite(v) for k, v in h.items() if isinstance(v, float)), h
        # the record holds the loop's figures and the method's terms and accuracies, under their names
        terms = set(h) - {"epoch", "lr", "steps", "time_s", "kept_share"}
        assert terms <= {"unlearn", "utility", "forget_acc", "retain_acc", "relabelled"}, h  # relabelled: BS
        assert terms & {"unlearn", "utility"}, h
    moved = sum((p.detach() != b).sum().item() for p, b in zip(model.parameters(), before))
    assert moved > 0, f"{method}+{addon} moved no parameter"
    if addon == "none":
        assert all("kept_share" not in h for h in hist)
    else:  # the add-on gated the step: it kept some coordinates, and not all
        assert all(0 < h["kept_share"] < 1 for h in hist), [h.get("kept_share") for h in hist]
        assert moved < sum(p.numel() for p in model.parameters())


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
    bufs = Flat([p])
    bufs.flat.copy_(buf)
    sgd_step([p], [torch.tensor([1.0, 1.0, 0.0])], [keep], bufs, lr=0.1, momentum=0.9, weight_decay=0.1)
    assert bufs.flat.tolist() == pytest.approx([0.45 + 1.0 + 0.1, 0.5, 0.45 + 0.1])
    assert p.tolist() == pytest.approx([1 - 0.1 * 1.55, 1.0, 1 - 0.1 * 0.55])
    # without a mask: plain SGD with momentum, as torch.optim.SGD
    q, ref = torch.nn.Parameter(torch.tensor([1.0, -2.0])), torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.SGD([ref], lr=0.1, momentum=0.9, weight_decay=0.01)
    b = Flat([q])
    for g in ([0.3, -0.1], [0.2, 0.4]):
        sgd_step([q], [torch.tensor(g)], None, b, 0.1, 0.9, 0.01)
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
    step = max((a - b).abs().max().item() for a, b in zip(tiny.state_dict().values(), trained.state_dict().values())
               if a.is_floating_point() and a.dim() > 1)  # conv and linear weights
    assert 0 < step < 1e-4  # the tiny rate was used: the weights moved, by almost nothing
    assert abs(acc_tiny["RA"] - base["RA"]) < 1 and abs(acc_tiny["FA"] - base["FA"]) < 2
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
    # the display name (run names, tables) parses back to the same pair
    assert parse_unlearn(spec_name(*expected)) == expected


@pytest.mark.parametrize("pair, name", [
    (("GA", "none"), "GA"), (("GA", "VarGrad"), "GA+VarGrad"), (("RL", "SalUn"), "RL+SalUn"),
    (("NegGrad+", "none"), "NegGrad+"), (("NegGrad+", "VarGrad"), "NegGrad+VarGrad"),
])
def test_spec_name(pair, name):
    assert spec_name(*pair) == name


@pytest.mark.parametrize("spec", ["Foo", "GA+Bar", "SalUn+Mask", "+Mask"])
def test_parse_unlearn_rejects_unknown_and_lists_choices(spec):
    with pytest.raises(ValueError, match="methods: .*add-ons: "):
        parse_unlearn(spec)


def test_aliases_point_to_registered_names():
    want = {"SalUn": ("RL", "SalUn"), "NGPlus": ("NegGrad+", "none"), "l1-sparse": ("FT_l1", "none"),
            "NG": ("GA", "none")}
    assert {alias: parse_unlearn(alias) for alias in ALIASES} == want
    for method, addon in want.values():
        assert method in METHODS and addon in ADDONS


def test_unknown_hyperparameter_fails_loudly():
    with pytest.raises(TypeError, match="no hyper-parameter"):
        make("GA+VarGrad", alpha=0.5)


# ---------------------------------------------------------------- passes
class _Spy:
    """Wraps a method and records, per step, the pass and the batches its `losses` saw."""

    def __init__(self, method):
        self.m, self.seen = method, []

    def __getattr__(self, name):
        return getattr(self.m, name)

    def losses(self, model, forget, retain, progress):
        self.seen.append((progress.epoch, progress.pass_name,
                          None if forget is None else forget.y.clone(), None if retain is None else retain.y.clone(),
                          None if forget is None else forget.x.clone()))
        return self.m.losses(model, forget, retain, progress)


def test_scrub_runs_max_passes_over_the_forget_set_exactly_while_epoch_below_msteps(digits, trained):
    data, split = digits
    m, _ = make("SCRUB", msteps=2, forget_batch_size=32)
    spy = _Spy(m)
    forget, retain = split.forget[:64], split.retain[:96]
    _, hist = run(copy.deepcopy(trained), data, forget, retain, spy, None, Recipe(lr=1e-3, epochs=3, batch_size=32),
                  seed=0, progress=False)
    passes = [(e, name) for e, name, *_ in spy.seen]
    # epochs 0 and 1: 2 max steps (64 / 32) then 3 min steps (96 / 32); epoch 2: min steps only
    assert passes == [(0, "max")] * 2 + [(0, "min")] * 3 + [(1, "max")] * 2 + [(1, "min")] * 3 + [(2, "min")] * 3
    assert all(f is not None and r is None for _, n, f, r, _x in spy.seen if n == "max")
    assert all(f is None and r is not None for _, n, f, r, _x in spy.seen if n == "min")
    assert [h["steps"] for h in hist] == [5, 5, 3]
    assert "unlearn" in hist[1] and "unlearn" not in hist[2]


@pytest.mark.parametrize("mode", ["split", "union"])
def test_rl_modes_walk_the_published_passes(digits, trained, mode):
    data, split = digits
    m, _ = make("RL", rl_mode=mode)
    spy = _Spy(m)
    forget, retain = split.forget[:40], split.retain[:80]
    run(copy.deepcopy(trained), data, forget, retain, spy, None, Recipe(lr=1e-3, epochs=1, batch_size=20),
        seed=0, progress=False)
    names = [n for _, n, *_ in spy.seen]
    if mode == "split":  # a forget pass, then a retain pass
        assert names == ["forget"] * 2 + ["retain"] * 4
    else:  # one pass over the union: 6 batches, each split into forget and retain rows
        assert names == ["union"] * 6
        n_f = sum(len(f) for _, _, f, _r, _x in spy.seen)
        n_r = sum(len(r) for _, _, _f, r, _x in spy.seen)
        assert (n_f, n_r) == (40, 80)
        assert sum(0 < len(f) < 20 for _, _, f, _r, _x in spy.seen) >= 2  # batches really are mixed


def test_rl_union_terms_add_up_to_the_batch_mean_cross_entropy(digits, trained):
    from unlearn.methods.common import Batch
    data, split = digits
    m, _ = make("RL", rl_mode="union")
    m.num_classes, m.generator = 10, torch.Generator().manual_seed(0)
    f, r = Batch(*data.batch(split.forget[:5])), Batch(*data.batch(split.retain[:11]))
    labels = m.random_labels(f.y)
    m.generator.manual_seed(0)
    terms = m.losses(trained, f, r, None)
    model_out = trained(torch.cat([f.x, r.x]))
    whole = torch.nn.functional.cross_entropy(model_out, torch.cat([labels, r.y]))
    assert (terms["unlearn"] + terms["utility"]).item() == pytest.approx(whole.item(), rel=1e-5)


# ------------------------------------------------------- paired comparisons
@pytest.mark.parametrize("addon", ["Mask", "VarGrad", "SalUn"])
def test_an_addon_never_changes_the_batches_the_method_sees(digits, trained, addon):
    data, split = digits
    streams = {}
    for spec in ("GA", f"GA+{addon}"):
        m, a = make(spec)
        spy = _Spy(m)
        run(copy.deepcopy(trained), data, split.forget, split.retain, spy, a, Recipe(lr=1e-3, epochs=2, batch_size=16),
            seed=3, progress=False)
        streams[spec] = spy.seen
    base, other = streams["GA"], streams[f"GA+{addon}"]
    assert len(base) == len(other) > 4
    assert all(torch.equal(a[2], b[2]) and torch.equal(a[4], b[4]) for a, b in zip(base, other))


def test_same_seed_same_batches_other_seed_other_batches(digits, trained):
    data, split = digits
    seen = []
    for seed in (1, 1, 2):
        spy = _Spy(make("GA")[0])
        run(copy.deepcopy(trained), data, split.forget, split.retain, spy, None,
            Recipe(lr=1e-3, epochs=1, batch_size=16), seed=seed, progress=False)
        seen.append(torch.cat([s[2] for s in spy.seen]))
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], seen[2])


def test_vargrad_beta0_half_ends_bit_identical_to_mask(digits, trained):
    data, split = digits
    out = []
    for spec, hp in (("GA+Mask", {}), ("GA+VarGrad", {"beta": 0.0, "quantile": 0.5})):
        model = copy.deepcopy(trained)
        run(model, data, split.forget, split.retain, *make(spec, **hp), Recipe(lr=0.01, epochs=3, batch_size=16),
            seed=5, progress=False)
        out.append(model.state_dict())
    assert all(torch.equal(out[0][k], out[1][k]) for k in out[0])


# ------------------------------------------------------- batch-norm side channel
def test_bn_stats_freeze_with_every_weight_frozen_leaves_the_state_dict_bit_identical(digits, trained):
    data, split = digits
    for bn_stats, identical in (("freeze", True), ("update", False)):
        model = copy.deepcopy(trained)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        run(model, data, split.forget, split.retain, *make("GA+VarGrad", quantile=1.0),
            Recipe(lr=0.01, epochs=2, batch_size=16, bn_stats=bn_stats), seed=0, progress=False)
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before) == identical, bn_stats
        # the weights never move either way: only the running statistics (and counters) can
        assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def _bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}


@pytest.mark.parametrize("spec", ["GA", "RL"])
def test_an_addons_own_terms_move_no_batch_norm_statistics(digits, trained, spec):
    """GA has no retain term and RL's forget pass none either: the add-on's retain forward must leave the
    running statistics alone, so the plain method and its add-on runs make the same updates."""
    data, split = digits
    counts = {}
    for addon in ("none", "Mask", "VarGrad"):
        model = copy.deepcopy(trained)
        run(model, data, split.forget, split.retain[:96], *make(f"{spec}+{addon}"),
            Recipe(lr=0.01, epochs=2, batch_size=16), seed=0, progress=False)
        counts[addon] = {k: v.item() for k, v in _bn_state(model).items() if "num_batches" in k}
    assert counts["Mask"] == counts["VarGrad"] == counts["none"], counts
    # every weight frozen: the statistics are those of the plain method at a learning rate too small
    # to move any weight, bit for bit
    frozen, still = copy.deepcopy(trained), copy.deepcopy(trained)
    run(frozen, data, split.forget, split.retain[:96], *make(f"{spec}+VarGrad", quantile=1.0),
        Recipe(lr=0.01, epochs=2, batch_size=16), seed=0, progress=False)
    run(still, data, split.forget, split.retain[:96], *make(spec), Recipe(lr=1e-30, epochs=2, batch_size=16),
        seed=0, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(frozen.parameters(), still.parameters()))
    a, b = _bn_state(frozen), _bn_state(still)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_vargrad_warmup_leaves_model_state_untouched(digits, trained):
    from unlearn.addons.vargrad import VarGrad
    from unlearn.impl import Gradients, Stream
    data, split = digits
    model = copy.deepcopy(trained).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stream = Stream(data, split.forget, split.retain, 0, torch.device("cpu"))
    VarGrad(warmup_batches=3).prepare(Gradients(model, stream, 16))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- Adam
def test_adam_step_without_mask_is_torch_adam():
    from unlearn.impl import adam_step
    q = torch.tensor([1.0, -2.0, 0.5])
    ref = torch.nn.Parameter(q.clone())
    opt = torch.optim.Adam([ref], lr=0.1, weight_decay=0.01)
    state = {k: Flat([q]) for k in ("m", "v", "t")}
    for g in ([0.3, -0.1, 0.0], [0.2, 0.4, -1.0], [-0.5, 0.1, 0.2]):
        adam_step([q], [torch.tensor(g)], None, state, 0.1, 0.01)
        ref.grad = torch.tensor(g)
        opt.step()
    assert torch.allclose(q, ref.detach(), atol=1e-7)


def test_adam_masked_coordinate_keeps_value_moments_and_step_count():
    from unlearn.impl import adam_step
    p = torch.tensor([1.0, 1.0])
    state = {k: Flat([p]) for k in ("m", "v", "t")}
    adam_step([p], [torch.tensor([1.0, 1.0])], [torch.tensor([True, True])], state, 0.1, 0.1)
    snap = {k: v.flat.clone() for k, v in state.items()}, p.clone()
    adam_step([p], [torch.tensor([5.0, 5.0])], [torch.tensor([True, False])], state, 0.1, 0.1)
    assert p[1] == snap[1][1] and p[0] != snap[1][0]
    for k in ("m", "v", "t"):
        assert state[k].flat[1] == snap[0][k][1] and state[k].flat[0] != snap[0][k][0]


def test_feasibility_holds_with_adam(digits, trained):
    data, split = digits
    model = copy.deepcopy(trained)
    params = [p for p in model.parameters() if p.requires_grad]
    addon = _RecordingMask(params)
    run(model, data, split.forget, split.retain, make("NegGrad+")[0], addon,
        Recipe(lr=1e-3, epochs=2, batch_size=32, optimizer="adam", weight_decay=5e-3), seed=0, progress=False)
    assert addon.checked > 10 * len(params)


def test_recipe_rejects_unknown_optimizer_and_bn_mode():
    with pytest.raises(ValueError, match="optimizer"):
        Recipe(optimizer="rmsprop")
    with pytest.raises(ValueError, match="bn_stats"):
        Recipe(bn_stats="off")


# ------------------------------------------------ foreach steps == the per-parameter loop
def _loop_sgd(params, d, keep, bufs, lr, momentum, wd):
    """The step as a Python loop over the parameters (the code before the foreach step)."""
    for i, (p, g, buf) in enumerate(zip(params, d, bufs)):
        g = g + wd * p if wd else g
        if keep is None:
            buf.mul_(momentum).add_(g)
            p.sub_(lr * buf)
        else:
            buf.copy_(torch.where(keep[i], momentum * buf + g, buf))
            p.sub_(torch.where(keep[i], lr * buf, 0.0))


def _loop_adam(params, d, keep, state, lr, wd, b1=0.9, b2=0.999, eps=1e-8):
    for i, (p, g) in enumerate(zip(params, d)):
        m, v, t = state["m"][i], state["v"][i], state["t"][i]
        g = g + wd * p if wd else g
        k = keep[i] if keep is not None else torch.ones_like(p, dtype=torch.bool)
        t.add_(k.to(t.dtype))
        m.copy_(torch.where(k, b1 * m + (1 - b1) * g, m))
        v.copy_(torch.where(k, b2 * v + (1 - b2) * g * g, v))
        t_safe = t.clamp_min(1)
        p.sub_(torch.where(k, lr * (m / (1 - b1 ** t_safe)) / (v / (1 - b2 ** t_safe)).sqrt().add_(eps), 0.0))


def _shapes_params(seed):
    g = torch.Generator().manual_seed(seed)
    shapes = [(8, 3, 3, 3), (8,), (16, 8, 3, 3), (10, 16), (10,), (1,)]
    params = [torch.randn(s, generator=g) for s in shapes]
    params[2] = params[2].contiguous(memory_format=torch.channels_last)  # a channels-last weight too
    return params, g


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("wd", [0.0, 5e-4])
def test_foreach_sgd_step_equals_the_per_parameter_loop_bit_for_bit(masked, wd):
    params, g = _shapes_params(1)
    mine, ref = [p.clone() for p in params], [p.clone() for p in params]
    bufs, ref_bufs = Flat(mine), [torch.zeros_like(p) for p in params]
    for step in range(6):
        d = [torch.randn(p.shape, generator=g) * 10 ** (step - 3) for p in params]
        keep = [torch.rand(p.shape, generator=g) < 0.6 for p in params] if masked else None
        sgd_step(mine, d, keep, bufs, 0.05 * (step + 1), 0.9, wd)
        _loop_sgd(ref, d, keep, ref_bufs, 0.05 * (step + 1), 0.9, wd)
    for a, b, ba, bb in zip(mine, ref, bufs.views, ref_bufs):
        assert torch.equal(a, b) and torch.equal(ba, bb)  # bit for bit, not approximately
    assert not all(torch.equal(a, p) for a, p in zip(mine, params))


@pytest.mark.parametrize("masked", [False, True])
def test_flat_adam_step_equals_the_per_parameter_loop_bit_for_bit(masked):
    from unlearn.impl import adam_step
    params, g = _shapes_params(2)
    mine, ref = [p.clone() for p in params], [p.clone() for p in params]
    state = {k: Flat(mine) for k in ("m", "v", "t")}
    ref_state = {k: [torch.zeros_like(p) for p in params] for k in ("m", "v", "t")}
    for _ in range(5):
        d = [torch.randn(p.shape, generator=g) for p in params]
        keep = [torch.rand(p.shape, generator=g) < 0.5 for p in params] if masked else None
        adam_step(mine, d, keep, state, 0.01, 1e-3)
        _loop_adam(ref, d, keep, ref_state, 0.01, 1e-3)
    for a, b in zip(mine, ref):
        assert torch.equal(a, b)
    for k in ("m", "v", "t"):
        assert all(torch.equal(x, y) for x, y in zip(state[k].views, ref_state[k]))


# ------------------------------------------------------------ speed options
def _unlearned(trained, digits, **options):
    data, split = digits
    model = copy.deepcopy(trained)
    run(model, data, split.forget, split.retain[:320], *make("NegGrad+VarGrad", forget_batch_size=64),
        # 320: bf16 is slow on CPU
        Recipe(lr=0.02, epochs=2, batch_size=64, **options), seed=5, progress=False)
    return model


def test_bf16_autocast_agrees_with_fp32_and_keeps_state_fp32(trained, digits):
    """--amp: the forwards run in bf16 (so the weights differ from fp32's), the weights, batch-norm
    statistics and the result stay fp32 and within a small tolerance of the fp32 run."""
    data, split = digits
    fp32, bf16 = _unlearned(trained, digits), _unlearned(trained, digits, amp=True)
    moved = [(a - t).abs().max().item() for a, t in zip(fp32.state_dict().values(), trained.state_dict().values())
             if a.is_floating_point()]
    for (k, a), b in zip(fp32.state_dict().items(), bf16.state_dict().values()):
        assert b.dtype == a.dtype, k
        if a.is_floating_point():
            assert torch.allclose(a, b, rtol=0.05, atol=0.02 * max(moved)), k
    assert not all(torch.equal(a, b) for a, b in zip(fp32.state_dict().values(), bf16.state_dict().values()))
    acc = [split_accuracies(m, data, split.forget, split.retain) for m in (fp32, bf16)]
    assert abs(acc[0]["TA"] - acc[1]["TA"]) < 2 and abs(acc[0]["RA"] - acc[1]["RA"]) < 2


def test_channels_last_gives_the_fp32_weights_and_restores_the_layout(trained, digits):
    plain, last = _unlearned(trained, digits), _unlearned(trained, digits, channels_last=True)
    for (k, a), b in zip(plain.state_dict().items(), last.state_dict().items()):
        assert b[1].is_contiguous(), k  # the model leaves the run in the layout it came in
        assert torch.allclose(a, b[1], rtol=1e-4, atol=1e-6), k


def test_speed_options_resolve_to_the_device_defaults_and_keep_what_was_given():
    import argparse

    import utils
    p = argparse.ArgumentParser()
    utils.add_common_args(p)
    unset, given = p.parse_args([]), p.parse_args(["--amp", "--no-channels_last"])
    assert unset.amp is None and utils.device_for(unset).type == "cpu"
    assert {k: getattr(unset, k) for k in utils.SPEED_OPTIONS} == utils.SPEED_DEFAULTS["cpu"]
    utils.device_for(given)
    assert given.amp is True and given.channels_last is False


def test_a_recipes_adam_uses_its_momentum_as_beta1_and_torchs_beta2():
    from unlearn.impl import Stepper
    q = torch.tensor([1.0, -2.0, 0.5])
    ref = torch.nn.Parameter(q.clone())
    opt = torch.optim.Adam([ref], lr=0.1, betas=(0.7, 0.999), weight_decay=0.01)
    stepper = Stepper([q], Recipe(optimizer="adam", momentum=0.7, weight_decay=0.01))
    for g in ([0.3, -0.1, 0.0], [0.2, 0.4, -1.0], [-0.5, 0.1, 0.2], [0.1, 0.1, 0.1]):
        stepper.step([torch.tensor(g)], None, 0.1)
        ref.grad = torch.tensor(g)
        opt.step()
    assert torch.allclose(q, ref.detach(), atol=1e-7)


def test_a_resumed_run_ends_where_an_unbroken_one_does(digits):
    data, split = digits
    recipe = Recipe(lr=0.05, epochs=2, batch_size=64)
    model = create_model("smallcnn", 10, 1)
    states = []
    whole, _ = run(copy.deepcopy(model), data, split.forget, split.retain, FT(), None, recipe, seed=4, progress=False,
                   on_state=states.append)
    assert [s["epoch"] for s in states] == [1, 2] and "cuda_rng" not in states[0]
    resumed, history = run(copy.deepcopy(model), data, split.forget, split.retain, FT(), None, recipe, seed=4,
                           progress=False, resume=states[0])
    assert [r["epoch"] for r in history] == [1, 2]
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- loop plumbing
def test_cycled_batches_come_from_their_own_set_and_size(tmp_path):
    """Each (set, batch size) cycles on its own: a retain batch is drawn from D_R even after a
    forget batch was drawn (mutant: one shared cycle for every key)."""
    from unlearn.impl import Stream

    data = load_data("digits", tmp_path, seed=0)
    forget, retain = data.train_idx[:6], data.train_idx[6:40]
    stream = Stream(data, forget, retain, 0, torch.device("cpu"))
    train = data.normalise(data.x_train)  # digits has no augmentation: batches are rows of it
    for name, idx, size in (("forget", forget, 4), ("retain", retain, 5), ("forget", forget, 2),
                            ("retain", retain, 5)):
        b = stream.cycled(name, size)
        assert len(b.y) == size
        rows = [int(torch.nonzero((train[idx] == x).flatten(1).all(1))[0]) for x in b.x]
        assert torch.equal(b.y, data.y_train[idx][rows])  # each row one of the set's own
