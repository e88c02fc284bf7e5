"""Bits/dim of a data set, one CSV row per image, resumable (``samplerkit nll``).

A run is one :class:`NllSettings` (models, data, CSV, and the :class:`Settings` of the method),
checked when it is made; :func:`evaluate` runs it. Each image's randomness comes from its own
generator, seeded with ``seed + index`` (the image's index in the data source): the VLB's noise at
every t, the ODE's probe vectors and dequantization noise. An image's result therefore does not
depend on the batch it ran in, and a killed run resumes with the images not yet in the CSV
(:class:`samplerkit.results.ResultsCSV`, rewritten atomically after every batch). VLB rows carry
the per-t terms L_t (bits/dim) in columns ``L_<t>`` (t the training timestep; every t of the full
chain, or the kept ones of a respaced chain), so L_vlb can be plotted against t (Nichol & Dhariwal
2021, Fig. 2). ``batch_seconds`` is the wall time of the batch a row's image ran in, with
``batch_images`` images (the images of a batch share every network call, so no image has a time of
its own); files from before these columns hold ``seconds`` = batch_seconds / batch_images and
resume as they are.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from tqdm import tqdm

from ..builtin import DEFAULT_MODEL
from ..data import open_source, to_model_space
from ..denoisers import training_alpha_bar
from ..errors import SamplerkitError
from ..loading import load
from ..lookup import model_sha256
from ..results import ResultsCSV, check_experiment
from ..samplers import VARIANCES
from ..schedules import respace
from ..seeds import StackedRandomGenerator
from .ode import DEQUANTIZE, PROBES, TIMESTEPS, noise_range, ode_nll, with_timesteps
from .vlb import chain_timesteps, vlb_terms

METHODS = ("vlb", "ode")
CSV_COLUMNS = ("model", "sha256", "method", "data", "image", "bpd", "prior_bpd", "nfe", "batch_seconds",
               "batch_images", "settings")
KEY_COLUMNS = ("model", "sha256", "method", "data", "image", "settings")


@dataclass(frozen=True)
class Settings:
    """What a likelihood run computes; ``for_csv`` keeps the settings of its method only.

    ``respacing`` (VLB): None for the full T-step bound, or a respacing ('K', 'ddimK', '10,15,20';
    :func:`samplerkit.schedules.respace`) for the bound of that K-step chain, improved-diffusion's
    ``image_nll.py --timestep_respacing``; rows and the table label it."""

    method: str = "vlb"
    clip_denoised: bool = True  # vlb
    variance: str = "auto"  # vlb
    respacing: str | None = None  # vlb; None: all T steps
    atol: float = 1e-5  # ode
    rtol: float = 1e-5  # ode
    probes: int = 1  # ode
    probe: str = "rademacher"  # ode
    dequantize: str = "none"  # ode
    sigma_min: float | None = None  # ode; None: the model's
    sigma_max: float | None = None  # ode; None: the model's
    seed: int = 0
    timesteps: str = "trained"  # ode; 'continuous': a discrete eps-model at real timesteps (a deviation)

    def check(self) -> None:
        if self.method not in METHODS:
            raise SamplerkitError(f"unknown method {self.method!r}; use vlb or ode")
        if self.variance not in ("auto", *VARIANCES):
            raise SamplerkitError(f"unknown variance {self.variance!r}; use auto, {', '.join(VARIANCES)}")
        if self.probe not in PROBES:
            raise SamplerkitError(f"unknown probe {self.probe!r}; use rademacher or gaussian")
        if self.dequantize not in DEQUANTIZE:
            raise SamplerkitError(f"unknown dequantization {self.dequantize!r}; use none or uniform")
        if self.probes < 1 or not (self.atol > 0 and self.rtol > 0):
            raise SamplerkitError("probes must be >= 1 and atol, rtol > 0")
        if self.method == "vlb" and (self.sigma_min is not None or self.sigma_max is not None):
            raise SamplerkitError("sigma_min and sigma_max set the ODE's interval; the VLB runs on the model's chain")
        if self.method == "ode" and self.respacing is not None:
            raise SamplerkitError("respacing chooses the VLB's chain; the ODE has none (method='vlb')")
        if self.timesteps not in TIMESTEPS:
            raise SamplerkitError(f"unknown timesteps {self.timesteps!r}; use trained or continuous")
        if self.method == "vlb" and self.timesteps != "trained":
            raise SamplerkitError("continuous timesteps apply to the ODE likelihood; the VLB runs on the trained chain")

    def for_csv(self) -> str:
        keep = {"vlb": ("clip_denoised", "variance", "respacing", "seed"),
                "ode": ("atol", "rtol", "probes", "probe", "dequantize", "sigma_min", "sigma_max", "seed",
                        "timesteps")}[self.method]
        drop = (None, "trained")  # the trained levels are the default, so earlier CSVs keep their keys
        return json.dumps({k: v for k, v in asdict(self).items() if k in keep and v not in drop}, sort_keys=True)

    def label(self) -> str:
        """The method as the table shows it: 'vlb', 'vlb@K' on a K-step respaced chain, 'ode'."""
        return f"vlb@{self.respacing}" if self.method == "vlb" and self.respacing is not None else self.method

    def chain(self, net) -> torch.Tensor | None:
        """The kept training timesteps of the VLB's chain (None: the ODE, or a continuous model)."""
        alpha_bar = training_alpha_bar(net)
        if self.method != "vlb" or alpha_bar is None:
            return None
        return chain_timesteps(net, None if self.respacing is None else respace(alpha_bar.numel(), self.respacing))


