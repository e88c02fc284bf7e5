"""Exposure-bias harness benchmark.

Throughput in NFE/s of the delta_t chain (:func:`samplerkit.exposure.ddpm_mean_chain`, Ning et
al. 2023, Alg. 4) against the plain sampler loop (:func:`samplerkit.samplers.ancestral`) on the same model
and the same chain length, measured in the same run and interleaved so both see the same machine
noise; both without clipping x0_hat. The model is a small convolutional eps-network wrapped in
DiscreteEpsDenoiser (T = 1000, linear betas). Goal: ratio >= 0.95. Also prints the cost model of a
Tab. 6 run (NFE = sum of t x images) and the time it predicts at the measured rate.

    python benchmarks/bench_exposure.py [--batch 32] [--steps 50] [--repeats 5] [--threads 1] [--channels 64]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import SmallConvNet, print_machine

import samplerkit as sk
from samplerkit import diffusion, exposure, samplers


def main(batch: int, steps: int, repeats: int, channels: int = 64) -> None:
    torch.manual_seed(0)
    ab = torch.as_tensor(diffusion.alpha_bar_from_betas(diffusion.linear_betas(1000)))
    net = sk.DiscreteEpsDenoiser(SmallConvNet(channels).eval(), ab, img_channels=3, img_resolution=32)
    x0 = torch.rand(batch, 3, 32, 32, dtype=torch.float64) * 2 - 1
    x_t = diffusion.q_sample(x0, ab[steps - 1], torch.randn_like(x0))
    timesteps = torch.arange(steps)
    nfe = steps * batch
    runs = {
        "ancestral": lambda: samplers.ancestral(net, x_t, timesteps, variance="fixedsmall", clip_denoised=False),
        "chain": lambda: exposure.ddpm_mean_chain(net, x_t, steps, ab, clip_denoised=False),
    }
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        for run in runs.values():  # warm-up
            run()
        for i in range(repeats):  # paired and interleaved, alternating which goes first
            for name in (("ancestral", "chain") if i % 2 == 0 else ("chain", "ancestral")):
                t0 = time.perf_counter()
                runs[name]()
                seconds[name].append(time.perf_counter() - t0)
    ratios = sorted(a / c for a, c in zip(seconds["ancestral"], seconds["chain"], strict=True))
    sampler, chain = nfe / min(seconds["ancestral"]), nfe / min(seconds["chain"])
    print(f"delta_t chain vs samplers.ancestral, batch {batch}, chain length {steps}, {repeats} paired runs, "
          f"{torch.get_num_threads()} threads")
    print(f"  ancestral (reference)  {sampler:9.1f} NFE/s (best)")
    print(f"  ddpm_mean_chain        {chain:9.1f} NFE/s (best)   ratio of bests {chain / sampler:.3f}")
    print(f"  paired ratio chain/ancestral throughput: median {ratios[len(ratios) // 2]:.3f} "
          f"(min {ratios[0]:.3f}, max {ratios[-1]:.3f})  goal >= 0.95")
    t_values, images = (100, 300, 600, 1000), 10_000
    total = sum(t_values) * images
    print(f"cost model of Tab. 6 (t = {', '.join(map(str, t_values))}; {images:,d} images): "
          f"{total:,d} NFE -> {total / chain / 3600:.1f} h at the measured rate on this network")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--channels", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print_machine()
    main(args.batch, args.steps, args.repeats, args.channels)
