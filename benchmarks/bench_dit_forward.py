"""Forward throughput of samplerkit's DiT (``adapters/dit.py``) under its attention backends.

DiT-XL/2 at 256x256 by default (28 blocks, hidden 1152, 16 heads, patch 2, 32x32x4 latents, learned
sigma, 1000 classes + null; 675 M parameters), random weights of realistic scale. Variants, timed
interleaved in one process on the same network and inputs (round-robin, best of ``--repeats``):

* ``exact`` -- attention as the upstream code computes it with the timm of its release
  (softmax((q d^-1/2) k^T) v in float32), bit for bit the upstream network output;
* ``sdpa``  -- torch's scaled_dot_product_attention (``--speed attention=sdpa``); max error vs exact shown.

The comparison with upstream ``DiT.forward`` on the same weights and inputs is made outside the
repository (the upstream code is not installable): :func:`make_inputs` and :func:`time_interleaved`
are importable for that. The figures only mean something with the machine, printed first.
Usage: ``python benchmarks/bench_dit_forward.py [--arch DiT-XL/2] [--image-size 256] [--batch 1]
[--repeats 3] [--threads N] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _common import machine_line, print_machine, random_weights
from samplerkit.adapters import dit

VARIANTS = ("exact", "sdpa")


def make_network(arch: str, image_size: int, num_classes: int = 1000) -> dit.DiT:
    """The arch's network with random weights (learned-sigma head, null-label row), eval, no grad."""
    depth, hidden, heads = dit.SIZES[arch.split("-")[1].split("/")[0]]
    patch = int(arch.rsplit("/", 1)[1])
    net = dit.DiT(image_size // dit.VAE_DOWNSAMPLE, patch, 4, hidden, depth, heads, 8, num_classes + 1)
    pos = net.pos_embed.detach().clone()
    random_weights(net)
    with torch.no_grad():
        net.pos_embed.copy_(pos)  # the fixed sin-cos table, as in the released weights
    return net.eval().requires_grad_(False)


def make_inputs(net: dit.DiT, batch: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents x [B, 4, h, w], integer timesteps t [B] and labels y [B] (seeded)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, net.in_channels, net.input_size, net.input_size, generator=g)
    return x, torch.randint(0, 1000, (batch,), generator=g), torch.randint(0, net.label_rows - 1, (batch,), generator=g)


def time_interleaved(calls: dict, repeats: int, clock=time.perf_counter) -> dict[str, float]:
    """Seconds of the fastest of ``repeats`` calls of each ``calls[name]()``, run round-robin after one warm-up
    round (so load from other work on the machine spreads over all of them). ``clock``: wall time
    (``time.perf_counter``) or the process's CPU time (``time.process_time``, the steadier figure when
    other work shares the CPUs)."""
    best = {name: float("inf") for name in calls}
    for r in range(repeats + 1):
        for name, fn in calls.items():
            t0 = clock()
            fn()
            if r:
                best[name] = min(best[name], clock() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="DiT-XL/2", choices=[a for a in dit.ARCHS if a.startswith("DiT")])
    parser.add_argument("--image-size", type=int, default=256, help="pixels; latents are image_size // 8")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up round (best)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--cpu-time", action="store_true", help="time CPU seconds of the process, not wall time")
    parser.add_argument("--json", default=None, help="write the figures and the machine to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = print_machine("cpu")
    net = make_network(args.arch, args.image_size)
    x, t, y = make_inputs(net, args.batch)

    def run(backend):
        def call():
            net.set_attention_backend(backend)
            with torch.no_grad():
                return net(x, t, y)
        return call

    calls = {v: run("einsum" if v == "exact" else v) for v in VARIANTS}
    exact = calls["exact"]().double()
    errors = {v: float((calls[v]().double() - exact).abs().max()) for v in VARIANTS}
    seconds = time_interleaved(calls, args.repeats, time.process_time if args.cpu_time else time.perf_counter)
    latent = f"{net.input_size}x{net.input_size}x4 latents"
    print(f"\n{args.arch} forward at {args.image_size}x{args.image_size} ({latent}), batch {args.batch}, "
          f"best of {args.repeats}, {'CPU' if args.cpu_time else 'wall'} seconds")
    print(machine_line(info))
    print(f"{'variant':<10}{'seconds':>10}{'images/s':>10}{'vs exact':>10}{'max error':>11}")
    for v in VARIANTS:
        print(f"{v:<10}{seconds[v]:>10.3f}{args.batch / seconds[v]:>10.3f}{seconds['exact'] / seconds[v]:>10.2f}"
              f"{errors[v]:>11.1e}")
    if args.json:
        rows = {v: {"seconds": seconds[v], "speed_ratio": seconds["exact"] / seconds[v], "max_error": errors[v]}
                for v in VARIANTS}
        Path(args.json).write_text(json.dumps({"machine": info, "arch": args.arch, "image_size": args.image_size,
                                               "batch": args.batch, "repeats": args.repeats,
                                               "clock": "cpu" if args.cpu_time else "wall", "variants": rows},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
