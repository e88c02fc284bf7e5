"""Forward throughput of the ADM ImageNet-64 UNet (guided-diffusion ``64x64_diffusion.pt`` architecture) on CPU.

Full width (192 channels, 3 blocks, attention at 32/16/8 with 64-channel heads, resblock_updown,
new attention order, learned sigma, class-conditional), random weights. Each variant runs in its
own process so its peak resident memory (``ru_maxrss``) is its own:

* ``reference``      float32, attention as the upstream code writes it (einsum + float32 softmax)
* ``sdpa``           float32, torch's scaled_dot_product_attention
* ``channels_last``  float32, sdpa, weights and input in channels_last memory format
* ``bf16_autocast``  channels_last + sdpa under torch.autocast("cpu", dtype=torch.bfloat16) (bf16 convs
  in the default contiguous layout are ~100x slower on CPUs without native bf16)

Prints images/s and peak memory per variant and their ratios to ``reference``.
Usage: ``python benchmarks/bench_adm_forward.py [--batch 8] [--repeats 2] [--threads N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import resource
import time

import torch

FLAGS = dict(
    image_size=64,
    num_channels=192,
    num_res_blocks=3,
    attention_resolutions="32,16,8",
    num_head_channels=64,
    resblock_updown=True,
    use_new_attention_order=True,
    learn_sigma=True,
    class_cond=True,
    use_scale_shift_norm=True,
)
VARIANTS = ("reference", "sdpa", "channels_last", "bf16_autocast")


def run_variant(variant: str, batch: int, repeats: int, threads: int | None, queue) -> None:
    from samplerkit.adapters import adm

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = adm.create_unet(**FLAGS).eval().requires_grad_(False)
    net.set_attention_backend("einsum" if variant == "reference" else "sdpa")
    x = torch.randn(batch, 3, 64, 64)
    t = torch.randint(0, 1000, (batch,))
    y = torch.randint(0, 1000, (batch,))
    if variant in ("channels_last", "bf16_autocast"):
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if variant == "bf16_autocast" else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        net(x, t, y)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            net(x, t, y)
        seconds = (time.perf_counter() - start) / repeats
    queue.put((batch / seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1, help="images per forward pass (default 1)")
    parser.add_argument("--repeats", type=int, default=1, help="timed forward passes after one warm-up")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    results = {}
    for variant in args.variants.split(","):
        queue = ctx.Queue()
        proc = ctx.Process(target=run_variant, args=(variant, args.batch, args.repeats, args.threads, queue))
        proc.start()
        results[variant] = queue.get()
        proc.join()
        print(f"  {variant}: {results[variant][0]:.3f} images/s, peak RSS {results[variant][1]:.0f} MiB", flush=True)

    base_speed, base_mem = results.get("reference", next(iter(results.values())))
    print(f"\nADM ImageNet-64 forward, CPU, batch {args.batch}, {args.repeats} timed repeat(s)")
    print(f"{'variant':<16}{'images/s':>10}{'speed ratio':>13}{'peak MiB':>10}{'mem ratio':>11}")
    for variant, (speed, mem) in results.items():
        print(f"{variant:<16}{speed:>10.3f}{speed / base_speed:>13.2f}{mem:>10.0f}{mem / base_mem:>11.2f}")


if __name__ == "__main__":
    main()
