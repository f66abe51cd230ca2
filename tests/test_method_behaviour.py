"""Each method's loss terms, each add-on's inputs and the loop's wiring, checked against values
computed by hand on tiny models and hand-made tensors: a term with the wrong weight, sign or
set, a pass one epoch too long, or a term meant for the add-on leaking into the step fails here."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dataset import TensorData
from evaluation.closeness import relative_ua
from unlearn import make
from unlearn.addons.mask import sign_agreement
from unlearn.addons.salun import SalUn
from unlearn.impl import Gradients, Recipe, Stream, run, shuffled_batches
from unlearn.methods import fisher as fisher_module
from unlearn.methods import influence as influence_module
from unlearn.methods.bad_teacher import BadTeacher
from unlearn.methods.boundary_expand import BE, resized
from unlearn.methods.boundary_shrink import BS, fgsm_neighbour_labels
from unlearn.methods.common import Batch, Context, Progress, kl_to_teacher
from unlearn.methods.fisher import FF, diagonal_fisher
from unlearn.methods.influence import IU, summed_gradient, woodfisher_solve
from unlearn.methods.l1_sparse import FTL1
from unlearn.methods.neggrad_plus import NegGradPlus
from unlearn.methods.rl import RL
from unlearn.methods.scrub import SCRUB
from unlearn.oneshot import Sets


def _linear(seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, classes))


def _batch(n: int, seed: int, classes: int = 3) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(n, 1, 2, 2, generator=g), torch.randint(0, classes, (n,), generator=g))


P0 = Progress(0, 2, 0, 4)


def test_neggrad_plus_weights_retain_by_alpha_and_forget_by_one_minus_alpha():
    model, f, r = _linear(), _batch(5, 1), _batch(7, 2)
    terms = NegGradPlus(alpha=0.8).losses(model, f, r, P0)
    ce_f, ce_r = F.cross_entropy(model(f.x), f.y), F.cross_entropy(model(r.x), r.y)
    assert terms["unlearn"].item() == pytest.approx(-0.2 * ce_f.item(), rel=1e-6)
    assert terms["utility"].item() == pytest.approx(0.8 * ce_r.item(), rel=1e-6)


def test_rl_split_draws_uniform_labels_from_the_run_stream_and_weights_both_terms_one():
    model, f, r = _linear(), _batch(6, 1), _batch(8, 2)
    m = RL()
    gen = torch.Generator().manual_seed(11)
    m.setup(Context(model, 3, 6, 8, gen))
    twin = torch.Generator().manual_seed(11)
    expected_labels = torch.randint(0, 3, (6,), generator=twin)
    u = m.losses(model, f, None, P0)
    assert set(u) == {"unlearn"}  # the forget pass has no retain term
    assert u["unlearn"].item() == pytest.approx(F.cross_entropy(model(f.x), expected_labels).item(), rel=1e-6)
    c = m.losses(model, None, r, P0)
    assert "unlearn" not in c
    assert c["utility"].item() == pytest.approx(F.cross_entropy(model(r.x), r.y).item(), rel=1e-6)
    # Unlearn-Saliency's RL draws from all classes: over many draws each class, the true one included
    many = torch.stack([m.random_labels(torch.zeros(50, dtype=torch.long)) for _ in range(20)])
    assert set(many.flatten().tolist()) == {0, 1, 2}


def test_rl_union_splits_the_batch_mean_into_its_forget_and_retain_rows():
    model, f, r = _linear(), _batch(3, 1), _batch(9, 2)
    m = RL(rl_mode="union")
    m.setup(Context(model, 3, 3, 9, torch.Generator().manual_seed(5)))
    labels = torch.randint(0, 3, (3,), generator=torch.Generator().manual_seed(5))
    t = m.losses(model, f, r, P0)
    n = 12
    assert t["unlearn"].item() == pytest.approx(
        F.cross_entropy(model(f.x), labels, reduction="sum").item() / n, rel=1e-6)
    assert t["utility"].item() == pytest.approx(F.cross_entropy(model(r.x), r.y, reduction="sum").item() / n,
                                                rel=1e-6)


@pytest.mark.parametrize("msteps", [0, 1, 2, 3])
def test_scrub_max_passes_run_exactly_while_epoch_below_msteps(msteps):
    m = SCRUB(msteps=msteps, forget_batch_size=17)
    for epoch in range(5):
        names = [p.name for p in m.passes(epoch)]
        assert names == (["max", "min"] if epoch < msteps else ["min"]), epoch
        if epoch < msteps:
            assert m.passes(epoch)[0].over == "forget" and m.passes(epoch)[0].batch_size == 17


def test_scrub_terms_are_minus_kl_on_forget_and_gamma_ce_plus_alpha_kl_on_retain():
    model, f, r = _linear(0), _batch(5, 1), _batch(6, 2)
    teacher = _linear(3)
    m = SCRUB(alpha=0.3, gamma=0.6, kd_T=2.0)
    m.setup(Context(teacher, 3, 5, 6))
    u = m.losses(model, f, None, P0)["unlearn"]
    assert u.item() == pytest.approx(-kl_to_teacher(model(f.x), teacher(f.x), 2.0).item(), rel=1e-5)
    c = m.losses(model, None, r, P0)["utility"]
    want = 0.6 * F.cross_entropy(model(r.x), r.y) + 0.3 * kl_to_teacher(model(r.x), teacher(r.x), 2.0)
    assert c.item() == pytest.approx(want.item(), rel=1e-5)
    # KL(teacher || student) at T: T^2 * mean over rows of sum p_t (log p_t - log p_s)
    pt, ps = F.softmax(teacher(r.x) / 2, 1), F.log_softmax(model(r.x) / 2, 1)
    by_hand = 4 * (pt * (pt.log() - ps)).sum(1).mean()
    assert kl_to_teacher(model(r.x), teacher(r.x), 2.0).item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_ft_l1_penalty_is_constant_within_an_epoch_and_decays_per_epoch():
    """Unlearn-Sparse's FT_l1: alpha * (1 - epoch / epochs), whatever the step within the epoch."""
    model, r = _linear(), _batch(6, 2)
    m = FTL1(alpha=0.01)
    ce = F.cross_entropy(model(r.x), r.y).item()
    l1 = sum(p.abs().sum() for p in model.parameters()).item()
    for progress, share in ((Progress(0, 4, 0, 10), 1.0), (Progress(0, 4, 9, 10), 1.0),
                            (Progress(1, 4, 5, 10), 1 - 1 / 4), (Progress(3, 4, 9, 10), 1 - 3 / 4)):
        u = m.losses(model, None, r, progress)["utility"].item()
        assert u == pytest.approx(ce + 0.01 * share * l1, rel=1e-6)


