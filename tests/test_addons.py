"""The add-ons' math on hand-made tensors."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import norm

from unlearn.addons.common import split_like
from unlearn.addons.mask import Mask, sign_agreement
from unlearn.addons.salun import saliency_mask
from unlearn.addons.vargrad import VarGrad, aligned_probability, ema_moments, probably_aligned


def test_sign_agreement_keeps_only_strict_agreement():
    g_u = torch.tensor([1.0, -2.0, 3.0, 0.0, -1.0, 2.0])
    g_c = torch.tensor([2.0, -1.0, -3.0, 1.0, 0.0, 0.5])
    assert sign_agreement(g_u, g_c).tolist() == [True, True, False, False, False, True]


def test_mask_addon_kept_coordinates_agree_and_others_are_zero():
    torch.manual_seed(0)
    g_u, g_c = [torch.randn(50, 7)], [torch.randn(50, 7)]
    g_u[0][0] = 0  # zeros are never kept
    d, keep = Mask().direction(g_u, g_c, [g_u[0] + g_c[0]])
    assert (g_u[0][keep[0]] * g_c[0][keep[0]] > 0).all()
    assert (d[0][~keep[0]] == 0).all() and torch.equal(d[0][keep[0]], (g_u[0] + g_c[0])[keep[0]])
    assert 0.3 < keep[0].float().mean() < 0.7


def test_ema_moments_estimate_known_mean_and_variance():
    torch.manual_seed(0)
    mu, sigma = torch.linspace(-1, 1, 200), torch.linspace(0.1, 2, 200)
    mean, var = torch.zeros(200), torch.zeros(200)
    for _ in range(4000):
        mean, var = ema_moments(mean, var, mu + sigma * torch.randn(200), beta=0.995)
    assert torch.allclose(mean, mu, atol=0.25)
    assert torch.allclose(var.sqrt(), sigma, rtol=0.2)


@pytest.mark.parametrize("q", [0.5, 0.55, 0.7, 0.9])
def test_vargrad_keeps_the_gaussian_threshold_share(q):
    """With the true mean and variance, coordinate i is kept iff Phi(z_i) > q."""
    z = torch.linspace(-3, 3, 6001, dtype=torch.float64)
    sigma = torch.rand(6001, dtype=torch.float64) + 0.5
    mean, var = z * sigma, sigma**2
    sign = torch.where(torch.rand(6001) < 0.5, -1.0, 1.0).double()
    keep = probably_aligned(sign, sign * mean, var, q)  # sign(g_U) * m = z * sigma
    expected = (torch.tensor(norm.cdf(z.numpy())) > q).double().mean()
    assert keep.double().mean().item() == pytest.approx(expected.item(), abs=1e-3)
    assert torch.allclose(aligned_probability(sign, sign * mean, var), torch.tensor(norm.cdf(z.numpy())),
                          atol=1e-6)


class _Batches:
    """A stand-in for the engine's gradient source: the warm-up sees these batches."""

    def __init__(self, batches):
        self.batches = batches

    def retain_grads(self, n):
        assert n <= len(self.batches)
        yield from self.batches[:n]


def warmed(addon: VarGrad, batches) -> VarGrad:
    addon.warmup_batches = len(batches)
    addon.prepare(_Batches(batches))
    return addon


def test_vargrad_on_sampled_gradients_matches_threshold():
    """Estimated from noisy batches, the kept share is close to the Gaussian prediction."""
    torch.manual_seed(1)
    n = 4000
    z = torch.linspace(-2.5, 2.5, n)
    sigma = torch.full((n,), 0.01)
    addon = warmed(VarGrad(beta=0.99, quantile=0.7), [[z * sigma + sigma * torch.randn(n)] for _ in range(3000)])
    _, keep = addon.direction([torch.ones(n)], [z * sigma + sigma * torch.randn(n)], [torch.ones(n)])
    expected = (torch.tensor(norm.cdf(z.numpy())) > 0.7).float().mean().item()
    assert keep[0].float().mean().item() == pytest.approx(expected, abs=0.03)


def test_vargrad_warmup_estimates_mean_and_unbiased_variance_exactly():
    torch.manual_seed(4)
    batches = [[torch.randn(6, 5), torch.randn(3)] for _ in range(7)]
    addon = warmed(VarGrad(), batches)
    mean, var = split_like(addon.mean, batches[0]), split_like(addon.var, batches[0])
    for i in range(2):
        stacked = torch.stack([b[i] for b in batches])
        assert torch.allclose(mean[i], stacked.mean(0), atol=1e-6)
        assert torch.allclose(var[i], stacked.var(0, unbiased=True), atol=1e-6)


def test_vargrad_variance_is_not_biased_low_after_a_short_warmup():
    """Five unit-variance batches: the estimate averages sigma^2 = 1 (an EMA started from
    zero would give about 0.54 at beta 0.9), and it stays unbiased through the EMA steps."""
    torch.manual_seed(5)
    n = 20000
    addon = warmed(VarGrad(beta=0.9), [[torch.randn(n)] for _ in range(5)])
    assert addon.var.mean().item() == pytest.approx(1.0, abs=0.05)
    for _ in range(3):
        addon.direction([torch.ones(n)], [torch.randn(n)], [torch.ones(n)])
    assert addon.var.mean().item() == pytest.approx(1.0, abs=0.08)


