"""Training objectives and regularizers against their equations (iDDPM, DDPM-IP)."""

import math

import numpy as np
import pytest
import torch

from samplerkit.diffusion import Chain, alpha_bar_from_betas, cosine_betas
from samplerkit.errors import SamplerkitError
from samplerkit.train.objective import (
    ImportanceSampler,
    Objective,
    discretized_gaussian_log_likelihood,
    network_input,
    vlb_term,
)

T = 100
CHAIN = Chain.from_alpha_bar(alpha_bar_from_betas(cosine_betas(T)))


def _data(seed=0, B=4):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(B, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(B, 3, 4, 4, generator=g, dtype=torch.float64)
    xi = torch.randn(B, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 5, 50, 99][:B])
    return x0, eps, xi, t


class TinyNet(torch.nn.Module):
    """eps-net with separate heads for eps and v, so gradients to each can be told apart."""

    def __init__(self, learn_sigma=True):
        super().__init__()
        torch.manual_seed(0)
        self.eps = torch.nn.Conv2d(3, 3, 3, padding=1, dtype=torch.float64)
        self.v = torch.nn.Conv2d(3, 3, 1, dtype=torch.float64) if learn_sigma else None

    def forward(self, x, t, y=None):
        e = torch.tanh(self.eps(x)) + t.reshape(-1, 1, 1, 1) / 1000
        return torch.cat([e, torch.tanh(self.v(x))], 1) if self.v is not None else e


def test_ip_input_is_eq6_and_target_is_eps():
    x0, eps, xi, t = _data()
    ab = CHAIN.alpha_bar[t]
    y, target = network_input(x0, ab, eps, xi, "ip", 0.1)
    a = ab.reshape(-1, 1, 1, 1)
    assert torch.equal(y, a.sqrt() * x0 + (1 - a).sqrt() * (eps + 0.1 * xi)) and target is eps


def test_ddpm_y_has_ip_input_distribution_but_its_own_target():
    g = torch.Generator().manual_seed(1)
    n = 200_000
    x0 = torch.full((n, 1, 1, 1), 0.3, dtype=torch.float64)
    ab = torch.full((n,), 0.4, dtype=torch.float64)
    e1, e2, e3 = (torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64) for _ in range(3))
    y_ip, target_ip = network_input(x0, ab, e1, e2, "ip", 0.5)
    y_y, target_y = network_input(x0, ab, e3, None, "y", 0.5)
    var = 0.6 * (1 + 0.25)  # Eq. 7: (1 - abar)(1 + gamma^2)
    for y in (y_ip, y_y):
        assert abs(float(y.mean()) - math.sqrt(0.4) * 0.3) < 5 * math.sqrt(var / n)
        assert abs(float(y.var()) - var) < 5 * var * math.sqrt(2 / n)
    # DDPM-y regresses the noise that made its input; IP regresses eps, not (y - sqrt(abar) x0)/sqrt(1 - abar)
    torch.testing.assert_close((y_y - math.sqrt(0.4) * x0) / math.sqrt(0.6 * 1.25), target_y)
    assert not torch.allclose((y_ip - math.sqrt(0.4) * x0) / math.sqrt(0.6), target_ip)


def test_gamma_zero_reduces_ip_to_plain_training_bit_for_bit():
    x0, eps, xi, t = _data()
    losses, grads = [], []
    for reg, gamma in (("ip", 0.0), ("none", 0.1)):
        net = TinyNet()
        terms = Objective(CHAIN, "hybrid", reg, gamma).terms(net, x0, t, eps, xi)
        terms["loss"].sum().backward()
        losses.append(terms["loss"])
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert torch.equal(losses[0], losses[1]) and torch.equal(grads[0], grads[1])


def test_a_per_t_gamma_schedule_perturbs_each_sample_with_its_own_gamma_t():
    x0, eps, xi, t = _data()
    gammas = torch.linspace(0, 0.5, T, dtype=torch.float64)
    seen = []

    def record(x, tt, y):
        seen.append(x)
        return torch.zeros(x.shape[0], 6, *x.shape[2:], dtype=x.dtype)

    Objective(CHAIN, "hybrid", "ip", gammas).terms(record, x0, t, eps, xi)
    a, g = CHAIN.alpha_bar[t].reshape(-1, 1, 1, 1), gammas[t].reshape(-1, 1, 1, 1)
    torch.testing.assert_close(seen[0], a.sqrt() * x0 + (1 - a).sqrt() * (eps + g * xi), rtol=0, atol=1e-15)