def results_csv(path: str | Path | None, T: int | Sequence[int] = 0) -> ResultsCSV:
    """The CSV of a likelihood run; ``T`` adds the per-t columns of the VLB: L_0 .. L_{T-1} for an
    int, L_t for each training timestep t of a sequence (a respaced chain)."""
    steps = range(T) if isinstance(T, int) else [int(t) for t in T]
    return ResultsCSV(path, CSV_COLUMNS + tuple(f"L_{t}" for t in steps), KEY_COLUMNS, "a likelihood (nll)")


def _probe_noise(gen: StackedRandomGenerator, shape, settings: Settings) -> torch.Tensor:
    if settings.probe == "rademacher":
        return torch.stack([gen.randint(2, shape).to(torch.float64) * 2 - 1 for _ in range(settings.probes)])
    return torch.stack([gen.randn(shape, dtype=torch.float64) for _ in range(settings.probes)])


def _uniform(gen: StackedRandomGenerator, shape) -> torch.Tensor:
    return torch.stack([torch.rand(shape[1:], generator=g, dtype=torch.float64, device=gen.device)
                        for g in gen.generators])


def nfe_per_image(net, settings: Settings) -> int | None:
    """Network calls per image: T (or the respaced chain's K) for the VLB; None (adaptive) for the ODE."""
    steps = settings.chain(net)
    return None if steps is None else int(steps.numel())


def measure(net, x0: torch.Tensor, indices: Sequence[int], labels, settings: Settings,
            progress: Callable[[int], None] = lambda n: None) -> list[dict]:
    """Rows (without the model/data columns) for the images ``x0`` with data-source indices ``indices``.
    ``progress(n)`` is told of every n network calls made per image of the batch."""
    gen = StackedRandomGenerator(x0.device, [settings.seed + int(i) for i in indices])
    t0 = time.perf_counter()
    if settings.method == "vlb":
        r = vlb_terms(net, x0, labels, settings.clip_denoised, settings.variance, randn_like=gen.randn_like,
                      callback=lambda info: progress(1), timesteps=settings.chain(net))
        timing = dict(batch_seconds=time.perf_counter() - t0, batch_images=len(indices))
        steps = [int(t) for t in r.timesteps]
        return [dict(image=int(i), bpd=float(r.bpd[b]), prior_bpd=float(r.prior[b]), nfe=len(steps), **timing,
                     **{f"L_{t}": float(r.terms[b, k]) for k, t in enumerate(steps)})
                for b, i in enumerate(indices)]
    done = [0]

    def step(info):
        n = int(info["nfe"].max())
        progress(n - done[0])
        done[0] = n

    probe_noise = _probe_noise(gen, x0.shape, settings)
    u = _uniform(gen, x0.shape) if settings.dequantize == "uniform" else None
    r = ode_nll(net, x0, labels, settings.atol, settings.rtol, settings.probes, probe=settings.probe,
                dequantize=settings.dequantize, sigma_min=settings.sigma_min, sigma_max=settings.sigma_max,
                probe_noise=probe_noise, uniform_noise=u, callback=step, timesteps=settings.timesteps)
    timing = dict(batch_seconds=time.perf_counter() - t0, batch_images=len(indices))
    D = x0[0].numel()
    return [dict(image=int(i), bpd=float(r.bpd[b]), prior_bpd=float(-r.prior[b] / (D * math.log(2))),
                 nfe=int(r.nfe[b]), **timing) for b, i in enumerate(indices)]


def _check_model(net, model: str, settings: Settings) -> None:
    settings.check()
    if settings.method == "vlb" and training_alpha_bar(net) is None:
        raise SamplerkitError(f"{model} is continuous in sigma (no discrete chain), so it has no variational "
                              f"bound; use method='ode'")
    if settings.method == "ode":
        noise_range(with_timesteps(net, settings.timesteps), settings.sigma_min, settings.sigma_max)
    settings.chain(net)  # a respacing the model's T cannot take fails before any image is read


