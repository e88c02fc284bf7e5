"""Likelihood in bits/dim: the variational bound of a discrete chain and the probability-flow ODE.

Both take images ``x0`` [B, C, H, W] in [-1, 1] on the 8-bit grid (``k / 127.5 - 1``, k = 0 .. 255)
and return per-image bits/dim (float64 [B]).

* :func:`vlb_bpd` / :func:`vlb_terms` -- the full T-step variational bound L_vlb = L_T + sum_t L_t + L_0
  of a discrete-time model (Ho et al. 2020, Eq. 5; Nichol & Dhariwal 2021, Sec. 2, Eqs. 4-7), with
  the discretized Gaussian decoder L_0 on 8-bit data. It is an upper bound on -log2 p(x0) / D of
  the model's own discrete distribution over 8-bit images, the figure iDDPM reports (2.94 bits/dim
  on CIFAR-10), and equals improved-diffusion's ``calc_bpd_loop`` on the same noise.
* :func:`ode_bpd` / :func:`ode_nll` -- the exact likelihood of the probability-flow ODE
  dx/dsigma = (x - D(x; sigma)) / sigma (Karras et al. 2022 (EDM), Eq. 3; Song et al. 2021, App. D.2)
  for any denoiser, with the Skilling-Hutchinson trace estimator and an adaptive Dormand-Prince
  5(4) solver.

**From a density to bits/dim of 8-bit data.** The ODE gives a density p(x) over [-1, 1]-space. An
8-bit level occupies a bin of width w = 2/255 around its grid point, so the probability of an
image is P(k) = int_bin p(x) dx, and with the density taken at the grid point (``dequantize='none'``)
P(k) ~ p(x) w^D, i.e. bits/dim = -log p(x) / (D ln 2) + log2(1/w) = -log p(x) / (D ln 2) + log2(127.5).
With uniform dequantization (``dequantize='uniform'``: x~ = x + u, u ~ U(-w/2, w/2)^D; Theis et al.
2016) Jensen's inequality makes E_u[-log p(x~)] - D log w an upper bound on -log P(k) of a proper
discrete distribution, so its mean over data can never fall below the data's entropy. Score-SDE
states its offset as 7 = log2(128): it dequantizes (k + u) / 256 in [0, 1], bins of width 2/256 in
[-1, 1]; on samplerkit's grid the bin width is 2/255 and the offset log2(127.5) = 6.9944
(0.0056 bits/dim less).
"""

from __future__ import annotations

from .grid import BIN_WIDTH, BITS_OFFSET, check_images
from .ode import ODELikelihood, dopri5, ode_bpd, ode_nll
from .vlb import VLB, vlb_bpd, vlb_terms

__all__ = ["BIN_WIDTH", "BITS_OFFSET", "ODELikelihood", "VLB", "check_images", "dopri5", "ode_bpd", "ode_nll",
           "vlb_bpd", "vlb_terms"]
