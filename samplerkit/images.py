"""Image conventions shared by the data sources and the writers: the pixel rounding of model output
and where a seed's PNG lives in a sample folder. A leaf module: it imports no other samplerkit module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

IMAGES_PER_FOLDER = 1000


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW -> uint8 NHWC, rounding as EDM's generate.py: (x * 127.5 + 128).clip(0, 255)."""
    return (x * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def png_path(out: str | Path, seed: int) -> Path:
    """``out/000000/000123.png``: folders of 1000 seeds, as EDM's ``generate.py --subdirs``."""
    return Path(out) / f"{seed - seed % IMAGES_PER_FOLDER:06d}" / f"{seed:06d}.png"
