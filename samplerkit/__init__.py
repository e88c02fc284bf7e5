"""samplerkit: samplers, evaluation and input-perturbation retraining over diffusion checkpoints.

Every model is a denoiser D(x; sigma) in EDM's convention (see :mod:`samplerkit.denoisers`);
samplers are plain functions over (denoiser, latents, sigmas) in :mod:`samplerkit.samplers`.
"""

from . import (
    autoencoders,
    builtin,  # noqa: F401 -- registers the shipped models in the zoo
    diffusion,
    guidance,
    likelihood,
    metrics,
    remedies,
    samplers,
    schedules,
)
from .autoencoders import decode
from .denoisers import Denoiser, DiscreteEpsDenoiser
from .errors import SamplerkitError
from .loading import load
from .output import save_images

__version__ = "0.1.0"

__all__ = [
    "Denoiser",
    "DiscreteEpsDenoiser",
    "SamplerkitError",
    "autoencoders",
    "decode",
    "diffusion",
    "guidance",
    "likelihood",
    "load",
    "metrics",
    "remedies",
    "samplers",
    "save_images",
    "schedules",
]
