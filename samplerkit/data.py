"""Image data sources: folders, zips, ``.npz`` arrays and the built-in procedural set.

A *source* string names where the images are:

* ``builtin:shapes32`` -- :func:`shapes`, 32x32 RGB scenes generated from a seed (no files);
  ``builtin:shapes32?n=5000&seed=1`` sets the size (default 10,000) and the seed (default 0);
* a folder written by ``samplerkit sample`` (or EDM's ``generate.py --subdirs``): exactly its
  per-seed images ``000000/000123.png`` -- the seeds ``manifest.json`` lists, in its order, with
  its labels (or its ``samples_*.npz`` when only that was written); without a manifest every file of
  that layout, by seed. ``grid.png`` and anything else in the folder is never read;
* any other folder (searched recursively for .png/.jpg/.jpeg/.bmp/.webp), class labels from an
  EDM-style ``dataset.json`` (``{"labels": [[relative/path.png, label], ...]}``) or else from the
  first-level sub-folder names when there is more than one;
* a ``.zip`` of such images (labels from its ``dataset.json``);
* an ``.npz`` with ``arr_0`` (uint8 NHWC, the guided-diffusion evaluator's format) or
  ``images``, and optionally ``arr_1`` / ``labels``.

Images are uint8 NHWC RGB throughout; :func:`to_model_space` maps them to [-1, 1] NCHW.
:meth:`ImageSource.check` finds an unreadable file or one of another size from the file headers,
so a long pass over the images can be preceded by a check that takes seconds.
Resizing (only when asked): centre crop to a square, then PIL bicubic resize.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
import torch

from .errors import SamplerkitError
from .images import png_path
from .images import to_uint8 as to_uint8  # samplerkit.data.to_uint8, as before

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

# ---------------------------------------------------------------------------------------------
# the built-in procedural data set

SHAPE_CLASSES = ("disc", "square", "triangle", "ring")


def _shape_image(rng: np.random.Generator, label: int, resolution: int) -> np.ndarray:
    """One scene: a two-colour gradient background with a stripe texture and one shape."""
    r = resolution
    yy, xx = np.mgrid[0:r, 0:r].astype(np.float64) / (r - 1)
    c0, c1 = rng.uniform(0.0, 0.6, size=(2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.clip(0.5 + 0.5 * (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) * 1.4, 0, 1)
    img = c0 * (1 - ramp[..., None]) + c1 * ramp[..., None]
    freq, phase = rng.uniform(3, 7), rng.uniform(0, 2 * math.pi)
    img += 0.06 * np.sin(2 * math.pi * freq * (xx * np.cos(angle + 1) + yy * np.sin(angle + 1)) + phase)[..., None]
    colour = rng.uniform(0.55, 1.0, size=3)
    colour[rng.integers(3)] *= rng.uniform(0.0, 0.4)
    size = rng.uniform(0.18, 0.3)
    cx, cy = rng.uniform(size + 0.05, 0.95 - size, size=2)
    dx, dy = xx - cx, yy - cy
    if label == 0:  # disc
        mask = dx**2 + dy**2 <= size**2
    elif label == 1:  # square, rotated
        a = rng.uniform(0, math.pi / 2)
        u, v = np.cos(a) * dx + np.sin(a) * dy, -np.sin(a) * dx + np.cos(a) * dy
        mask = (np.abs(u) <= size * 0.85) & (np.abs(v) <= size * 0.85)
    elif label == 2:  # triangle, pointing up
        mask = (dy <= size * 0.8) & (dy >= -size + 2 * np.abs(dx) * 1.1)
    else:  # ring
        d2 = dx**2 + dy**2
        mask = (d2 <= size**2) & (d2 >= (0.55 * size) ** 2)
    img[mask] = colour
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def shapes(indices, resolution: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images number ``indices`` of the shapes data set: (uint8 [n, H, W, 3], int64 labels [n]).

    Image i depends only on (seed, i): its class is i mod 4 (disc, square, triangle, ring), its
    colours, texture, size and position come from a generator seeded with (seed, i).
    """
    indices = np.atleast_1d(np.asarray(indices, dtype=np.int64))
    images = np.empty((len(indices), resolution, resolution, 3), dtype=np.uint8)
    labels = indices % len(SHAPE_CLASSES)
    for k, i in enumerate(indices):
        rng = np.random.default_rng([seed, int(i)])
        images[k] = _shape_image(rng, int(labels[k]), resolution)
    return images, labels


