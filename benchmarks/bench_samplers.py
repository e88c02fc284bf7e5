"""Sampler benchmarks (core issue).

1. Overhead: wall time of each sampler divided by (NFE x time of one denoiser call), measured
   in the same run on a small convolutional eps-network wrapped in DiscreteEpsDenoiser.
   Goal: <= 1.02 for euler/heun/ddim, <= 1.05 for stochastic/ancestral.
2. NFE efficiency on the Gaussian test bed (data N(0.1, 0.5^2) per pixel): the NFE each
   sampler needs for the output distribution to come within a W2 distance of the data
   distribution. Deterministic samplers map the latent affinely, so their output moments are
   exact (two runs); ancestral uses 200k samples.

    python benchmarks/bench_samplers.py [--batch 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from _common import SmallConvNet
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


def nfe_efficiency(targets=(1e-2, 1e-3)) -> None:
    net = GaussianDenoiser(0.1, 0.5, img_channels=1, img_resolution=1)
    zero, one = torch.zeros(1, 1, 1, 1, dtype=torch.float64), torch.ones(1, 1, 1, 1, dtype=torch.float64)

    def affine_w2(run):
        b = float(run(zero))
        a = float(run(one)) - b
        return _w2(b, abs(a))

    def ancestral_w2(N):
        g = torch.Generator().manual_seed(0)
        lat = torch.randn(200_000, 1, 1, 1, generator=g, dtype=torch.float64)
        noise = lambda x: torch.randn(x.shape, generator=g, dtype=x.dtype)  # noqa: E731
        sig = schedules.edm(N)
        out = samplers.ancestral(net, lat, sig, variance="fixedlarge", randn_like=noise, clip_denoised=False)
        return _w2(float(out.mean()), float(out.std()))

    errs = {
        "euler": lambda N: affine_w2(lambda z: samplers.euler(net, z, schedules.edm(N))),
        "heun": lambda N: affine_w2(lambda z: samplers.heun(net, z, schedules.edm(N))),
        "ddim": lambda N: affine_w2(lambda z: samplers.ddim(net, z * 80 / math.sqrt(1 + 80**2), schedules.edm(N),
                                                            clip_denoised=False)),
        "ancestral": ancestral_w2,
    }
    print("NFE to reach a W2 distance to the data distribution (Gaussian test bed, EDM rho=7 grid)")
    for name, err in errs.items():
        row = []
        for target in targets:
            found = None
            for N in [2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 256, 512]:
                if err(N) <= target:
                    found = samplers.nfe(name, N)
                    break
            row.append(f"W2<={target:g}: NFE {found if found is not None else '>512 steps'}")
        print(f"  {name:10s} " + "   ".join(row))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    overhead(args.batch, args.repeats)
    nfe_efficiency()
