"""Samplers: plain functions over (denoiser, latents, noise levels).

* :func:`euler`, :func:`heun` -- the deterministic ODE solvers of edm.txt Alg. 1, with the
  general sigma(t) / s(t) of Sec. 3 (``schedule`` linear | vp | ve, ``scaling`` none | vp);
* :func:`stochastic` -- EDM's stochastic sampler with churn (edm.txt Alg. 2);
* :func:`ddim` -- DDIM with eta >= 0 (Song et al. 2021, as used in iddpm.txt Sec. 4);
* :func:`ancestral` -- DDPM ancestral sampling on a (respaced) chain (ddpm-ip Alg. 2,
  iddpm.txt Sec. 4, Eq. 19), with the learned variance of Eq. 15 where the model has one.

Conventions (DESIGN.md): latents are standard normal; ``euler``/``heun``/``stochastic`` start
at ``latents * sigma_0`` in sigma-space (EDM), ``ddim``/``ancestral`` start at ``x_T = latents``
in x_t-space (guided-diffusion). All arithmetic is float64; the network runs in its own dtype.
Stochastic samplers draw noise only through ``randn_like``, once per step, in step order.
Every sampler returns the final images in [-1, 1] data space (not clipped by euler/heun/stochastic).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .diffusion import (
    Chain,
    alpha_bar_from_sigma,
    predict_eps_from_x0,
    sigma_from_alpha_bar,
    vp_betas_for_range,
    vp_sigma,
    vp_sigma_deriv,
    vp_sigma_inv,
)
from .errors import SamplerkitError

SAMPLERS = ("euler", "heun", "stochastic", "ddim", "ancestral")


def nfe(sampler: str, num_steps: int) -> int:
    """Network evaluations per image: Heun and the stochastic sampler skip the correction at the
    last step (to sigma = 0), so 2N - 1; the others N."""
    if sampler not in SAMPLERS:
        raise SamplerkitError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")
    return 2 * num_steps - 1 if sampler in ("heun", "stochastic") else num_steps


def _check_sigmas(sigmas) -> torch.Tensor:
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if sigmas.numel() < 2 or float(sigmas[-1]) != 0.0:
        raise SamplerkitError("sigmas must hold N + 1 >= 2 noise levels ending in 0 (see samplerkit.schedules)")
    if bool((sigmas[:-1] <= 0).any()) or bool((sigmas[1:] >= sigmas[:-1]).any()) or not math.isfinite(sigmas[0]):
        raise SamplerkitError("sigmas must be finite, positive and strictly decreasing before the final 0")
    return sigmas


def _rounded(net, sigmas) -> torch.Tensor:
    """The grid rounded to the model's trained levels (EDM: ``net.round_sigma``), last entry 0."""
    sigmas = _check_sigmas(sigmas)
    head = torch.as_tensor(net.round_sigma(sigmas[:-1]), dtype=torch.float64).reshape(-1).cpu()
    return torch.cat([head, sigmas.new_zeros(1)])


def _denoise(net, x: torch.Tensor, sigma, class_labels) -> torch.Tensor:
    return net(x, sigma, class_labels).to(torch.float64)


# ---------------------------------------------------------------------------------------------
# deterministic ODE solvers (edm.txt Alg. 1)


class TimeSchedule:
    """sigma(t), s(t) and their derivatives for Alg. 1 (edm.txt Sec. 3, Table 1).

    ``schedule``: 'linear' (sigma(t) = t, EDM's choice), 'vp' (sigma(t) of the VP SDE with beta_d,
    beta_min fitted to the grid's end points), 've' (sigma(t) = sqrt(t)). ``scaling``: 'none'
    (s(t) = 1) or 'vp' (s(t) = 1 / sqrt(1 + sigma(t)^2)).
    """

    def __init__(self, schedule: str = "linear", scaling: str = "none", sigma_min=None, sigma_max=None,
                 epsilon_s: float = 1e-3):
        if schedule not in ("linear", "vp", "ve"):
            raise SamplerkitError(f"unknown schedule {schedule!r}; use linear, vp or ve")
        if scaling not in ("none", "vp"):
            raise SamplerkitError(f"unknown scaling {scaling!r}; use none or vp")
        self.schedule, self.scaling = schedule, scaling
        if schedule == "vp":
            self.beta_d, self.beta_min = vp_betas_for_range(sigma_min, sigma_max, epsilon_s)

    @property
    def plain(self) -> bool:
        return self.schedule == "linear" and self.scaling == "none"

    def sigma(self, t):
        if self.schedule == "vp":
            return vp_sigma(t, self.beta_d, self.beta_min)
        return t.sqrt() if self.schedule == "ve" else t

    def sigma_deriv(self, t):
        if self.schedule == "vp":
            return vp_sigma_deriv(t, self.beta_d, self.beta_min)
        return 0.5 / t.sqrt() if self.schedule == "ve" else torch.ones_like(t)

    def sigma_inv(self, sigma):
        if self.schedule == "vp":
            return vp_sigma_inv(sigma, self.beta_d, self.beta_min)
        return sigma**2 if self.schedule == "ve" else sigma

    def s(self, t):
        return 1 / (1 + self.sigma(t) ** 2).sqrt() if self.scaling == "vp" else torch.ones_like(t)

    def s_deriv(self, t):
        if self.scaling == "vp":
            return -self.sigma(t) * self.sigma_deriv(t) * self.s(t) ** 3
        return torch.zeros_like(t)

    def dx_dt(self, x, t, denoised):
        """dx/dt = (sigma'/sigma + s'/s) x - sigma' s / sigma D(x/s; sigma) (edm.txt Eq. 4)."""
        if self.plain:
            return (x - denoised) / t
        sigma, s = self.sigma(t), self.s(t)
        return (self.sigma_deriv(t) / sigma + self.s_deriv(t) / s) * x - self.sigma_deriv(t) * s / sigma * denoised


