"""The anchors' other methods: boundary shrinking and expanding, CF-k and EU-k in the loop;
FF, IU, SSD and LFSSD on the one-shot path, with every add-on; retrain through the CLI."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import EPOCHS, run_in_process

from dataset import forget_split
from evaluation.accuracy import accuracies, model_outputs
from models import create_model
from unlearn import ADDONS, METHODS, make
from unlearn.impl import Diverged, Recipe, run
from unlearn.methods import ssd as ssd_module
from unlearn.methods.boundary_shrink import fgsm_neighbour_labels
from unlearn.methods.common import Frozen, last_layers, weight_layers
from unlearn.methods.ft import FT
from unlearn.methods.ssd import SSD, dampening_factors, importances
from unlearn.oneshot import Sets, apply
from utils import read_torch_file

ONE_SHOT = sorted(m for m, cls in METHODS.items() if cls.kind == "one-shot")


@pytest.fixture(scope="module")
def digits(digits_data):
    data = digits_data
    return data, {"class": forget_split(data, seed=0, class_to_replace=3, num_indexes=None),
                  "random": forget_split(data, seed=0, class_to_replace=-1, num_indexes=100)}


def _train(data, idx):
    torch.manual_seed(0)
    model = create_model("smallcnn", 10, 1)
    run(model, data, idx[:0], idx, FT(), recipe=Recipe(lr=0.1, epochs=8, batch_size=128), seed=0, progress=False)
    return model


@pytest.fixture(scope="module")
def original(digits_smallcnn):
    """The session's smallcnn trained on all of digits' training set (conftest; what _train(data,
    data.train_idx) gives)."""
    return digits_smallcnn


def _acc(model, data, split) -> dict:
    return accuracies(model_outputs(model, data, split.forget, split.retain, None))


def _forget_loss(model, data, split) -> float:
    x, y = data.batch(split.forget)
    with torch.no_grad():
        return F.cross_entropy(model.eval()(x), y).item()


def _unlearn(spec, model, data, split, recipe=None, **hp):
    m, a = make(spec, **hp)
    net = copy.deepcopy(model)
    if m.kind == "one-shot":
        forgotten = split.info["class_to_replace"] if split.is_class_forgetting else None
        record = apply(net, data, split.forget, split.retain, m, a, seed=0, forgotten_class=forgotten)
    else:
        _, history = run(net, data, split.forget, split.retain, m, a, recipe, seed=0, progress=False)
        record = history[-1]
    return net, record


# ------------------------------------------------------------------ behaviour on digits
# Margins that hold on any CPU: with these recipes, over unlearning seeds 0-4, on AVX2 kernels and on the
# portable ones (ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41), FA ends at <= 14 (BS) and <= 10 (BE)
# and RA at 75-86 (BS) and 73-80 (BE). BS at 10 epochs kept training on the forget set alone and drifted to
# RA 73 here and 47-55 on other kernels, across this test's RA > 60.
@pytest.mark.parametrize("spec, recipe, hp", [
    # digits' 8x8 images have 17 grey levels: a step of 0.1 relabels about half the class, 0.3 all of it
    ("BS", Recipe(lr=0.01, epochs=3, batch_size=64), {"epsilon": 0.3}),
    ("BE", Recipe(lr=0.01, epochs=20, batch_size=64), {}),
    ("FF", None, {}),
    # importances on batches of 64, their class-forgetting loaders: alpha 10 (the CIFAR default) dampens nothing
    # on digits, 5 dampens 8-10% (FA 0, RA 98-99 on both kernel sets)
    ("SSD", None, {"alpha": 5.0}),
])
def test_class_forgetting_drives_forget_accuracy_down_and_keeps_retain_accuracy(digits, original, spec, recipe,
                                                                                hp):
    data, splits = digits
    split = splits["class"]
    before = _acc(original, data, split)
    net, _ = _unlearn(spec, original, data, split, recipe, **hp)
    after = _acc(net, data, split)
    assert before["FA"] > 95
    assert after["FA"] < before["FA"] - 60, (before, after)
    assert after["RA"] > 60, (before, after)  # chance is 10


def test_iu_moves_the_forget_loss_towards_the_ideal_models(digits, original):
    data, splits = digits
    split = splits["class"]
    ideal = _train(data, split.retain)
    target, start = _forget_loss(ideal, data, split), _forget_loss(original, data, split)
    assert target > start + 1  # the ideal model never saw the class
    net, record = _unlearn("IU", original, data, split)
    moved = _forget_loss(net, data, split)
    assert start + 0.1 < moved < target, (start, moved, target)
    assert record["step_norm"] > 0


def test_be_keeps_the_output_shape_and_the_real_classes_rows_move(digits, original):
    data, splits = digits
    split = splits["class"]
    net, _ = _unlearn("BE", original, data, split, Recipe(lr=0.01, epochs=2, batch_size=64))
    shapes = {k: v.shape for k, v in original.state_dict().items()}
    assert {k: v.shape for k, v in net.state_dict().items()} == shapes
    assert net(data.batch(split.forget[:4])[0]).shape == (4, 10)
    assert not torch.equal(net.fc.weight, original.fc.weight)


def test_be_removes_the_shadow_class_when_the_run_fails(digits, original):
    data, splits = digits
    m, _ = make("BE")
    net = copy.deepcopy(original)
    with pytest.raises(Diverged):
        run(net, data, splits["class"].forget, splits["class"].retain, m, None,
            Recipe(lr=1e30, epochs=30, batch_size=64), seed=0, progress=False)
    assert net.fc.out_features == 10


@pytest.mark.parametrize("spec", ["CF-k", "EU-k"])
@pytest.mark.parametrize("k", [1, 3])
def test_cf_k_and_eu_k_leave_every_layer_but_the_last_k_bit_identical(digits, original, spec, k):
    data, splits = digits
    net, _ = _unlearn(spec, original, data, splits["random"], Recipe(lr=0.05, epochs=2, batch_size=128), k=k)
    groups_before, groups_after = weight_layers(original), weight_layers(net)
    assert len(groups_after) == 4  # smallcnn: three convolutions and the classifier
    for i, (gb, ga) in enumerate(zip(groups_before, groups_after)):
        same = all(torch.equal(a, b) for mb, ma in zip(gb, ga)
                   for a, b in zip([*ma.parameters(), *ma.buffers()], [*mb.parameters(), *mb.buffers()]))
        assert same == (i < len(groups_before) - k), f"{spec} k={k}: layer {i} {'moved' if not same else 'frozen'}"
    assert all(p.requires_grad for p in net.parameters())  # given back after the run
    assert all(m.track_running_stats for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_k_out_of_range_is_refused(digits, original):
    data, splits = digits
    with pytest.raises(ValueError, match="--k must be between 1 and 4"):
        _unlearn("CF-k", original, data, splits["random"], Recipe(epochs=1), k=5)


# ----------------------------------------------------------------- the one-shot path
@pytest.mark.parametrize("addon", sorted(ADDONS))
@pytest.mark.parametrize("method", ONE_SHOT)
def test_every_one_shot_method_with_every_addon(digits, original, method, addon):
    data, splits = digits
    split = splits["class"]
    small = copy.copy(split)
    small.forget, small.retain = split.forget[:32], split.retain[:128]  # keeps the test fast
    before = [p.detach().clone() for p in original.parameters()]
    net, record = _unlearn(f"{method}+{addon}", original, data, small, **({"alpha": 2.0} if "SSD" in method else {}))
    after = [p.detach() for p in net.parameters()]
    assert all(torch.isfinite(p).all() for p in after)
    moved = sum((a != b).sum().item() for a, b in zip(after, before))
    total = sum(p.numel() for p in after)
    assert moved > 0, f"{method}+{addon} moved nothing"
    assert math.isclose(record["moved_share"], moved / total)
    if addon != "none":  # a coordinate the add-on does not keep stays put
        assert moved <= round(record["kept_share"] * total)


def test_one_shot_mask_keeps_exactly_the_coordinates_where_the_update_agrees_with_the_retain_gradient(digits,
                                                                                                     original):
    data, splits = digits
    split = copy.copy(splits["random"])
    split.retain = split.retain[:300]  # keeps the test fast
    full, _ = _unlearn("IU", original, data, split)
    masked, record = _unlearn("IU+Mask", original, data, split)
    # the retain gradient the add-on saw: one batch of the companion stream, as apply() draws it
    from unlearn.impl import COMPANION_STREAM, Gradients, Stream
    net = copy.deepcopy(original).train()
    g_c = next(Gradients(net, Stream(data, split.forget, split.retain, COMPANION_STREAM, torch.device("cpu")),
                          256).retain_grads(1))
    for p0, pf, pm, g in zip(original.parameters(), full.parameters(), masked.parameters(), g_c):
        delta = (pf - p0).detach()
        keep = torch.sign(-delta) * torch.sign(g) > 0
        assert torch.equal(pm.detach()[~keep], p0.detach()[~keep])
        assert torch.equal(pm.detach()[keep], pf.detach()[keep])
    assert 0 < record["kept_share"] < 1


def test_one_shot_vargrad_warms_up_on_the_prepare_stream_and_judges_by_the_companion_gradient(digits, original):
    data, splits = digits
    split = copy.copy(splits["random"])
    split.retain = split.retain[:300]  # keeps the test fast
    full, _ = _unlearn("SSD", original, data, split, alpha=2.0)
    masked, record = _unlearn("SSD+VarGrad", original, data, split, alpha=2.0)
    # what apply() should have done: VarGrad's warm-up on the prepare stream and one companion retain batch,
    # both in train mode from the original weights (seed 0, as _unlearn passes it)
    from unlearn.impl import COMPANION_STREAM, PREPARE_STREAM, Gradients, Stream
    cpu = torch.device("cpu")
    net = copy.deepcopy(original).train()
    _, addon = make("SSD+VarGrad", alpha=2.0)
    addon.prepare(Gradients(net, Stream(data, split.forget, split.retain, PREPARE_STREAM, cpu), 256))
    g_c = next(Gradients(net, Stream(data, split.forget, split.retain, COMPANION_STREAM, cpu), 256).retain_grads(1))
    step = [(p0 - pf).detach() for p0, pf in zip(original.parameters(), full.parameters())]
    _, keep = addon.direction(step, g_c, [s.clone() for s in step])
    for p0, pf, pm, k in zip(original.parameters(), full.parameters(), masked.parameters(), keep):
        assert torch.equal(pm.detach()[k], pf.detach()[k])
        assert torch.equal(pm.detach()[~k], p0.detach()[~k])
    assert 0 < record["kept_share"] < 1


@pytest.mark.parametrize("spec, empty", [("SSD", "forget"), ("IU", "retain"), ("FF", "retain")])
def test_one_shot_method_refuses_an_empty_set_it_reads(digits, original, spec, empty):
    data, splits = digits
    split = splits["random"]
    sets = {"forget": split.forget, "retain": split.retain}
    sets[empty] = sets[empty][:0]
    m, _ = make(spec)
    with pytest.raises(ValueError, match=f"needs a non-empty {empty} set"):
        apply(copy.deepcopy(original), data, sets["forget"], sets["retain"], m, seed=0)


def test_ssd_dampening_factors_select_and_bound_by_one():
    i_f = [torch.tensor([0.0, 1.0, 5.0, 100.0, 20.0])]
    i_d = [torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0])]
    (w,) = dampening_factors(i_f, i_d, alpha=10.0, lam=1.0)
    # selected only where I_F > 10 I_D: 100 (factor 1/100) and 20 (1/20); never above 1
    assert torch.allclose(w, torch.tensor([1.0, 1.0, 1.0, 0.01, 0.05]))
    (w,) = dampening_factors(i_f, i_d, alpha=10.0, lam=50.0)
    assert torch.allclose(w, torch.tensor([1.0, 1.0, 1.0, 0.5, 1.0]))  # 50 / 20 > 1: bounded


def test_lfssd_reads_no_labels_and_ssd_does(digits, original):
    data, splits = digits
    split = splits["random"]
    shuffled = copy.copy(data)
    shuffled.y_train = data.y_train[torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(0))]
    for spec, same in (("LFSSD", True), ("SSD", False)):
        a, _ = _unlearn(spec, original, data, split, alpha=2.0)
        b, _ = _unlearn(spec, original, shuffled, split, alpha=2.0)
        equal = all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
        assert equal == same, spec


def test_ff_noise_follows_the_seed_and_class_forgetting_zeroes_the_class_row(digits, original):
    data, splits = digits
    split = splits["class"]
    m, _ = make("FF", alpha=1e-12)
    nets = []
    for seed in (0, 0, 1):
        net = copy.deepcopy(original)
        apply(net, data, split.forget, split.retain[:256], m, seed=seed, forgotten_class=3)  # a small Fisher set
        nets.append(net)
    assert torch.equal(nets[0].fc.weight, nets[1].fc.weight)
    assert not torch.equal(nets[0].fc.weight, nets[2].fc.weight)
    row = nets[0].fc.weight[3]
    assert row.abs().max() < 0.2 and original.fc.weight[3].abs().max() > 0.2  # mean 0, std sqrt(1e-3)
    assert torch.allclose(nets[0].fc.weight[2], original.fc.weight[2], atol=1e-3)  # the others barely move


def test_one_shot_sets_walk_in_index_order_without_augmentation(digits):
    data, splits = digits
    split = splits["random"]
    sets = Sets(create_model("smallcnn", 10, 1), data, split.forget, split.retain, 64)
    xs = torch.cat([b.x for b in sets.batches("forget")])
    assert torch.equal(xs, data.batch(split.forget)[0])
    assert len(sets) == len(split.forget) + len(split.retain)


def test_fgsm_labels_are_the_teachers_prediction_of_the_moved_image():
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    x = torch.rand(8, 1, 2, 2)
    y = teacher(x).argmax(1)
    labels = fgsm_neighbour_labels(teacher, x, y, 0.5)
    x_req = x.clone().requires_grad_(True)
    F.cross_entropy(teacher(x_req), y).backward()
    moved = torch.round((x + 0.5 * x_req.grad.sign()).clamp(0, 1) * 255) / 255
    assert torch.equal(labels, teacher(moved).argmax(1))
    # normalised inputs: the same step in pixel units
    mean, std = torch.tensor([0.3]), torch.tensor([0.2])
    assert torch.equal(fgsm_neighbour_labels(lambda z: teacher(z * std + mean), (x - mean) / std, y, 0.5,
                                             (mean, std)), labels)


def _threshold(t: float):
    """A one-pixel teacher that predicts class 0 where the pixel is above t, else class 1; the CE
    gradient of label 1 pushes the pixel up, that of label 0 pushes it down."""
    return lambda x: torch.cat([x.flatten(1) - t, t - x.flatten(1)], 1)


@pytest.mark.parametrize("pixel, label, epsilon, t, want, why", [
    (0.9, 1, 0.5, 1.2, 1, "clipped at 1: 1.0, not 1.4, stays below 1.2"),
    (0.1, 0, 0.5, -0.2, 0, "clipped at 0: 0.0, not -0.4, stays above -0.2"),
    (0.3, 1, 0.001, 0.3015, 0, "rounded to the 8-bit grid: 77/255 = 0.30196, not 0.301"),
    (0.6, 1, 0.1, 0.65, 0, "one step of epsilon up: 0.7"),
])
def test_fgsm_neighbour_is_clipped_and_rounded_in_pixel_units(pixel, label, epsilon, t, want, why):
    x, y = torch.tensor([[[[pixel]]]]), torch.tensor([label])
    assert fgsm_neighbour_labels(_threshold(t), x, y, epsilon).item() == want, why


def test_fgsm_leaves_a_pixel_with_no_gradient_where_it_is():
    def teacher(x):  # a dead unit below 0.5: no gradient there, but a pixel moved to 1 would flip the class
        z = F.relu(x.flatten(1) - 0.5) * 10 - 1
        return torch.cat([z, torch.zeros_like(z)], 1)

    x = torch.tensor([[[[0.2]]]])
    assert fgsm_neighbour_labels(teacher, x, torch.tensor([1]), 0.5).item() == 1


# --------------------------------------------------------------------------- the CLI
def _forget(digits_models, tmp_path, *extra):
    proc = run_in_process("mlflow_forget.py", *digits_models["common"], "--class_to_replace", "-1",
                          "--num_indexes_to_replace", "100", "--tracking_uri", f"sqlite:///{tmp_path}/m.db", *extra,
                          check=False)
    return proc


@pytest.mark.slow
def test_retrain_through_the_cli_equals_main_ideal_bit_for_bit(digits_models, tmp_path):
    proc = _forget(digits_models, tmp_path, "--unlearn", "retrain")
    assert proc.returncode == 0, proc.stderr[-2000:]
    ideal = read_torch_file(digits_models["ideal_random"])
    path = proc.stdout.strip().splitlines()[-1].split("-> ")[-1]
    mine = read_torch_file(path)
    assert mine["resolved"]["recipe_epochs"] == EPOCHS and mine["resolved"]["method_kind"] == "retrain"
    assert all(torch.equal(ideal["state_dict"][k], mine["state_dict"][k]) for k in ideal["state_dict"])
    assert mine["metrics"]["RTE"] > 0


@pytest.mark.slow
def test_retrain_with_an_addon_is_refused(digits_models, tmp_path):
    proc = _forget(digits_models, tmp_path, "--unlearn", "retrain+Mask")
    assert proc.returncode == 2 and "retrain is exact unlearning and takes no add-on" in proc.stderr


@pytest.mark.slow
def test_one_shot_run_through_the_cli_logs_its_kind_and_warns_on_loop_flags(digits_models, tmp_path):
    proc = _forget(digits_models, tmp_path, "--unlearn", "SSD+SalUn", "--unlearn_lr", "0.1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--unlearn_lr not used by SSD, a one-shot method" in proc.stderr
    path = proc.stdout.strip().splitlines()[-1].split("-> ")[-1]
    ckpt = read_torch_file(path)
    assert ckpt["resolved"]["method_kind"] == "one-shot" and "recipe_lr" not in ckpt["resolved"]
    original = read_torch_file(digits_models["original"])["state_dict"]
    moved = sum((ckpt["state_dict"][k] != v).sum().item() for k, v in original.items() if v.is_floating_point())
    assert moved > 0


def test_frozen_keeps_the_batch_norm_of_the_layers_that_train():
    """CF-k/EU-k freeze all but the last layers: the batch norm inside a trained layer keeps
    tracking its statistics, the others stop; undo gives everything back (mutants: owners empty,
    `and` for `or`)."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2))
    conv1, bn1, conv2, bn2 = model
    frozen = Frozen(model, [conv2, bn2])
    assert not bn1.track_running_stats and bn2.track_running_stats
    assert [p.requires_grad for p in model.parameters()] == [False] * 4 + [True] * 4
    before = bn2.running_mean.clone()
    model.train()(torch.randn(4, 1, 7, 7))
    assert not torch.equal(bn2.running_mean, before)  # the trained layer's statistics move
    frozen.undo()
    assert bn1.track_running_stats is True and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("spec", ["CF-k", "EU-k"])