def run(net, x0: torch.Tensor, indices: Sequence[int], labels, settings: Settings, *, csv_path, model: str,
        sha256: str = "", data: str = "", batch_size: int = 16, log: Callable[[str], None] = lambda s: None,
        show_progress: bool = False) -> list[dict]:
    """Measure (or resume) bits/dim of the images ``x0`` [N, C, H, W] in [-1, 1] (data-source indices
    ``indices``, class ``labels`` or None) with one model; returns their rows, in order."""
    _check_model(net, model, settings)
    per_image = nfe_per_image(net, settings)
    steps = settings.chain(net)
    table = results_csv(csv_path, [] if steps is None else steps.tolist())
    rows = table.read()
    base = dict(model=model, sha256=sha256, method=settings.method, data=data, settings=settings.for_csv())
    finished = {table.key(r) for r in rows}
    todo = [b for b, i in enumerate(indices) if table.key(dict(base, image=int(i))) not in finished]
    chain = "" if settings.respacing is None else f" of the respaced chain {settings.respacing!r}"
    budget = f"{per_image * len(todo):,d} network calls ({per_image} per image{chain})" if per_image else \
        f"adaptive NFE (atol {settings.atol:g}, rtol {settings.rtol:g}; each call with {settings.probes} " \
        f"vector-Jacobian product{'s' if settings.probes > 1 else ''})"
    log(f"nll {settings.label()} {model}: {len(todo)} of {len(indices)} images to run "
        f"({len(indices) - len(todo)} already in {csv_path}); {budget}")
    total = per_image * len(todo) if per_image else None
    with tqdm(total=total, unit="NFE", disable=not show_progress or not todo, dynamic_ncols=True,
              desc=f"{model} {settings.label()}") as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            lab = None if labels is None else labels[chunk]
            new = measure(net, x0[chunk], [indices[b] for b in chunk], lab, settings,
                          progress=lambda n, k=len(chunk): bar.update(n * k))
            for row in new:
                table.put(rows, dict(base, **row))
            table.write(rows)
    by_key = {table.key(r): r for r in rows}
    return [by_key[table.key(dict(base, image=int(i)))] for i in indices]


# ---------------------------------------------------------------------------------------------
# a whole run, as the nll command makes it: one validated settings object, one call


@dataclass(frozen=True)
class NllSettings:
    """An ``nll`` run: bits/dim of the first ``num_images`` images of ``data`` under each of
    ``models`` (zoo names or checkpoints; ``family``/``flags``/``preset`` as :func:`samplerkit.load`),
    one row per image in ``csv_path``, ``batch`` images per batch (the unit of resuming), measured
    as ``measure`` says. Checked when made."""

    csv_path: str | Path
    models: tuple[str, ...] = (DEFAULT_MODEL,)
    family: str | None = None
    flags: dict = field(default_factory=dict)
    preset: str | None = None
    data: str = "builtin:shapes32"
    num_images: int = 64
    batch: int = 16
    device: str = "cpu"
    measure: Settings = Settings()
    quiet: bool = False
    timestep_modes: tuple[str, ...] = ()  # ODE: several of TIMESTEPS, a row per model for each; (): measure's

    def __post_init__(self):
        object.__setattr__(self, "models", tuple(dict.fromkeys(self.models or (DEFAULT_MODEL,))))
        for mode in self.timestep_modes:
            replace(self.measure, timesteps=mode).check()
        if self.num_images < 1:
            raise SamplerkitError(f"num_images must be >= 1, got {self.num_images}")
        if self.batch < 1:
            raise SamplerkitError(f"batch must be >= 1, got {self.batch}")
        self.measure.check()


def load_images(data: str, n: int, resolution: int, log: Callable[[str], None] = lambda s: None):
    """The first n images of the source as [-1, 1] NCHW float64, their labels (or None) and indices."""
    src = open_source(data)
    if n > len(src):
        log(f"note: {data} holds {len(src)} images; using all of them instead of {n}")
        n = len(src)
    if resolution and src.resolution != resolution:
        raise SamplerkitError(f"{data} has {src.resolution}x{src.resolution} images but the model expects "
                              f"{resolution}x{resolution}; likelihoods are of the data as it is, so give data "
                              f"at the model's resolution")
    chunks, labels = [], []
    for images, lab in src.batches(256, limit=n):
        chunks.append(to_model_space(images).double())
        labels.append(lab)
    lab = np.concatenate(labels) if labels and all(v is not None for v in labels) else None
    return torch.cat(chunks), lab, list(range(n))