def _ode(net, latents, sigmas, class_labels, second_order: bool, schedule: str, scaling: str, epsilon_s: float):
    sigmas = _rounded(net, sigmas)
    ts = TimeSchedule(schedule, scaling, float(sigmas[-2]), float(sigmas[0]), epsilon_s)
    t_steps = torch.cat([ts.sigma_inv(sigmas[:-1]), sigmas.new_zeros(1)]).to(latents.device)
    x_next = latents.to(torch.float64) * (ts.sigma(t_steps[0]) * ts.s(t_steps[0]))  # Alg. 1 line 2
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:], strict=True)):
        x_cur = x_next
        denoised = _denoise(net, x_cur / ts.s(t_cur), ts.sigma(t_cur), class_labels)
        d_cur = ts.dx_dt(x_cur, t_cur, denoised)  # line 4
        x_next = x_cur + (t_next - t_cur) * d_cur  # line 5: Euler step
        if second_order and i < len(t_steps) - 2:  # lines 6-8: Heun correction unless t_next = 0
            denoised = _denoise(net, x_next / ts.s(t_next), ts.sigma(t_next), class_labels)
            d_prime = ts.dx_dt(x_next, t_next, denoised)
            x_next = x_cur + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


def euler(net, latents, sigmas, class_labels=None, *, schedule: str = "linear", scaling: str = "none",
          epsilon_s: float = 1e-3) -> torch.Tensor:
    """First-order Euler solver of the probability-flow ODE: edm.txt Alg. 1 without lines 6-8.

    ``sigmas``: N + 1 descending noise levels ending in 0. NFE = N.
    """
    return _ode(net, latents, sigmas, class_labels, False, schedule, scaling, epsilon_s)


def heun(net, latents, sigmas, class_labels=None, *, schedule: str = "linear", scaling: str = "none",
         epsilon_s: float = 1e-3) -> torch.Tensor:
    """Heun's 2nd-order solver (edm.txt Alg. 1); Euler on the last step to sigma = 0. NFE = 2N - 1."""
    return _ode(net, latents, sigmas, class_labels, True, schedule, scaling, epsilon_s)


# ---------------------------------------------------------------------------------------------
# EDM stochastic sampler (edm.txt Alg. 2)


