"""Low-resolution sources of super-resolution runs (Dhariwal & Nichol 2021, ADM-U): seed s upsamples
image s of an ``.npz``, a PNG folder or a ``samplerkit sample`` folder (there: the image of seed s)."""

from __future__ import annotations

from pathlib import Path

import torch

from . import output
from .adapters import superres
from .builtin import DEFAULT_MODEL
from .data import open_source, to_model_space
from .denoisers import DenoiserWrapper
from .errors import SamplerkitError
from .generate import generate


def low_res_source(net, s, seeds: list[int], labels_spec):
    """(the low-res binding of a super-resolution run, its record), or (None, {}) for other runs.
    ``s``: the run's settings (``low_res``, ``model``, ``batch``)."""
    size, name = getattr(net, "low_res_resolution", 0), s.model or DEFAULT_MODEL
    if s.low_res is None:
        if size:
            raise SamplerkitError(f"{name} is a super-resolution model: give low_res with its {size}x{size} images "
                                  "(an .npz, a PNG folder or a samplerkit sample folder)")
        return None, {}
    if not size:
        raise SamplerkitError(f"low_res conditions super-resolution models only; {name} is not one")
    images = LowResImages(net, s.low_res, seeds, labels_spec, name, min(s.batch, len(seeds)))
    return images, {"low_res": str(s.low_res), "low_res_id": images.fingerprint}


class LowResImages(DenoiserWrapper):
    """A super-resolution denoiser whose low-resolution images are bound batch by batch: seed s gets
    image s of the source (of a ``samplerkit sample`` folder: the image of seed s) and, unless
    labels were given, its label. :meth:`generate` is :func:`samplerkit.generate.generate` with
    each batch bound first."""

    def __init__(self, net, source: str, seeds: list[int], labels_spec, name: str, batch: int):
        src = open_source(source)
        size = net.low_res_resolution
        if src.resolution != size:
            raise SamplerkitError(f"low_res images are {src.resolution}x{src.resolution} but {name} upsamples "
                                  f"{size}x{size} images")
        manifest = Path(source) / "manifest.json"
        order = output.read_json(manifest).get("seeds") if Path(source).is_dir() and manifest.is_file() else None
        position = {seed: i for i, seed in enumerate(order)} if isinstance(order, list) else None
        index = [position.get(seed, -1) if position is not None else seed for seed in seeds]
        missing = [seed for seed, i in zip(seeds, index, strict=True) if not 0 <= i < len(src)]
        if missing:
            raise SamplerkitError(f"low_res {source} holds {len(src)} images; seed {missing[0]} has none "
                                  "(seed s upsamples image s; of a sample folder, the image of seed s)")
        self.source, self.index = src, dict(zip(seeds, index, strict=True))
        self.labels_spec = labels_spec
        if net.label_dim and labels_spec is None:
            labels = [src.read(index[i : i + 256])[1] for i in range(0, len(index), 256)]
            if any(part is None for part in labels):
                raise SamplerkitError(f"{name} is class-conditional and low_res {source} has no labels "
                                      "(npz arr_1, a sample folder's manifest); pass class_labels")
            self.labels_spec = [int(v) for part in labels for v in part]
        path = Path(source)
        if path.is_file():
            self.fingerprint = output.file_sha256(path)
        else:
            self.fingerprint = output.read_json(manifest).get("settings_fingerprint") if manifest.is_file() else None
        super().__init__(superres.bind(net, self.images(seeds[:batch])))  # the first batch (for autotuning)

    def images(self, seeds) -> torch.Tensor:
        return to_model_space(self.source.read([self.index[seed] for seed in seeds])[0])

    def bind(self, seeds) -> None:
        self.inner = superres.bind(self.inner, self.images(seeds))

    def generate(self, net, prepared, seeds, batch_size, labels, device, label_of_seed):
        for start in range(0, len(seeds), batch_size):
            chunk = seeds[start : start + batch_size]
            self.bind(chunk)
            yield from generate(net, prepared, chunk, batch_size, labels, device, label_of_seed)
