"""``torch.compile`` (inductor) on the network forwards samplerkit runs: compile seconds against the
per-call gain, and the break-even number of network calls.

For each family a release-shaped network with random weights (width reduced by ``--width`` so that
a 2-core CPU can measure it; the release widths are in the comment of each builder) is timed

* eager under ``exact`` (upstream arithmetic) and under the best eager ``fast`` variant on this
  machine (sdpa attention and/or channels_last, the ones :mod:`samplerkit.speed` measures),
* compiled: the first call (compilation included, with an empty inductor cache, so the figure is a
  cold start; a second run of the same shapes reads the cache and starts in seconds), then per call.

Break-even = compile seconds / (eager seconds per call - compiled seconds per call): the number of
network calls at this batch size from which compiling pays. A sample run of N images with a sampler
of NFE F at batch B makes N·F/B calls (50,000 images of Heun 18, NFE 35, batch 64: 27,344 calls).
Times are CPU seconds of this process at one torch thread (steadier than wall time on a shared
machine), compilation included (inductor compiles in-process here, one compile thread); each family
runs in its own process (peak memory and inductor state its own).

    python benchmarks/bench_compile.py [--families adm64,edm,edm2,dit] [--width 64] [--batch 8]
                                       [--repeats 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time

import torch
from _common import machine_info, machine_line, random_weights


def build_adm64(width: int):
    """guided-diffusion's ImageNet-64 UNet (release: 192 channels)."""
    from samplerkit.adapters import adm

    net = random_weights(adm.create_unet(image_size=64, num_channels=width, num_res_blocks=3,
                                         attention_resolutions="32,16,8",
                                         num_head_channels=64 if width >= 64 else width,
                                         resblock_updown=True, use_new_attention_order=True, learn_sigma=True,
                                         class_cond=True, use_scale_shift_norm=True))
    return net, lambda g, b: (torch.randn(b, 3, 64, 64, generator=g), torch.randint(0, 1000, (b,), generator=g),
                              torch.randint(0, 1000, (b,), generator=g))


def build_edm(width: int):
    """EDM's CIFAR-10 DDPM++ (SongUNet, release: 128 channels, 32x32, class-conditional)."""
    from samplerkit.adapters.edm.networks import SongUNet

    net = random_weights(SongUNet(img_resolution=32, in_channels=3, out_channels=3, label_dim=10,
                                  model_channels=width, channel_mult=(2, 2, 2), embedding_type="positional",
                                  encoder_type="standard", decoder_type="standard", resample_filter=(1, 1)))

    def inputs(g, b):
        return (torch.randn(b, 3, 32, 32, generator=g), torch.rand(b, generator=g),
                torch.nn.functional.one_hot(torch.randint(0, 10, (b,), generator=g), 10).float())
    return net, inputs


def build_edm2(width: int):
    """EDM2's ImageNet-64 Precond (release S: 192 channels), parameters in float32 on CPU."""
    from samplerkit.adapters import edm2

    net = edm2.Precond(img_resolution=64, img_channels=3, label_dim=1000, model_channels=width,
                       channels_per_head=64 if width >= 64 else width, use_fp16=False)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 0:
                p.copy_(0.3 + torch.rand([], generator=g))
    return net, lambda g, b: (torch.randn(b, 3, 64, 64, generator=g), torch.rand(b, generator=g) * 10 + 0.01,
                              torch.randint(0, 1000, (b,), generator=g))


def build_dit(width: int):
    """DiT-S/2 on 256-pixel images (32x32 latents; the zoo's XL/2 is 1152 wide, 28 deep)."""
    from samplerkit.adapters import dit

    depth, hidden, heads = dit.SIZES["S"]
    net = dit.DiT(32, 2, 4, hidden, depth, heads, 8, 1001)
    pos = net.pos_embed.detach().clone()
    random_weights(net)
    with torch.no_grad():
        net.pos_embed.copy_(pos)
    return net, lambda g, b: (torch.randn(b, 4, 32, 32, generator=g), torch.randint(0, 1000, (b,), generator=g),
                              torch.randint(0, 1000, (b,), generator=g))


FAMILIES = {"adm64": build_adm64, "edm": build_edm, "edm2": build_edm2, "dit": build_dit}


def cpu_call(fn, args) -> float:
    start = time.process_time()
    fn(*args)
    return time.process_time() - start


def eager_best(net, args, repeats: int) -> tuple[str, float]:
    """(policy, seconds per call) of the fastest eager variant samplerkit's ``fast`` would consider."""
    from samplerkit import speed

    best = None
    for policy in speed.candidates(net, torch.device("cpu")):
        if policy.autocast != "none" or policy.exact:
            continue
        run = speed.apply(net, policy, "cpu")
        run(*args)
        seconds = statistics.median(cpu_call(run, args) for _ in range(repeats))
        if best is None or seconds < best[1]:
            best = (policy.describe(), seconds)
    speed.apply(net, speed.EXACT, "cpu")
    return best or ("exact", float("nan"))


def measure(family: str, width: int, batch: int, repeats: int, queue) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net, make_inputs = FAMILIES[family](width)
    net = net.eval().requires_grad_(False)
    args = make_inputs(torch.Generator().manual_seed(1), batch)
    with torch.no_grad():
        reference = net(*args)
        net(*args)
        eager = statistics.median(cpu_call(net, args) for _ in range(repeats))
        fast_policy, fast = eager_best(net, args, repeats)
        compiled = torch.compile(net)
        wall = time.perf_counter()
        first = cpu_call(compiled, args)
        first_wall = time.perf_counter() - wall
        per_call = statistics.median(cpu_call(compiled, args) for _ in range(repeats))
        error = float((compiled(*args) - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
    compile_seconds = first - per_call
    gain = eager - per_call
    queue.put(dict(family=family, width=width, batch=batch, params=sum(p.numel() for p in net.parameters()),
                   eager_exact_s=eager, eager_fast_policy=fast_policy, eager_fast_s=fast, compiled_s=per_call,
                   compile_cpu_s=compile_seconds, compile_wall_s=first_wall, speedup_vs_exact=eager / per_call,
                   speedup_vs_fast=fast / per_call, relative_error=error,
                   break_even_calls=compile_seconds / gain if gain > 0 else None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="adm64,edm,edm2,dit")
    parser.add_argument("--width", type=int, default=64, help="channels of the UNets (release: 128-192)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = machine_info()
    print(machine_line(info), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # cold compile: nothing cached from earlier runs
        os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"  # compile in-process, so its CPU seconds are counted
        for family in args.families.split(","):
            queue = mp.get_context("spawn").Queue()
            proc = mp.get_context("spawn").Process(target=measure,
                                                   args=(family, args.width, args.batch, args.repeats, queue))
            proc.start()
            row = queue.get()
            proc.join()
            rows.append(row)
            even = f"{row['break_even_calls']:.0f}" if row["break_even_calls"] else "never"
            print(f"{family:6s} batch {row['batch']:3d} {row['params'] / 1e6:6.1f}M params: eager exact "
                  f"{row['eager_exact_s']:.3f} s, eager {row['eager_fast_policy']} {row['eager_fast_s']:.3f} s, "
                  f"compiled {row['compiled_s']:.3f} s/call ({row['speedup_vs_exact']:.2f}x exact, "
                  f"{row['speedup_vs_fast']:.2f}x fast); compile {row['compile_cpu_s']:.0f} CPU-s "
                  f"({row['compile_wall_s']:.0f} s wall); break-even {even} calls; "
                  f"rel. error {row['relative_error']:.1e}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
