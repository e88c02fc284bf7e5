"""Guidance by a second network (``sk.guidance.guided``) on closed-form denoisers: the lerp form,
the guidance interval (per evaluation, vs the reference code's per-step rule), every sampler,
composition with Epsilon Scaling and classifier guidance, and bad input.

Bit-exactness against EDM2's ``edm_sampler`` on EDM2 networks is in ``test_adapter_edm2.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
from samplerkit.adapters.analytic import GaussianDenoiser
from test_guidance import MixtureClassifier, mixture

import samplerkit as sk
from samplerkit.errors import SamplerkitError


def gaussians(label_dim: int = 0):
    net, gnet = GaussianDenoiser(0.3, 0.5, img_resolution=4), GaussianDenoiser(-0.1, 0.8, img_resolution=4)
    net.label_dim = label_dim
    return net, gnet


class Recording(torch.nn.Module):
    """Passes calls to ``net`` and records the sigma of each (a float per call)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.sigmas = net, []
        for key in ("img_resolution", "img_channels", "label_dim"):
            setattr(self, key, getattr(net, key))

    def forward(self, x, sigma, class_labels=None):
        self.sigmas.append(float(torch.as_tensor(sigma).flatten()[0]))
        return self.net(x, sigma, class_labels)


def test_guided_is_the_lerp_of_the_two_denoisers():
    net, gnet = gaussians()
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    D, D_g = net(x, sigma), gnet(x, sigma)
    for w in (0.0, 0.5, 2.5):
        out = sk.guidance.guided(net, gnet, w)(x, sigma)
        assert torch.equal(out, D_g.lerp(D, w))  # EDM2's form exactly
        assert (out - (D_g + w * (D - D_g))).abs().max() <= 1e-14


def test_weight_one_returns_net_output_and_never_calls_gnet():
    net, gnet = gaussians()
    rec = Recording(gnet)
    g = sk.guidance.guided(net, rec, 1.0)
    latents = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    sigmas = sk.schedules.edm(5)
    assert torch.equal(sk.samplers.heun(g, latents, sigmas), sk.samplers.heun(net, latents, sigmas))
    assert rec.sigmas == [] and g.evaluations == {"net": 9, "gnet": 0}


def test_interval_guides_only_evaluations_in_the_half_open_range():
    net, gnet = gaussians()
    rec = Recording(gnet)
    g = sk.guidance.guided(net, rec, 2.0, interval=(0.5, 2.0))
    x = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    for s in (0.4, 0.5, 0.5000001, 1.0, 2.0, 2.0000001, 30.0):
        out = g(x, torch.tensor([s], dtype=torch.float64))
        inside = 0.5 < s <= 2.0
        expected = gnet(x, s).lerp(net(x, s), 2.0) if inside else net(x, s)
        assert torch.equal(out.double(), expected.double()), s
    assert rec.sigmas == [0.5000001, 1.0, 2.0]


def test_interval_decides_per_sample_when_sigmas_differ_in_a_batch():
    net, gnet = gaussians()
    g = sk.guidance.guided(net, gnet, 3.0, interval=(0.5, 2.0))
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.2, 1.0, 5.0], dtype=torch.float64)
    out = g(x, sigma)
    full = sk.guidance.guided(net, gnet, 3.0)(x, sigma)
    assert torch.equal(out[1], full[1])
    assert torch.equal(out[[0, 2]], net(x, sigma)[[0, 2]].double())


def step_index_heun(net, gnet, w, latents, sigmas, i0, i1):
    """Heun with kynkaat/guidance-interval's rule: step i guides both its evaluations when i0 <= i <= i1.
    Returns the samples and the list of (step, 'euler'|'correction') evaluations that were guided."""
    guided = []
    x_next = latents.double() * sigmas[0]
    n = len(sigmas) - 1
    for i in range(n):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        on = i0 <= i <= i1

        def denoise(x, t, on=on):
            D = net(x, t).double()
            return gnet(x, t).double().lerp(D, w) if on else D

        x_hat = x_next
        d_cur = (x_hat - denoise(x_hat, t_cur)) / t_cur
        guided += [(i, "euler")] if on else []
        x_next = x_hat + (t_next - t_cur) * d_cur
        if i < n - 1:
            d_prime = (x_next - denoise(x_next, t_next)) / t_next
            guided += [(i, "correction")] if on else []
            x_next = x_hat + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next, guided


