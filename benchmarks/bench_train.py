"""Training cost per iteration by regularizer (training issue).

Time per iteration of `ip` and `y` vs `none` (the IP paper: the same cost; goal <= 1.01x) and
of `gp` vs `none` (the paper reports about 3x), on the `tiny` preset at batch 16, interleaved
repeats in one process so that machine noise hits every variant alike.

    python benchmarks/bench_train.py [--iterations 5] [--repeats 3] [--threads 1]

Measures process CPU time per iteration (one thread, so it is the work done, and other jobs
on a shared machine inflate it far less than wall time) and prints, per variant, the median and
the minimum over repeats and their ratios to `none`; the order of the variants rotates every
round.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from samplerkit.train import TrainConfig, Trainer, network_input, preset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is steadiest on a shared box)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    flags = preset("tiny")["flags"]
    times: dict[str, list[float]] = {r: [] for r in ("none", "ip", "y", "gp")}
    names = list(times)
    for r in range(args.repeats):
        for reg in names[r % len(names):] + names[:r % len(names)]:  # rotate the order every round
            with tempfile.TemporaryDirectory() as out:
                cfg = TrainConfig(data="builtin:shapes32?n=256", out=out, flags=flags, regularizer=reg,
                                  iterations=10**9, batch_size=16, save_interval=10**9)
                trainer = Trainer(cfg)
                trainer.train_step()  # warm-up
                t0 = time.process_time()
                for _ in range(args.iterations):
                    trainer.train_step()
                times[reg].append((time.process_time() - t0) / args.iterations)
    # the inputs alone: what ip / y add to a step is network_input's few elementwise operations
    x0 = torch.rand(16, 3, 32, 32) * 2 - 1
    ab, eps, xi = torch.rand(16), torch.randn_like(x0), torch.randn_like(x0)
    extra = {}
    for reg in ("none", "ip", "y"):
        t0 = time.process_time()
        for _ in range(2000):
            network_input(x0, ab, eps, xi, reg, 0.1)
        extra[reg] = (time.process_time() - t0) / 2000
    med, low = np.median(times["none"]), np.min(times["none"])
    print(f"tiny preset, hybrid loss, batch 16, {args.iterations} iterations x {args.repeats} repeats, "
          f"{args.threads} thread(s), CPU s/iteration")
    for reg, ts in times.items():
        print(f"  {reg:5s} median {np.median(ts):.3f} (x{np.median(ts) / med:.3f})   "
              f"min {np.min(ts):.3f} (x{np.min(ts) / low:.3f})   raw {' '.join(f'{x:.3f}' for x in ts)}")
    for reg in ("ip", "y"):
        print(f"  network input of {reg} vs none: +{(extra[reg] - extra['none']) * 1e6:.0f} us per step = "
              f"x{1 + (extra[reg] - extra['none']) / low:.5f} of the step")


if __name__ == "__main__":
    main()
