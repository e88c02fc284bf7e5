"""Exposure-bias remedies: Epsilon Scaling (Ning et al. 2024 (ES)) and the Time-Shift sampler
(Li et al. 2024 (TS)).

The reference loops below are re-implementations, written for these tests from reading the
authors' code, of forever208/ADM-ES (``p_sample_loop`` / ``ddim_sample_loop`` with
``eps_scaler``: ``_predict_xstart_from_eps`` divides eps by ``sampling_scaler[i]``, i the respaced
index), forever208/EDM-ES (``edm_sampler`` / ``ablation_sampler`` with ``eps_scaler``) and
tingyu215/TS-DPM-ADM (``ddim_sample_loop_progressive`` + ``ddim_sample`` +
``get_next_time_window``). They drive the raw network of a random-weight guided-diffusion
checkpoint (built as in test_adapter_adm.py) in float64 arithmetic and take the same noise.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from samplerkit.adapters.analytic import GaussianDenoiser
from test_adapter_adm import ADM_CONFIGS, save_checkpoint
from test_fid import assert_one_line_error, run_cli

import samplerkit as sk
from samplerkit import diffusion, exposure, remedies, samplers, schedules
from samplerkit.errors import SamplerkitError
from samplerkit.generate import make_sampler

# the DDPM-IP CIFAR-10 ADM topology (learned sigma, cosine, T = 1000) with one res block per level, for speed
CFG = {**ADM_CONFIGS["ddpm-ip-cifar10"], "num_res_blocks": 1}


@pytest.fixture(scope="module")
def adm(tmp_path_factory):
    path, _ = save_checkpoint(tmp_path_factory.mktemp("adm"), CFG)
    return sk.load(path, family="adm", **CFG).eval()


def _normal(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _noise(n_steps, shape=(2, 3, 32, 32), seed=100):
    return [_normal(shape, seed + i) for i in range(n_steps)]


def _feeder(zs):
    it = iter(zs)
    return lambda x: next(it)


def _raw_eps(net, x_t, t):
    """The raw network output (eps, v) at training timestep t (int) for x_t in x_t-space."""
    with torch.no_grad():
        return net.eps(x_t, torch.full((x_t.shape[0],), int(t), dtype=torch.int64))


# ---------------------------------------------------------------------------------------------
# reference loops


def adm_es_loop(net, x_T, timesteps, scaler, *, ddim, clip, zs, eta=0.0):
    """ADM-ES on guided-diffusion's SpacedDiffusion: respaced betas, learned range variance, x0
    from eps / scaler[i] (i = respaced index), clip, then p_sample or ddim_sample (Eq. 12 with eps
    re-derived from the clipped x0)."""
    full = net.training_alpha_bar().numpy()
    ab = full[np.asarray(timesteps)]
    ab_prev = np.append(1.0, ab[:-1])
    betas = 1 - ab / ab_prev
    post_var = betas * (1 - ab_prev) / (1 - ab)
    post_log = np.log(np.append(post_var[1], post_var[1:]))
    coef1, coef2 = betas * np.sqrt(ab_prev) / (1 - ab), (1 - ab_prev) * np.sqrt(1 - betas) / (1 - ab)
    x = x_T.clone()
    for j, i in enumerate(reversed(range(len(ab)))):
        eps, v = _raw_eps(net, x, timesteps[i])
        x0 = math.sqrt(1 / ab[i]) * x - math.sqrt(1 / ab[i] - 1) * (eps / scaler[i])
        if clip:
            x0 = x0.clamp(-1, 1)
        if ddim:
            eps = (math.sqrt(1 / ab[i]) * x - x0) / math.sqrt(1 / ab[i] - 1)
            s = eta * math.sqrt((1 - ab_prev[i]) / (1 - ab[i])) * math.sqrt(1 - ab[i] / ab_prev[i])
            x = x0 * math.sqrt(ab_prev[i]) + math.sqrt(1 - ab_prev[i] - s**2) * eps + (i != 0) * s * zs[j]
        else:
            frac = (v + 1) / 2
            log_var = frac * math.log(betas[i]) + (1 - frac) * post_log[i]
            x = coef1[i] * x0 + coef2[i] * x + (i != 0) * torch.exp(0.5 * log_var) * zs[j]
    return x


def edm_es_sampler(net, latents, sigmas, eps_scaler, *, S_churn=0.0, S_noise=1.0, zs=None, solver="heun",
                   scale_correction=True):
    """EDM-ES's edm_sampler (Alg. 2 with eps = (x_hat - D) / t_hat divided by eps_scaler at the
    Euler and the correction step); solver='euler' is its ablation_sampler with the linear
    schedule and no scaling (which scales only the Euler step's eps)."""
    t_steps = sigmas
    N = len(t_steps) - 1

    def scaled(x, t):
        D = net(x, t).to(torch.float64)
        return x - ((x - D) / t / eps_scaler) * t

    x_next = latents * t_steps[0]
    noise = iter(zs or [])
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:], strict=True)):
        x_cur = x_next
        gamma = min(S_churn / N, math.sqrt(2) - 1)
        t_hat = net.round_sigma(t_cur + gamma * t_cur).to(torch.float64)
        x_hat = x_cur + (t_hat**2 - t_cur**2).sqrt() * S_noise * next(noise) if gamma > 0 else x_cur
        d_cur = (x_hat - scaled(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if solver == "heun" and i < N - 1:
            D = scaled(x_next, t_next) if scale_correction else net(x_next, t_next).to(torch.float64)
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * (x_next - D) / t_next)
    return x_next


def ts_dpm_adm_ddim(net, x_T, timesteps, window, cutoff, *, clip, zs, eta=0.0):
    """TS-DPM-ADM's DDIM: the network and x0 at the chain's own step; from the second step on, for
    t > cutoff, the landing level is alphas_cumprod_prev_all[next_t - T // (K - 1)] with next_t the
    argmin over flip(abar)[window around t] of (Var(x) - value)^2."""
    full = net.training_alpha_bar().numpy()
    T, K = len(full), len(timesteps)
    ab = full[np.asarray(timesteps)]
    ab_prev = np.append(1.0, ab[:-1])
    all_timesteps = torch.as_tensor(full[::-1].copy())
    prev_all = torch.as_tensor(np.append(1.0, full[:-1]))
    x, xs = x_T.clone(), [x_T]
    for j, i in enumerate(reversed(range(K))):
        cur = int(timesteps[i])
        eps, _ = _raw_eps(net, x, cur)
        x0 = math.sqrt(1 / ab[i]) * x - math.sqrt(1 / ab[i] - 1) * eps
        if clip:
            x0 = x0.clamp(-1, 1)
        eps = (math.sqrt(1 / ab[i]) * x - x0) / math.sqrt(1 / ab[i] - 1)
        a = torch.full((x.shape[0], 1, 1, 1), ab[i], dtype=torch.float64)
        a_prev = torch.full_like(a, ab_prev[i])
        if len(xs) > 1:
            shift = window // 2
            lo = cur - shift if cur - shift > 0 else 0
            cand = all_timesteps[cur - shift: cur + shift + 1] if cur - shift > 0 else all_timesteps[0: window + 1]
            var = xs[-1].reshape(x.shape[0], -1).var(dim=-1)
            n_t = ((var[:, None] - cand[None]) ** 2).argmin(dim=1) + lo
            next_t = torch.full_like(n_t, cur) if cutoff == 0 or cur <= cutoff else n_t
            if cur > cutoff:
                a_prev = prev_all[next_t - T // (K - 1)].reshape(-1, 1, 1, 1)
        s = eta * ((1 - a_prev) / (1 - a)).sqrt() * (1 - a / a_prev).sqrt()
        x = x0 * a_prev.sqrt() + (1 - a_prev - s**2).sqrt() * eps + (i != 0) * s * zs[j]
        xs.append(x)
    return x


def paper_ts_ddim(net, x_T, timesteps, window, cutoff, *, clip, eta=0.0, zs=None):
    """Li et al. 2024, Alg. 3 (DDIM): after the first step, a state at chain timestep t > cutoff is
    coupled with t_s = argmin |Var(x) - (1 - abar_tau)| over every training timestep tau with
    |tau - t| <= w/2 (both sides of t); eps and x0 at t_s, then the DDIM step to the chain's next
    level, whatever side of it t_s is on. eta > 0: DDIM's noise where t_s is above the next level
    and none elsewhere (samplerkit's rule there; Alg. 3 is deterministic)."""
    full = net.training_alpha_bar()
    T = len(full)
    ab = full[timesteps]
    x = x_T.clone()
    for j, i in enumerate(reversed(range(len(ab)))):
        cur = int(timesteps[i])
        t_s = torch.full((x.shape[0],), cur)
        if j > 0 and cur > cutoff:
            taus = torch.tensor([tau for tau in range(T) if abs(tau - cur) <= window / 2])
            var = x.flatten(1).var(dim=1)
            t_s = taus[(var[:, None] - (1 - full[taus])[None]).abs().argmin(1)]
        a = full[t_s].reshape(-1, 1, 1, 1)
        a_prev = ab[i - 1] if i > 0 else torch.tensor(1.0, dtype=torch.float64)
        with torch.no_grad():
            eps = net.eps(x, t_s)[0]
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        if clip:
            x0 = x0.clamp(-1, 1)
        eps = (x / a.sqrt() - x0) / (1 / a - 1).sqrt()
        above = (t_s > (int(timesteps[i - 1]) if i > 0 else -1)).to(torch.float64).reshape(-1, 1, 1, 1)
        s = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev) * above).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - s**2).sqrt() * eps + (s * zs[j] if i > 0 and eta else 0)
    return x