# ---------------------------------------------------------------------------------------------
# sources


@dataclass
class ImageSource:
    """A random-access set of uint8 NHWC images with optional int labels."""

    name: str
    length: int
    resolution: int
    num_classes: int
    _read: object  # callable(indices) -> (uint8 [n,H,W,3], labels or None)
    _probe: object = None  # callable(index) -> None, raises on a bad item; None: every item is good by construction

    def __len__(self) -> int:
        return self.length

    def read(self, indices) -> tuple[np.ndarray, np.ndarray | None]:
        return self._read(np.asarray(indices, dtype=np.int64))

    def check(self, limit: int | None = None) -> None:
        """Raise a SamplerkitError now on the first of the first ``limit`` (default all) items that is
        unreadable, not RGB or not of the first item's size; reads file headers and checksums, decodes no pixels."""
        if self._probe is not None:
            for i in range(self.length if limit is None else min(limit, self.length)):
                self._probe(i)

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        n = self.length if limit is None else min(limit, self.length)
        for start in range(0, n, batch_size):
            yield self.read(np.arange(start, min(start + batch_size, n)))


def open_source(src: str | Path, max_images: int | None = None) -> ImageSource:
    """Open a data source (see the module docstring); every problem is a one-line SamplerkitError."""
    text = str(src)
    if text.startswith("builtin:"):
        return _builtin(text)
    path = Path(text)
    if not path.exists():
        raise SamplerkitError(f"data source not found: {text}")
    if path.is_dir():
        return _folder(path)
    if path.suffix == ".zip":
        return _zip(path)
    if path.suffix == ".npz":
        return _npz(path)
    raise SamplerkitError(f"unsupported data source {text!r}: use a folder, a .zip, an .npz or builtin:shapes32")


def _builtin(text: str) -> ImageSource:
    name, _, query = text[len("builtin:") :].partition("?")
    if name != "shapes32":
        raise SamplerkitError(f"unknown built-in data set {name!r}; available: shapes32")
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    try:
        n, seed = int(params.pop("n", 10000)), int(params.pop("seed", 0))
    except ValueError:
        raise SamplerkitError(f"bad built-in data set parameters in {text!r}") from None
    if params or n < 1:
        raise SamplerkitError(f"bad built-in data set parameters in {text!r}; use ?n=N&seed=S with N >= 1")
    return ImageSource(text, n, 32, len(SHAPE_CLASSES), lambda idx: shapes(idx, 32, seed))


def _open_image(data: bytes | Path, where: str, use):
    """``use(image)`` of the opened image, with its mode checked; every failure is a SamplerkitError."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            if im.mode not in ("RGB", "RGBA", "P"):
                raise SamplerkitError(f"{where}: image mode {im.mode} is not RGB (grayscale images are not supported)")
            return use(im)
    except SamplerkitError:
        raise
    except Exception as e:
        raise SamplerkitError(f"{where}: unreadable image ({type(e).__name__})") from None


def _decode(data: bytes | Path, where: str) -> np.ndarray:
    """uint8 HWC RGB pixels of an image file."""
    return _open_image(data, where, lambda im: np.asarray(im.convert("RGB")))


def _header_size(data: bytes | Path, where: str) -> tuple[int, int]:
    """(width, height) from the header, after PIL's ``verify`` (chunk checksums, truncation) -- no decoding."""

    def size(im):
        w, h = im.size
        im.verify()
        return w, h

    return _open_image(data, where, size)


