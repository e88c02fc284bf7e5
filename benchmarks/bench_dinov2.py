"""DINOv2 ViT-L/14 feature throughput (FD_DINOv2's detector): samplerkit ``exact`` vs ``fast``.

A ViT-L/14 with random weights in the released layout (``_common.random_weights``, seed 0: no download),
uint8 64x64 images (seed 0) through EDM2's preprocessing (``resize_mode="torch"``: bicubic antialiased
resize to 224, ImageNet normalization) and the network, at one batch size:

* ``exact``: attention by ``scaled_dot_product_attention``, as the released backbone computes it today;
* ``fast``: the same with a channels-last patch embedding.

Each variant is warmed up once, then timed once per round, rounds interleaved; the figure is the best
round (features/s) and the ratio fast/exact per round (median), in wall time and in CPU time of the
process (with one torch thread the CPU time leaves out the waits that other jobs on a shared machine
cause). The max |fast - exact| relative to the feature scale is printed too. The upstream hub model
cannot be imported from here; time it on the same weights and images outside the repository (see
benchmarks/README.md, *FD_DINOv2*).

Run: ``python benchmarks/bench_dinov2.py [--images 8] [--batch 8] [--rounds 2] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import print_machine, random_weights  # noqa: E402

from samplerkit.metrics import dinov2 as dino  # noqa: E402


def vit_l14(seed: int = 0) -> dino.VisionTransformer:
    """ViT-L/14 in dinov2_vitl14's layout (1024-d, 24 blocks, 16 heads, 518 px position grid), random weights."""
    return random_weights(dino.VisionTransformer(), seed).eval().requires_grad_(False)


def test_images(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def run(images: int, batch: int, rounds: int) -> dict:
    torch.set_num_threads(1)
    info = print_machine("cpu")
    model, x = vit_l14(), test_images(images)
    variants = {speed: dino.DINOv2(model, batch_size=batch, speed=speed) for speed in dino.SPEEDS}
    feats = {speed: ex(x) for speed, ex in variants.items()}  # warm-up pass, and the outputs compared
    error = float(np.abs(feats["fast"] - feats["exact"]).max() / np.abs(feats["exact"]).max())
    times: dict[str, list[float]] = {speed: [] for speed in variants}
    cpu: dict[str, list[float]] = {speed: [] for speed in variants}
    for _ in range(rounds):
        for speed, ex in variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            ex(x)
            times[speed].append(time.perf_counter() - t0)
            cpu[speed].append(time.process_time() - c0)
    out = {"machine": info, "images": images, "batch": batch, "rounds": rounds, "resolution_in": 64,
           "features_per_s": {s: images / min(t) for s, t in times.items()},
           "features_per_cpu_s": {s: images / min(t) for s, t in cpu.items()}, "seconds": times, "cpu_seconds": cpu,
           "fast_over_exact_median": _median_ratio(times["exact"], times["fast"]),
           "fast_over_exact_cpu_median": _median_ratio(cpu["exact"], cpu["fast"]),
           "fast_max_rel_error": error}
    for s in variants:
        print(f"{s:5s}: {out['features_per_s'][s]:.3f} features/s wall, {out['features_per_cpu_s'][s]:.3f} per CPU "
              f"second (best of {rounds} rounds of {images} images, batch {batch})")
    print(f"fast / exact: {out['fast_over_exact_median']:.3f}x wall, {out['fast_over_exact_cpu_median']:.3f}x CPU "
          f"(medians per round); max |fast - exact| / max |exact| = {error:.1e}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    out = run(args.images, args.batch, args.rounds)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
