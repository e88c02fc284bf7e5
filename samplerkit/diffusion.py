"""The diffusion formulas, each exactly once.

Discrete-time (DDPM / iDDPM / ADM) quantities live in x_t-space,
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with ``t = 0 .. T-1`` the training
timesteps; continuous (EDM) quantities live in sigma-space, ``x = x_0 + sigma n``.
The two are linked by ``x = x_t / sqrt(abar)`` and ``sigma = sqrt((1 - abar) / abar)``
(Karras et al. 2022 (EDM), Sec. 2 and Table 1, iDDPM row).

All arrays are float64 numpy arrays or float64 torch tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .errors import SamplerkitError

# ---------------------------------------------------------------------------------------------
# beta schedules (Nichol & Dhariwal 2021, Sec. 2 and Eq. 17)


def linear_betas(T: int) -> np.ndarray:
    """DDPM's linear schedule, 1e-4 .. 0.02 at T = 1000, scaled by 1000/T for other T."""
    scale = 1000.0 / T
    return np.linspace(scale * 1e-4, scale * 0.02, T, dtype=np.float64)


def cosine_alpha_bar(t: np.ndarray | float, s: float = 0.008) -> np.ndarray:
    """f(t)/f(0) with f(t) = cos^2(((t + s)/(1 + s)) pi/2), t in [0, 1] (Nichol & Dhariwal 2021, Eq. 17)."""
    f = lambda u: np.cos((np.asarray(u, dtype=np.float64) + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t) / f(0.0)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """beta_t = 1 - abar_t / abar_{t-1}, clipped at 0.999 to avoid the singularity at t = T."""
    t = np.arange(T, dtype=np.float64)
    betas = 1.0 - cosine_alpha_bar((t + 1) / T, s) / cosine_alpha_bar(t / T, s)
    return np.minimum(betas, max_beta)


def betas_for(schedule: str, T: int) -> np.ndarray:
    """The named training schedule (guided-diffusion's ``--noise_schedule``) with T steps."""
    if T < 1:
        raise SamplerkitError(f"diffusion_steps must be >= 1, got {T}")
    if schedule == "linear":
        return linear_betas(T)
    if schedule == "cosine":
        return cosine_betas(T)
    raise SamplerkitError(f"unknown noise schedule {schedule!r}; use 'linear' or 'cosine'")


def alpha_bar_from_betas(betas: np.ndarray) -> np.ndarray:
    """abar_t = prod_{s<=t} (1 - beta_s)."""
    return np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))


# ---------------------------------------------------------------------------------------------
# sigma <-> abar <-> t (Karras et al. 2022 (EDM), Table 1)


