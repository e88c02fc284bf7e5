"""Bits/dim of a data set, one CSV row per image, resumable (``samplerkit nll``).

Each image's randomness comes from its own generator, seeded with ``seed + index`` (the image's
index in the data source): the VLB's noise at every t, the ODE's probe vectors and dequantization
noise. An image's result therefore does not depend on the batch it ran in, and a killed run
resumes with the images not yet in the CSV (:class:`samplerkit.results.ResultsCSV`, rewritten
atomically after every batch). VLB rows carry the per-t terms L_t (bits/dim) in columns
``L_0 .. L_{T-1}``, so L_vlb can be plotted against t (Nichol & Dhariwal 2021, Fig. 2).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..denoisers import training_alpha_bar
from ..errors import SamplerkitError
from ..results import ResultsCSV
from ..seeds import StackedRandomGenerator
from .ode import DEQUANTIZE, PROBES, noise_range, ode_nll
from .vlb import vlb_terms

METHODS = ("vlb", "ode")
CSV_COLUMNS = ("model", "sha256", "method", "data", "image", "bpd", "prior_bpd", "nfe", "seconds", "settings")
KEY_COLUMNS = ("model", "sha256", "method", "data", "image", "settings")


@dataclass(frozen=True)
class Settings:
    """What a likelihood run computes; ``for_csv`` keeps the settings of its method only."""

    method: str = "vlb"
    clip_denoised: bool = True  # vlb
    variance: str = "auto"  # vlb
    atol: float = 1e-5  # ode
    rtol: float = 1e-5  # ode
    probes: int = 1  # ode
    probe: str = "rademacher"  # ode
    dequantize: str = "none"  # ode
    sigma_min: float | None = None  # ode; None: the model's
    sigma_max: float | None = None  # ode; None: the model's
    seed: int = 0

    def check(self) -> None:
        if self.method not in METHODS:
            raise SamplerkitError(f"unknown method {self.method!r}; use vlb or ode")
        if self.probe not in PROBES:
            raise SamplerkitError(f"unknown probe {self.probe!r}; use rademacher or gaussian")
        if self.dequantize not in DEQUANTIZE:
            raise SamplerkitError(f"unknown dequantization {self.dequantize!r}; use none or uniform")
        if self.probes < 1 or not (self.atol > 0 and self.rtol > 0):
            raise SamplerkitError("probes must be >= 1 and atol, rtol > 0")
        if self.method == "vlb" and (self.sigma_min is not None or self.sigma_max is not None):
            raise SamplerkitError("sigma_min and sigma_max set the ODE's interval; the VLB runs on the model's chain")

    def for_csv(self) -> str:
        keep = {"vlb": ("clip_denoised", "variance", "seed"),
                "ode": ("atol", "rtol", "probes", "probe", "dequantize", "sigma_min", "sigma_max", "seed")}[self.method]
        return json.dumps({k: v for k, v in asdict(self).items() if k in keep and v is not None}, sort_keys=True)


def results_csv(path: str | Path | None, T: int = 0) -> ResultsCSV:
    """The CSV of a likelihood run; ``T`` > 0 adds the per-t columns L_0 .. L_{T-1} of the VLB."""
    return ResultsCSV(path, CSV_COLUMNS + tuple(f"L_{t}" for t in range(T)), KEY_COLUMNS, "a likelihood (nll)")


def _probe_noise(gen: StackedRandomGenerator, shape, settings: Settings) -> torch.Tensor:
    if settings.probe == "rademacher":
        return torch.stack([gen.randint(2, shape).to(torch.float64) * 2 - 1 for _ in range(settings.probes)])
    return torch.stack([gen.randn(shape, dtype=torch.float64) for _ in range(settings.probes)])


def _uniform(gen: StackedRandomGenerator, shape) -> torch.Tensor:
    return torch.stack([torch.rand(shape[1:], generator=g, dtype=torch.float64, device=gen.device)
                        for g in gen.generators])


def nfe_per_image(net, settings: Settings) -> int | None:
    """Network calls per image: T for the VLB; None (adaptive) for the ODE."""
    if settings.method == "vlb":
        ab = training_alpha_bar(net)
        return None if ab is None else int(ab.numel())
    return None


def measure(net, x0: torch.Tensor, indices: Sequence[int], labels, settings: Settings,
            progress: Callable[[int], None] = lambda n: None) -> list[dict]:
    """Rows (without the model/data columns) for the images ``x0`` with data-source indices ``indices``.
    ``progress(n)`` is told of every n network calls made per image of the batch."""
    gen = StackedRandomGenerator(x0.device, [settings.seed + int(i) for i in indices])
    t0 = time.perf_counter()
    if settings.method == "vlb":
        r = vlb_terms(net, x0, labels, settings.clip_denoised, settings.variance, randn_like=gen.randn_like,
                      callback=lambda info: progress(1))
        seconds = time.perf_counter() - t0
        T = r.terms.shape[1]
        return [dict(image=int(i), bpd=float(r.bpd[b]), prior_bpd=float(r.prior[b]), nfe=T,
                     seconds=seconds / len(indices), **{f"L_{t}": float(r.terms[b, t]) for t in range(T)})
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
                probe_noise=probe_noise, uniform_noise=u, callback=step)
    seconds = time.perf_counter() - t0
    D = x0[0].numel()
    return [dict(image=int(i), bpd=float(r.bpd[b]), prior_bpd=float(-r.prior[b] / (D * math.log(2))),
                 nfe=int(r.nfe[b]), seconds=seconds / len(indices)) for b, i in enumerate(indices)]


def run(net, x0: torch.Tensor, indices: Sequence[int], labels, settings: Settings, *, csv_path, model: str,
        sha256: str = "", data: str = "", batch_size: int = 16, log: Callable[[str], None] = lambda s: None,
        show_progress: bool = False) -> list[dict]:
    """Measure (or resume) bits/dim of the images ``x0`` [N, C, H, W] in [-1, 1] (data-source indices
    ``indices``, class ``labels`` or None) with one model; returns their rows, in order."""
    from tqdm import tqdm

    settings.check()
    if settings.method == "vlb" and training_alpha_bar(net) is None:
        raise SamplerkitError(f"{model} is continuous in sigma (no discrete chain), so it has no variational "
                              f"bound; use method='ode'")
    if settings.method == "ode":
        noise_range(net, settings.sigma_min, settings.sigma_max)
    per_image = nfe_per_image(net, settings)
    table = results_csv(csv_path, per_image or 0)
    rows = table.read()
    base = dict(model=model, sha256=sha256, method=settings.method, data=data, settings=settings.for_csv())
    finished = {table.key(r) for r in rows}
    todo = [b for b, i in enumerate(indices) if table.key(dict(base, image=int(i))) not in finished]
    budget = f"{per_image * len(todo):,d} network calls ({per_image} per image)" if per_image else \
        f"adaptive NFE (atol {settings.atol:g}, rtol {settings.rtol:g}; each call with {settings.probes} " \
        f"vector-Jacobian product{'s' if settings.probes > 1 else ''})"
    log(f"nll {settings.method} {model}: {len(todo)} of {len(indices)} images to run "
        f"({len(indices) - len(todo)} already in {csv_path}); {budget}")
    total = per_image * len(todo) if per_image else None
    with tqdm(total=total, unit="NFE", disable=not show_progress or not todo, dynamic_ncols=True,
              desc=f"{model} {settings.method}") as bar:
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
# summaries: mean bits/dim with a t-interval, and paired differences between models on the same images


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the Student-t interval at ``level``); half-width nan for one value."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()) if len(v) else math.nan, math.nan
    return float(v.mean()), float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def summary(rows_by_model: dict[str, list[dict]], level: float = 0.95) -> list[dict]:
    """One line per model: images, mean bits/dim +- t-interval, mean prior term and NFE; and for
    every model after the first, the paired difference (model - first) over the images both have."""
    out = []
    first = next(iter(rows_by_model), None)
    for name, rows in rows_by_model.items():
        bpd = [float(r["bpd"]) for r in rows]
        mean, half = mean_interval(bpd, level)
        line = dict(model=name, method=rows[0]["method"] if rows else "", n=len(rows), bpd=mean, ci=half,
                    prior_bpd=float(np.mean([float(r["prior_bpd"]) for r in rows])) if rows else math.nan,
                    nfe=float(np.mean([float(r["nfe"]) for r in rows])) if rows else math.nan)
        if name != first:
            ref = {int(r["image"]): float(r["bpd"]) for r in rows_by_model[first]}
            diffs = [float(r["bpd"]) - ref[int(r["image"])] for r in rows if int(r["image"]) in ref]
            line["diff"], line["diff_ci"] = mean_interval(diffs, level)
        out.append(line)
    return out


def table(lines: list[dict], level: float = 0.95) -> str:
    """The summary as plain text."""
    pct = f"{100 * level:g}%"
    head = f"{'model':<24} {'method':<6} {'images':>6} {'bits/dim':>10} {pct + ' CI':>9} {'NFE':>7}" \
           f"  paired diff vs {lines[0]['model'] if lines else ''} ({pct} CI)"
    out = [head]
    for ln in lines:
        diff = f"  {ln['diff']:+.4f} +- {ln['diff_ci']:.4f}" if "diff" in ln else ""
        out.append(f"{ln['model']:<24} {ln['method']:<6} {ln['n']:>6d} {ln['bpd']:>10.4f} {ln['ci']:>9.4f} "
                   f"{ln['nfe']:>7.0f}{diff}")
    return "\n".join(out)
