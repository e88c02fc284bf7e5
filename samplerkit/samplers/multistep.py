"""Multistep solvers of the probability-flow ODE in sigma-space: linear multistep (LMS), UniPC
and iPNDM. Each reuses the slopes or data predictions of earlier steps, so NFE = N.

Every function starts at ``x = latents * sigma_0``, works on x = y + sigma n in float64, and
warms up with lower orders on its first steps. ``callback`` as in :func:`samplerkit.samplers.euler`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..errors import SamplerkitError
from ._grid import denoise, report, start

UNIPC_VARIANTS = ("bh1", "bh2")


def check_order(name: str, order: int, highest: int) -> None:
    if not isinstance(order, int) or isinstance(order, bool) or not 1 <= order <= highest:
        raise SamplerkitError(f"{name} takes order 1 to {highest}, got {order!r}")


# ---------------------------------------------------------------------------------------------
# linear multistep in sigma (k-diffusion sample_lms)


def lms_coefficients(sigmas: np.ndarray, i: int, order: int) -> list[float]:
    """Weights of d_i, d_{i-1}, ... in x_{i+1} = x_i + sum_j c_j d_{i-j}: c_j is the integral over
    [sigma_i, sigma_{i+1}] of the Lagrange polynomial through sigma_i, ..., sigma_{i-order+1} that is
    1 at sigma_{i-j} (variable-step Adams-Bashforth), integrated exactly."""
    nodes = [float(sigmas[i - k]) for k in range(order)]
    weights = []
    for j in range(order):
        others = [nodes[k] for k in range(order) if k != j]
        roots = np.polynomial.Polynomial.fromroots(others) if others else np.polynomial.Polynomial([1.0])
        basis = roots / math.prod(nodes[j] - s for s in others)
        antiderivative = basis.integ()
        weights.append(float(antiderivative(float(sigmas[i + 1])) - antiderivative(float(sigmas[i]))))
    return weights


def lms(net, latents, sigmas, class_labels=None, order: int = 4, *, clip_denoised: bool = False,
        callback: Callable | None = None) -> torch.Tensor:
    """Linear multistep (Adams-Bashforth on the variable sigma grid) on dx/dsigma = (x - D)/sigma,
    of ``order`` 1-4, as k-diffusion's ``sample_lms`` (Crowson; Karras et al. 2022 (EDM), Sec. 3
    discusses multistep solvers). NFE = N."""
    check_order("lms", order, 4)
    sigmas, x = start(net, latents, sigmas)
    grid = sigmas.cpu().numpy()
    slopes: list[torch.Tensor] = []
    for i, sigma in enumerate(sigmas[:-1]):
        denoised = denoise(net, x, sigma, class_labels, clip_denoised)
        report(callback, i, x, sigma, sigma, denoised)
        slopes = [(x - denoised) / sigma, *slopes][:order]  # newest first
        coeffs = lms_coefficients(grid, i, min(i + 1, order))
        x = x + sum(c * d for c, d in zip(coeffs, slopes, strict=False))
    return x


# ---------------------------------------------------------------------------------------------
# iPNDM (Zhang & Chen 2023, DEIS: improved pseudo numerical method, Liu et al. 2022 (PNDM))

# Adams-Bashforth weights for equal steps, newest slope first
_AB = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def ipndm(net, latents, sigmas, class_labels=None, order: int = 4, *, clip_denoised: bool = False,
          callback: Callable | None = None) -> torch.Tensor:
    """iPNDM (Zhang & Chen 2023, DEIS): the DDIM/Euler step in sigma with the slope replaced by
    the fixed equal-step Adams-Bashforth combination of the last ``order`` (1-4) slopes
    eps = (x - D)/sigma, lower orders on the first steps instead of PNDM's Runge-Kutta warm-up.
    The weights assume equal steps, so on a non-uniform grid (EDM's) it converges at order 2 at
    most; see :func:`lms` for the variable-step weights. NFE = N."""
    check_order("ipndm", order, 4)
    sigmas, x = start(net, latents, sigmas)
    slopes: list[torch.Tensor] = []
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        denoised = denoise(net, x, sigma, class_labels, clip_denoised)
        report(callback, i, x, sigma, sigma, denoised)
        slopes = [(x - denoised) / sigma, *slopes][:order]
        d = sum(c * s for c, s in zip(_AB[len(slopes)], slopes, strict=True))
        x = x + (sigma_next - sigma) * d
    return x


# ---------------------------------------------------------------------------------------------
# UniPC (Zhao et al. 2023), data prediction, in lambda = -log sigma


def _phi_h(hh: float, highest: int) -> list[float]:
    """[hh phi_1(hh), hh phi_2(hh), ..., hh phi_highest(hh)] with phi_1(z) = (e^z - 1)/z and
    phi_{k+1}(z) = (phi_k(z) - 1/k!)/z (the exponential-integrator phi functions)."""
    values, phi = [], math.expm1(hh) / hh
    for k in range(1, highest + 1):
        values.append(hh * phi)
        phi = (phi - 1 / math.factorial(k)) / hh
    return values


def _unipc_weights(rks: list[float], hh: float, order: int, variant: str, corrector: bool) -> tuple[list, float]:
    """The weights a_m of the divided differences D_m / r_m and B(h) (Zhao et al. 2023, Eq. for
    UniP-p / UniC-p): solve R a = g / B(h) with R[k][m] = r_m^k and g_k = k! h phi_{k+2}(h) ... in
    data prediction (hh = -h). As the reference implementations do, UniP-2 and UniC-1 use the fixed
    weight 1/2 instead of solving a 1 x 1 system."""
    B = hh if variant == "bh1" else math.expm1(hh)
    phis = _phi_h(hh, order + 1)
    g = [phis[k + 1] * math.factorial(k + 1) / B for k in range(order)]  # k! hh phi_{k+1}, k = 1 .. order
    nodes = [*rks, 1.0]
    if corrector:
        if order == 1:
            return [0.5], B
        R = np.array([[r**k for r in nodes] for k in range(order)])
        return list(np.linalg.solve(R, np.array(g))), B
    if order == 1:
        return [], B
    if order == 2:
        return [0.5], B
    R = np.array([[r**k for r in nodes[:-1]] for k in range(order - 1)])
    return list(np.linalg.solve(R, np.array(g[:-1]))), B


def unipc(net, latents, sigmas, class_labels=None, order: int = 2, variant: str = "bh1", *,
          clip_denoised: bool = False, callback: Callable | None = None) -> torch.Tensor:
    """UniPC (Zhao et al. 2023) with data prediction: the UniP-p predictor and the UniC-p corrector,
    p = ``order`` (1-3), B(h) = h ('bh1') or e^h - 1 ('bh2'), as diffusers'
    ``UniPCMultistepScheduler`` (predict_x0, lower_order_final, corrector on every step): order
    min(p, i + 1, N - i) on step i, so the last step to sigma = 0 returns the data prediction. The
    corrector reuses the next step's network call, so NFE = N; accuracy order p + 1."""
    check_order("unipc", order, 3)
    if variant not in UNIPC_VARIANTS:
        raise SamplerkitError(f"unknown UniPC variant {variant!r}; use bh1 or bh2")
    sigmas, x = start(net, latents, sigmas)
    N = len(sigmas) - 1
    lam = -sigmas[:-1].log()  # lambda_i = -log sigma_i (sigma_N = 0 is never used)
    history: list[torch.Tensor] = []  # data predictions at the earlier points, newest first
    x_last, p_last = None, 0
    for i, sigma in enumerate(sigmas[:-1]):
        denoised = denoise(net, x, sigma, class_labels, clip_denoised)
        report(callback, i, x, sigma, sigma, denoised)
        if x_last is not None:  # UniC-p on the step just taken, with the new data prediction
            x = _unipc_step(x_last, sigmas, lam, i - 1, history, p_last, variant, denoised)
        history = [denoised, *history][:order]
        p = min(order, i + 1, N - i)
        x_last, p_last = x, p
        if i == N - 1:
            return denoised  # first-order step to sigma = 0
        x = _unipc_step(x, sigmas, lam, i, history, p, variant, None)
    return x


def _unipc_step(x, sigmas, lam, s, history, p, variant, model_t):
    """From point s to s + 1: UniP-p (``model_t`` None) or UniC-p with the data prediction at
    s + 1 (``model_t``). history[0] is the data prediction at s, history[m] at s - m."""
    h = float(lam[s + 1] - lam[s])
    m0 = history[0]
    rks = [float(lam[s - m] - lam[s]) / h for m in range(1, p)]
    diffs = [(history[m] - m0) / rk for m, rk in zip(range(1, p), rks, strict=True)]
    a, B = _unipc_weights(rks, -h, p, variant, corrector=model_t is not None)
    x_next = (sigmas[s + 1] / sigmas[s]) * x - math.expm1(-h) * m0
    correction = sum((w * d for w, d in zip(a, diffs, strict=False)), torch.zeros_like(x))
    if model_t is not None:
        correction = correction + a[-1] * (model_t - m0)
    return x_next - B * correction
