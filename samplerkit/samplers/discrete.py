"""The discrete-chain samplers in x_t-space: DDIM (Song et al. 2021) and DDPM ancestral sampling
on a respaced chain (Ho et al. 2020, Alg. 2; Nichol & Dhariwal 2021, Sec. 4, Eq. 19).

They start at ``x_T = latents`` in x_t-space (guided-diffusion's convention) and take the chain
either as training timesteps of a discrete-time model (``samplerkit.schedules.respace``) or as
a sigma grid (any denoiser, abar = 1 / (1 + sigma^2)).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..denoisers import training_alpha_bar
from ..diffusion import Chain, alpha_bar_from_sigma, predict_eps_from_x0, sigma_from_alpha_bar
from ..errors import SamplerkitError
from ._grid import denoise, rounded


def chain_alpha_bar(net, steps_or_sigmas) -> torch.Tensor:
    """abar of the chain's timesteps in increasing t (the order :class:`Chain` expects).

    Integer input: training timesteps of a discrete model (``samplerkit.schedules.respace``),
    looked up in ``net.alphas_cumprod``. Float input: a descending sigma grid ending in 0, rounded
    to the model's levels, with abar = 1 / (1 + sigma^2); this works for any denoiser.
    """
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
         randn_like: Callable = torch.randn_like, clip_denoised: bool = True) -> torch.Tensor:
    """DDIM (Song et al. 2021): x_{t-1} = sqrt(abar') x0 + sqrt(1 - abar' - s^2) eps + s z with
    s = eta sqrt((1 - abar')/(1 - abar)) sqrt(1 - abar/abar'). x0 is clipped to [-1, 1] when
    ``clip_denoised`` and eps re-derived from it, as guided-diffusion does. With eta = 0 and no
    clipping this is Euler on the same sigma grid (edm.txt Sec. 3)."""
    check_eta(eta)
    alpha_bars = chain_alpha_bar(net, steps_or_sigmas).to(latents.device)
    x = latents.to(torch.float64)  # x_T in x_t-space
    for k in reversed(range(len(alpha_bars))):
        ab = alpha_bars[k]
        ab_prev = alpha_bars[k - 1] if k > 0 else torch.ones_like(ab)
        x0 = denoise(net, x / ab.sqrt(), sigma_from_alpha_bar(ab), class_labels)
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
    variance = resolve_variance(net, variance)
    chain = Chain.from_alpha_bar(chain_alpha_bar(net, steps_or_sigmas).to(latents.device))
    x = latents.to(torch.float64)  # x_T in x_t-space
    for k in reversed(range(len(chain))):
        ab = chain.alpha_bar[k]
        x_sigma, sigma = x / ab.sqrt(), sigma_from_alpha_bar(ab)
        if variance == "learned":
            x0, v = net.denoise_with_variance(x_sigma, sigma, class_labels)
            x0 = x0.to(torch.float64)
        else:
            x0, v = denoise(net, x_sigma, sigma, class_labels), None
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        mean = chain.posterior_mean(k, x0, x)
        log_var = chain.log_variance(k, variance, v)
        z = randn_like(x)
        x = mean + (torch.exp(0.5 * log_var) * z if k > 0 else 0)
    return x
