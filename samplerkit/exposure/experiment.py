"""An exposure-bias experiment from its settings: the library call behind ``samplerkit exposure-bias``.

:class:`ExposureSettings` names the models, the real images and the measurement; it is checked where it
is made. :func:`run` loads the models (every setting, remedies included, is checked on the loaded networks
before the speed policy tunes them), reads the images, measures every cell not yet in the CSV
(:func:`samplerkit.exposure.harness.run`) and writes the figures and image pairs the settings ask for.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import speed as speed_lib
from ..builtin import DEFAULT_MODEL
from ..data import open_source, to_model_space
from ..data import resize as resize_images
from ..errors import SamplerkitError
from ..lookup import ModelRef
from ..metrics import inception
from ..remedies import Remedies
from ..results import check_experiment
from . import report as report_lib
from .chain import chain_sigmas
from .harness import ModelSpec, Report, Settings, plan
from .harness import run as run_cells


@dataclass
class ExposureSettings:
    """What ``samplerkit exposure-bias`` measures; every field has the command's default.

    ``models``: zoo names or checkpoint files (``family``/``flags``/``preset`` for local ``.pt`` files),
    measured on the first ``num_images`` images of ``data`` (resized to the models' resolution unless
    ``no_resize``). ``measure``: the harness settings (modes, t values, chain, clip, ...); its ``data``
    is filled in here. ``remedies``: the remedy options (``eps_scaler``, ``time_shift``, ...), measured as
    model variants. ``fid_ref``: an npz with Inception ``mu``/``sigma`` for the fid mode (default: the
    images' own). ``csv_path``, ``plot_path``, ``pairs_dir``: outputs (None: not written).
    """

    models: tuple[str, ...] = (DEFAULT_MODEL,)
    family: str | None = None
    flags: dict = field(default_factory=dict)
    preset: str | None = None
    data: str = "builtin:shapes32"
    num_images: int = 100
    measure: Settings = field(default_factory=Settings)
    remedies: dict = field(default_factory=dict)
    fid_ref: str | None = None
    csv_path: str | None = None
    plot_path: str | None = None
    pairs_dir: str | None = None
    no_resize: bool = False
    device: str = "cpu"
    speed: str | None = None
    quiet: bool = False
    remedy: Remedies = field(init=False)

    def __post_init__(self):
        if self.num_images < 1:
            raise SamplerkitError(f"num_images must be >= 1, got {self.num_images}")
        self.remedy = Remedies.from_options(**self.remedies)
        self.measure = dataclasses.replace(self.measure, data=self.data + (";noresize" if self.no_resize else ""))


def run(settings: ExposureSettings, log: Callable[[str], None] = lambda s: None) -> Report:
    """Measure (or resume) the experiment of ``settings``; write its figures and image pairs; return the report."""
    s = settings
    refs = [ModelRef.of(name) for name in s.models]  # one lookup of each model's name in this run
    nets = [ref.load(s.family, s.flags, s.preset, s.device).eval() for ref in refs]
    plan(with_remedies([ModelSpec(name, net) for name, net in zip(s.models, nets, strict=True)], s.measure,
                       s.remedy), s.num_images, s.measure)  # bad t values or remedies fail before the speed policy
    speed = s.speed or speed_lib.default_mode()
    specs = []
    for ref, net in zip(refs, nets, strict=True):
        net, record = speed_lib.for_denoiser(net, speed, s.measure.batch, s.device)
        log(f"speed: {ref.name}: {record['mode']} -> {record['policy']}")
        specs.append(ModelSpec(ref.name, net, ref.sha256(), speed=record.get("policy", record.get("mode", ""))))
    specs = with_remedies(specs, s.measure, s.remedy)
    x0, labels = load_images(s.data, s.num_images, specs, not s.no_resize, s.measure.seed, log)
    features = real = None
    if "fid" in s.measure.modes:
        features = speed_lib.for_inception(inception(device=s.device), speed, s.device)[0]
        real = fid_reference(s.fid_ref)
    _check_one_experiment(s.csv_path, specs, len(x0), s.measure.data)
    report = run_cells(specs, x0, labels, s.measure, csv_path=s.csv_path, features=features, real_features=real,
                       device=s.device, log=log, show_progress=not s.quiet)
    _write_outputs(report, s, log)
    return report


def _write_outputs(report: Report, s: ExposureSettings, log) -> None:
    """The figures (one per mode, the histograms) and the image pairs the settings ask for."""
    modes = s.measure.modes
    if s.plot_path:
        for mode in modes:
            path = report_lib.companion_path(s.plot_path, mode, modes[0])
            if report_lib.plot(report.current, mode, path, report.per_image) is not None:
                log(f"wrote {path}")
        hist = report_lib.companion_path(s.plot_path, "histograms")
        if report_lib.plot_histograms(report.histograms, hist) is not None:
            log(f"wrote {hist}")
    if s.pairs_dir and report.pairs:
        written = report_lib.save_pairs(report.pairs, s.pairs_dir)
        log(f"wrote {len(written)} image-pair PNGs to {s.pairs_dir}")
    if s.csv_path:
        log(f"wrote {s.csv_path}")


def with_remedies(specs, settings: Settings, remedies: Remedies) -> list[ModelSpec]:
    """Every model as given, each followed by its remedied variants: '<name>+ES<b>' (Epsilon
    Scaling, Ning et al. 2024) and '<name>+TS<w>/<c>' (time shift, Li et al. 2024), so that the
    delta table pairs them with the first model on the same images and noise."""
    out = []
    es = Remedies(remedies.eps_scaler, remedies.slope) if remedies.eps_scaler is not None else None
    ts = Remedies(time_shift=remedies.time_shift) if remedies.time_shift is not None else None
    for spec in specs:
        out.append(spec)
        chain = settings.chain(spec.net)
        if es is not None:
            net, _ = es.apply(spec.net, chain_sigmas(chain.alpha_bar))
            out.append(ModelSpec(spec.name + es.label(), net, spec.sha256, speed=spec.speed))
        if ts is not None:
            ts.time_shift.bind(spec.net, chain.alpha_bar, "ancestral")  # a model without a discrete chain fails here
            out.append(ModelSpec(spec.name + ts.label(), spec.net, spec.sha256, time_shift=ts.time_shift,
                                 speed=spec.speed))
    return out


def load_images(data: str, n: int, specs, resize: bool, seed: int, log):
    """The first n images of the source as [-1, 1] NCHW float64 at the models' resolution, and labels."""
    resolutions = {int(getattr(s.net, "img_resolution", 0)) for s in specs} - {0}
    if len(resolutions) > 1:
        raise SamplerkitError(f"the models have different resolutions {sorted(resolutions)}; run them separately")
    for s in specs:
        if getattr(s.net, "img_channels", 3) != 3:
            raise SamplerkitError(f"{s.name} has {s.net.img_channels} channels; the data sources are RGB (3 channels)")
    src = open_source(data)
    if n > len(src):
        log(f"note: {data} holds {len(src)} images; using all of them instead of {n}")
        n = len(src)
    resolution = resolutions.pop() if resolutions else src.resolution
    if src.resolution != resolution and not resize:
        raise SamplerkitError(f"{data} has {src.resolution}x{src.resolution} images but the model expects "
                              f"{resolution}x{resolution}; drop no_resize to centre-crop and resize them")
    chunks, labels = [], []
    for images, lab in src.batches(256, limit=n):
        chunks.append(to_model_space(resize_images(images, resolution) if resize else images).double())
        labels.append(lab)
    x0 = torch.cat(chunks)
    lab = np.concatenate(labels) if all(v is not None for v in labels) else None
    label_dim = max(int(getattr(s.net, "label_dim", 0)) for s in specs)
    if label_dim == 0:
        return x0, None
    if lab is None or int(lab.max()) >= label_dim:
        log(f"note: {data} has no usable class labels for a {label_dim}-class model; "
            f"drawing them at random (seed {seed})")
        lab = np.random.default_rng([seed, 1]).integers(label_dim, size=n)
    return x0, torch.as_tensor(lab, dtype=torch.int64)


def fid_reference(path: str | None):
    """(mu, sigma) of an npz of Inception statistics; None for none."""
    if path is None:
        return None
    try:
        with np.load(path) as f:
            return f["mu"], f["sigma"]
    except (OSError, KeyError, ValueError) as e:
        raise SamplerkitError(f"{path}: not an npz with 'mu' and 'sigma' ({type(e).__name__})") from None


def _settings_part(text: str, name: str) -> str | None:
    """The value of ``name=`` in an exposure-bias row's settings column (parts joined by ';' in the
    order chain, data, clip, ...; a data source may itself hold ';noresize')."""
    m = re.search(rf"(?:^|;){name}=(.*?)(?:;clip=|$)", text)
    return m.group(1) if m else None


def _check_one_experiment(csv_path, specs, n: int, data: str) -> None:
    """The CSV holds one experiment: the same models (remedy variants included), images and data."""
    check_experiment(csv_path, "exposure-bias rows", {"model": [s.name for s in specs], "n": {n}, "data": {data}},
                     of_row={"data": lambda row: _settings_part(row.get("settings", ""), "data")})
