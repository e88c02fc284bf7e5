"""``samplerkit sample``: images for a list of seeds, resumable and shardable across processes.

Seed s gives the same image whatever the batch size or number of processes (per-seed
generators, as EDM's ``generate.py``). Each image is written atomically as soon as it is made;
rerunning the same command skips the seeds whose files exist, so an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import re
import shutil
import sys
import time
from functools import partial
from pathlib import Path

import click
import numpy as np
import torch

from .. import distributed, output
from ..builtin import DEFAULT_MODEL
from ..data import to_uint8
from ..denoisers import DenoiserWrapper
from ..errors import SamplerkitError
from ..generate import draw, generate, make_sampler, resolve_labels, with_precision
from ..samplers import SAMPLERS
from ..seeds import parse_seeds
from ._options import (
    chosen_options,
    load_model,
    model_options,
    model_sha256,
    parse_flags,
    resolve_sampler,
    sampler_options,
)

FORMATS = ("png", "npz", "both")
DTYPES = ("float32", "float16", "bfloat16")

EXAMPLES = """
\b
Examples:
  samplerkit sample                                    # built-in model, its recommended sampler, seeds 0-63 -> out/
  samplerkit sample --model adm-imagenet64 --sampler ancestral --respacing 250 --class-labels random
  samplerkit sample --model edm-imagenet64-cond --sampler stochastic --steps 256 \\
      --S-churn 40 --S-min 0.05 --S-max 50 --S-noise 1.003 --seeds 0-49999 --format npz
  samplerkit sample --model edm-cifar10-cond-vp --disc vp --schedule vp --scaling vp   # EDM Fig. 2 ablation
  samplerkit sample --model 64x64_diffusion.pt --family adm --preset adm-imagenet64 --sampler ddim --steps 50
  torchrun --standalone --nproc_per_node 8 -m samplerkit sample --model edm-cifar10-cond-vp --seeds 0-49999
