"""The variational bound L_vlb of a discrete-time model in bits/dim (Ho et al. 2020, Eq. 5;
Nichol & Dhariwal 2021, Sec. 2, Eqs. 4-7): prior L_T, the KL terms L_{t-1} and the discretized
Gaussian decoder L_0 on the 8-bit grid."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..denoisers import training_alpha_bar
from ..diffusion import Chain, predict_eps_from_x0, q_sample, sigma_from_alpha_bar
from ..errors import SamplerkitError
from ..samplers.discrete import resolve_variance
from .grid import BIN_WIDTH, LN2, check_images, mean_over_dims


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats."""
    return 0.5 * (logvar2 - logvar1 - 1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Phi(x) ~ (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2, the approximation the DDPM and
    iDDPM decoders use; kept so that bits/dim compare with their published figures."""
    return 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x0: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x0) per element (nats) of N(mean, e^(2 log_scale)) integrated over x0's 8-bit bin
    [x0 - 1/255, x0 + 1/255], the outermost bins extended to -inf and +inf (Ho et al. 2020, Eq. 13)."""
    inv_std = torch.exp(-log_scale)
    cdf_upper = approx_standard_normal_cdf(inv_std * (x0 - mean + BIN_WIDTH / 2))
    cdf_lower = approx_standard_normal_cdf(inv_std * (x0 - mean - BIN_WIDTH / 2))
    log_below_upper = torch.log(cdf_upper.clamp(min=1e-12))  # bin of -1: (-inf, upper]
    log_above_lower = torch.log((1 - cdf_lower).clamp(min=1e-12))  # bin of +1: [lower, inf)
    log_bin = torch.log((cdf_upper - cdf_lower).clamp(min=1e-12))
    return torch.where(x0 < -0.999, log_below_upper, torch.where(x0 > 0.999, log_above_lower, log_bin))


@dataclass
class VLB:
    """The variational bound of each image, in bits/dim.

    ``terms[:, t]`` is the term of training timestep t = 0 .. T-1, which is L_t of Nichol &
    Dhariwal 2021, Eqs. 5-6 (their time runs 1 .. T, so timestep t is their x_{t+1}): at t = 0 the
    decoder NLL -log p(x0 | x_t), at t >= 1 KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) in the
    0-based timesteps used everywhere else. ``prior`` is L_T = KL(q(x_{T-1} | x0) || N(0, I));
    ``bpd = prior + terms.sum(1)``; improved-diffusion's ``vb`` holds the same terms with t descending.
    ``xstart_mse`` and ``mse``: per-t mean squared errors of the x0 and eps predictions (improved-
    diffusion's diagnostics).
    """

    bpd: torch.Tensor  # [B]
    prior: torch.Tensor  # [B]
    terms: torch.Tensor  # [B, T]
    xstart_mse: torch.Tensor  # [B, T]
    mse: torch.Tensor  # [B, T]


def vlb_terms(net, x0: torch.Tensor, class_labels=None, clip_denoised: bool = True, variance: str = "auto",
              randn_like: Callable = torch.randn_like, callback: Callable | None = None) -> VLB:
    """The full variational bound of a discrete-time model (Nichol & Dhariwal 2021, Eqs. 4-7) per image.

    For t = T-1 .. 0 (one network call each): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with
    ``eps = randn_like(x0)``; the model's p(x_{t-1} | x_t) has mean mu~(x_t, x0_hat) (Eq. 11, x0_hat
    clipped to [-1, 1] when ``clip_denoised``) and variance per ``variance`` (``'auto'``: learned
    (Eq. 15) when the model has it, else fixedlarge; or ``'learned'``, ``'fixedsmall'``,
    ``'fixedlarge'`` as guided-diffusion's samplers). L_0 is the discretized Gaussian decoder on
    the 8-bit grid. This is improved-diffusion's ``calc_bpd_loop`` (``scripts/image_nll.py``): the
    same model, data and noise sequence give the same terms. ``callback(dict(t=t, done=i + 1))``
    runs after each timestep.
    """
    alpha_bar = training_alpha_bar(net)
    if alpha_bar is None:
        raise SamplerkitError("the variational bound needs a discrete-time model (a DDPM chain: ADM, iDDPM, "
                              "ADM-IP); this model is continuous in sigma -- use the ODE likelihood (method='ode')")
    variance = resolve_variance(net, variance)
    x = check_images(x0)
    B, T = x.shape[0], alpha_bar.numel()
    chain = Chain.from_alpha_bar(alpha_bar).to(x.device)
    terms, xstart_mse, mse = (x.new_zeros(B, T) for _ in range(3))
    with torch.no_grad():
        for i, t in enumerate(reversed(range(T))):
            noise = randn_like(x0).to(torch.float64)
            ab = chain.alpha_bar[t]
            x_t = q_sample(x, ab, noise)
            sigma = sigma_from_alpha_bar(ab).expand(B)
            x0_hat, v = net.denoise_with_variance(x_t / ab.sqrt(), sigma, class_labels)
            x0_hat = x0_hat.to(torch.float64)
            if clip_denoised:
                x0_hat = x0_hat.clamp(-1, 1)
            mean = chain.posterior_mean(t, x0_hat, x_t)
            log_var = chain.log_variance(t, variance, v)
            log_var = torch.as_tensor(log_var, dtype=torch.float64, device=x.device).expand_as(x)
            if t == 0:  # L_0: the discretized Gaussian decoder, -log p(x0 | x_t) at the first timestep
                nats = -discretized_gaussian_log_likelihood(x, mean, 0.5 * log_var)
            else:  # L_t: KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))
                true_mean = chain.posterior_mean(t, x, x_t)
                nats = normal_kl(true_mean, chain.posterior_log_variance_clipped[t], mean, log_var)
            terms[:, t] = mean_over_dims(nats) / LN2
            xstart_mse[:, t] = mean_over_dims((x0_hat - x) ** 2)
            mse[:, t] = mean_over_dims((predict_eps_from_x0(x_t, ab, x0_hat) - noise) ** 2)
            if callback is not None:
                callback(dict(t=t, done=i + 1))
    ab_T = chain.alpha_bar[-1]  # L_T = KL(q(x_{T-1} | x0) || N(0, I))
    prior = mean_over_dims(normal_kl(ab_T.sqrt() * x, torch.log(1 - ab_T), 0.0, torch.zeros_like(x))) / LN2
    return VLB(bpd=prior + terms.sum(1), prior=prior, terms=terms, xstart_mse=xstart_mse, mse=mse)


def vlb_bpd(net, x0: torch.Tensor, class_labels=None, clip_denoised: bool = True, **kwargs) -> torch.Tensor:
    """Bits/dim of each image by the full variational bound, float64 [B]; the per-t terms come
    with :func:`vlb_terms` (same arguments: ``variance``, ``randn_like``, ``callback``)."""
    return vlb_terms(net, x0, class_labels, clip_denoised, **kwargs).bpd


