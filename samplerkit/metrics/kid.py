"""Kernel Inception Distance (Bińkowski et al. 2018): the unbiased MMD² between two feature sets
with the cubic polynomial kernel k(x, y) = (x·y / d + 1)³, averaged over random subsets.

:func:`kernel_inception_distance` draws its subsets exactly as clean-fid's ``kernel_distance``
(``compute_kid``'s computation): per subset, m indices of ``feats2`` then m of ``feats1``, each
without replacement, from ``numpy.random.RandomState(seed)``; m = min(n1, n2, ``subset_size``).
With ``np.random.seed(seed)`` before clean-fid's call the two give the same number (float64 here).
"""

from __future__ import annotations

import numpy as np

from ..errors import SamplerkitError

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x_i, y_j) = (x_i·y_j / d + 1)³, float64 [len(x), len(y)]."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased MMD² of two samples from their kernel matrices (Gretton et al. 2012, Eq. 3):
    the means of k over distinct pairs within each sample minus twice the mean cross term."""
    m, n = len(k_xx), len(k_yy)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def check_subset_size(n1: int, n2: int, subset_size: int | None) -> int:
    """The subset size m: ``subset_size`` (None: min(n1, n2, 1000) as clean-fid); one larger than
    either set, or below 2, is an error."""
    if subset_size is None:
        return min(n1, n2, KID_SUBSET_SIZE)
    if subset_size < 2:
        raise SamplerkitError(f"the KID subset size must be >= 2, got {subset_size}")
    if subset_size > min(n1, n2):
        which = "sample" if n1 >= n2 else "reference"
        raise SamplerkitError(f"the KID subset size {subset_size} is larger than the {which} "
                              f"({min(n1, n2)} images); use kid_subset_size {min(n1, n2)} or less")
    return subset_size


def kernel_inception_distance(feats1: np.ndarray, feats2: np.ndarray, num_subsets: int = KID_SUBSETS,
                              subset_size: int | None = None, seed: int = 0) -> tuple[float, float]:
    """(KID, std over subsets (ddof = 0)) of two feature sets [n1, d], [n2, d]; see the module docstring."""
    f1, f2 = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise SamplerkitError(f"KID features of different shapes: {f1.shape} vs {f2.shape}")
    if num_subsets < 1:
        raise SamplerkitError(f"the number of KID subsets must be >= 1, got {num_subsets}")
    m = check_subset_size(len(f1), len(f2), subset_size)
    if m < 2:
        raise SamplerkitError(f"KID needs at least 2 images per set, got {len(f1)} and {len(f2)}")
    rng = np.random.RandomState(seed)
    values = np.empty(num_subsets)
    for i in range(num_subsets):
        x = f2[rng.choice(len(f2), m, replace=False)]
        y = f1[rng.choice(len(f1), m, replace=False)]
        values[i] = mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y))
    return float(values.mean()), float(values.std())
