"""Pieces shared by the benchmark scripts: a small stand-in network and a best-of-N timer."""

from __future__ import annotations

import time

import torch


class SmallConvNet(torch.nn.Module):
    """eps(x, t) stand-in: three 3x3 convolutions (the timestep is ignored), cheap enough that
    sampler bookkeeping shows up next to it."""

    def __init__(self, ch: int = 64):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, ch, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(ch, ch, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(ch, 3, 3, padding=1),
        )

    def forward(self, x, t, y=None):
        return self.body(x) * 0.1


class TimestepConvNet(torch.nn.Module):
    """eps(x_t, t) stand-in: four 3x3 convolutions, the timestep entering as an extra input
    channel (so a shifted or rescaled timestep changes the output); output scaled by ``scale``."""

    def __init__(self, channels: int = 64, T: int = 1000, scale: float = 1.0):
        super().__init__()
        self.T, self.scale = T, scale
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(4, channels, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(channels, channels, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(channels, channels, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(channels, 3, 3, padding=1),
        )

    def forward(self, x, t, class_labels=None):
        t_map = (t.to(x.dtype) / self.T).reshape(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])
        return self.body(torch.cat([x, t_map], dim=1)) * self.scale


def best_time(fn, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``fn()`` in seconds (the least disturbed run)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)
