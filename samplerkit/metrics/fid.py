"""The Fréchet distance between Gaussians fitted to features (FID: Heusel et al. 2017; sFID: Nash et al. 2021).

:func:`frechet_distance` computes the trace term through one pivoted Cholesky factor and a symmetric
eigenvalue problem; :func:`frechet_distance_sqrtm` is scipy's ``sqrtm`` route of TTUR / clean-fid.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import SamplerkitError

# Below this many images FID is noticeably biased upward: its expectation is roughly FID_inf + k / N
# (Chong & Forsyth 2020, "Effectively Unbiased FID"); 50,000 is the usual count for published numbers.
SMALL_SAMPLE = 2000


def _psd_factor(sigma: np.ndarray) -> np.ndarray:
    """B with B B^T = sigma for a symmetric PSD matrix: pivoted Cholesky (LAPACK pstrf), rank-revealing,
    so a covariance of n < d images gives a d x (n - 1) factor."""
    from scipy.linalg import lapack

    d = sigma.shape[0]
    c, piv, rank, info = lapack.dpstrf(np.array(sigma, dtype=np.float64, order="F"), lower=1)
    if info < 0:
        raise SamplerkitError("covariance factorization failed (non-finite values in the statistics?)")
    factor = np.zeros((d, rank))
    factor[piv - 1] = np.tril(c)[:, :rank]
    return factor


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2 without a non-symmetric matrix square root.

    With S1 = B B^T, S1 S2 has the eigenvalues of the symmetric PSD B^T S2 B, so the trace is
    the sum of their square roots (one factorization, one symmetric eigenvalue problem of the
    rank of S1). The lower-rank matrix is factored.
    """
    f1, f2 = _psd_factor(sigma1), _psd_factor(sigma2)
    factor, other = (f1, sigma2) if f1.shape[1] <= f2.shape[1] else (f2, sigma1)
    b = torch.from_numpy(factor)
    m = b.T @ torch.from_numpy(np.ascontiguousarray(other, dtype=np.float64)) @ b
    eig = torch.linalg.eigvalsh((m + m.T) / 2).numpy()
    return float(np.sqrt(np.clip(eig, 0, None)).sum())


def _check_pair(mu1, sigma1, mu2, sigma2):
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
        raise SamplerkitError(f"statistics of different dimensions: {mu1.shape[0]}-d vs {mu2.shape[0]}-d "
                              "(compare features of the same network and layer)")
    if not (np.isfinite(mu1).all() and np.isfinite(mu2).all() and np.isfinite(s1).all() and np.isfinite(s2).all()):
        raise SamplerkitError("non-finite values in the statistics")
    return mu1, s1, mu2, s2


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, S1) and N(mu2, S2) (Heusel et al. 2017, Eq. 6):
    ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), the trace by :func:`trace_sqrt_product`."""
    mu1, s1, mu2, s2 = _check_pair(mu1, sigma1, mu2, sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1, s2))


def frechet_distance_sqrtm(mu1, sigma1, mu2, sigma2) -> float:
    """The same distance through scipy's ``sqrtm(S1 S2)`` (the route of TTUR and clean-fid)."""
    from scipy import linalg

    mu1, s1, mu2, s2 = _check_pair(mu1, sigma1, mu2, sigma2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1 @ s2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def small_sample_warning(n_images: int, metrics: Sequence[str]) -> str | None:
    """One line warning that a Fréchet distance from ``n_images`` < :data:`SMALL_SAMPLE` images is
    biased upward, or None (also when ``metrics`` asks for no Fréchet distance)."""
    shown = {"fid": "FID", "sfid": "sFID", "fd_dinov2": "FD_DINOv2"}
    names = [shown[m] for m in metrics if m in shown]
    if not names or n_images >= SMALL_SAMPLE:
        return None
    verb = "are" if len(names) > 1 else "is"
    return (f"{' and '.join(names)} from {n_images} images {verb} biased upward (fewer than {SMALL_SAMPLE:,}): the "
            f"bias falls like 1/N (Chong & Forsyth 2020), here about {50000 / n_images:.0f}x the bias at the usual "
            f"50,000 images; compare only numbers made from the same N")
