"""The exposure-bias harness: models x modes x t -> one CSV row per cell, resumable.

Every model sees the same real images x0 and, for a given (image, t), the same noise, so two
models' per-image values pair up (:func:`samplerkit.exposure.measures.paired_difference`).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import samplers
from ..data import to_uint8
from ..denoisers import DenoiserWrapper
from ..diffusion import q_sample, sigma_from_alpha_bar
from ..errors import SamplerkitError
from ..metrics import frechet_distance
from ..output import atomic_write
from ..results import ResultsCSV, cell_text
from ..seeds import StackedRandomGenerator
from .chain import (
    MeasurementChain,
    _sampler_steps,
    ancestral_chain,
    check_t,
    ddpm_mean_chain,
    default_variance,
    measurement_chain,
    prediction_error,
)
from .measures import (
    eps_norms,
    feature_stats,
    l1_per_image,
    nu_summary,
    paired_difference,
    shapiro_rejections,
    suggested_eps_scaler,
    summarize,
)

MODES = ("delta", "fid", "nu", "normality", "eps-norm")

KEY_COLUMNS = ("model", "sha256", "mode", "t", "n", "seed", "settings")
CSV_COLUMNS = (
    *KEY_COLUMNS, "T", "t_full", "T_full", "nfe", "seconds",
    "delta_mean", "delta_std", "delta_ci_low", "delta_ci_high",
    "baseline", "diff_mean", "diff_ci_low", "diff_ci_high",
    "fid", "e_mean", "nu", "sw_reject_rate", "sw_tests",
    "eps_norm_sample", "eps_norm_forward", "eps_norm_ratio", "speed",
)


@dataclass
class ModelSpec:
    """A model under test: its display name, the denoiser and the checkpoint's sha256 ('' if none).

    ``time_shift``: a :class:`samplerkit.remedies.TimeShift` (Li et al. 2024 (TS)) that the delta,
    fid and eps-norm chains use (nu and normality make no chain, so it does not apply there);
    Epsilon Scaling is a property of ``net`` (:func:`samplerkit.remedies.eps_scaling`)."""

    name: str
    net: object
    sha256: str = ""
    time_shift: object = None
    speed: str = ""  # the execution policy the network runs under (samplerkit.speed), recorded in each row


@dataclass
class Settings:
    """Everything a row depends on besides the model, the mode and t.

    ``t_values`` are the chain lengths of the delta and fid modes; ``nu`` and ``normality`` use
    t = stride, 2 stride, ... T (App. A.5: stride 10). ``clip_denoised``: clamp x0_hat to
    [-1, 1] at every step and before e_t (guided-diffusion's default, which the authors' runs
    use). ``respacing``: measure on a respaced chain instead of the full one (rows say so).
    ``num_values``/``alpha``: the Shapiro-Wilk check. ``draws``: eps draws per image for
    ``normality`` (None: enough to pool ``num_values``).
    """

    modes: tuple[str, ...] = ("delta",)
    t_values: tuple[int, ...] = (100, 300, 600, 1000)
    batch: int = 64
    seed: int = 0
    respacing: str | None = None
    reference: str = "linear:1000"
    stride: int = 10
    clip_denoised: bool = True
    variance: str | None = None
    num_values: int = 50
    alpha: float = 0.05
    draws: int | None = None
    data: str = ""
    pairs: int = 8

    def __post_init__(self):
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise SamplerkitError(f"unknown mode {', '.join(bad) or '(none)'}; use {', '.join(MODES)}")
        if self.batch < 1:
            raise SamplerkitError(f"batch must be >= 1, got {self.batch}")
        if self.stride < 1:
            raise SamplerkitError(f"stride must be >= 1, got {self.stride}")

    def chain(self, net) -> MeasurementChain:
        return measurement_chain(net, self.respacing, self.reference)

    def key(self, mode: str, net, n: int) -> str:
        """The settings column: what a row must match to be reused on resume."""
        parts = [f"chain={self.chain(net).description()}", f"data={self.data}", f"clip={int(self.clip_denoised)}"]
        if mode in ("fid", "eps-norm"):
            parts.append(f"variance={self.variance or default_variance(net)}")
        if mode == "normality":
            parts += [f"values={self.num_values}", f"alpha={self.alpha}", f"draws={self.draws_for(n)}"]
        return ";".join(parts)

    def draws_for(self, n: int) -> int:
        return self.draws if self.draws else max(1, math.ceil(self.num_values / n))

    def grid(self, T: int) -> list[int]:
        return list(range(self.stride, T + 1, self.stride)) or [T]


@dataclass
class Cell:
    spec: ModelSpec
    mode: str
    t: int
    chain: MeasurementChain
    nfe: int
    settings_key: str


@dataclass
class Report:
    """Rows (one per model x mode x t) plus what the figures need that is not in the rows."""

    rows: list[dict] = field(default_factory=list)  # everything in the CSV
    current: list[dict] = field(default_factory=list)  # the rows of this run's cells, in plan order
    pairs: dict = field(default_factory=dict)  # (model, mode, t) -> (x0, x0_hat) [k, C, H, W]
    histograms: dict = field(default_factory=dict)  # (model, t) -> {pixel index: values}
    nu: dict = field(default_factory=dict)  # model -> nu_summary(...) and the clip setting
    eps_norm: dict = field(default_factory=dict)  # model -> suggested eps_scaler and what it is from
    per_image: dict = field(default_factory=dict)  # row key -> per-image delta values (paired differences)


def results_csv(path: str | Path | None) -> ResultsCSV:
    return ResultsCSV(path, CSV_COLUMNS, KEY_COLUMNS, "an exposure-bias")


def per_image_path(csv_path: str | Path) -> Path:
    """Where the per-image delta values of a CSV's rows live (for paired differences on resume)."""
    path = Path(csv_path)
    return path.with_name(f"{path.stem}.per-image.npz")


