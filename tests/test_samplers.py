"""Samplers against exact answers: closed-form ODE solutions, convergence orders, algorithm identities."""

import math

import numpy as np
import pytest
import torch
from samplerkit.adapters.analytic import FiniteSetDenoiser, GaussianDenoiser

import samplerkit as sk
from samplerkit import diffusion, samplers, schedules
from samplerkit.denoisers import CallCounter
from samplerkit.errors import SamplerkitError
from samplerkit.seeds import StackedRandomGenerator


@pytest.fixture(scope="module")
def gauss():
    return GaussianDenoiser(0.1, 0.5, img_channels=3, img_resolution=4)


def _latents(n=4, c=3, r=4, seed=0):
    return torch.randn(n, c, r, r, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _ode_error(net, sampler, N, **kw):
    lat = _latents()
    sigmas = schedules.edm(N)
    exact = net.ode_solution(lat * sigmas[0], float(sigmas[0]), 0.0)
    return float((sampler(net, lat, sigmas, **kw) - exact).abs().max())


def _order(net, sampler, Ns, **kw):
    errs = [_ode_error(net, sampler, N, **kw) for N in Ns]
    return -np.polyfit(np.log(Ns), np.log(errs), 1)[0]


def test_euler_converges_at_order_one(gauss):
    assert 0.9 <= _order(gauss, samplers.euler, [32, 64, 128, 256]) <= 1.1


def test_heun_converges_at_order_two(gauss):
    assert 1.8 <= _order(gauss, samplers.heun, [32, 64, 128, 256]) <= 2.3


@pytest.mark.parametrize("N", [16, 32, 64])
def test_heun_beats_euler_at_equal_nfe(gauss, N):
    assert _ode_error(gauss, samplers.heun, N) < _ode_error(gauss, samplers.euler, 2 * N)


@pytest.mark.parametrize("schedule,scaling", [("vp", "vp"), ("ve", "none"), ("linear", "vp"), ("vp", "none")])
def test_general_sigma_and_scaling_solve_the_same_ode(gauss, schedule, scaling):
    """Alg. 1 with any sigma(t), s(t) converges to the exact solution at 2nd order."""
    assert 1.8 <= _order(gauss, samplers.heun, [32, 64, 128, 256], schedule=schedule, scaling=scaling) <= 2.3


def test_stochastic_without_churn_equals_heun_exactly(gauss):
    lat, sigmas = _latents(), schedules.edm(12)
    assert torch.equal(samplers.stochastic(gauss, lat, sigmas), samplers.heun(gauss, lat, sigmas))


def test_stochastic_churn_follows_alg2_gamma_and_noise():
    """Every step adds sqrt(t_hat^2 - t^2) S_noise eps with gamma = min(S_churn/N, sqrt2 - 1)."""
    calls = []

    class Zero(sk.Denoiser):
        img_channels, img_resolution = 1, 1

        def forward(self, x, sigma, class_labels=None):
            calls.append(float(torch.as_tensor(sigma).flatten()[0]))
            return torch.zeros_like(x, dtype=torch.float64)

    sigmas = torch.tensor([10.0, 1.0, 0.0], dtype=torch.float64)
    ones = lambda x: torch.ones_like(x)  # noqa: E731
    samplers.stochastic(Zero(), torch.zeros(1, 1, 1, 1), sigmas, S_churn=0.4, S_noise=1.5, randn_like=ones)
    gamma = min(0.4 / 2, math.sqrt(2) - 1)
    assert calls[0] == pytest.approx(10 * (1 + gamma))  # t_hat of step 0
    assert calls[2] == pytest.approx(1 * (1 + gamma))  # step 1 (after the Heun correction call)
    # S_min / S_max restrict the churn to a band of sigma
    calls.clear()
    samplers.stochastic(Zero(), torch.zeros(1, 1, 1, 1), sigmas, S_churn=0.4, S_min=2, S_max=50, randn_like=ones)
    assert calls[0] == pytest.approx(10 * (1 + gamma)) and calls[2] == pytest.approx(1.0)


def test_ddim_eta0_equals_euler_on_the_same_grid(gauss):
    sigmas = schedules.edm(10)
    lat = _latents()
    x_euler = samplers.euler(gauss, lat, sigmas)
    x_T = lat * sigmas[0] / (1 + sigmas[0] ** 2).sqrt()  # the same start point in x_t-space
    x_ddim = samplers.ddim(gauss, x_T, sigmas, clip_denoised=False)
    torch.testing.assert_close(x_ddim, x_euler, rtol=0, atol=1e-12)


def _linear_gaussian_moments(chain, mean, var, variance):
    """Exact output mean / variance of ancestral sampling on N(mean, var) data: every step is
    affine in x_t plus Gaussian noise, so the moments follow a closed recursion."""
    m, v = 0.0, 1.0  # x_T ~ N(0, 1)
    for k in reversed(range(len(chain))):
        ab = float(chain.alpha_bar[k])
        # x0_hat = E[y | x_t] = a x_t + b with the Gaussian posterior
        a = math.sqrt(ab) * var / (ab * var + 1 - ab)
        b = mean * (1 - ab) / (ab * var + 1 - ab)
        c1, c2 = float(chain.posterior_mean_coef1[k]), float(chain.posterior_mean_coef2[k])
        m, v = (c1 * a + c2) * m + c1 * b, (c1 * a + c2) ** 2 * v
        if k > 0:
            v += math.exp(float(chain.log_variance(k, variance)))
    return m, v


@pytest.mark.parametrize("variance,spacing", [("fixedsmall", "50"), ("fixedlarge", "50"), ("fixedlarge", "1000")])
def test_ancestral_output_moments_match_closed_form(variance, spacing):
    mean, std = 0.2, 0.3
    net = GaussianDenoiser(mean, std, img_channels=1, img_resolution=16)
    steps = schedules.respace(1000, spacing)
    ab = torch.tensor(diffusion.alpha_bar_from_betas(diffusion.linear_betas(1000)))
    chain = diffusion.Chain.from_alpha_bar(ab[steps])
    m, v = _linear_gaussian_moments(chain, mean, std**2, variance)
    n = 256 * 16 * 16
    lat = torch.randn(256, 1, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    noise = lambda x: torch.randn(x.shape, generator=gen, dtype=x.dtype)  # noqa: E731
    sigmas = torch.cat([((1 - ab[steps]) / ab[steps]).sqrt().flip(0), torch.zeros(1, dtype=torch.float64)])
    x = samplers.ancestral(net, lat, sigmas, variance=variance, randn_like=noise, clip_denoised=False)
    # 5-sigma tolerances of the sample mean and variance (n i.i.d. draws)
    assert abs(float(x.mean()) - m) < 5 * math.sqrt(v / n)
    assert abs(float(x.var()) - v) < 5 * v * math.sqrt(2 / (n - 1))
    if spacing == "1000":  # the full DDPM chain reproduces the data distribution closely
        assert abs(m - mean) < 0.01 and abs(math.sqrt(v) - std) < 0.01


def _gaussian_eps_model(T=50, learned=False):
    """The exact Gaussian denoiser seen as a discrete eps-model on a T-step linear schedule."""
    g = GaussianDenoiser(0.1, 0.4, img_channels=1, img_resolution=4)
    ab = torch.tensor(diffusion.alpha_bar_from_betas(diffusion.linear_betas(T)))

    def eps_fn(x_t, t, labels):
        e = g.eps(x_t.double(), ab[t])
        return torch.cat([e, torch.full_like(e, 0.25)], 1) if learned else e

    return sk.DiscreteEpsDenoiser(eps_fn, ab, learned_variance=learned, img_channels=1, img_resolution=4,
                                  dtype=torch.float64), ab


def test_ancestral_full_chain_is_ddpm_algorithm_2():
    """respace(T, 'T') reproduces DDPM (Ho et al. 2020, Alg. 2) step by step with sigma_t^2 = beta_t."""
    net, ab = _gaussian_eps_model()
    T = ab.numel()
    betas = 1 - ab / torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    lat = _latents(2, 1, 4, seed=3)
    zs = [torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(10 + i), dtype=torch.float64)
          for i in range(T)]
    it = iter(zs)
    x = samplers.ancestral(net, lat, schedules.respace(T, str(T)), variance="fixedlarge",
                           randn_like=lambda x: next(it), clip_denoised=False)
    ref = lat.clone()
    for i, t in enumerate(reversed(range(T))):
        eps = net.eps(ref, torch.full((2,), t))[0]
        ref = (ref - betas[t] / (1 - ab[t]).sqrt() * eps) / (1 - betas[t]).sqrt()
        if t > 0:
            ref = ref + betas[t].sqrt() * zs[i]  # sigma_t^2 = beta_t
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-10)


