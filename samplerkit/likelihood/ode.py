"""The probability-flow ODE likelihood of any denoiser D(x; sigma) (Song et al. 2021, App. D.2;
Karras et al. 2022 (EDM), Eq. 3), with Hutchinson's trace estimator and an adaptive Dormand-Prince
5(4) solver."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..denoisers import ContinuousTimestep, DiscreteEpsDenoiser
from ..errors import SamplerkitError
from .grid import BIN_WIDTH, BITS_OFFSET, LN2, check_images

PROBES = ("rademacher", "gaussian")
DEQUANTIZE = ("none", "uniform")
TIMESTEPS = ("trained", "continuous")


@dataclass
class ODELikelihood:
    """The ODE likelihood of each image.

    ``log_likelihood``: log p_{sigma_min}(x) in nats of the (dequantized) image, = ``prior`` + ``delta``
    with ``prior`` = log N(x(sigma_max); 0, sigma_max^2 I) and ``delta`` the integrated divergence;
    ``bpd``: -log_likelihood / (D ln 2) + log2(127.5); ``nfe``: denoiser evaluations (each with
    ``probes`` vector-Jacobian products) of each image; ``sigma_min``/``sigma_max``: the interval;
    ``timesteps``: 'trained' (the model as trained) or 'continuous' (a discrete epsilon-model fed real
    timesteps between its trained levels, a deviation from them; see :func:`with_timesteps`).
    """

    bpd: torch.Tensor  # [B]
    log_likelihood: torch.Tensor  # [B]
    prior: torch.Tensor  # [B]
    delta: torch.Tensor  # [B]
    nfe: torch.Tensor  # [B], int64
    sigma_min: float
    sigma_max: float
    timesteps: str = "trained"


def noise_range(net, sigma_min: float | None, sigma_max: float | None) -> tuple[float, float]:
    """The ODE's interval [sigma_min, sigma_max]: as given, else the model's own; it must be finite and > 0."""
    lo = float(getattr(net, "sigma_min", 0.0) if sigma_min is None else sigma_min)
    hi = float(getattr(net, "sigma_max", math.inf) if sigma_max is None else sigma_max)
    if not (0 < lo < hi < math.inf):
        raise SamplerkitError(f"the ODE likelihood integrates from sigma_min > 0 to a finite sigma_max > sigma_min; "
                              f"got [{lo:g}, {hi:g}]; give sigma_min and sigma_max")
    return lo, hi


def with_timesteps(net, timesteps: str):
    """The denoiser the ODE integrates: ``net`` itself ('trained': a discrete epsilon-model at the trained
    level nearest to sigma, so D is piecewise constant in its timestep), or for 'continuous' the
    discrete epsilon-model fed the real timestep between its levels
    (:class:`~samplerkit.denoisers.ContinuousTimestep`), continuous in sigma -- a deviation from the
    trained levels that lets the adaptive solver take long steps."""
    if timesteps not in TIMESTEPS:
        raise SamplerkitError(f"unknown timesteps {timesteps!r}; use trained or continuous")
    if timesteps == "trained" or isinstance(net, ContinuousTimestep):
        return net
    if not isinstance(net, DiscreteEpsDenoiser):
        raise SamplerkitError(f"timesteps='continuous' applies to discrete epsilon-models (ADM, iDDPM); "
                              f"{type(net).__name__} is not one")
    return ContinuousTimestep(net)


def _probe_noise(x: torch.Tensor, probes: int, probe: str, probe_noise) -> torch.Tensor:
    """[probes, B, C, H, W]: as given, else drawn from torch's global generator (Rademacher as
    k-diffusion's ``log_likelihood`` draws it, so the same seed gives the same probe)."""
    if probe_noise is not None:
        v = torch.as_tensor(probe_noise, dtype=torch.float64, device=x.device)
        v = v[None] if v.ndim == x.ndim else v
        if v.shape[1:] != x.shape or v.shape[0] < 1:
            raise SamplerkitError(f"probe_noise must have shape [probes, {', '.join(map(str, x.shape))}], "
                                  f"got {tuple(v.shape)}")
        return v
    if probe == "rademacher":
        return torch.stack([torch.randint_like(x, 2) * 2 - 1 for _ in range(probes)])
    return torch.stack([torch.randn_like(x) for _ in range(probes)])


def _flow_and_divergence(net, class_labels, v: torch.Tensor):
    """f(x, s) on s = log sigma: dx/ds = x - D(x; e^s) and its divergence D - tr(dD/dx), the trace by
    Hutchinson's estimator mean_p v_p^T (dD/dx) v_p over the probes v (Hutchinson 1989; Skilling 1989)."""

    def f(x: torch.Tensor, s: torch.Tensor, rows: torch.Tensor):
        labels = None if class_labels is None else class_labels[rows]
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            denoised = net(x, s.exp(), labels).to(torch.float64)
            div = x.new_zeros(x.shape[0])
            for p in range(v.shape[0]):
                vp = v[p, rows]
                (vjp,) = torch.autograd.grad((denoised * vp).sum(), x, retain_graph=p + 1 < v.shape[0])
                div += ((vp * vp) - vp * vjp).flatten(1).sum(1)
        return (x - denoised).detach(), div / v.shape[0]

    return f


