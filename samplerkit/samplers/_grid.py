"""What every sampler does with its noise levels before the first step."""

from __future__ import annotations

import math

import torch

from ..errors import SamplerkitError


def check_sigmas(sigmas) -> torch.Tensor:
    """``sigmas`` as float64, checked: N + 1 >= 2 finite levels, strictly decreasing, ending in 0."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if sigmas.numel() < 2 or float(sigmas[-1]) != 0.0:
        raise SamplerkitError("sigmas must hold N + 1 >= 2 noise levels ending in 0 (see samplerkit.schedules)")
    if bool((sigmas[:-1] <= 0).any()) or bool((sigmas[1:] >= sigmas[:-1]).any()) or not math.isfinite(sigmas[0]):
        raise SamplerkitError("sigmas must be finite, positive and strictly decreasing before the final 0")
    return sigmas


def rounded(net, sigmas) -> torch.Tensor:
    """The grid rounded to the model's trained levels (EDM: ``net.round_sigma``), last entry 0."""
    sigmas = check_sigmas(sigmas)
    head = torch.as_tensor(net.round_sigma(sigmas[:-1]), dtype=torch.float64).reshape(-1).cpu()
    return torch.cat([head, sigmas.new_zeros(1)])


def denoise(net, x: torch.Tensor, sigma, class_labels) -> torch.Tensor:
    """D(x; sigma) in float64, whatever dtype the network runs in."""
    return net(x, sigma, class_labels).to(torch.float64)
