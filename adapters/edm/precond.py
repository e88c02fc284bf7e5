"""EDM's four preconditionings as denoisers: D(x; sigma) = c_skip x + c_out F(c_in x; c_noise).

Karras et al. 2022 (EDM), Eq. 7 and Table 1: :class:`VPPrecond`, :class:`VEPrecond`,
:class:`iDDPMPrecond`, :class:`EDMPrecond`, each owning a network of
:mod:`samplerkit.adapters.edm.networks` as ``model``. The coefficients (c_skip, c_out, c_in,
c_noise) are defined once, in :mod:`samplerkit.denoisers`; the constructor arguments are
upstream's, so a pickled preconditioner is rebuilt from its recorded ``init_kwargs``.
"""

from __future__ import annotations

import torch

from samplerkit.denoisers import (
    Denoiser,
    edm_preconditioning,
    iddpm_preconditioning,
    ve_preconditioning,
    vp_preconditioning,
    vp_sigma_range,
)
from samplerkit.errors import SamplerkitError
from samplerkit.schedules import iddpm_levels

from .networks import MODELS


def _sigma_column(sigma, x: torch.Tensor) -> torch.Tensor:
    """sigma as float32 [B, 1, 1, 1] from a scalar, [B] or [B, 1, 1, 1]."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
    if sigma.shape[0] not in (1, x.shape[0]):
        raise SamplerkitError(f"got {sigma.shape[0]} noise levels for a batch of {x.shape[0]}; pass one or one each")
    return sigma.expand(x.shape[0], 1, 1, 1)


class _Preconditioned(Denoiser):
    """Shared body of the four EDM preconditioners: owns ``model`` (built from ``model_type``)."""

    def __init__(self, img_resolution, img_channels, label_dim, use_fp16, model_type, out_channels, model_kwargs):
        super().__init__()
        if model_type not in MODELS:
            raise SamplerkitError(f"unsupported model_type {model_type!r}; use one of {', '.join(MODELS)}")
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16 = use_fp16
        self.model = MODELS[model_type](
            img_resolution=img_resolution,
            in_channels=img_channels,
            out_channels=out_channels,
            label_dim=label_dim,
            **model_kwargs,
        )

    def _model_dtype(self, x: torch.Tensor) -> torch.dtype:
        return torch.float16 if self.use_fp16 and x.device.type == "cuda" else torch.float32

    def _precondition(self, x, sigma, class_labels, augment_labels, coefficients):
        """Cast x, sigma to float32 columns, validate labels, apply (c_skip, c_out, c_in, c_noise)(sigma)."""
        x = x.to(torch.float32)
        sigma = _sigma_column(sigma, x)
        labels = self.prepare_labels(class_labels, x.shape[0], x.device)
        c_skip, c_out, c_in, c_noise = coefficients(sigma)
        dtype = self._model_dtype(x)
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), labels, augment_labels=augment_labels)
        return c_skip * x + c_out * F_x[:, : self.img_channels].to(torch.float32)


class VPPrecond(_Preconditioned):
    """VP preconditioning (Karras et al. 2022 (EDM), Table 1, "VP" column) over a DDPM++ network by default."""

    def __init__(
        self,
        img_resolution,
        img_channels,
        label_dim=0,
        use_fp16=False,
        beta_d=19.9,
        beta_min=0.1,
        M=1000,
        epsilon_t=1e-5,
        model_type="SongUNet",
        **model_kwargs,
    ):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, img_channels, model_kwargs)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
        self.sigma_min, self.sigma_max = vp_sigma_range(epsilon_t, beta_d, beta_min)

    def forward(self, x, sigma, class_labels=None, augment_labels=None) -> torch.Tensor:
        return self._precondition(
            x, sigma, class_labels, augment_labels, lambda s: vp_preconditioning(s, self.beta_d, self.beta_min, self.M)
        )


class VEPrecond(_Preconditioned):
    """VE preconditioning (Karras et al. 2022 (EDM), Table 1, "VE" column) over an NCSN++ network by default."""

    def __init__(
        self,
        img_resolution,
        img_channels,
        label_dim=0,
        use_fp16=False,
        sigma_min=0.02,
        sigma_max=100,
        model_type="SongUNet",
        **model_kwargs,
    ):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, img_channels, model_kwargs)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def forward(self, x, sigma, class_labels=None, augment_labels=None) -> torch.Tensor:
        return self._precondition(x, sigma, class_labels, augment_labels, ve_preconditioning)


class iDDPMPrecond(_Preconditioned):  # noqa: N801 -- the upstream class name, used in pickles
    """iDDPM preconditioning (Karras et al. 2022 (EDM), Table 1, "iDDPM" column) over an ADM network by default.

    The network was trained on M discrete levels ``u`` (a buffer, descending: u_0 = sigma_max,
    u_{M-1} = sigma_min); c_noise = M - 1 - j for the level u_j nearest to sigma. The network
    outputs 2 C channels (eps and the learned variance); D uses the first C.
    """

    def __init__(
        self,
        img_resolution,
        img_channels,
        label_dim=0,
        use_fp16=False,
        C_1=0.001,
        C_2=0.008,
        M=1000,
        model_type="DhariwalUNet",
        **model_kwargs,
    ):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, img_channels * 2, model_kwargs)
        self.C_1, self.C_2, self.M = C_1, C_2, M
        self.register_buffer("u", iddpm_levels(M, C_1, C_2).to(torch.float32))

    @property
    def sigma_min(self) -> float:
        return float(self.u[self.M - 1])

    @property
    def sigma_max(self) -> float:
        return float(self.u[0])

    def round_sigma(self, sigma, return_index: bool = False):
        """The nearest trained level u_j (or its index j), same shape as ``sigma``."""
        sigma = torch.as_tensor(sigma)
        distance = (sigma.to(self.u.device, torch.float32).reshape(-1, 1) - self.u.reshape(1, -1)).abs()
        index = distance.argmin(dim=1)
        result = index if return_index else self.u[index].to(sigma.dtype)
        return result.reshape(sigma.shape).to(sigma.device)

    def forward(self, x, sigma, class_labels=None, augment_labels=None) -> torch.Tensor:
        def coefficients(s):
            c_skip, c_out, c_in = iddpm_preconditioning(s)
            return c_skip, c_out, c_in, self.M - 1 - self.round_sigma(s, return_index=True).to(torch.float32)

        return self._precondition(x, sigma, class_labels, augment_labels, coefficients)


class EDMPrecond(_Preconditioned):
    """EDM preconditioning (Karras et al. 2022 (EDM), Table 1, "ours" column; Sec. 5, App. B.6)."""

    def __init__(
        self,
        img_resolution,
        img_channels,
        label_dim=0,
        use_fp16=False,
        sigma_min=0,
        sigma_max=float("inf"),
        sigma_data=0.5,
        model_type="DhariwalUNet",
        **model_kwargs,
    ):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, img_channels, model_kwargs)
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data

    def forward(self, x, sigma, class_labels=None, augment_labels=None) -> torch.Tensor:
        return self._precondition(
            x, sigma, class_labels, augment_labels, lambda s: edm_preconditioning(s, self.sigma_data)
        )


PRECONDITIONERS: dict[str, type[_Preconditioned]] = {
    cls.__name__: cls for cls in (VPPrecond, VEPrecond, iDDPMPrecond, EDMPrecond)
}
