"""Training cost per iteration by regularizer (training issue).

Time per iteration of `ip` and `y` vs `none` (the IP paper: the same cost; goal <= 1.01x) and
of `gp` vs `none` (the paper reports about 3x), on the `tiny` preset at batch 16, interleaved
repeats in one process so that machine noise hits every variant alike.

    python benchmarks/bench_train.py [--iterations 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from samplerkit.train import TrainConfig, Trainer, preset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    flags = preset("tiny")["flags"]
    times: dict[str, list[float]] = {r: [] for r in ("none", "ip", "y", "gp")}
    for _ in range(args.repeats):
        for reg in times:
            cfg = TrainConfig(data="builtin:shapes32?n=256", out=tempfile.mkdtemp(), flags=flags, regularizer=reg,
                              iterations=10**9, batch_size=16, save_interval=10**9)
            trainer = Trainer(cfg)
            trainer.train_step()  # warm-up
            t0 = time.perf_counter()
            for _ in range(args.iterations):
                trainer.train_step()
            times[reg].append((time.perf_counter() - t0) / args.iterations)
    base = np.median(times["none"])
    print(f"tiny preset, batch 16, {args.iterations} iterations x {args.repeats} repeats (median s/iteration)")
    for reg, ts in times.items():
        print(f"  {reg:5s} {np.median(ts):.3f} s/it   ratio vs none {np.median(ts) / base:.3f}")


if __name__ == "__main__":
    main()
