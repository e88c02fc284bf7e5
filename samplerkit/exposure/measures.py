"""Statistics of an exposure-bias run: per-image distances, intervals, the moments of the
prediction error and the Shapiro-Wilk check (Ning et al. 2023, App. A.1, A.5, Sec. 5.3)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import SamplerkitError

INTERVAL = "95% Student-t"


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


def paired_difference(values, baseline) -> dict:
    """The paired comparison of two models measured on the same images and the same noise:
    d_i = values_i - baseline_i per image, then :func:`summarize` of d (a paired t interval)."""
    a, b = np.asarray(values, dtype=np.float64).ravel(), np.asarray(baseline, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise SamplerkitError(f"a paired difference needs the same images: got {a.size} and {b.size} values")
    return summarize(a - b)


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


def nu_summary(t_values: Sequence[int], nu: Sequence[float]) -> dict:
    """E_t[nu_t] over the measured grid, with and without its endpoints (first and last t).

    Sec. 5.3 searched a constant gamma on a grid in [0, E_t[nu_t]] (they found E_t[nu_t] = 0.2 and
    chose gamma = 0.1); nothing here picks gamma. ``dominated`` is True when the endpoints change
    the mean by more than a factor of 2 (an unclipped nu_T blow-up), where [0, E_t[nu_t]] means
    nothing.
    """
    order = np.argsort(np.asarray(t_values))
    t = np.asarray(t_values, dtype=np.int64)[order]
    v = np.asarray(nu, dtype=np.float64)[order]
    mean = float(v.mean())
    interior = float(v[1:-1].mean()) if v.size > 2 else float("nan")
    dominated = bool(v.size > 2 and not (interior / 2 <= mean <= 2 * interior))
    return {"t_first": int(t[0]), "t_last": int(t[-1]), "nu_first": float(v[0]), "nu_last": float(v[-1]),
            "nu_mean": mean, "nu_mean_interior": interior, "dominated": dominated, "points": int(v.size)}


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu, Sigma) of a feature set [n, d], the inputs of the Frechet distance."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def eps_norms(x: torch.Tensor, D: torch.Tensor, sigma) -> torch.Tensor:
    """||eps_hat||_2 per image, eps_hat = (x - D(x; sigma)) / sigma in sigma-space (= eps_theta(x_t, t)
    of an eps-model): the quantity of Ning et al. 2024 (ES), Fig. 6 (ADM-ES: Frobenius norm per image)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1, *([1] * (x.ndim - 1)))
    eps = (x.to(torch.float64) - D.to(torch.float64)) / sigma
    return eps.flatten(1).norm(dim=1)


def suggested_eps_scaler(ratios) -> float:
    """The uniform lambda that the eps-norm ratio (sampling / forward chain, per t) suggests: its
    mean over t. A suggestion only -- Ning et al. 2024 (ES) pick lambda by FID."""
    r = np.asarray(ratios, dtype=np.float64)
    return float(r[np.isfinite(r)].mean()) if np.isfinite(r).any() else float("nan")
