"""Training objectives of iDDPM and the regularizers of the input-perturbation paper.

Losses (Nichol & Dhariwal 2021, Sec. 3): ``simple`` -- L_simple = ||eps - eps_theta||^2; ``hybrid`` --
L_simple + lambda L_vlb with lambda = 0.001 and the mean frozen inside L_vlb (Eq. 16, Sec. 3.1);
``vlb`` -- L_vlb alone (use it with :class:`ImportanceSampler`, Eq. 18). As in guided-diffusion,
the per-sample L_vlb estimate is T * L_t, so lambda L_vlb = (T / 1000) L_t.

Regularizers (Ning et al. 2023): ``ip`` -- the network sees y_t = sqrt(abar) x0 +
sqrt(1 - abar)(eps + gamma xi) and regresses eps (Eq. 6, Alg. 3); ``y`` -- DDPM-y, input
sqrt(abar) x0 + sqrt(1 - abar) sqrt(1 + gamma^2) eps' and target eps' (Eq. 8); ``gp`` --
lambda_GP ||d eps_theta / dx||_F^2 (Eq. 10); ``wd`` -- weight decay (Eq. 11), in one of two
forms (``wd_form``):

* ``decoupled`` (default): AdamW's decoupled decay theta <- theta - lr lambda_WD theta, i.e.
  lambda_WD is passed to the optimizer as ``weight_decay`` and nothing is added to the loss.
  This is how guided-diffusion, on which the IP code runs, exposes weight decay; with
  lambda_WD = 0.03 it is a gentle pull towards 0.
* ``loss``: Eq. 11 taken literally, lambda_WD ||theta||^2 added to the loss. Under Adam this
  term is normalised like every other gradient; with lambda_WD = 0.03 it is ~1e4 times
  L_simple for the CIFAR-10 network and dominates every update.

``none``: plain training. All noise is passed in, so every function here is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..diffusion import Chain, learned_log_variance, per_sample, predict_x0_from_eps, q_sample
from ..errors import SamplerkitError

LOSSES = ("simple", "hybrid", "vlb")
REGULARIZERS = ("none", "ip", "y", "gp", "wd")
WD_FORMS = ("decoupled", "loss")


def network_input(x0, alpha_bar, eps, xi, regularizer: str, gamma=0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target) of the eps-network for x0 [B, ...], abar [B], eps, xi.

    * none / gp / wd: x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, target eps (DDPM Alg. 1);
    * ip: y_t = sqrt(abar) x0 + sqrt(1 - abar)(eps + gamma xi), target eps (Eq. 6); gamma may be a
      tensor [B] (a per-t schedule gamma_t looked up by the caller);
    * y: y_t = sqrt(abar) x0 + sqrt(1 - abar) sqrt(1 + gamma^2) eps, target eps (Eq. 8; here
      ``eps`` plays the role of eps').
    """
    ab = torch.as_tensor(alpha_bar).to(x0.dtype)
    g = torch.as_tensor(gamma, dtype=x0.dtype, device=x0.device)
    g = per_sample(g, x0, x0.dtype) if g.ndim else g
    if regularizer in ("none", "gp", "wd"):
        return q_sample(x0, ab, eps), eps
    if regularizer == "ip":
        return q_sample(x0, ab, eps + g * xi), eps
    if regularizer == "y":
        return q_sample(x0, ab, (1 + g**2).sqrt() * eps), eps
    raise SamplerkitError(f"unknown regularizer {regularizer!r}; use one of {', '.join(REGULARIZERS)}")


