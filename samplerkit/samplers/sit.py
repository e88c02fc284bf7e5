"""SiT's own samplers (Ma et al. 2024 (SiT), arXiv 2401.08740, Sec. 2.3 and 3.5; willisma/SiT
``transport/``): Euler-Maruyama (or SiT's stochastic Heun) on the reverse SDE of the linear
interpolant with a free diffusion coefficient w_t and a final "last step", and the probability-flow
ODE with fixed steps or adaptive Dormand-Prince 5(4).

**The interpolant through D(x; sigma).** SiT's time runs from noise to data, x_t = t y + (1 - t) n
(y data, n ~ N(0, I); t = 0 noise, t = 1 data). With x = x_t / t and sigma = (1 - t) / t this is
samplerkit's x = y + sigma n (see ``adapters/dit.py``), and D(x; sigma) = E[y | x_t]. Then

    E[n | x_t] = (x_t - t D) / (1 - t),
    velocity   u(x_t, t) = E[y - n | x_t] = (D - x_t) / (1 - t),
    score      grad log p_t(x_t) = -E[n | x_t] / (1 - t) = (t D - x_t) / (1 - t)^2 = (t u - x_t) / (1 - t),

the last being SiT's ``get_score_from_velocity`` for the linear path (alpha_t / alpha_t' = t, its
"var" = 1 - t). SiT's reverse SDE (its ``sample_sde``: drift of the probability flow plus w_t times
the score, noise sqrt(2 w_t) dW, integrated forward in t) is

    dx_t = [u(x_t, t) + w_t score(x_t, t)] dt + sqrt(2 w_t) dW_t,

and its ODE is dx_t / dt = u(x_t, t). Both are evaluated here through D only: D at
x = x_t / t_e, sigma = (1 - t_e) / t_e with t_e = t clamped to [T_EDGE, 1 - T_EDGE], and
u = (D - x_t) / (1 - t_e); the score uses the exact t (at t = 0 it is -x_t, as upstream). t = 0 is
sigma = inf and t = 1 is sigma = 0, where D no longer determines u; T_EDGE = 1e-8 stands in for
them. On SiT's denoiser (float32 network) the network then sees t = 1e-8 for 0 and exactly 1.0 for
1 (1 - 1e-8 rounds to 1 in float32), and u comes back to about 1e-8 relative: the fixture tests
match upstream to 1e-5 of the output scale.

**Which models.** The reading holds for any D, but the samplers start at t = 0 (sigma = inf) and
spend most steps at sigma far above a diffusion model's trained range, so they run only on a model
that declares the linear interpolant (``interpolant = "linear"``: SiT, ``family="sit"``), through
any wrappers (guidance, remedies); any other model is a one-line SamplerkitError.

**Time grid and steps** (as upstream ``Transport.check_interval`` for the linear path with velocity
prediction, where ``create_transport`` sets train_eps = sample_eps = 0 whatever is asked): the grid
is N points ``linspace(t0, t1, N)`` with N the step count (an int, or len(sigmas) - 1 of a grid
whose levels are otherwise ignored; ``samplerkit sample --steps 250`` is upstream's
``--num-sampling-steps 250``). SDE: t0 = 0, t1 = 1 - last_step_size (1 with no last step); N - 1
Euler-Maruyama steps of dt = t1 / (N - 1), then the last step at t1 (NFE N; N - 1 without one;
Heun 2(N - 1) + 1). Upstream evaluates the network twice per drift (once for u, once more for the
score it derives from u), so its SDE spends twice these NFE for the same numbers. The last steps:
"Mean" x + h [u + w score] (the drift without noise, h = last_step_size), "Tweedie"
(x + (1 - t)^2 score) / t = D(x; sigma) (Efron 2011), "Euler" x + h u, "None" nothing.
ODE: t0 = 0, t1 = 1; "euler" and "heun2" (torchdiffeq's fixed-grid methods) take N - 1 steps on
the grid (NFE N - 1, 2(N - 1)); "dopri5" ignores N and adapts its steps to ``ode_atol``/``ode_rtol``
(upstream's --atol 1e-6, --rtol 1e-3).

Diffusion coefficients w_t (SiT's Table 2 / ``path.compute_diffusion``, norm = ``diffusion_norm``):
"sigma" norm (1 - t) (SiT's default and its FID 2.06), "linear" norm (1 - t) (the same for the
linear path), "constant" norm, "decreasing" (norm cos(pi t) + 1)^2 / 4, "increasing-decreasing"
norm sin(pi t)^2. Upstream quirks left out: its "SBDM" form, norm (1 - t) / t, is infinite at SiT's
t0 = 0 (sample_eps is 0 for velocity models), so it is not offered (it is the Python default of
``Sampler.sample_sde``, whose samples are then NaN; the command-line default is "sigma"); "constant" raises a TypeError
upstream (sqrt of a float) and "increasing-decreasing" is misspelt in its table, so neither runs
there -- here they are the formulas above.

Noise: one ``randn_like(x)`` per SDE step, in step order (upstream draws ``randn`` of the whole
batch; with classifier-free guidance it draws for the doubled batch, whose first half is the one
kept). Arithmetic in float64 (near t = 1, u = (D - x_t) / (1 - t) needs D's x_t = t x in float64, as
SiT's denoiser and samplerkit's wrappers keep it); the result is x_1 in data space. ``callback`` gets
x in x_t-space, sigma = (1 - t) / t and D, once per step after its first network call (not called by
dopri5).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..errors import SamplerkitError
from ..likelihood.ode import dopri5
from ._grid import denoise, is_step_count, report

T_EDGE = 1e-8  # stand-in distance from t = 0 (sigma = inf) and t = 1 (sigma = 0) where D is evaluated
DIFFUSION_FORMS = ("sigma", "linear", "constant", "decreasing", "increasing-decreasing")
LAST_STEPS = ("Mean", "Tweedie", "Euler", "None")
SDE_METHODS = ("Euler", "Heun")
ODE_METHODS = ("dopri5", "euler", "heun2")


def is_linear_flow(net) -> bool:
    """True when ``net``, or a denoiser it wraps (``.inner``), declares the linear interpolant."""
    while net is not None:
        if getattr(net, "interpolant", None) == "linear":
            return True
        net = getattr(net, "inner", None)
    return False


def check_flow(net, sampler: str) -> None:
    if not is_linear_flow(net):
        raise SamplerkitError(f"{sampler} needs a linear-interpolant flow model such as family='sit' "
                              "(it starts at t = 0, sigma = inf); use euler, heun or another sampler for this model")


def num_points(sigmas) -> int:
    """N, the number of time points: an int, or the step count of a grid (len - 1)."""
    n = int(sigmas) if is_step_count(sigmas) else torch.as_tensor(sigmas).numel() - 1
    if n < 2:
        raise SamplerkitError(f"SiT's samplers need steps >= 2 (N time points, N - 1 steps), got {n}")
    return n


def diffusion_coefficient(form: str, norm: float, t: torch.Tensor) -> torch.Tensor:
    """w_t of SiT's reverse SDE (SiT Table 2; ``path.compute_diffusion`` of the linear path)."""
    if form in ("sigma", "linear"):
        return norm * (1 - t)
    if form == "constant":
        return torch.full_like(t, float(norm))
    if form == "decreasing":
        return 0.25 * (norm * torch.cos(math.pi * t) + 1) ** 2
    return norm * torch.sin(math.pi * t) ** 2