def _close(a, b, tol=2e-5):
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    scale = max(1.0, float(b.abs().max()))
    assert float((a - b).abs().max()) <= tol * scale, float((a - b).abs().max())


# ---------------------------------------------------------------------------------------------
# Epsilon Scaling against ADM-ES and EDM-ES


STEPS = schedules.respace(1000, "5")


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("b,k", [(1.0, 0.0), (1.017, 0.0), (1.005, 0.004)])
def test_eps_scaling_equals_adm_es_sampling_loops(adm, sampler, clip, b, k):
    lat, zs = _normal((2, 3, 32, 32), 1), _noise(len(STEPS))
    net = remedies.eps_scaling(adm, b, k, steps=STEPS)
    fn = samplers.ancestral if sampler == "ancestral" else samplers.ddim
    got = fn(net, lat, STEPS, randn_like=_feeder(zs), clip_denoised=clip)
    scaler = [b + k * i for i in range(len(STEPS))]  # ADM-ES's sampling_scaler[i], i the respaced index
    want = adm_es_loop(adm, lat, STEPS, scaler, ddim=sampler == "ddim", clip=clip, zs=zs)
    _close(got, want)
    if b != 1.0:  # the scaler changes the images, so the comparison above is not vacuous
        assert float((got - fn(adm, lat, STEPS, randn_like=_feeder(zs), clip_denoised=clip)).abs().max()) > 1e-3


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "heun", "stochastic", "dpmpp_2m"])
def test_eps_scaler_one_is_the_plain_sampler_bit_for_bit(adm, sampler):
    lat = _normal((2, 3, 32, 32), 2)
    grid = STEPS if samplers.info(sampler).grid == "chain" else schedules.edm(4, 0.01, 50.0)
    kw = {"randn_like": _feeder(_noise(8))} if samplers.info(sampler).stochastic else {}
    kw2 = {"randn_like": _feeder(_noise(8))} if kw else {}
    extra = {"S_churn": 5.0} if sampler == "stochastic" else {}
    fn = samplers.info(sampler).fn
    assert torch.equal(fn(remedies.eps_scaling(adm, 1.0), lat, grid, **kw, **extra), fn(adm, lat, grid, **kw2, **extra))


