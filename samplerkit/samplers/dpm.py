"""The k-diffusion sampler family in sigma-space: ancestral Euler, DPM-Solver-2, DPM-Solver++
(2S, 2M) and the DPM-Solver++ SDE solvers (Crowson, crowsonkb/k-diffusion ``sampling.py``; Lu et
al. 2022 (DPM-Solver), arXiv 2206.00927; Lu et al. 2022 (DPM-Solver++), arXiv 2211.01095).

Every function starts at ``x = latents * sigma_0`` and works on x = y + sigma n in float64; the
DPM-Solver formulas are written in lambda = -log sigma, with h = lambda_{i+1} - lambda_i. A step
to sigma = 0 returns the last data prediction. ``randn_like`` is drawn exactly where k-diffusion
calls its noise sampler (once per step, in step order; for the SDE solvers k-diffusion's default
is a Brownian tree, whose normalized increments have the same distribution). ``callback`` as in
:func:`samplerkit.samplers.euler`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import SamplerkitError
from ._grid import denoise, report, start

SOLVER_TYPES = ("midpoint", "heun")


def check_noise(eta: float, s_noise: float, max_eta: float = float("inf")) -> None:
    """eta (amount of ancestral / SDE noise) and s_noise (its scale) must be >= 0."""
    if not 0 <= eta <= max_eta:
        bound = f" and <= {max_eta:g}" if max_eta < float("inf") else ""
        raise SamplerkitError(f"eta must be >= 0{bound}, got {eta}")
    if s_noise < 0:
        raise SamplerkitError(f"s_noise must be >= 0, got {s_noise}")


def ancestral_step(sigma_from, sigma_to, eta: float):
    """(sigma_down, sigma_up): an ancestral step from sigma_from to sigma_to is a deterministic
    step to sigma_down plus noise of std sigma_up, sigma_down^2 + sigma_up^2 = sigma_to^2, with
    sigma_up = min(sigma_to, eta sigma_to sqrt(1 - sigma_to^2 / sigma_from^2)) (k-diffusion)."""
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2).sqrt())
    return (sigma_to**2 - sigma_up**2).sqrt(), sigma_up


def euler_ancestral(net, latents, sigmas, class_labels=None, eta: float = 1.0, s_noise: float = 1.0,
                    randn_like: Callable = torch.randn_like, *, clip_denoised: bool = False,
                    callback: Callable | None = None) -> torch.Tensor:
    """Euler step to sigma_down, then noise of std s_noise sigma_up (k-diffusion
    ``sample_euler_ancestral``). eta = 1 is DDPM-like ancestral sampling in sigma-space; eta = 0 is
    :func:`~samplerkit.samplers.euler`. NFE = N."""
    check_noise(eta, s_noise)
    sigmas, x = start(net, latents, sigmas)
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        denoised = denoise(net, x, sigma, class_labels, clip_denoised)
        report(callback, i, x, sigma, sigma, denoised)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = x + (sigma_down - sigma) * (x - denoised) / sigma
        if sigma_next > 0:
            x = x + randn_like(x) * s_noise * sigma_up
    return x


def _dpm_solver_2(net, x, sigma, sigma_to, denoised, class_labels, clip_denoised):
    """One DPM-Solver-2 step (Lu et al. 2022 (DPM-Solver), Alg. 1 with r1 = 1/2) from sigma to
    sigma_to > 0: an Euler half-step in lambda to sigma_mid = sqrt(sigma sigma_to), then the full
    step with the slope taken there."""
    sigma_mid = (sigma * sigma_to).sqrt()
    x_mid = x + (sigma_mid - sigma) * (x - denoised) / sigma
    d_mid = (x_mid - denoise(net, x_mid, sigma_mid, class_labels, clip_denoised)) / sigma_mid
    return x + (sigma_to - sigma) * d_mid


def dpm_2(net, latents, sigmas, class_labels=None, *, clip_denoised: bool = False,
          callback: Callable | None = None) -> torch.Tensor:
    """DPM-Solver-2 in sigma-space (Lu et al. 2022 (DPM-Solver), Alg. 1, r1 = 1/2; k-diffusion
    ``sample_dpm_2`` without churn); Euler on the last step to sigma = 0. NFE = 2N - 1."""
    sigmas, x = start(net, latents, sigmas)
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        denoised = denoise(net, x, sigma, class_labels, clip_denoised)
        report(callback, i, x, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised  # Euler to sigma = 0
        else:
            x = _dpm_solver_2(net, x, sigma, sigma_next, denoised, class_labels, clip_denoised)
    return x


def dpm_2_ancestral(net, latents, sigmas, class_labels=None, eta: float = 1.0, s_noise: float = 1.0,
                    randn_like: Callable = torch.randn_like, *, clip_denoised: bool = False,
                    callback: Callable | None = None) -> torch.Tensor:
    """DPM-Solver-2 step to sigma_down, then noise of std s_noise sigma_up (k-diffusion
    ``sample_dpm_2_ancestral``). eta <= 1, so that every step but the last takes its second network
    call. NFE = 2N - 1."""
    check_noise(eta, s_noise, max_eta=1.0)
    sigmas, x = start(net, latents, sigmas)
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        denoised = denoise(net, x, sigma, class_labels, clip_denoised)
        report(callback, i, x, sigma, sigma, denoised)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0:
            x = denoised
        else:
            x = _dpm_solver_2(net, x, sigma, sigma_down, denoised, class_labels, clip_denoised)
            x = x + randn_like(x) * s_noise * sigma_up
    return x


def dpmpp_2s_ancestral(net, latents, sigmas, class_labels=None, eta: float = 1.0, s_noise: float = 1.0,
                       randn_like: Callable = torch.randn_like, *, clip_denoised: bool = False,
                       callback: Callable | None = None) -> torch.Tensor:
    """DPM-Solver++(2S) (Lu et al. 2022 (DPM-Solver++), Alg. 1, r = 1/2) to sigma_down, then noise
    of std s_noise sigma_up (k-diffusion ``sample_dpmpp_2s_ancestral``); eta <= 1. With eta = 0 it
    is the deterministic single-step DPM-Solver++(2S). NFE = 2N - 1."""
    check_noise(eta, s_noise, max_eta=1.0)
    sigmas, x = start(net, latents, sigmas)
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        denoised = denoise(net, x, sigma, class_labels, clip_denoised)
        report(callback, i, x, sigma, sigma, denoised)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0:
            x = denoised
        else:
            h = (sigma / sigma_down).log()  # lambda_down - lambda
            sigma_s = (sigma * sigma_down).sqrt()  # lambda_s = lambda + h / 2
            u = (sigma_s / sigma) * x - torch.expm1(-h / 2) * denoised
            denoised_s = denoise(net, u, sigma_s, class_labels, clip_denoised)
            x = (sigma_down / sigma) * x - torch.expm1(-h) * denoised_s
        if sigma_next > 0:
            x = x + randn_like(x) * s_noise * sigma_up
    return x


def dpmpp_2m(net, latents, sigmas, class_labels=None, *, clip_denoised: bool = False,
             callback: Callable | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022 (DPM-Solver++), Alg. 2; k-diffusion ``sample_dpmpp_2m``):
    x_{i+1} = (sigma_{i+1}/sigma_i) x_i - (e^{-h} - 1) D_i with D_i = (1 + 1/(2r)) d_i - d_{i-1}/(2r),
    r = h_{i-1}/h_i; first-order on the first step and on the last step to sigma = 0. NFE = N."""
    sigmas, x = start(net, latents, sigmas)
    old_denoised, h_last = None, None
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        denoised = denoise(net, x, sigma, class_labels, clip_denoised)
        report(callback, i, x, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            break
        h = (sigma / sigma_next).log()
        d = denoised
        if old_denoised is not None:
            r = h_last / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (sigma_next / sigma) * x - torch.expm1(-h) * d
        old_denoised, h_last = denoised, h
    return x


def dpmpp_2m_sde(net, latents, sigmas, class_labels=None, eta: float = 1.0, s_noise: float = 1.0,
                 solver_type: str = "midpoint", randn_like: Callable = torch.randn_like, *,
                 clip_denoised: bool = False, callback: Callable | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022 (DPM-Solver++), Sec. 5 and App.; k-diffusion
    ``sample_dpmpp_2m_sde``): the data-prediction SDE step with eta h of noise, and the 2nd-order
    correction by ``solver_type`` 'midpoint' or 'heun'. eta = 0 is a deterministic 2M variant.
    Noise is drawn on every step but the last when eta > 0. NFE = N."""
    check_noise(eta, s_noise)
    if solver_type not in SOLVER_TYPES:
        raise SamplerkitError(f"unknown solver_type {solver_type!r}; use midpoint or heun")
    sigmas, x = start(net, latents, sigmas)
    old_denoised, h_last = None, None
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        denoised = denoise(net, x, sigma, class_labels, clip_denoised)
        report(callback, i, x, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            break
        h = (sigma / sigma_next).log()
        eta_h = eta * h
        phi = -torch.expm1(-h - eta_h)  # 1 - e^{-(1 + eta) h}
        x = (sigma_next / sigma) * (-eta_h).exp() * x + phi * denoised
        if old_denoised is not None:
            r = h_last / h
            if solver_type == "heun":
                x = x + (phi / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
            else:
                x = x + 0.5 * phi * (1 / r) * (denoised - old_denoised)
        if eta:
            x = x + randn_like(x) * sigma_next * (-torch.expm1(-2 * eta_h)).sqrt() * s_noise
        old_denoised, h_last = denoised, h
    return x


def dpmpp_3m_sde(net, latents, sigmas, class_labels=None, eta: float = 1.0, s_noise: float = 1.0,
                 randn_like: Callable = torch.randn_like, *, clip_denoised: bool = False,
                 callback: Callable | None = None) -> torch.Tensor:
    """DPM-Solver++(3M) SDE (k-diffusion ``sample_dpmpp_3m_sde``, after Lu et al. 2022
    (DPM-Solver++)): the data-prediction SDE step with (1 + eta) h, corrected with the first and
    second divided differences of the last three data predictions (phi_2, phi_3 terms). eta = 0
    is a deterministic 3rd-order multistep solver. NFE = N."""
    check_noise(eta, s_noise)
    sigmas, x = start(net, latents, sigmas)
    denoised_1, denoised_2, h_1, h_2 = None, None, None, None
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        denoised = denoise(net, x, sigma, class_labels, clip_denoised)
        report(callback, i, x, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            break
        h = (sigma / sigma_next).log()
        h_eta = h * (eta + 1)
        x = (-h_eta).exp() * x - torch.expm1(-h_eta) * denoised
        phi_2 = torch.expm1(-h_eta) / h_eta + 1
        if h_2 is not None:
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (denoised - denoised_1) / r0
            d1_1 = (denoised_1 - denoised_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / h_eta - 0.5
            x = x + phi_2 * d1 - phi_3 * d2
        elif h_1 is not None:
            x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
        if eta:
            x = x + randn_like(x) * sigma_next * (-torch.expm1(-2 * h * eta)).sqrt() * s_noise
        denoised_1, denoised_2, h_1, h_2 = denoised, denoised_1, h, h_1
    return x
