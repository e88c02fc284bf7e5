"""The sigma-space samplers of Karras et al. 2022 (EDM): Euler and Heun over the general
sigma(t), s(t) of Alg. 1, and the stochastic sampler with churn of Alg. 2.

Latents are standard normal and start at ``latents * sigma_0`` (EDM's convention); the
arithmetic is float64, the network runs in its own dtype; the result is in data space ([-1, 1]
for a good model; D(x; sigma) is clamped only with ``clip_denoised=True``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..diffusion import vp_betas_for_range, vp_sigma, vp_sigma_deriv, vp_sigma_inv
from ..errors import SamplerkitError
from ._grid import denoise, report, rounded, start

# ---------------------------------------------------------------------------------------------
# deterministic ODE solvers (EDM Alg. 1)


SCHEDULES = ("linear", "vp", "ve")  # sigma(t) of Alg. 1
SCALINGS = ("none", "vp")  # s(t) of Alg. 1


class TimeSchedule:
    """sigma(t), s(t) and their derivatives for Alg. 1 (Karras et al. 2022 (EDM), Sec. 3, Table 1).

    ``schedule``: 'linear' (sigma(t) = t, EDM's choice), 'vp' (sigma(t) of the VP SDE with beta_d,
    beta_min fitted to the grid's end points), 've' (sigma(t) = sqrt(t)). ``scaling``: 'none'
    (s(t) = 1) or 'vp' (s(t) = 1 / sqrt(1 + sigma(t)^2)).
    """

    def __init__(self, schedule: str = "linear", scaling: str = "none", sigma_min=None, sigma_max=None,
                 epsilon_s: float = 1e-3):
        if schedule not in SCHEDULES:
            raise SamplerkitError(f"unknown schedule {schedule!r}; use {', '.join(SCHEDULES)}")
        if scaling not in SCALINGS:
            raise SamplerkitError(f"unknown scaling {scaling!r}; use {' or '.join(SCALINGS)}")
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
        """dx/dt = (sigma'/sigma + s'/s) x - sigma' s / sigma D(x/s; sigma) (EDM Eq. 4)."""
        if self.plain:
            return (x - denoised) / t
        sigma, s = self.sigma(t), self.s(t)
        return (self.sigma_deriv(t) / sigma + self.s_deriv(t) / s) * x - self.sigma_deriv(t) * s / sigma * denoised


def _ode(net, latents, sigmas, class_labels, second_order: bool, schedule: str, scaling: str, epsilon_s: float,
         clip_denoised: bool, callback):
    sigmas = rounded(net, sigmas)
    ts = TimeSchedule(schedule, scaling, float(sigmas[-2]), float(sigmas[0]), epsilon_s)
    t_steps = torch.cat([ts.sigma_inv(sigmas[:-1]), sigmas.new_zeros(1)]).to(latents.device)
    x_next = latents.to(torch.float64) * (ts.sigma(t_steps[0]) * ts.s(t_steps[0]))  # Alg. 1 line 2
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:], strict=True)):
        x_cur = x_next
        sigma_cur = ts.sigma(t_cur)
        denoised = denoise(net, x_cur / ts.s(t_cur), sigma_cur, class_labels, clip_denoised)
        report(callback, i, x_cur / ts.s(t_cur), sigma_cur, sigma_cur, denoised)
        d_cur = ts.dx_dt(x_cur, t_cur, denoised)  # line 4
        x_next = x_cur + (t_next - t_cur) * d_cur  # line 5: Euler step
        if second_order and i < len(t_steps) - 2:  # lines 6-8: Heun correction unless t_next = 0
            denoised = denoise(net, x_next / ts.s(t_next), ts.sigma(t_next), class_labels, clip_denoised)
            d_prime = ts.dx_dt(x_next, t_next, denoised)
            x_next = x_cur + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


