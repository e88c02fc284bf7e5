"""Exact denoisers with known answers: zero-download test beds.

* :class:`FiniteSetDenoiser` -- the ideal denoiser of a finite image set (Karras et al.
  2022 (EDM), Sec. 2, Fig. 1b): D(x; sigma) = sum_i w_i y_i with w = softmax(-||x - y_i||^2 / (2 sigma^2)).
* :class:`GaussianDenoiser` -- data y ~ N(mu, diag(s^2)); D(x; sigma) = mu + s^2/(s^2 + sigma^2)
  (x - mu), and the probability-flow ODE dx/dsigma = (x - D)/sigma has the closed-form solution
  x(sigma) = mu + (x(sigma_0) - mu) sqrt((s^2 + sigma^2) / (s^2 + sigma_0^2)).

Both compute in float64 and satisfy the denoiser contract of :mod:`samplerkit.denoisers`.
"""

from __future__ import annotations

import torch

from samplerkit.denoisers import Denoiser, _per_sample
from samplerkit.errors import SamplerkitError


class FiniteSetDenoiser(Denoiser):
    """Ideal denoiser of the images ``y`` [N, C, H, W] in [-1, 1].

    With ``labels`` [N] the model is class-conditional: D(x; sigma, c) is the ideal denoiser of
    the images of class c.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None, num_classes: int | None = None):
        super().__init__()
        images = torch.as_tensor(images, dtype=torch.float64)
        if images.ndim != 4 or images.shape[0] == 0:
            raise SamplerkitError("FiniteSetDenoiser needs a non-empty image tensor [N, C, H, W]")
        self.register_buffer("images", images)
        self.register_buffer("flat", images.flatten(1))
        self.register_buffer("sq_norms", (self.flat**2).sum(1))
        self.img_channels, self.img_resolution = images.shape[1], images.shape[-1]
        self.sigma_min, self.sigma_max = 0.0, float("inf")
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.int64)
            self.label_dim = int(num_classes if num_classes is not None else labels.max() + 1)
            self.register_buffer("labels", labels)
        else:
            self.labels = None

    def log_weights(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        """log w_i(x; sigma) [B, N]; at sigma = 0 all mass on the nearest image."""
        sigma = _per_sample(sigma, x).flatten()
        xf = x.to(torch.float64).flatten(1)
        # row by row (matrix-vector products) so a sample's result does not depend on its batch
        d2 = (xf**2).sum(1, keepdim=True) - 2 * torch.stack([self.flat @ row for row in xf]) + self.sq_norms[None]
        logits = -d2 / (2 * sigma[:, None].clamp(min=1e-300) ** 2)
        zero = sigma == 0
        if zero.any():
            nearest = torch.full_like(d2[zero], float("-inf"))
            nearest.scatter_(1, d2[zero].argmin(1, keepdim=True), 0.0)
            logits[zero] = nearest
        onehot = self.prepare_labels(class_labels, x.shape[0], x.device)
        if onehot is not None:
            allowed = onehot.argmax(1)[:, None] == self.labels[None, :]
            if not allowed.any(1).all():
                raise SamplerkitError("a class label has no images in this set")
            logits = logits.masked_fill(~allowed, float("-inf"))
        return torch.log_softmax(logits, dim=1)

    def forward(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        w = self.log_weights(x, sigma, class_labels).exp()
        return torch.stack([row @ self.flat for row in w]).reshape(x.shape)


class GaussianDenoiser(Denoiser):
    """Ideal denoiser of y ~ N(mean, diag(std^2)); ``mean``/``std`` scalars or [C, H, W]."""

    def __init__(self, mean, std, img_channels: int = 3, img_resolution: int = 8):
        super().__init__()
        shape = (img_channels, img_resolution, img_resolution)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64).expand(shape).clone())
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float64).expand(shape).clone())
        if bool((self.std <= 0).any()):
            raise SamplerkitError("GaussianDenoiser needs std > 0")
        self.img_channels, self.img_resolution = img_channels, img_resolution
        self.sigma_min, self.sigma_max = 0.0, float("inf")

    def forward(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        self.prepare_labels(class_labels, x.shape[0], x.device)
        sigma = _per_sample(sigma, x)
        var = self.std**2
        return self.mean + var / (var + sigma**2) * (x.to(torch.float64) - self.mean)

    def ode_solution(self, x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
        """Exact probability-flow ODE transport of x from sigma_from to sigma_to (sigma-space)."""
        var = self.std**2
        return self.mean + (x.to(torch.float64) - self.mean) * ((var + sigma_to**2) / (var + sigma_from**2)).sqrt()

    def eps(self, x_t: torch.Tensor, alpha_bar) -> torch.Tensor:
        """Exact E[eps | x_t] in x_t-space (x_t = sqrt(abar) y + sqrt(1 - abar) eps)."""
        ab = torch.as_tensor(alpha_bar, dtype=torch.float64)
        ab = ab.reshape(-1, 1, 1, 1) if ab.ndim else ab
        sigma = ((1 - ab) / ab).sqrt()
        x = x_t.to(torch.float64) / ab.sqrt()
        return (x - self.forward(x, sigma.expand(x.shape[0], 1, 1, 1) if sigma.ndim else sigma)) / sigma
