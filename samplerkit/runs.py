"""Sampling runs to a folder: the library entry point behind ``samplerkit sample``.

A run is described by a :class:`SampleSettings`; :func:`sample_folder` makes its images, one
file per seed written atomically as soon as it is made, and skips the seeds already on disk, so
an interrupted run resumes. Seed s gives the same latents and noise whatever the batch size or
number of processes (per-seed generators, as EDM's ``generate.py``). Folders of 1000 PNGs,
the evaluator's npz, ``grid.png`` and ``manifest.json``: see :mod:`samplerkit.output`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from . import distributed, output, speed
from .builtin import DEFAULT_MODEL
from .data import to_uint8
from .denoisers import DenoiserWrapper
from .errors import Interrupted, SamplerkitError
from .generate import draw, generate, make_sampler, resolve_labels, with_precision
from .guidance import Guidance
from .loading import file_family_and_flags, load
from .seeds import parse_seeds

FORMATS = ("png", "npz", "both")
DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class SampleSettings:
    """What a sampling run makes; every field has the default of ``samplerkit sample``.

    ``model``: zoo name or checkpoint path (``family``/``flags``/``preset`` for a local ``.pt``,
    as :func:`samplerkit.load`). ``sampler``/``steps`` left None: the model's recommended
    settings. ``options``: sampler knobs by their :func:`~samplerkit.generate.sampler_options`
    names. ``seeds``: '0-63', '0,5,9-12'. ``class_labels``: None/'random', 'N' or one per seed
    ('0,1,2'). ``fmt``: png | npz | both.

    Classifier guidance (:mod:`samplerkit.guidance`): ``classifier`` (zoo name or ``.pt`` with
    ``classifier_flags``), ``classifier_scale`` s >= 0, ``guidance_form`` score | upstream; the
    class labels then go to the classifier. Super-resolution: ``low_res`` names the low-resolution
    images (an ``.npz`` with ``arr_0`` NHWC uint8 and optional ``arr_1`` labels, a PNG folder, or a
    ``samplerkit sample`` output folder); seed s upsamples image s (of a sample folder: the image of
    seed s) and takes its label unless ``class_labels`` is given.
    """

    model: str | None = None  # None: the built-in default model
    family: str | None = None
    flags: dict = field(default_factory=dict)
    preset: str | None = None
    sampler: str | None = None
    steps: int | None = None
    options: dict = field(default_factory=dict)
    seeds: str = "0-63"
    batch: int = 64
    class_labels: str | None = None
    out: str | Path = "out"
    fmt: str = "png"
    grid: bool = True
    device: str = "auto"
    dtype: str = "float32"
    overwrite: bool = False
    quiet: bool = False
    speed: str | None = None  # exact | fast | explicit settings (samplerkit.speed); None: speed.default_mode()
    classifier: str | None = None
    classifier_flags: dict = field(default_factory=dict)
    classifier_scale: float = 1.0
    guidance_form: str = "score"
    low_res: str | None = None

    def guidance(self) -> Guidance | None:
        """The run's classifier guidance (:class:`samplerkit.guidance.Guidance`, not loaded), or None."""
        found = Guidance.from_options(self.classifier, self.classifier_flags,
                                      None if self.classifier is None else self.classifier_scale,
                                      None if self.classifier is None else self.guidance_form)
        return found[0] if found else None


def load_model(model: str, family: str | None, flags: dict, preset: str | None, device="cpu"):
    """Load the model a run names: :func:`samplerkit.load` with the upstream flags and preset."""
    return load(model, family=family, device=device, **flags, **({"preset": preset} if preset else {}))


def recommended(name: str | None) -> dict:
    """The recommended sampler settings of model ``name``: the zoo's for a zoo name, those its
    training run wrote (``recommended.json``) for a checkpoint file; {} when there are none."""
    from . import zoo

    if name and Path(name).is_file():
        from .train.recommend import read_recommended

        return read_recommended(name)
    try:
        return dict(zoo.get(name).recommended) if name else {}
    except SamplerkitError:
        return {}


