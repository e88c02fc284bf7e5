"""The folder of a sampling run: what is already made (resume), the settings it was made with, and
the manifest written at the end (:class:`RunRecord`).

A folder holds one PNG per seed (folders of 1000) and/or the evaluator's npz, ``settings.json``
(the settings the images were made with: a rerun with other settings is refused unless it
overwrites), ``grid.png`` and ``manifest.json``. See :mod:`samplerkit.output` for the files.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import samplerkit

from . import distributed, output
from .errors import SamplerkitError
from .generate import PreparedSampler, draw


def plain(obj):
    """Settings as plain JSON (no Infinity/NaN, tuples as lists) so that they compare after a reload."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def done(out: Path, seed: int, fmt: str) -> bool:
    """Whether a seed's image is on disk (a PNG; for npz-only runs also its ``.parts`` array)."""
    return output.png_path(out, seed).is_file() or (fmt == "npz" and output.part_path(out, seed).is_file())


def prepare(out: Path, settings: dict, overwrite: bool, fmt: str, seeds: list[int]) -> int:
    """Check ``out`` against the settings of the run that wrote it, then (rank 0) sweep temporaries,
    record the settings and unpack a finished npz for resuming. Returns the number of seeds still
    to make (on rank 0; 0 elsewhere)."""
    path = out / "settings.json"
    old = output.read_json(path) if path.is_file() else None
    changed = changed_settings(old, settings) if old is not None else []
    differs = old is not None and old != settings
    if changed and not overwrite and output.has_images(out):
        shown = ", ".join(f"{k}: {_short(old.get(k))} there, {_short(settings.get(k))} now" for k in changed[:3])
        more = f"; {len(changed) - 3} more" if len(changed) > 3 else ""
        raise SamplerkitError(f"{out} holds images made with other settings ({shown}{more}); to start a new run "
                              "pass another out folder, or overwrite=True to replace them")
    distributed.barrier()  # every rank has looked before rank 0 changes anything
    pending = 0
    if distributed.is_main():
        output.sweep_temporaries(out)
        if changed:
            output.clear_outputs(out)
        if old is None or differs:
            output.atomic_json(path, settings)
        if fmt == "npz":
            _unpack_finished_npz(out, seeds)
        pending = sum(not done(out, s, fmt) for s in seeds)
    distributed.barrier()
    return pending


# the settings a person recognises a run by, named first when a folder is refused
_FIRST = ("sampler", "steps", "model", "model_sha256")


def changed_settings(old: dict, new: dict) -> list[str]:
    """Settings that differ (sampler, steps and model first); a model file named by another path
    but with the same sha256 is the same."""
    keys = sorted((k for k in set(old) | set(new) if old.get(k) != new.get(k)),
                  key=lambda k: (_FIRST.index(k) if k in _FIRST else len(_FIRST), k))
    if old.get("model_sha256") and old.get("model_sha256") == new.get("model_sha256"):
        keys = [k for k in keys if k != "model"]
    return keys


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unpack_finished_npz(out: Path, seeds: list[int]) -> None:
    """An npz-only run deletes its per-seed parts once the npz is written; to resume or extend it,
    put back the parts of the wanted seeds from the npz the manifest names."""
    manifest = output.read_json(out / "manifest.json")
    name, old_seeds = manifest.get("npz"), manifest.get("seeds")
    if not name or not isinstance(old_seeds, list) or not (out / name).is_file():
        return
    wanted = set(seeds)
    missing = {s for s in old_seeds if s in wanted and not done(out, s, "npz")}
    for seed, image in zip(old_seeds, output.iter_npz_images(out / name), strict=False):
        if seed in missing:
            output.atomic_write(output.part_path(out, seed), output.encode_npy(image))


@dataclass
class RunRecord:
    """What the manifest of a finished run says, gathered while it runs: the folder and its format,
    the seeds and their labels, the settings the images were made with, and how the run went."""

    out: Path
    net: object  # the denoiser the labels were drawn for
    seeds: list[int]
    seed_spec: str
    labels: object  # None / 'random' / an int / a list per seed (samplerkit.generate.resolve_labels)
    label_of_seed: dict | None
    fmt: str
    grid: bool
    settings: dict
    prepared: PreparedSampler
    device: torch.device
    world: int = 1
    new_images: int = 0
    sampling_seconds: float = 0.0
    wall_seconds: float = 0.0
    speed: dict | None = field(default=None)

    def label_array(self) -> np.ndarray | None:
        """The class label of every seed (int64), as the sampler drew or was given it."""
        if self.net.label_dim == 0:
            return None
        if self.label_of_seed is not None:
            return np.array([self.label_of_seed[s] for s in self.seeds], dtype=np.int64)
        if isinstance(self.labels, int):
            return np.full(len(self.seeds), self.labels, dtype=np.int64)
        # random labels come from each seed's generator right after its latents: redraw them
        return np.concatenate([draw(self.net, self.seeds[i : i + 256], self.labels, self.device)[1].cpu().numpy()
                               for i in range(0, len(self.seeds), 256)])

    def manifest(self, labels: np.ndarray | None, npz: str | None) -> dict:
        new, seconds = self.new_images, self.sampling_seconds
        return {
            **self.settings, "settings_fingerprint": fingerprint(self.settings), "nfe_per_image": self.prepared.nfe,
            **({"nfe_measured": round(self.prepared.measured_nfe, 2)} if self.prepared.measured_nfe else {}),
            "num_images": len(self.seeds), "seed_spec": str(self.seed_spec), "seeds": self.seeds,
            "labels": labels.tolist() if labels is not None else None, "format": self.fmt, "npz": npz,
            "device": str(self.device), "world_size": self.world, "speed": self.speed, "new_images": new,
            "sampling_seconds": round(seconds, 3), "wall_seconds": round(self.wall_seconds, 3),
            "images_per_second": round(new / seconds, 3) if new and seconds > 0 else None,
            "versions": {"samplerkit": samplerkit.__version__, "torch": torch.__version__, "numpy": np.__version__,
                         "python": platform.python_version()},
        }


def finish(record: RunRecord) -> dict:
    """Rank 0, after every rank is done: grid, npz (streamed from the per-seed files), manifest."""
    out, seeds = record.out, record.seeds
    labels = record.label_array()
    if record.grid:
        first = np.stack([output.read_image(out, s) for s in seeds[:64]])
        output.atomic_write(out / "grid.png", output.encode_png(output.grid(first)))
    npz = None
    if record.fmt in ("npz", "both"):
        npz = output.npz_name(len(seeds), *output.read_image(out, seeds[0]).shape)
        (out / "manifest.json").unlink(missing_ok=True)  # a manifest always describes the npz beside it
        output.write_npz(out / npz, (output.read_image(out, s) for s in seeds), labels, count=len(seeds))
    manifest = record.manifest(labels, npz)
    output.atomic_write(out / "manifest.json", output.json_text(manifest).encode())
    if npz is not None:
        for stale in out.glob("samples*.npz"):
            if stale.name != npz:
                stale.unlink()
        if record.fmt == "npz":
            shutil.rmtree(out / ".parts", ignore_errors=True)
    return manifest