def stochastic(net, latents, sigmas, class_labels=None, S_churn: float = 0.0, S_min: float = 0.0,
               S_max: float = float("inf"), S_noise: float = 1.0,
               randn_like: Callable = torch.randn_like) -> torch.Tensor:
    """EDM's stochastic sampler: Heun with churn gamma_i = min(S_churn / N, sqrt 2 - 1) on
    sigma in [S_min, S_max] (edm.txt Alg. 2). With S_churn = 0 it is exactly :func:`heun`."""
    if S_churn < 0 or S_noise < 0 or S_min < 0 or S_max < S_min:
        raise SamplerkitError("need S_churn >= 0, S_noise >= 0 and 0 <= S_min <= S_max")
    t_steps = _rounded(net, sigmas).to(latents.device)
    num_steps = len(t_steps) - 1
    x_next = latents.to(torch.float64) * t_steps[0]  # line 2
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:], strict=True)):
        x_cur = x_next
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0.0  # line 4
        t_hat = torch.as_tensor(net.round_sigma(t_cur + gamma * t_cur), dtype=torch.float64).to(t_cur.device)
        eps = randn_like(x_cur)  # line 5: S_noise-scaled noise, drawn every step
        x_hat = x_cur + (t_hat**2 - t_cur**2).clamp(min=0).sqrt() * S_noise * eps  # line 6
        d_cur = (x_hat - _denoise(net, x_hat, t_hat, class_labels)) / t_hat  # line 7
        x_next = x_hat + (t_next - t_hat) * d_cur  # line 8
        if i < num_steps - 1:  # lines 9-11: 2nd-order correction unless t_next = 0
            d_prime = (x_next - _denoise(net, x_next, t_next, class_labels)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


# ---------------------------------------------------------------------------------------------
# discrete-chain samplers in x_t-space (DDIM, DDPM ancestral)


def chain_alpha_bars(net, steps_or_sigmas) -> torch.Tensor:
    """abar of the chain's timesteps in increasing t (the order :class:`Chain` expects).

    Integer input: training timesteps of a discrete model (``samplerkit.schedules.respace``),
    looked up in ``net.alphas_cumprod``. Float input: a descending sigma grid ending in 0, rounded
    to the model's levels, with abar = 1 / (1 + sigma^2); this works for any denoiser.
    """
    s = torch.as_tensor(steps_or_sigmas)
    if not s.dtype.is_floating_point:
        if not hasattr(net, "alphas_cumprod"):
            raise SamplerkitError("timestep indices need a discrete-time model; pass a sigma grid instead")
        ab = net.alphas_cumprod.to(torch.float64).cpu()
        steps = torch.unique(s.to(torch.int64).flatten())
        if steps.numel() == 0 or int(steps.min()) < 0 or int(steps.max()) >= ab.numel():
            raise SamplerkitError(f"timesteps must lie in [0, {ab.numel() - 1}]")
        return ab[steps]
    sigmas = _rounded(net, s)[:-1]
    if bool((sigmas[1:] >= sigmas[:-1]).any()):
        raise SamplerkitError("the sigma grid collapses after rounding to the model's trained levels; use fewer steps")
    return alpha_bar_from_sigma(sigmas).flip(0)


def ddim(net, latents, steps_or_sigmas, class_labels=None, eta: float = 0.0,
         randn_like: Callable = torch.randn_like, clip_denoised: bool = True) -> torch.Tensor:
    """DDIM (Song et al. 2021): x_{t-1} = sqrt(abar') x0 + sqrt(1 - abar' - s^2) eps + s z with
    s = eta sqrt((1 - abar')/(1 - abar)) sqrt(1 - abar/abar'). x0 is clipped to [-1, 1] when
    ``clip_denoised`` and eps re-derived from it, as guided-diffusion does. With eta = 0 and no
    clipping this is Euler on the same sigma grid (edm.txt Sec. 3)."""
    if eta < 0:
        raise SamplerkitError(f"eta must be >= 0, got {eta}")
    alpha_bars = chain_alpha_bars(net, steps_or_sigmas).to(latents.device)
    x = latents.to(torch.float64)  # x_T in x_t-space
    for k in reversed(range(len(alpha_bars))):
        ab = alpha_bars[k]
        ab_prev = alpha_bars[k - 1] if k > 0 else torch.ones_like(ab)
        x0 = _denoise(net, x / ab.sqrt(), sigma_from_alpha_bar(ab), class_labels)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        eps = predict_eps_from_x0(x, ab, x0)
        s = eta * ((1 - ab_prev) / (1 - ab)).sqrt() * (1 - ab / ab_prev).sqrt()
        z = randn_like(x)
        x = ab_prev.sqrt() * x0 + (1 - ab_prev - s**2).clamp(min=0).sqrt() * eps + (s * z if k > 0 else 0)
    return x


def ancestral(net, latents, steps_or_sigmas, class_labels=None, variance: str = "auto",
              randn_like: Callable = torch.randn_like, clip_denoised: bool = True) -> torch.Tensor:
    """DDPM ancestral sampling (ddpm-ip Alg. 2) on a respaced chain (iddpm.txt Eq. 19):
    x_{t-1} = mu~(x_t, x0) + Sigma^(1/2) z, z = 0 at the last step.

    ``variance``: 'learned' (iddpm.txt Eq. 15, from the same forward pass), 'fixedsmall'
    (beta~), 'fixedlarge' (beta), or 'auto' = learned when the model has it, else fixedlarge
    (guided-diffusion's default).
    """
    learned = hasattr(net, "denoise_with_variance") and getattr(net, "learned_variance", False)
    if variance == "auto":
        variance = "learned" if learned else "fixedlarge"
    if variance not in ("learned", "fixedsmall", "fixedlarge"):
        raise SamplerkitError(f"unknown variance {variance!r}; use learned, fixedsmall or fixedlarge")
    if variance == "learned" and not learned:
        raise SamplerkitError("variance='learned' needs a model with learned variance; use fixedsmall or fixedlarge")
    chain = Chain.from_alpha_bar(chain_alpha_bars(net, steps_or_sigmas).to(latents.device))
    x = latents.to(torch.float64)  # x_T in x_t-space
    for k in reversed(range(len(chain))):
        ab = chain.alpha_bar[k]
        x_sigma, sigma = x / ab.sqrt(), sigma_from_alpha_bar(ab)
        if variance == "learned":
            x0, v = net.denoise_with_variance(x_sigma, sigma, class_labels)
            x0 = x0.to(torch.float64)
        else:
            x0, v = _denoise(net, x_sigma, sigma, class_labels), None
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        mean = chain.posterior_mean(k, x0, x)
        log_var = chain.log_variance(k, variance, v)
        z = randn_like(x)
        x = mean + (torch.exp(0.5 * log_var) * z if k > 0 else 0)
    return x
