"""DPM-Solver with fixed and adaptive step sizes (Lu et al. 2022 (DPM-Solver), arXiv 2206.00927,
Sec. 3.3, Alg. 1-2 and App. C; k-diffusion's ``sample_dpm_fast`` and ``sample_dpm_adaptive``).

Both integrate the probability-flow ODE in lambda = -log sigma with the noise-prediction
formulas of the paper (x = y + sigma n, so alpha = 1 and eps = (x - D(x; sigma)) / sigma), and
step from sigma_max to sigma_min > 0, not to 0. How they fit samplerkit's
``(net, latents, sigmas, ...)`` convention (the same reading as ComfyUI's wrappers of these two
k-diffusion functions):

* the grid (or a step count N, which stands for EDM's grid over the model's range, see
  :func:`samplerkit.samplers.euler`) supplies sigma_max = ``sigmas[0]`` and sigma_min = the last
  positive level ``sigmas[-2]``, both rounded to the model's trained levels;
* ``dpm_fast`` spends exactly N network evaluations for an N-step grid (k-diffusion's ``n``):
  floor(N/3) + 1 steps equally spaced in lambda, of order 3 except the last one or two;
* ``dpm_adaptive`` ignores the grid's inner levels: its steps are chosen by the error
  controller (``rtol``, ``atol``, ``h_init``, PID coefficients), so its NFE is not known in advance;
* both return x at sigma_min, as k-diffusion does (no final denoising step: the result keeps
  noise of standard deviation sigma_min, e.g. 0.002 on EDM's grid);
* ``dpm_adaptive``'s error norm runs over the whole batch (k-diffusion), so its step sizes, and
  hence an image, depend on the other images in the batch -- the one samplerkit sampler for which
  an image is not a function of its seed alone.

With eta > 0 both take k-diffusion's ancestral variant: the step goes to sigma_down and noise of
std s_noise sigma_up is added, one ``randn_like(x)`` per (accepted) step; with eta = 0 nothing is
drawn (k-diffusion draws and multiplies the draw by 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..errors import SamplerkitError
from ._grid import denoise, report, start
from .dpm import ancestral_step, check_noise


def _endpoints(net, latents, sigmas):
    """(x at sigma_max, lambda_max = -log sigma_max, lambda_min = -log sigma_min, number of steps N)
    from the grid."""
    sigmas, x = start(net, latents, sigmas)
    if sigmas.numel() < 3 or not sigmas[-2] < sigmas[0]:
        raise SamplerkitError("dpm_fast and dpm_adaptive need a grid with two positive levels (steps >= 2)")
    return x, -sigmas[0].log(), -sigmas[-2].log(), sigmas.numel() - 1


def _sigma(lam):
    return (-lam).exp()


class _Eps:
    """eps(x; lambda) = (x - D(x; sigma)) / sigma, the noise prediction the paper's formulas use."""

    def __init__(self, net, class_labels, clip_denoised: bool):
        self.net, self.class_labels, self.clip_denoised = net, class_labels, clip_denoised
        self.calls = 0

    def __call__(self, x, lam):
        sigma = _sigma(lam)
        self.calls += 1
        return (x - denoise(self.net, x, sigma, self.class_labels, self.clip_denoised)) / sigma


def dpm_solver_1(x, lam, lam_next, eps):
    """DPM-Solver-1 (Lu et al. 2022, Eq. 3.7 with alpha = 1): x - sigma_t (e^h - 1) eps."""
    h = lam_next - lam
    return x - _sigma(lam_next) * torch.expm1(h) * eps


def dpm_solver_2(eps_fn, x, lam, lam_next, eps, r1=0.5):
    """DPM-Solver-2 (Lu et al. 2022, Alg. 1): an intermediate point u at lambda + r1 h, then the
    second-order step. Returns (x_next, eps at u)."""
    h = lam_next - lam
    s1 = lam + r1 * h
    u1 = x - _sigma(s1) * torch.expm1(r1 * h) * eps
    eps_1 = eps_fn(u1, s1)
    sigma_t = _sigma(lam_next)
    return x - sigma_t * torch.expm1(h) * eps - sigma_t / (2 * r1) * torch.expm1(h) * (eps_1 - eps), eps_1