# Dormand & Prince (1980) 5(4): nodes c, stages a, 5th-order weights b (= the last stage row, FSAL)
# and the difference e = b - b* to the embedded 4th-order weights
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


def _error_norm(err, y0, y1, atol: float, rtol: float) -> torch.Tensor:
    """Per image: the RMS of err / (atol + rtol max(|y0|, |y1|)) over each part of the state, the
    largest over the parts (as torchdiffeq measures a tuple state)."""
    norms = []
    for e, a, b in zip(err, y0, y1, strict=True):
        scale = atol + rtol * torch.maximum(a.abs(), b.abs())
        norms.append(((e / scale) ** 2).reshape(e.shape[0], -1).mean(1).sqrt())
    return torch.stack(norms).amax(0)


def dopri5(f: Callable, y: tuple[torch.Tensor, ...], s0: float, s1: float, atol: float, rtol: float,
           callback: Callable | None = None, max_steps: int = 100_000):
    """Integrate dy/ds = f(y, s, rows) from s0 to s1 with adaptive Dormand-Prince 5(4) steps, each
    image with its own step size and error test (so its result does not depend on the batch).

    ``y`` is a tuple of tensors with the batch first; ``f(y_rows, s_rows, rows)`` returns the
    derivative of the rows ``rows`` at their own times ``s_rows`` [b]. Returns (y(s1), the number of
    evaluations of f each image took part in). Step control: h <- h min(10, max(0.2, 0.9 err^(-1/5))),
    the step accepted when err <= 1 (Hairer, Norsett & Wanner, Solving ODEs I, Sec. II.4).
    """
    B = y[0].shape[0]
    device = y[0].device
    y = tuple(p.clone() for p in y)
    s = torch.full((B,), float(s0), dtype=torch.float64, device=device)
    end = float(s1)
    nfe = torch.zeros(B, dtype=torch.int64, device=device)
    rows = torch.arange(B, device=device)
    k1 = f(y, s, rows)
    nfe += 1
    scale0 = _error_norm(y, y, y, atol, rtol)  # initial step: h = 0.01 ||y|| / ||f|| (Hairer et al., II.4)
    scale1 = _error_norm(k1, y, y, atol, rtol)
    h = torch.where((scale0 > 1e-5) & (scale1 > 1e-5), 0.01 * scale0 / scale1.clamp(min=1e-30), 1e-6)
    h = h.clamp(max=end - s0)
    for _ in range(max_steps):
        active = (s < end) & (end - s > 1e-12 * max(1.0, abs(end)))
        if not bool(active.any()):
            break
        r = rows[active]
        hs = torch.minimum(h[r], end - s[r])
        y0 = tuple(p[r] for p in y)
        ks = [tuple(k[r] for k in k1)]
        for i in range(1, 7):
            yi = tuple(p + _stage(hs, [k[j] for k in ks], _A[i]) for j, p in enumerate(y0))
            ks.append(f(yi, s[r] + _C[i] * hs, r))
        nfe[r] += 6
        y5 = yi  # the 7th stage is evaluated at the 5th-order solution (FSAL)
        err = tuple(_stage(hs, [k[j] for k in ks], _E) for j in range(len(y)))
        norm = _error_norm(err, y0, y5, atol, rtol)
        accept = norm <= 1
        factor = (0.9 * norm.clamp(min=1e-10) ** -0.2).clamp(0.2, 10.0)
        h[r] = hs * torch.where(accept, factor, factor.clamp(max=1.0))
        a = r[accept]
        if a.numel():
            s[a] = torch.where(end - (s[a] + hs[accept]) < 1e-12 * max(1.0, abs(end)), torch.full_like(s[a], end),
                               s[a] + hs[accept])
            for j, p in enumerate(y):
                p[a] = y5[j][accept]
            for j, k in enumerate(k1):
                k[a] = ks[-1][j][accept]
        if callback is not None:
            callback(dict(s=s, nfe=nfe, active=int(active.sum())))
    else:
        raise SamplerkitError(f"the ODE solver did not finish in {max_steps} steps; loosen atol and rtol")
    return y, nfe


def _stage(h: torch.Tensor, ks: list[torch.Tensor], weights) -> torch.Tensor:
    """h * sum_j weights[j] ks[j], with h [b] broadcast over each image."""
    total = sum(w * k for w, k in zip(weights, ks, strict=True) if w != 0.0)
    return h.reshape(-1, *([1] * (total.ndim - 1))) * total


