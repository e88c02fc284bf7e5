"""Models that ship with samplerkit and need no download.

``shapes32-ideal`` is the exact (ideal) denoiser of the first 1,024 images of the built-in
``builtin:shapes32`` data set (edm.txt Fig. 1b): a zero-download model with known behaviour.
"""

from __future__ import annotations

import numpy as np

from .data import shapes, to_model_space

DEFAULT_MODEL = "shapes32-ideal"


def shapes32_ideal(num_images: int = 1024, conditional: bool = False):
    """The ideal denoiser of shapes images 0 .. num_images-1 (class-conditional if asked)."""
    from adapters.analytic import FiniteSetDenoiser

    images, labels = shapes(np.arange(num_images))
    return FiniteSetDenoiser(to_model_space(images).double(), labels if conditional else None,
                             num_classes=4 if conditional else None)


BUILTIN_MODELS = {
    "shapes32-ideal": lambda: shapes32_ideal(),
    "shapes32-ideal-cond": lambda: shapes32_ideal(conditional=True),
}

# zoo metadata of each built-in model (samplerkit.zoo registers them)
BUILTIN_INFO = {
    "shapes32-ideal": dict(resolution=32, dataset="builtin:shapes32", license="MIT",
                           recommended={"sampler": "heun", "steps": 18},
                           notes="exact denoiser of the first 1,024 shapes32 images (analytic, no weights)"),
    "shapes32-ideal-cond": dict(resolution=32, dataset="builtin:shapes32", license="MIT", conditional=True,
                                num_classes=4, recommended={"sampler": "heun", "steps": 18},
                                notes="class-conditional exact denoiser of the first 1,024 shapes32 images"),
}
