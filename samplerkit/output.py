"""Writing sampled images: per-seed PNGs, the evaluator's ``.npz``, a grid and a manifest.

Every file is written atomically (temporary file in the same folder, fsync, ``os.replace``),
so a killed run never leaves a truncated image; temporaries carry ``.tmp-`` in their name and
are swept on the next run. Layout of an output folder::

    000000/000000.png ... 000000/000999.png, 001000/001000.png ...   (EDM's --subdirs layout)
    .parts/000123.npy            per-seed arrays when only an npz is asked for
    samples_{N}x{H}x{W}x3.npz    arr_0 uint8 NHWC in seed order, arr_1 labels (conditional)
    grid.png, settings.json, manifest.json
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .errors import SamplerkitError

TMP_MARK = ".tmp-"


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that the path holds either the old or the complete new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TMP_MARK}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_json(path: str | Path, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_csv(path: str | Path, columns, rows) -> None:
    """Write a whole CSV table (header + rows of dicts, missing cells empty) atomically."""
    import csv

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buf.getvalue().encode())


def sweep_temporaries(root: str | Path) -> int:
    """Remove temporaries left by a killed run; returns how many."""
    count = 0
    for p in Path(root).rglob(f"*{TMP_MARK}*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            count += 1
    return count


def png_path(out: str | Path, seed: int) -> Path:
    return Path(out) / f"{seed - seed % 1000:06d}" / f"{seed:06d}.png"


def part_path(out: str | Path, seed: int) -> Path:
    return Path(out) / ".parts" / f"{seed:06d}.npy"


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_npy(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, image)
    return buf.getvalue()


def read_image(out: str | Path, seed: int) -> np.ndarray:
    """The stored uint8 HWC image of a seed (from its PNG, else its .npy part)."""
    from PIL import Image

    png, part = png_path(out, seed), part_path(out, seed)
    if png.is_file():
        with Image.open(png) as im:
            return np.asarray(im.convert("RGB"))
    if part.is_file():
        return np.load(part)
    raise SamplerkitError(f"image for seed {seed} is missing from {out}")


def grid(images: np.ndarray, max_images: int = 64) -> np.ndarray:
    """Tile up to ``max_images`` uint8 NHWC images into a near-square grid."""
    images = images[:max_images]
    n, h, w, c = images.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    canvas = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i, im in enumerate(images):
        r, k = divmod(i, cols)
        canvas[r * h : (r + 1) * h, k * w : (k + 1) * w] = im
    return canvas


def write_npz(path: str | Path, images: np.ndarray, labels: np.ndarray | None) -> None:
    buf = io.BytesIO()
    if labels is None:
        np.savez(buf, arr_0=images)
    else:
        np.savez(buf, arr_0=images, arr_1=labels.astype(np.int64))
    atomic_write(path, buf.getvalue())


def check_writable(out: str | Path) -> Path:
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".probe{TMP_MARK}{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise SamplerkitError(f"cannot write to output folder {out}: {e.strerror or e}") from None
    return out


def clear_outputs(out: str | Path) -> None:
    """Remove what a previous run wrote (for ``--overwrite``): image subfolders, parts, npz,
    grid, settings and manifest -- nothing else in the folder."""
    out = Path(out)
    for d in out.iterdir():
        if d.is_dir() and (d.name == ".parts" or (len(d.name) == 6 and d.name.isdigit())):
            shutil.rmtree(d)
    for pattern in ("samples_*.npz", "grid.png", "settings.json", "manifest.json"):
        for p in out.glob(pattern):
            p.unlink()


def file_sha256(path: str | Path, _cache: dict = {}) -> str:  # noqa: B006 -- per-process memo
    """sha256 of a file, memoised by (path, size, mtime)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _cache:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _cache[key] = h.hexdigest()
    return _cache[key]
