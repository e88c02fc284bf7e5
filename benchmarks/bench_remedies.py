"""Cost of the exposure-bias remedies per image: Epsilon Scaling (Ning et al. 2024 (ES)) and the
Time-Shift sampler (Li et al. 2024 (TS)) against the plain sampler on the same model.

Ratios of time per image, all measured in one process with the runs interleaved (plain, ES, TS,
TS, ES, plain, ...) so that drifting load hits every variant alike; the figure is the median ratio
over the repeats, with the best one beside it. ES: ``ddim`` and ``heun`` with
``eps_scaling(net, 1.005)`` (and a slope, which looks up t per call) vs without; TS: ``ddim`` and
``ancestral`` with ``TimeShift(80, 300)`` (paper mode; the reference mode for ddim too) vs
without. The model is a 32x32 conv eps-network (4 layers, 64 channels) in ``DiscreteEpsDenoiser``
on the cosine schedule with T = 1000. Goal: ES <= 1.01x; TS stated.

Times are CPU seconds of this process (all threads), which other jobs on a shared machine disturb
less than wall time. The overhead alone is also printed: the same pair of runs on a network that
costs nothing (eps = 0), their difference per image as a fraction of the conv network's plain
time per image -- what a remedy adds to every image whatever the network.

    python benchmarks/bench_remedies.py [--batch 64] [--steps 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import TimestepConvNet, print_machine

import samplerkit as sk
from samplerkit import remedies, samplers, schedules
from samplerkit.diffusion import alpha_bar_from_betas, cosine_betas


class ZeroEps(torch.nn.Module):
    """A network that costs nothing: eps = 0."""

    def forward(self, x, t, class_labels=None):
        return torch.zeros_like(x)



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    ab = alpha_bar_from_betas(cosine_betas(1000))
    conv = sk.DiscreteEpsDenoiser(TimestepConvNet(scale=0.1).eval(), ab, img_resolution=32)
    free = sk.DiscreteEpsDenoiser(ZeroEps(), ab, img_resolution=32)
    print_machine()
    print(f"batch {args.batch}, {args.steps} steps, 64-channel 4-layer conv eps-net at 32x32")
    results = {}
    for label, net in (("conv", conv), ("free", free)):
        results[label] = measure(net, args)
    for name, ratios, plain in results["conv"]:
        extra = next(e for n, e, _ in results["free"] if n == name)
        free_plain = next(p for n, _, p in results["free"] if n == name)
        overhead = (statistics.median(extra) - 1) * free_plain / plain
        print(f"{name:22s} median {statistics.median(ratios):.3f}x  best {min(ratios):.3f}x  overhead alone "
              f"{1 + overhead:.4f}x  (plain {1e3 * plain:.2f} CPU ms/image)")


def measure(net, args) -> list[tuple[str, list[float], float]]:
    """(name, ratios remedied / plain over the repeats, plain CPU seconds per image) of every pair."""
    chain = schedules.respace(1000, str(args.steps))
    grid = schedules.edm(args.steps, sigma_min=max(0.002, net.sigma_min), sigma_max=min(80.0, net.sigma_max))
    lat = torch.randn(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    zeros = torch.zeros_like
    es, es_slope = remedies.eps_scaling(net, 1.005), remedies.eps_scaling(net, 1.0, 0.0005, steps=chain)
    paper, reference = remedies.TimeShift(80, 300), remedies.TimeShift(80, 300, "reference")
    # (name, plain run, remedied run)
    pairs = [
        ("ES ddim", lambda: samplers.ddim(net, lat, chain), lambda: samplers.ddim(es, lat, chain)),
        ("ES ddim, slope", lambda: samplers.ddim(net, lat, chain), lambda: samplers.ddim(es_slope, lat, chain)),
        ("ES heun", lambda: samplers.heun(net, lat, grid), lambda: samplers.heun(es, lat, grid)),
        ("TS ddim (paper)", lambda: samplers.ddim(net, lat, chain),
         lambda: samplers.ddim(net, lat, chain, time_shift=paper)),
        ("TS ddim (reference)", lambda: samplers.ddim(net, lat, chain),
         lambda: samplers.ddim(net, lat, chain, time_shift=reference)),
        ("TS ancestral (paper)", lambda: samplers.ancestral(net, lat, chain, randn_like=zeros),
         lambda: samplers.ancestral(net, lat, chain, randn_like=zeros, time_shift=paper)),
    ]

    def timed(fn) -> float:
        t0 = time.process_time()
        with torch.no_grad():
            fn()
        return time.process_time() - t0

    out = []
    for name, plain, remedied in pairs:
        timed(plain), timed(remedied)  # warm-up
        ratios, plain_times = [], []
        for r in range(args.repeats):
            order = (plain, remedied) if r % 2 == 0 else (remedied, plain)
            t = {id(fn): timed(fn) for fn in order}
            ratios.append(t[id(remedied)] / t[id(plain)])
            plain_times.append(t[id(plain)])
        out.append((name, ratios, statistics.median(plain_times) / args.batch))
    return out


if __name__ == "__main__":
    main()