def _labels_from_json(text: str | None, names: list[str], where: str) -> np.ndarray | None:
    if text is None:
        return None
    try:
        entries = json.loads(text).get("labels")
        if entries is None:
            return None
        table = {str(k).replace("\\", "/"): int(v) for k, v in entries}
        return np.array([table[n] for n in names], dtype=np.int64)
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise SamplerkitError(f"{where}: bad dataset.json ({type(e).__name__}: {e})") from None


def _finish(name: str, length: int, read_one, labels: np.ndarray | None, size_of=None, where=None) -> ImageSource:
    """An image source over ``read_one(i) -> uint8 HWC``; ``size_of(i) -> (w, h)`` from the header makes
    :meth:`ImageSource.check` possible, ``where(i)`` names item i in messages."""
    if length == 0:
        raise SamplerkitError(f"{name}: no images found")
    where = where or (lambda i: f"item {i}")
    first = read_one(0)
    resolution = first.shape[0]
    if first.shape[0] != first.shape[1]:
        raise SamplerkitError(f"{name}: images must be square, found {first.shape[1]}x{first.shape[0]}")

    def mismatch(i, w, h):
        if (w, h) != (resolution, resolution):
            raise SamplerkitError(f"{name}: mixed image sizes ({w}x{h} at {where(i)}, {resolution}x{resolution} at "
                                  f"{where(0)}); keep one size per folder")

    def read(idx):
        imgs = [read_one(int(i)) for i in idx]
        for i, im in zip(idx, imgs, strict=True):
            mismatch(int(i), im.shape[1], im.shape[0])
        out = np.stack(imgs) if imgs else np.empty((0, *first.shape), np.uint8)
        return out, (labels[idx] if labels is not None else None)

    probe = None if size_of is None else (lambda i: mismatch(i, *size_of(i)))
    num_classes = int(labels.max()) + 1 if labels is not None and len(labels) else 0
    return ImageSource(name, length, resolution, num_classes, read, probe)


def _files(name: str, files: list[Path], labels: np.ndarray | None) -> ImageSource:
    return _finish(name, len(files), lambda i: _decode(files[i], str(files[i])), labels,
                   size_of=lambda i: _header_size(files[i], str(files[i])), where=lambda i: str(files[i]))


def _folder(path: Path) -> ImageSource:
    samples = _sample_folder(path)
    if samples is not None:
        return samples
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    names = [p.relative_to(path).as_posix() for p in files]
    meta = path / "dataset.json"
    labels = _labels_from_json(meta.read_text() if meta.exists() else None, names, str(path))
    if labels is None:
        tops = sorted({n.split("/")[0] for n in names if "/" in n})
        if len(tops) > 1 and all("/" in n for n in names):
            labels = np.array([tops.index(n.split("/")[0]) for n in names], dtype=np.int64)
    return _files(str(path), files, labels)


def _sample_folder(path: Path) -> ImageSource | None:
    """The per-seed images of a ``samplerkit sample`` output folder (see the module docstring), or None
    when ``path`` is not one: no manifest listing seeds and no ``NNNNNN/NNNNNN.png`` file."""
    manifest = _sample_manifest(path)
    if manifest is None:
        found = {}
        for p in path.glob("[0-9]*/[0-9]*.png"):
            if p.stem.isdigit() and p.relative_to(path) == png_path("", int(p.stem)):
                found[int(p.stem)] = p
        if not found:
            return None
        return _files(str(path), [found[seed] for seed in sorted(found)], None)
    seeds, labels = manifest["seeds"], manifest.get("labels")
    if manifest.get("format") == "npz":
        npz = path / str(manifest.get("npz"))
        if not npz.is_file():
            raise SamplerkitError(f"{path}: manifest.json names {npz.name}, which is missing; rerun samplerkit sample "
                                  f"with the same settings to write it")
        return _npz(npz)
    files = [png_path(path, seed) for seed in seeds]
    missing = [seed for seed, f in zip(seeds, files, strict=True) if not f.is_file()]
    if missing:
        first = png_path("", missing[0]).as_posix()
        raise SamplerkitError(f"{path}: {len(missing)} of the {len(seeds)} seeds in manifest.json have no image "
                              f"(first: {first}); rerun samplerkit sample with the same settings")
    label_array = np.asarray(labels, dtype=np.int64) if labels is not None else None
    if label_array is not None and label_array.shape != (len(seeds),):
        raise SamplerkitError(f"{path}/manifest.json: {len(label_array)} labels for {len(seeds)} seeds")
    return _files(str(path), files, label_array)


