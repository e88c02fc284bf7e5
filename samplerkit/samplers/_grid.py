"""What every sampler does with its noise levels before the first step, and the one way it calls
the network."""

from __future__ import annotations

import math
import numbers

import torch

from .. import schedules
from ..errors import SamplerkitError


def is_step_count(steps) -> bool:
    """True for a plain integer (``heun(net, lat, 18)``): a number of steps, not a grid or a timestep."""
    return isinstance(steps, numbers.Integral) and not isinstance(steps, bool)


def check_sigmas(sigmas) -> torch.Tensor:
    """``sigmas`` as float64, checked: N + 1 >= 2 finite levels, strictly decreasing, ending in 0."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if sigmas.numel() < 2 or float(sigmas[-1]) != 0.0:
        raise SamplerkitError("sigmas must hold N + 1 >= 2 noise levels ending in 0 (see samplerkit.schedules)")
    if bool((sigmas[:-1] <= 0).any()) or bool((sigmas[1:] >= sigmas[:-1]).any()) or not math.isfinite(sigmas[0]):
        raise SamplerkitError("sigmas must be finite, positive and strictly decreasing before the final 0")
    return sigmas


def rounded(net, sigmas) -> torch.Tensor:
    """The grid rounded to the model's trained levels (EDM: ``net.round_sigma``), last entry 0.

    An integer N stands for :func:`samplerkit.schedules.for_model` (EDM's rho = 7 grid of N steps
    over the model's range, what ``samplerkit sample --steps N`` uses by default).
    """
    if is_step_count(sigmas):
        sigmas = schedules.for_model(int(sigmas), net)
    sigmas = check_sigmas(sigmas)
    head = torch.as_tensor(net.round_sigma(sigmas[:-1]), dtype=torch.float64).reshape(-1).cpu()
    return torch.cat([head, sigmas.new_zeros(1)])


def denoise(net, x: torch.Tensor, sigma, class_labels, clip_denoised: bool = False) -> torch.Tensor:
    """D(x; sigma) in float64, whatever dtype the network runs in; clamped to [-1, 1] when
    ``clip_denoised``."""
    D = net(x, sigma, class_labels).to(torch.float64)
    return D.clamp(-1, 1) if clip_denoised else D


def start(net, latents, sigmas) -> tuple[torch.Tensor, torch.Tensor]:
    """The rounded grid on the latents' device and the first state ``latents * sigma_0`` in
    float64: where every sigma-space sampler begins (EDM Alg. 1-2, line 2)."""
    sigmas = rounded(net, sigmas).to(latents.device)
    return sigmas, latents.to(torch.float64) * sigmas[0]


def report(callback, i: int, x, sigma, sigma_hat, denoised) -> None:
    """k-diffusion's step callback: ``callback({'i', 'x', 'sigma', 'sigma_hat', 'denoised'})``."""
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})