@pytest.mark.parametrize("b", [1.0, 1.017])
def test_heun_with_eps_scaling_equals_edm_es_edm_sampler(adm, b):
    lat, sigmas = _normal((2, 3, 32, 32), 3), samplers._grid.rounded(adm, schedules.edm(4, 0.01, 50.0))
    got = samplers.heun(remedies.eps_scaling(adm, b), lat, sigmas)
    _close(got, edm_es_sampler(adm, lat, sigmas, b))


def test_stochastic_with_eps_scaling_equals_edm_es_edm_sampler_with_churn(adm):
    lat, sigmas = _normal((2, 3, 32, 32), 4), samplers._grid.rounded(adm, schedules.edm(4, 0.01, 50.0))
    zs = _noise(4, seed=300)
    got = samplers.stochastic(remedies.eps_scaling(adm, 1.017), lat, sigmas, S_churn=2.0, randn_like=_feeder(zs))
    _close(got, edm_es_sampler(adm, lat, sigmas, 1.017, S_churn=2.0, zs=zs))


def test_euler_with_eps_scaling_equals_edm_es_ablation_sampler(adm):
    lat, sigmas = _normal((2, 3, 32, 32), 5), samplers._grid.rounded(adm, schedules.edm(4, 0.01, 50.0))
    got = samplers.euler(remedies.eps_scaling(adm, 1.017), lat, sigmas)
    _close(got, edm_es_sampler(adm, lat, sigmas, 1.017, solver="euler"))
    # EDM-ES's ablation sampler with solver='heun' scales only the Euler step's eps: not what a denoiser wrapper does
    ablation_heun = edm_es_sampler(adm, lat, sigmas, 1.017, scale_correction=False)
    assert float((samplers.heun(remedies.eps_scaling(adm, 1.017), lat, sigmas) - ablation_heun).abs().max()) > 1e-4


