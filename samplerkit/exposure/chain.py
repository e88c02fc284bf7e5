"""The chains exposure bias is measured on, and the model's prediction x0_hat along them.

Time indices follow Ning et al. 2023: t = 1 .. T; x_t uses abar_t = ``alpha_bar[t - 1]`` and a
chain of t steps runs over ``alpha_bar[:t]``, all in x_t-space.

Every denoiser is asked the same way: x0_hat = D(x_t / sqrt(abar_t); sigma_t) with
sigma_t = sqrt((1 - abar_t) / abar_t) (Karras et al. 2022 (EDM), Table 1). For a discrete-time
eps-model that *is* Eq. 4 solved for x0 with eps_hat = eps_theta(x_t, t) at its own training
level, since eps at level sigma is (x - D) / sigma; for any other model it is the same DDPM chain
in sigma-space.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .. import samplers, schedules
from ..denoisers import training_alpha_bar
from ..diffusion import Chain, alpha_bar_from_betas, betas_for, q_sample, sigma_from_alpha_bar
from ..errors import SamplerkitError


def reference_alpha_bar(reference: str = "linear:1000") -> torch.Tensor:
    """abar_t of the reference DDPM schedule ``"linear"`` or ``"cosine"``, optionally ``":T"``
    (Ho et al. 2020; Nichol & Dhariwal 2021, Eq. 17), for models without their own discrete chain."""
    name, _, steps = str(reference).partition(":")
    try:
        T = int(steps) if steps else 1000
    except ValueError:
        raise SamplerkitError(f"bad reference schedule {reference!r}; use e.g. 'linear:1000' or 'cosine:4000'"
                              ) from None
    return torch.as_tensor(alpha_bar_from_betas(betas_for(name, T)), dtype=torch.float64)


@dataclass(frozen=True)
class MeasurementChain:
    """The chain a model is measured on: its own T training levels (discrete-time models) or the
    reference schedule (any other denoiser), optionally respaced (Nichol & Dhariwal 2021, Sec. 4).

    ``alpha_bar``: abar of the K kept levels in increasing t; ``timesteps``: their 0-based indices
    in the full T-level schedule; ``source``: ``model:T`` or ``ref:NAME:T``.
    """

    alpha_bar: torch.Tensor
    timesteps: torch.Tensor
    T_full: int
    source: str
    respacing: str | None = None

    @property
    def T(self) -> int:
        """Number of steps of this chain (K; = T_full unless respaced)."""
        return self.alpha_bar.numel()

    @property
    def respaced(self) -> bool:
        return self.T != self.T_full

    def description(self) -> str:
        """The chain in the settings column of the CSV."""
        return self.source + (f"/respace:{self.respacing}" if self.respacing else "")

    def level(self, t: int) -> int:
        """The start of a t-step run as the paper's t on the full schedule (1 .. T_full)."""
        return int(self.timesteps[t - 1]) + 1


def measurement_chain(net, respacing: str | None = None, reference: str = "linear:1000") -> MeasurementChain:
    """The :class:`MeasurementChain` of ``net``, respaced when ``respacing`` is given."""
    own = training_alpha_bar(net)
    if own is not None:
        full, source = own.to(torch.float64).cpu(), f"model:{own.numel()}"
    else:
        full = reference_alpha_bar(reference)
        source = f"ref:{reference if ':' in str(reference) else f'{reference}:{full.numel()}'}"
    timesteps = schedules.respace(full.numel(), respacing) if respacing else torch.arange(full.numel())
    return MeasurementChain(full[timesteps], timesteps, full.numel(), source, respacing or None)


def check_t(t_values: Sequence[int], T: int, what: str = "the model's chain") -> list[int]:
    """Chain lengths must be integers in 1 .. T."""
    out = []
    for t in t_values:
        if int(t) != t or not 1 <= int(t) <= T:
            raise SamplerkitError(f"t={t} is outside 1..{T}, the length of {what}; pick t values up to {T}")
        out.append(int(t))
    return out


def _prefix(alpha_bar, t_start: int) -> torch.Tensor:
    alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64).flatten()
    check_t([t_start], alpha_bar.numel())
    return alpha_bar[:t_start]


# ---------------------------------------------------------------------------------------------
# the model's prediction and the two reverse chains


def predict_x0(net, x_t: torch.Tensor, alpha_bar, class_labels=None, *, clip_denoised: bool = True) -> torch.Tensor:
    """x0_hat = D(x_t / sqrt(abar); sigma), sigma = sqrt((1 - abar) / abar), float64, x_t-space
    in; clamped to [-1, 1] when ``clip_denoised`` (guided-diffusion's default)."""
    alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64, device=x_t.device)
    x = x_t.to(torch.float64) / alpha_bar.sqrt()  # x_t-space -> sigma-space
    x0 = net(x, sigma_from_alpha_bar(alpha_bar), class_labels).to(torch.float64)
    return x0.clamp(-1, 1) if clip_denoised else x0


def ddpm_mean_step(net, x_t: torch.Tensor, k: int, chain: Chain, class_labels=None, *,
                   clip_denoised: bool = True) -> torch.Tensor:
    """Ning et al. 2023, Alg. 4 line 6: x_{t-1} = mu~_t(x_t, x0_hat), the mean of Alg. 2 line 4
    (= 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps_hat) unclipped) without sigma_t z."""
    x0 = predict_x0(net, x_t, chain.alpha_bar[k], class_labels, clip_denoised=clip_denoised)
    return chain.posterior_mean(k, x0, x_t.to(torch.float64))