def test_ancestral_learned_variance_uses_the_models_v():
    net, ab = _gaussian_eps_model(learned=True)
    chain = diffusion.Chain.from_alpha_bar(ab)
    ones = lambda x: torch.ones_like(x)  # noqa: E731
    lat = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    x_learned = samplers.ancestral(net, lat, schedules.respace(50, "2"), variance="learned", randn_like=ones,
                                   clip_denoised=False)
    x_small = samplers.ancestral(net, lat, schedules.respace(50, "2"), variance="fixedsmall", randn_like=ones,
                                 clip_denoised=False)
    sub = diffusion.Chain.from_alpha_bar(ab[[0, 49]])
    frac = (0.25 + 1) / 2
    log_beta_tilde = float(sub.posterior_log_variance_clipped[1])
    std_learned = math.exp(0.5 * (frac * math.log(sub.betas[1]) + (1 - frac) * log_beta_tilde))
    std_small = math.exp(0.5 * float(sub.posterior_log_variance_clipped[1]))
    # the runs differ only in the noise scale of step 1; step 0 returns x0_hat = E[y | x_t], which is
    # affine in x_t with slope sqrt(abar) var / (abar var + 1 - abar) for Gaussian data
    ab0, var = float(ab[0]), 0.4**2
    slope = math.sqrt(ab0) * var / (ab0 * var + 1 - ab0)
    diff = (x_learned - x_small).flatten()
    torch.testing.assert_close(diff, torch.full_like(diff, slope * (std_learned - std_small)), rtol=1e-9, atol=0)
    assert len(chain) == 50


