"""Models that ship with samplerkit and need no download.

* ``shapes32-adm`` / ``shapes32-adm-ip``: two small ADMs trained by samplerkit's own ``retrain``
  on ``builtin:shapes32`` with identical settings except the regularizer (none / IP, gamma 0.1);
  recipe in ``benchmarks/shapes32_recipe.sh``. Their EMA weights are stored as float16 in
  ``samplerkit/models`` and load exactly into float32. ``shapes32-adm-ip`` is the default model.
* ``shapes32-edm`` / ``shapes32-edm-ip``: two EDM-preconditioned DDPM++ networks (Karras et al. 2022,
  ``retrain --precond edm``, preset ``tiny-edm``), likewise a pair differing only in the regularizer;
  recipe in ``benchmarks/shapes32_edm_recipe.sh``, recommended sampler Heun, 18 steps. Stored the same
  way (float16 state dict) with the preconditioner's class and constructor arguments as flags.
* ``shapes32-edm-xs``: the guiding network of the autoguidance miniature -- ``shapes32-edm``'s recipe at
  half the channels (16) and a 24th of its 12,000 steps (500); recipe in
  ``benchmarks/shapes32_edm_guide_recipe.sh``. Guide with it: ``--guide-model shapes32-edm-xs``.
* ``shapes32-ideal``: the exact (ideal) denoiser of the first 1,024 images of the data set
  (Karras et al. 2022 (EDM), Fig. 1b), a model with known behaviour.
"""

from __future__ import annotations

import json

import numpy as np

from samplerkit.adapters.analytic import FiniteSetDenoiser

from . import zoo
from .data import shapes, to_model_space
from .loading import load_file
from .train.recommend import recommended_sampler
from .zoo import DEFAULT_MODEL, MODELS_DIR  # noqa: F401 -- named here too, where the built-ins live

SHIPPED = ("shapes32-adm", "shapes32-adm-ip", "shapes32-edm", "shapes32-edm-ip", "shapes32-edm-xs")


def shipped_model(name: str):
    """A network shipped in samplerkit/models, loaded through its family's adapter like any checkpoint
    (ADM, or family edm: an EDM preconditioner built from the recorded class and arguments)."""
    flags = json.loads((MODELS_DIR / f"{name}.json").read_text())
    return load_file(MODELS_DIR / f"{name}.pt", family=flags.pop("family", "adm"), **flags)


def shapes32_ideal(num_images: int = 1024, conditional: bool = False):
    """The ideal denoiser of shapes images 0 .. num_images-1 (class-conditional if asked)."""
    images, labels = shapes(np.arange(num_images))
    return FiniteSetDenoiser(to_model_space(images).double(), labels if conditional else None,
                             num_classes=4 if conditional else None)


BUILTIN_MODELS = {
    **{name: (lambda n=name: shipped_model(n)) for name in SHIPPED if (MODELS_DIR / f"{name}.pt").is_file()},
    "shapes32-ideal": lambda: shapes32_ideal(),
    "shapes32-ideal-cond": lambda: shapes32_ideal(conditional=True),
}

# zoo metadata of each built-in model (samplerkit.zoo registers them); the sampler follows from how they were
# trained (learned variance), as for a `samplerkit retrain` run
_SHIPPED_INFO = dict(resolution=32, dataset="builtin:shapes32", license="MIT", T=1000, schedule="cosine",
                     recommended=recommended_sampler({"learn_sigma": True}))


# the EDM pair: continuous-time denoisers (no T), Heun 18 on EDM's grid (what training with EDM's
# preconditioning implies, see train.recommend)
_SHIPPED_EDM_INFO = dict(resolution=32, dataset="builtin:shapes32", license="MIT", T=None, schedule="edm",
                         recommended=recommended_sampler({"family": "edm"}))


def _shipped_info(name: str, notes: str, base: dict = _SHIPPED_INFO) -> dict:
    """Zoo metadata of a shipped network: its flags, file and size (the zoo hashes the file when its
    sha256 is first asked for, not at import)."""
    path = MODELS_DIR / f"{name}.pt"
    if not path.is_file():
        return dict(base, notes=notes)
    return dict(base, notes=notes, flags=json.loads((MODELS_DIR / f"{name}.json").read_text()),
                filename=str(path), size=path.stat().st_size)


BUILTIN_INFO = {
    "shapes32-adm": _shipped_info("shapes32-adm", "ADM (tiny preset) trained on builtin:shapes32, no regularizer"),
    "shapes32-adm-ip": _shipped_info("shapes32-adm-ip", "ADM-IP (tiny preset, gamma 0.1) trained on builtin:shapes32"),
    "shapes32-edm": _shipped_info("shapes32-edm", "EDM-preconditioned DDPM++ (tiny-edm preset) trained on "
                                  "builtin:shapes32, no regularizer", _SHIPPED_EDM_INFO),
    "shapes32-edm-ip": _shipped_info("shapes32-edm-ip", "EDM-preconditioned DDPM++ (tiny-edm preset) trained on "
                                     "builtin:shapes32 with input perturbation, gamma 0.1", _SHIPPED_EDM_INFO),
    "shapes32-edm-xs": _shipped_info("shapes32-edm-xs", "a bad version of shapes32-edm to guide it with (autoguidance, "
                                     "Karras et al. 2024): half the channels, a 24th of the training (500 steps)",
                                     _SHIPPED_EDM_INFO),
    "shapes32-ideal": dict(resolution=32, dataset="builtin:shapes32", license="MIT",
                           recommended={"sampler": "heun", "steps": 18},
                           notes="exact denoiser of the first 1,024 shapes32 images (analytic, no weights)"),
    "shapes32-ideal-cond": dict(resolution=32, dataset="builtin:shapes32", license="MIT", conditional=True,
                                num_classes=4, recommended={"sampler": "heun", "steps": 18},
                                notes="class-conditional exact denoiser of the first 1,024 shapes32 images"),
}


def _register() -> None:
    """Add the shipped models to the zoo (family "builtin": nothing to download)."""
    for name, loader in BUILTIN_MODELS.items():
        zoo.register(zoo.ZooEntry(name=name, family="builtin", loader=loader, source="samplerkit",
                                  **BUILTIN_INFO[name]))


_register()