def read_per_image(csv_path) -> dict:
    """The per-image delta values kept beside a CSV (:func:`per_image_path`), by the key of their row
    (the values of :data:`KEY_COLUMNS` as text); {} when there is none."""
    path = per_image_path(csv_path) if csv_path is not None else None
    if path is None or not path.is_file():
        return {}
    with np.load(path) as f:
        return {tuple(str(k).split("\x1f")): f[f"v{i}"] for i, k in enumerate(f["keys"])}


def _write_per_image(csv_path, values: dict) -> None:
    if csv_path is None or not values:
        return
    buf = io.BytesIO()
    keys = list(values)
    np.savez(buf, keys=np.array(["\x1f".join(k) for k in keys]), **{f"v{i}": values[k] for i, k in enumerate(keys)})
    atomic_write(per_image_path(csv_path), buf.getvalue())


def _image_seed(seed: int, index: int, t: int) -> int:
    """Noise of image ``index`` at chain length t depends only on (seed, index, t): the same for
    every model, so models are compared on the same x_t."""
    return int(np.random.SeedSequence([seed, index, t]).generate_state(1)[0])


def plan(models: Sequence[ModelSpec], n: int, settings: Settings) -> list[Cell]:
    """Every (model, mode, t) cell of the run, with its NFE = t x images (delta, fid), images
    (nu) or images x draws (normality)."""
    cells = []
    for spec in models:
        chain = settings.chain(spec.net)
        for mode in settings.modes:
            if mode in ("delta", "fid"):
                ts = check_t(settings.t_values, chain.T, f"the {'respaced ' if chain.respaced else ''}chain of "
                             f"{spec.name}")
                cost = lambda t: t * n  # noqa: E731
            elif mode == "eps-norm":  # one sampling chain of T steps, then n evaluations per t
                ts = settings.grid(chain.T)
                cost = lambda t, first=ts[0], T=chain.T: n + (T * n if t == first else 0)  # noqa: E731
            else:
                ts = settings.grid(chain.T)
                draws = settings.draws_for(n) if mode == "normality" else 1
                cost = lambda t, d=draws: n * d  # noqa: E731
            for t in ts:
                cells.append(Cell(spec, mode, t, chain, cost(t), settings.key(mode, spec.net, n)))
    return cells


def _batch_labels(net, labels: torch.Tensor | None, lo: int, hi: int, device):
    if getattr(net, "label_dim", 0) == 0 or labels is None:
        return None
    return labels[lo:hi].to(device)


class _EpsRecorder(DenoiserWrapper):
    """The denoiser, keeping ||eps_hat||_2 per image of every call (in call order)."""

    def __init__(self, net):
        super().__init__(net)
        self.norms: list[torch.Tensor] = []

    def denoise_with_variance(self, x, sigma, class_labels=None):
        D, v = super().denoise_with_variance(x, sigma, class_labels)
        self.norms.append(eps_norms(x, D, sigma).cpu())
        return D, v