\b
Rerun the same command to resume; a folder holding images made with other settings is refused
unless --overwrite. Outputs: 000000/000123.png (folders of 1000), samples_NxHxWxC.npz (arr_0
uint8 NHWC, arr_1 labels), grid.png, manifest.json.
"""


def parse_class_labels(text: str | None) -> str | int | list[int] | None:
    """None / 'random' / 'N' / a list like '1,5,7' or '0-3,7' (repeats allowed)."""
    if text is None or text.strip() == "random":
        return None if text is None else "random"
    values: list[int] = []
    for part in text.split(","):
        span = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", part)
        try:
            values.extend(range(int(span[1]), int(span[2]) + 1) if span else [int(part)])
        except ValueError:
            raise SamplerkitError(f"bad --class-labels {text!r}; use random, a class N or a list like 1,5,7") from None
        if span and int(span[2]) < int(span[1]):
            raise SamplerkitError(f"bad --class-labels {text!r}: the range {part.strip()} is empty")
    return values[0] if len(values) == 1 else values


def pick_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise SamplerkitError(f"unknown device {name!r}; use auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise SamplerkitError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return torch.device(name)


@click.command("sample", epilog=EXAMPLES)
@model_options(DEFAULT_MODEL)
@click.option("--sampler", type=click.Choice(list(SAMPLERS)), default=None,
              help="euler/heun/stochastic: EDM Alg. 1-2; ddim; ancestral: iDDPM respaced DDPM. "
                   "[default: the model's recommended sampler (`samplerkit models info`), else heun]")
@click.option("--steps", type=int, default=None,
              help="Number of steps N (Heun: NFE = 2N - 1). [default: the recommended count, else 18]")
@sampler_options
@click.option("--seeds", default="0-63", show_default=True, help="Seeds: ranges and lists, e.g. 0-49999 or 0,5,9-12.")
@click.option("--batch", type=int, default=64, show_default=True, help="Images per network batch.")
@click.option("--class-labels", default=None,
              help="Conditional models: random (default), a class N, or one per seed (e.g. 0,1,2,3).")
@click.option("--out", default="out", show_default=True, help="Output folder (created if needed).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="png", show_default=True,
              help="Per-seed PNGs, the evaluator's npz, or both.")
@click.option("--grid/--no-grid", default=True, show_default=True, help="Write grid.png of the first 64 images.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True,
              help="Precision of the network (autocast); the sampler arithmetic stays float64.")
@click.option("--overwrite", is_flag=True, help="Replace the outputs of a run made with other settings in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar and no summary line.")
def command(model, family, flags, preset, sampler, steps, seeds, batch, class_labels, out, fmt, grid, device, dtype,
            overwrite, quiet, **knobs):
    """Sample images from a model; rerun the same command to resume an interrupted run."""
    run_sample(model=model, family=family, flags=flags, preset=preset, sampler=sampler, steps=steps,
               options=chosen_options(knobs), seeds=seeds, batch=batch, class_labels=class_labels, out=out, fmt=fmt,
               grid=grid, device=device, dtype=dtype, overwrite=overwrite, quiet=quiet)


def run_sample(
    *, model: str | None = None, net=None, family: str | None = None, flags: tuple[str, ...] = (),
    preset: str | None = None, sampler: str | None = None, steps: int | None = None, options: dict | None = None,
    seeds: str = "0-63", batch: int = 64, class_labels: str | None = None, out: str | Path = "out",
    fmt: str = "png", grid: bool = True, device: str = "auto", dtype: str = "float32", overwrite: bool = False,
    quiet: bool = False,
) -> dict | None:
    """The body of ``samplerkit sample``; returns the manifest on rank 0 (None on other ranks).

    ``model`` defaults to the built-in default model. ``net``: an already loaded denoiser to use
    instead of loading ``model`` (which then only names it in the manifest). ``options``: sampler knobs by their
    :func:`~samplerkit.generate.sampler_options` names; only these reach the sampler. ``sampler`` /
    ``steps`` left as None: the model's recommended settings (:func:`resolve_sampler`).
    """
    t_start = time.perf_counter()
    seed_list = parse_seeds(seeds)
    if batch < 1:
        raise SamplerkitError(f"--batch must be >= 1, got {batch}")
    if fmt not in FORMATS:
        raise SamplerkitError(f"unknown format {fmt!r}; use png, npz or both")
    if dtype not in DTYPES:
        raise SamplerkitError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
    dev = pick_device(device)
    labels_spec = parse_class_labels(class_labels)
    flag_values = parse_flags(flags)
    out = output.check_writable(out)

    joined_already = distributed.is_initialized()  # e.g. called from a training script: leave its group alone
    rank, world = distributed.init(dev)
    try:
        dev = distributed.local_device(dev)
        if net is None:
            model = model or DEFAULT_MODEL
            net = load_model(model, family, flags, preset, device=dev)
            sha = model_sha256(model) or None
        else:
            model, sha = str(model or type(net).__name__), None
        guard = _FiniteGuard(with_precision(net, dtype, dev))
        sampler, steps, options = resolve_sampler(model, sampler, steps, options or {})
        prepared = make_sampler(guard, sampler, steps, **options)
        labels = resolve_labels(net, labels_spec, len(seed_list))
        label_of_seed = dict(zip(seed_list, labels, strict=True)) if isinstance(labels, list) else None
        settings = _plain({
            "model": model, "model_sha256": sha, "family": family, "flags": flag_values, "preset": preset,
            **prepared.settings, "class_labels": labels, "dtype": dtype, "device_type": dev.type,
            "image_shape": [net.img_channels, net.img_resolution, net.img_resolution],
        })
        new_total = _prepare_folder(out, settings, overwrite, fmt, seed_list)

        mine = distributed.shard(seed_list)
        todo = [s for s in mine if not _done(out, s, fmt)]
        bar = _progress(len(mine), len(mine) - len(todo), quiet or rank != 0 or not todo,
                        f"rank 0 of {world}" if world > 1 else "sampling")
        t_gen = time.perf_counter()
        made = 0
        try:
            with output.FileWriter(max_pending=max(2 * batch, 64)) as writer:
                for chunk, x, _ in generate(guard, prepared, todo, batch, labels, dev, label_of_seed):
                    for seed, image in zip(chunk, to_uint8(x), strict=True):
                        if fmt == "npz":
                            writer.submit(output.part_path(out, seed), partial(output.encode_npy, image))
                        else:
                            writer.submit(output.png_path(out, seed), partial(output.encode_png, image))
                    made += len(chunk)
                    guard.calls = 0
                    bar.update(len(chunk))
        except _NonFinite as e:
            bad = [todo[made + i] for i in e.rows][:8]
            raise SamplerkitError(
                f"non-finite values in the network output for seed(s) {bad} at network evaluation {e.call} of "
                f"{prepared.nfe} (sigma = {e.sigma:.4g}); try --dtype float32 or other sampler settings") from None
        finally:
            bar.close()
        distributed.barrier()
        gen_seconds = time.perf_counter() - t_gen
        if not distributed.is_main():
            return None
        manifest = _finish(out, net, seed_list, seeds, labels, label_of_seed, fmt, grid, settings, prepared, dev,
                           world, new_total, gen_seconds, time.perf_counter() - t_start)
        if not quiet:
            files = [manifest["npz"]] if fmt == "npz" else [
                f"{output.png_path('', seed_list[0]).as_posix()} ... {output.png_path('', seed_list[-1]).as_posix()}"]
            files += ([manifest["npz"]] if fmt == "both" else []) + (["grid.png"] if grid else []) + ["manifest.json"]
            click.echo(f"{len(seed_list)} images ({new_total} new) in {out}/: {', '.join(files)}")
        return manifest
    finally:
        if not joined_already:
            distributed.cleanup()


class _NonFinite(Exception):
    def __init__(self, rows: list[int], call: int, sigma: float):
        super().__init__(rows, call, sigma)
        self.rows, self.call, self.sigma = rows, call, sigma


class _FiniteGuard(DenoiserWrapper):
    """The denoiser, stopping at the first network evaluation whose output is not finite (to
    name the step where NaN/Inf appeared)."""

    def __init__(self, net):
        super().__init__(net)
        self.calls = 0

    def denoise_with_variance(self, x, sigma, class_labels=None):
        D, v = super().denoise_with_variance(x, sigma, class_labels)
        self.calls += 1
        finite = torch.isfinite(D.flatten(1).sum(dim=1, dtype=torch.float64))  # NaN/Inf survive the sum
        if not bool(finite.all()):
            s = float(torch.as_tensor(sigma, dtype=torch.float64).flatten()[0])
            raise _NonFinite((~finite).nonzero().flatten().tolist(), self.calls, s)
        return D, v


def _plain(obj):
    """Settings as plain JSON (no Infinity/NaN, tuples as lists) so that they compare after a reload."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


