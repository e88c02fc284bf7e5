"""Forward throughput of the ADM ImageNet-64 UNet (guided-diffusion ``64x64_diffusion.pt`` architecture)
under each network-execution variant of :mod:`samplerkit.speed`.

Full width by default (192 channels, 3 blocks, attention at 32/16/8 with 64-channel heads,
resblock_updown, new attention order, learned sigma, class-conditional), random weights. Each
variant runs in its own process so that its peak resident memory (``ru_maxrss``) is its own:

* ``exact``                     float32, attention as the upstream code writes it (einsum + float32 softmax)
* ``sdpa``                      float32, torch's scaled_dot_product_attention
* ``channels_last``             float32, einsum attention, weights in channels_last memory format
* ``sdpa+channels_last``        both
* ``sdpa+channels_last+bf16``   both, under autocast to bfloat16 (on CUDA also ``...+fp16``)

The speed ratio of a variant is its images/s over ``exact``'s (on a CPU also per CPU-second of the
process, the steadier figure when other work shares the machine); ``max error`` is max |out - out_exact|
over the network output of the same input (the tolerance of ``--speed fast`` is 1e-3). The figures
only mean something with the machine they were measured on, which the script prints first.
Usage: ``python benchmarks/bench_adm_forward.py [--batch 8] [--repeats 2] [--threads N] [--device auto]
[--channels 192] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import time
from pathlib import Path

import torch
from _common import machine_line, print_machine, random_weights

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
VARIANTS = {
    "exact": dict(),
    "sdpa": dict(attention="sdpa"),
    "channels_last": dict(memory_format="channels_last"),
    "sdpa+channels_last": dict(attention="sdpa", memory_format="channels_last"),
    "sdpa+channels_last+bf16": dict(attention="sdpa", memory_format="channels_last", autocast="bfloat16"),
    "sdpa+channels_last+fp16": dict(attention="sdpa", memory_format="channels_last", autocast="float16"),
}


def run_variant(variant: str, flags: dict, batch: int, repeats: int, threads: int | None, device: str, queue) -> None:
    from samplerkit.adapters import adm

    from samplerkit import speed

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = random_weights(adm.create_unet(**flags)).eval().requires_grad_(False).to(device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 64, 64, generator=g).to(device)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    y = torch.randint(0, 1000, (batch,), generator=g).to(device)
    with torch.no_grad():
        exact = net(x, t, y).double().cpu()
        run = speed.apply(net, speed.Policy(**VARIANTS[variant]), torch.device(device).type)
        out = run(x, t, y)  # warm-up
        error = float((out.double().cpu() - exact).abs().max())
        times, cpu_times = [], []
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            start, cpu_start = time.perf_counter(), time.process_time()
            run(x, t, y)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    memory = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    rate = batch / statistics.median(times)
    cpu_rate = batch / statistics.median(cpu_times) if device == "cpu" else rate
    queue.put((rate, memory, error, cpu_rate))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1, help="images per forward pass (default 1)")
    parser.add_argument("--repeats", type=int, default=1, help="timed forward passes after one warm-up (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--channels", type=int, default=None, help="num_channels (default 192, the released model)")
    parser.add_argument("--variants", default=None, help="comma-separated subset of the variants")
    parser.add_argument("--json", default=None, help="write the figures and the machine to this file")
    args = parser.parse_args()

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    flags = dict(FLAGS, **({"num_channels": args.channels} if args.channels else {}))
    if args.threads:
        torch.set_num_threads(args.threads)
    info = print_machine(device)
    names = args.variants.split(",") if args.variants else [v for v in VARIANTS if device == "cuda" or "fp16" not in v]
    ctx = mp.get_context("spawn")
    results = {}
    for variant in names:
        queue = ctx.Queue()
        proc = ctx.Process(target=run_variant,
                           args=(variant, flags, args.batch, args.repeats, args.threads, device, queue))
        proc.start()
        results[variant] = queue.get()
        proc.join()
        speed_, mem, err, cpu_speed = results[variant]
        print(f"  {variant}: {speed_:.3f} images/s, {cpu_speed:.3f} images per CPU-second, peak {mem:.0f} MiB, "
              f"max error {err:.1e}", flush=True)

    base_speed, base_mem, _, base_cpu = results.get("exact", next(iter(results.values())))
    print(f"\nADM ImageNet-64 forward ({flags['num_channels']} channels), {device}, batch {args.batch}, "
          f"{args.repeats} timed repeat(s)")
    print(machine_line(info))
    print(f"{'variant':<26}{'images/s':>10}{'speed ratio':>13}{'CPU-time ratio':>16}{'peak MiB':>10}"
          f"{'mem ratio':>11}{'max error':>11}")
    for variant, (speed_, mem, err, cpu_speed) in results.items():
        print(f"{variant:<26}{speed_:>10.3f}{speed_ / base_speed:>13.2f}{cpu_speed / base_cpu:>16.2f}{mem:>10.0f}"
              f"{mem / base_mem:>11.2f}{err:>11.1e}")
    if args.json:
        rows = {v: {"images_per_second": s, "speed_ratio": s / base_speed, "cpu_time_ratio": c / base_cpu,
                    "peak_mib": m, "max_error": e}
                for v, (s, m, e, c) in results.items()}
        Path(args.json).write_text(json.dumps({"machine": info, "batch": args.batch, "flags": flags,
                                               "repeats": args.repeats, "variants": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
