"""Sampling runs to a folder: the library entry point behind ``samplerkit sample``.

A run is described by a :class:`SampleSettings`; :func:`sample_folder` makes its images, one
file per seed written atomically as soon as it is made, and skips the seeds already on disk, so
an interrupted run resumes. Seed s gives the same latents and noise whatever the batch size or
number of processes (per-seed generators, as EDM's ``generate.py``). Folders of 1000 PNGs,
the evaluator's npz, ``grid.png`` and ``manifest.json``: see :mod:`samplerkit.output`.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch

from . import distributed, output, run_folder, speed
from .autoencoders import RGBIdentity, autoencoder_of
from .builtin import DEFAULT_MODEL
from .denoisers import DenoiserWrapper
from .errors import Interrupted, SamplerkitError
from .generate import check_settings, generate, make_sampler, outside_note, resolve_labels, run_notes, with_precision
from .guidance import WEIGHT_OPTION, Guidance, Guided
from .loading import file_family_and_flags, load
from .lookup import (
    ModelRef,
    guidance_loader,
    load_classifier,
    model_sha256,
    recommended,
    resolve_sampler,
)
from .lowres import LowResImages, low_res_source
from .run_folder import RunRecord
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

    Guidance by a second network: ``guide_model`` (zoo name or file) at ``guidance_weight`` w; an EDM2
    guided preset as ``model`` brings its own guide model and weight (``guidance_weight`` overrides it).
    Classifier-free guidance: ``cfg`` w with ``cfg_form`` score | upstream (a zoo model's recommended
    setting applies when ``cfg`` is None; ``cfg=1`` is unguided). ``guidance_interval`` 'LO,HI': guide
    only for sigma in (LO, HI]. Images are decoded through the model's autoencoder (latent models).
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
    classifier_scale: float | str | None = None  # None: 1 (with a classifier)
    guidance_form: str | None = None  # None: score (with a classifier)
    low_res: str | None = None
    guide_model: str | None = None
    guidance_weight: float | str | None = None
    guidance_interval: str | tuple[float, float] | None = None
    cfg: float | str | None = None
    cfg_form: str | None = None

    def guidance(self, model: ModelRef | None = None) -> Guidance | None:
        """The run's guidance (:class:`samplerkit.guidance.Guidance`, not loaded), or None (``model``: the
        run's model, already looked up)."""
        found = Guidance.from_options(self.classifier, self.classifier_flags,
                                      self.classifier_scale, self.guidance_form,
                                      guide_model=self.guide_model, guidance_weight=self.guidance_weight,
                                      guidance_interval=self.guidance_interval, cfg=self.cfg, cfg_form=self.cfg_form,
                                      model_guidance=(model or ModelRef.of(self.model)).guidance())
        if len(found) > 1:
            raise SamplerkitError(f"sample takes one {WEIGHT_OPTION[found[0].kind]}; a list is a sweep axis "
                                  "(samplerkit sweep)")
        return found[0] if found else None


def load_model(model: str, family: str | None, flags: dict, preset: str | None, device="cpu"):
    """Load the model a run names: :func:`samplerkit.load` with the upstream flags and preset."""
    return load(model, family=family, device=device, **flags, **({"preset": preset} if preset else {}))


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
            raise SamplerkitError(f"bad class_labels {text!r}; use random, a class N or a list like 1,5,7") from None
        if span and int(span[2]) < int(span[1]):
            raise SamplerkitError(f"bad class_labels {text!r}: the range {part.strip()} is empty")
    return values[0] if len(values) == 1 else values