def resolve_sampler(name: str | None, sampler: str | None, steps: int | None, options: dict) -> tuple[str, int, dict]:
    """The sampler, step count and options a run uses when the user left some unset.

    No ``--sampler``: the model's recommended settings (``samplerkit models info``), with the
    user's own options on top; a model without one gets Heun with 18 steps. ``--sampler`` given
    without ``--steps``: the recommended step count when it names the recommended sampler, else 18.
    """
    rec = recommended(name)
    rec_sampler, rec_steps = rec.pop("sampler", "heun"), rec.pop("steps", 18)
    if sampler is None:
        return rec_sampler, rec_steps if steps is None else steps, {**rec, **options}
    if steps is None:
        steps = rec_steps if sampler == rec_sampler else 18
    return sampler, steps, options


def model_sha256(name: str) -> str:
    """sha256 of a local model file; the published or recorded one for a zoo name (a shipped model's
    own); '' when there is none (an analytic model, a download not made yet)."""
    from pathlib import Path

    from .output import file_sha256

    if Path(name).is_file():
        return file_sha256(name)
    from . import zoo

    try:
        entry = zoo.get(name)
    except SamplerkitError:
        return ""
    return entry.expected_sha256() or ""  # a shipped model has its digest; an analytic one has none


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


def sample_folder(settings: SampleSettings, net=None) -> dict | None:
    """Make (or resume) the images of ``settings`` in ``settings.out``; returns the manifest on
    rank 0 (None on other ranks).

    ``net``: an already loaded denoiser to use instead of loading ``settings.model`` (which then
    only names it in the manifest). A network given here runs under the run's speed policy
    (:mod:`samplerkit.speed`) and is put back to ``exact`` afterwards.
    """
    s = settings
    given = net
    t_start = time.perf_counter()
    seed_list = parse_seeds(s.seeds)
    if s.batch < 1:
        raise SamplerkitError(f"--batch must be >= 1, got {s.batch}")
    if s.fmt not in FORMATS:
        raise SamplerkitError(f"unknown format {s.fmt!r}; use png, npz or both")
    if s.dtype not in DTYPES:
        raise SamplerkitError(f"unknown dtype {s.dtype!r}; use float32, float16 or bfloat16")
    dev = pick_device(s.device)
    labels_spec = parse_class_labels(s.class_labels)
    out = output.check_writable(s.out)

    joined_already = distributed.is_initialized()  # e.g. called from a training script: leave its group alone
    rank, world = distributed.init(dev)
    try:
        dev = distributed.local_device(dev)
        if net is None:
            model = s.model or DEFAULT_MODEL
            net = load_model(model, s.family, s.flags, s.preset, device=dev)
            sha = model_sha256(model) or None
        else:
            model, sha = str(s.model or type(net).__name__), None
        low_res, conditioning = _low_res(net, s, seed_list, labels_spec)
        if low_res is not None:  # a super-resolution model: each batch's low-res images are bound to it
            net, labels_spec = low_res, low_res.labels_spec
        fast_net, speed_record = _speed(net, s, min(s.batch, len(seed_list)), dev, rank)
        guidance = s.guidance()
        if guidance is not None:  # the classifier itself runs exact
            guidance = guidance.load(partial(load_classifier, device=dev))
            conditioning.update(guidance.settings(model_sha256(s.classifier)))
        guard = _FiniteGuard(with_precision(fast_net, s.dtype, dev))
        sampler, steps, options = resolve_sampler(model, s.sampler, s.steps, s.options)
        prepared = make_sampler(guard, sampler, steps, guidance=guidance, **options)
        if guidance is not None:
            net = prepared.net  # labels go to the classifier
        if rank == 0 and not s.quiet:
            _notes(prepared, s.dtype, dev)
        labels = resolve_labels(net, labels_spec, len(seed_list))
        label_of_seed = dict(zip(seed_list, labels, strict=True)) if isinstance(labels, list) else None
        family, flags = s.family, dict(s.flags)
        if Path(model).is_file():  # record what the file was built with (a run's flags.json, a preset's flags)
            family, flags = file_family_and_flags(Path(model), s.family,
                                                  {**s.flags, **({"preset": s.preset} if s.preset else {})})
        record = _plain({
            "model": model, "model_sha256": sha, "family": family, "flags": flags, "preset": s.preset,
            **prepared.settings, "class_labels": labels, "dtype": s.dtype, "device_type": dev.type,
            "image_shape": [net.img_channels, net.img_resolution, net.img_resolution], **conditioning,
        })
        new_total = _prepare_folder(out, record, s.overwrite, s.fmt, seed_list)

        mine = distributed.shard(seed_list)
        todo = [seed for seed in mine if not _done(out, seed, s.fmt)]
        bar = _progress(len(mine), len(mine) - len(todo), s.quiet or rank != 0 or not todo,
                        f"rank 0 of {world}" if world > 1 else "sampling")
        # progress within a batch, per network evaluation (clamped: the float steps may round past the total)
        guard.on_call = lambda batch: bar.update(max(0.0, min(batch / prepared.nfe, bar.total - bar.n)))
        t_gen = time.perf_counter()
        made = 0
        try:
            with output.FileWriter(max_pending=max(2 * s.batch, 64)) as writer:
                batches = (generate(prepared.net, prepared, todo, s.batch, labels, dev, label_of_seed)
                           if low_res is None
                           else low_res.generate(prepared.net, prepared, todo, s.batch, labels, dev, label_of_seed))
                for chunk, x, _ in batches:
                    for seed, image in zip(chunk, to_uint8(x), strict=True):
                        if s.fmt == "npz":
                            writer.submit(output.part_path(out, seed), partial(output.encode_npy, image))
                        else:
                            writer.submit(output.png_path(out, seed), partial(output.encode_png, image))
                    made += len(chunk)
                    guard.calls = 0
                    bar.n = len(mine) - len(todo) + made  # whole images, after the per-evaluation fractions
                    bar.refresh()
        except _NonFinite as e:
            bad = [todo[made + i] for i in e.rows][:8]
            raise SamplerkitError(
                f"non-finite values in the network output for seed(s) {bad} at network evaluation {e.call} of "
                f"{prepared.nfe} (sigma = {e.sigma:.4g}); try --dtype float32 or other sampler settings") from None
        except KeyboardInterrupt:
            saved = len(mine) - len(todo) + made
            raise Interrupted(f"interrupted: {saved} of {len(mine)} images are saved in {out}; rerun the same "
                              "command to make the rest") from None
        finally:
            bar.close()
        distributed.barrier()
        gen_seconds = time.perf_counter() - t_gen
        if not distributed.is_main():
            return None
        manifest = _finish(out, net, seed_list, s.seeds, labels, label_of_seed, s.fmt, s.grid, record, prepared, dev,
                           world, new_total, gen_seconds, time.perf_counter() - t_start, speed_record)
        if not s.quiet:
            files = [manifest["npz"]] if s.fmt == "npz" else [
                f"{output.png_path('', seed_list[0]).as_posix()} ... {output.png_path('', seed_list[-1]).as_posix()}"]
            files += ([manifest["npz"]] if s.fmt == "both" else []) + (["grid.png"] if s.grid else [])
            print(f"{len(seed_list)} images ({new_total} new) in {out}/: {', '.join(files + ['manifest.json'])}")
        return manifest
    finally:
        if given is not None:
            speed.apply(given, speed.EXACT)
        if not joined_already:
            distributed.cleanup()