def ddpm_mean_chain(net, x_t: torch.Tensor, t_start: int, alpha_bar, class_labels=None, *,
                    clip_denoised: bool = True, progress: Callable[[int], None] | None = None,
                    time_shift=None) -> torch.Tensor:
    """Ning et al. 2023, Alg. 4 lines 5-7: from x_t (level ``alpha_bar[t_start - 1]``) apply the
    noise-free DDPM mean for tau = t_start .. 1 on ``alpha_bar[:t_start]``; returns x0_hat in
    data space, in [-1, 1] when ``clip_denoised`` (Alg. 4 as printed does not clip; the authors'
    sampling loop does). NFE = t_start; ``progress(n)`` after every step with the batch size.

    ``time_shift`` (:class:`samplerkit.remedies.TimeShift`, Li et al. 2024 (TS)): the same chain
    through :func:`samplerkit.samplers.ancestral` with z = 0 and the time shift."""
    if time_shift is not None:
        steps = _sampler_steps(net, _prefix(alpha_bar, t_start))
        report = (lambda d: progress(x_t.shape[0])) if progress is not None else None
        return samplers.ancestral(net, x_t, steps, class_labels, variance="fixedsmall", randn_like=torch.zeros_like,
                                  clip_denoised=clip_denoised, callback=report, time_shift=time_shift)
    chain = Chain.from_alpha_bar(_prefix(alpha_bar, t_start).to(x_t.device))
    x = x_t.to(torch.float64)
    for k in reversed(range(len(chain))):
        x = ddpm_mean_step(net, x, k, chain, class_labels, clip_denoised=clip_denoised)
        if progress is not None:
            progress(x.shape[0])
    return x


def _sampler_steps(net, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The chain in the form :func:`samplerkit.samplers.ancestral` takes: the training timesteps
    whose abar these are (discrete-time model), else the descending sigma grid ending in 0."""
    own = training_alpha_bar(net)
    if own is not None:
        own = own.to(torch.float64).cpu()
        steps = (own.reshape(1, -1) - alpha_bar.cpu().reshape(-1, 1)).abs().argmin(1)
        if not torch.equal(own[steps], alpha_bar.cpu()):
            raise SamplerkitError("the chain's abar is not among the model's training levels; "
                                  "measure on the model's own chain (optionally respaced)")
        return steps
    return torch.cat([sigma_from_alpha_bar(alpha_bar).flip(0), alpha_bar.new_zeros(1)])


def default_variance(net) -> str:
    """Alg. 2's variance: the learned one where the model has it (ADM), else sigma_t^2 = beta~_t (Eq. 3)."""
    return "learned" if getattr(net, "learned_variance", False) else "fixedsmall"


def ancestral_chain(net, x_t: torch.Tensor, t_start: int, alpha_bar, class_labels=None, *,
                    variance: str | None = None, randn_like: Callable = torch.randn_like,
                    clip_denoised: bool = True, time_shift=None, callback: Callable | None = None) -> torch.Tensor:
    """Ning et al. 2023, Sec. 4 / Tab. 1: Alg. 2 (DDPM ancestral sampling) started from x_t instead
    of x_T, on ``alpha_bar[:t_start]``, through :func:`samplerkit.samplers.ancestral` (with
    ``time_shift``, Li et al. 2024 (TS), when given). NFE = t_start."""
    steps = _sampler_steps(net, _prefix(alpha_bar, t_start))
    return samplers.ancestral(net, x_t, steps, class_labels,
                              variance=variance or default_variance(net), randn_like=randn_like,
                              clip_denoised=clip_denoised, time_shift=time_shift, callback=callback)


def chain_sigmas(alpha_bar) -> torch.Tensor:
    """The chain as a descending sigma grid ending in 0 (what :func:`samplerkit.remedies.eps_scaling`
    takes as ``steps`` to index lambda_t on this chain)."""
    ab = torch.as_tensor(alpha_bar, dtype=torch.float64).flatten()
    return torch.cat([sigma_from_alpha_bar(ab).flip(0), ab.new_zeros(1)])


def prediction_error(net, x0: torch.Tensor, t: int, alpha_bar, noise: torch.Tensor, class_labels=None, *,
                     clip_denoised: bool = True) -> torch.Tensor:
    """e_t = x0_hat - x0 (Ning et al. 2023, Sec. 5.3): x_t from Eq. 4 with ``noise`` (the
    ground-truth x_t, not a sampled one), x0_hat from eps_theta(x_t, t), clipped to [-1, 1]
    first when ``clip_denoised``. Unclipped near t = T the error is eps_hat's error times
    sigma_T = sqrt((1 - abar_T) / abar_T): about 20,291 at T = 1000 on the cosine schedule."""
    alpha_bar_t = _prefix(alpha_bar, t)[-1].to(x0.device)
    x_t = q_sample(x0.to(torch.float64), alpha_bar_t, noise.to(torch.float64))
    return predict_x0(net, x_t, alpha_bar_t, class_labels, clip_denoised=clip_denoised) - x0.to(torch.float64)
