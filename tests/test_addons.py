"""The add-ons' math on hand-made tensors."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import norm

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


def test_vargrad_on_sampled_gradients_matches_threshold():
    """Estimated from noisy batches, the kept share is close to the Gaussian prediction."""
    torch.manual_seed(1)
    n = 4000
    z = torch.linspace(-2.5, 2.5, n)
    sigma = torch.full((n,), 0.01)
    addon = VarGrad(beta=0.99, quantile=0.7, warmup_batches=0)
    g_u = [torch.ones(n)]
    for _ in range(3000):
        addon.observe([z * sigma + sigma * torch.randn(n)])
    _, keep = addon.direction(g_u, [z * sigma + sigma * torch.randn(n)], [torch.ones(n)])
    expected = (torch.tensor(norm.cdf(z.numpy())) > 0.7).float().mean().item()
    assert keep[0].float().mean().item() == pytest.approx(expected, abs=0.03)


def test_vargrad_beta0_quantile_half_equals_mask():
    torch.manual_seed(2)
    addon = VarGrad(beta=0.0, quantile=0.5, warmup_batches=0)
    addon.observe([torch.randn(300)])  # a first batch, as the warm-up would give
    for _ in range(3):
        g_u, g_c = [torch.randn(300)], [torch.randn(300)]
        g_c[0][:5] = 0
        _, keep = addon.direction(g_u, g_c, [g_u[0] + g_c[0]])
        assert torch.equal(keep[0], sign_agreement(g_u[0], g_c[0]))


def test_vargrad_never_passes_above_half_on_one_batch():
    addon = VarGrad(beta=0.9, quantile=0.55, warmup_batches=0)
    _, keep = addon.direction([torch.ones(10)], [torch.ones(10)], [torch.ones(10)])
    assert not keep[0].any()  # one batch: no variance estimate, p counts as 0.5
    low = VarGrad(beta=0.9, quantile=0.3, warmup_batches=0)
    assert low.direction([torch.ones(10)], [torch.ones(10)], [torch.ones(10)])[1][0].all()


def test_vargrad_quantile_one_keeps_nothing():
    addon = VarGrad(beta=0.9, quantile=1.0, warmup_batches=0)
    for _ in range(5):
        _, keep = addon.direction([torch.ones(10)], [torch.ones(10) + 1e-3 * torch.randn(10)], [torch.ones(10)])
    assert not keep[0].any()


@pytest.mark.parametrize("bad", [{"beta": 1.0}, {"quantile": 0.0}, {"quantile": 1.5}])
def test_vargrad_rejects_bad_hyperparameters(bad):
    with pytest.raises(ValueError):
        VarGrad(**bad)


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