def test_bad_teacher_distils_forget_rows_to_a_random_network_and_retain_rows_to_the_original():
    model, f, r = _linear(0), _batch(4, 1), _batch(6, 2)
    original = _linear(7)
    m = BadTeacher(kd_T=1.0)
    m.setup(Context(original, 3, 4, 6))
    assert all(torch.equal(a, b) for a, b in zip(m.good.state_dict().values(), original.state_dict().values()))
    assert not any(torch.equal(a, b) for a, b in zip(m.bad.state_dict().values(), original.state_dict().values()))
    t = m.losses(model, f, r, P0)
    assert t["unlearn"].item() == pytest.approx(kl_to_teacher(model(f.x), m.bad(f.x), 1.0, 10).item(), rel=1e-5)
    assert t["utility"].item() == pytest.approx(kl_to_teacher(model(r.x), original(r.x), 1.0, 10).item(), rel=1e-5)


# ------------------------------------------------------------------ add-on inputs
class _Source:
    def __init__(self, forget_sum, retain):
        self.forget_sum, self.retain = forget_sum, retain

    def forget_grad_sum(self):
        return self.forget_sum

    def retain_grads(self, n):
        return iter([self.retain] * n)


def test_salun_saliency_is_read_from_the_forget_gradient():
    forget_sum = [torch.tensor([5.0, -0.1, 0.2, -4.0])]
    retain = [torch.tensor([0.1, 9.0, 8.0, 0.1])]
    addon = SalUn(quantile=0.5)
    addon.prepare(_Source(forget_sum, retain))
    assert addon.keep[0].tolist() == [True, False, False, True]