def _speed(net, s: SampleSettings, batch: int, dev: torch.device, rank: int):
    """(the denoiser under the run's speed policy, its manifest record); rank 0 autotunes first and the
    other ranks then read its choice from the cache."""
    mode = speed.parse(s.speed or speed.default_mode())
    if s.dtype != "float32" and isinstance(mode, speed.Policy) and mode.autocast != "none":
        raise SamplerkitError("--dtype and --speed autocast=... both set the network's precision; give one")
    if rank != 0:
        distributed.barrier()
    fast_net, record = speed.for_denoiser(net, mode, batch, dev)
    if rank == 0:
        distributed.barrier()
        if not s.quiet and record["mode"] == "fast":
            how = "cached choice" if record["cached"] else f"autotuned at batch {batch}"
            _note(f"speed: fast -> {record['policy']} ({how}; --speed exact for upstream's arithmetic)")
    return fast_net, record


def _notes(prepared, dtype: str, device: torch.device) -> None:
    """One line each on stderr for settings that are legal but rarely what a person means."""
    if prepared.name == "stochastic" and prepared.settings.get("S_churn") == 0:
        _note("note: the stochastic sampler with S_churn = 0 is exactly heun; set --S-churn for churn")
    if dtype != "float32" and device.type == "cpu":
        _note(f"warning: --dtype {dtype} on a CPU is emulated and usually much slower than float32")