def _fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _done(out: Path, seed: int, fmt: str) -> bool:
    """Whether a seed's image is on disk (a PNG; for npz-only runs also its ``.parts`` array)."""
    return output.png_path(out, seed).is_file() or (fmt == "npz" and output.part_path(out, seed).is_file())


def _prepare_folder(out: Path, settings: dict, overwrite: bool, fmt: str, seeds: list[int]) -> int:
    """Check ``out`` against the settings of the run that wrote it, then (rank 0) sweep temporaries,
    record the settings and unpack a finished npz for resuming. Returns the number of seeds still
    to make (on rank 0; 0 elsewhere)."""
    path = out / "settings.json"
    old = output.read_json(path) if path.is_file() else None
    changed = _changed_settings(old, settings) if old is not None else []
    differs = old is not None and old != settings
    if changed and not overwrite and output.has_images(out):
        key, more = changed[0], f"; {len(changed) - 1} more" if len(changed) > 1 else ""
        raise SamplerkitError(f"{out} holds images made with other settings ({key}: {_short(old.get(key))} "
                              f"there, {_short(settings.get(key))} now{more}); use another --out, or --overwrite "
                              "to replace them")
    distributed.barrier()  # every rank has looked before rank 0 changes anything
    pending = 0
    if distributed.is_main():
        output.sweep_temporaries(out)
        if changed:
            output.clear_outputs(out)
        if old is None or differs:
            output.atomic_json(path, settings)
        if fmt == "npz":
            _unpack_finished_npz(out, seeds)
        pending = sum(not _done(out, s, fmt) for s in seeds)
    distributed.barrier()
    return pending