def test_k_error_names_the_method(spec):
    """The --k error says which method refused it (mutant: the name dropped)."""
    method, _ = make(spec, k=9)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=f"^{spec}: --k must be between 1 and 2"):
        method.adapt(model, torch.Generator().manual_seed(0))


def test_ssd_importances_are_the_mean_over_batches():
    """I = mean over batches of the squared gradient (label-free: of |grad of mean ||f||^2|);
    forget and train sets have different batch counts, so the divisor matters (mutant: n = 1)."""
    w = nn.Parameter(torch.tensor([[1.0, -2.0]]))
    model = lambda x: x @ w.T * torch.ones(1, 2)  # noqa: E731  (two identical logits)
    batches = [SimpleNamespace(x=torch.tensor([[1.0, 0.0]]), y=torch.tensor([0])),
               SimpleNamespace(x=torch.tensor([[0.0, 3.0], [2.0, 1.0]]), y=torch.tensor([1, 0]))]  # a mean over 2 rows
    sets = SimpleNamespace(params=[w], batches=lambda name, size=None: iter(batches),
                           grad=lambda loss: torch.autograd.grad(loss, [w]))
    per_batch = []
    for b in batches:
        (g,) = torch.autograd.grad(F.cross_entropy(model(b.x), b.y), [w])
        per_batch.append(g * g)
    (got,) = importances(model, sets, "forget", label_free=False)
    assert torch.allclose(got, (per_batch[0] + per_batch[1]) / 2)
    free = []
    for b in batches:
        (g,) = torch.autograd.grad(model(b.x).pow(2).sum(1).mean(), [w])
        free.append(g.abs())
    (got,) = importances(model, sets, "forget", label_free=True)
    assert torch.allclose(got, (free[0] + free[1]) / 2)


