"""Sampler benchmarks (core issue).

1. Overhead: wall time of each sampler divided by (NFE x time of one denoiser call), measured
   in the same run on a small convolutional eps-network wrapped in DiscreteEpsDenoiser.
   Goal: <= 1.02 for euler/heun/ddim, <= 1.05 for stochastic/ancestral.
2. NFE efficiency on the Gaussian test bed (data N(0.1, 0.5^2) per pixel): the NFE each
   sampler needs for the output distribution to come within a W2 distance of the data
   distribution. Every sampler maps the latent and its noise draws affinely, so the output
   distribution is known exactly from one batched run (see :func:`exact_w2`); no sampling error.

    python benchmarks/bench_samplers.py [--batch 64] [--repeats 3] [--only overhead|nfe]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from _common import SmallConvNet, print_machine
from samplerkit.adapters.analytic import GaussianDenoiser

import samplerkit as sk
from samplerkit import diffusion, samplers, schedules


def overhead(batch: int, repeats: int, steps: int = 10) -> None:
    torch.manual_seed(0)
    ab = diffusion.alpha_bar_from_betas(diffusion.linear_betas(1000))
    net = sk.DiscreteEpsDenoiser(SmallConvNet().eval(), ab, img_channels=3, img_resolution=32)
    lat = torch.randn(batch, 3, 32, 32)
    x = lat.double() * 10
    sigma = torch.full((batch,), 10.0, dtype=torch.float64)
    runs = {
        "euler": (lambda: samplers.euler(net, lat, schedules.edm(steps, 0.01, 80)), steps),
        "heun": (lambda: samplers.heun(net, lat, schedules.edm(steps, 0.01, 80)), 2 * steps - 1),
        "ddim": (lambda: samplers.ddim(net, lat, schedules.respace(1000, str(steps))), steps),
        "stochastic": (lambda: samplers.stochastic(net, lat, schedules.edm(steps, 0.01, 80), S_churn=10),
                       2 * steps - 1),
        "ancestral": (lambda: samplers.ancestral(net, lat, schedules.respace(1000, str(steps))), steps),
    }
    with torch.no_grad():
        for _ in range(3):
            net(x, sigma)
        print(f"sampler overhead, batch {batch}, {steps} steps, ratio = sampler time / (NFE x one call)")
        for name, (fn, nfe) in runs.items():
            ratios = []
            for _ in range(repeats):  # interleave reference and sampler to share machine noise
                t0 = time.perf_counter()
                for _ in range(nfe):
                    net(x, sigma)
                call = (time.perf_counter() - t0) / nfe
                t0 = time.perf_counter()
                fn()
                ratios.append((time.perf_counter() - t0) / (nfe * call))
            print(f"  {name:10s} NFE {nfe:3d}  ratio {min(ratios):.3f} (median {sorted(ratios)[len(ratios) // 2]:.3f})")


def _w2(mean, std, mu=0.1, s=0.5):
    return math.sqrt((mean - mu) ** 2 + (std - s) ** 2)


STEP_COUNTS = [2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512]

# (row label, sampler, knobs); every sampler at its defaults, plus the variants worth a row
NFE_RUNS = [(name, name, {}) for name in samplers.SAMPLERS] + [
    ("ancestral (fixed small)", "ancestral", {"variance": "fixedsmall"}),
    ("euler_ancestral (eta 0)", "euler_ancestral", {"eta": 0.0}),
    ("dpmpp_2m_sde (heun)", "dpmpp_2m_sde", {"solver_type": "heun"}),
    ("dpmpp_3m_sde (eta 0)", "dpmpp_3m_sde", {"eta": 0.0}),
    ("lms (order 2)", "lms", {"order": 2}),
    ("unipc (bh2)", "unipc", {"variant": "bh2"}),
    ("unipc (order 3)", "unipc", {"order": 3}),
    ("unipc (order 3, bh2)", "unipc", {"order": 3, "variant": "bh2"}),
    ("ipndm (order 2)", "ipndm", {"order": 2}),
]


def exact_w2(net, name: str, N: int, **knobs) -> float:
    """W2 between the output distribution and the data N(0.1, 0.5^2), exactly.

    With a Gaussian data set D(x; sigma) is affine in x, so every sampler's output is affine in
    the latent z and the per-step noises xi_k: out = c + a z + sum_k b_k xi_k, a Gaussian with mean
    c and variance a^2 + sum_k b_k^2. One batched run reads off c, a and every b_k: row 0 has
    z = 0 and no noise, row 1 z = 1, row 2 + k unit noise at draw k only.
    """
    info = samplers.SAMPLERS[name]
    sigmas = schedules.edm(N)
    rows = 2 + 2 * N  # room for up to two draws per step
    z = torch.zeros(rows, 1, 1, 1, dtype=torch.float64)
    z[1] = 1.0
    draws = iter(range(rows))

    def unit_noise(x):
        k = next(draws)
        xi = torch.zeros_like(x)
        xi[2 + k] = 1.0
        return xi

    if info.grid == "chain":  # x_t-space start at the same point as the sigma-space samplers
        z = z * float(sigmas[0]) / math.sqrt(1 + float(sigmas[0]) ** 2)
        knobs = {"clip_denoised": False, **knobs}
    kw = {"randn_like": unit_noise} if info.stochastic else {}
    out = getattr(samplers, name)(net, z, sigmas, **knobs, **kw).flatten()
    c, a, b = float(out[0]), float(out[1] - out[0]), out[2:] - out[0]
    return _w2(c, math.sqrt(a**2 + float((b**2).sum())))


def nfe_efficiency(targets=(1e-2, 1e-3)) -> list[tuple[str, list]]:
    net = GaussianDenoiser(0.1, 0.5, img_channels=1, img_resolution=1)
    print("NFE to reach a W2 distance to the data distribution N(0.1, 0.5^2) (EDM rho = 7 grid, sigma 0.002-80)")
    table = []
    for label, name, knobs in NFE_RUNS:
        errors = [exact_w2(net, name, N, **knobs) for N in STEP_COUNTS]
        row = []
        for target in targets:  # the fewest steps from which on every listed count stays within the target
            within = [e <= target for e in errors]
            first = next((k for k in range(len(within)) if all(within[k:])), None)
            row.append(samplers.nfe(name, STEP_COUNTS[first]) if first is not None else None)
        table.append((label, row))
        cells = "   ".join(f"W2<={t:g}: NFE {f if f is not None else '> 512 steps'}"
                           for t, f in zip(targets, row, strict=True))
        print(f"  {label:26s} {cells}", flush=True)
    return table


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["overhead", "nfe"], default=None, help="Run one of the two parts.")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print_machine()
    if args.only != "nfe":
        overhead(args.batch, args.repeats)
    if args.only != "overhead":
        nfe_efficiency()
