"""Exposure bias: the measurements of ddpm-ip-icml2023.txt Sec. 4, Sec. 5.3, App. A.1 and A.5.

* ``delta`` -- delta_t (App. A.1, Alg. 4, Tab. 6): from a real image x0, x_t by Eq. 4 with a
  fresh eps, then t steps of the noise-free DDPM mean (Alg. 2 line 4 without sigma_t z, Alg. 4
  line 6); delta = ||x0 - x0_hat||_1 / M per image (pixels in [-1, 1], so delta <= 2).
* ``fid`` -- the variant of Sec. 4 / Tab. 1: the same start points, the stochastic reverse chain
  (Alg. 2 started from x_t), FID of the set of x0_hat against the real set.
* ``nu`` -- the prediction error (Sec. 5.3, Fig. 2): e_t = x0_hat - x0 with x0_hat from
  eps_hat = eps_theta(x_t, t) (Eq. 4 solved for x0, x_t from Eq. 4); nu_t is its standard deviation.
* ``normality`` -- App. A.5, Fig. 6: e_t standardized with the pixel-independent mean mu_t and
  std nu_t, then per pixel a Shapiro-Wilk test on 50 randomly chosen values at alpha = 0.05.

Time indices follow the paper: t = 1 .. T, x_t uses abar_t = ``alphas_cumprod[t - 1]`` and a
chain of t steps runs over ``alphas_cumprod[:t]``.

Which chain: a discrete eps-model (a :class:`~samplerkit.denoisers.DiscreteEpsDenoiser`, anything
with ``alphas_cumprod`` and ``eps``) runs on its own T training levels, or on a respaced subset
(iddpm.txt Sec. 4, Eq. 19), and t counts steps of that chain. Any other denoiser (EDM, VP, VE,
the analytic ones) runs the *same* DDPM chain on a reference T-step schedule (default linear
betas, T = 1000): step t is evaluated through D(x; sigma_t) with x = x_t / sqrt(abar_t) and
sigma_t = sqrt((1 - abar_t) / abar_t) (edm.txt Table 1), i.e. the DDPM chain in sigma-space.
"""

from __future__ import annotations

import csv
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import samplers, schedules
from .data import to_uint8
from .diffusion import Chain, alpha_bar_from_betas, betas_for, predict_x0_from_eps, q_sample, sigma_from_alpha_bar
from .errors import SamplerkitError
from .output import atomic_csv
from .seeds import StackedRandomGenerator

MODES = ("delta", "fid", "nu", "normality")

CSV_COLUMNS = (
    "model", "sha256", "mode", "t", "n", "seed", "settings", "T", "nfe", "seconds",
    "delta_mean", "delta_std", "delta_ci_low", "delta_ci_high", "fid", "e_mean", "nu",
    "sw_reject_rate", "sw_tests",
)

# ---------------------------------------------------------------------------------------------
# the chain a model is measured on


def is_discrete(net) -> bool:
    """True for discrete-time eps-models (DiscreteEpsDenoiser and its subclasses)."""
    return hasattr(net, "alphas_cumprod") and hasattr(net, "eps")


def reference_alphas_cumprod(reference: str = "linear:1000") -> torch.Tensor:
    """abar_t of the reference DDPM schedule ``"linear"`` or ``"cosine"``, optionally ``":T"``
    (iddpm.txt Sec. 2 and Eq. 17), used for models without their own discrete chain."""
    name, _, steps = str(reference).partition(":")
    try:
        T = int(steps) if steps else 1000
    except ValueError:
        raise SamplerkitError(f"bad reference schedule {reference!r}; use e.g. 'linear:1000' or 'cosine:4000'"
                              ) from None
    return torch.as_tensor(alpha_bar_from_betas(betas_for(name, T)), dtype=torch.float64)


def chain_alphas_cumprod(net, respacing: str | None = None, reference: str = "linear:1000") -> torch.Tensor:
    """abar of the chain the model is measured on, increasing t: the model's own training levels
    (discrete eps-models) or the reference schedule (any other denoiser), respaced when asked."""
    ab = net.alphas_cumprod.to(torch.float64).cpu() if is_discrete(net) else reference_alphas_cumprod(reference)
    if respacing:
        ab = ab[schedules.respace(ab.numel(), respacing)]
    return ab