def test_per_seed_determinism_across_batch_sizes():
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    net = FiniteSetDenoiser(images)
    sigmas = schedules.edm(6)
    seeds = list(range(8))

    def run(batch, sampler):
        out = []
        for i in range(0, 8, batch):
            rnd = StackedRandomGenerator("cpu", seeds[i:i + batch])
            lat = rnd.randn([len(seeds[i:i + batch]), 3, 8, 8])
            out.append(sampler(net, lat, sigmas, randn_like=rnd.randn_like))
        return torch.cat(out)

    for sampler in (lambda *a, **k: samplers.stochastic(*a, S_churn=10, **k), samplers.ancestral, samplers.ddim):
        ref = run(8, sampler)
        assert torch.equal(run(1, sampler), ref) and torch.equal(run(3, sampler), ref)


def test_nfe_counts():
    assert samplers.nfe("heun", 18) == 35 and samplers.nfe("euler", 18) == 18
    assert samplers.nfe("stochastic", 256) == 511 and samplers.nfe("ddim", 50) == 50


@pytest.mark.parametrize("call", [
    lambda net: samplers.ddim(net, _latents(), schedules.edm(4), eta=-0.1),
    lambda net: samplers.euler(net, _latents(), torch.tensor([1.0, 2.0, 0.0])),
    lambda net: samplers.heun(net, _latents(), torch.tensor([1.0, 0.5])),
    lambda net: samplers.heun(net, _latents(), schedules.edm(4), schedule="cosine"),
    lambda net: samplers.stochastic(net, _latents(), schedules.edm(4), S_churn=-1),
    lambda net: samplers.ancestral(net, _latents(), schedules.edm(4), variance="learned"),
    lambda net: samplers.nfe("plms", 10),
])
def test_bad_sampler_arguments_raise_our_error(gauss, call):
    with pytest.raises(SamplerkitError):
        call(gauss)


# ---------------------------------------------------------------------------------------------
# every sampler: NFE, callback, integer step counts, knob checks

Counting = CallCounter  # counts network calls (one per batch call, either entry point)


def _noise(seed=5):
    g = torch.Generator().manual_seed(seed)
    return lambda x: torch.randn(x.shape, generator=g, dtype=x.dtype)


# dpm_fast and dpm_adaptive use only the grid's end points (steps >= 2); dpm_adaptive's NFE is set
# by its error control. Both are checked against k-diffusion in test_solvers_kdiffusion.py.
# SiT's samplers run only on flow models and are tested in test_sit_samplers.py
PER_LEVEL = [name for name in samplers.SAMPLERS if name not in ("dpm_fast", "dpm_adaptive", *samplers.FLOW_SAMPLERS)]


@pytest.mark.parametrize("name", [n for n in samplers.SAMPLERS if n not in ("dpm_adaptive", *samplers.FLOW_SAMPLERS)])
@pytest.mark.parametrize("discrete", [False, True])
def test_recorded_nfe_is_the_real_number_of_network_calls(name, discrete):
    from samplerkit.generate import make_sampler

    inner = _gaussian_eps_model(T=200)[0] if discrete else GaussianDenoiser(0.1, 0.5, img_channels=1, img_resolution=4)
    net = Counting(inner)
    for steps in (1, 2, 7) if name in PER_LEVEL else (2, 7):
        prepared = make_sampler(net, name, steps)
        net.calls = 0
        prepared.run(_latents(2, 1, 4), None, _noise())
        assert net.calls == prepared.nfe == samplers.nfe(name, prepared.steps), (name, steps)


