"""Images on the 8-bit grid and the conversion of nats to bits/dim (see :mod:`samplerkit.likelihood`)."""

from __future__ import annotations

import math

import torch

from ..errors import SamplerkitError

LN2 = math.log(2.0)
BIN_WIDTH = 2.0 / 255.0  # one 8-bit level in [-1, 1]
BITS_OFFSET = math.log2(1.0 / BIN_WIDTH)  # log2(127.5): density -> probability of an 8-bit bin


def check_images(x0: torch.Tensor) -> torch.Tensor:
    """x0 as float64 after checking it is [B, C, H, W] in [-1, 1] on the 8-bit grid k / 127.5 - 1."""
    x0 = torch.as_tensor(x0)
    if x0.ndim != 4 or x0.shape[0] == 0 or not x0.dtype.is_floating_point:
        raise SamplerkitError(f"likelihood needs float images [B, C, H, W], got shape {tuple(x0.shape)} ({x0.dtype})")
    x = x0.to(torch.float64)
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - 1e-6 or hi > 1 + 1e-6 or not math.isfinite(lo + hi):
        raise SamplerkitError(f"likelihood needs images in [-1, 1] (uint8 / 127.5 - 1), "
                              f"got values in [{lo:.4g}, {hi:.4g}]")
    level = (x + 1) * 127.5
    if float((level - level.round()).abs().max()) > 1e-3:
        raise SamplerkitError("likelihood needs images on the 8-bit grid (uint8 / 127.5 - 1); "
                              "these values lie between 8-bit levels")
    return x


def mean_over_dims(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