def _tiny_data(n_forget: int, n_retain: int,
               augment: str = "crop_flip") -> tuple[TensorData, torch.Tensor, torch.Tensor]:
    """Random 2x2 images, augmented in training batches (crop and flip) unless `augment` says "none": a
    statistic that must be read from the stored images fails if it is read from augmented ones."""
    g = torch.Generator().manual_seed(0)
    n = n_forget + n_retain
    x = torch.randint(0, 256, (n, 1, 2, 2), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    data = TensorData("tiny", x, y, x[:0], y[:0], torch.arange(n), torch.arange(0), 3,
                      torch.tensor([0.5]), torch.tensor([0.25]), augment)
    return data, torch.arange(n_forget), torch.arange(n_forget, n)


def test_forget_gradient_sum_is_the_eval_mode_sum_over_the_whole_forget_set():
    data, forget, retain = _tiny_data(10, 6)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    model.train()
    src = Gradients(model, Stream(data, forget, retain, 0, torch.device("cpu")), batch_size=4)
    got = src.forget_grad_sum()
    assert model.training  # the mode it was in
    model.eval()
    x, y = data.batch(forget)
    want = torch.autograd.grad(-F.cross_entropy(model(x), y, reduction="sum"), list(model.parameters()))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, want))


def test_add_on_warm_up_leaves_weights_batch_norm_state_and_mode_untouched():
    data, forget, retain = _tiny_data(4, 40)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    model.train()
    before = copy.deepcopy(model.state_dict())
    src = Gradients(model, Stream(data, forget, retain, 0, torch.device("cpu")), batch_size=8)
    grads = list(src.retain_grads(3))
    assert len(grads) == 3 and model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # running mean/var and num_batches_tracked included
    assert not torch.equal(grads[0][0], grads[1][0])  # three different batches


def test_the_loops_batches_are_augmented_and_its_statistics_are_not():
    """Training batches (a pass's own and the cycled other set's, as the papers' train loaders) are
    augmented; the statistics read before the first step (SalUn's saliency, the one-shot methods'
    sums) come from the stored images (tested above with augmented data)."""
    data, forget, retain = _tiny_data(6, 10)
    data.x_train[:] = 255  # every stored image is the same: an unaugmented batch is all one value
    stored = data.normalise(data.x_train[:1])
    p = make("NegGrad+")[0].passes(0)[0]  # a pass over D_F that cycles D_R
    stream = Stream(data, forget, retain, 0, torch.device("cpu"))
    (chunk, flags), *_ = stream.walk(p, 4)
    drawn = stream.draw(p, chunk, flags, 4)
    for name in ("forget", "retain"):
        x = drawn[name].x
        assert x.shape[1:] == stored.shape[1:] and not torch.equal(x, stored.expand_as(x)), name
    # the crops and flips come from the stream's own generator: the same seed draws the same images
    data.x_train[:] = torch.randint(0, 256, data.x_train.shape, dtype=torch.uint8, generator=torch.Generator())

    def images(seed):
        torch.manual_seed(seed)  # the global stream must not matter
        s = Stream(data, forget, retain, 7, torch.device("cpu"))
        steps = [s.draw(p, c, f, 4) for c, f in s.walk(p, 4)]
        return torch.cat([b[n].x for b in steps for n in ("forget", "retain")])

    assert torch.equal(images(1), images(2))


# ------------------------------------------------------------------------ wiring
def _one_step(spec: str, n_forget: int = 6, n_retain: int = 10, **hyper):
    """One SGD step (lr 1, no momentum, no decay) of `spec` with whole-set batches, and the
    gradients of -CE(D_F) and CE(D_R) at the starting point."""
    data, forget, retain = _tiny_data(n_forget, n_retain, augment="none")  # the expected step reads stored images
    model = _linear(1)
    start = [p.detach().clone() for p in model.parameters()]
    xf, yf = data.batch(forget)
    xr, yr = data.batch(retain)
    params = list(model.parameters())
    g_u = torch.autograd.grad(-F.cross_entropy(model(xf), yf), params)
    g_c = torch.autograd.grad(F.cross_entropy(model(xr), yr), params)
    run(model, data, forget, retain, *make(spec, **hyper),
        Recipe(lr=1.0, epochs=1, batch_size=64, momentum=0.0, weight_decay=0.0), seed=0, progress=False)
    step = [s - p.detach() for s, p in zip(start, model.parameters())]  # = lr * d
    return step, g_u, g_c


def _close(a, b):
    return all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b))


def test_ga_steps_along_the_forget_gradient_and_ga_mask_along_its_masked_part_only():
    step, g_u, g_c = _one_step("GA")
    assert _close(step, g_u)
    step, g_u, g_c = _one_step("GA+Mask")
    # the retain gradient is computed for the mask only: it decides, it does not add
    assert _close(step, [u * sign_agreement(u, c) for u, c in zip(g_u, g_c)])
    assert not _close(step, [u + c for u, c in zip(g_u, g_c)])