def test_eps_scaling_shrinks_the_exact_denoisers_eps_by_exactly_one_over_lambda():
    g = GaussianDenoiser(0.1, 0.5, img_channels=3, img_resolution=4)
    x, sigma = _normal((3, 3, 4, 4), 6) * 2, torch.tensor([0.3, 2.0, 17.0], dtype=torch.float64)
    s4 = sigma.reshape(-1, 1, 1, 1)
    for lam in (1.002, 1.017, 1.3):
        plain = ((x - g(x, sigma)) / s4).flatten(1).norm(dim=1)
        scaled = ((x - remedies.eps_scaling(g, lam)(x, sigma)) / s4).flatten(1).norm(dim=1)
        torch.testing.assert_close(scaled * lam, plain, rtol=1e-13, atol=0)


def test_slope_uses_the_step_index_of_the_chain_counted_from_the_last_step(adm):
    net = remedies.eps_scaling(adm, 1.01, 0.002, steps=STEPS)
    levels = diffusion.sigma_from_alpha_bar(adm.training_alpha_bar()[STEPS])
    torch.testing.assert_close(net.scale(levels), 1.01 + 0.002 * torch.arange(5, dtype=torch.float64),
                               rtol=0, atol=1e-15)
    mid = (levels[1] * levels[2]).sqrt()  # halfway in log sigma between t = 1 and t = 2
    assert float(net.t_of(mid)) == pytest.approx(1.5, abs=1e-12)
    assert float(net.t_of(levels[-1] * 3)) == 4.0  # above the chain: the first step's t


@pytest.mark.parametrize("b,k,steps,needle", [
    (0.0, 0.0, None, "eps_scaler must be > 0"),
    (-1.0, 0.0, None, "eps_scaler must be > 0"),
    (1.0, -0.3, STEPS, "makes lambda"),
    (1.0, 0.01, None, "needs the chain"),
])
def test_bad_eps_scaler_is_one_error(adm, b, k, steps, needle):
    with pytest.raises(SamplerkitError, match=needle):
        remedies.eps_scaling(adm, b, k, steps=steps)


# ---------------------------------------------------------------------------------------------
# Time-Shift sampler against TS-DPM-ADM


DDIM5 = schedules.respace(1000, "ddim5")  # 0, 200, ..., 800: K - 1 = 4 and T // 4 = 250, not 200


@pytest.mark.parametrize("clip", [True, False])
def test_reference_mode_equals_ts_dpm_adm_ddim(adm, clip):
    lat, zs = _normal((2, 3, 32, 32), 7), _noise(5)
    ts = remedies.TimeShift(window=80, cutoff=300, mode="reference")
    got = samplers.ddim(adm, lat, DDIM5, randn_like=_feeder(zs), clip_denoised=clip, time_shift=ts)
    _close(got, ts_dpm_adm_ddim(adm, lat, DDIM5, 80, 300, clip=clip, zs=zs))
    assert float((got - samplers.ddim(adm, lat, DDIM5, clip_denoised=clip)).abs().max()) > 1e-3


def test_reference_mode_equals_ts_dpm_adm_ddim_with_eta(adm):
    lat, zs = _normal((2, 3, 32, 32), 8), _noise(5, seed=400)
    ts = remedies.TimeShift(window=40, cutoff=300, mode="reference")
    got = samplers.ddim(adm, lat, DDIM5, eta=0.5, randn_like=_feeder(zs), time_shift=ts)
    _close(got, ts_dpm_adm_ddim(adm, lat, DDIM5, 40, 300, clip=True, zs=zs, eta=0.5))


@pytest.mark.parametrize("clip", [True, False])
def test_paper_mode_couples_each_state_with_the_level_its_variance_matches(adm, clip):
    lat = _normal((2, 3, 32, 32), 9)
    ts = remedies.TimeShift(window=160, cutoff=100)
    got = samplers.ddim(adm, lat, DDIM5, clip_denoised=clip, time_shift=ts)
    _close(got, paper_ts_ddim(adm, lat, DDIM5, 160, 100, clip=clip))


