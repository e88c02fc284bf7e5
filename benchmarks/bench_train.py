"""Training cost per iteration by regularizer (training issue) and by preconditioning (EDM issue).

Time per iteration of `ip` and `y` vs `none` (the IP paper: the same cost; goal <= 1.01x) and
of `gp` vs `none` (the paper reports about 3x), on the `tiny` preset at batch 16, interleaved
repeats in one process so that machine noise hits every variant alike. With ``--edm``: the
EDM loop (`tiny-edm`, DDPM++ of 1.26 M parameters, EDM's loss) against the ADM loop (`tiny`,
1.37 M parameters, hybrid loss), as an images/s ratio, and `ip` vs `none` on the EDM loop.

    python benchmarks/bench_train.py [--iterations 5] [--repeats 3] [--threads 1] [--edm]

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
    ap.add_argument("--edm", action="store_true", help="EDM loop vs ADM loop, and IP on the EDM loop")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from _common import print_machine

    print_machine()
    if args.edm:
        return edm_vs_adm(args)
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


def edm_vs_adm(args) -> None:
    """images/s of the EDM loop (tiny-edm) vs the ADM loop (tiny) at batch 16, and EDM with ip vs none."""
    import platform

    variants = {
        "adm none": dict(flags=preset("tiny")["flags"], regularizer="none"),
        "edm none": dict(flags=preset("tiny-edm")["flags"], regularizer="none", precond="edm", loss="simple"),
        "edm ip": dict(flags=preset("tiny-edm")["flags"], regularizer="ip", precond="edm", loss="simple"),
    }
    times: dict[str, list[float]] = {v: [] for v in variants}
    names = list(variants)
    params = {}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order every round
            with tempfile.TemporaryDirectory() as out:
                cfg = TrainConfig(data="builtin:shapes32?n=256", out=out, iterations=10**9, batch_size=16,
                                  save_interval=10**9, **variants[name])
                trainer = Trainer(cfg)
                params[name] = sum(p.numel() for p in trainer.model.parameters())
                trainer.train_step()  # warm-up
                t0 = time.process_time()
                for _ in range(args.iterations):
                    trainer.train_step()
                times[name].append((time.process_time() - t0) / args.iterations)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"{cpu}, {args.threads} thread(s), torch {torch.__version__}; batch 16, {args.iterations} iterations x "
          f"{args.repeats} repeats, CPU s/iteration (images/s = 16 / that)")
    for name, ts in times.items():
        print(f"  {name:9s} {params[name] / 1e6:.2f} M params  median {np.median(ts):.3f} s ({16 / np.median(ts):.1f} "
              f"images/s)  min {np.min(ts):.3f}   raw {' '.join(f'{x:.3f}' for x in ts)}")
    edm, adm, ip = (np.median(times[k]) for k in ("edm none", "adm none", "edm ip"))
    low = {k: np.min(v) for k, v in times.items()}
    print(f"  EDM / ADM images/s: x{adm / edm:.3f} (median), x{low['adm none'] / low['edm none']:.3f} (min)")
    print(f"  EDM ip / none time per iteration: x{ip / edm:.4f} (median), "
          f"x{np.min(times['edm ip']) / np.min(times['edm none']):.4f} (min)")
    # what ip adds to a step is the input's few elementwise operations: timed alone, against the step
    from samplerkit.train.edm import EDMObjective

    y = torch.rand(16, 3, 32, 32) * 2 - 1
    sigma, n, xi = torch.rand(16), torch.randn_like(y), torch.randn_like(y)
    extra = {}
    for reg in ("none", "ip"):
        objective = EDMObjective("edm", reg, 0.1)
        t0 = time.process_time()
        for _ in range(2000):
            objective.network_input(y, sigma, n, xi)
        extra[reg] = (time.process_time() - t0) / 2000
    print(f"  network input of ip vs none (EDM): +{(extra['ip'] - extra['none']) * 1e6:.0f} us per step = "
          f"x{1 + (extra['ip'] - extra['none']) / low['edm none']:.5f} of the step")


if __name__ == "__main__":
    main()