def _changed_settings(old: dict, new: dict) -> list[str]:
    """Settings that differ; a model file named by another path but with the same sha256 is the same."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if old.get("model_sha256") and old.get("model_sha256") == new.get("model_sha256"):
        keys = [k for k in keys if k != "model"]
    return keys


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unpack_finished_npz(out: Path, seeds: list[int]) -> None:
    """An npz-only run deletes its per-seed parts once the npz is written; to resume or extend it,
    put back the parts of the wanted seeds from the npz the manifest names."""
    manifest = output.read_json(out / "manifest.json")
    name, old_seeds = manifest.get("npz"), manifest.get("seeds")
    if not name or not isinstance(old_seeds, list) or not (out / name).is_file():
        return
    wanted = set(seeds)
    missing = {s for s in old_seeds if s in wanted and not _done(out, s, "npz")}
    for seed, image in zip(old_seeds, output.iter_npz_images(out / name), strict=False):
        if seed in missing:
            output.atomic_write(output.part_path(out, seed), output.encode_npy(image))


def _progress(total: int, done: int, disable: bool, desc: str):
    """Images done, images/s and ETA on stderr (tqdm's rate counts only this run's images)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="img", desc=desc, disable=disable, file=sys.stderr, dynamic_ncols=True,
                smoothing=0.1)


def _labels_for(net, seeds, labels, label_of_seed, device) -> np.ndarray | None:
    """The class label of every seed (int64), as the sampler drew or was given it."""
    if net.label_dim == 0:
        return None
    if label_of_seed is not None:
        return np.array([label_of_seed[s] for s in seeds], dtype=np.int64)
    if isinstance(labels, int):
        return np.full(len(seeds), labels, dtype=np.int64)
    # random labels come from each seed's generator right after its latents: redraw them
    return np.concatenate([draw(net, seeds[i : i + 256], labels, device)[1].cpu().numpy()
                           for i in range(0, len(seeds), 256)])


def _finish(out, net, seeds, seed_spec, labels, label_of_seed, fmt, grid, settings, prepared, dev, world, new,
            gen_seconds, wall) -> dict:
    """Rank 0, after every rank is done: grid, npz (streamed from the per-seed files), manifest."""
    import samplerkit

    label_array = _labels_for(net, seeds, labels, label_of_seed, dev)
    if grid:
        first = np.stack([output.read_image(out, s) for s in seeds[:64]])
        output.atomic_write(out / "grid.png", output.encode_png(output.grid(first)))
    npz = None
    if fmt in ("npz", "both"):
        npz = output.npz_name(len(seeds), *output.read_image(out, seeds[0]).shape)
        (out / "manifest.json").unlink(missing_ok=True)  # a manifest always describes the npz beside it
        output.write_npz(out / npz, (output.read_image(out, s) for s in seeds), label_array, count=len(seeds))
    manifest = {
        **settings,
        "settings_fingerprint": _fingerprint(settings),
        "nfe_per_image": prepared.nfe,
        "num_images": len(seeds),
        "seed_spec": str(seed_spec),
        "seeds": seeds,
        "labels": label_array.tolist() if label_array is not None else None,
        "format": fmt,
        "npz": npz,
        "device": str(dev),
        "world_size": world,
        "new_images": new,
        "sampling_seconds": round(gen_seconds, 3),
        "wall_seconds": round(wall, 3),
        "images_per_second": round(new / gen_seconds, 3) if new and gen_seconds > 0 else None,
        "versions": {"samplerkit": samplerkit.__version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
    }
    output.atomic_write(out / "manifest.json", output.json_text(manifest).encode())
    if npz is not None:
        for stale in out.glob("samples*.npz"):
            if stale.name != npz:
                stale.unlink()
        if fmt == "npz":
            shutil.rmtree(out / ".parts", ignore_errors=True)
    return manifest