def sampling_eps_norms(spec: ModelSpec, n: int, labels, settings: Settings, *, progress=None,
                       device="cpu") -> torch.Tensor:
    """||eps_hat||_2 of n images along a sampling chain [T, n] (row t - 1 = chain length t): DDPM
    ancestral sampling from x_T on the measurement chain (ADM-ES's p_sample_loop), each image's
    x_T and noise from its own seed."""
    chain = settings.chain(spec.net)
    steps = _sampler_steps(spec.net, chain.alpha_bar)
    rows = []
    with torch.no_grad():
        for lo in range(0, n, settings.batch):
            hi = min(lo + settings.batch, n)
            gen = StackedRandomGenerator(device, [_image_seed(settings.seed, i, 0) for i in range(lo, hi)])
            shape = [hi - lo, spec.net.img_channels, spec.net.img_resolution, spec.net.img_resolution]
            recorder = _EpsRecorder(spec.net)
            report = (lambda d, b=hi - lo: progress(b)) if progress is not None else None
            samplers.ancestral(recorder, gen.randn(shape, dtype=torch.float64), steps,
                               _batch_labels(spec.net, labels, lo, hi, device),
                               variance=settings.variance or default_variance(spec.net), randn_like=gen.randn_like,
                               clip_denoised=settings.clip_denoised, callback=report, time_shift=spec.time_shift)
            rows.append(torch.stack(recorder.norms[::-1]))  # call i is chain index T - 1 - i
    return torch.cat(rows, dim=1)


@dataclass
class _Measurement:
    """One cell being measured: the model, t, the images and how to report progress."""

    spec: ModelSpec
    t: int
    x0: torch.Tensor
    labels: torch.Tensor | None
    settings: Settings
    alpha_bar: torch.Tensor
    device: object
    progress: Callable[[int], None] | None = None
    features: Callable | None = None
    real_features: tuple | None = None
    memo: dict = field(default_factory=dict)

    def batches(self):
        """(images, labels, per-image noise generator) of each batch; the noise of an image depends on
        (seed, index, t) only (:func:`_image_seed`)."""
        n, batch, net = self.x0.shape[0], self.settings.batch, self.spec.net
        with torch.no_grad():
            for lo in range(0, n, batch):
                hi = min(lo + batch, n)
                gen = StackedRandomGenerator(self.device, [_image_seed(self.settings.seed, i, self.t)
                                                           for i in range(lo, hi)])
                yield (self.x0[lo:hi].to(self.device, torch.float64), _batch_labels(net, self.labels, lo, hi,
                                                                                    self.device), gen)

    def report(self, count: int) -> None:
        if self.progress is not None:
            self.progress(count)

    def x_t(self, xb: torch.Tensor, gen) -> torch.Tensor:
        """x_t of a batch by the forward process (Ning et al. 2023 (IP), Eq. 4)."""
        return q_sample(xb, self.alpha_bar[self.t - 1], gen.randn(xb.shape, dtype=torch.float64))


def _pairs(pairs, xb, x_hat, k: int):
    """The first batch's (x0, x0_hat) image pairs (k of them) for the figures."""
    return pairs if pairs is not None or k <= 0 else (xb[:k].cpu(), x_hat[:k].cpu())


def _measure_delta(m: _Measurement) -> tuple[dict, dict]:
    """delta_t: the L1 distance of x0 to the DDPM mean chain's x0 estimate from x_t (IP paper, Fig. 1)."""
    deltas, pairs = [], None
    for xb, lb, gen in m.batches():
        x_hat = ddpm_mean_chain(m.spec.net, m.x_t(xb, gen), m.t, m.alpha_bar, lb,
                                clip_denoised=m.settings.clip_denoised, progress=m.progress,
                                time_shift=m.spec.time_shift)
        deltas.append(l1_per_image(xb, x_hat).cpu())
        pairs = _pairs(pairs, xb, x_hat, m.settings.pairs)
    per_image = torch.cat(deltas).numpy()
    s = summarize(per_image)
    stats = {"delta_mean": s["mean"], "delta_std": s["std"], "delta_ci_low": s["ci_low"], "delta_ci_high": s["ci_high"]}
    return stats, {"pairs": pairs, "per_image": per_image}


