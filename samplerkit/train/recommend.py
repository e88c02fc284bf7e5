"""The sampler a checkpoint should be sampled with, from how it was trained.

A network with learned variance (``learn_sigma``, trained with L_hybrid or L_vlb) samples with
respaced ancestral steps and its own variance: Nichol & Dhariwal 2021, Sec. 4, reach near-optimal
FID with 50-100 such steps. A fixed-variance network samples with DDIM (eta = 0), which beats
ancestral sampling at 50 steps and fewer for such models (ibid., Sec. 4). Both use 50 steps, as
samplerkit's ADM built-in models do. An EDM-preconditioned network (family ``edm``, ``retrain
--precond edm|vp|ve``) samples with Heun's 2nd-order method on EDM's sigma grid (Eq. 5, rho = 7),
18 steps = 35 network evaluations: Karras et al. 2022 (EDM), Sec. 3 and Table 2, use it for their
32x32 models.

A training run writes the result to ``recommended.json`` next to its checkpoints (keys of
``samplerkit sample``: ``sampler``, ``steps`` and that sampler's options); :func:`read_recommended`
finds it for a checkpoint path.
"""

from __future__ import annotations

import json
from pathlib import Path

RECOMMENDED_FILE = "recommended.json"
STEPS = 50
EDM_RECOMMENDED = {"sampler": "heun", "steps": 18}


def _true(value) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


def recommended_sampler(flags: dict) -> dict:
    """Sampler settings for a network trained with guided-diffusion ``flags`` (or an EDM network's flags,
    ``family: edm``)."""
    if flags.get("family") == "edm":
        return dict(EDM_RECOMMENDED)
    if _true(flags.get("learn_sigma", False)):
        return {"sampler": "ancestral", "steps": STEPS, "variance": "learned"}
    return {"sampler": "ddim", "steps": STEPS, "eta": 0.0}


def read_recommended(checkpoint: str | Path) -> dict:
    """The recommended settings written by the training run that holds ``checkpoint`` ({} if none)."""
    path = Path(checkpoint).parent / RECOMMENDED_FILE
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) and isinstance(rec.get("sampler"), str) else {}
