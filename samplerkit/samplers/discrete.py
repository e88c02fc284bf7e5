"""The discrete-chain samplers in x_t-space: DDIM (Song et al. 2021) and DDPM ancestral sampling
on a respaced chain (Ho et al. 2020, Alg. 2; Nichol & Dhariwal 2021, Sec. 4, Eq. 19).

They start at ``x_T = latents`` in x_t-space (guided-diffusion's convention) and take the chain
as training timesteps of a discrete-time model (``samplerkit.schedules.respace``), as a sigma
grid (any denoiser, abar = 1 / (1 + sigma^2)), or as an integer N: ``respace(T, str(N))`` on a
discrete-time model, :func:`samplerkit.schedules.for_model` (EDM's grid) on a continuous one --
the chain ``samplerkit sample --steps N`` uses.

``callback(dict(i, x, sigma, sigma_hat, denoised))`` runs once per step after its network call:
x is the step's starting point in x_t-space (x_t = sqrt(abar) (y + sigma n)), sigma = sigma_hat
its noise level, denoised the x0 estimate the step uses (clipped when ``clip_denoised``).

``time_shift``: a :class:`samplerkit.remedies.TimeShift` (Li et al. 2024 (TS)) or None (the plain
sampler). Per step it may give each image its own abar for the network call and x0 (``paper``
mode) or its own landing level (``reference`` mode); sigma in the callback is then per image.

``cond_fn(x_t, sigma, class_labels)`` -> s grad_{x_t} log p(y | x_t) (guided-diffusion's ``cond_fn``;
classifier guidance in its ``upstream`` form, :mod:`samplerkit.guidance`) is applied here, as
guided-diffusion does it: DDIM shifts eps by -sqrt(1 - abar) s grad log p after clipping x0
(``condition_score``), the ancestral step shifts the posterior mean by s Sigma grad log p
(``condition_mean``; Sigma = beta~ with fixedsmall, exp(log Sigma) otherwise). Dhariwal & Nichol 2021,
Alg. 1-2. Without it, a denoiser that declares such a term is split into its unguided model and the
term (:func:`samplerkit.denoisers.split_guidance`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..denoisers import split_guidance, training_alpha_bar
from ..diffusion import Chain, alpha_bar_from_sigma, predict_eps_from_x0, predict_x0_from_eps, sigma_from_alpha_bar
from ..errors import SamplerkitError
from ..schedules import for_model, respace
from ._grid import denoise, is_step_count, report, rounded


def chain_alpha_bar(net, steps_or_sigmas) -> torch.Tensor:
    """abar of the chain's timesteps in increasing t (the order :class:`Chain` expects).

    A plain int N: N respaced steps, ``respace(T, str(N))`` on a discrete-time model, else EDM's
    grid of N steps (:func:`samplerkit.schedules.for_model`). An integer tensor or list: training
    timesteps of a discrete model (``samplerkit.schedules.respace``), looked up in its training
    abar. Float input: a descending sigma grid ending in 0, rounded to the model's levels, with
    abar = 1 / (1 + sigma^2); this works for any denoiser.
    """
    if is_step_count(steps_or_sigmas):
        ab, n = training_alpha_bar(net), int(steps_or_sigmas)
        steps_or_sigmas = respace(ab.numel(), str(n)) if ab is not None else for_model(n, net)
    s = torch.as_tensor(steps_or_sigmas)
    if not s.dtype.is_floating_point:
        ab = training_alpha_bar(net)
        if ab is None:
            raise SamplerkitError("timestep indices need a discrete-time model; pass a sigma grid instead")
        ab = ab.to(torch.float64).cpu()
        steps = torch.unique(s.to(torch.int64).flatten())
        if steps.numel() == 0 or int(steps.min()) < 0 or int(steps.max()) >= ab.numel():
            raise SamplerkitError(f"timesteps must lie in [0, {ab.numel() - 1}]")
        return ab[steps]
    sigmas = rounded(net, s)[:-1]
    if bool((sigmas[1:] >= sigmas[:-1]).any()):
        raise SamplerkitError("the sigma grid collapses after rounding to the model's trained levels; use fewer steps")
    return alpha_bar_from_sigma(sigmas).flip(0)


def check_eta(eta: float) -> None:
    if eta < 0:
        raise SamplerkitError(f"eta must be >= 0, got {eta}")


VARIANCES = ("learned", "fixedsmall", "fixedlarge")


def resolve_variance(net, variance: str) -> str:
    """'auto' -> 'learned' when the model has a learned variance (Nichol & Dhariwal 2021, Eq. 15),
    else 'fixedlarge' (guided-diffusion's default); a choice the model cannot serve is an error."""
    learned = bool(getattr(net, "learned_variance", False))
    if variance == "auto":
        return "learned" if learned else "fixedlarge"
    if variance not in VARIANCES:
        raise SamplerkitError(f"unknown variance {variance!r}; use learned, fixedsmall or fixedlarge")
    if variance == "learned" and not learned:
        raise SamplerkitError("variance='learned' needs a model with learned variance; use fixedsmall or fixedlarge")
    return variance


def ddim(net, latents, steps_or_sigmas, class_labels=None, eta: float = 0.0,
         randn_like: Callable = torch.randn_like, clip_denoised: bool = True,
         callback: Callable | None = None, time_shift=None, cond_fn: Callable | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021): x_{t-1} = sqrt(abar') x0 + sqrt(1 - abar' - s^2) eps + s z with
    s = eta sqrt((1 - abar')/(1 - abar)) sqrt(1 - abar/abar'). x0 is clipped to [-1, 1] when
    ``clip_denoised`` and eps re-derived from it, as guided-diffusion does. With eta = 0 and no
    clipping this is Euler on the same sigma grid (Karras et al. 2022 (EDM), Sec. 3). NFE = N."""
    check_eta(eta)
    alpha_bars = chain_alpha_bar(net, steps_or_sigmas).to(latents.device)
    shift = time_shift.bind(net, alpha_bars, "ddim") if time_shift is not None else None
    x = latents.to(torch.float64)  # x_T in x_t-space
    net, cond_fn = split_guidance(net, cond_fn)
    _no_time_shift_with(cond_fn, shift)
    for i, k in enumerate(reversed(range(len(alpha_bars)))):
        ab = alpha_bars[k]
        ab_prev = alpha_bars[k - 1] if k > 0 else torch.ones_like(ab)
        if shift is not None:  # Li et al. 2024 (TS): per-image levels
            ab, ab_prev = shift.levels(i, k, x, ab, ab_prev)
        sigma = sigma_from_alpha_bar(ab)
        x0 = denoise(net, x / ab.sqrt(), sigma.flatten() if sigma.ndim else sigma, class_labels, clip_denoised)
        eps = predict_eps_from_x0(x, ab, x0)
        if cond_fn is not None:  # Dhariwal & Nichol 2021, Alg. 2 (condition_score): eps - sqrt(1 - abar) g
            eps = eps - (1 - ab).sqrt() * cond_fn(x, sigma, class_labels)
            x0 = predict_x0_from_eps(x, ab, eps)
        report(callback, i, x, sigma, sigma, x0)
        # (clamped: 0 where a time shift put the state at or below the next level, see remedies.TimeShift)
        s = eta * ((1 - ab_prev) / (1 - ab)).sqrt() * (1 - ab / ab_prev).clamp(min=0).sqrt()
        z = randn_like(x)
        x = ab_prev.sqrt() * x0 + (1 - ab_prev - s**2).clamp(min=0).sqrt() * eps + (s * z if k > 0 else 0)
    return x


def ancestral(net, latents, steps_or_sigmas, class_labels=None, variance: str = "auto",
              randn_like: Callable = torch.randn_like, clip_denoised: bool = True,
              callback: Callable | None = None, time_shift=None, cond_fn: Callable | None = None) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2; Ning et al. 2023, Alg. 2) on a respaced
    chain (Nichol & Dhariwal 2021, Eq. 19): x_{t-1} = mu~(x_t, x0) + Sigma^(1/2) z, z = 0 at the
    last step. NFE = N.

    ``variance``: 'learned' (Nichol & Dhariwal 2021, Eq. 15, from the same forward pass),
    'fixedsmall' (beta~), 'fixedlarge' (beta), or 'auto' = learned when the model has it, else
    fixedlarge (guided-diffusion's default).
    """
    variance = resolve_variance(net, variance)
    chain = Chain.from_alpha_bar(chain_alpha_bar(net, steps_or_sigmas).to(latents.device))
    shift = time_shift.bind(net, chain.alpha_bar, "ancestral") if time_shift is not None else None
    x = latents.to(torch.float64)  # x_T in x_t-space
    net, cond_fn = split_guidance(net, cond_fn)
    _no_time_shift_with(cond_fn, shift)
    for i, k in enumerate(reversed(range(len(chain)))):
        ab = chain.alpha_bar[k]
        if shift is not None:  # Li et al. 2024 (TS): x is coupled with its own level abar_{t_s}
            ab = shift.levels(i, k, x, ab, chain.alpha_bar_prev[k])[0]
        x_sigma, sigma = x / ab.sqrt(), sigma_from_alpha_bar(ab)
        sigma = sigma.flatten() if sigma.ndim else sigma
        if variance == "learned":
            x0, v = net.denoise_with_variance(x_sigma, sigma, class_labels)
            x0 = x0.to(torch.float64)
        else:
            x0, v = denoise(net, x_sigma, sigma, class_labels), None
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        report(callback, i, x, sigma, sigma, x0)
        if ab.ndim:  # shifted: the posterior from each image's own level to the chain's next one
            mean, log_var = _shifted_posterior(ab.flatten(), chain.alpha_bar_prev[k], x0, x, variance, v)
        else:
            mean = chain.posterior_mean(k, x0, x)
            log_var = chain.log_variance(k, variance, v)
        if cond_fn is not None:  # Dhariwal & Nichol 2021, Alg. 1 (condition_mean): mu + s Sigma g
            var = chain.posterior_variance[k] if variance == "fixedsmall" else torch.exp(log_var)
            mean = mean + var * cond_fn(x, sigma, class_labels)
        z = randn_like(x)
        x = mean + (torch.exp(0.5 * log_var) * z if k > 0 else 0)
    return x


def _no_time_shift_with(cond_fn, shift) -> None:
    if cond_fn is not None and shift is not None:
        raise SamplerkitError("the upstream guidance form does not combine with time_shift; use form 'score'")


def _shifted_posterior(ab_s: torch.Tensor, ab_prev, x0, x, variance: str, v):
    """Mean and log variance of q(x_prev | x_t, x0) when image b sits at level ``ab_s[b]`` and the
    step lands on ``ab_prev`` (Nichol & Dhariwal 2021, Eqs. 11-12, 15, 19 via :class:`Chain`). An
    image at or below the landing level (abar_s >= abar_prev) takes the deterministic DDIM step
    there instead (samplerkit's reading, see :class:`samplerkit.remedies.TimeShift`)."""
    mean, log_var = torch.empty_like(x), torch.empty_like(x)
    for level in torch.unique(ab_s):
        rows = ab_s == level
        if level >= ab_prev:  # no posterior from a level at or below the landing one: DDIM, eta = 0
            eps = predict_eps_from_x0(x[rows], level, x0[rows])
            mean[rows] = ab_prev.sqrt() * x0[rows] + (1 - ab_prev).sqrt() * eps
            log_var[rows] = float("-inf")
            continue
        pair = torch.stack([ab_prev, level]) if float(ab_prev) < 1 else level.reshape(1)
        step = Chain.from_alpha_bar(pair)
        j = len(step) - 1
        mean[rows] = step.posterior_mean(j, x0[rows], x[rows])
        log_var[rows] = step.log_variance(j, variance, v[rows] if v is not None else None).to(x.dtype)
    return mean, log_var