def pick_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise SamplerkitError(f"unknown device {name!r}; use auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise SamplerkitError("device='cuda' was asked for but no CUDA device is available; use device='cpu'")
    return torch.device(name)


def sample_folder(settings: SampleSettings, net=None) -> dict | None:
    """Make (or resume) the images of ``settings`` in ``settings.out``; returns the manifest on
    rank 0 (None on other ranks).

    ``net``: an already loaded denoiser to use instead of loading ``settings.model`` (which then
    only names it in the manifest). A network given here runs under the run's speed policy
    (:mod:`samplerkit.speed`) and is put back to ``exact`` afterwards.
    """
    s, t_start = settings, time.perf_counter()
    seed_list, labels_spec, guidance, dev, out, choice = _checked(s, net)  # before any model loads
    joined_already = distributed.is_initialized()  # e.g. called from a training script: leave its group alone
    rank, world = distributed.init(dev)
    try:
        dev = distributed.local_device(dev)
        run = _start(s, net, seed_list, labels_spec, guidance, dev, rank, choice)
        new_total = run_folder.prepare(out, run.record, s.overwrite, s.fmt, seed_list)
        t_gen = time.perf_counter()
        _make_images(run, s, out, seed_list, dev, world)
        if rank == 0 and not s.quiet and outside_note(run.prepared):  # this process's images, mostly out of range
            _note(outside_note(run.prepared))
        distributed.barrier()
        gen_seconds = time.perf_counter() - t_gen
        if not distributed.is_main():
            return None
        manifest = run_folder.finish(RunRecord(
            out, run.net, seed_list, s.seeds, run.labels, run.label_of_seed, s.fmt, s.grid, run.record, run.prepared,
            dev, world, new_total, gen_seconds, time.perf_counter() - t_start, run.speed_record))
        if not s.quiet:
            _summary(manifest, out, seed_list, new_total, s)
        return manifest
    finally:
        if net is not None:
            speed.apply(net, speed.EXACT)
        if not joined_already:
            distributed.cleanup()


def _checked(s: SampleSettings, net=None):
    """(seeds, label request, guidance, device, output folder, (sampler, steps, options)) of the settings,
    checked before any network loads: the sampler's knobs, step count and remedies, and a label request
    on a zoo model that is unconditional (its entry says so)."""
    seed_list = parse_seeds(s.seeds)
    if s.batch < 1:
        raise SamplerkitError(f"batch must be >= 1, got {s.batch}")
    if s.fmt not in FORMATS:
        raise SamplerkitError(f"unknown format {s.fmt!r}; use png, npz or both")
    if s.dtype not in DTYPES:
        raise SamplerkitError(f"unknown dtype {s.dtype!r}; use float32, float16 or bfloat16")
    dev = pick_device(s.device)
    labels_spec = parse_class_labels(s.class_labels)
    model = ModelRef.of(_model_name(s, net))  # the one lookup of the model's name in this run
    guidance = s.guidance(model)
    choice = resolve_sampler(model, s.sampler, s.steps, s.options)
    check_settings(*choice)
    if guidance is None and s.low_res is None and net is None:
        _check_labels_of_entry(model.entry, labels_spec, len(seed_list))
    return seed_list, labels_spec, guidance, dev, output.check_writable(s.out), (model, *choice)


def _model_name(s: SampleSettings, net) -> str:
    """The model a run names: the settings', else the built-in default (or a given network's class)."""
    return str(s.model) if s.model else (DEFAULT_MODEL if net is None else type(net).__name__)


def _check_labels_of_entry(entry, labels_spec, n: int) -> None:
    """A label request on a zoo model, checked against the entry's classes before its network loads
    (the same rule :func:`samplerkit.generate.resolve_labels` applies to the loaded network)."""
    if labels_spec is None or entry is None:
        return
    if not entry.conditional or entry.num_classes:
        resolve_labels(SimpleNamespace(label_dim=entry.num_classes if entry.conditional else 0), labels_spec, n)


@dataclass
class _Run:
    """A sampling run once its model is loaded: the denoiser (``net``, labels drawn for it), the guard
    around the network, the prepared sampler, the labels and what the folder records."""

    net: object
    guard: _FiniteGuard
    prepared: object
    labels: object
    label_of_seed: dict | None
    low_res: object
    record: dict
    speed_record: dict
    autoencoder: object = None  # model space -> uint8 pixels (samplerkit.autoencoders)


def _start(s: SampleSettings, net, seed_list, labels_spec, guidance, dev, rank: int, choice: tuple) -> _Run:
    """Load (or take) the model, bind its low-res source, put it under the run's speed policy and
    guidance, and prepare the sampler ``choice`` (the model's :class:`~samplerkit.lookup.ModelRef`, sampler,
    steps, options)."""
    ref, choice = choice[0], choice[1:]
    model = ref.name
    if net is None:
        net = load_model(model, s.family, s.flags, s.preset, device=dev)  # runs.load_model: what tests replace
        sha = ref.sha256() or None
    else:
        sha = None
    if isinstance(net, Guided) and guidance is not None and guidance.kind == "guided":
        net, guidance = _preset_networks(net, guidance)  # a guided preset (EDM2): the Guidance applies its gnet
    low_res, conditioning = low_res_source(net, s, seed_list, labels_spec)
    if low_res is not None:  # a super-resolution model: each batch's low-res images are bound to it
        net, labels_spec = low_res, low_res.labels_spec
    nfe = make_sampler(net, choice[0], choice[1], **choice[2]).nfe  # the checks that need the network, first
    batch = min(s.batch, len(seed_list))
    calls = -(-len(distributed.shard(seed_list)) // batch) * nfe  # at most: a resumed run makes fewer
    fast_net, speed_record = _speed(net, s, batch, dev, rank, calls)
    if guidance is not None:  # the guiding network itself runs exact
        guidance = guidance.load(guidance_loader(guidance.kind, dev), model_sha256(guidance.name) or None)
        conditioning.update(guidance.settings())
    autoencoder = _autoencoder(net, conditioning)
    guard = _FiniteGuard(with_precision(fast_net, s.dtype, dev))
    sampler, steps, options = choice
    prepared = make_sampler(guard, sampler, steps, guidance=guidance, **options)
    net = prepared.net if guidance is not None else net  # guided: the labels go to the classifier
    if rank == 0 and not s.quiet:
        _notes(prepared, s.dtype, dev)
    labels = resolve_labels(net, labels_spec, len(seed_list))
    for text in run_notes(guard, prepared, recommended(model)) if rank == 0 and not s.quiet else []:
        _note(text)  # an unclipped solver on a model that clips, a snapped sigma grid
    label_of_seed = dict(zip(seed_list, labels, strict=True)) if isinstance(labels, list) else None
    family, flags = s.family, dict(s.flags)
    if Path(model).is_file():  # record what the file was built with (a run's flags.json, a preset's flags)
        family, flags = file_family_and_flags(Path(model), s.family,
                                              {**s.flags, **({"preset": s.preset} if s.preset else {})})
    record = run_folder.plain({
        "model": model, "model_sha256": sha, "family": family, "flags": flags, "preset": s.preset,
        **prepared.settings, "class_labels": labels, "dtype": s.dtype, "device_type": dev.type,
        "image_shape": [net.img_channels, net.img_resolution, net.img_resolution], **conditioning,
    })
    return _Run(net, guard, prepared, labels, label_of_seed, low_res, record, speed_record, autoencoder)


def _preset_networks(preset: Guided, guidance: Guidance | None):
    """(the main network, the run's guidance) of a guided preset loaded as one :class:`Guided`: its
    guiding network becomes the guidance's (already loaded) unless the run names another one."""
    if guidance.network is None and guidance.name == getattr(preset.gnet, "name", None):
        guidance = dataclasses.replace(guidance, network=preset.gnet)
    return preset.inner, guidance


def _autoencoder(net, record: dict):
    """The model's autoencoder, checked (a latent model without its optional extra fails here, before any
    sampling) and loaded; a latent model's is recorded in ``record`` (pixel models record nothing)."""
    autoencoder = autoencoder_of(net)
    autoencoder.check()
    if not isinstance(autoencoder, RGBIdentity):
        getattr(autoencoder, "vae", None)  # loads the VAE now: its sha256 goes into the record
        record["autoencoder"] = autoencoder.describe()
    return autoencoder


def _make_images(run: _Run, s: SampleSettings, out: Path, seed_list: list[int], dev, world: int) -> None:
    """This process's seeds not yet on disk, each image written as soon as it is made."""
    mine = distributed.shard(seed_list)
    todo = [seed for seed in mine if not run_folder.done(out, seed, s.fmt)]
    bar = _progress(len(mine), len(mine) - len(todo), s.quiet or distributed.rank() != 0 or not todo,
                    f"rank 0 of {world}" if world > 1 else "sampling")
    prepared, guard, made = run.prepared, run.guard, 0
    # progress within a batch, per network evaluation (clamped: the float steps may round past the total)
    guard.on_call = lambda batch: bar.update(max(0.0, min(batch / prepared.nfe, bar.total - bar.n)))
    source = run.low_res if run.low_res is not None else None
    try:
        with output.FileWriter(max_pending=max(2 * s.batch, 64)) as writer:
            batches = (generate(prepared.net, prepared, todo, s.batch, run.labels, dev, run.label_of_seed)
                       if source is None
                       else source.generate(prepared.net, prepared, todo, s.batch, run.labels, dev, run.label_of_seed))
            for chunk, x, _ in batches:
                images = run.autoencoder.decode(x).permute(0, 2, 3, 1).cpu().numpy()  # uint8 NHWC
                for seed, image in zip(chunk, images, strict=True):
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
            f"{prepared.nfe} (sigma = {e.sigma:.4g}); try dtype float32 or other sampler settings") from None
    except KeyboardInterrupt:
        saved = len(mine) - len(todo) + made
        raise Interrupted(f"interrupted: {saved} of {len(mine)} images are saved in {out}; rerun the same "
                          "command to make the rest") from None
    finally:
        bar.close()


def _summary(manifest: dict, out: Path, seed_list: list[int], new_total: int, s: SampleSettings) -> None:
    files = [manifest["npz"]] if s.fmt == "npz" else [
        f"{output.png_path('', seed_list[0]).as_posix()} ... {output.png_path('', seed_list[-1]).as_posix()}"]
    files += ([manifest["npz"]] if s.fmt == "both" else []) + (["grid.png"] if s.grid else [])
    print(f"{len(seed_list)} images ({new_total} new) in {out}/: {', '.join(files + ['manifest.json'])}", flush=True)


def _speed(net, s: SampleSettings, batch: int, dev: torch.device, rank: int, calls: int):
    """(the denoiser under the run's speed policy, its manifest record); rank 0 autotunes first and the
    other ranks then read its choice from the cache. ``calls``: the network calls of this process's run."""
    mode = speed.parse(s.speed or speed.default_mode())
    if s.dtype != "float32" and isinstance(mode, speed.Policy) and mode.autocast != "none":
        raise SamplerkitError("dtype and the speed setting autocast=... both set the network's precision; give one")
    if rank != 0:
        distributed.barrier()
    fast_net, record = speed.for_denoiser(net, mode, batch, dev, calls)
    if rank == 0:
        distributed.barrier()
        if not s.quiet and record["mode"] == "fast":
            how = "cached choice" if record["cached"] else f"autotuned at batch {batch}"
            _note(f"speed: fast -> {record['policy']} ({how}; --speed exact for upstream's arithmetic)")
            if compiled := speed.compile_note(record):
                _note(compiled)
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


def _progress(total: int, done: int, disable: bool, desc: str):
    """Images done, images/s and ETA on stderr (tqdm's rate counts only this run's images)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="img", desc=desc, disable=disable, file=sys.stderr, dynamic_ncols=True,
                smoothing=0.1, bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]")


def two_stage(settings: SampleSettings, upsampler: str, sampler: str | None = None,
              steps: int | None = None) -> tuple[SampleSettings, SampleSettings]:
    """The two runs of a base model followed by an upsampler (ADM-G + ADM-U, Dhariwal & Nichol 2021):
    ``settings`` into OUT/base, then ``upsampler`` conditioned on those images (and their labels) into
    OUT/upsampled, with its recommended sampler unless ``sampler``/``steps`` are given. Each is an
    ordinary resumable run of :func:`sample_folder`."""
    if settings.low_res is not None:
        raise SamplerkitError("then_upsample makes its own low-resolution images; drop low_res")
    out = Path(settings.out)
    base = dataclasses.replace(settings, out=out / "base", fmt="png")
    up = SampleSettings(model=upsampler, sampler=sampler, steps=steps, seeds=settings.seeds,
                        batch=settings.batch, out=out / "upsampled", fmt=settings.fmt, grid=settings.grid,
                        device=settings.device, dtype=settings.dtype, overwrite=settings.overwrite,
                        quiet=settings.quiet, speed=settings.speed, low_res=str(out / "base"))
    return base, up


# names this module gave before its concerns moved out (runs.load is what load_model calls)
__all__ = ["DTYPES", "FORMATS", "LowResImages", "SampleSettings", "load", "load_classifier", "load_model",
           "model_sha256", "pick_device", "recommended", "resolve_sampler", "sample_folder", "two_stage"]
