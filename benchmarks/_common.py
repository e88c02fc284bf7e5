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


def best_time(fn, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``fn()`` in seconds (the least disturbed run)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)