# ---------------------------------------------------------------------------------------------
# L_vlb pieces (DDPM / iDDPM), in bits per dimension


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log p(x) of data x in [-1, 1] on 256 bins of width 2/255 under N(means, e^(2 log_scales));
    the end bins extend to -inf / +inf (DDPM's decoder L_0). Elementwise, in nats."""
    centred = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = torch.special.ndtr(inv_std * (centred + 1.0 / 255))
    cdf_minus = torch.special.ndtr(inv_std * (centred - 1.0 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_minus = torch.log((1 - cdf_minus).clamp(min=1e-12))
    log_mid = torch.log((cdf_plus - cdf_minus).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_mid))


def vlb_term(chain: Chain, x0, x_t, t, eps, v) -> torch.Tensor:
    """L_t per sample in bits/dim: KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t)) for t > 0 and
    the decoder's -log p(x0 | x_1) at t = 0 (Nichol & Dhariwal 2021, Eqs. 4-6), with the model's
    mean from eps and its variance from v (Eq. 15)."""
    ab = per_sample(chain.alpha_bar[t], x_t, x_t.dtype)
    x0_hat = predict_x0_from_eps(x_t, ab, eps)  # not clipped, as guided-diffusion's vb terms
    c1 = per_sample(chain.posterior_mean_coef1[t], x_t, x_t.dtype)
    c2 = per_sample(chain.posterior_mean_coef2[t], x_t, x_t.dtype)
    model_mean = c1 * x0_hat + c2 * x_t
    true_mean = c1 * x0 + c2 * x_t
    true_logvar = per_sample(chain.posterior_log_variance_clipped[t], x_t, x_t.dtype)
    log_beta = per_sample(torch.log(chain.betas[t]), x_t, x_t.dtype)
    model_logvar = learned_log_variance(v, log_beta, true_logvar).to(x_t.dtype)
    dims = tuple(range(1, x_t.ndim))
    kl = normal_kl(true_mean, true_logvar, model_mean, model_logvar).mean(dims) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar).mean(dims) / math.log(2.0)
    return torch.where(t == 0, nll, kl)


def jacobian_penalty(eps: torch.Tensor, x: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """Unbiased single-probe Hutchinson estimate of ||d eps / d x||_F^2 per sample:
    E_v ||J^T v||^2 = ||J||_F^2 for v ~ N(0, I). ``x`` must require grad; the graph is kept so
    the penalty can be differentiated (one forward, two backward passes, as Eq. 10 needs)."""
    (grad,) = torch.autograd.grad((eps * probe).sum(), x, create_graph=True)
    return grad.pow(2).flatten(1).sum(1)


@dataclass
class Objective:
    """Everything that defines the training loss of one run."""

    chain: Chain  # the full T-step chain of the training schedule
    loss: str = "hybrid"
    regularizer: str = "none"
    gamma: float | torch.Tensor = 0.1  # scalar, or a tensor [T] of gamma_t
    lambda_gp: float = 1e-6
    lambda_wd: float = 0.03
    learn_sigma: bool = True
    wd_form: str = "decoupled"  # how 'wd' applies lambda_wd: AdamW's weight_decay, or a loss term (Eq. 11)

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise SamplerkitError(f"unknown loss {self.loss!r}; use one of {', '.join(LOSSES)}")
        if self.regularizer not in REGULARIZERS:
            raise SamplerkitError(f"unknown regularizer {self.regularizer!r}; use one of {', '.join(REGULARIZERS)}")
        if self.wd_form not in WD_FORMS:
            raise SamplerkitError(f"unknown weight-decay form {self.wd_form!r}; use one of {', '.join(WD_FORMS)}")
        if self.loss != "simple" and not self.learn_sigma:
            raise SamplerkitError(f"loss {self.loss!r} needs a network with learned variance (learn_sigma=True)")
        g = torch.as_tensor(self.gamma, dtype=torch.float64)
        if bool((g < 0).any()):
            raise SamplerkitError("gamma must be >= 0")
        if g.ndim and g.numel() != len(self.chain):
            raise SamplerkitError(f"a gamma_t schedule needs {len(self.chain)} values, got {g.numel()}")

    @property
    def T(self) -> int:
        return len(self.chain)

    def terms(self, model: Callable, x0, t, eps, xi, probe=None, labels=None) -> dict[str, torch.Tensor]:
        """Per-sample loss terms for a batch: {'loss', 'mse', 'vb', 'gp'} (each [B]).

        ``model(x, t, y)`` is the eps-network (output [B, 2C] with learned variance).
        """
        chain = self.chain
        ab = chain.alpha_bar.to(x0.device)[t].to(x0.dtype)
        g = torch.as_tensor(self.gamma, dtype=x0.dtype, device=x0.device)
        gamma = g[t] if g.ndim else g
        x_in, target = network_input(x0, ab, eps, xi, self.regularizer, gamma)
        if self.regularizer == "gp":
            x_in = x_in.detach().requires_grad_(True)
        out = model(x_in, t, labels)
        C = x0.shape[1]
        eps_pred, v = (out[:, :C], out[:, C:]) if self.learn_sigma else (out, None)
        dims = tuple(range(1, x0.ndim))
        terms = {"mse": (target - eps_pred.to(target.dtype)).pow(2).mean(dims)}
        zero = torch.zeros_like(terms["mse"])
        terms["vb"] = zero
        if self.loss != "simple":
            mean_eps = eps_pred.detach() if self.loss == "hybrid" else eps_pred  # Sec. 3.1 stop-gradient
            terms["vb"] = vlb_term(chain.to(x0.device), x0, x_in.detach(), t, mean_eps.to(x0.dtype), v.to(x0.dtype))
        if self.loss == "simple":
            loss = terms["mse"]
        elif self.loss == "hybrid":
            loss = terms["mse"] + terms["vb"] * (self.T / 1000.0)
        else:
            loss = terms["vb"] * self.T
        terms["gp"] = zero
        if self.regularizer == "gp":
            if probe is None:
                raise SamplerkitError("the gp regularizer needs a probe tensor")
            terms["gp"] = jacobian_penalty(eps_pred, x_in, probe)
            loss = loss + self.lambda_gp * terms["gp"]
        terms["loss"] = loss
        return terms

    def weight_decay(self, params) -> torch.Tensor:
        """The loss term lambda_WD ||theta||^2 (Eq. 11) for regularizer 'wd' in the 'loss' form, else 0."""
        if self.regularizer != "wd" or self.wd_form != "loss":
            return torch.zeros(())
        return self.lambda_wd * sum(p.pow(2).sum() for p in params)

    def optimizer_weight_decay(self) -> float:
        """AdamW's decoupled ``weight_decay`` that the objective asks for: lambda_WD for regularizer
        'wd' in the 'decoupled' form, else 0."""
        return self.lambda_wd if self.regularizer == "wd" and self.wd_form == "decoupled" else 0.0


# ---------------------------------------------------------------------------------------------


class ImportanceSampler:
    """Timestep sampler of Nichol & Dhariwal 2021, Eq. 18: p_t proportional to sqrt(E[L_t^2]) over the last
    ``history`` values per t, mixed with ``uniform_prob`` of the uniform distribution; uniform
    until every t has a full history. Sampling is inverse-CDF on given uniforms u in [0, 1)."""

    def __init__(self, T: int, history: int = 10, uniform_prob: float = 0.001):
        self.T, self.history, self.uniform_prob = T, history, uniform_prob
        self.values = np.zeros((T, history), dtype=np.float64)
        self.counts = np.zeros(T, dtype=np.int64)

    def warmed_up(self) -> bool:
        return bool((self.counts == self.history).all())

    def probabilities(self) -> np.ndarray:
        if not self.warmed_up():
            return np.full(self.T, 1.0 / self.T)
        w = np.sqrt((self.values**2).mean(axis=1))
        p = w / w.sum()
        return p * (1 - self.uniform_prob) + self.uniform_prob / self.T

    def sample(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(t, importance weights 1 / (T p_t)) for uniforms u."""
        p = self.probabilities()
        t = np.minimum(np.searchsorted(np.cumsum(p), u, side="right"), self.T - 1)
        return t, 1.0 / (self.T * p[t])

    def update(self, t: np.ndarray, losses: np.ndarray) -> None:
        for ti, li in zip(np.asarray(t).tolist(), np.asarray(losses, dtype=np.float64).tolist(), strict=True):
            if self.counts[ti] == self.history:
                self.values[ti, :-1] = self.values[ti, 1:]
                self.values[ti, -1] = li
            else:
                self.values[ti, self.counts[ti]] = li
                self.counts[ti] += 1

    def state_dict(self) -> dict:
        return {"values": self.values.tolist(), "counts": self.counts.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.values = np.asarray(state["values"], dtype=np.float64)
        self.counts = np.asarray(state["counts"], dtype=np.int64)