def check_t(t_values: Sequence[int], T: int, what: str = "the model's chain") -> list[int]:
    """Chain lengths must be integers in 1 .. T."""
    out = []
    for t in t_values:
        if int(t) != t or not 1 <= int(t) <= T:
            raise SamplerkitError(f"t={t} is outside 1..{T}, the length of {what}; pick t values up to {T}")
        out.append(int(t))
    return out


def _prefix(alphas_cumprod, t_start: int) -> torch.Tensor:
    ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
    check_t([t_start], ab.numel())
    return ab[:t_start]


# ---------------------------------------------------------------------------------------------
# the model's prediction and the two reverse chains


def predict_x0(net, x_t: torch.Tensor, alpha_bar, class_labels=None) -> torch.Tensor:
    """The model's x0_hat at x_t (x_t-space) and level abar, float64.

    Discrete eps-models: eps_hat = eps_theta(x_t, t) at the training timestep t whose abar this
    is, x0_hat from Eq. 4 solved for x0. Any other denoiser: D(x_t / sqrt(abar); sigma) with
    sigma = sqrt((1 - abar) / abar) (edm.txt Table 1).
    """
    ab = torch.as_tensor(alpha_bar, dtype=torch.float64, device=x_t.device)
    x_t = x_t.to(torch.float64)
    if is_discrete(net):
        t = net.timestep(sigma_from_alpha_bar(ab)).reshape(1)
        if abs(float(net.alphas_cumprod[t]) - float(ab)) > 1e-9 * float(ab):
            raise SamplerkitError("the chain's abar is not one of the model's training levels; "
                                  "use the model's own chain (optionally respaced)")
        eps, _ = net.eps(x_t, t.to(x_t.device).expand(x_t.shape[0]), class_labels)
        return predict_x0_from_eps(x_t, ab, eps)
    return net(x_t / ab.sqrt(), sigma_from_alpha_bar(ab), class_labels).to(torch.float64)


def ddpm_mean_step(net, x_t: torch.Tensor, k: int, chain: Chain, class_labels=None, *,
                   clip_denoised: bool = False) -> torch.Tensor:
    """One step of Alg. 4 line 6: x_{t-1} = mu~_t(x_t, x0_hat), the mean of Alg. 2 line 4
    (= 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps_hat)) without sigma_t z; x_t-space."""
    x0 = predict_x0(net, x_t, chain.alpha_bar[k], class_labels)
    if clip_denoised:
        x0 = x0.clamp(-1, 1)
    return chain.posterior_mean(k, x0, x_t.to(torch.float64))