def _gaussian_eps_model(T=1000, mean=0.1, std=0.05):
    """The exact denoiser of N(mean, std^2) pixels as a discrete eps-model on T linear-schedule levels."""
    g = GaussianDenoiser(mean, std, img_channels=1, img_resolution=8)
    ab = torch.tensor(diffusion.alpha_bar_from_betas(diffusion.linear_betas(T)))
    return sk.DiscreteEpsDenoiser(lambda x_t, t, labels: g.eps(x_t.double(), ab[t]), ab, img_channels=1,
                                  img_resolution=8, dtype=torch.float64)


FINE = schedules.respace(1000, "50")  # stride ~20 < w/2 = 40: the window reaches below the next level


def _shrunk_latents(seed):
    """x_T of variance 0.64: the deterministic chain keeps each state's variance below 1 - abar_t
    (an exposure-bias-like deficit), so Alg. 3's window matches levels below t."""
    return 0.8 * _normal((3, 1, 8, 8), seed)


def test_paper_mode_window_reaches_below_the_next_level_as_alg_3():
    """On a 50-step chain with w = 80 the matched t_s lies below the chain's next timestep (the
    earlier implementation cut the window to just above it); samplerkit equals the Alg. 3 loop."""
    net = _gaussian_eps_model()
    lat = _shrunk_latents(20)
    seen = []
    got = samplers.ddim(net, lat, FINE, clip_denoised=False, time_shift=remedies.TimeShift(80, 300),
                        callback=seen.append)
    _close(got, paper_ts_ddim(net, lat, FINE, 80, 300, clip=False), tol=1e-10)
    t_s = [net.timestep(e["sigma"].flatten()) for e in seen]
    chain = [int(t) for t in reversed(FINE)]
    below = [k for k in range(1, len(chain) - 1) if chain[k] > 300 and bool((t_s[k] <= chain[k + 1]).any())]
    assert len(below) > 10  # the case the earlier cut excluded is the common one here
    assert all(bool((t_s[k] >= chain[k] - 40).all()) for k in range(1, len(chain)))  # never beyond w/2


def test_paper_mode_ddim_with_eta_adds_no_noise_where_the_state_is_at_or_below_the_next_level():
    net = _gaussian_eps_model()
    lat, zs = _shrunk_latents(21), [_normal((3, 1, 8, 8), 300 + i) for i in range(len(FINE))]
    got = samplers.ddim(net, lat, FINE, eta=0.6, clip_denoised=True, randn_like=_feeder(zs),
                        time_shift=remedies.TimeShift(80, 300))
    assert torch.isfinite(got).all()
    _close(got, paper_ts_ddim(net, lat, FINE, 80, 300, clip=True, eta=0.6, zs=zs), tol=1e-10)


