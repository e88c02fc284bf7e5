"""End-to-end overhead of ``samplerkit sample`` (sample issue).

images/s of the command's implementation (model loading excluded, PNG encoding, atomic writes,
manifest, grid and bookkeeping included) divided by images/s of calling the sampler directly
on the same model in the same process loop. Goal: >= 0.95 at batch 64 on a small network.

    python benchmarks/bench_sample_overhead.py [--images 128] [--batch 64] [--steps 6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import samplerkit as sk
from adapters.adm import create_unet
from samplerkit.cli.sample import run_sample
from samplerkit.generate import generate, make_sampler

FLAGS = dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
             num_head_channels=16, learn_sigma=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    ckpt = tmp / "net.pt"
    torch.save(create_unet(**FLAGS).state_dict(), ckpt)
    flags = {**FLAGS, "noise_schedule": "cosine"}
    net = sk.load(ckpt, family="adm", **flags)
    prepared = make_sampler(net, "heun", args.steps)
    seeds = list(range(args.images))
    cli_flags = tuple(f"{k}={v}" for k, v in flags.items())

    def direct():
        with torch.no_grad():
            for _ in generate(net, prepared, seeds, args.batch):
                pass

    ratios = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        direct()
        t_direct = time.perf_counter() - t0
        out = tmp / f"out{r}"
        t0 = time.perf_counter()
        run_sample(model=str(ckpt), family="adm", flags=cli_flags, sampler="heun", steps=args.steps,
                   seeds=f"0-{args.images - 1}", batch=args.batch, out=out, quiet=True, device="cpu")
        t_cli = time.perf_counter() - t0
        ratios.append(t_direct / t_cli)
        print(f"repeat {r}: direct {args.images / t_direct:.2f} img/s, sample {args.images / t_cli:.2f} img/s, "
              f"ratio {t_direct / t_cli:.3f}")
    print(f"ratio (sample / direct images/s): median {sorted(ratios)[len(ratios) // 2]:.3f}, best {max(ratios):.3f}")


if __name__ == "__main__":
    main()