def euler(net, latents, sigmas, class_labels=None, *, schedule: str = "linear", scaling: str = "none",
          epsilon_s: float = 1e-3, clip_denoised: bool = False, callback: Callable | None = None) -> torch.Tensor:
    """First-order Euler solver of the probability-flow ODE: Karras et al. 2022 (EDM), Alg. 1
    without lines 6-8, over its general sigma(t), s(t). NFE = N.

    ``sigmas``: N + 1 descending noise levels ending in 0, or an integer N for
    :func:`samplerkit.schedules.for_model` (EDM's grid over the model's range). ``clip_denoised``
    clamps D(x; sigma) to [-1, 1] (EDM never does). ``callback(dict(i, x, sigma, sigma_hat,
    denoised))`` runs once per step after the step's first network call, k-diffusion style: x is
    the step's starting point in sigma-space (x = y + sigma n; the state divided by s(t) when
    ``scaling='vp'``) and denoised = D(x; sigma_hat). The same holds for every sigma-space sampler.
    """
    return _ode(net, latents, sigmas, class_labels, False, schedule, scaling, epsilon_s, clip_denoised, callback)


def heun(net, latents, sigmas, class_labels=None, *, schedule: str = "linear", scaling: str = "none",
         epsilon_s: float = 1e-3, clip_denoised: bool = False, callback: Callable | None = None) -> torch.Tensor:
    """Heun's 2nd-order solver (Karras et al. 2022 (EDM), Alg. 1); Euler on the last step to
    sigma = 0. NFE = 2N - 1. Arguments as :func:`euler`."""
    return _ode(net, latents, sigmas, class_labels, True, schedule, scaling, epsilon_s, clip_denoised, callback)


# ---------------------------------------------------------------------------------------------
# EDM stochastic sampler (Alg. 2)


def stochastic(net, latents, sigmas, class_labels=None, S_churn: float = 0.0, S_min: float = 0.0,
               S_max: float = float("inf"), S_noise: float = 1.0,
               randn_like: Callable = torch.randn_like, *, clip_denoised: bool = False,
               callback: Callable | None = None) -> torch.Tensor:
    """EDM's stochastic sampler: Heun with churn gamma_i = min(S_churn / N, sqrt 2 - 1) on
    sigma in [S_min, S_max] (Karras et al. 2022 (EDM), Alg. 2). With S_churn = 0 it is exactly
    :func:`heun`. One ``randn_like`` draw per step. NFE = 2N - 1."""
    check_churn(S_churn, S_min, S_max, S_noise)
    t_steps, x_next = start(net, latents, sigmas)  # line 2
    num_steps = len(t_steps) - 1
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:], strict=True)):
        x_cur = x_next
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0.0  # line 4
        t_hat = torch.as_tensor(net.round_sigma(t_cur + gamma * t_cur), dtype=torch.float64).to(t_cur.device)
        eps = randn_like(x_cur)  # line 5: S_noise-scaled noise, drawn every step
        x_hat = x_cur + (t_hat**2 - t_cur**2).clamp(min=0).sqrt() * S_noise * eps  # line 6
        denoised = denoise(net, x_hat, t_hat, class_labels, clip_denoised)
        report(callback, i, x_hat, t_cur, t_hat, denoised)
        d_cur = (x_hat - denoised) / t_hat  # line 7
        x_next = x_hat + (t_next - t_hat) * d_cur  # line 8
        if i < num_steps - 1:  # lines 9-11: 2nd-order correction unless t_next = 0
            d_prime = (x_next - denoise(net, x_next, t_next, class_labels, clip_denoised)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


def check_churn(S_churn: float, S_min: float, S_max: float, S_noise: float) -> None:
    if S_churn < 0 or S_noise < 0 or S_min < 0 or S_max < S_min:
        raise SamplerkitError(f"need S_churn >= 0, S_noise >= 0 and 0 <= S_min <= S_max, got S_churn={S_churn}, "
                              f"S_noise={S_noise}, S_min={S_min}, S_max={S_max}")