class _Flow:
    """The interpolant's velocity and score at (x_t, t) from D(x; sigma) (module docstring)."""

    def __init__(self, net, class_labels, clip_denoised: bool, callback):
        self.net, self.class_labels, self.clip_denoised, self.callback = net, class_labels, clip_denoised, callback

    def velocity(self, x: torch.Tensor, t: torch.Tensor, step: int | None = None, labels=None) -> torch.Tensor:
        """u(x_t, t) = (D - x_t) / (1 - t_e); ``t`` a scalar or one per image."""
        t_e = torch.as_tensor(t, dtype=torch.float64, device=x.device).clamp(T_EDGE, 1 - T_EDGE)
        t_b = t_e.reshape(-1, *([1] * (x.ndim - 1)))
        sigma = (1 - t_e) / t_e
        labels = self.class_labels if labels is None else labels
        D = denoise(self.net, x / t_b, sigma, labels, self.clip_denoised)
        if step is not None:
            report(self.callback, step, x, (1 - t) / t, sigma, D)  # sigma(t) = inf at t = 0
        return (D - x) / (1 - t_b)

    def score(self, x: torch.Tensor, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """grad log p_t(x_t) = (t u - x_t) / (1 - t) (SiT's get_score_from_velocity, linear path)."""
        return (t * u - x) / (1 - t)

    def drift(self, x, t, form: str, norm: float, step: int | None = None) -> torch.Tensor:
        """The SDE's drift u + w_t score."""
        u = self.velocity(x, t, step)
        return u + diffusion_coefficient(form, norm, t) * self.score(x, t, u)


def check_sde(sde_method: str, diffusion_form: str, diffusion_norm: float, last_step: str,
              last_step_size: float) -> None:
    for name, value, choices in (("sde_method", sde_method, SDE_METHODS), ("last_step", last_step, LAST_STEPS),
                                 ("diffusion_form", diffusion_form, DIFFUSION_FORMS)):
        if value not in choices:
            raise SamplerkitError(f"unknown {name} {value!r}; use {' or '.join(choices)}")
    if not (math.isfinite(diffusion_norm) and diffusion_norm >= 0):
        raise SamplerkitError(f"diffusion_norm must be finite and >= 0, got {diffusion_norm}")
    if last_step != "None" and not 0 < last_step_size < 1:
        raise SamplerkitError(f"last_step_size must be in (0, 1) with a last step (t1 = 1 - last_step_size), "
                              f"got {last_step_size}")


def _last_step(flow: _Flow, x, t1, kind: str, h: float, form: str, norm: float, step: int) -> torch.Tensor:
    if kind == "None":
        return x
    if kind == "Mean":
        return x + flow.drift(x, t1, form, norm, step) * h
    u = flow.velocity(x, t1, step)
    if kind == "Euler":
        return x + u * h
    return (x + (1 - t1) ** 2 * flow.score(x, t1, u)) / t1  # Tweedie: = D(x; sigma(t1))


def sit_sde(net, latents, sigmas, class_labels=None, sde_method: str = "Euler", diffusion_form: str = "sigma",
            diffusion_norm: float = 1.0, last_step: str = "Mean", last_step_size: float = 0.04,
            randn_like: Callable = torch.randn_like, *, clip_denoised: bool = False,
            callback: Callable | None = None) -> torch.Tensor:
    """SiT's SDE sampler (Ma et al. 2024 (SiT), Sec. 2.4; upstream ``Sampler.sample_sde``): N - 1
    Euler-Maruyama (``sde_method="Euler"``) or stochastic Heun steps of
    dx = [u + w_t score] dt + sqrt(2 w_t) dW on t in [0, 1 - last_step_size], then the last step.
    The defaults are upstream's (``sample_ddp.py SDE``), those of SiT-XL/2's FID 2.06. See the
    module docstring for the grid, the forms of w_t and which models it runs on."""
    check_flow(net, "sit_sde")
    check_sde(sde_method, diffusion_form, diffusion_norm, last_step, last_step_size)
    n = num_points(sigmas)
    h = last_step_size if last_step != "None" else 0.0
    ts = torch.linspace(0.0, 1.0 - h, n, dtype=torch.float64, device=latents.device)
    dt = ts[1] - ts[0]
    flow = _Flow(net, class_labels, clip_denoised, callback)
    x = latents.to(torch.float64)
    for i, t in enumerate(ts[:-1]):
        w = diffusion_coefficient(diffusion_form, diffusion_norm, t)
        dw = randn_like(x).to(torch.float64) * dt.sqrt()
        if sde_method == "Euler":
            x = x + flow.drift(x, t, diffusion_form, diffusion_norm, i) * dt + (2 * w).sqrt() * dw
        else:  # SiT's Heun: the noise first, then Heun's drift step from t to t + dt
            x_hat = x + (2 * w).sqrt() * dw
            k1 = flow.drift(x_hat, t, diffusion_form, diffusion_norm, i)
            k2 = flow.drift(x_hat + dt * k1, t + dt, diffusion_form, diffusion_norm)
            x = x_hat + 0.5 * dt * (k1 + k2)
    return _last_step(flow, x, ts[-1], last_step, h, diffusion_form, diffusion_norm, n - 1)


def check_ode(ode_method: str, ode_atol: float, ode_rtol: float) -> None:
    if ode_method not in ODE_METHODS:
        raise SamplerkitError(f"unknown ode_method {ode_method!r}; use {' or '.join(ODE_METHODS)}")
    if not (ode_atol > 0 and ode_rtol > 0):
        raise SamplerkitError(f"ode_atol and ode_rtol must be > 0, got {ode_atol} and {ode_rtol}")


def sit_ode(net, latents, sigmas, class_labels=None, ode_method: str = "dopri5", ode_atol: float = 1e-6,
            ode_rtol: float = 1e-3, *, clip_denoised: bool = False, callback: Callable | None = None) -> torch.Tensor:
    """SiT's ODE sampler (upstream ``Sampler.sample_ode``, torchdiffeq's ``odeint``): dx_t/dt = u(x_t, t)
    from t = 0 to 1. ``ode_method``: "dopri5" (adaptive, upstream's default with atol 1e-6, rtol 1e-3;
    samplerkit's Dormand-Prince 5(4) of :mod:`samplerkit.likelihood.ode`, whose step control runs per
    image where torchdiffeq's runs over the batch, so the two agree to the tolerance, not bit for bit),
    "euler" or "heun2" on the N-point grid (N - 1 steps; "euler" is :func:`samplerkit.samplers.euler`
    on ``schedules.flow(N - 1)`` up to its finite start). See the module docstring."""
    check_flow(net, "sit_ode")
    check_ode(ode_method, ode_atol, ode_rtol)
    n = num_points(sigmas)
    flow = _Flow(net, class_labels, clip_denoised, callback)
    x = latents.to(torch.float64)
    if ode_method == "dopri5":
        labels = None if class_labels is None else torch.as_tensor(class_labels, device=x.device)

        def f(y, s, rows):
            return (flow.velocity(y[0], s, labels=None if labels is None else labels[rows]),)

        (x,), _ = dopri5(f, (x,), 0.0, 1.0, ode_atol, ode_rtol)
        return x
    ts = torch.linspace(0.0, 1.0, n, dtype=torch.float64, device=x.device)
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:], strict=True)):
        k1 = flow.velocity(x, t, i)
        if ode_method == "euler":
            x = x + (t_next - t) * k1
        else:
            k2 = flow.velocity(x + (t_next - t) * k1, t_next)
            x = x + 0.5 * (t_next - t) * (k1 + k2)
    return x