def test_ft_mask_steps_along_the_masked_retain_gradient():
    step, g_u, g_c = _one_step("FT")
    assert _close(step, g_c)
    step, g_u, g_c = _one_step("FT+Mask")
    assert _close(step, [c * sign_agreement(u, c) for u, c in zip(g_u, g_c)])


def test_neggrad_plus_steps_along_both_terms_with_and_without_mask():
    alpha = 0.6
    step, g_u, g_c = _one_step("NegGrad+", alpha=alpha)
    want = [(1 - alpha) * u + alpha * c for u, c in zip(g_u, g_c)]
    assert _close(step, want)
    step, g_u, g_c = _one_step("NegGrad+Mask", alpha=alpha)
    # Mask reads the two weighted terms' gradients; their signs are those of g_u and g_c
    assert _close(step, [w * sign_agreement(u, c) for w, u, c in zip(want, g_u, g_c)])


# ------------------------------------------------------------------ batching edges
@pytest.mark.parametrize("n,size,lengths", [(9, 4, [4, 5]), (8, 4, [4, 4]), (1, 4, [2]), (4, 4, [4]),
                                            (5, 4, [5]), (10, 3, [3, 3, 4])])
def test_batches_cover_every_index_once_and_never_leave_a_batch_of_one(n, size, lengths):
    chunks = shuffled_batches(torch.arange(n) + 100, size, torch.Generator().manual_seed(0))
    assert sorted(len(c) for c in chunks) == sorted(lengths)
    got = torch.cat(chunks).tolist()
    assert sorted(got) == ([100, 100] if n == 1 else list(range(100, 100 + n)))


# ----------------------------------------------------------------------- metrics
@pytest.mark.parametrize("ua,orig,ideal,want", [(50, 80, 20, 0.5), (50, 20, 80, 0.5), (90, 80, 20, -1 / 6),
                                                (10, 80, 20, 70 / 60)])
def test_rua_is_the_signed_share_of_the_way_from_original_to_ideal(ua, orig, ideal, want):
    assert relative_ua(ua, orig, ideal) == pytest.approx(want)


def test_ga_l1_penalty_is_constant_and_ft_l1_logs_retain_accuracy():
    """Unlearn-Sparse's GA_l1: -CE(forget) + alpha * ||theta||_1, alpha never decays."""
    from unlearn.methods.common import l1_norm
    from unlearn.methods.l1_sparse import GAL1
    model, f, r = _linear(), _batch(5, 1), _batch(5, 2)
    m = GAL1(alpha=0.01)
    for fraction in (0.0, 0.25, 0.75):
        progress = Progress(int(fraction * 4), 4, 1, 2)
        t = m.losses(model, f, None, progress)
        assert t["unlearn"].item() == pytest.approx(-F.cross_entropy(model(f.x), f.y).item(), rel=1e-6)
        assert t["utility"].item() == pytest.approx(0.01 * l1_norm(model).item(), rel=1e-6)
    logged = FTL1().losses(model, None, r, P0)
    assert set(logged) == {"utility", "retain_acc"}


def test_eu_k_reinitialisation_draws_from_the_run_generator():
    from unlearn.methods.eu_k import reinitialise

    def fresh(seed):
        layer = nn.Linear(4, 3)
        reinitialise([layer], torch.Generator().manual_seed(seed))
        return layer.weight.detach().clone()

    torch.manual_seed(0)
    a = fresh(1)
    torch.manual_seed(99)  # the global generator does not matter
    assert torch.equal(a, fresh(1)) and not torch.equal(a, fresh(2))


def test_union_passes_need_both_sets():
    from unlearn.addons.none import NoAddon
    from unlearn.impl import check_sets
    for method in (RL(rl_mode="union"), BadTeacher()):
        with pytest.raises(ValueError, match="non-empty forget set"):
            check_sets(method, NoAddon(), 0, 5)
        with pytest.raises(ValueError, match="non-empty retain set"):
            check_sets(method, NoAddon(), 5, 0)
        check_sets(method, NoAddon(), 5, 5)


