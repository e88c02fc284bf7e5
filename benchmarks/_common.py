"""Pieces shared by the benchmark scripts: the machine a figure was measured on, a small stand-in
network, a best-of-N timer, and random weights of realistic scale (samplerkit.testing)."""

from __future__ import annotations

import os
import time

import torch

from samplerkit.testing import random_weights  # noqa: F401 -- one definition, shared with the tests


def machine_info(device: str | torch.device = "cpu") -> dict:
    """What every recorded figure names: CPU model or GPU name, torch threads, CPU count, torch
    version, and the 1/5/15-minute load average when it was taken (other work on the machine)."""
    from samplerkit.speed import machine

    info = machine(device)
    info["cpu_model"] = machine("cpu")["device_name"]
    info["load_average"] = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return info


def machine_line(info: dict) -> str:
    """One line for a benchmark's printout: 'machine: Intel(R) Xeon(R) Processor, 2 threads, torch 2.14.1 ...'."""
    where = info["device_name"] if info["device"] == "cuda" else info["cpu_model"]
    extra = f" (CPU {info['cpu_model']})" if info["device"] == "cuda" else ""
    load = info.get("load_average")
    load_text = f", load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}" if load else ""
    return (f"machine: {where}{extra}, {info['device']}, {info['threads']} torch thread(s) of {info['cpu_count']} "
            f"CPUs, torch {info['torch']}{load_text}")


def print_machine(device: str | torch.device = "cpu") -> dict:
    """Print :func:`machine_line` and return the :func:`machine_info` it came from (to record with the figures)."""
    info = machine_info(device)
    print(machine_line(info), flush=True)
    return info


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