def _gauss_kl(m1, lv1, m2, lv2):
    return 0.5 * (lv2 - lv1 + np.exp(lv1 - lv2) + (m1 - m2) ** 2 / np.exp(lv2) - 1)


def test_vlb_term_is_the_closed_form_gaussian_kl():
    x0, eps, _, _ = _data(B=1)
    t = torch.tensor([37])
    ab = float(CHAIN.alpha_bar[37])
    x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
    eps_hat = eps * 0.8
    v = torch.full_like(x0, 0.3)
    got = float(vlb_term(CHAIN, x0, x_t, t, eps_hat, v)[0])
    # independent: DDPM posterior (Eqs. 10-12 of iddpm) and the learned variance (Eq. 15), numpy
    ab_prev = float(CHAIN.alpha_bar[36])
    beta = 1 - ab / ab_prev
    beta_tilde = beta * (1 - ab_prev) / (1 - ab)
    xt, x0n, eh = x_t.numpy(), x0.numpy(), eps_hat.numpy()
    x0_hat = (xt - math.sqrt(1 - ab) * eh) / math.sqrt(ab)
    c1, c2 = math.sqrt(ab_prev) * beta / (1 - ab), math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)
    frac = (0.3 + 1) / 2
    lv_model = frac * math.log(beta) + (1 - frac) * math.log(beta_tilde)
    kl = _gauss_kl(c1 * x0n + c2 * xt, math.log(beta_tilde), c1 * x0_hat + c2 * xt, lv_model)
    assert got == pytest.approx(kl.mean() / math.log(2), rel=1e-10)


def test_decoder_bins_form_a_valid_distribution():
    centres = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, log_scale in ((0.1, math.log(0.05)), (-0.97, math.log(0.3)), (0.5, math.log(2.0))):
        p = discretized_gaussian_log_likelihood(centres, torch.full_like(centres, mean),
                                                torch.full_like(centres, log_scale)).exp()
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-9) and bool((p >= 0).all())


def test_hybrid_loss_stops_the_vlb_gradient_at_the_mean():
    x0, eps, xi, t = _data()
    net = TinyNet()
    terms = Objective(CHAIN, "hybrid", "none").terms(net, x0, t, eps, xi)
    terms["vb"].sum().backward()
    assert float(net.eps.weight.grad.abs().max()) == 0.0 and float(net.v.weight.grad.abs().max()) > 0
    net.zero_grad()
    Objective(CHAIN, "vlb", "none").terms(net, x0, t, eps, xi)["vb"].sum().backward()
    assert float(net.eps.weight.grad.abs().max()) > 0  # L_vlb alone trains the mean too


def test_hybrid_weighs_vlb_by_T_over_1000():
    x0, eps, xi, t = _data()
    terms = Objective(CHAIN, "hybrid", "none").terms(TinyNet(), x0, t, eps, xi)
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"] * T / 1000)


def test_gradient_penalty_estimates_the_exact_jacobian_norm():
    torch.manual_seed(0)
    net = TinyNet(learn_sigma=False)
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([10])
    J = torch.autograd.functional.jacobian(lambda z: net(z, t), x).reshape(48, 48)
    exact = float((J**2).sum())
    from samplerkit.train.objective import jacobian_penalty

    g = torch.Generator().manual_seed(3)
    xs = x.repeat(4000, 1, 1, 1).requires_grad_(True)
    est = jacobian_penalty(net(xs, t.repeat(4000)), xs, torch.randn(xs.shape, generator=g, dtype=torch.float64))
    # the estimator's standard error over 4000 probes is ~2.2% of the value; 4 standard errors
    assert float(est.detach().mean()) == pytest.approx(exact, rel=0.09)
    obj = Objective(CHAIN, "simple", "gp", lambda_gp=0.5, learn_sigma=False)
    x0, eps, xi, tt = _data()
    terms = obj.terms(net, x0, tt, eps, xi, probe=torch.ones_like(x0))
    torch.testing.assert_close(terms["loss"], terms["mse"] + 0.5 * terms["gp"])


