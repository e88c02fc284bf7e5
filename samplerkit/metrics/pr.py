"""Improved precision and recall (Kynkäänniemi et al. 2019) on pool_3 features, with k-NN radii as
the ManifoldEstimator of the guided-diffusion evaluator (k = 3, the point itself counted)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import SamplerkitError

PR_K = 3


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances ||a_i||^2 - 2 a_i.b_j + ||b_j||^2, clamped at 0 (float32)."""
    return (a.square().sum(1, keepdim=True) - 2 * a @ b.T + b.square().sum(1)[None]).clamp_min_(0)


def knn_radii(feats: np.ndarray, k: int = PR_K, batch_size: int = 4096) -> np.ndarray:
    """Squared distance of each feature to its k-th nearest neighbour in the set, the point itself
    counted as the 0th (Kynkäänniemi et al. 2019, Sec. 3; the evaluator's ``manifold_radii``)."""
    f = torch.as_tensor(np.asarray(feats), dtype=torch.float32)
    if len(f) <= k:
        raise SamplerkitError(f"precision/recall with k = {k} needs more than {k} images per set, got {len(f)}")
    radii = torch.empty(len(f))
    for start in range(0, len(f), batch_size):
        d = _squared_distances(f[start : start + batch_size], f)
        radii[start : start + batch_size] = d.kthvalue(k + 1, dim=1).values
    return radii.numpy()


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, batch_size: int) -> float:
    """Fraction of points within at least one ball (centre_j, radius_j)."""
    hit = torch.zeros(len(points), dtype=torch.bool)
    for i in range(0, len(points), batch_size):
        for j in range(0, len(centres), batch_size):
            d = _squared_distances(points[i : i + batch_size], centres[j : j + batch_size])
            hit[i : i + batch_size] |= (d <= radii[None, j : j + batch_size]).any(1)
    return float(hit.double().mean())


def precision_recall(ref_feats: np.ndarray, sample_feats: np.ndarray, k: int = PR_K,
                     batch_size: int = 4096) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, Eq. 1-2) with k-NN radii.

    precision: fraction of samples inside the reference manifold; recall: fraction of reference
    features inside the sample manifold. Distances in batches of ``batch_size`` rows x columns.
    """
    ref = torch.as_tensor(np.asarray(ref_feats), dtype=torch.float32)
    sam = torch.as_tensor(np.asarray(sample_feats), dtype=torch.float32)
    if ref.ndim != 2 or sam.ndim != 2 or ref.shape[1] != sam.shape[1]:
        raise SamplerkitError(f"precision/recall features of different shapes: "
                              f"{tuple(ref.shape)} vs {tuple(sam.shape)}")
    r_ref = torch.from_numpy(knn_radii(ref.numpy(), k, batch_size))
    r_sam = torch.from_numpy(knn_radii(sam.numpy(), k, batch_size))
    return _inside(sam, ref, r_ref, batch_size), _inside(ref, sam, r_sam, batch_size)