def test_vargrad_beta0_quantile_half_equals_mask():
    torch.manual_seed(2)
    addon = warmed(VarGrad(beta=0.0, quantile=0.5), [[torch.randn(300)], [torch.randn(300)]])
    for _ in range(3):
        g_u, g_c = [torch.randn(300)], [torch.randn(300)]
        g_c[0][:5] = 0
        g_u[0][5:8] = 0
        _, keep = addon.direction(g_u, g_c, [g_u[0] + g_c[0]])
        assert torch.equal(keep[0], sign_agreement(g_u[0], g_c[0]))


def test_vargrad_quantile_one_keeps_nothing():
    addon = warmed(VarGrad(beta=0.9, quantile=1.0), [[torch.ones(10) + 1e-3 * torch.randn(10)] for _ in range(3)])
    for _ in range(5):
        _, keep = addon.direction([torch.ones(10)], [torch.ones(10) + 1e-3 * torch.randn(10)], [torch.ones(10)])
        assert not keep[0].any()


@pytest.mark.parametrize("bad, says", [({"beta": 1.0}, "beta"), ({"quantile": 0.0}, "quantile"),
                                       ({"quantile": 1.5}, "quantile"), ({"warmup_batches": 1}, "at least 2"),
                                       ({"warmup_batches": 0}, "at least 2")])
def test_vargrad_rejects_bad_hyperparameters(bad, says):
    with pytest.raises(ValueError, match=says):
        VarGrad(**bad)


def test_sign_agreement_survives_products_that_underflow():
    tiny = torch.tensor([1e-30, -1e-30])
    assert sign_agreement(tiny, tiny).tolist() == [True, True]


@pytest.mark.parametrize("q", [0.0, 0.3, 0.5, 0.9])
def test_salun_kept_share_is_one_minus_quantile(q):
    torch.manual_seed(3)
    scores = [torch.randn(40, 9), torch.randn(17), torch.zeros(13)]  # ties among the zeros
    keep = saliency_mask(scores, q)
    n = sum(s.numel() for s in scores)
    assert sum(k.sum().item() for k in keep) == round((1 - q) * n)
    kept = torch.cat([s.abs().flatten()[k.flatten()] for s, k in zip(scores, keep)])
    dropped = torch.cat([s.abs().flatten()[~k.flatten()] for s, k in zip(scores, keep)])
    if len(kept) and len(dropped):
        assert kept.min() >= dropped.max()  # the most salient are the ones kept


def test_flat_addons_equal_their_per_parameter_form_bit_for_bit():
    """Mask and VarGrad work on all weights as one flat tensor; each keep mask and direction is
    what the per-parameter form computes, exactly."""
    from unlearn.addons.vargrad import welford
    g = torch.Generator().manual_seed(9)
    shapes = [(4, 3, 3, 3), (4,), (10, 4)]

    def grads(scale=1.0):
        return [torch.randn(s, generator=g) * scale for s in shapes]

    g_u, g_c, g_obj = grads(), grads(), grads()
    d, keep = Mask().direction(g_u, g_c, g_obj)
    for k, dd, u, c, o in zip(keep, d, g_u, g_c, g_obj):
        assert torch.equal(k, sign_agreement(u, c)) and torch.equal(dd, o * sign_agreement(u, c))
    warm = [grads(0.1) for _ in range(4)]
    addon = warmed(VarGrad(beta=0.8, quantile=0.6), warm)
    mean, m2 = [w.clone() for w in warm[0]], [torch.zeros(s) for s in shapes]
    for n, w in enumerate(warm[1:], start=2):
        pairs = [welford(m, s, x, n) for m, s, x in zip(mean, m2, w)]
        mean, m2 = [p[0] for p in pairs], [p[1] for p in pairs]
    var = [s / 3 for s in m2]
    for _ in range(3):
        g_u, g_c, g_obj = grads(), grads(0.1), grads()
        d, keep = addon.direction(g_u, g_c, g_obj)
        pairs = [ema_moments(m, v, x, 0.8) for m, v, x in zip(mean, var, g_c)]
        mean, var = [p[0] for p in pairs], [p[1] for p in pairs]
        ref = [probably_aligned(u, m, v, 0.6) for u, m, v in zip(g_u, mean, var)]
        assert all(torch.equal(k, r) for k, r in zip(keep, ref))
        assert all(torch.equal(x, o * r) for x, o, r in zip(d, g_obj, ref))
        assert 0 < sum(int(r.sum()) for r in ref) < sum(r.numel() for r in ref)


def test_salun_keeps_exactly_one_coordinate_when_that_is_the_share():
    """round((1 - q) n) = 1 keeps the single largest |score| (mutant: `n_keep > 1`)."""
    scores = [torch.tensor([0.1, -3.0, 0.2]), torch.tensor([[0.5, -0.4]])]
    keep = saliency_mask(scores, quantile=0.8)  # 5 coordinates, keep 1
    assert [k.tolist() for k in keep] == [[False, True, False], [[False, False]]]
    assert sum(int(k.sum()) for k in saliency_mask(scores, quantile=0.0)) == 5
    assert sum(int(k.sum()) for k in saliency_mask(scores, quantile=0.95)) == 0