def dpm_solver_3(eps_fn, x, lam, lam_next, eps, eps_1=None, r1=1 / 3, r2=2 / 3):
    """DPM-Solver-3 (Lu et al. 2022, Alg. 2): intermediate points at lambda + r1 h and + r2 h.
    ``eps_1``, the noise prediction at the first one, is reused when given (the adaptive solver
    has it from its DPM-Solver-2 step with r1 = 1/3)."""
    h = lam_next - lam
    s1, s2 = lam + r1 * h, lam + r2 * h
    if eps_1 is None:
        eps_1 = eps_fn(x - _sigma(s1) * torch.expm1(r1 * h) * eps, s1)
    D1 = eps_1 - eps
    u2 = x - _sigma(s2) * torch.expm1(r2 * h) * eps - _sigma(s2) * (r2 / r1) * (torch.expm1(r2 * h) / (r2 * h) - 1) * D1
    D2 = eps_fn(u2, s2) - eps
    sigma_t = _sigma(lam_next)
    return x - sigma_t * torch.expm1(h) * eps - sigma_t / r2 * (torch.expm1(h) / h - 1) * D2


def _ancestral_target(lam, lam_next, lam_end, eta):
    """(lambda to step to, std of the noise added after): k-diffusion's ancestral DPM-Solver step
    goes to sigma_down (never below sigma_min) and adds the rest of sigma_next's variance."""
    if not eta:
        return lam_next, None
    sigma_down, _ = ancestral_step(_sigma(lam), _sigma(lam_next), eta)
    lam_to = torch.minimum(lam_end, -sigma_down.log())
    return lam_to, (_sigma(lam_next) ** 2 - _sigma(lam_to) ** 2).sqrt()


def fast_orders(nfe: int) -> list[int]:
    """The orders of dpm_fast's steps for a budget of ``nfe`` evaluations (Lu et al. 2022, Sec. 3.3:
    DPM-Solver-3 steps, the remainder taken by one final step of order 1 or 2, or by two steps of
    order 2 and 1 when 3 divides the budget). They sum to ``nfe``."""
    m = nfe // 3 + 1
    return [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]


def dpm_fast(net, latents, sigmas, class_labels=None, eta: float = 0.0, s_noise: float = 1.0,
             randn_like: Callable = torch.randn_like, *, clip_denoised: bool = False,
             callback: Callable | None = None) -> torch.Tensor:
    """DPM-Solver-fast (Lu et al. 2022 (DPM-Solver), Sec. 3.3; k-diffusion ``sample_dpm_fast``):
    an N-step grid buys exactly N network evaluations, spent on floor(N/3) + 1 steps equally spaced
    in lambda from sigmas[0] to sigmas[-2] (only the grid's end points are used). Returns x at
    sigmas[-2] (see the module notes). eta > 0: k-diffusion's ancestral variant. NFE = N."""
    check_noise(eta, s_noise)
    x, lam_start, lam_end, num_steps = _endpoints(net, latents, sigmas)
    eps_fn = _Eps(net, class_labels, clip_denoised)
    orders = fast_orders(num_steps)
    lams = torch.linspace(float(lam_start), float(lam_end), len(orders) + 1, dtype=torch.float64, device=x.device)
    for i, order in enumerate(orders):
        lam, lam_next = lams[i], lams[i + 1]
        lam_to, sigma_up = _ancestral_target(lam, lam_next, lam_end, eta)
        eps = eps_fn(x, lam)
        report(callback, i, x, _sigma(lam), _sigma(lam), x - _sigma(lam) * eps)
        if order == 1:
            x = dpm_solver_1(x, lam, lam_to, eps)
        elif order == 2:
            x = dpm_solver_2(eps_fn, x, lam, lam_to, eps)[0]
        else:
            x = dpm_solver_3(eps_fn, x, lam, lam_to, eps)
        if sigma_up is not None:
            x = x + randn_like(x) * s_noise * sigma_up
    return x