def test_paper_mode_ancestral_takes_the_deterministic_ddim_step_at_or_below_the_next_level():
    """samplerkit's reading for DDPM: where t_s <= t' there is no posterior from abar_{t_s} to
    abar_{t'}; the image takes the eta = 0 DDIM step and no noise, even with huge noise draws."""
    net = _gaussian_eps_model()
    lat = _shrunk_latents(22)
    ts = remedies.TimeShift(80, 300)
    seen = []
    huge = lambda x: torch.full_like(x, 1e6)  # noqa: E731 - any noise that lands would show
    samplers.ancestral(net, lat, FINE, variance="fixedlarge", clip_denoised=False, randn_like=huge,
                       time_shift=ts, callback=seen.append)
    chain = [int(t) for t in reversed(FINE)]
    t_s = [net.timestep(e["sigma"].flatten()) for e in seen]
    k = next(k for k in range(1, len(chain) - 1) if bool((t_s[k] <= chain[k + 1]).all()))
    a_s = 1 / (1 + seen[k]["sigma"].reshape(-1, 1, 1, 1) ** 2)
    a_next = net.training_alpha_bar()[chain[k + 1]]
    x, x0 = seen[k]["x"], seen[k]["denoised"]
    eps = (x - a_s.sqrt() * x0) / (1 - a_s).sqrt()
    ddim_step = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    torch.testing.assert_close(seen[k + 1]["x"], ddim_step, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_paper_mode_with_window_0_is_the_plain_sampler_bit_for_bit(adm, sampler):
    lat = _normal((2, 3, 32, 32), 10)
    fn = samplers.info(sampler).fn
    plain = fn(adm, lat, DDIM5, randn_like=_feeder(_noise(5)))
    shifted = fn(adm, lat, DDIM5, randn_like=_feeder(_noise(5)), time_shift=remedies.TimeShift(0, 0))
    assert torch.equal(plain, shifted)


def test_reference_mode_with_window_0_lands_one_approximate_stride_down_not_on_the_chain(adm):
    """TS-DPM-ADM indexes alphas_cumprod_prev_all with next_t - T // (K - 1): on ddim5 (stride 200)
    a step from t = 800 lands on abar[800 - 250 - 1] = abar[549], not on the chain's abar[600]."""
    full = adm.training_alpha_bar()
    bound = remedies.TimeShift(0, 0, "reference").bind(adm, full[DDIM5])
    x = _normal((2, 3, 32, 32), 11)
    ab, ab_prev = bound.levels(1, 4, x, full[800], full[600])
    assert torch.equal(ab, full[800]) and torch.equal(ab_prev.flatten(), full[[549, 549]])
    paper = remedies.TimeShift(0, 0).bind(adm, full[DDIM5]).levels(1, 4, x, full[800], full[600])
    assert paper == (full[800], full[600])
    lat = _normal((2, 3, 32, 32), 12)
    plain = samplers.ddim(adm, lat, DDIM5)
    assert float((samplers.ddim(adm, lat, DDIM5, time_shift=remedies.TimeShift(0, 300, "reference"))
                  - plain).abs().max()) > 1e-2


def test_reference_mode_variance_candidates_are_reversed_abar_not_one_minus_abar(adm):
    """get_next_time_window compares Var(x) with flip(abar) around t; the paper with 1 - abar_tau.
    A state of variance 1 - abar_500 is matched at tau = 500 by the paper, elsewhere by the code."""
    full = adm.training_alpha_bar()
    chain = full[DDIM5]
    x = _normal((1, 3, 32, 32), 13)
    x = (x - x.mean()) / x.flatten().std() * math.sqrt(1 - float(full[500]))  # unbiased variance = 1 - abar_500
    paper = remedies.TimeShift(window=400, cutoff=0).bind(adm, chain)
    a, _ = paper.levels(1, 3, x, chain[3], chain[2])
    assert torch.equal(a.flatten(), full[[500]])
    code = remedies.TimeShift(window=400, cutoff=1, mode="reference").bind(adm, chain)  # cutoff 0: no search
    _, landing = code.levels(1, 3, x, chain[3], chain[2])
    flip_match = int((full.flip(0)[400:801] - (1 - full[500])).abs().argmin()) + 400
    assert torch.equal(landing.flatten(), full[[flip_match - 250 - 1]])
    assert flip_match != 500


def test_paper_mode_ancestral_uses_the_shifted_level_in_the_posterior(adm):
    """With z = 0 the shifted ancestral step is mu~ of q(x_prev | x_t, x0) from abar_{t_s} to the
    chain's next level: checked against the closed form on one step."""
    full = adm.training_alpha_bar()
    ts = remedies.TimeShift(window=160, cutoff=0)
    seen = []
    lat = _normal((2, 3, 32, 32), 14)
    samplers.ancestral(adm, lat, DDIM5, variance="fixedsmall", randn_like=torch.zeros_like, time_shift=ts,
                       callback=seen.append)
    step = seen[1]  # the first shifted state: chain t = 600, next 400
    sig = step["sigma"].reshape(-1, 1, 1, 1)
    a_s, a_prev = 1 / (1 + sig**2), full[400]
    x0 = step["denoised"]
    beta = 1 - a_s / a_prev
    mean = beta * a_prev.sqrt() / (1 - a_s) * x0 + (1 - a_prev) * (1 - beta).sqrt() / (1 - a_s) * step["x"]
    assert not torch.allclose(a_s.flatten(), full[600].expand(2))  # it did shift
    torch.testing.assert_close(seen[2]["x"], mean, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("make,needle", [
    (lambda: remedies.TimeShift(window=-1), "window must be an integer >= 0"),
    (lambda: remedies.TimeShift(cutoff=-5), "cutoff must be an integer >= 0"),
    (lambda: remedies.TimeShift(mode="code"), "unknown time-shift mode"),
])
def test_bad_time_shift_is_one_error(make, needle):
    with pytest.raises(SamplerkitError, match=needle):
        make()


def test_time_shift_needs_a_discrete_chain():
    g = GaussianDenoiser(0.1, 0.5, img_channels=3, img_resolution=4)
    with pytest.raises(SamplerkitError, match="discrete-time model"):
        samplers.ddim(g, _normal((1, 3, 4, 4), 0), schedules.edm(4), time_shift=remedies.TimeShift())
    with pytest.raises(SamplerkitError, match="not heun"):
        make_sampler(g, "heun", 4, time_shift=True)


def test_reference_mode_refuses_steps_that_would_climb_in_noise(adm):
    with pytest.raises(SamplerkitError, match="noisier level"):
        samplers.ddim(adm, _normal((2, 3, 32, 32), 15), schedules.respace(1000, "10"),
                      time_shift=remedies.TimeShift(window=400, cutoff=1, mode="reference"))


# ---------------------------------------------------------------------------------------------
# settings, command line, exposure-bias diagnostics


def test_make_sampler_records_the_remedies_and_applies_them(adm):
    prepared = make_sampler(adm, "ddim", 5, eps_scaler="1.017", time_shift=True, ts_window=80, ts_cutoff=300,
                            ts_mode="reference")
    assert {k: prepared.settings[k] for k in ("eps_scaler", "eps_scaler_slope", "time_shift", "ts_window",
                                              "ts_cutoff", "ts_mode")} == {
        "eps_scaler": 1.017, "eps_scaler_slope": 0.0, "time_shift": True, "ts_window": 80, "ts_cutoff": 300,
        "ts_mode": "reference"}
    assert "eps_scaler" not in make_sampler(adm, "ddim", 5).settings  # plain runs keep their settings
    lat, zs = _normal((2, 3, 32, 32), 16), _noise(5)
    got = prepared.run(lat, None, _feeder(zs))
    ts = remedies.TimeShift(80, 300, "reference")
    want = samplers.ddim(remedies.eps_scaling(adm, 1.017), lat, schedules.respace(1000, "5"), randn_like=_feeder(zs),
                         time_shift=ts)
    assert torch.equal(got, want)


@pytest.mark.parametrize("args,needle", [
    (["--eps-scaler", "0"], "--eps-scaler must be > 0"),
    (["--eps-scaler", "1.0", "--eps-scaler-slope", "-1"], "--eps-scaler-slope -1.0 makes lambda"),
    (["--eps-scaler", "1.0,1.01"], "a list is a sweep axis"),
    (["--time-shift"], "not heun"),
    (["--sampler", "ddim", "--time-shift", "--ts-window", "-2"], "window must be an integer >= 0"),
    (["--sampler", "ddim", "--ts-cutoff", "200"], "need(s) --time-shift"),
])
def test_bad_remedy_options_are_one_line_errors(tmp_path, args, needle):
    base = ["sample", "--seeds", "0", "--steps", "3", "--out", tmp_path / "o", "--quiet"]
    if "--sampler" not in args:
        base += ["--sampler", "heun"]
    code, _, err = run_cli(*base, *args)
    assert_one_line_error(code, err, needle)


def test_time_shift_on_a_continuous_model_is_a_one_line_error(tmp_path):
    code, _, err = run_cli("sample", "--model", "shapes32-ideal", "--sampler", "ddim", "--steps", "3", "--seeds", "0",
                           "--time-shift", "--out", tmp_path / "o", "--quiet")
    assert_one_line_error(code, err, "discrete-time model")


def test_sample_manifest_records_eps_scaler_and_time_shift(tmp_path):
    out = tmp_path / "o"
    code, _, err = run_cli("sample", "--sampler", "ddim", "--steps", "3", "--seeds", "0", "--eps-scaler", "1.005",
                           "--eps-scaler-slope", "0.001", "--time-shift", "--ts-window", "60", "--ts-cutoff", "100",
                           "--out", out, "--quiet", "--no-grid")
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["eps_scaler"], manifest["eps_scaler_slope"]) == (1.005, 0.001)
    assert (manifest["time_shift"], manifest["ts_window"], manifest["ts_cutoff"], manifest["ts_mode"]) == (
        True, 60, 100, "paper")


def test_sweep_takes_a_list_of_eps_scalers_as_one_more_axis(tmp_path):
    from test_sweep import PooledPixels

    from samplerkit import metrics, sweep

    net = sk.load("shapes32-ideal")
    ref = metrics.statistics_of_source("builtin:shapes32?n=16", PooledPixels(), ("fid",))
    rows = sweep.run_cells(net, ["heun", "ddim"], [2], list(range(3)), ref, PooledPixels(), csv_path=tmp_path / "s.csv",
                           eps_scalers=[1.0, 1.01], remedies={"eps_scaler_slope": 0.002})
    assert [(r["sampler"], float(r["eps_scaler"])) for r in rows] == [("heun", 1.0), ("heun", 1.01), ("ddim", 1.0),
                                                                      ("ddim", 1.01)]
    for r in rows:
        settings = json.loads(r["settings"])
        assert settings["eps_scaler"] == float(r["eps_scaler"]) and settings["eps_scaler_slope"] == 0.002
    assert len({r["fid"] for r in rows}) == 4  # each lambda makes other images
    with pytest.raises(SamplerkitError, match="applies to ddim and ancestral"):
        sweep.run_cells(net, ["heun"], [2], list(range(3)), ref, PooledPixels(), csv_path=tmp_path / "t.csv",
                        remedies={"time_shift": True})


def _eps_model(T=50):
    """The exact Gaussian denoiser as a discrete eps-model on a T-step cosine schedule."""
    g = GaussianDenoiser(0.1, 0.4, img_channels=3, img_resolution=4)
    ab = torch.tensor(diffusion.alpha_bar_from_betas(diffusion.cosine_betas(T)))
    return sk.DiscreteEpsDenoiser(lambda x_t, t, labels: g.eps(x_t.double(), ab[t]), ab, img_channels=3,
                                  img_resolution=4, dtype=torch.float64)


def test_eps_norm_mode_measures_both_chains_and_suggests_a_lambda(tmp_path):
    net = _eps_model()
    x0 = 0.1 + 0.4 * _normal((6, 3, 4, 4), 17)
    settings = exposure.Settings(modes=("eps-norm",), stride=10, batch=4)
    es = remedies.eps_scaling(net, 1.25)
    specs = [exposure.ModelSpec("m", net), exposure.ModelSpec("m+ES1.25", es)]
    rep = exposure.run(specs, x0, None, settings, csv_path=tmp_path / "e.csv", log=lambda s: None,
                       show_progress=False)
    rows = {(r["model"], int(r["t"])): r for r in rep.current}
    assert sorted({t for _, t in rows}) == [10, 20, 30, 40, 50]
    for t in (10, 30, 50):
        plain, scaled = rows[("m", t)], rows[("m+ES1.25", t)]
        # the same x_t on the forward chain: the scaled eps is exactly 1/lambda of the plain one
        assert float(scaled["eps_norm_forward"]) * 1.25 == pytest.approx(float(plain["eps_norm_forward"]), rel=1e-12)
        assert float(plain["eps_norm_ratio"]) == pytest.approx(
            float(plain["eps_norm_sample"]) / float(plain["eps_norm_forward"]), rel=1e-12)
    ratios = [float(rows[("m", t)]["eps_norm_ratio"]) for t in (10, 20, 30, 40, 50)]
    assert rep.eps_norm["m"]["suggested_eps_scaler"] == pytest.approx(np.mean(ratios), rel=1e-12)
    assert "suggestion" in exposure.eps_norm_text("m", rep.eps_norm["m"])
    # eps of the exact denoiser at a forward x_t has norm sqrt(M) (1 - small) per image, M = 48 values
    assert 0.5 * math.sqrt(48) < float(rows[("m", 50)]["eps_norm_forward"]) < 1.5 * math.sqrt(48)
    fig = exposure.plot(rep.current, "eps-norm", tmp_path / "e.png")
    from samplerkit import plots

    lines = plots.lines(fig.axes[0])
    assert lines["m: forward"][1] == [float(rows[("m", t)]["eps_norm_forward"]) for t in (10, 20, 30, 40, 50)]
    assert lines["m: sampling"][1] == [float(rows[("m", t)]["eps_norm_sample"]) for t in (10, 20, 30, 40, 50)]


def test_exposure_bias_command_measures_each_remedy_as_a_model_variant(tmp_path):
    import csv

    csv_path = tmp_path / "e.csv"
    code, out, err = run_cli("exposure-bias", "--model", "shapes32-ideal", "--mode", "eps-norm", "--respacing", "6",
                             "--stride", "3", "--num-images", "3", "--eps-scaler", "1.01", "--csv", csv_path,
                             "--plot", tmp_path / "e.png", "--quiet")
    assert code == 0, err
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    es = "shapes32-ideal+ES1.01"
    assert sorted((r["model"], r["t"]) for r in rows) == [("shapes32-ideal", "3"), ("shapes32-ideal", "6"),
                                                          (es, "3"), (es, "6")]
    by = {(r["model"], r["t"]): float(r["eps_norm_forward"]) for r in rows}
    assert by[("shapes32-ideal+ES1.01", "3")] * 1.01 == pytest.approx(by[("shapes32-ideal", "3")], rel=1e-9)
    assert "suggested eps_scaler (a suggestion" in out
    code, _, err = run_cli("exposure-bias", "--model", "shapes32-ideal", "--time-shift", "--num-images", "2",
                           "--t", "10", "--quiet")
    assert_one_line_error(code, err, "discrete-time model")
