"""Inception Score (Salimans et al. 2016) from the 1008 logits of the Inception graph.

IS = exp(E_x KL(p(y|x) || p(y))), p(y|x) = softmax of the logits of image x and p(y) its mean over
the split. As the ADM evaluator (Dhariwal & Nichol 2021) and the original code: the softmax of
``softmax/logits/MatMul`` (pool_3 times that layer's weight, no bias), the images cut into
``splits`` consecutive parts (10; the evaluator's 5,000-image parts of 50,000 samples), one score
per part; the mean of the parts is the score, their standard deviation (ddof = 0) its spread.
"""

from __future__ import annotations

import numpy as np

from ..errors import SamplerkitError

IS_SPLITS = 10


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def inception_score(logits: np.ndarray, splits: int = IS_SPLITS) -> tuple[float, float]:
    """(mean, std) of the Inception Score over ``splits`` consecutive parts of the images
    (part i: rows i*n//splits .. (i+1)*n//splits - 1); float64 throughout."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise SamplerkitError(f"Inception Score needs logits of shape [n, classes], got {logits.shape}")
    n = len(logits)
    if splits < 1 or n < splits:
        raise SamplerkitError(f"Inception Score with {splits} splits needs at least {splits} images, got {n}")
    p = softmax(logits)
    log_p = np.log(np.clip(p, np.finfo(np.float64).tiny, None))
    scores = []
    for i in range(splits):
        part, log_part = p[i * n // splits : (i + 1) * n // splits], log_p[i * n // splits : (i + 1) * n // splits]
        p_y = part.mean(0)
        kl = (part * (log_part - np.log(np.clip(p_y, np.finfo(np.float64).tiny, None)))).sum(1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))