def test_per_evaluation_interval_differs_from_the_step_index_rule_at_the_edges():
    """sigma_hi = sigma_{i0}, sigma_lo = sigma_{i1+1}: the Euler evaluations guided are the same steps
    i0..i1 under both rules; the 2nd-order evaluations differ at the two edges."""
    net, gnet = gaussians()
    sigmas = sk.schedules.edm(8)
    i0, i1 = 2, 4
    latents = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    rec = Recording(gnet)
    g = sk.guidance.guided(net, rec, 2.0, interval=(float(sigmas[i1 + 1]), float(sigmas[i0])))
    x_paper = sk.samplers.heun(g, latents, sigmas)
    # each evaluation of heun: step i's Euler at sigma_i, its correction at sigma_{i+1} (i < N-1)
    evaluations = [(i, kind, float(sigmas[i + (kind == "correction")])) for i in range(8)
                   for kind in ("euler", "correction") if kind == "euler" or i < 7]
    guided_paper = [(i, kind) for i, kind, s in evaluations if s in rec.sigmas]
    assert len(rec.sigmas) == len(guided_paper) == 6
    x_steps, guided_steps = step_index_heun(net, gnet, 2.0, latents, sigmas, i0, i1)
    assert [e for e in guided_paper if e not in guided_steps] == [(i0 - 1, "correction")]
    assert [e for e in guided_steps if e not in guided_paper] == [(i1, "correction")]
    assert [e for e in guided_paper if e[1] == "euler"] == [e for e in guided_steps if e[1] == "euler"]
    assert (x_paper - x_steps).abs().max() > 1e-4  # the two rules give different samples
    # guiding every step, the reference rule and guided() agree to float64 rounding
    x_all, _ = step_index_heun(net, gnet, 2.0, latents, sigmas, 0, 7)
    assert (sk.samplers.heun(sk.guidance.guided(net, gnet, 2.0), latents, sigmas) - x_all).abs().max() <= 1e-12


def test_guided_runs_on_every_sampler_and_changes_its_result():
    net, gnet = gaussians()
    g = sk.guidance.guided(net, gnet, 2.0)
    latents = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    sigmas = sk.schedules.edm(4, sigma_min=0.01, sigma_max=10.0)
    for name, row in sk.samplers.SAMPLERS.items():
        if name in sk.samplers.FLOW_SAMPLERS:  # SiT's samplers: flow models only (tests/test_sit_samplers.py)
            continue
        x, x0 = row.fn(g, latents, sigmas), row.fn(net, latents, sigmas)
        assert torch.isfinite(x).all() and (x - x0).abs().max() > 1e-3, name


def discrete(mean, std, learned_variance=True):
    gauss = GaussianDenoiser(mean, std, img_resolution=4)
    alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 100, dtype=torch.float64), 0)

    def eps_fn(x_t, t, class_labels=None):
        eps = gauss.eps(x_t, alphas_cumprod[t].reshape(-1, 1, 1, 1)).to(torch.float32)
        return torch.cat([eps, torch.full_like(eps, 0.25)], 1) if learned_variance else eps

    return sk.DiscreteEpsDenoiser(eps_fn, alphas_cumprod, learned_variance=learned_variance)


def test_guided_keeps_the_discrete_interface_of_net():
    net, gnet = discrete(0.3, 0.5), discrete(-0.1, 0.8, learned_variance=False)
    g = sk.guidance.guided(net, gnet, 1.5)
    assert g.learned_variance and torch.equal(g.training_alpha_bar(), net.training_alpha_bar())
    assert torch.equal(g.round_sigma(torch.tensor([0.37, 2.0])), net.round_sigma(torch.tensor([0.37, 2.0])))
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    s = net.round_sigma(torch.tensor(1.0))
    (D, v), (D_net, v_net) = g.denoise_with_variance(x, s), net.denoise_with_variance(x, s)
    assert torch.equal(v, v_net) and torch.equal(D, gnet(x, s).double().lerp(D_net.double(), 1.5))
    steps = sk.schedules.respace(100, "10")
    for sampler in (sk.samplers.ddim, sk.samplers.ancestral):
        guided_x, plain_x = sampler(g, x, steps), sampler(net, x, steps)
        assert torch.isfinite(guided_x).all() and (guided_x - plain_x).abs().max() > 1e-3


