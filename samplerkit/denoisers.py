"""The denoiser contract D(x; sigma) and the preconditioning of Karras et al. 2022 (EDM), Table 1.

Every model samplerkit runs is a :class:`Denoiser`: called as ``net(x, sigma, class_labels)``
on unscaled ``x = y + sigma n`` (sigma-space, data y in [-1, 1]) it returns the denoised
estimate ``D(x; sigma)`` of the same shape. ``D = c_skip x + c_out F(c_in x; c_noise)``
with the per-family coefficients below (Karras et al. 2022 (EDM), Sec. 5, Eq. 7, Table 1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .diffusion import per_sample, sigma_from_alpha_bar, vp_sigma, vp_sigma_inv
from .errors import SamplerkitError

# ---------------------------------------------------------------------------------------------
# preconditioning (Karras et al. 2022 (EDM), Table 1), each returns (c_skip, c_out, c_in, c_noise)


def vp_preconditioning(sigma, beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000):
    """VP (score-SDE DDPM++): c_skip 1, c_out -sigma, c_in 1/sqrt(sigma^2+1), c_noise (M-1) t(sigma)."""
    c_noise = (M - 1) * vp_sigma_inv(sigma, beta_d, beta_min)
    return 1, -sigma, 1 / (sigma**2 + 1).sqrt(), c_noise


def ve_preconditioning(sigma):
    """VE (score-SDE NCSN++): c_skip 1, c_out sigma, c_in 1, c_noise ln(sigma/2)."""
    return 1, sigma, 1, (0.5 * sigma).log()


def iddpm_preconditioning(sigma):
    """iDDPM / ADM (epsilon prediction): c_skip 1, c_out -sigma, c_in 1/sqrt(sigma^2+1).

    c_noise is the index of the nearest trained level; the caller supplies it.
    """
    return 1, -sigma, 1 / (sigma**2 + 1).sqrt()


def edm_preconditioning(sigma, sigma_data: float = 0.5):
    """EDM: c_skip sd^2/(s^2+sd^2), c_out s sd/sqrt(s^2+sd^2), c_in 1/sqrt(s^2+sd^2), c_noise ln(s)/4."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma_data**2 + sigma**2).sqrt()
    return c_skip, c_out, c_in, sigma.log() / 4


def vp_sigma_range(epsilon_t: float = 1e-5, beta_d: float = 19.9, beta_min: float = 0.1):
    """(sigma_min, sigma_max) of a VP model trained on t in [epsilon_t, 1]."""
    return float(vp_sigma(epsilon_t, beta_d, beta_min)), float(vp_sigma(1.0, beta_d, beta_min))


# ---------------------------------------------------------------------------------------------


class Denoiser(torch.nn.Module):
    """Base class of every model samplerkit samples from: ``forward(x, sigma, class_labels) -> D``.

    Attributes: ``sigma_min``, ``sigma_max``, ``sigma_data``, ``img_channels``,
    ``img_resolution``, ``label_dim`` (0 = unconditional). ``round_sigma`` maps a noise level
    to one the model was trained on (identity for continuous-time models).

    The discrete-time interface, which every denoiser has and the discrete-chain samplers, the
    exposure-bias harness and the likelihood use: :meth:`training_alpha_bar` (None for a
    continuous-time model), ``learned_variance`` and :meth:`denoise_with_variance`.

    Conditioning beyond class labels is bound, not passed: ``low_res_resolution`` > 0 marks a
    super-resolution model, which samples only once a batch of low-resolution images is bound to
    it (:func:`samplerkit.adapters.superres.bind` returns a denoiser of this same contract), so
    every sampler runs it unchanged.
    """

    sigma_min: float = 0.0
    sigma_max: float = float("inf")
    sigma_data: float = 0.5
    img_channels: int = 3
    img_resolution: int = 0
    label_dim: int = 0
    learned_variance: bool = False
    low_res_resolution: int = 0  # > 0: a super-resolution model conditioned on images of this size

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def training_alpha_bar(self) -> torch.Tensor | None:
        """abar_t of the T training timesteps (float64, t = 0 .. T-1) of a discrete-time model;
        None for a continuous-time one."""
        return None

    def denoise_with_variance(self, x: torch.Tensor, sigma, class_labels=None):
        """(D(x; sigma), v) from one network call; v (Nichol & Dhariwal 2021, Eq. 15, in [-1, 1])
        is None unless ``learned_variance``."""
        return self(x, sigma, class_labels), None

    def split_guidance(self):
        """(denoiser, cond_fn): a denoiser whose guidance the sampler applies itself (guided-diffusion's
        ``cond_fn``, e.g. classifier guidance in its upstream form) returns its unguided model and that
        function; every other one (self, None)."""
        return self, None

    def prepare_labels(self, class_labels, batch: int, device) -> torch.Tensor | None:
        """Validate labels: int [B] (or one-hot [B, label_dim]) -> one-hot float32 [B, label_dim]."""
        if self.label_dim == 0:
            if class_labels is not None:
                raise SamplerkitError("this model is unconditional; do not pass class labels")
            return None
        if class_labels is None:
            raise SamplerkitError(f"this model is class-conditional ({self.label_dim} classes); pass class labels")
        labels = torch.as_tensor(class_labels, device=device)
        if labels.ndim == 1:
            if labels.numel() != batch:
                raise SamplerkitError(f"got {labels.numel()} class labels for a batch of {batch}")
            if labels.dtype.is_floating_point or int(labels.min()) < 0 or int(labels.max()) >= self.label_dim:
                raise SamplerkitError(f"class labels must be integers in [0, {self.label_dim - 1}]")
            return torch.nn.functional.one_hot(labels.long(), self.label_dim).to(torch.float32)
        if labels.shape != (batch, self.label_dim):
            raise SamplerkitError(f"one-hot class labels must have shape [{batch}, {self.label_dim}]")
        return labels.to(torch.float32)