def _sample_manifest(path: Path) -> dict | None:
    """``manifest.json`` of a sample folder (a dict with a list of int ``seeds``), or None."""
    file = path / "manifest.json"
    if not file.is_file():
        return None
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise SamplerkitError(f"{file}: unreadable manifest ({type(e).__name__}); delete it or rerun samplerkit "
                              f"sample") from None
    seeds = manifest.get("seeds") if isinstance(manifest, dict) else None
    if not isinstance(seeds, list) or not all(isinstance(s, int) and s >= 0 for s in seeds):
        return None
    return manifest


def _zip(path: Path) -> ImageSource:
    try:
        zf = zipfile.ZipFile(path)
        names = sorted(n for n in zf.namelist() if Path(n).suffix.lower() in IMAGE_SUFFIXES)
        meta = zf.read("dataset.json").decode() if "dataset.json" in zf.namelist() else None
    except (zipfile.BadZipFile, OSError) as e:
        raise SamplerkitError(f"{path}: not a readable zip ({e})") from None
    labels = _labels_from_json(meta, names, str(path))

    def member(i):
        try:
            return zf.read(names[i])
        except (zipfile.BadZipFile, OSError) as e:  # a CRC error or a truncated archive
            raise SamplerkitError(f"{path}:{names[i]}: unreadable zip member ({e})") from None

    return _finish(str(path), len(names), lambda i: _decode(member(i), f"{path}:{names[i]}"), labels,
                   size_of=lambda i: _header_size(member(i), f"{path}:{names[i]}"),
                   where=lambda i: f"{path}:{names[i]}")


def _npz(path: Path) -> ImageSource:
    try:
        data = np.load(path)
        key = "arr_0" if "arr_0" in data.files else "images" if "images" in data.files else None
        if key is None:
            raise SamplerkitError(f"{path}: npz has no image array (expected arr_0 or images)")
        images = data[key]
        lkey = "arr_1" if "arr_1" in data.files else "labels" if "labels" in data.files else None
        labels = data[lkey].astype(np.int64) if lkey else None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise SamplerkitError(f"{path}: not a readable npz ({e})") from None
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise SamplerkitError(f"{path}: {key} must be uint8 [N, H, W, 3] (RGB), got {images.dtype} {images.shape}")
    return _finish(str(path), len(images), lambda i: images[i], labels)


# ---------------------------------------------------------------------------------------------


def resize(images: np.ndarray, resolution: int) -> np.ndarray:
    """Centre-crop each uint8 NHWC image to a square, then bicubic-resize it to ``resolution``."""
    from PIL import Image

    if images.shape[1] == images.shape[2] == resolution:
        return images
    out = np.empty((len(images), resolution, resolution, 3), dtype=np.uint8)
    for k, im in enumerate(images):
        h, w = im.shape[:2]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        pil = Image.fromarray(im[top : top + s, left : left + s])
        out[k] = np.asarray(pil.resize((resolution, resolution), Image.BICUBIC))
    return out


def to_model_space(images: np.ndarray, device="cpu") -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1