def test_composes_with_eps_scaling_both_ways():
    net, gnet = gaussians()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    sigma = torch.tensor([0.5, 2.0], dtype=torch.float64)
    D_w = sk.guidance.guided(net, gnet, 2.0)(x, sigma)
    outer = sk.remedies.eps_scaling(sk.guidance.guided(net, gnet, 2.0), b=1.01)(x, sigma)
    assert (outer - (x - (x - D_w) / 1.01)).abs().max() <= 1e-12
    inner = sk.guidance.guided(sk.remedies.eps_scaling(net, b=1.01), gnet, 2.0)(x, sigma)
    D_es = x - (x - net(x, sigma)) / 1.01
    assert (inner - gnet(x, sigma).lerp(D_es, 2.0)).abs().max() <= 1e-12


def test_composes_with_classifier_guidance():
    m, m_g = mixture(conditional=True), mixture()
    x = torch.randn(3, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    k, sigma = torch.tensor([0, 1, 2]), torch.tensor([0.3, 1.0, 4.0], dtype=torch.float64)
    g = sk.guidance.guided(m, m_g, 1.5)  # classifier-free with a separate unconditional network
    cg = sk.guidance.classifier_guided(g, MixtureClassifier(m_g), scale=0.5)
    shift = cg(x, sigma, k) - g(x, sigma, k)
    alone = sk.guidance.classifier_guided(m_g, MixtureClassifier(m_g), scale=0.5)
    assert (shift - (alone(x, sigma, k) - m_g(x, sigma))).abs().max() <= 1e-10


def test_guided_records_both_networks_and_decodes_through_net():
    net, gnet = gaussians()
    gnet.name, gnet.sha256 = "edm2-img64-xs-0134217-0.110", "ab" * 32
    g = sk.guidance.guided(net, gnet, 1.7, interval=(0.28, 2.9))
    assert g.describe() == {"weight": 1.7, "interval": [0.28, 2.9], "net": {"class": "GaussianDenoiser"},
                            "gnet": {"class": "GaussianDenoiser", "name": "edm2-img64-xs-0134217-0.110",
                                     "sha256": "ab" * 32}}
    assert g.gnet is gnet and g.inner is net
    net.autoencoder = sk.autoencoders.RGBIdentity()
    x = torch.rand(1, 3, 4, 4) * 2 - 1
    assert torch.equal(sk.decode(g, x), sk.autoencoders.RGBIdentity().decode(x))


# ---------------------------------------------------------------------------------------------
# bad input: one line each


@pytest.mark.parametrize("make_gnet, message", [
    (lambda: GaussianDenoiser(0.0, 1.0, img_resolution=8), "img_resolution 8 but the model has 4"),
    (lambda: GaussianDenoiser(0.0, 1.0, img_channels=4, img_resolution=4), "img_channels 4 but the model has 3"),
])
def test_a_guiding_network_of_another_shape_is_refused(make_gnet, message):
    net, _ = gaussians()
    with pytest.raises(SamplerkitError, match=message) as err:
        sk.guidance.guided(net, make_gnet(), 2.0)
    assert "\n" not in str(err.value)


def test_a_guiding_network_of_another_label_space_is_refused():
    net, gnet = gaussians(label_dim=10)
    gnet.label_dim = 1000
    with pytest.raises(SamplerkitError, match="label_dim 1000 but the model has 10"):
        sk.guidance.guided(net, gnet, 2.0)
    gnet.label_dim = 0  # an unconditional guide (classifier-free guidance) is fine
    sk.guidance.guided(net, gnet, 2.0)


@pytest.mark.parametrize("weight", [-0.5, math.nan, math.inf, "two"])
def test_a_negative_or_non_finite_weight_is_refused(weight):
    net, gnet = gaussians()
    with pytest.raises(SamplerkitError, match="guidance weight must be a") as err:
        sk.guidance.guided(net, gnet, weight)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("interval", [(2.0, 0.5), (1.0, 1.0), (-0.1, 1.0), (0.5,), "0.5,2", (0.5, math.nan)])
def test_an_empty_reversed_or_malformed_interval_is_refused(interval):
    net, gnet = gaussians()
    with pytest.raises(SamplerkitError, match="guidance interval") as err:
        sk.guidance.guided(net, gnet, 2.0, interval=interval)
    assert "\n" not in str(err.value)
