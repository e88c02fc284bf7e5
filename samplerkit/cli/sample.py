"""``samplerkit sample``: generate images for a list of seeds, resumably."""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch

from .. import distributed, output
from ..builtin import DEFAULT_MODEL
from ..data import to_uint8
from ..errors import SamplerkitError
from ..generate import SAMPLER_OPTIONS, draw, generate, make_sampler, resolve_labels, with_precision
from ..seeds import parse_seeds
from ._options import chosen_options, load_model, model_options, model_sha256, sampler_options

EXAMPLES = """
\b
Examples:
  samplerkit sample                                        # built-in model, heun 18 steps, seeds 0-63
  samplerkit sample --model adm-imagenet64 --sampler heun --steps 18 --class-labels random
  samplerkit sample --model edm-imagenet64-cond --sampler stochastic --steps 256 \\
      --S-churn 40 --S-min 0.05 --S-max 50 --S-noise 1.003 --seeds 0-49999 --format npz
  samplerkit sample --model 64x64_diffusion.pt --family adm --preset adm-imagenet64 \\
      --sampler ancestral --respacing 250
  torchrun --nproc_per_node 8 -m samplerkit sample --model edm-cifar10-cond-vp --seeds 0-49999
"""

def parse_class_labels(text: str | None):
    if text is None or text == "random":
        return text
    try:
        values = [int(v) for v in parse_seeds(text)] if "-" in text[1:] else [int(v) for v in text.split(",")]
    except (ValueError, SamplerkitError):
        raise SamplerkitError(f"bad --class-labels {text!r}; use random, N or a list like 1,5,7") from None
    return values[0] if len(values) == 1 else values


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SamplerkitError("--device cuda requested but no CUDA device is available")
    return torch.device(name)


@click.command("sample", epilog=EXAMPLES)
@model_options(DEFAULT_MODEL)
@click.option("--sampler", type=click.Choice(list(SAMPLER_OPTIONS)), default="heun", show_default=True)
@click.option("--steps", type=int, default=18, show_default=True, help="Number of steps N (Heun: NFE = 2N - 1).")
@sampler_options
@click.option("--seeds", default="0-63", show_default=True, help="Seeds: ranges and lists, e.g. 0-49999 or 0,5,9-12.")
@click.option("--batch", type=int, default=64, show_default=True, help="Images per network batch.")
@click.option("--class-labels", default=None, help="Conditional models: random (default), N, or one per seed.")
@click.option("--out", type=click.Path(file_okay=False), default="out", show_default=True, help="Output folder.")
@click.option("--format", "fmt", type=click.Choice(["png", "npz", "both"]), default="png", show_default=True)
@click.option("--grid/--no-grid", default=True, show_default=True, help="Write grid.png of the first 64 images.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True,
              help="Network precision (sampler arithmetic stays float64).")
@click.option("--overwrite", is_flag=True, help="Replace outputs written with other settings.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(model, family, flags, preset, sampler, steps, seeds, batch, class_labels, out, fmt, grid, device, dtype,
            overwrite, quiet, **knobs):
    """Sample images from a model; rerun the same command to resume an interrupted run."""
    run_sample(model=model, family=family, flags=flags, preset=preset, sampler=sampler, steps=steps, seeds=seeds,
               batch=batch, class_labels=class_labels, out=out, fmt=fmt, grid=grid, device=device, dtype=dtype,
               overwrite=overwrite, quiet=quiet, options=chosen_options(knobs))