def per_sample(values, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A scalar or per-image ``values`` ([B]) shaped [B, 1, ..., 1] to broadcast over ``x`` [B, ...], on
    x's device (in ``dtype`` when given): the one broadcast of a per-sample sigma, abar or weight."""
    values = torch.as_tensor(values, dtype=dtype, device=x.device)  # a Python float straight to dtype
    return values.reshape(-1, *([1] * (x.ndim - 1)))


def sigma_from_alpha_bar(alpha_bar):
    """sigma = sqrt((1 - abar) / abar); works on floats, numpy arrays and tensors."""
    return ((1 - alpha_bar) / alpha_bar) ** 0.5


def alpha_bar_from_sigma(sigma):
    """abar = 1 / (1 + sigma^2)."""
    return 1 / (1 + sigma**2)


def vp_sigma(t, beta_d: float = 19.9, beta_min: float = 0.1):
    """VP noise level sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) (Karras et al. 2022 (EDM), Table 1)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return (torch.exp(0.5 * beta_d * t**2 + beta_min * t) - 1).sqrt()


def vp_sigma_deriv(t, beta_d: float = 19.9, beta_min: float = 0.1):
    """d sigma / dt of :func:`vp_sigma`."""
    t = torch.as_tensor(t, dtype=torch.float64)
    sigma = vp_sigma(t, beta_d, beta_min)
    return 0.5 * (beta_min + beta_d * t) * (sigma + 1 / sigma)


def vp_sigma_inv(sigma, beta_d: float = 19.9, beta_min: float = 0.1):
    """t such that vp_sigma(t) = sigma; computed in sigma's own dtype when it is a tensor (as
    EDM's VPPrecond does, which matters for its float32 c_noise), float64 otherwise."""
    if not isinstance(sigma, torch.Tensor) or not sigma.dtype.is_floating_point:
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return ((beta_min**2 + 2 * beta_d * (1 + sigma**2).log()).sqrt() - beta_min) / beta_d


def vp_betas_for_range(sigma_min: float, sigma_max: float, epsilon_s: float = 1e-3) -> tuple[float, float]:
    """(beta_d, beta_min) whose VP schedule has sigma(epsilon_s) = sigma_min and sigma(1) = sigma_max."""
    beta_d = 2 * (math.log(sigma_min**2 + 1) / epsilon_s - math.log(sigma_max**2 + 1)) / (epsilon_s - 1)
    beta_min = math.log(sigma_max**2 + 1) - 0.5 * beta_d
    return beta_d, beta_min


# ---------------------------------------------------------------------------------------------
# one chain of (possibly respaced) timesteps: betas, posterior (Nichol & Dhariwal 2021, Eqs. 10-12, 15, 19)


@dataclass(frozen=True)
class Chain:
    """Coefficients of a reverse chain over K timesteps, indexed k = 0 .. K-1 in increasing t.

    Built from the abar of the K kept timesteps; for the full schedule this is DDPM itself,
    for a subset it is iDDPM's respacing: beta^S_k = 1 - abar_{S_k} / abar_{S_{k-1}} (Eq. 19),
    with abar_{S_{-1}} = 1.
    """

    alpha_bar: torch.Tensor  # abar_{S_k}
    alpha_bar_prev: torch.Tensor  # abar_{S_{k-1}}, 1 for k = 0
    betas: torch.Tensor  # beta^S_k
    posterior_variance: torch.Tensor  # beta~^S_k = beta_k (1 - abar_prev) / (1 - abar)  (Eq. 19)
    posterior_log_variance_clipped: torch.Tensor  # log beta~, entry 0 replaced by entry 1
    posterior_mean_coef1: torch.Tensor  # multiplies x_0  (Eq. 11)
    posterior_mean_coef2: torch.Tensor  # multiplies x_t  (Eq. 11)

    @classmethod
    def from_alpha_bar(cls, alpha_bar) -> Chain:
        ab = torch.as_tensor(alpha_bar, dtype=torch.float64).flatten()
        if ab.numel() < 1 or bool((ab[1:] >= ab[:-1]).any()) or bool((ab <= 0).any()) or bool((ab > 1).any()):
            raise SamplerkitError("a chain needs strictly decreasing abar values in (0, 1]")
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        betas = 1 - ab / ab_prev
        post_var = betas * (1 - ab_prev) / (1 - ab)
        clipped = torch.cat([post_var[1:2], post_var[1:]]) if ab.numel() > 1 else post_var
        return cls(
            alpha_bar=ab,
            alpha_bar_prev=ab_prev,
            betas=betas,
            posterior_variance=post_var,
            posterior_log_variance_clipped=torch.log(clipped),
            posterior_mean_coef1=betas * ab_prev.sqrt() / (1 - ab),
            posterior_mean_coef2=(1 - ab_prev) * (1 - betas).sqrt() / (1 - ab),
        )

    def __len__(self) -> int:
        return self.alpha_bar.numel()

    def to(self, device) -> Chain:
        """The same chain with its tensors on ``device``."""
        return Chain(**{f: getattr(self, f).to(device) for f in self.__dataclass_fields__})

    def posterior_mean(self, k: int, x0: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """mu~_t(x_t, x_0) of q(x_{t-1} | x_t, x_0) (Nichol & Dhariwal 2021, Eq. 11), in x_t-space."""
        return self.posterior_mean_coef1[k] * x0 + self.posterior_mean_coef2[k] * x_t

    def log_variance(self, k: int, variance: str, v: torch.Tensor | None = None):
        """log Sigma for step k: 'fixedsmall' (beta~), 'fixedlarge' (beta, entry 0 -> beta~_1),
        or 'learned' from the network's v in [-1, 1] (Nichol & Dhariwal 2021, Eq. 15, fraction (v + 1) / 2)."""
        if variance == "fixedsmall":
            return self.posterior_log_variance_clipped[k]
        if variance == "fixedlarge":
            large = torch.cat([self.posterior_variance[1:2], self.betas[1:]]) if len(self) > 1 else self.betas
            return torch.log(large[k])
        if variance == "learned":
            if v is None:
                raise SamplerkitError("variance='learned' needs a model with learned variance (learn_sigma)")
            return learned_log_variance(v, torch.log(self.betas[k]), self.posterior_log_variance_clipped[k])
        raise SamplerkitError(f"unknown variance {variance!r}; use learned, fixedsmall or fixedlarge")


def learned_log_variance(v: torch.Tensor, log_beta, log_beta_tilde) -> torch.Tensor:
    """log Sigma_theta = f log beta + (1 - f) log beta~ with f = (v + 1) / 2 (Nichol & Dhariwal 2021, Eq. 15)."""
    frac = (v.to(torch.float64) + 1) / 2
    return frac * log_beta + (1 - frac) * log_beta_tilde


def q_sample(x0: torch.Tensor, alpha_bar, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps (Nichol & Dhariwal 2021, Eq. 9); abar broadcast per sample."""
    ab = torch.as_tensor(alpha_bar, dtype=x0.dtype, device=x0.device)
    ab = ab.reshape(-1, *([1] * (x0.ndim - 1))) if ab.ndim else ab
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def predict_x0_from_eps(x_t: torch.Tensor, alpha_bar, eps: torch.Tensor) -> torch.Tensor:
    """x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)."""
    return (x_t - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5


def predict_eps_from_x0(x_t: torch.Tensor, alpha_bar, x0: torch.Tensor) -> torch.Tensor:
    """eps = (x_t / sqrt(abar) - x_0) / sqrt(1/abar - 1)."""
    return (x_t / alpha_bar**0.5 - x0) / (1 / alpha_bar - 1) ** 0.5
