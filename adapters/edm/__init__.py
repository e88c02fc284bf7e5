"""NVlabs EDM network pickles -> D(x; sigma), without running the code stored in the pickle.

* :mod:`~samplerkit.adapters.edm.networks` -- SongUNet (DDPM++, NCSN++), DhariwalUNet (ADM) and their blocks
* :mod:`~samplerkit.adapters.edm.precond`  -- VPPrecond, VEPrecond, iDDPMPrecond, EDMPrecond
  (Karras et al. 2022 (EDM), Table 1) as denoisers
* :mod:`~samplerkit.adapters.edm.loader`   -- :func:`load_pickle`: pickle records -> our modules;
  :func:`load_state_dict`: a tensor state dict + constructor arguments (``samplerkit retrain --precond edm``)
"""

from .loader import build_network, load_pickle, load_state_dict
from .networks import (
    MODELS,
    Conv2d,
    DhariwalUNet,
    FourierEmbedding,
    GroupNorm,
    Linear,
    PositionalEmbedding,
    SongUNet,
    UNetBlock,
)
from .precond import PRECONDITIONERS, EDMPrecond, VEPrecond, VPPrecond, iDDPMPrecond

__all__ = [
    "load_pickle",
    "load_state_dict",
    "build_network",
    "MODELS",
    "PRECONDITIONERS",
    "SongUNet",
    "DhariwalUNet",
    "UNetBlock",
    "Linear",
    "Conv2d",
    "GroupNorm",
    "PositionalEmbedding",
    "FourierEmbedding",
    "VPPrecond",
    "VEPrecond",
    "iDDPMPrecond",
    "EDMPrecond",
]