def _note(text: str) -> None:
    """One line for the person running the command, on stderr."""
    print(text, file=sys.stderr, flush=True)


class _NonFinite(Exception):
    def __init__(self, rows: list[int], call: int, sigma: float):
        super().__init__(rows, call, sigma)
        self.rows, self.call, self.sigma = rows, call, sigma


class _FiniteGuard(DenoiserWrapper):
    """The denoiser, stopping at the first network evaluation whose output is not finite (to
    name the step where NaN/Inf appeared)."""

    def __init__(self, net, on_call=None):
        super().__init__(net)
        self.calls, self.on_call = 0, on_call

    def denoise_with_variance(self, x, sigma, class_labels=None):
        D, v = super().denoise_with_variance(x, sigma, class_labels)
        self.calls += 1
        if self.on_call is not None:
            self.on_call(x.shape[0])
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
        shown = ", ".join(f"{k}: {_short(old.get(k))} there, {_short(settings.get(k))} now" for k in changed[:3])
        more = f"; {len(changed) - 3} more" if len(changed) > 3 else ""
        raise SamplerkitError(f"{out} holds images made with other settings ({shown}{more}); to start a new run "
                              "pass another --out, or --overwrite to replace them")
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


# the settings a person recognises a run by, named first when a folder is refused
_FIRST = ("sampler", "steps", "model", "model_sha256")


def _changed_settings(old: dict, new: dict) -> list[str]:
    """Settings that differ (sampler, steps and model first); a model file named by another path
    but with the same sha256 is the same."""
    keys = sorted((k for k in set(old) | set(new) if old.get(k) != new.get(k)),
                  key=lambda k: (_FIRST.index(k) if k in _FIRST else len(_FIRST), k))
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
                smoothing=0.1, bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]")


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
            gen_seconds, wall, speed_record=None) -> dict:
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
        "speed": speed_record,
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


# ---------------------------------------------------------------------------------------------
# classifier guidance and super-resolution runs


def load_classifier(name: str, flags: dict, device="cpu"):
    """The noisy-image classifier ``--classifier`` names: a zoo classifier, or a ``.pt`` with its
    upstream ``classifier_*`` flags (or a flags.json beside it)."""
    from . import zoo

    if not Path(name).is_file():
        entry = zoo.get(name)
        if entry.family != "adm-classifier":
            names = ", ".join(e.name for e in zoo.entries() if e.family == "adm-classifier")
            raise SamplerkitError(f"{name} is not a classifier (family {entry.family}); use one of {names}")
    return load(name, family="adm-classifier", device=device, **flags)


def two_stage(settings: SampleSettings, upsampler: str, sampler: str | None = None,
              steps: int | None = None) -> tuple[SampleSettings, SampleSettings]:
    """The two runs of a base model followed by an upsampler (ADM-G + ADM-U, Dhariwal & Nichol 2021):
    ``settings`` into OUT/base, then ``upsampler`` conditioned on those images (and their labels) into
    OUT/upsampled, with its recommended sampler unless ``sampler``/``steps`` are given. Each is an
    ordinary resumable run of :func:`sample_folder`."""
    if settings.low_res is not None:
        raise SamplerkitError("--then-upsample makes its own low-resolution images; drop --low-res")
    out = Path(settings.out)
    base = dataclasses.replace(settings, out=out / "base", fmt="png")
    up = SampleSettings(model=upsampler, sampler=sampler, steps=steps, seeds=settings.seeds,
                        batch=settings.batch, out=out / "upsampled", fmt=settings.fmt, grid=settings.grid,
                        device=settings.device, dtype=settings.dtype, overwrite=settings.overwrite,
                        quiet=settings.quiet, speed=settings.speed, low_res=str(out / "base"))
    return base, up


