"""Training objectives of EDM-preconditioned networks (Karras et al. 2022 (EDM), Table 1, training columns).

The network is one of EDM's preconditioners (:mod:`samplerkit.adapters.edm.precond`: ``EDMPrecond``,
``VPPrecond``, ``VEPrecond``, the classes the loader builds from EDM pickles) over a SongUNet or
DhariwalUNet, so the denoiser trained here is the denoiser sampled later: D(x; sigma) = c_skip x +
c_out F(c_in x; c_noise), with the coefficients defined once in :mod:`samplerkit.denoisers`.
The loss of a clean image y at noise level sigma is (Table 1, Eq. 8)

    lambda(sigma) || D(y + sigma n; sigma) - y ||^2,  n ~ N(0, I),

with, per column of Table 1:

* ``edm`` -- ln sigma ~ N(P_mean, P_std^2), P_mean = -1.2, P_std = 1.2;
  lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, sigma_data = 0.5 (Sec. 5: this
  makes the effective target of F unit-variance at every sigma);
* ``vp`` -- sigma = sigma_VP(t), t ~ U(epsilon_t, 1), beta_d = 19.9, beta_min = 0.1,
  epsilon_t = 1e-5; lambda(sigma) = 1 / sigma^2;
* ``ve`` -- ln sigma ~ U(ln sigma_min, ln sigma_max), sigma_min = 0.02, sigma_max = 100;
  lambda(sigma) = 1 / sigma^2.

The squared error is averaged over pixels (EDM sums it; a constant factor that Adam's update
ignores but that keeps the loss and the gradient norm on the scale of the ADM loop's L_simple, so
the same gradient clipping and learning rates apply).

Input perturbation (``regularizer='ip'``, Ning et al. 2023, Eq. 6): the network sees
y + sigma (n + gamma xi), xi ~ N(0, I) independent of n, while the target stays y. Eq. 6 is
written for the eps-network of a DDPM: y_t = sqrt(abar_t) x0 + sqrt(1 - abar_t)(eps + gamma xi)
with target eps. Dividing by sqrt(abar_t) maps the DDPM chain to sigma-space (x = y + sigma eps with
sigma = sqrt((1 - abar) / abar), EDM Sec. 2 / App. C.1), where the perturbed input is
y + sigma (eps + gamma xi). For an eps-network the target eps is the noise that was *not*
perturbed; the equivalent statement for a denoiser is that D must still return the y from which
the unperturbed x = y + sigma eps was made, i.e. the target is y (the regression target of
eps-prediction and of D are related by y = x - sigma eps, with x the unperturbed input).
The paper trains and evaluates eps-prediction ADMs only; it says nothing about EDM's
preconditioning, its sigma distribution or its loss weighting, so the choices here (the same
gamma at every sigma, the weight lambda(sigma) of the unperturbed sigma, no change to c_in)
are this module's, not the paper's.

All randomness is passed in: u (a uniform per sample, mapped to sigma by the column's
distribution -- for ``edm`` through the normal quantile, ln sigma = P_mean + P_std Phi^-1(u)), n and xi.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from samplerkit.adapters.edm.precond import PRECONDITIONERS

from ..diffusion import per_sample, vp_sigma
from ..errors import SamplerkitError

PRECONDS = ("edm", "vp", "ve")
EDM_REGULARIZERS = ("none", "ip")
PRECOND_CLASSES = {"edm": "EDMPrecond", "vp": "VPPrecond", "ve": "VEPrecond"}


@dataclass
class EDMObjective:
    """The training loss of one EDM-preconditioned run (one column of Table 1)."""

    precond: str = "edm"
    regularizer: str = "none"
    gamma: float = 0.1
    sigma_data: float = 0.5
    P_mean: float = -1.2
    P_std: float = 1.2
    beta_d: float = 19.9
    beta_min: float = 0.1
    epsilon_t: float = 1e-5
    sigma_min: float = 0.02
    sigma_max: float = 100.0

    T = 1  # the loop's quartiles of the noise level are taken of position(u) in [0, 1)

    def __post_init__(self):
        if self.precond not in PRECONDS:
            raise SamplerkitError(f"unknown preconditioning {self.precond!r}; use adm or one of {', '.join(PRECONDS)}")
        if self.regularizer not in EDM_REGULARIZERS:
            raise SamplerkitError(f"training with precond={self.precond} takes regularizer=none or ip, "
                                  f"not {self.regularizer!r} (the others are ADM-only)")
        if not self.gamma >= 0:
            raise SamplerkitError("gamma must be >= 0")

    def sigma(self, u: torch.Tensor) -> torch.Tensor:
        """sigma (float64) for uniforms u in [0, 1): the column's training distribution by inverse CDF."""
        u = torch.as_tensor(u, dtype=torch.float64)
        if self.precond == "edm":
            z = torch.special.ndtri(u.clamp(min=2.0**-53))  # a standard normal
            return (self.P_mean + self.P_std * z).exp()
        if self.precond == "vp":  # EDM's VPLoss: t = 1 + u (epsilon_t - 1), t ~ U(epsilon_t, 1)
            return vp_sigma(1 + u * (self.epsilon_t - 1), self.beta_d, self.beta_min)
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** u

    def position(self, u: torch.Tensor) -> torch.Tensor:
        """The rank of sigma(u) in its distribution, in [0, 1) (u itself, reversed for vp where sigma falls with u)."""
        u = torch.as_tensor(u, dtype=torch.float64)
        return 1 - u if self.precond == "vp" else u

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) of Table 1."""
        if self.precond == "edm":
            return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        return 1 / sigma**2

    def network_input(self, y, sigma, n, xi) -> torch.Tensor:
        """y + sigma n, or y + sigma (n + gamma xi) with input perturbation; sigma is [B]."""
        noise = n + self.gamma * xi if self.regularizer == "ip" else n
        return y + per_sample(sigma.to(y.dtype), y) * noise

    def terms(self, model: Callable, y, u, n, xi, probe=None, labels=None) -> dict[str, torch.Tensor]:
        """Per-sample terms {'loss', 'mse', 'vb', 'gp', 'position'} (each [B]) for clean images y,
        uniforms u [B], noise n and xi; ``model(x, sigma, labels)`` is the preconditioned denoiser D.
        'mse' is the unweighted per-pixel ||D - y||^2, 'loss' lambda(sigma) times it."""
        sigma = self.sigma(u).to(y.device)
        x = self.network_input(y, sigma, n, xi)
        D = model(x, sigma.to(y.dtype), labels)
        dims = tuple(range(1, y.ndim))
        mse = (D.to(y.dtype) - y).pow(2).mean(dims)
        zero = torch.zeros_like(mse)
        return {"loss": self.weight(sigma).to(mse.dtype) * mse, "mse": mse, "vb": zero, "gp": zero,
                "position": self.position(u).to(mse.device, mse.dtype)}

    def weight_decay(self, params) -> torch.Tensor:
        """No loss term (the loop's interface; AdamW's decoupled ``--weight-decay`` still applies)."""
        return torch.zeros(())

    def optimizer_weight_decay(self) -> float:
        return 0.0


# ---------------------------------------------------------------------------------------------
# network flags: the preconditioner's constructor arguments (what an EDM pickle records)

_TUPLE_KEYS = ("channel_mult", "attn_resolutions", "resample_filter")
_INT_KEYS = ("img_resolution", "img_channels", "label_dim", "augment_dim", "model_channels", "channel_mult_emb",
             "num_blocks", "channel_mult_noise", "M")
_FLOAT_KEYS = ("dropout", "label_dropout", "sigma_data", "sigma_min", "sigma_max", "beta_d", "beta_min", "epsilon_t")
_BOOL_KEYS = ("use_fp16",)
# flags only an ADM (guided-diffusion) network has: learned variance and the discrete chain
ADM_ONLY_FLAGS = ("learn_sigma", "noise_schedule", "diffusion_steps", "num_channels", "num_res_blocks",
                  "attention_resolutions", "num_head_channels", "num_heads", "resblock_updown",
                  "use_scale_shift_norm", "use_new_attention_order", "class_cond", "image_size")


def network_kwargs(flags: dict) -> dict:
    """The preconditioner's constructor arguments from flags as parsed by ``--flag`` ("1,2,2" -> [1, 2, 2]),
    as JSON-ready values (lists, as EDM pickles record them)."""
    adm = sorted(k for k in flags if k in ADM_ONLY_FLAGS)
    if adm:
        raise SamplerkitError(f"{adm[0]} is an ADM (guided-diffusion) flag; an EDM-preconditioned network takes "
                              "SongUNet/DhariwalUNet arguments (model_channels, channel_mult, num_blocks, ...)")
    out = {}
    for key, value in flags.items():
        try:
            if key in _TUPLE_KEYS:
                items = value if isinstance(value, (list, tuple)) else str(value).replace(" ", "").split(",")
                out[key] = [int(v) for v in items if str(v) != ""]
            elif key in _INT_KEYS:
                out[key] = int(value)
            elif key in _FLOAT_KEYS:
                out[key] = float(value)
            elif key in _BOOL_KEYS:
                out[key] = value is True or str(value).lower() in ("true", "1", "yes")
            else:
                out[key] = value
        except (TypeError, ValueError):
            raise SamplerkitError(f"bad value {value!r} for network flag {key}") from None
    return out


def build_network(precond: str, flags: dict):
    """The preconditioned network (adapters' ``EDMPrecond`` / ``VPPrecond`` / ``VEPrecond``) for ``flags``."""
    kwargs = network_kwargs(flags)
    try:
        return PRECONDITIONERS[PRECOND_CLASSES[precond]](**kwargs)
    except TypeError as err:
        raise SamplerkitError(f"cannot build the {PRECOND_CLASSES[precond]} network: {err}") from None


def ema_beta(step: int, batch_size: int, halflife_kimg: float, rampup_ratio: float | None) -> float:
    """EMA decay of EDM's training loop at ``step`` (1-based): half-life ``halflife_kimg`` thousand images,
    capped at ``rampup_ratio`` times the images seen before the step (so early EMAs forget the
    random initialisation quickly); beta = 0.5^(batch / half-life in images)."""
    halflife = halflife_kimg * 1000
    if rampup_ratio is not None:
        halflife = min(halflife, (step - 1) * batch_size * rampup_ratio)
    return 0.5 ** (batch_size / max(halflife, 1e-8))