def ode_nll(net, x0: torch.Tensor, class_labels=None, atol: float = 1e-5, rtol: float = 1e-5, probes: int = 1, *,
            probe: str = "rademacher", dequantize: str = "none", sigma_min: float | None = None,
            sigma_max: float | None = None, probe_noise: torch.Tensor | None = None,
            uniform_noise: torch.Tensor | None = None, callback: Callable | None = None,
            timesteps: str = "trained") -> ODELikelihood:
    """log p(x0) under the model's probability-flow ODE, with its parts (see :class:`ODELikelihood`).

    The ODE dx/dsigma = (x - D(x; sigma)) / sigma (Karras et al. 2022 (EDM), Eq. 3) carries x0 from
    ``sigma_min`` to ``sigma_max`` (default: the model's own); log p_{sigma_min}(x0) =
    log N(x(sigma_max); 0, sigma_max^2 I) + int tr(d/dx dx/dsigma) dsigma (Song et al. 2021, App. D.2;
    the same prior as k-diffusion's ``log_likelihood``). For a VP / discrete DDPM model in sigma-space,
    N(0, sigma_max^2 I) is the standard-normal x_T of the chain up to its scale factor
    sqrt(1 + sigma_max^2) / sigma_max (a relative difference of 1 / (2 sigma_max^2)). The solver runs on
    s = log sigma, adaptive Dormand-Prince 5(4) with tolerances ``atol``, ``rtol`` on the state (x in
    sigma-space and the accumulated log-density). The trace is Hutchinson's estimate with ``probes``
    vectors of kind ``probe`` ('rademacher' or 'gaussian'), the same vectors along the whole path, so
    the log-likelihood is unbiased with variance 2 ||int J||_F^2 / probes for Gaussian probes (the
    diagonal dropped for Rademacher ones). ``probe_noise`` [probes, B, C, H, W] fixes the vectors
    (default: drawn from torch's generator); ``dequantize``: 'none' (the density at the grid point)
    or 'uniform' (at x0 + (u - 1/2) 2/255 with ``uniform_noise`` u in [0, 1), default torch.rand_like);
    see the module docstring for the bits/dim of 8-bit data. ``callback(dict(s, nfe, active))``
    runs after each solver step. ``timesteps``: 'trained' or 'continuous' (:func:`with_timesteps`).
    """
    if probe not in PROBES:
        raise SamplerkitError(f"unknown probe {probe!r}; use rademacher or gaussian")
    if dequantize not in DEQUANTIZE:
        raise SamplerkitError(f"unknown dequantize {dequantize!r}; use none or uniform")
    if int(probes) < 1:
        raise SamplerkitError(f"probes must be >= 1, got {probes}")
    if not (atol > 0 and rtol > 0):
        raise SamplerkitError(f"atol and rtol must be > 0, got {atol:g}, {rtol:g}")
    net = with_timesteps(net, timesteps)
    lo, hi = noise_range(net, sigma_min, sigma_max)
    x = check_images(x0)
    if dequantize == "uniform":
        u = torch.rand_like(x) if uniform_noise is None else torch.as_tensor(uniform_noise, dtype=torch.float64)
        if u.shape != x.shape:
            raise SamplerkitError(f"uniform_noise must have the images' shape {tuple(x.shape)}, got {tuple(u.shape)}")
        x = x + (u.to(x.device) - 0.5) * BIN_WIDTH
    v = _probe_noise(x, int(probes), probe, probe_noise)
    labels = None
    if class_labels is not None:
        labels = torch.as_tensor(class_labels, device=x.device)
        if labels.shape[0] != x.shape[0]:
            raise SamplerkitError(f"got {labels.shape[0]} class labels for {x.shape[0]} images")
    f = _flow_and_divergence(net, labels, v)
    (x_end, delta), nfe = dopri5(lambda y, s, r: f(y[0], s, r), (x, x.new_zeros(x.shape[0])),
                                 math.log(lo), math.log(hi), atol, rtol, callback)
    D = x[0].numel()
    prior = (-0.5 * (x_end / hi) ** 2).flatten(1).sum(1) - D * (math.log(hi) + 0.5 * math.log(2 * math.pi))
    ll = prior + delta
    return ODELikelihood(bpd=-ll / (D * LN2) + BITS_OFFSET, log_likelihood=ll, prior=prior, delta=delta, nfe=nfe,
                         sigma_min=lo, sigma_max=hi, timesteps=timesteps)


def ode_bpd(net, x0: torch.Tensor, class_labels=None, atol: float = 1e-5, rtol: float = 1e-5, probes: int = 1,
            **kwargs) -> torch.Tensor:
    """Bits/dim of each image under the probability-flow ODE, float64 [B]; the parts (log-likelihood,
    prior, divergence, NFE) come with :func:`ode_nll` (same arguments)."""
    return ode_nll(net, x0, class_labels, atol, rtol, probes, **kwargs).bpd
