"""Noise-level discretizations and timestep respacing.

Each discretization returns a 1-D float64 tensor of N + 1 noise levels, descending, last 0
(Karras et al. 2022 (EDM), Table 1, "time steps" row, and Eq. 5). ``respace`` returns the sorted
*training* timesteps an iDDPM/ADM model is sampled on (Nichol & Dhariwal 2021, Sec. 4).
"""

from __future__ import annotations

import math

import torch

from .diffusion import vp_betas_for_range, vp_sigma
from .errors import SamplerkitError

_RTOL = 1e-9  # relative tolerance of the iDDPM range test


def _check_steps(num_steps: int, minimum: int = 1) -> None:
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < minimum:
        raise SamplerkitError(f"number of steps must be an integer >= {minimum}, got {num_steps!r}")


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not (sigma_min > 0 and math.isfinite(sigma_max) and sigma_min < sigma_max):
        raise SamplerkitError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")


def _with_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _fraction(num_steps: int) -> torch.Tensor:
    """i / (N - 1) for i = 0 .. N-1 (0 for N = 1)."""
    i = torch.arange(num_steps, dtype=torch.float64)
    return i / max(num_steps - 1, 1)


def edm(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho (EDM Eq. 5)."""
    _check_steps(num_steps)
    _check_range(sigma_min, sigma_max)
    if not rho > 0:
        raise SamplerkitError(f"rho must be > 0, got {rho}")
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return _with_zero((a + _fraction(num_steps) * (b - a)) ** rho)


def for_model(num_steps: int, net, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
    """EDM's grid (Eq. 5) over [sigma_min, sigma_max] clamped to the model's own range
    [net.sigma_min, net.sigma_max]: what an integer step count means to a sampler, and what
    ``samplerkit sample --steps N`` uses by default."""
    _check_steps(num_steps)
    return edm(num_steps, max(sigma_min, float(net.sigma_min)), min(sigma_max, float(net.sigma_max)), rho)


def vp(
    num_steps: int,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    epsilon_s: float = 1e-3,
) -> torch.Tensor:
    """VP: t_i = 1 + i/(N-1) (epsilon_s - 1), sigma_i = sigma(t_i) (EDM Table 1).

    beta_d and beta_min are chosen so that sigma(epsilon_s) = sigma_min and sigma(1) = sigma_max;
    the defaults are the VP model's own range (beta_d 19.9, beta_min 0.1).
    """
    _check_steps(num_steps)
    sigma_min = float(vp_sigma(epsilon_s)) if sigma_min is None else sigma_min
    sigma_max = float(vp_sigma(1.0)) if sigma_max is None else sigma_max
    _check_range(sigma_min, sigma_max)
    beta_d, beta_min = vp_betas_for_range(sigma_min, sigma_max, epsilon_s)
    t = 1 + _fraction(num_steps) * (epsilon_s - 1)
    return _with_zero(vp_sigma(t, beta_d, beta_min))


def ve(num_steps: int, sigma_min: float = 0.02, sigma_max: float = 100.0) -> torch.Tensor:
    """VE: t_i = sigma_max^2 (sigma_min^2 / sigma_max^2)^(i/(N-1)), sigma_i = sqrt(t_i) (EDM Table 1)."""
    _check_steps(num_steps)
    _check_range(sigma_min, sigma_max)
    t = sigma_max**2 * (sigma_min**2 / sigma_max**2) ** _fraction(num_steps)
    return _with_zero(t.sqrt())


def iddpm_levels(M: int = 1000, C1: float = 0.001, C2: float = 0.008) -> torch.Tensor:
    """u_0 > ... > u_M = 0 with u_{j-1} = sqrt((u_j^2 + 1) / max(abar_{j-1}/abar_j, C1) - 1) and
    abar_j = sin^2(pi/2 j / (M (C2 + 1))) (EDM Table 1, iDDPM column)."""
    alpha_bar = lambda j: math.sin(0.5 * math.pi * j / M / (C2 + 1)) ** 2  # noqa: E731
    u = [0.0] * (M + 1)
    for j in range(M, 0, -1):
        u[j - 1] = math.sqrt((u[j] ** 2 + 1) / max(alpha_bar(j - 1) / alpha_bar(j), C1) - 1)
    return torch.tensor(u, dtype=torch.float64)


def iddpm(
    num_steps: int,
    net=None,
    j0: int = 8,
    C1: float = 0.001,
    C2: float = 0.008,
    M: int = 1000,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> torch.Tensor:
    """iDDPM: t_i = u_{floor(j0 + (M-1-j0)/(N-1) i + 1/2)} (EDM Table 1).

    With ``sigma_min`` / ``sigma_max`` (or a ``net`` that bounds them) the levels u_j0 .. u_{M-1}
    outside the range are dropped first and N are picked evenly from the rest, as EDM's ablation
    sampler does. The bounds are compared with a relative tolerance of 1e-9, so that a model whose
    own sigma_min is u_{M-1} up to rounding (an ADM/iDDPM cosine model: ~1e-15 apart) keeps it.
    """
    _check_steps(num_steps)
    if not 0 <= j0 < M:
        raise SamplerkitError(f"j0 must be in [0, M), got j0={j0}, M={M}")
    u = iddpm_levels(M, C1, C2)
    if sigma_min is None and sigma_max is None and net is None:
        i = torch.arange(num_steps, dtype=torch.float64)
        j = torch.floor(j0 + (M - 1 - j0) / max(num_steps - 1, 1) * i + 0.5).to(torch.int64)
        return _with_zero(u[j])
    lo = max(sigma_min if sigma_min is not None else 0.002, getattr(net, "sigma_min", 0.0))
    hi = min(sigma_max if sigma_max is not None else 81.0, getattr(net, "sigma_max", float("inf")))
    u = u[j0:M]  # EDM's recursion leaves u_0 .. u_{j0-1} unset (0), so they never pass the range test
    kept = u[(u >= lo * (1 - _RTOL)) & (u <= hi * (1 + _RTOL))]
    if kept.numel() == 0:
        raise SamplerkitError(f"no iDDPM level lies in [{lo}, {hi}]")
    idx = ((kept.numel() - 1) / max(num_steps - 1, 1) * torch.arange(num_steps, dtype=torch.float64)).round()
    return _with_zero(kept[idx.to(torch.int64)])


def respace(T: int, spec: str) -> torch.Tensor:
    """Training timesteps to sample on, sorted ascending, as an int64 tensor.

    * ``"K"``: K evenly spaced real numbers between 1 and T, rounded (Nichol & Dhariwal 2021, Sec. 4),
      shifted to the 0-based indices 0 .. T-1;
    * ``"ddimK"``: the uniform stride T // K starting at 0 (DDIM's respacing);
    * ``"a,b,c"``: the T steps cut into as many equal sections, a steps taken evenly from the
      first section, b from the second, ... (guided-diffusion's ``timestep_respacing``).
    """
    if not isinstance(T, int) or T < 1:
        raise SamplerkitError(f"T must be a positive integer, got {T!r}")
    spec = str(spec).strip()
    try:
        if spec.startswith("ddim"):
            return _ddim_stride(T, int(spec[4:]), spec)
        counts = [int(c) for c in spec.split(",")]
    except ValueError:
        raise SamplerkitError(f"bad respacing {spec!r}; use 'K', 'ddimK' or section counts like '10,15,20'") from None
    return _sections(T, counts, spec)


def _ddim_stride(T: int, K: int, spec: str) -> torch.Tensor:
    """range(0, T, stride) for the stride that gives exactly K steps."""
    for stride in range(1, T + 1):
        if len(range(0, T, stride)) == K:
            return torch.arange(0, T, stride, dtype=torch.int64)
    raise SamplerkitError(f"respacing {spec!r}: no integer stride gives exactly {K} of T={T} steps")


def _sections(T: int, counts: list[int], spec: str) -> torch.Tensor:
    """Cut 0 .. T-1 into len(counts) near-equal sections; from each take its count of steps at
    the rounded positions 0, f, 2f, ... with f = (size - 1) / (count - 1). One section of K is
    iDDPM's "K evenly spaced real numbers between 1 and T, rounded", 0-based."""
    size, extra = divmod(T, len(counts))
    steps, start = [], 0
    for i, count in enumerate(counts):
        length = size + (1 if i < extra else 0)
        if not 1 <= count <= length:
            raise SamplerkitError(f"respacing {spec!r}: section {i} has {length} steps, cannot take {count}")
        stride = (length - 1) / (count - 1) if count > 1 else 1.0
        position = 0.0
        for _ in range(count):
            steps.append(start + round(position))
            position += stride
        start += length
    return torch.tensor(sorted(set(steps)), dtype=torch.int64)


FLOW_SIGMA_MAX = 1e6
"""The finite stand-in for sigma = inf (t = 0, pure noise) at the start of :func:`flow`: the first
Euler step from it differs from the step from t = 0 by O(sigma_1 / sigma_max) in the x0 weight.
In t-space that is about max |D| / sigma_max whatever N. Measured against SiT's Euler ODE
(random-weight SiT, samples of max |x| 3.7): max error 3.8e-3, 3.8e-5, 7e-7 at sigma_max = 1e3, 1e5,
1e7 with 10 steps; 3.8e-4 and 5.9e-6 at 1e4 and 1e6 with 250 steps (float32 rounding below that)."""


def flow(num_steps: int, sigma_max: float = FLOW_SIGMA_MAX) -> torch.Tensor:
    """The uniform time grid t_i = i / N (i = 0 .. N) of a linear-interpolant flow model
    (x_t = t y + (1 - t) n, SiT's convention: t = 0 noise, t = 1 data; Ma et al. 2024) in sigma:
    sigma_i = (1 - t_i) / t_i, descending to sigma_N = 0, with the infinite sigma_0 replaced by the
    finite ``sigma_max``. Euler on it is SiT's fixed-step Euler ODE sampler (``num_steps + 1`` grid points).
    """
    _check_steps(num_steps)
    t = torch.arange(1, num_steps + 1, dtype=torch.float64) / num_steps
    sigmas = (1 - t) / t
    if not (math.isfinite(sigma_max) and sigma_max > float(sigmas[0])):
        raise SamplerkitError(f"sigma_max must be finite and above sigma_1 = {float(sigmas[0]):g}, got {sigma_max}")
    return torch.cat([sigmas.new_tensor([sigma_max]), sigmas])