def test_gradient_penalty_over_a_basis_of_probes_is_the_exact_jacobian_norm():
    # sum_k ||J^T e_k||^2 = ||J||_F^2 exactly: the estimator is exact on a complete orthonormal basis
    net = TinyNet(learn_sigma=False)
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([10])
    J = torch.autograd.functional.jacobian(lambda z: net(z, t), x).reshape(48, 48)
    from samplerkit.train.objective import jacobian_penalty

    xs = x.repeat(48, 1, 1, 1).requires_grad_(True)
    basis = torch.eye(48, dtype=torch.float64).reshape(48, 3, 4, 4)
    per_probe = jacobian_penalty(net(xs, t.repeat(48)), xs, basis)
    assert float(per_probe.detach().sum()) == pytest.approx(float((J**2).sum()), rel=1e-12)


def test_gradient_penalty_is_differentiable_in_the_weights():
    # Eq. 10 is a training loss: its gradient must reach the weights (double backward)
    net = TinyNet(learn_sigma=False)
    x0, eps, xi, t = _data()
    probe = torch.ones_like(x0)
    obj = Objective(CHAIN, "simple", "gp", lambda_gp=1.0, learn_sigma=False)
    obj.terms(net, x0, t, eps, xi, probe)["gp"].sum().backward()
    assert float(net.eps.weight.grad.abs().max()) > 0


def test_weight_decay_is_decoupled_by_default_and_adds_nothing_to_the_loss():
    net = TinyNet()
    wd = Objective(CHAIN, "hybrid", "wd", lambda_wd=0.03)
    assert float(wd.weight_decay(net.parameters())) == 0.0 and wd.optimizer_weight_decay() == 0.03
    x0, eps, xi, t = _data()
    plain = Objective(CHAIN, "hybrid", "none").terms(net, x0, t, eps, xi)["loss"]
    assert torch.equal(wd.terms(net, x0, t, eps, xi)["loss"], plain)
    assert Objective(CHAIN, "hybrid", "ip").optimizer_weight_decay() == 0.0


def test_weight_decay_loss_form_is_lambda_times_squared_norm():
    """Ning et al. 2023, Eq. 11 taken literally, behind wd_form='loss'."""
    net = TinyNet()
    expected = 0.03 * sum(float((p.detach() ** 2).sum()) for p in net.parameters())
    literal = Objective(CHAIN, "hybrid", "wd", wd_form="loss")
    assert float(literal.weight_decay(net.parameters()).detach()) == pytest.approx(expected, rel=1e-12)
    assert literal.optimizer_weight_decay() == 0.0
    assert float(Objective(CHAIN, "hybrid", "ip", wd_form="loss").weight_decay(net.parameters())) == 0.0


def test_importance_sampler_is_uniform_until_full_then_follows_sqrt_mean_square():
    s = ImportanceSampler(4, history=2, uniform_prob=0.0)
    s.update(np.array([0, 1, 2, 3, 0, 1, 2]), np.array([1.0, 2, 3, 4, 1, 2, 3]))
    assert np.allclose(s.probabilities(), 0.25)
    s.update(np.array([3]), np.array([4.0]))
    w = np.sqrt(np.array([1.0, 4, 9, 16]))
    assert np.allclose(s.probabilities(), w / w.sum())
    t, weights = s.sample(np.array([0.0, 0.999]))
    assert t.tolist() == [0, 3] and np.allclose(weights, 1 / (4 * (w / w.sum())[[0, 3]]))
    s.update(np.array([0]), np.array([5.0]))  # history rolls: t=0 now holds [1, 5]
    assert s.values[0].tolist() == [1.0, 5.0]


def test_bad_objective_settings_raise_our_error():
    with pytest.raises(SamplerkitError):
        Objective(CHAIN, "hybrid", "dropout")
    with pytest.raises(SamplerkitError):
        Objective(CHAIN, "hybrid", "ip", learn_sigma=False)
    with pytest.raises(SamplerkitError):
        Objective(CHAIN, "simple", "ip", gamma=-0.1, learn_sigma=False)
    with pytest.raises(SamplerkitError, match="weight-decay form"):
        Objective(CHAIN, "hybrid", "wd", wd_form="coupled")