def test_ssd_update_dampens_by_the_factors_of_forget_against_train_importances_and_logs_their_share(monkeypatch):
    w = nn.Parameter(torch.tensor([2.0, -4.0, 1.0, 8.0]))
    imp = {"forget": [torch.tensor([50.0, 1.0, 0.0, 40.0])], "train": [torch.tensor([1.0, 1.0, 1.0, 2.0])]}
    seen = []

    def fake_importances(model, sets, name, label_free, batch_size):
        seen.append((name, label_free, batch_size))
        return imp[name]

    monkeypatch.setattr(ssd_module, "importances", fake_importances)
    delta, figures = SSD(alpha=10.0, dampening=1.0).update(None, SimpleNamespace(params=[w]))
    # I_F > 10 I_D on coordinates 0 (factor 1/50) and 3 (2/40); the others keep theirs
    assert torch.allclose(w.detach() + delta[0], torch.tensor([2.0 / 50, -4.0, 1.0, 8.0 * 2 / 40]))
    assert figures == {"dampened_share": 0.5}
    assert seen == [("forget", False, 128), ("train", False, 128)]  # unconfigured: random forgetting's 128


@pytest.mark.parametrize("spec", ["CF-k", "EU-k"])
def test_k_boundaries(spec):
    """--k counts weight layers from the top: 1 and all of them are accepted, 0 and one more refused."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 4), nn.Linear(4, 2))
    assert len(last_layers(model, 1, spec)) == 1  # the last linear layer
    assert len(last_layers(model, 3, spec)) == 4  # every layer, the batch norm with its convolution
    for k in (0, 4):
        with pytest.raises(ValueError, match=f"{spec}: --k must be between 1 and 3"):
            last_layers(model, k, spec)