# ----------------------------------------------------------------- one-shot updates
def _linear_ce_grad(layer: nn.Linear, x, target):
    """The mean-CE gradient of a linear layer on flat inputs, in closed form: r = (softmax - onehot) / n,
    dW = r^T x, db = sum of r's rows."""
    r = (F.softmax(layer(x), 1) - F.one_hot(target, layer.out_features).float()) / len(x)
    return r.T @ x, r.sum(0)


def test_diagonal_fisher_is_the_mean_over_retain_batches_of_32_of_probability_weighted_squared_class_gradients():
    data, forget, retain = _tiny_data(3, 40)  # Fisher batches of 32 and 8, whatever the run's batch size
    model = _linear(seed=3).eval()
    sets = Sets(model, data, forget, retain, batch_size=256)
    got_w, got_b = diagonal_fisher(model, sets, 3)
    want_w, want_b = torch.zeros(3, 4), torch.zeros(3)
    with torch.no_grad():
        for idx in (retain[:32], retain[32:]):
            x = data.batch(idx)[0].flatten(1)
            mean_prob = F.softmax(model(x), 1).mean(0)
            for c in range(3):
                gw, gb = _linear_ce_grad(model[1], x, torch.full((len(x),), c))
                want_w += mean_prob[c] * gw ** 2
                want_b += mean_prob[c] * gb ** 2
    assert torch.allclose(got_w, want_w / 2, rtol=1e-4, atol=1e-9)
    assert torch.allclose(got_b, want_b / 2, rtol=1e-4, atol=1e-9)


def test_ff_draws_each_parameter_with_the_published_clamped_channel_averaged_variance(monkeypatch):
    """var = alpha * min(1 / (F + 1e-8), 1e3), or 1e2 on the classifier; averaged over dim 1 of tensors
    with 2 or more dimensions; the forgotten class's classifier row gets mean 0 and variance 1e-4; x10
    on the classifier and on one-dimensional parameters."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 4))
    params = list(model.parameters())  # conv weight and bias, bn weight and bias, head weight and bias
    levels = torch.tensor([0.0, 1e-4, 2e-3, 0.5, 4.0])  # 1/F: 1e8 and 1e4 clamped everywhere, 500 on the head only
    g = torch.Generator().manual_seed(5)
    fisher = [levels[torch.randint(0, 5, p.shape, generator=g)] for p in params]
    monkeypatch.setattr(fisher_module, "diagonal_fisher", lambda model, sets, num_classes: fisher)
    alpha, forgotten = 0.01, 1
    m = FF(alpha=alpha)
    m.setup(Context(model, 4, 1, 1, torch.Generator().manual_seed(9), forgotten_class=forgotten))
    delta, figures = m.update(model, Sets(model, None, torch.arange(1), torch.arange(1), 1))
    assert figures["noise_std_mean"] == pytest.approx(sum(d.std().item() for d in delta) / 6)  # 6 tensors

    twin = torch.Generator().manual_seed(9)
    head = {id(model[3].weight), id(model[3].bias)}
    for p, f, d in zip(params, fisher, delta):
        cap = 100.0 if id(p) in head else 1000.0
        var = alpha * torch.minimum(1 / (f + 1e-8), torch.tensor(cap))
        if p.ndim > 1:
            var = var.mean(1, keepdim=True).expand_as(p).clone()
        mu = p.detach().clone()
        if id(p) in head:
            mu[forgotten], var[forgotten] = 0.0, 1e-4
        if id(p) in head or p.ndim == 1:
            var = 10 * var
        noise = torch.randn(p.shape, generator=twin)
        assert torch.allclose(p.detach() + d, mu + var.sqrt() * noise, rtol=1e-5, atol=1e-7)
    assert not torch.equal(delta[0][:, 0], delta[0][:, 1])  # averaged variance, independent noise


class _ScriptedSets:
    """Stands in for `Sets`: yields single retain samples and answers each gradient request with the next
    scripted vector, so WoodFisher's recursion can be checked on numbers worked out by hand."""

    def __init__(self, grads):
        self.grads, self.calls, self.params = list(grads), [], [torch.zeros(2)]

    def batches(self, name, size=None, limit=None):
        self.calls.append((name, size, limit))
        for _ in range(len(self.grads))[:limit]:
            yield Batch(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))

    def grad(self, loss, retain_graph=False):
        return [self.grads.pop(0)]


