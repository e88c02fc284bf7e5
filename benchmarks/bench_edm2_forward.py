"""EDM2 forward (``exact`` vs ``fast``) and the cost of guidance by a second network.

The networks have the architecture of the ImageNet-64 release (``edm2-img64-s``: channel_mult
1,2,3,4, 3 blocks per level, attention at 16 and 8, 64 channels per head) at reduced width --
the main network at ``--width`` (S: 192), the guiding one at 2/3 of it (XS: 128 against S's 192) --
with random weights stored in float16 as the release pickles hold them.

1. D(x; sigma) per image: ``exact`` (upstream's arithmetic: every MPConv normalises its weight at
   every call) against ``fast`` (weights normalised once, SDPA attention), interleaved repeats in one
   process; the figure is the median ratio of CPU times, with the max |D_fast - D_exact|.
2. Guided Heun sampling (``sk.guidance.guided``; ``--steps`` steps, NFE 2N - 1 per network) against
   unguided Heun on the same latents: the evaluations of each network (counted) and the CPU time
   ratio, without and with a guidance interval (evaluations outside it skip the guiding network).
   Expected: 1 + (gnet evaluations / net evaluations) x (gnet cost / net cost).

Times are CPU seconds of this process (all its threads).

    python benchmarks/bench_edm2_forward.py [--width 64] [--batch 2] [--steps 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from _common import print_machine
from samplerkit.adapters import edm2

import samplerkit as sk

INTERVAL = (0.28, 2.9)  # an interval of the size the guidance-interval paper uses


def network(width: int, label_dim: int, seed: int) -> edm2.Precond:
    """A release-shaped EDM2 Precond at ``width``, random weights and gains, parameters in float16."""
    torch.manual_seed(seed)
    net = edm2.Precond(img_resolution=64, img_channels=3, label_dim=label_dim, model_channels=width,
                       channels_per_head=64 if width >= 64 else width, use_fp16=True)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 0:
                p.copy_(0.3 + torch.rand([], generator=g))
    return net.to(torch.float16).eval().requires_grad_(False)


def cpu_seconds(fn) -> float:
    t0 = time.process_time()
    with torch.no_grad():
        fn()
    return time.process_time() - t0


def interleaved(first, second, repeats: int) -> tuple[float, float, float]:
    """(median ratio second / first, best ratio, median first seconds) over alternating repeats."""
    cpu_seconds(first), cpu_seconds(second)  # warm-up
    ratios, firsts = [], []
    for r in range(repeats):
        order = (first, second) if r % 2 == 0 else (second, first)
        t = {id(fn): cpu_seconds(fn) for fn in order}
        ratios.append(t[id(second)] / t[id(first)])
        firsts.append(t[id(first)])
    return statistics.median(ratios), min(ratios), statistics.median(firsts)


def bench_forward(net, batch: int, repeats: int) -> None:
    x = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    sigma, labels = torch.full((batch,), 1.3), torch.arange(batch) % net.label_dim
    fast_net = copy.deepcopy(net).fast()
    exact = lambda: net(x, sigma, labels)  # noqa: E731
    fast = lambda: fast_net(x, sigma, labels)  # noqa: E731
    with torch.no_grad():
        error = (fast() - exact()).abs().max().item()
    median, best, seconds = interleaved(exact, fast, repeats)
    print(f"forward: fast / exact CPU time median {median:.3f}x (best {best:.3f}x); exact {seconds / batch:.3f} "
          f"CPU s/image; max |D_fast - D_exact| = {error:.2e}")


def bench_guided(net, gnet, batch: int, steps: int, repeats: int) -> None:
    latents = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(batch) % net.label_dim
    sigmas = sk.schedules.edm(steps)
    with torch.no_grad():
        x = torch.randn(batch, 3, 64, 64)
        _, _, t_net = interleaved(lambda: net(x, 1.0, labels), lambda: gnet(x, 1.0, labels), repeats)
        _, _, t_gnet = interleaved(lambda: gnet(x, 1.0, labels), lambda: net(x, 1.0, labels), repeats)
    print(f"one call: gnet / net CPU time {t_gnet / t_net:.3f}")
    plain = lambda: sk.samplers.heun(net, latents, sigmas, labels)  # noqa: E731
    for interval in (None, INTERVAL):
        g = sk.guidance.guided(net, gnet, 2.0, interval=interval)
        with torch.no_grad():
            sk.samplers.heun(g, latents, sigmas, labels)
        counts = dict(g.evaluations)
        median, best, seconds = interleaved(plain, lambda g=g: sk.samplers.heun(g, latents, sigmas, labels), repeats)
        expected = 1 + counts["gnet"] / counts["net"] * t_gnet / t_net
        print(f"guided heun {steps} steps, interval {interval}: net {counts['net']} + gnet {counts['gnet']} "
              f"evaluations; CPU time / unguided median {median:.3f}x (best {best:.3f}x, expected {expected:.3f}x); "
              f"unguided {seconds:.2f} CPU s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=64, help="model_channels of the main network (S: 192)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-guided", action="store_true")
    args = ap.parse_args()
    print_machine("cpu")
    net, gnet = network(args.width, 1000, 0), network(args.width * 2 // 3, 1000, 1)
    sizes = [sum(p.numel() for p in n.parameters()) / 1e6 for n in (net, gnet)]
    print(f"EDM2 img64 architecture: net width {args.width} ({sizes[0]:.1f} M params), gnet width "
          f"{args.width * 2 // 3} ({sizes[1]:.1f} M params), float16 parameters, batch {args.batch}, 64x64")
    bench_forward(net, args.batch, args.repeats)
    if not args.skip_guided:
        bench_guided(net, gnet, args.batch, args.steps, args.repeats)


if __name__ == "__main__":
    main()