def _per_sample(sigma, x: torch.Tensor) -> torch.Tensor:
    """sigma as a float64 tensor of shape [B, 1, 1, 1] (from a scalar, [B] or [B,1,1,1]), one per image."""
    return per_sample(sigma, x, torch.float64).expand(x.shape[0], *([1] * (x.ndim - 1)))


class DiscreteEpsDenoiser(Denoiser):
    """Wrap an epsilon-prediction network trained on a discrete DDPM schedule into D(x; sigma).

    ``eps_fn(x_t, t, class_labels)`` takes x_t in x_t-space in the network's dtype, integer
    timesteps ``t`` [B] in 0 .. T-1 and the labels as given, and returns eps [B, C, H, W] --
    or [B, 2C, H, W] = (eps, v) when ``learned_variance`` (Nichol & Dhariwal 2021, Eq. 15, v in [-1, 1]).
    ``alphas_cumprod`` are the T training abar_t. D(x; sigma) = x - sigma eps(x/sqrt(sigma^2+1),
    t(sigma)) with t(sigma) the trained level nearest to sigma (Karras et al. 2022 (EDM), Table 1, iDDPM row).
    """

    def __init__(
        self,
        eps_fn: Callable,
        alphas_cumprod,
        learned_variance: bool = False,
        *,
        img_channels: int = 3,
        img_resolution: int = 0,
        label_dim: int = 0,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if ab.numel() < 1 or bool((ab[1:] >= ab[:-1]).any()) or not bool(((ab > 0) & (ab < 1)).all()):
            raise SamplerkitError("alphas_cumprod must be strictly decreasing values in (0, 1)")
        self.eps_fn = eps_fn  # registered as a submodule when it is an nn.Module
        self.learned_variance = bool(learned_variance)
        self.register_buffer("alphas_cumprod", ab, persistent=False)
        self.register_buffer("sigmas", sigma_from_alpha_bar(ab), persistent=False)  # ascending in t
        self.img_channels, self.img_resolution, self.label_dim = img_channels, img_resolution, label_dim
        self.dtype = dtype
        self.sigma_min, self.sigma_max = float(self.sigmas[0]), float(self.sigmas[-1])

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.numel()

    def training_alpha_bar(self) -> torch.Tensor:
        return self.alphas_cumprod

    def timestep(self, sigma) -> torch.Tensor:
        """Index of the trained level nearest to sigma (int64, same shape as sigma)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=self.sigmas.device)
        return (sigma.reshape(-1, 1) - self.sigmas.reshape(1, -1)).abs().argmin(dim=1).reshape(sigma.shape)

    def round_sigma(self, sigma):
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=self.sigmas.device)
        return self.sigmas[self.timestep(sigma)]

    def continuous_timestep(self, sigma) -> torch.Tensor:
        """The real timestep index of sigma (float64, same shape): t = i + (ln sigma - ln sigma_i) /
        (ln sigma_{i+1} - ln sigma_i) between the trained levels sigma_i <= sigma <= sigma_{i+1}, so
        t equals i at the trained levels and rises continuously and monotonically between them; clamped
        to [0, T-1] outside them. It inverts the discrete schedule piecewise linearly in ln sigma; score-SDE
        (Song et al. 2021) likewise feeds a DDPM network the real index t (N - 1) of its continuous time."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=self.sigmas.device)
        log_levels = self.sigmas.log()
        s = sigma.reshape(-1).log().clamp(float(log_levels[0]), float(log_levels[-1]))
        if log_levels.numel() == 1:
            return torch.zeros_like(sigma)
        i = (torch.searchsorted(log_levels, s, right=True) - 1).clamp(0, log_levels.numel() - 2)
        frac = (s - log_levels[i]) / (log_levels[i + 1] - log_levels[i])
        return (i.to(torch.float64) + frac.clamp(0, 1)).reshape(sigma.shape)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, class_labels=None):
        """(eps, v) of the network in x_t-space, both float64; v is None without learned variance."""
        out = self.eps_fn(x_t.to(self.dtype), t, class_labels).to(torch.float64)
        C = x_t.shape[1]
        if self.learned_variance:
            if out.shape[1] != 2 * C:
                raise SamplerkitError(f"learned-variance network returned {out.shape[1]} channels, expected {2 * C}")
            return out[:, :C], out[:, C:]
        if out.shape[1] != C:
            raise SamplerkitError(f"network returned {out.shape[1]} channels, expected {C}")
        return out, None

    def denoise_with_variance(self, x: torch.Tensor, sigma, class_labels=None):
        """(D(x; sigma), v) from one forward pass; v is None without learned variance."""
        return self.denoise_at(x, sigma, class_labels, self.timestep)

    def denoise_at(self, x: torch.Tensor, sigma, class_labels, timestep: Callable):
        """(D(x; sigma), v) with the network fed ``timestep(sigma)`` [B] (the nearest trained index,
        or :meth:`continuous_timestep`); c_in and c_out are those of sigma itself."""
        sigma = _per_sample(sigma, x)
        t = timestep(sigma.flatten()).to(x.device)
        _, c_out, c_in = iddpm_preconditioning(sigma)
        eps, v = self.eps(c_in * x.to(torch.float64), t, class_labels)
        return x.to(torch.float64) + c_out * eps, v

    def forward(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        return self.denoise_with_variance(x, sigma, class_labels)[0]


def split_guidance(net, cond_fn=None):
    """(denoiser, cond_fn) a discrete-chain sampler runs: ``cond_fn`` when given, else what ``net``
    declares (:meth:`Denoiser.split_guidance`)."""
    if cond_fn is not None or not isinstance(net, Denoiser):
        return net, cond_fn
    return net.split_guidance()


def training_alpha_bar(net) -> torch.Tensor | None:
    """The training abar_t of a discrete-time denoiser; None for a continuous-time one (or a plain
    callable that is not a :class:`Denoiser`)."""
    return net.training_alpha_bar() if isinstance(net, Denoiser) else None


class DenoiserWrapper(Denoiser):
    """A denoiser that changes how another is called (precision, checks, guidance, remedies) and
    keeps the rest: the contract attributes, ``round_sigma`` and the discrete-time interface.

    Subclasses override :meth:`denoise_with_variance`; the plain call goes through it.
    """

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        for name in ("sigma_min", "sigma_max", "sigma_data", "img_channels", "img_resolution", "label_dim",
                     "learned_variance", "low_res_resolution"):
            setattr(self, name, getattr(inner, name, getattr(Denoiser, name)))

    def round_sigma(self, sigma):
        return self.inner.round_sigma(sigma)

    def training_alpha_bar(self):
        return training_alpha_bar(self.inner)

    def denoise_with_variance(self, x, sigma, class_labels=None):
        if isinstance(self.inner, Denoiser):
            return self.inner.denoise_with_variance(x, sigma, class_labels)
        return self.inner(x, sigma, class_labels), None

    def forward(self, x, sigma, class_labels=None):
        return self.denoise_with_variance(x, sigma, class_labels)[0]


class CallCounter(DenoiserWrapper):
    """The same denoiser, counting its calls (``calls``): the NFE of a solver whose step count is
    chosen by error control (each call evaluates the whole batch)."""

    def __init__(self, inner):
        super().__init__(inner)
        self.calls = 0

    def denoise_with_variance(self, x, sigma, class_labels=None):
        self.calls += 1
        return super().denoise_with_variance(x, sigma, class_labels)


class ContinuousTimestep(DenoiserWrapper):
    """A discrete epsilon-model evaluated at real timesteps: D(x; sigma) = x - sigma eps(x / sqrt(sigma^2+1),
    t(sigma)) with t(sigma) the real index of :meth:`DiscreteEpsDenoiser.continuous_timestep` instead
    of the nearest trained level -- a deviation from the levels the network was trained on (its
    timestep embedding takes real t, as score-SDE evaluates DDPM models; Song et al. 2021).
    It equals the wrapped denoiser exactly at the trained levels and is continuous in sigma between
    them, which is what an adaptive ODE solver needs (the likelihood's ``timesteps='continuous'``).
    """

    def __init__(self, inner: DiscreteEpsDenoiser):
        if not isinstance(inner, DiscreteEpsDenoiser):
            raise SamplerkitError(f"continuous timesteps apply to discrete epsilon-models (DiscreteEpsDenoiser), "
                                  f"not {type(inner).__name__}")
        super().__init__(inner)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def denoise_with_variance(self, x, sigma, class_labels=None):
        return self.inner.denoise_at(x, sigma, class_labels, self.inner.continuous_timestep)