def ddpm_mean_chain(net, x_t: torch.Tensor, t_start: int, alphas_cumprod, class_labels=None, *,
                    clip_denoised: bool = False, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Alg. 4 lines 5-7: from x_t (x_t-space, level ``alphas_cumprod[t_start - 1]``) apply the
    noise-free DDPM mean for tau = t_start .. 1 on the chain ``alphas_cumprod[:t_start]``; returns
    x0_hat in [-1, 1] data space (not clipped unless ``clip_denoised``; Alg. 4 does not clip).
    NFE = t_start. ``progress(n)`` is called after every step with the batch size."""
    chain = Chain.from_alpha_bar(_prefix(alphas_cumprod, t_start).to(x_t.device))
    x = x_t.to(torch.float64)
    for k in reversed(range(len(chain))):
        x = ddpm_mean_step(net, x, k, chain, class_labels, clip_denoised=clip_denoised)
        if progress is not None:
            progress(x.shape[0])
    return x


def _sampler_steps(net, ab: torch.Tensor) -> torch.Tensor:
    """The chain in the form :func:`samplerkit.samplers.ancestral` takes: training timesteps for a
    discrete model, else the descending sigma grid ending in 0."""
    if is_discrete(net):
        return net.timestep(sigma_from_alpha_bar(ab)).cpu()
    return torch.cat([sigma_from_alpha_bar(ab).flip(0), ab.new_zeros(1)])


def default_variance(net) -> str:
    """Alg. 2's variance: the learned one where the model has it (ADM), else sigma_t^2 = beta~_t (Eq. 3)."""
    return "learned" if getattr(net, "learned_variance", False) else "fixedsmall"


def ancestral_chain(net, x_t: torch.Tensor, t_start: int, alphas_cumprod, class_labels=None, *,
                    variance: str | None = None, randn_like: Callable = torch.randn_like,
                    clip_denoised: bool = False) -> torch.Tensor:
    """Sec. 4 / Tab. 1: Alg. 2 (DDPM ancestral sampling) started from x_t instead of x_T, on the
    chain ``alphas_cumprod[:t_start]``; :func:`samplerkit.samplers.ancestral`. NFE = t_start."""
    ab = _prefix(alphas_cumprod, t_start)
    return samplers.ancestral(net, x_t, _sampler_steps(net, ab), class_labels,
                              variance=variance or default_variance(net), randn_like=randn_like,
                              clip_denoised=clip_denoised)


def prediction_error(net, x0: torch.Tensor, t: int, alphas_cumprod, noise: torch.Tensor,
                     class_labels=None, clip_denoised: bool = False) -> torch.Tensor:
    """e_t = x0_hat - x0 (Sec. 5.3): x_t from Eq. 4 with ``noise``, x0_hat from eps_theta(x_t, t),
    clipped to [-1, 1] first when ``clip_denoised`` (as ADM's sampler clips it; near t = T of a
    cosine schedule the unclipped x0_hat is eps divided by sqrt(abar_T) ~ 0.006)."""
    ab = _prefix(alphas_cumprod, t)[-1].to(x0.device)
    x_t = q_sample(x0.to(torch.float64), ab, noise.to(torch.float64))
    x0_hat = predict_x0(net, x_t, ab, class_labels)
    return (x0_hat.clamp(-1, 1) if clip_denoised else x0_hat) - x0.to(torch.float64)


# ---------------------------------------------------------------------------------------------
# statistics


def l1_per_image(x0: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
    """||x0 - x0_hat||_1 / M for each image (Alg. 4 line 8)."""
    return (x0.to(torch.float64) - x0_hat.to(torch.float64)).abs().flatten(1).mean(1)


def summarize(values) -> dict:
    """Mean, standard deviation (n - 1) and the 95 % Student-t interval of the mean."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64).ravel()
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if v.size > 1 else float("nan")
    half = float(stats.t.ppf(0.975, v.size - 1)) * std / math.sqrt(v.size) if v.size > 1 else float("nan")
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def error_moments(errors: torch.Tensor) -> tuple[float, float]:
    """(mu_t, nu_t): the pixel-independent mean and standard deviation of e_t over all images and
    pixels (App. A.5; Sec. 5.3 models e_t ~ N(0, nu_t^2 I))."""
    e = errors.to(torch.float64)
    return float(e.mean()), float(e.std(unbiased=False))


def shapiro_rejections(errors: torch.Tensor, num_values: int = 50, alpha: float = 0.05,
                       rng: np.random.Generator | None = None) -> tuple[int, int]:
    """App. A.5: standardize e_t with (mu_t, nu_t), then for each pixel test ``num_values``
    randomly chosen values with ``scipy.stats.shapiro``; returns (rejections at p < alpha, tests).

    ``errors``: [P, C, H, W], P values per pixel (images x draws of eps). The paper writes the
    standardization as (e - mu_t) / nu_t^2; the test is invariant to scale, so nu_t is used.
    """
    from scipy import stats

    pool = errors.to(torch.float64).flatten(1).cpu().numpy()  # [P, M]
    P, M = pool.shape
    if P < num_values:
        raise SamplerkitError(f"the Shapiro-Wilk check needs {num_values} values per pixel, got {P}")
    mu, nu = error_moments(errors)
    if nu == 0:
        return 0, 0
    rng = rng or np.random.default_rng(0)
    columns = np.arange(M)
    picks = np.stack([rng.choice(P, num_values, replace=False) for _ in range(M)], axis=1)  # [num_values, M]
    sample = (pool[picks, columns[None, :]] - mu) / nu
    pvalues = stats.shapiro(sample, axis=0).pvalue
    return int((pvalues < alpha).sum()), M


def gamma_from_nu(t_values: Sequence[int], nu: Sequence[float], T: int) -> dict:
    """Sec. 5.3's rule for gamma: search on nu_t in [0, E_t[nu_t]], the values nu_t takes on the
    last half of the trajectory (t <= T/2). The paper finds E_t[nu_t] = 0.2 and, by a grid search in
    [0, 0.2], gamma = 0.1, the midpoint. Returns the range, its midpoint and nu_t on t <= T/2."""
    t = np.asarray(t_values, dtype=np.float64)
    v = np.asarray(nu, dtype=np.float64)
    mean = float(v.mean())
    half = v[t <= T / 2]
    return {
        "nu_mean": mean,
        "gamma_low": 0.0,
        "gamma_high": mean,
        "gamma_mid": mean / 2,
        "nu_last_half_min": float(half.min()) if half.size else float("nan"),
        "nu_last_half_max": float(half.max()) if half.size else float("nan"),
    }


def _feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


# ---------------------------------------------------------------------------------------------
# the harness: models x modes x t -> rows


@dataclass
class ModelSpec:
    """A model under test: its display name, the denoiser and the checkpoint's sha256 ('' if none)."""

    name: str
    net: object
    sha256: str = ""


@dataclass
class Settings:
    """Everything a row depends on besides the model, the mode and t.

    ``t_values`` are the chain lengths of the delta and fid modes; ``nu`` and ``normality`` use
    t = stride, 2 stride, ... T (App. A.5: stride 10). ``num_values``/``alpha``: the Shapiro-Wilk
    check. ``draws``: eps draws per image for ``normality`` (None: enough to pool ``num_values``).
    """

    modes: tuple[str, ...] = ("delta",)
    t_values: tuple[int, ...] = (100, 300, 600, 1000)
    batch: int = 64
    seed: int = 0
    respacing: str | None = None
    reference: str = "linear:1000"
    stride: int = 10
    clip_denoised: bool = False
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

    def chain_description(self, net) -> str:
        base = f"model:{net.num_timesteps}" if is_discrete(net) else f"ref:{self.reference}"
        return base + (f"/respace:{self.respacing}" if self.respacing else "")

    def key(self, mode: str, net, n: int) -> str:
        """The settings column: what a row must match to be reused on resume."""
        parts = [f"chain={self.chain_description(net)}", f"data={self.data}"]
        if mode in ("delta", "fid"):
            parts.append(f"clip={int(self.clip_denoised)}")
        if mode == "fid":
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
    T: int
    nfe: int
    settings_key: str


@dataclass
class Report:
    """Rows (one per model x mode x t) plus what the figures need that is not in the rows."""

    rows: list[dict] = field(default_factory=list)  # everything in the CSV
    current: list[dict] = field(default_factory=list)  # the rows of this run's cells, in plan order
    pairs: dict = field(default_factory=dict)  # (model, mode, t) -> (x0, x0_hat) [k, C, H, W]
    histograms: dict = field(default_factory=dict)  # (model, t) -> {pixel index: values}
    gamma: dict = field(default_factory=dict)  # model -> gamma_from_nu(...)


def _image_seed(seed: int, index: int, t: int) -> int:
    """Noise of image ``index`` at chain length t depends only on (seed, index, t): the same for
    every model, so models are compared on the same x_t."""
    return int(np.random.SeedSequence([seed, index, t]).generate_state(1)[0])


def plan(models: Sequence[ModelSpec], n: int, settings: Settings) -> list[Cell]:
    """Every (model, mode, t) cell of the run, with its NFE = t x images (delta, fid), images
    (nu) or images x draws (normality)."""
    cells = []
    for spec in models:
        ab = chain_alphas_cumprod(spec.net, settings.respacing, settings.reference)
        T = ab.numel()
        for mode in settings.modes:
            if mode in ("delta", "fid"):
                ts = check_t(settings.t_values, T, f"the chain of {spec.name}")
                cost = lambda t: t * n  # noqa: E731
            else:
                ts = settings.grid(T)
                draws = settings.draws_for(n) if mode == "normality" else 1
                cost = lambda t, d=draws: n * d  # noqa: E731
            for t in ts:
                cells.append(Cell(spec, mode, t, T, cost(t), settings.key(mode, spec.net, n)))
    return cells


def _row_key(row: dict) -> tuple:
    return (str(row["model"]), str(row["sha256"]), str(row["mode"]), str(row["t"]), str(row["n"]),
            str(row["seed"]), str(row["settings"]))


def read_csv(path: str | Path | None) -> list[dict]:
    if path is None or not Path(path).exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: str | Path, rows: Sequence[dict]) -> None:
    """Write all rows at once, atomically."""
    atomic_csv(path, CSV_COLUMNS, [{k: _fmt(row.get(k, "")) for k in CSV_COLUMNS} for row in rows])


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def _labels_for(net, labels: torch.Tensor | None, lo: int, hi: int, device):
    if getattr(net, "label_dim", 0) == 0 or labels is None:
        return None
    return labels[lo:hi].to(device)


def measure(spec: ModelSpec, mode: str, t: int, x0: torch.Tensor, labels: torch.Tensor | None,
            settings: Settings, *, features: Callable | None = None, real_features=None,
            progress: Callable[[int], None] | None = None, device="cpu") -> tuple[dict, dict]:
    """One cell: the statistics of ``mode`` at chain length t over the images ``x0`` ([N, C, H, W]
    in [-1, 1]). Returns (statistics, extras for figures)."""
    net = spec.net
    ab = chain_alphas_cumprod(net, settings.respacing, settings.reference).to(device)
    n = x0.shape[0]
    draws = settings.draws_for(n) if mode == "normality" else 1
    deltas, feats, errors, pairs = [], [], [], None
    s1 = s2 = count = 0.0
    with torch.no_grad():
        for lo in range(0, n, settings.batch):
            hi = min(lo + settings.batch, n)
            xb = x0[lo:hi].to(device, torch.float64)
            lb = _labels_for(net, labels, lo, hi, device)
            gen = StackedRandomGenerator(device, [_image_seed(settings.seed, i, t) for i in range(lo, hi)])
            if mode in ("delta", "fid"):
                x_t = q_sample(xb, ab[t - 1], gen.randn(xb.shape, dtype=torch.float64))  # Eq. 4
                if mode == "delta":
                    x_hat = ddpm_mean_chain(net, x_t, t, ab, lb, clip_denoised=settings.clip_denoised,
                                            progress=progress)
                    deltas.append(l1_per_image(xb, x_hat).cpu())
                else:
                    x_hat = ancestral_chain(net, x_t, t, ab, lb, variance=settings.variance,
                                            randn_like=gen.randn_like, clip_denoised=settings.clip_denoised)
                    feats.append(np.asarray(features(to_uint8(x_hat.float()))))
                    if progress is not None:
                        progress((hi - lo) * t)
                if pairs is None and settings.pairs > 0:
                    pairs = (xb[: settings.pairs].cpu(), x_hat[: settings.pairs].cpu())
            else:
                for _ in range(draws):
                    e = prediction_error(net, xb, t, ab, gen.randn(xb.shape, dtype=torch.float64), lb,
                                         clip_denoised=settings.clip_denoised)
                    s1, s2, count = s1 + float(e.sum()), s2 + float((e**2).sum()), count + e.numel()
                    if mode == "normality":
                        errors.append(e.to(torch.float32).cpu())
                    if progress is not None:
                        progress(hi - lo)
    extras: dict = {}
    if mode == "delta":
        s = summarize(torch.cat(deltas).numpy())
        stats = {"delta_mean": s["mean"], "delta_std": s["std"],
                 "delta_ci_low": s["ci_low"], "delta_ci_high": s["ci_high"]}
        extras["pairs"] = pairs
    elif mode == "fid":
        mu, sigma = _feature_stats(np.concatenate(feats))
        from .fid import frechet_distance

        stats = {"fid": frechet_distance(mu, sigma, *real_features)}
        extras["pairs"] = pairs
    else:
        mean = s1 / count
        stats = {"e_mean": mean, "nu": math.sqrt(max(s2 / count - mean**2, 0.0))}
        if mode == "normality":
            pool = torch.cat(errors)
            rng = np.random.default_rng([settings.seed, t])
            rejected, tests = shapiro_rejections(pool, settings.num_values, settings.alpha, rng)
            stats.update(sw_reject_rate=rejected / tests if tests else float("nan"), sw_tests=tests)
            extras["histogram"] = {i: pool.flatten(1)[:, i].numpy() for i in _histogram_pixels(pool.shape[1:])}
    return stats, extras


def _histogram_pixels(shape) -> list[int]:
    """Fig. 6: the same spatial position in each colour channel (i = c HW + centre)."""
    C, H, W = shape
    centre = (H // 2) * W + W // 2
    return [c * H * W + centre for c in range(C)]


def _histogram_ts(ts: Sequence[int], T: int) -> list[int]:
    """The grid values nearest to 0.3 T, 0.6 T and 0.9 T (Fig. 6 shows t = 300, 600, 900 of 1000)."""
    ts = sorted(set(ts))
    return sorted({min(ts, key=lambda t: abs(t - f * T)) for f in (0.3, 0.6, 0.9)})


def run(models: Sequence[ModelSpec], x0: torch.Tensor, labels: torch.Tensor | None, settings: Settings, *,
        csv_path: str | Path | None = None, features: Callable | None = None,
        real_features: tuple | None = None, device="cpu", log: Callable[[str], None] = print,
        show_progress: bool = True) -> Report:
    """Measure every (model, mode, t) cell not already in ``csv_path`` with the same settings,
    rewriting the CSV atomically after each cell. ``x0``: [N, C, H, W] real images in [-1, 1];
    ``labels``: their int class labels [N], passed to class-conditional models only.

    The ``fid`` mode needs ``features(uint8 NHWC) -> [n, d]`` (an Inception feature extractor);
    the reference statistics are ``real_features`` = (mu, sigma) or else the features of ``x0``.
    """
    from tqdm import tqdm

    n = x0.shape[0]
    if n == 0:
        raise SamplerkitError("no images to measure on; pass a data source with at least one image")
    cells = plan(models, n, settings)
    existing = read_csv(csv_path)
    done = {_row_key(r) for r in existing}
    todo = [c for c in cells if _row_key(_row_of(c, n, settings, {}, 0.0)) not in done]
    if "fid" in settings.modes and any(c.mode == "fid" for c in todo):
        if features is None:
            raise SamplerkitError("the fid mode needs an Inception feature extractor (samplerkit.fid)")
        if real_features is None:
            chunks = [x0[i : i + settings.batch].float() for i in range(0, n, settings.batch)]
            real_features = _feature_stats(np.concatenate([np.asarray(features(to_uint8(c))) for c in chunks]))
    total = sum(c.nfe for c in todo)
    log(cost_summary(cells, todo, n))
    report = Report(rows=list(existing))
    hist_ts = {}
    for c in todo:
        if c.mode == "normality":
            hist_ts.setdefault(c.spec.name, _histogram_ts(settings.grid(c.T), c.T))
    with tqdm(total=total, unit="NFE", disable=not show_progress, dynamic_ncols=True) as bar:
        for c in todo:
            bar.set_description(f"{c.spec.name} {c.mode} t={c.t}")
            start = time.perf_counter()
            stats, extras = measure(c.spec, c.mode, c.t, x0, labels, settings, features=features,
                                    real_features=real_features, progress=bar.update, device=device)
            row = _row_of(c, n, settings, stats, time.perf_counter() - start)
            report.rows = [r for r in report.rows if _row_key(r) != _row_key(row)] + [row]
            if extras.get("pairs") is not None:
                report.pairs[(c.spec.name, c.mode, c.t)] = extras["pairs"]
            if "histogram" in extras and c.t in hist_ts.get(c.spec.name, ()):
                report.histograms[(c.spec.name, c.t)] = extras["histogram"]
            if csv_path is not None:
                write_csv(csv_path, report.rows)
    by_key = {_row_key(r): r for r in report.rows}
    report.current = [by_key[k] for k in (_row_key(_row_of(c, n, settings, {}, 0.0)) for c in cells) if k in by_key]
    for spec in models:
        nus = sorted((int(r["t"]), float(r["nu"])) for r in report.current
                     if r["model"] == spec.name and r["mode"] == "nu")
        if nus:
            T = chain_alphas_cumprod(spec.net, settings.respacing, settings.reference).numel()
            report.gamma[spec.name] = gamma_from_nu([t for t, _ in nus], [v for _, v in nus], T)
    return report


def _row_of(c: Cell, n: int, settings: Settings, stats: dict, seconds: float) -> dict:
    row = {"model": c.spec.name, "sha256": c.spec.sha256, "mode": c.mode, "t": c.t, "n": n, "seed": settings.seed,
           "settings": c.settings_key, "T": c.T, "nfe": c.nfe, "seconds": round(seconds, 3)}
    row.update(stats)
    return row


def cost_summary(cells: Sequence[Cell], todo: Sequence[Cell], n: int) -> str:
    """The cost model printed before a run: NFE per model and mode, total NFE = sum of t x images."""
    lines = [f"cost: {len(todo)} of {len(cells)} cells to run ({len(cells) - len(todo)} already in the CSV), "
             f"{n} images"]
    groups: dict = {}
    for c in todo:
        g = groups.setdefault((c.spec.name, c.mode), [0, 0])
        g[0] += 1
        g[1] += c.nfe
    for (name, mode), (k, nfe) in groups.items():
        lines.append(f"  {name:24s} {mode:9s} {k:4d} t values  {nfe:>14,d} NFE")
    lines.append(f"  total {sum(c.nfe for c in todo):,d} NFE")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# tables and figures


def _rows_of(rows: Sequence[dict], mode: str) -> list[dict]:
    return [r for r in rows if r["mode"] == mode and str(r.get(_STAT[mode], "")) != ""]


_STAT = {"delta": "delta_mean", "fid": "fid", "nu": "nu", "normality": "sw_reject_rate"}


def table(rows: Sequence[dict], mode: str) -> str:
    """A printed table: one line per t, one column per model (Tab. 1 / Tab. 6 layout)."""
    rows = _rows_of(rows, mode)
    if not rows:
        return ""
    models = list(dict.fromkeys(r["model"] for r in rows))
    ts = sorted({int(r["t"]) for r in rows})
    cell = {(r["model"], int(r["t"])): r for r in rows}
    title = {"delta": "delta_t (Alg. 4): mean [95% CI]", "fid": "FID of x0_hat vs real (Tab. 1)",
             "nu": "nu_t (Sec. 5.3): std of e_t = x0_hat - x0", "normality": "Shapiro-Wilk rejection rate (App. A.5)"}
    width = max(14, *(len(m) for m in models)) + 2 if mode != "delta" else max(30, *(len(m) + 2 for m in models))
    out = [title[mode], f"{'t':>6s}" + "".join(f"{m:>{width}s}" for m in models)]
    for t in ts:
        parts = []
        for m in models:
            r = cell.get((m, t))
            if r is None:
                parts.append(f"{'-':>{width}s}")
            elif mode == "delta":
                text = f"{float(r['delta_mean']):.4f} [{float(r['delta_ci_low']):.4f}, {float(r['delta_ci_high']):.4f}]"
                parts.append(f"{text:>{width}s}")
            else:
                parts.append(f"{float(r[_STAT[mode]]):>{width}.4f}")
        out.append(f"{t:>6d}" + "".join(parts))
    if mode == "normality":
        for m in models:
            rs = [r for r in rows if r["model"] == m]
            rej = sum(float(r["sw_reject_rate"]) * int(r["sw_tests"]) for r in rs)
            tests = sum(int(r["sw_tests"]) for r in rs)
            out.append(f"  {m}: overall rejection rate {rej / max(tests, 1):.4f} over {tests} tests")
    return "\n".join(out)


def gamma_text(name: str, g: dict) -> str:
    return (f"{name}: E_t[nu_t] = {g['nu_mean']:.4f}; Sec. 5.3 searches gamma in [0, {g['gamma_high']:.4f}] "
            f"(nu_t on the last half t <= T/2 spans [{g['nu_last_half_min']:.4f}, {g['nu_last_half_max']:.4f}]); "
            f"midpoint gamma = {g['gamma_mid']:.4f} (the paper: E_t[nu_t] = 0.2 -> gamma = 0.1)")


def plot(rows: Sequence[dict], mode: str, path: str | Path) -> bool:
    """delta_t (with its 95% interval), FID, nu_t or the rejection rate against t, one line per model."""
    rows = _rows_of(rows, mode)
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in dict.fromkeys(r["model"] for r in rows):
        rs = sorted((r for r in rows if r["model"] == m), key=lambda r: int(r["t"]))
        t = [int(r["t"]) for r in rs]
        y = [float(r[_STAT[mode]]) for r in rs]
        ax.plot(t, y, marker="o" if len(t) < 30 else None, label=m)
        if mode == "delta":
            low, high = [float(r["delta_ci_low"]) for r in rs], [float(r["delta_ci_high"]) for r in rs]
            ax.fill_between(t, low, high, alpha=0.2)
    labels = {"delta": r"$\bar\delta_t$ (mean $|x_0-\hat x_0|$)", "fid": "FID", "nu": r"$\nu_t$",
              "normality": "Shapiro-Wilk rejection rate"}
    ax.set_xlabel("t (reverse diffusion steps)" if mode in ("delta", "fid") else "t")
    ax.set_ylabel(labels[mode])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_histograms(histograms: dict, path: str | Path) -> bool:
    """Fig. 6: histograms of e_t^i for a few t and pixels i."""
    if not histograms:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(histograms)
    ncols = max(len(v) for v in histograms.values())
    fig, axes = plt.subplots(len(keys), ncols, figsize=(3 * ncols, 2.4 * len(keys)), squeeze=False)
    for row, key in enumerate(keys):
        for col, (i, values) in enumerate(sorted(histograms[key].items())):
            ax = axes[row][col]
            ax.hist(values, bins=min(40, max(10, len(values) // 5)))
            ax.set_title(f"{key[0]}: t={key[1]}, i={i}", fontsize=8)
            ax.set_xlabel(r"$e_t^i$", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name if os.sep in name or "/" in name else name)


def save_pairs(pairs: dict, directory: str | Path) -> list[Path]:
    """Fig. 5: for each (model, mode, t) a PNG with x0 on the top row and x0_hat below."""
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for (model, mode, t), (x0, x_hat) in pairs.items():
        top, bottom = to_uint8(x0.float()), to_uint8(x_hat.float().clamp(-1, 1))
        k, H, W, _ = top.shape
        pad = 2
        canvas = np.full((2 * H + 3 * pad, k * (W + pad) + pad, 3), 255, dtype=np.uint8)
        for j in range(k):
            x = pad + j * (W + pad)
            canvas[pad : pad + H, x : x + W] = top[j]
            canvas[2 * pad + H : 2 * pad + 2 * H, x : x + W] = bottom[j]
        path = directory / f"{safe_name(model)}-{mode}-t{t}.png"
        Image.fromarray(canvas).save(path)
        written.append(path)
    return written


def companion_path(path: str | Path, mode: str, first: str = "delta") -> Path:
    """The plot of the ``first`` mode asked for at ``path``; the others beside it as ``<stem>-<mode><suffix>``."""
    path = Path(path)
    return path if mode == first else path.with_name(f"{path.stem}-{mode}{path.suffix or '.png'}")