def _measure_fid(m: _Measurement) -> tuple[dict, dict]:
    """FID of the ancestral chain's x0 from x_t against the real images (IP paper, Tab. 1)."""
    feats, pairs = [], None
    for xb, lb, gen in m.batches():
        x_hat = ancestral_chain(m.spec.net, m.x_t(xb, gen), m.t, m.alpha_bar, lb, variance=m.settings.variance,
                                randn_like=gen.randn_like, clip_denoised=m.settings.clip_denoised,
                                time_shift=m.spec.time_shift)
        feats.append(np.asarray(m.features(to_uint8(x_hat.float()))))
        m.report(len(xb) * m.t)
        pairs = _pairs(pairs, xb, x_hat, m.settings.pairs)
    stats = {"fid": frechet_distance(*feature_stats(np.concatenate(feats)), *m.real_features)}
    return stats, {"pairs": pairs}


def _measure_eps_norm(m: _Measurement) -> tuple[dict, dict]:
    """||eps_hat|| along a sampling chain against the forward chain at the same t (Ning et al. 2024 (ES), Fig. 6)."""
    norms = []
    ab = m.alpha_bar[m.t - 1]
    sigma = sigma_from_alpha_bar(ab)
    for xb, lb, gen in m.batches():
        x = q_sample(xb, ab, gen.randn(xb.shape, dtype=torch.float64)) / ab.sqrt()
        norms.append(eps_norms(x, m.spec.net(x, sigma, lb), sigma).cpu())
        m.report(len(xb))
    name = m.spec.name
    if name not in m.memo:
        m.memo[name] = sampling_eps_norms(m.spec, m.x0.shape[0], m.labels, m.settings, progress=m.progress,
                                          device=m.device)
    sample, forward = float(m.memo[name][m.t - 1].mean()), float(torch.cat(norms).mean())
    return {"eps_norm_sample": sample, "eps_norm_forward": forward, "eps_norm_ratio": sample / forward}, {}


def _prediction_errors(m: _Measurement, draws: int, keep: bool) -> tuple[float, float, list]:
    """(mean, std) of the one-step prediction error e_t over every pixel, image and draw, and the errors
    themselves when ``keep`` (IP paper, App. A.5)."""
    s1 = s2 = count = 0.0
    errors = []
    for xb, lb, gen in m.batches():
        for _ in range(draws):
            e = prediction_error(m.spec.net, xb, m.t, m.alpha_bar, gen.randn(xb.shape, dtype=torch.float64), lb,
                                 clip_denoised=m.settings.clip_denoised)
            s1, s2, count = s1 + float(e.sum()), s2 + float((e**2).sum()), count + e.numel()
            if keep:
                errors.append(e.to(torch.float32).cpu())
            m.report(len(xb))
    mean = s1 / count
    return mean, math.sqrt(max(s2 / count - mean**2, 0.0)), errors


def _measure_nu(m: _Measurement) -> tuple[dict, dict]:
    """nu_t: the standard deviation of the prediction error (IP paper, App. A.5)."""
    mean, nu, _ = _prediction_errors(m, 1, keep=False)
    return {"e_mean": mean, "nu": nu}, {}


def _measure_normality(m: _Measurement) -> tuple[dict, dict]:
    """nu_t plus the Shapiro-Wilk rejection rate of the prediction error and its histograms (IP paper, Fig. 6)."""
    settings = m.settings
    mean, nu, errors = _prediction_errors(m, settings.draws_for(m.x0.shape[0]), keep=True)
    pool = torch.cat(errors)
    rejected, tests = shapiro_rejections(pool, settings.num_values, settings.alpha,
                                         np.random.default_rng([settings.seed, m.t]))
    stats = {"e_mean": mean, "nu": nu, "sw_reject_rate": rejected / tests if tests else float("nan"),
             "sw_tests": tests}
    return stats, {"histogram": {i: pool.flatten(1)[:, i].numpy() for i in _histogram_pixels(pool.shape[1:])}}


# mode -> the function that measures one cell of it
MEASURES: dict[str, Callable[[_Measurement], tuple[dict, dict]]] = {
    "delta": _measure_delta, "fid": _measure_fid, "nu": _measure_nu, "normality": _measure_normality,
    "eps-norm": _measure_eps_norm,
}