def test_woodfisher_solve_follows_the_published_recursion_over_exactly_n_retain_samples():
    # v = (1, 2), n = 3, gradients g1 = (1, 0), g2 = (1, 1), g3 = (0, 2), then one that must not be read:
    #   o = g1 = (1, 0)
    #   g2: o.g2 = 1, k.g2 = 3: k = (1, 2) - 3 / (3 + 1) (1, 0) = (0.25, 2); o = (1, 0) - 1 / 4 (1, 0) = (0.75, 0)
    #   g3: o.g3 = 0, k.g3 = 4: k = (0.25, 2) - 4 / 3 (0.75, 0) = (-0.75, 2)
    sets = _ScriptedSets([torch.tensor(g) for g in ([1.0, 0.0], [1.0, 1.0], [0.0, 2.0], [5.0, 5.0])])
    k = woodfisher_solve(nn.Identity(), sets, torch.tensor([1.0, 2.0]), 3)
    assert torch.allclose(k, torch.tensor([-0.75, 2.0]))
    assert sets.calls == [("retain", 1, 3)] and len(sets.grads) == 1


def test_iu_steps_alpha_times_the_solved_difference_of_forget_and_weighted_retain_gradient_sums(monkeypatch):
    # v = g_F / (n_F + n_R) - g_R n_F / ((n_F + n_R) n_R), with n_F = 2, n_R = 6: g_F / 8 - g_R / 24
    sums = {"forget": torch.tensor([8.0, 0.0, 16.0]), "retain": torch.tensor([0.0, 48.0, 24.0])}
    monkeypatch.setattr(influence_module, "summed_gradient", lambda model, sets, name: sums[name])
    seen = {}

    def solve(model, sets, v, n):
        seen["n"] = n
        return v * torch.tensor([1.0, 2.0, 3.0])  # a stand-in for H^-1 that is not the identity

    monkeypatch.setattr(influence_module, "woodfisher_solve", solve)
    model = nn.Linear(2, 1)  # 3 parameters: the weight (1, 2) and the bias
    sets = Sets(model, None, torch.arange(2), torch.arange(2, 8), 4)
    (dw, db), figures = IU(alpha=0.5, iu_samples=7).update(model, sets)
    # v = (1 - 0, 0 - 2, 2 - 1) = (1, -2, 1); times (1, 2, 3) and alpha 0.5
    want = torch.tensor([0.5, -2.0, 1.5])
    assert seen["n"] == 7
    assert dw.shape == (1, 2) and torch.allclose(torch.cat([dw.flatten(), db]), want)
    assert figures["step_norm"] == pytest.approx(want.norm().item())


def test_iu_gradient_sum_adds_every_sample_of_the_set_whatever_the_batches():
    data, forget, retain = _tiny_data(5, 7)
    model = _linear(seed=1).eval()
    x, y = data.batch(retain)
    gw, gb = _linear_ce_grad(model[1], x.flatten(1), y)  # the mean over the 7 samples
    got = summed_gradient(model, Sets(model, data, forget, retain, batch_size=3), "retain")  # batches 3, 3, 1
    assert torch.allclose(got, 7 * torch.cat([gw.flatten(), gb]), atol=1e-5)


def test_bs_trains_the_clean_image_towards_its_neighbours_label_and_logs_the_relabelled_percentage():
    model, f = _linear(seed=4), _batch(40, 6)
    x = f.x.sigmoid()  # pixels in [0, 1], the unit FGSM steps in
    f = Batch(x, model(x).argmax(1).detach())  # labelled as the original predicts: the step moves some away
    m = BS(epsilon=0.05)
    m.setup(Context(model, 3, 40, 0, pixels=(torch.zeros(1), torch.ones(1))))
    terms = m.losses(model, f, None, P0)
    labels = fgsm_neighbour_labels(m.teacher, f.x, f.y, 0.05)
    share = (labels != f.y).float().mean().item() * 100
    assert 0 < share < 100  # some labels change, some do not: the figure's direction shows
    assert terms["relabelled"].item() == pytest.approx(share)
    assert terms["unlearn"].item() == pytest.approx(F.cross_entropy(model(f.x), labels).item(), rel=1e-6)
    assert terms["forget_acc"].item() == pytest.approx((model(f.x).argmax(1) == f.y).float().mean().item() * 100)


