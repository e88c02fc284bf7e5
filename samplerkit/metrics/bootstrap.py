"""Bootstrap intervals for FID and KID, and for the paired difference of two sample sets.

Each round draws n indices with replacement from the n generated images (``numpy.random.default_rng(seed)``)
and recomputes the metric on that resample against the fixed reference statistics. The interval is
the (alpha/2, 1 - alpha/2) percentile of the rounds after removing the bootstrap estimate of the
bias, mean(rounds) - statistic(all images) (Efron & Tibshirani 1993, Ch. 10 and 13): FID is biased
upward at small n (Chong & Forsyth 2020) and a resample holds only about 63 % distinct images, so
the raw rounds of FID sit well above the point estimate; shifted, the interval keeps their width
and spread around the estimate. When two
models or samplers made images from the same seeds, :func:`paired_bootstrap` resamples the seed
indices jointly and reports the interval of metric(B) - metric(A): the shared part of the
variation (which seeds were drawn) cancels, so the interval is far narrower than two separate ones.

Every round is exact, not approximated:

* FID with n <= d works in the n x n Gram matrices of the centred features: the non-zero eigenvalues
  of S_s S_r are those of Xc S_r Xc^T / (n - 1) for the resample's centred features Xc, so a round
  costs O(n^3) after one O(n d^2) product. With n > d each round forms the d x d covariance.
* KID's rounds use the unbiased MMD² over all pairs of the resample and all reference features; pairs
  of a resampled image with a copy of itself are left out (they would add k(x, x) and bias the
  within-sample term upward). Its expectation is KID's, but it is not the subset-averaged point estimate.

"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import SamplerkitError
from .fid import frechet_distance
from .kid import polynomial_kernel

BOOTSTRAP_ALPHA = 0.05


@dataclass
class Interval:
    """A bootstrap interval of ``rounds`` resamples: [low, high] at level 1 - alpha, and the bias
    estimate (mean of the rounds minus the statistic of all images) it was corrected by."""

    low: float
    high: float
    rounds: int
    alpha: float = BOOTSTRAP_ALPHA
    bias: float = 0.0

    def text(self, fmt: str = ".4g") -> str:
        return f"[{self.low:{fmt}}, {self.high:{fmt}}]"


def _percentiles(values: np.ndarray, estimate: float, rounds: int, alpha: float) -> Interval:
    """Percentiles of the rounds shifted by the bootstrap bias estimate mean(values) - estimate."""
    bias = float(values.mean() - estimate)
    lo, hi = np.quantile(values - bias, [alpha / 2, 1 - alpha / 2])
    return Interval(float(lo), float(hi), rounds, alpha, bias)


def _check(rounds: int, alpha: float, n: int) -> None:
    if rounds < 2:
        raise SamplerkitError(f"the bootstrap needs rounds >= 2, got {rounds}")
    if not 0 < alpha < 1:
        raise SamplerkitError(f"the bootstrap level alpha must be in (0, 1), got {alpha}")
    if n < 3:
        raise SamplerkitError(f"a bootstrap needs at least 3 images, got {n}")


class FidResampler:
    """FID of a resample (given by counts c_i: how often image i was drawn) of ``feats`` [n, d]
    against fixed reference statistics (mu_r, sigma_r); see the module docstring for the two routes."""

    def __init__(self, feats: np.ndarray, mu_r: np.ndarray, sigma_r: np.ndarray):
        f = np.asarray(feats, np.float64)
        self.n, d = f.shape
        centre = f.mean(0)
        self.f = f - centre
        self.mu_r = np.asarray(mu_r, np.float64) - centre
        self.sigma_r = np.asarray(sigma_r, np.float64)
        self.trace_r = float(np.trace(self.sigma_r))
        self.gram_route = self.n <= d
        if self.gram_route:
            ft = torch.from_numpy(self.f)
            self.k = (ft @ ft.T).numpy()  # F F^T
            self.g = (ft @ torch.from_numpy(self.sigma_r) @ ft.T).numpy()  # F S_r F^T
            self.h = self.f @ self.mu_r  # F mu_r
            self.mu_r2 = float(self.mu_r @ self.mu_r)

    def __call__(self, idx: np.ndarray) -> float:
        n = self.n
        if not self.gram_route:
            x = self.f[idx]
            return frechet_distance(x.mean(0), np.cov(x, rowvar=False), self.mu_r, self.sigma_r)
        counts = np.bincount(idx, minlength=n).astype(np.float64)
        w = counts / n
        diff2 = w @ self.k @ w - 2 * w @ self.h + self.mu_r2  # ||mu_s - mu_r||^2
        k, g = self.k[np.ix_(idx, idx)], self.g[np.ix_(idx, idx)]
        centring = np.eye(n) - 1.0 / n
        trace_s = float(np.trace(centring @ k @ centring)) / (n - 1)
        m = centring @ g @ centring / (n - 1)
        eig = np.linalg.eigvalsh((m + m.T) / 2)
        return float(diff2 + trace_s + self.trace_r - 2 * np.sqrt(np.clip(eig, 0, None)).sum())


class KidResampler:
    """Unbiased MMD² of a resample of ``feats`` against all of ``ref_feats`` (cubic kernel), pairs of an
    image with its own copies left out."""

    def __init__(self, feats: np.ndarray, ref_feats: np.ndarray):
        self.k_ss = polynomial_kernel(feats, feats)
        n_r, block = len(ref_feats), 4096
        total = diagonal = 0.0
        self.cross = np.zeros(len(feats))  # sum over the reference, per image
        for i in range(0, n_r, block):
            rows = ref_feats[i : i + block]
            self.cross += polynomial_kernel(feats, rows).sum(1)
            diagonal += float((((np.asarray(rows, np.float64) ** 2).sum(1) / rows.shape[1] + 1) ** 3).sum())
            for j in range(0, n_r, block):
                total += float(polynomial_kernel(rows, ref_feats[j : j + block]).sum())
        self.within_ref = (total - diagonal) / (n_r * (n_r - 1))
        self.cross /= n_r
        self.diag = np.diag(self.k_ss).copy()

    def __call__(self, idx: np.ndarray) -> float:
        counts = np.bincount(idx, minlength=len(self.k_ss)).astype(np.float64)
        n = len(idx)
        pairs = n * n - counts @ counts  # ordered pairs of draws of two different images
        within = (counts @ self.k_ss @ counts - counts**2 @ self.diag) / pairs
        return float(within + self.within_ref - 2 * counts @ self.cross / n)


def _rounds(n: int, rounds: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        yield rng.integers(0, n, size=n)


def bootstrap(statistic: Callable[[np.ndarray], float], n: int, rounds: int = 1000, seed: int = 0,
              alpha: float = BOOTSTRAP_ALPHA) -> Interval:
    """Bias-corrected percentile interval of ``statistic(indices)`` over ``rounds`` resamples of n indices."""
    _check(rounds, alpha, n)
    values = np.array([statistic(idx) for idx in _rounds(n, rounds, seed)])
    return _percentiles(values, statistic(np.arange(n)), rounds, alpha)


def paired_bootstrap(statistic_a: Callable[[np.ndarray], float], statistic_b: Callable[[np.ndarray], float], n: int,
                     rounds: int = 1000, seed: int = 0, alpha: float = BOOTSTRAP_ALPHA) -> Interval:
    """Bias-corrected percentile interval of statistic_b(idx) - statistic_a(idx), the same seed indices
    idx for both."""
    _check(rounds, alpha, n)
    values = np.array([statistic_b(idx) - statistic_a(idx) for idx in _rounds(n, rounds, seed)])
    identity = np.arange(n)
    return _percentiles(values, statistic_b(identity) - statistic_a(identity), rounds, alpha)


def resampler(metric: str, sample, ref) -> Callable[[np.ndarray], float]:
    """The per-round statistic of ``metric`` ('fid' or 'kid') for :class:`Statistics` with features."""
    if sample.feats is None:
        raise SamplerkitError("a bootstrap interval needs the samples' pool features")
    if metric == "fid":
        return FidResampler(sample.feats, ref.mu, ref.sigma)
    if metric == "kid":
        if ref.feats is None:
            raise SamplerkitError("a KID bootstrap needs the reference's pool features (feats)")
        return KidResampler(sample.feats, ref.feats)
    raise SamplerkitError(f"no bootstrap for {metric!r}; intervals are for fid and kid")
