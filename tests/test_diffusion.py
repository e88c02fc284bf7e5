"""The diffusion formulas against their paper definitions (Nichol & Dhariwal 2021, Eqs. 10-12, 15, 17, 19)."""

import math

import numpy as np
import pytest
import torch

from samplerkit import diffusion as D
from samplerkit.errors import SamplerkitError


def test_linear_betas_are_ddpm_range_at_1000_steps():
    b = D.linear_betas(1000)
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02) and len(b) == 1000


def test_cosine_alpha_bar_follows_eq17():
    T, s = 4000, 0.008
    ab = D.alpha_bar_from_betas(D.cosine_betas(T))
    t = np.array([1, 100, 2000, 3000])
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    expected = [f(k) / f(0) for k in t]
    np.testing.assert_allclose(ab[t - 1], expected, rtol=1e-10)


def test_cosine_betas_clipped_at_0999():
    b = D.cosine_betas(1000)
    assert b.max() == pytest.approx(0.999) and (b <= 0.999).all()


def test_sigma_alpha_bar_round_trip():
    ab = torch.tensor([0.999, 0.5, 1e-4], dtype=torch.float64)
    torch.testing.assert_close(D.alpha_bar_from_sigma(D.sigma_from_alpha_bar(ab)), ab, rtol=1e-14, atol=0)


def test_vp_sigma_inverse_and_derivative():
    t = torch.tensor([1e-3, 0.3, 1.0], dtype=torch.float64)
    torch.testing.assert_close(D.vp_sigma_inv(D.vp_sigma(t)), t, rtol=1e-10, atol=1e-12)
    h = 1e-6
    numeric = (D.vp_sigma(t + h) - D.vp_sigma(t - h)) / (2 * h)
    torch.testing.assert_close(D.vp_sigma_deriv(t), numeric, rtol=1e-6, atol=0)


def test_vp_betas_for_range_hits_both_end_points():
    beta_d, beta_min = D.vp_betas_for_range(0.002, 80.0, 1e-3)
    assert float(D.vp_sigma(1e-3, beta_d, beta_min)) == pytest.approx(0.002, rel=1e-9)
    assert float(D.vp_sigma(1.0, beta_d, beta_min)) == pytest.approx(80.0, rel=1e-9)


def test_full_chain_posterior_matches_eqs_10_to_12():
    betas = D.linear_betas(100)
    ab = D.alpha_bar_from_betas(betas)
    c = D.Chain.from_alpha_bar(ab)
    torch.testing.assert_close(c.betas, torch.tensor(betas), rtol=1e-12, atol=1e-15)
    k = 37
    beta_tilde = (1 - ab[k - 1]) / (1 - ab[k]) * betas[k]
    assert float(c.posterior_variance[k]) == pytest.approx(beta_tilde, rel=1e-12)
    x0, xt = torch.tensor(0.3, dtype=torch.float64), torch.tensor(-1.2, dtype=torch.float64)
    coef1 = math.sqrt(ab[k - 1]) * betas[k] / (1 - ab[k])
    coef2 = math.sqrt(1 - betas[k]) * (1 - ab[k - 1]) / (1 - ab[k])
    mu = coef1 * 0.3 + coef2 * -1.2
    assert float(c.posterior_mean(k, x0, xt)) == pytest.approx(mu, rel=1e-12)
    assert float(c.posterior_log_variance_clipped[0]) == float(c.posterior_log_variance_clipped[1])


def test_respaced_chain_betas_follow_eq19():
    ab = D.alpha_bar_from_betas(D.cosine_betas(1000))
    kept = [0, 250, 500, 999]
    c = D.Chain.from_alpha_bar(ab[kept])
    expected = [1 - ab[0]] + [1 - ab[kept[i]] / ab[kept[i - 1]] for i in range(1, 4)]
    np.testing.assert_allclose(c.betas.numpy(), expected, rtol=1e-12)
    expected_tilde = [(1 - ab[kept[i - 1]]) / (1 - ab[kept[i]]) * expected[i] for i in range(1, 4)]
    np.testing.assert_allclose(c.posterior_variance[1:].numpy(), expected_tilde, rtol=1e-12)


def test_learned_variance_interpolates_between_beta_tilde_and_beta():
    lb, lbt = math.log(0.02), math.log(0.01)
    v = torch.tensor([-1.0, 0.0, 1.0])
    out = D.learned_log_variance(v, lb, lbt)
    torch.testing.assert_close(out, torch.tensor([lbt, (lb + lbt) / 2, lb], dtype=torch.float64))


def test_eps_x0_conversions_invert_q_sample():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    ab = torch.tensor(0.3, dtype=torch.float64)
    xt = D.q_sample(x0, ab, eps)
    torch.testing.assert_close(D.predict_x0_from_eps(xt, ab, eps), x0)
    torch.testing.assert_close(D.predict_eps_from_x0(xt, ab, x0), eps)


def test_bad_chain_and_schedule_raise_our_error():
    with pytest.raises(SamplerkitError):
        D.Chain.from_alpha_bar([0.5, 0.6])
    with pytest.raises(SamplerkitError):
        D.betas_for("quadratic", 10)
