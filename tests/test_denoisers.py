"""The denoiser contract: DiscreteEpsDenoiser, Table-1 preconditioning, analytic test beds."""

import math

import pytest
import torch
from samplerkit.adapters.analytic import FiniteSetDenoiser, GaussianDenoiser

import samplerkit as sk
from samplerkit import denoisers, diffusion
from samplerkit.errors import SamplerkitError


def _ab(T=100):
    return torch.tensor(diffusion.alpha_bar_from_betas(diffusion.cosine_betas(T)))


def test_discrete_eps_denoiser_is_x_minus_sigma_eps_at_nearest_level():
    ab = _ab()
    seen = {}

    def eps_fn(x_t, t, labels):
        seen["x_t"], seen["t"] = x_t, t
        return torch.tanh(x_t) * (1 + t.float().reshape(-1, 1, 1, 1) / 100)

    net = sk.DiscreteEpsDenoiser(eps_fn, ab, img_channels=1, img_resolution=2)
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    sigma = torch.tensor([0.05, 1.0, 30.0], dtype=torch.float64)
    out = net(x, sigma)
    levels = ((1 - ab) / ab).sqrt()
    t = (sigma[:, None] - levels[None]).abs().argmin(1)
    assert seen["t"].tolist() == t.tolist() and seen["x_t"].dtype == torch.float32
    c_in = (1 / (sigma**2 + 1).sqrt()).reshape(-1, 1, 1, 1)
    expected = x - sigma.reshape(-1, 1, 1, 1) * eps_fn((c_in * x).float(), t, None).double()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_round_sigma_returns_trained_levels():
    net = sk.DiscreteEpsDenoiser(lambda x, t, y: x, _ab())
    levels = net.sigmas
    torch.testing.assert_close(net.round_sigma(levels[10] * 1.01), levels[10])
    assert net.sigma_min == pytest.approx(float(levels[0])) and net.sigma_max == pytest.approx(float(levels[-1]))


def test_learned_variance_comes_from_the_same_forward_pass():
    calls = []

    def eps_fn(x_t, t, labels):
        calls.append(1)
        return torch.cat([x_t, torch.full_like(x_t, -0.5)], 1)

    net = sk.DiscreteEpsDenoiser(eps_fn, _ab(), learned_variance=True, img_channels=2, img_resolution=2)
    D, v = net.denoise_with_variance(torch.ones(1, 2, 2, 2), 1.0)
    assert len(calls) == 1 and D.shape == (1, 2, 2, 2) and torch.all(v == -0.5)


def test_wrong_output_channels_is_a_clear_error():
    net = sk.DiscreteEpsDenoiser(lambda x, t, y: x[:, :1], _ab(), img_channels=3)
    with pytest.raises(SamplerkitError, match="channels"):
        net(torch.zeros(1, 3, 2, 2), 1.0)


def test_edm_preconditioning_matches_table1():
    s = torch.tensor(1.7, dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = denoisers.edm_preconditioning(s, 0.5)
    assert float(c_skip) == pytest.approx(0.25 / (1.7**2 + 0.25))
    assert float(c_out) == pytest.approx(1.7 * 0.5 / math.sqrt(1.7**2 + 0.25))
    assert float(c_in) == pytest.approx(1 / math.sqrt(1.7**2 + 0.25))
    assert float(c_noise) == pytest.approx(math.log(1.7) / 4)
    _, c_out, c_in, c_noise = denoisers.vp_preconditioning(s)
    assert float(c_out) == pytest.approx(-1.7) and float(c_in) == pytest.approx(1 / math.sqrt(1.7**2 + 1))
    t = float(diffusion.vp_sigma_inv(s))
    assert float(c_noise) == pytest.approx(999 * t, rel=1e-6)
    assert float(denoisers.ve_preconditioning(s)[3]) == pytest.approx(math.log(0.85))


def test_finite_set_denoiser_is_the_softmax_weighted_mean():
    y = torch.tensor([[[[1.0]]], [[[-1.0]]]], dtype=torch.float64)
    net = FiniteSetDenoiser(y)
    x = torch.tensor([[[[0.3]]]], dtype=torch.float64)
    sigma = 0.7
    w1 = math.exp(-((0.3 - 1) ** 2) / (2 * sigma**2))
    w2 = math.exp(-((0.3 + 1) ** 2) / (2 * sigma**2))
    assert float(net(x, sigma)) == pytest.approx((w1 - w2) / (w1 + w2), rel=1e-12)
    assert float(net(x, 0.0)) == 1.0  # sigma = 0: the nearest image


def test_conditional_finite_set_restricts_to_the_class():
    y = torch.tensor([[[[1.0]]], [[[-1.0]]]], dtype=torch.float64)
    net = FiniteSetDenoiser(y, labels=torch.tensor([0, 1]))
    assert float(net(torch.zeros(1, 1, 1, 1), 5.0, torch.tensor([1]))) == -1.0
    with pytest.raises(SamplerkitError):
        net(torch.zeros(1, 1, 1, 1), 5.0)
    with pytest.raises(SamplerkitError):
        net(torch.zeros(1, 1, 1, 1), 5.0, torch.tensor([2]))


def test_gaussian_denoiser_is_the_posterior_mean_and_its_ode_solution_is_exact():
    net = GaussianDenoiser(0.2, 0.3, img_channels=1, img_resolution=1)
    x = torch.full((1, 1, 1, 1), 2.0, dtype=torch.float64)
    assert float(net(x, 0.4)) == pytest.approx(0.2 + 0.09 / (0.09 + 0.16) * 1.8)
    # the solution satisfies dx/dsigma = (x - D(x; sigma)) / sigma
    h, s = 1e-6, 0.8
    xs = lambda sig: net.ode_solution(x, 5.0, sig)  # noqa: E731
    deriv = (xs(s + h) - xs(s - h)) / (2 * h)
    torch.testing.assert_close(deriv, (xs(s) - net(xs(s), s)) / s, rtol=1e-6, atol=0)


def test_unconditional_model_refuses_labels():
    with pytest.raises(SamplerkitError, match="unconditional"):
        GaussianDenoiser(0, 1, 1, 1)(torch.zeros(1, 1, 1, 1), 1.0, torch.tensor([0]))
