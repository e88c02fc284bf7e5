"""``samplerkit.load``: a zoo name or a checkpoint file -> a :class:`~samplerkit.denoisers.Denoiser`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .denoisers import Denoiser
from .errors import SamplerkitError

FAMILIES = ("adm", "iddpm", "edm")


def load(name_or_path: str | Path, family: str | None = None, device: str | torch.device = "cpu", **flags) -> Denoiser:
    """Load a model as a denoiser D(x; sigma).

    ``name_or_path`` is a zoo name (``samplerkit models list``; downloaded and cached on first
    use) or a local file. For a guided-/improved-diffusion ``.pt`` pass ``family="adm"`` or
    ``"iddpm"`` and the upstream architecture flags (``num_channels=192``,
    ``attention_resolutions="32,16,8"``, ...), or ``preset=<zoo name>`` plus overrides. EDM
    ``.pkl`` network pickles are detected and loaded without running code from the pickle.
    """
    path = Path(name_or_path)
    if path.is_file():
        return load_file(path, family=family, device=device, **flags)
    if path.suffix in (".pt", ".pkl", ".pth") or "/" in str(name_or_path):
        raise SamplerkitError(f"model file not found: {name_or_path}")
    from . import zoo

    entry = zoo.get(str(name_or_path))
    return entry.load(device=device, family=family, **flags)


def load_file(path: str | Path, family: str | None = None, device="cpu", **flags) -> Denoiser:
    """Load a local checkpoint file; the family comes from ``family`` or the file type."""
    path = Path(path)
    preset = flags.pop("preset", None)
    if preset is not None:
        from . import zoo

        entry = zoo.get(preset)
        family = family or entry.family
        flags = {**entry.flags, **flags}
    if family is None:
        family = "edm" if path.suffix == ".pkl" else None
    if family is None:
        raise SamplerkitError(
            f"cannot tell the network family of {path.name}; pass family='adm' or 'iddpm' (CLI: --family) "
            "with the upstream flags, or preset=<zoo name>"
        )
    if family in ("adm", "iddpm") and not flags and (path.parent / "flags.json").is_file():
        flags = json.loads((path.parent / "flags.json").read_text())  # a samplerkit training run
    if family == "adm":
        from samplerkit.adapters import adm

        return adm.load_checkpoint(path, device=device, **flags)
    if family == "iddpm":
        from samplerkit.adapters import iddpm

        return iddpm.load_checkpoint(path, device=device, **flags)
    if family == "edm":
        if flags:
            raise SamplerkitError(f"EDM pickles carry their own architecture; unexpected flags {sorted(flags)}")
        from samplerkit.adapters import edm

        return edm.load_pickle(path, device=device)
    raise SamplerkitError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")
