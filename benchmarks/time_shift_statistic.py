"""Which timestep the Time-Shift sampler's statistic picks (Li et al. 2024 (TS), Alg. 3), on states
with and without exposure bias, on the built-in shapes32-adm.

Alg. 3 couples a state x at chain timestep t with t_s = argmin |Var(x) - (1 - abar_tau)| over a window
of tau around t (Var over the pixels of one image). For a state made by the forward process,
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, the expectation of that variance is
abar_t Var(x0) + (1 - abar_t) (plus the image's mean-offset terms), so the statistic equals 1 - abar_t only
for images of zero pixel variance; for real images it asks for a noisier tau (abar_tau about
abar_t (1 - Var(x0))) before any exposure bias. This script measures how far that moves t_s:

* ``forward``: x_t from the forward process on data-set images (no exposure bias at all);
* ``sampled``: the states of the plain sampler's own chain (ancestral, learned variance, x0 clipped --
  the remedies benchmark's sampler), each step's x coupled as the Time-Shift step would couple it.

Per chain timestep above the cutoff: mean t_s - t, the share of images at the window's top (t + w/2),
and the mean statistic against 1 - abar_t. CSV + one summary line per row.

    python benchmarks/time_shift_statistic.py --steps 100 --window 80 --cutoff 300 --images 200 \\
        --csv benchmarks/results/time-shift-statistic.csv
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np
import torch
from _common import machine_line, print_machine

import samplerkit as sk
from samplerkit.data import shapes, to_model_space
from samplerkit.remedies import TimeShift
from samplerkit.samplers.discrete import ancestral, chain_alpha_bar
from samplerkit.seeds import StackedRandomGenerator


def coupled_timesteps(bound, full: torch.Tensor, i: int, k: int, x: torch.Tensor, ab, ab_prev) -> torch.Tensor:
    """The training timestep the Time-Shift step couples each image of ``x`` with (t itself when unshifted)."""
    level = bound.levels(i, k, x, ab, ab_prev)[0]
    level = torch.as_tensor(level, dtype=torch.float64).flatten().expand(x.shape[0])
    return (level.reshape(-1, 1) - full.reshape(1, -1)).abs().argmin(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes32-adm")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--window", type=int, default=80)
    p.add_argument("--cutoff", type=int, default=300)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="first sampling seed; data images are 0 .. images-1")
    p.add_argument("--csv", default="benchmarks/results/time-shift-statistic.csv")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    info = print_machine()
    net = sk.load(args.model).eval()
    full = net.training_alpha_bar().to(torch.float64)
    chain = chain_alpha_bar(net, args.steps).to(torch.float64)
    bound = TimeShift(args.window, args.cutoff).bind(net, chain, "ancestral")
    timesteps = bound.timesteps
    x0 = to_model_space(shapes(np.arange(args.images))[0]).to(torch.float64)
    print(f"data: mean per-image pixel variance {float(x0.flatten(1).var(1).mean()):.4f} (model space [-1, 1])")

    rows: dict[int, dict] = {}
    gen = torch.Generator().manual_seed(1)
    for i, k in enumerate(reversed(range(len(chain)))):  # forward states at each chain timestep
        t = int(timesteps[k])
        if t <= args.cutoff or i == 0:
            continue
        ab = chain[k]
        x = ab.sqrt() * x0 + (1 - ab).sqrt() * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        t_s = coupled_timesteps(bound, full, i, k, x, ab, chain[k - 1])
        rows[t] = {"t": t, "one_minus_abar_t": float(1 - ab), "forward_var": float(x.flatten(1).var(1).mean()),
                   "forward_shift": float((t_s - t).double().mean()),
                   "forward_at_top": float((t_s == min(t + args.window // 2, full.numel() - 1)).double().mean())}

    sampled: dict[int, list] = {}

    def record(d):
        i, x = d["i"], d["x"]
        k = len(chain) - 1 - i
        t = int(timesteps[k])
        if t in rows:
            t_s = coupled_timesteps(bound, full, i, k, x, chain[k], chain[k - 1])
            sampled[t] = [float(x.flatten(1).var(1).mean()), float((t_s - t).double().mean()),
                          float((t_s == min(t + args.window // 2, full.numel() - 1)).double().mean())]

    rnd = StackedRandomGenerator("cpu", list(range(args.seed, args.seed + args.images)))
    latents = rnd.randn([args.images, net.img_channels, net.img_resolution, net.img_resolution])
    labels = torch.as_tensor(np.arange(args.images) % net.label_dim) if net.label_dim else None
    with torch.no_grad():
        ancestral(net, latents, args.steps, labels, variance="auto", randn_like=rnd.randn_like, callback=record)
    for t, (var, shift, top) in sampled.items():
        rows[t].update(sampled_var=var, sampled_shift=shift, sampled_at_top=top)

    out = Path(args.csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = ["t", "one_minus_abar_t", "forward_var", "forward_shift", "forward_at_top", "sampled_var",
              "sampled_shift", "sampled_at_top", "model", "steps", "window", "cutoff", "images", "machine"]
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for t in sorted(rows, reverse=True):
            r = {**rows[t], "model": args.model, "steps": args.steps, "window": args.window, "cutoff": args.cutoff,
                 "images": args.images, "machine": machine_line(info)}
            w.writerow({k: (f"{v:.5g}" if isinstance(v, float) else v) for k, v in r.items()})
            print(f"t {t:4d}: 1-abar {r['one_minus_abar_t']:.4f}  forward Var {r['forward_var']:.4f} "
                  f"t_s-t {r['forward_shift']:+6.1f} (top {r['forward_at_top']:.0%})  sampled Var "
                  f"{r.get('sampled_var', float('nan')):.4f} t_s-t {r.get('sampled_shift', float('nan')):+6.1f} "
                  f"(top {r.get('sampled_at_top', float('nan')):.0%})")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