def evaluate(settings: NllSettings, log: Callable[[str], None] = lambda s: None) -> dict[str, list[dict]]:
    """Run (or resume) ``settings``: every model's rows, by model name, in image order."""
    csv_file, method = Path(settings.csv_path), settings.measure
    runs = [replace(method, timesteps=mode) for mode in settings.timestep_modes] or [method]
    results_csv(csv_file).read()  # an unreadable CSV fails before any work
    rows_by_model, images = {}, None
    for name in settings.models:
        net = load(name, family=settings.family, device=settings.device, **settings.flags,
                   **({"preset": settings.preset} if settings.preset else {})).eval()
        for r in runs:
            _check_model(net, name, r)
        if images is None:
            images = load_images(settings.data, settings.num_images, int(getattr(net, "img_resolution", 0) or 0), log)
            check_experiment(csv_file, "likelihood rows", {
                "model": settings.models, "method": {method.method}, "data": {settings.data},
                "settings": {r.for_csv() for r in runs}, "image": images[2]})
        x0, labels, indices = images
        lab = None
        if getattr(net, "label_dim", 0):
            if labels is None:
                raise SamplerkitError(f"{name} is class-conditional but {settings.data} has no class labels")
            lab = torch.as_tensor(labels, dtype=torch.int64, device=settings.device)
        for r in runs:
            label = name if r.timesteps == "trained" else f"{name} (continuous t)"
            rows_by_model[label] = run(net, x0.to(settings.device), indices, lab, r, csv_path=csv_file, model=name,
                                       sha256=model_sha256(name), data=settings.data, batch_size=settings.batch,
                                       log=log, show_progress=not settings.quiet)
    return rows_by_model


# ---------------------------------------------------------------------------------------------
# summaries: mean bits/dim with a t-interval, and paired differences between models on the same images


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the Student-t interval at ``level``); half-width nan for one value."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()) if len(v) else math.nan, math.nan
    return float(v.mean()), float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def method_label(row: dict) -> str:
    """A row's method as the table shows it: 'vlb', 'vlb@K' (the bound of a respaced chain), 'ode'."""
    try:
        respacing = json.loads(row.get("settings") or "{}").get("respacing")
    except (ValueError, AttributeError):
        respacing = None
    return f"{row['method']}@{respacing}" if row.get("method") == "vlb" and respacing else str(row.get("method", ""))


def summary(rows_by_model: dict[str, list[dict]], level: float = 0.95) -> list[dict]:
    """One line per model: images, mean bits/dim and the half-width ``ci`` of its t-interval, mean
    prior term and NFE; and for every model after the first, the paired difference ``diff`` (model -
    first) over the images both have, with the half-width ``diff_ci`` of its t-interval."""
    out = []
    first = next(iter(rows_by_model), None)
    for name, rows in rows_by_model.items():
        bpd = [float(r["bpd"]) for r in rows]
        mean, half = mean_interval(bpd, level)
        line = dict(model=name, method=method_label(rows[0]) if rows else "", n=len(rows), bpd=mean, ci=half,
                    prior_bpd=float(np.mean([float(r["prior_bpd"]) for r in rows])) if rows else math.nan,
                    nfe=float(np.mean([float(r["nfe"]) for r in rows])) if rows else math.nan)
        if name != first:
            ref = {int(r["image"]): float(r["bpd"]) for r in rows_by_model[first]}
            diffs = [float(r["bpd"]) - ref[int(r["image"])] for r in rows if int(r["image"]) in ref]
            line["diff"], line["diff_ci"] = mean_interval(diffs, level)
        out.append(line)
    return out


def table(lines: list[dict], level: float = 0.95) -> str:
    """The summary as plain text: ``+-95%`` is the half-width of the t-interval of the mean; the
    paired column only with several models; a respaced bound ('vlb@K') is explained below."""
    pct = f"+-{100 * level:g}%"
    width = max([6, *(len(ln["method"]) for ln in lines)])
    w = max([24] + [len(ln["model"]) for ln in lines])  # a "(continuous t)" row keeps the columns aligned
    head = f"{'model':<{w}} {'method':<{width}} {'images':>6} {'bits/dim':>10} {pct:>7} {'NFE':>7}"
    if len(lines) > 1:
        head += f"  paired diff vs {lines[0]['model']} ({pct})"
    out = [head]
    for ln in lines:
        diff = f"  {ln['diff']:+.4f} +- {ln['diff_ci']:.4f}" if "diff" in ln else ""
        out.append(f"{ln['model']:<{w}} {ln['method']:<{width}} {ln['n']:>6d} {ln['bpd']:>10.4f} {ln['ci']:>7.4f} "
                   f"{ln['nfe']:>7.0f}{diff}")
    for label in dict.fromkeys(ln["method"] for ln in lines if ln["method"].startswith("vlb@")):
        out.append(f"{label}: the variational bound of the respaced chain {label[4:]!r} (Nichol & Dhariwal 2021, "
                   f"Sec. 4), a bound on that chain's NLL, not on the full T-step model's")
    return "\n".join(out)