def measure(spec: ModelSpec, mode: str, t: int, x0: torch.Tensor, labels: torch.Tensor | None,
            settings: Settings, *, features: Callable | None = None, real_features=None,
            progress: Callable[[int], None] | None = None, device="cpu", memo: dict | None = None) -> tuple[dict, dict]:
    """One cell: the statistics of ``mode`` (:data:`MEASURES`) at chain length t over the images ``x0``
    ([N, C, H, W] in [-1, 1]). Returns (statistics, extras: image pairs, histograms, per-image delta).
    ``memo``: where the eps-norm mode keeps a model's sampling chain between its cells."""
    alpha_bar = settings.chain(spec.net).alpha_bar.to(device)
    m = _Measurement(spec, t, x0, labels, settings, alpha_bar, device, progress, features, real_features,
                     {} if memo is None else memo)
    return MEASURES[mode](m)


def _histogram_pixels(shape) -> list[int]:
    """Fig. 6: the same spatial position in each colour channel (i = c HW + centre)."""
    C, H, W = shape
    centre = (H // 2) * W + W // 2
    return [c * H * W + centre for c in range(C)]


def _histogram_ts(ts: Sequence[int], T: int) -> list[int]:
    """The grid values nearest to 0.3 T, 0.6 T and 0.9 T (Fig. 6 shows t = 300, 600, 900 of 1000)."""
    ts = sorted(set(ts))
    return sorted({min(ts, key=lambda t: abs(t - f * T)) for f in (0.3, 0.6, 0.9)})


def _cell_row(c: Cell, n: int, settings: Settings, stats: dict, seconds: float) -> dict:
    row = {"model": c.spec.name, "sha256": c.spec.sha256, "mode": c.mode, "t": c.t, "n": n, "seed": settings.seed,
           "settings": c.settings_key, "T": c.chain.T, "t_full": c.chain.level(c.t), "T_full": c.chain.T_full,
           "nfe": c.nfe, "seconds": round(seconds, 3), "speed": c.spec.speed}
    row.update(stats)
    return row


def add_paired_differences(rows: Sequence[dict], models: Sequence[str], per_image: dict,
                           table: ResultsCSV) -> int:
    """Fill ``baseline`` and ``diff_*`` of every delta row but the first model's: the paired
    difference of per-image delta to the first model's on the same (t, images, seed, settings).
    Returns the number of rows filled."""
    filled = 0
    groups: dict = {}
    for r in rows:
        if r["mode"] == "delta" and r["model"] in models:
            groups.setdefault(tuple(cell_text(r[k]) for k in ("t", "n", "seed", "settings")), []).append(r)
    for group in groups.values():
        group.sort(key=lambda r: models.index(r["model"]))
        base = per_image.get(table.key(group[0]))
        for r in group[1:]:
            mine = per_image.get(table.key(r))
            if base is None or mine is None:
                continue
            d = paired_difference(mine, base)
            r.update(baseline=group[0]["model"], diff_mean=d["mean"], diff_ci_low=d["ci_low"],
                     diff_ci_high=d["ci_high"])
            filled += 1
    return filled


def run(models: Sequence[ModelSpec], x0: torch.Tensor, labels: torch.Tensor | None, settings: Settings, *,
        csv_path: str | Path | None = None, features: Callable | None = None,
        real_features: tuple | None = None, device="cpu", log: Callable[[str], None] = print,
        show_progress: bool = True) -> Report:
    """Measure every (model, mode, t) cell not already in ``csv_path`` with the same settings,
    rewriting the CSV atomically after each cell. ``x0``: [N, C, H, W] real images in [-1, 1];
    ``labels``: their int class labels [N], passed to class-conditional models only.

    With several models, every delta row but the first model's gets the paired difference to it
    (per-image values are kept beside the CSV in ``<stem>.per-image.npz`` for resumed runs).
    The ``fid`` mode needs ``features(uint8 NHWC) -> [n, d]`` (an Inception feature extractor);
    the reference statistics are ``real_features`` = (mu, sigma) or else the features of ``x0``.
    """
    from tqdm import tqdm

    n = x0.shape[0]
    if n == 0:
        raise SamplerkitError("no images to measure on; pass a data source with at least one image")
    cells = plan(models, n, settings)
    table = results_csv(csv_path)
    existing = table.read()
    per_image = read_per_image(csv_path)
    done = {table.key(r) for r in existing}
    todo = [c for c in cells if table.key(_cell_row(c, n, settings, {}, 0.0)) not in done]
    if any(c.mode == "fid" for c in todo):
        real_features = _real_features(x0, settings.batch, features, real_features)
    log(cost_summary(cells, todo, n))
    report = Report(rows=list(existing))
    hist_ts, memo = {}, {}
    for c in todo:
        if c.mode == "normality":
            hist_ts.setdefault(c.spec.name, _histogram_ts(settings.grid(c.chain.T), c.chain.T))
    with tqdm(total=sum(c.nfe for c in todo), unit="NFE", disable=not show_progress, dynamic_ncols=True) as bar:
        for c in todo:
            bar.set_description(f"{c.spec.name} {c.mode} t={c.t}")
            start = time.perf_counter()
            stats, extras = measure(c.spec, c.mode, c.t, x0, labels, settings, features=features,
                                    real_features=real_features, progress=bar.update, device=device, memo=memo)
            row = _cell_row(c, n, settings, stats, time.perf_counter() - start)
            table.put(report.rows, row)
            if extras.get("per_image") is not None:
                per_image[table.key(row)] = extras["per_image"]
                _write_per_image(csv_path, per_image)
            if extras.get("pairs") is not None:
                report.pairs[(c.spec.name, c.mode, c.t)] = extras["pairs"]
            if "histogram" in extras and c.t in hist_ts.get(c.spec.name, ()):
                report.histograms[(c.spec.name, c.t)] = extras["histogram"]
            table.write(report.rows)
    if len(models) > 1 and add_paired_differences(report.rows, [m.name for m in models], per_image, table):
        table.write(report.rows)
    by_key = {table.key(r): r for r in report.rows}
    current_keys = [table.key(_cell_row(c, n, settings, {}, 0.0)) for c in cells]
    report.current = [by_key[k] for k in current_keys if k in by_key]
    report.per_image = per_image
    _summaries(report, models, settings.clip_denoised)
    return report


def _real_features(x0: torch.Tensor, batch: int, features: Callable | None, real_features: tuple | None) -> tuple:
    """The fid mode's reference statistics (mu, sigma): as given, else those of the images ``x0``."""
    if features is None:
        raise SamplerkitError("the fid mode needs an Inception feature extractor (samplerkit.metrics.inception)")
    if real_features is None:
        chunks = [x0[i : i + batch].float() for i in range(0, x0.shape[0], batch)]
        real_features = feature_stats(np.concatenate([np.asarray(features(to_uint8(c))) for c in chunks]))
    return real_features


def _summaries(report: Report, models: Sequence[ModelSpec], clip_denoised: bool) -> None:
    """Per model, from this run's rows: the nu_t summary and the Epsilon Scaling value the eps norms suggest."""
    for spec in models:
        nus = sorted((int(r.get("t_full") or r["t"]), float(r["nu"])) for r in report.current
                     if r["model"] == spec.name and r["mode"] == "nu")
        if nus:
            report.nu[spec.name] = dict(nu_summary([t for t, _ in nus], [v for _, v in nus]),
                                        clip_denoised=clip_denoised)
        ratios = [float(r["eps_norm_ratio"]) for r in report.current
                  if r["model"] == spec.name and r["mode"] == "eps-norm" and str(r.get("eps_norm_ratio", "")) != ""]
        if ratios:
            report.eps_norm[spec.name] = {"suggested_eps_scaler": suggested_eps_scaler(ratios), "points": len(ratios),
                                          "clip_denoised": clip_denoised}


def cost_summary(cells: Sequence[Cell], todo: Sequence[Cell], n: int) -> str:
    """The cost printed before a run: NFE per model and mode, total NFE = sum of t x images; for a
    respaced chain also what the same start levels cost on the full chain."""
    lines = [f"cost: {len(todo)} of {len(cells)} cells to run ({len(cells) - len(todo)} already in the CSV), "
             f"{n} images"]
    groups: dict = {}
    for c in todo:
        g = groups.setdefault((c.spec.name, c.mode, c.chain.description()), [0, 0, 0])
        g[0] += 1
        g[1] += c.nfe
        g[2] += c.chain.level(c.t) * n if c.mode in ("delta", "fid") else c.nfe
    for (name, mode, chain), (k, nfe, full) in groups.items():
        note = f"  ({full:,d} NFE on the full chain)" if full != nfe else ""
        lines.append(f"  {name:24s} {mode:9s} {k:4d} t values  {nfe:>14,d} NFE  chain {chain}{note}")
    lines.append(f"  total {sum(c.nfe for c in todo):,d} NFE")
    return "\n".join(lines)