def test_be_shadow_row_is_drawn_like_torchs_linear_init_from_the_run_generator_and_removed_exactly():
    model = _linear(seed=2, classes=2).eval()  # fan_in 4, 2 classes: the shadow is class 2
    head = model[1]
    m = BE()
    m.adapt(model, torch.Generator().manual_seed(3))
    grown = model[1]
    twin = torch.Generator().manual_seed(3)
    bound = 1 / 2  # 1 / sqrt(fan_in)
    assert grown.out_features == 3 and not grown.training  # the layer's mode is kept
    assert torch.equal(grown.weight[:2], head.weight) and torch.equal(grown.bias[:2], head.bias)
    assert torch.allclose(grown.weight[2:], torch.rand(1, 4, generator=twin) * 2 * bound - bound)
    assert torch.allclose(grown.bias[2:], torch.rand(1, generator=twin) * 2 * bound - bound)
    # the loss pulls every forget sample to the shadow class; forget accuracy is over the real classes
    with torch.no_grad():
        grown.bias[2] = 100.0  # every sample predicts the shadow class
    f = _batch(12, 8)
    f = Batch(f.x, model(f.x)[:, :2].argmax(1))  # labelled with the best real class
    terms = m.losses(model, f, None, P0)
    out = model(f.x)
    assert terms["unlearn"].item() == pytest.approx(F.cross_entropy(out, torch.full((12,), 2)).item(), rel=1e-6)
    assert terms["forget_acc"].item() == 100.0
    m.restore(model)
    assert model[1].out_features == 2 and m.shadow is None
    assert torch.equal(model[1].weight, grown.weight[:2]) and torch.equal(model[1].bias, grown.bias[:2])
    bare = resized(nn.Linear(4, 2, bias=False), 3, torch.Generator().manual_seed(0))
    assert bare.bias is None and bare.out_features == 3  # a layer without a bias gains none


TINY = 1e-12


# ---------------------------------------------------------------- methods
def test_kl_to_teacher_divides_by_the_given_n_and_by_one_for_a_single_row():
    """The union passes divide by the size of both sets (n), not by the rows in hand; a single row
    is divided by 1 (mutants: n ignored, max(len, 2))."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    by_hand = (F.softmax(t, 1) * (F.log_softmax(t, 1) - F.log_softmax(s, 1))).sum()
    assert float(kl_to_teacher(s, t, n=7)) == pytest.approx(float(by_hand) / 7, rel=1e-5)
    assert float(kl_to_teacher(s, t)) == pytest.approx(float(by_hand) / 3, rel=1e-5)
    one = (F.softmax(t[:1], 1) * (F.log_softmax(t[:1], 1) - F.log_softmax(s[:1], 1))).sum()
    assert float(kl_to_teacher(s[:1], t[:1])) == pytest.approx(float(one), rel=1e-5)
    # the temperature is 1 unless given: T = 2 softens both sides and multiplies by 4
    soft = (F.softmax(t / 2, 1) * (F.log_softmax(t / 2, 1) - F.log_softmax(s / 2, 1))).sum() * 4 / 3
    assert float(kl_to_teacher(s, t, T=2.0)) == pytest.approx(float(soft), rel=1e-5)
    assert float(kl_to_teacher(s, t, T=2.0)) != pytest.approx(float(kl_to_teacher(s, t)), rel=1e-3)


@pytest.mark.parametrize("spec, name, accepted, refused", [
    # VarGrad (Unlearn-Sparse's `--beta`, `--quantile`; warm-up needs two batches for a variance)
    ("VarGrad", "beta", 0.0, 1.0),
    ("VarGrad", "beta", math.nextafter(1.0, 0.0), -TINY),
    ("VarGrad", "quantile", 1.0, 0.0),
    ("VarGrad", "quantile", TINY, 1.0 + 1e-9),
    ("VarGrad", "warmup_batches", 2, 1),
    ("GA+SalUn", "quantile", 0.0, 1.0),
    ("GA+SalUn", "quantile", math.nextafter(1.0, 0.0), -TINY),
    ("FF", "alpha", TINY, 0.0),
    ("BS", "epsilon", TINY, 0.0),
    ("IU", "alpha", TINY, 0.0),
    ("IU", "iu_samples", 2, 1),
    ("SSD", "alpha", TINY, 0.0),
    ("SSD", "dampening", TINY, 0.0),
    ("LFSSD", "dampening", TINY, 0.0),
])
def test_hyperparameter_boundaries(spec, name, accepted, refused):
    method, addon = make(spec, **{name: accepted})
    assert getattr(method, name, None) == accepted or getattr(addon, name, None) == accepted
    with pytest.raises(ValueError, match=f"--{name}"):
        make(spec, **{name: refused})