def _low_res(net, s: SampleSettings, seeds: list[int], labels_spec):
    """(the low-res binding of a super-resolution run, its record), or (None, {}) for other runs."""
    size, name = getattr(net, "low_res_resolution", 0), s.model or DEFAULT_MODEL
    if s.low_res is None:
        if size:
            raise SamplerkitError(f"{name} is a super-resolution model: give --low-res with its {size}x{size} images "
                                  "(an .npz, a PNG folder or a samplerkit sample folder)")
        return None, {}
    if not size:
        raise SamplerkitError(f"--low-res conditions super-resolution models only; {name} is not one")
    images = LowResImages(net, s.low_res, seeds, labels_spec, name, min(s.batch, len(seeds)))
    return images, {"low_res": str(s.low_res), "low_res_id": images.fingerprint}


class LowResImages(DenoiserWrapper):
    """A super-resolution denoiser whose low-resolution images are bound batch by batch: seed s gets
    image s of the source (of a ``samplerkit sample`` folder: the image of seed s) and, unless
    labels were given, its label. :meth:`generate` is :func:`samplerkit.generate.generate` with
    each batch bound first."""

    def __init__(self, net, source: str, seeds: list[int], labels_spec, name: str, batch: int):
        from .data import open_source

        src = open_source(source)
        size = net.low_res_resolution
        if src.resolution != size:
            raise SamplerkitError(f"--low-res images are {src.resolution}x{src.resolution} but {name} upsamples "
                                  f"{size}x{size} images")
        manifest = Path(source) / "manifest.json"
        order = output.read_json(manifest).get("seeds") if Path(source).is_dir() and manifest.is_file() else None
        position = {seed: i for i, seed in enumerate(order)} if isinstance(order, list) else None
        index = [position.get(seed, -1) if position is not None else seed for seed in seeds]
        missing = [seed for seed, i in zip(seeds, index, strict=True) if not 0 <= i < len(src)]
        if missing:
            raise SamplerkitError(f"--low-res {source} holds {len(src)} images; seed {missing[0]} has none "
                                  "(seed s upsamples image s; of a sample folder, the image of seed s)")
        self.source, self.index = src, dict(zip(seeds, index, strict=True))
        self.labels_spec = labels_spec
        if net.label_dim and labels_spec is None:
            labels = [src.read(index[i : i + 256])[1] for i in range(0, len(index), 256)]
            if any(part is None for part in labels):
                raise SamplerkitError(f"{name} is class-conditional and --low-res {source} has no labels "
                                      "(npz arr_1, a sample folder's manifest); pass --class-labels")
            self.labels_spec = [int(v) for part in labels for v in part]
        path = Path(source)
        if path.is_file():
            self.fingerprint = output.file_sha256(path)
        else:
            self.fingerprint = output.read_json(manifest).get("settings_fingerprint") if manifest.is_file() else None
        from samplerkit.adapters import superres

        super().__init__(superres.bind(net, self.images(seeds[:batch])))  # the first batch (for autotuning)

    def images(self, seeds) -> torch.Tensor:
        from .data import to_model_space

        return to_model_space(self.source.read([self.index[seed] for seed in seeds])[0])

    def bind(self, seeds) -> None:
        from samplerkit.adapters import superres

        self.inner = superres.bind(self.inner, self.images(seeds))

    def generate(self, net, prepared, seeds, batch_size, labels, device, label_of_seed):
        for start in range(0, len(seeds), batch_size):
            chunk = seeds[start : start + batch_size]
            self.bind(chunk)
            yield from generate(net, prepared, chunk, batch_size, labels, device, label_of_seed)
