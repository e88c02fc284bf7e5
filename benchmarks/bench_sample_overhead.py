"""End-to-end overhead of ``samplerkit sample``.

images/s of the command's implementation (``samplerkit.runs.sample_folder``: seed parsing, per-seed generators,
the sampler, uint8 conversion, PNG encoding, atomic writes, resume checks, grid and manifest)
divided by images/s of calling the sampler function directly (``samplerkit.samplers.heun`` on
per-seed latents) on the same model in the same process. The model is a small 32x32 conv
network (4 conv layers, 64 channels) wrapped in ``DiscreteEpsDenoiser``, so the network cost is
realistic for a small model. Goal: ratio >= 0.95 at batch 64.

On a shared machine the wall-clock ratio is noisy (runs alternate A B B A against drifting
load), so the script also reports the ratio of CPU times (this process, all threads: the writer
threads' PNG encoding and fsync count) and the overhead alone: the same two loops on a network
that costs nothing (its eps is 0), whose time difference per image is what the command adds to
every image, as a fraction of the conv network's per-image time.

The command runs under ``--speed exact`` unless told otherwise: the bare loop calls the network as it
is, so only the exact policy compares like with like (``sample`` alone would autotune ``fast``, and the
ratio would then measure the speed policy, not the overhead).

    python benchmarks/bench_sample_overhead.py [--images 256] [--batch 64] [--steps 6] [--repeats 3] [--speed exact]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import TimestepConvNet, print_machine

import samplerkit as sk
from samplerkit.diffusion import alpha_bar_from_betas, cosine_betas
from samplerkit.runs import SampleSettings, sample_folder
from samplerkit.seeds import StackedRandomGenerator


class ZeroEps(torch.nn.Module):
    """A network that costs nothing: eps = 0."""

    def forward(self, x, t, class_labels=None):
        return torch.zeros_like(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--speed", default="exact", help="the command's speed policy (default exact: like for like)")
    args = ap.parse_args()
    print_machine()
    torch.manual_seed(0)
    ab = alpha_bar_from_betas(cosine_betas(1000))
    conv = sk.DiscreteEpsDenoiser(TimestepConvNet().eval(), ab, img_resolution=32)
    free = sk.DiscreteEpsDenoiser(ZeroEps(), ab, img_resolution=32)
    sigmas = sk.schedules.edm(args.steps, sigma_min=max(0.002, conv.sigma_min), sigma_max=min(80.0, conv.sigma_max))
    seeds = list(range(args.images))

    def timed(fn) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process, all threads) of one call."""
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - wall, time.process_time() - cpu

    def direct(net) -> tuple[float, float]:
        def loop():
            with torch.no_grad():
                for i in range(0, len(seeds), args.batch):
                    chunk = seeds[i : i + args.batch]
                    latents = StackedRandomGenerator("cpu", chunk).randn([len(chunk), 3, 32, 32])
                    sk.samplers.heun(net, latents, sigmas)

        return timed(loop)

    def command(net, out: Path) -> tuple[float, float]:
        settings = SampleSettings(model="bench", sampler="heun", steps=args.steps, seeds=f"0-{args.images - 1}",
                                  batch=args.batch, out=out, device="cpu", quiet=True,
                                  speed=args.speed)
        return timed(lambda: sample_folder(settings, net=net))

    direct(conv)  # warm-up
    wall, cpu, extra, per_image = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):  # A B B A order against drifting machine load
            d1, c1, c2, d2 = direct(conv), command(conv, Path(tmp) / f"a{r}"), command(conv, Path(tmp) / f"b{r}"), \
                direct(conv)
            wall.append((d1[0] + d2[0]) / (c1[0] + c2[0]))
            cpu.append((d1[1] + d2[1]) / (c1[1] + c2[1]))
            per_image.append((d1[0] + d2[0]) / (2 * args.images))
            print(f"repeat {r}: direct {2 * args.images / (d1[0] + d2[0]):7.2f} img/s   "
                  f"sample {2 * args.images / (c1[0] + c2[0]):7.2f} img/s   wall ratio {wall[-1]:.3f}   "
                  f"CPU-time ratio {cpu[-1]:.3f}")
            f1, g1, g2, f2 = direct(free), command(free, Path(tmp) / f"f{r}"), command(free, Path(tmp) / f"g{r}"), \
                direct(free)
            extra.append((g1[0] + g2[0] - f1[0] - f2[0]) / (2 * args.images))
    net_seconds, added = statistics.median(per_image), statistics.median(extra)
    print(f"batch {args.batch}, {args.images} images, heun {args.steps} steps (NFE {2 * args.steps - 1}), "
          f"speed {args.speed}; "
          "sample/direct images/s:")
    print(f"  wall clock: {statistics.median(wall):.3f} median of {args.repeats}, {max(wall):.3f} best")
    print(f"  CPU time:   {statistics.median(cpu):.3f} median")
    print(f"  overhead alone: {added * 1e3:.2f} ms per image = {added / net_seconds:.2%} of the conv network's "
          f"{net_seconds * 1e3:.1f} ms per image -> {net_seconds / (net_seconds + added):.3f}")


if __name__ == "__main__":
    main()