def run_sample(*, model=DEFAULT_MODEL, family=None, flags=(), preset=None, sampler="heun", steps=18, seeds="0-63",
               batch=64, class_labels=None, out="out", fmt="png", grid=True, device="auto", dtype="float32",
               overwrite=False, quiet=False, options=None) -> dict | None:
    """The body of ``samplerkit sample``; returns the manifest (on the main process)."""
    t_start = time.perf_counter()
    seed_list = parse_seeds(seeds)
    if batch < 1:
        raise SamplerkitError(f"--batch must be >= 1, got {batch}")
    dev = pick_device(device)
    labels_spec = parse_class_labels(class_labels)
    out = output.check_writable(out)
    rank, world = distributed.init(dev)
    try:
        net = load_model(model, family, flags, preset, device=dev)
        prepared = make_sampler(net, sampler, steps, **(options or {}))
        labels = resolve_labels(net, labels_spec, len(seed_list))
        label_of_seed = dict(zip(seed_list, labels, strict=True)) if isinstance(labels, list) else None
        model_sha = model_sha256(model) or None
        settings = {"model": str(model), "model_sha256": model_sha, "family": family, "flags": list(flags),
                    "preset": preset, **prepared.settings, "class_labels": labels_spec, "dtype": dtype,
                    "img_resolution": net.img_resolution}
        _check_settings(out, settings, overwrite, world)

        runner = with_precision(net, dtype, dev)
        mine = distributed.shard(seed_list)
        todo = [s for s in mine if not _done(out, s, fmt)]
        bar = _progress(len(mine), len(mine) - len(todo), quiet or rank != 0)
        t_gen = time.perf_counter()
        for chunk, x, _ in generate(runner, prepared, todo, batch, labels, dev, label_of_seed):
            for seed, image in zip(chunk, to_uint8(x), strict=True):
                if fmt == "npz":
                    output.atomic_write(output.part_path(out, seed), output.encode_npy(image))
                else:
                    output.atomic_write(output.png_path(out, seed), output.encode_png(image))
            bar.update(len(chunk))
        bar.close()
        gen_seconds = time.perf_counter() - t_gen
        distributed.barrier()
        if not distributed.is_main():
            return None
        manifest = _finish(out, net, seed_list, labels, label_of_seed, fmt, grid, settings, prepared, dev,
                           len(todo), gen_seconds, time.perf_counter() - t_start, world)
        if not quiet:
            click.echo(f"{len(seed_list)} images ({len(todo)} new) in {out}", err=True)
        return manifest
    finally:
        distributed.cleanup()


def _done(out: Path, seed: int, fmt: str) -> bool:
    if fmt == "npz":
        return output.part_path(out, seed).is_file() or output.png_path(out, seed).is_file()
    return output.png_path(out, seed).is_file()


def _check_settings(out: Path, settings: dict, overwrite: bool, world: int) -> None:
    """Refuse to mix images made with other settings into one folder (unless --overwrite)."""
    import json

    path = out / "settings.json"
    old = json.loads(path.read_text()) if path.is_file() else None
    clean = json.loads(json.dumps(settings, default=str))
    if old is not None and old != clean and not overwrite:
        diff = sorted(k for k in set(old) | set(clean) if old.get(k) != clean.get(k))
        k = diff[0]
        raise SamplerkitError(f"{out} holds images made with other settings ({k}: {old.get(k)!r} there, "
                              f"{clean.get(k)!r} now); use another --out or pass --overwrite")
    distributed.barrier()
    if distributed.is_main():
        output.sweep_temporaries(out)
        if old is not None and old != clean:
            output.clear_outputs(out)
        output.atomic_json(path, clean)
    distributed.barrier()


def _progress(total: int, done: int, disable: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="img", disable=disable, file=sys.stderr, dynamic_ncols=True)


def _labels_for(net, seeds, labels, label_of_seed) -> np.ndarray | None:
    if net.label_dim == 0:
        return None
    if label_of_seed is not None:
        return np.array([label_of_seed[s] for s in seeds], dtype=np.int64)
    if isinstance(labels, int):
        return np.full(len(seeds), labels, dtype=np.int64)
    # random labels are drawn per seed right after the latents, so redrawing reproduces them
    out = []
    for i in range(0, len(seeds), 1024):
        out.append(draw(net, seeds[i : i + 1024], labels, "cpu")[1].numpy())
    return np.concatenate(out)


def _finish(out, net, seeds, labels, label_of_seed, fmt, grid, settings, prepared, dev, new, gen_seconds,
            wall, world) -> dict:
    import samplerkit

    label_array = _labels_for(net, seeds, labels, label_of_seed)
    if grid or fmt in ("npz", "both"):
        first = np.stack([output.read_image(out, s) for s in seeds[: 64 if fmt == "png" else len(seeds)]])
    if grid:
        output.atomic_write(out / "grid.png", output.encode_png(output.grid(first)))
    if fmt in ("npz", "both"):
        h, w = first.shape[1:3]
        output.write_npz(out / f"samples_{len(seeds)}x{h}x{w}x3.npz", first, label_array)
        if fmt == "npz":
            for s in seeds:
                output.part_path(out, s).unlink(missing_ok=True)
    manifest = {
        **settings,
        "nfe_per_image": prepared.nfe,
        "num_images": len(seeds),
        "seeds": seeds,
        "labels": label_array.tolist() if label_array is not None else None,
        "format": fmt,
        "device": str(dev),
        "world_size": world,
        "new_images": new,
        "sampling_seconds": round(gen_seconds, 3),
        "wall_seconds": round(wall, 3),
        "images_per_second": round(new / gen_seconds, 3) if gen_seconds > 0 and new else None,
        "versions": {"samplerkit": samplerkit.__version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
    }
    output.atomic_json(out / "manifest.json", manifest)
    return manifest