@pytest.mark.parametrize("name", PER_LEVEL)
def test_callback_reports_each_step_with_its_denoised_estimate(name):
    net = GaussianDenoiser(0.1, 0.5, img_channels=1, img_resolution=4)
    sigmas = schedules.edm(5)
    log = []
    kw = {"randn_like": _noise()} if samplers.SAMPLERS[name].stochastic else {}
    if samplers.SAMPLERS[name].grid == "chain":
        kw["clip_denoised"] = False
    out = getattr(samplers, name)(net, _latents(2, 1, 4), sigmas, callback=log.append, **kw)
    assert [e["i"] for e in log] == list(range(5))
    assert {"i", "x", "sigma", "sigma_hat", "denoised"} <= set(log[0])
    for e in log:
        x = e["x"]
        if samplers.SAMPLERS[name].grid == "chain":  # x_t-space: x_sigma = x_t sqrt(1 + sigma^2)
            x = x * (1 + e["sigma"] ** 2).sqrt()
        torch.testing.assert_close(e["denoised"], net(x, e["sigma_hat"]), rtol=1e-12, atol=1e-12)
    assert float(log[0]["sigma"]) == pytest.approx(80.0) and out.shape == log[0]["x"].shape


class _Constant(sk.Denoiser):
    img_channels, img_resolution = 1, 2

    def forward(self, x, sigma, class_labels=None):
        return torch.full_like(x, 5.0, dtype=torch.float64)


@pytest.mark.parametrize("name", ["euler", "heun", "stochastic", "dpmpp_2m", "unipc"])
def test_clip_denoised_clamps_D_to_the_data_range(name):
    """D = 5 everywhere: every solver ends at the last data prediction, 5, or 1 when clipped."""
    fn, lat, sigmas = getattr(samplers, name), torch.zeros(1, 1, 2, 2), schedules.edm(4)
    torch.testing.assert_close(fn(_Constant(), lat, sigmas), torch.full((1, 1, 2, 2), 5.0, dtype=torch.float64))
    torch.testing.assert_close(fn(_Constant(), lat, sigmas, clip_denoised=True),
                               torch.ones(1, 1, 2, 2, dtype=torch.float64))
    assert samplers.knobs(fn)["clip_denoised"] is False


def test_an_int_is_a_number_of_respaced_steps_for_ddim_and_ancestral():
    """Issue: ddim(net, lat, 20) used to run a one-step chain at timestep 20."""
    net, ab = _gaussian_eps_model(T=200)
    counting = Counting(net)
    lat = _latents(2, 1, 4, seed=7)
    x = samplers.ddim(counting, lat, 20)
    assert counting.calls == 20
    torch.testing.assert_close(x, samplers.ddim(net, lat, schedules.respace(200, "20")), rtol=0, atol=0)
    x = samplers.ancestral(net, lat, 10, randn_like=_noise())
    torch.testing.assert_close(x, samplers.ancestral(net, lat, schedules.respace(200, "10"), randn_like=_noise()),
                               rtol=0, atol=0)
    with pytest.raises(SamplerkitError):
        samplers.ddim(net, lat, 201)  # more steps than the model was trained with


@pytest.mark.parametrize("name", ["euler", "heun", "stochastic", "ddim", "dpmpp_2m", "unipc"])
def test_an_int_is_edms_grid_over_the_models_range(name):
    net = GaussianDenoiser(0.1, 0.5, img_channels=1, img_resolution=4)
    fn, lat = getattr(samplers, name), _latents(2, 1, 4)
    grid = schedules.for_model(6, net)
    assert torch.equal(grid, schedules.edm(6, 0.002, 80.0))
    torch.testing.assert_close(fn(net, lat, 6), fn(net, lat, grid), rtol=0, atol=0)
    with pytest.raises(SamplerkitError):
        fn(net, lat, 0)


@pytest.mark.parametrize("name,options,flag", [
    ("euler_ancestral", {"eta": -0.5}, "eta"),
    ("dpm_2_ancestral", {"eta": 1.5}, "eta"),
    ("dpmpp_2m_sde", {"s_noise": -1.0}, "s_noise"),
    ("dpmpp_2m_sde", {"solver_type": "rk4"}, "solver_type"),
    ("dpmpp_3m_sde", {"eta": -1.0}, "eta"),
    ("lms", {"order": 5}, "order"),
    ("ipndm", {"order": 0}, "order"),
    ("unipc", {"order": 4}, "order"),
    ("unipc", {"variant": "bh3"}, "variant"),
    ("stochastic", {"S_churn": -1.0}, "S_churn"),
])
def test_bad_knobs_fail_before_the_run_with_one_line(name, options, flag):
    from samplerkit.generate import make_sampler

    net = Counting(GaussianDenoiser(0.1, 0.5, img_channels=1, img_resolution=4))
    with pytest.raises(SamplerkitError, match=flag) as err:
        make_sampler(net, name, 4, **options)
    assert "\n" not in str(err.value) and net.calls == 0
    with pytest.raises(SamplerkitError, match=flag):  # the sampler itself checks too
        getattr(samplers, name)(net, _latents(1, 1, 4), schedules.edm(3), **options)