class StepController:
    """PID step-size control on the inverse error (Söderlind 2003, as in k-diffusion's
    ``PIDStepSizeController``): factor = limiter(e0^b1 e1^b2 e2^b3) with e_k the inverse errors of
    the last accepted steps and limiter(f) = 1 + atan(f - 1); a step is accepted when the factor
    reaches ``accept_safety``; h is multiplied by the factor either way."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order, accept_safety, eps=1e-8):
        self.h, self.accept_safety, self.eps = h, accept_safety, eps
        self.b = ((pcoeff + icoeff + dcoeff) / order, -(pcoeff + 2 * dcoeff) / order, dcoeff / order)
        self.inv_errors = None

    def propose(self, error) -> bool:
        inv_error = 1 / (float(error) + self.eps)
        if self.inv_errors is None:
            self.inv_errors = [inv_error] * 3
        self.inv_errors[0] = inv_error
        factor = math.prod(e**b for e, b in zip(self.inv_errors, self.b, strict=True))
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.inv_errors[1:] = self.inv_errors[:2]
        self.h *= factor
        return accept


def check_adaptive(order: int, rtol: float, atol: float, h_init: float, accept_safety: float) -> None:
    if order not in (2, 3):
        raise SamplerkitError(f"dpm_adaptive takes order 2 or 3, got {order!r}")
    if not (rtol >= 0 and atol >= 0 and rtol + atol > 0):
        raise SamplerkitError(f"rtol and atol must be >= 0 and not both 0, got rtol={rtol}, atol={atol}")
    if not h_init > 0 or not accept_safety > 0:
        raise SamplerkitError(f"h_init and accept_safety must be > 0, got {h_init} and {accept_safety}")


def _embedded_pair(eps_fn, x, lam, lam_to, eps, order):
    """(lower-order, higher-order) solutions of one step: DPM-Solver-1 and -2 (order 2), or
    DPM-Solver-2 with r1 = 1/3 and DPM-Solver-3 sharing its intermediate evaluation (order 3)
    (Lu et al. 2022, App. C)."""
    if order == 2:
        return dpm_solver_1(x, lam, lam_to, eps), dpm_solver_2(eps_fn, x, lam, lam_to, eps)[0]
    x_low, eps_1 = dpm_solver_2(eps_fn, x, lam, lam_to, eps, r1=1 / 3)
    return x_low, dpm_solver_3(eps_fn, x, lam, lam_to, eps, eps_1=eps_1)


def dpm_adaptive(net, latents, sigmas, class_labels=None, order: int = 3, rtol: float = 0.05,
                 atol: float = 0.0078, h_init: float = 0.05, pcoeff: float = 0.0, icoeff: float = 1.0,
                 dcoeff: float = 0.0, accept_safety: float = 0.81, eta: float = 0.0, s_noise: float = 1.0,
                 randn_like: Callable = torch.randn_like, *, clip_denoised: bool = False,
                 callback: Callable | None = None) -> torch.Tensor:
    """DPM-Solver-12 / -23 with adaptive step size (Lu et al. 2022 (DPM-Solver), App. C;
    k-diffusion ``sample_dpm_adaptive``) from sigmas[0] to sigmas[-2]: each step's error is the
    RMS over the batch of (x_low - x_high) / max(atol, rtol max(|x_low|, |x_prev|)), and
    :class:`StepController` sets the next h (in lambda). Returns x at sigmas[-2]. The callback
    also gets 'error', 'h', 'steps', 'nfe', 'n_accept', 'n_reject' after every attempted step. A
    rejected step reuses the noise prediction at its start (k-diffusion evaluates it again), so
    NFE = order per attempt + 1 per accepted step, less than k-diffusion's by the rejections."""
    check_noise(eta, s_noise)
    check_adaptive(order, rtol, atol, h_init, accept_safety)
    x, lam, lam_end, _ = _endpoints(net, latents, sigmas)
    eps_fn = _Eps(net, class_labels, clip_denoised)
    pid = StepController(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    x_prev, eps, stats = x, None, {"steps": 0, "n_accept": 0, "n_reject": 0}
    while lam < lam_end - 1e-5:
        lam_next = torch.minimum(lam_end, lam + pid.h)
        lam_to, sigma_up = _ancestral_target(lam, lam_next, lam_end, eta)
        eps = eps_fn(x, lam) if eps is None else eps
        denoised = x - _sigma(lam) * eps
        x_low, x_high = _embedded_pair(eps_fn, x, lam, lam_to, eps, order)
        delta = torch.clamp(rtol * torch.maximum(x_low.abs(), x_prev.abs()), min=atol)
        error = torch.linalg.vector_norm((x_low - x_high) / delta) / math.sqrt(x.numel())
        accepted = pid.propose(error)
        if accepted:
            x_prev, x, lam, eps = x_low, x_high, lam_next, None
            if sigma_up is not None:
                x = x + randn_like(x) * s_noise * sigma_up
        stats["steps"] += 1
        stats["n_accept" if accepted else "n_reject"] += 1
        if callback is not None:
            callback({"i": stats["steps"] - 1, "x": x, "sigma": _sigma(lam), "sigma_hat": _sigma(lam),
                      "denoised": denoised, "error": error, "h": pid.h, "nfe": eps_fn.calls, **stats})
    return x
