"""Writing sampled images: per-seed PNGs, the evaluator's ``.npz``, a grid and a manifest.

Every file is written atomically (temporary file in the same folder, flush + fsync,
``os.replace``), so a killed run never leaves a truncated file; temporaries carry ``.tmp-`` in
their name and :func:`sweep_temporaries` removes them on the next run. An output folder::

    000000/000000.png ... 000000/000999.png, 001000/001000.png ...   (EDM's --subdirs layout)
    .parts/000123.npy            per-seed arrays while only an npz is asked for
    samples_{N}x{H}x{W}x{C}.npz  arr_0 uint8 NHWC in seed order, arr_1 int64 labels (conditional):
                                 the format of guided-diffusion's evaluator
    grid.png, settings.json, manifest.json

Images are uint8 HWC arrays throughout (C = 3, or 1 for grey-scale models).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from .download import default_cache_dir
from .errors import SamplerkitError
from .images import png_path, to_uint8

TMP_MARK = ".tmp-"
_SUBDIR = re.compile(r"^\d{6,}$")


# ---------------------------------------------------------------------------------------------
# atomic files


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[io.BufferedWriter]:
    """Open a temporary file next to ``path`` for binary writing; on success it is flushed,
    fsynced and renamed onto ``path``, on failure removed. Readers see the old or the new file."""
    path = Path(path)
    tmp, fd = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _create_temporary(path: Path) -> tuple[Path, int]:
    """A new file ``.{name}.tmp-{pid}-{random}`` beside ``path`` (folders made on demand), with
    the permissions of an ordinary new file (0666 minus the umask)."""
    while True:
        tmp = path.parent / f".{path.name}{TMP_MARK}{os.getpid()}-{os.urandom(4).hex()}"
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            continue


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that the path holds either the old or the complete new file."""
    with atomic_file(path) as f:
        f.write(data)


def atomic_json(path: str | Path, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def json_text(obj) -> str:
    """Indented JSON with lists of numbers on one line (a manifest of 50,000 seeds stays readable)."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str)
    number = r"-?[\d.eE+-]+"  # an indented list has a newline after "[", which no JSON string holds
    return re.sub(rf"\[\n\s*({number}(?:,\n\s*{number})*)\n\s*\]",
                  lambda m: "[" + ", ".join(v.strip() for v in m[1].split(",")) + "]", text) + "\n"


def atomic_csv(path: str | Path, columns, rows) -> None:
    """Write a whole CSV table (header + rows of dicts, missing cells empty) atomically."""
    import csv

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buf.getvalue().encode())


class FileWriter:
    """Atomic writes on worker threads, so PNG encoding and fsync overlap the network's next batch.

    ``submit(path, make_bytes)`` queues a file (at most ``max_pending`` in flight); ``close()``
    (or leaving the ``with`` block) waits for all of them. The first failed write is raised by
    the next ``submit`` or by ``close``; a killed process leaves only complete files behind.
    """

    def __init__(self, workers: int = 2, max_pending: int = 256):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="samplerkit-write")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._errors: list[BaseException] = []

    def submit(self, path: str | Path, make_bytes: Callable[[], bytes]) -> None:
        self._raise_first_error()
        self._slots.acquire()
        self._pool.submit(self._write, Path(path), make_bytes)

    def _write(self, path: Path, make_bytes: Callable[[], bytes]) -> None:
        try:
            atomic_write(path, make_bytes())
        except BaseException as e:  # reported to the submitting thread
            self._errors.append(e)
        finally:
            self._slots.release()

    def _raise_first_error(self) -> None:
        if self._errors:
            e = self._errors[0]
            if isinstance(e, OSError):
                raise SamplerkitError(f"cannot write {e.filename or 'an output file'}: {e.strerror or e}")
            raise e

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._raise_first_error()

    def __enter__(self) -> FileWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True)
        if exc[0] is None:
            self._raise_first_error()


def sweep_temporaries(root: str | Path) -> int:
    """Remove temporaries left under ``root`` by a killed run; returns how many."""
    count = 0
    for p in Path(root).rglob(f"*{TMP_MARK}*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            count += 1
    return count


def check_writable(out: str | Path) -> Path:
    """Create ``out`` if needed and make sure files can be written there."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out, prefix=f".probe{TMP_MARK}"):
            pass
    except OSError as e:
        raise SamplerkitError(f"cannot write to output folder {out}: {e.strerror or e}; "
                              "choose another out folder") from None
    return out


# ---------------------------------------------------------------------------------------------
# per-seed images


def part_path(out: str | Path, seed: int) -> Path:
    """``out/.parts/000123.npy``: a seed's image while only an npz is asked for."""
    return Path(out) / ".parts" / f"{seed:06d}.npy"


def encode_png(image: np.ndarray) -> bytes:
    """uint8 HWC (C = 1 or 3) -> PNG bytes (lossless; zlib level 1 for speed)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_npy(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(image))
    return buf.getvalue()


def read_image(out: str | Path, seed: int) -> np.ndarray:
    """The stored uint8 HWC image of a seed (from its PNG, else its ``.parts`` array)."""
    from PIL import Image

    png, part = png_path(out, seed), part_path(out, seed)
    if png.is_file():
        with Image.open(png) as im:
            return np.asarray(im)[..., None] if im.mode == "L" else np.asarray(im.convert("RGB"))
    if part.is_file():
        return np.load(part)
    raise SamplerkitError(f"the image of seed {seed} is missing from {out}; rerun the same command to make it")


def has_images(out: str | Path) -> bool:
    """Whether ``out`` holds any per-seed image or sample npz written by ``samplerkit sample``."""
    out = Path(out)
    if any(out.glob("samples*.npz")) or any((out / ".parts").glob("*.npy")):
        return True
    return any(d.is_dir() and _SUBDIR.match(d.name) and any(d.glob("*.png")) for d in out.iterdir())


def clear_outputs(out: str | Path) -> None:
    """Remove what a previous run wrote (for ``--overwrite``): image subfolders, parts, sample
    npz files, grid, settings and manifest -- nothing else in the folder."""
    out = Path(out)
    for d in out.iterdir():
        if d.is_dir() and (d.name == ".parts" or _SUBDIR.match(d.name)):
            shutil.rmtree(d)
    for pattern in ("samples*.npz", "grid.png", "settings.json", "manifest.json"):
        for p in out.glob(pattern):
            p.unlink()


def grid(images: np.ndarray, max_images: int = 64) -> np.ndarray:
    """Tile up to ``max_images`` uint8 NHWC images row-major into a near-square grid."""
    images = np.asarray(images)[:max_images]
    n, h, w, c = images.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    canvas = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i, im in enumerate(images):
        r, k = divmod(i, cols)
        canvas[r * h : (r + 1) * h, k * w : (k + 1) * w] = im
    return canvas


# ---------------------------------------------------------------------------------------------
# the evaluator's npz


def npz_name(n: int, height: int, width: int, channels: int = 3) -> str:
    """``samples_{N}x{H}x{W}x{C}.npz``, as guided-diffusion's sampling scripts name it."""
    return f"samples_{n}x{height}x{width}x{channels}.npz"


def write_npz(path: str | Path, images: np.ndarray | Iterable[np.ndarray], labels: np.ndarray | None = None,
              count: int | None = None) -> None:
    """Write ``arr_0`` = the uint8 NHWC images (and ``arr_1`` = int64 labels) as ``np.savez`` does.

    ``images`` is an array or an iterable of HWC images; with an iterable pass ``count`` and the
    images are streamed into the file one by one, so N images never need to be in memory at once.
    """
    if isinstance(images, np.ndarray):
        count, images = len(images), iter(images)
    else:
        images = iter(images)
    if not count:
        raise SamplerkitError("no images to write into the npz")
    first = np.asarray(next(images))
    if first.dtype != np.uint8 or first.ndim != 3:
        raise SamplerkitError(f"npz images must be uint8 HWC, got {first.dtype} {first.shape}")
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (count, *first.shape)}
    with atomic_file(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("arr_0.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, header)
            member.write(np.ascontiguousarray(first).tobytes())
            written = 1
            for image in images:
                image = np.asarray(image)
                if image.shape != first.shape or image.dtype != np.uint8:
                    raise SamplerkitError(f"image {written} has shape {image.shape}, expected {first.shape}")
                member.write(np.ascontiguousarray(image).tobytes())
                written += 1
        if written != count:
            raise SamplerkitError(f"expected {count} images for the npz, got {written}")
        if labels is not None:
            with zf.open("arr_1.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(labels, dtype=np.int64))


def iter_npz_images(path: str | Path) -> Iterator[np.ndarray]:
    """The images of an npz's ``arr_0``, one HWC array at a time, without loading them all."""
    with zipfile.ZipFile(path) as zf, zf.open("arr_0.npy") as member:
        version = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(member)
        if fortran or dtype != np.uint8 or len(shape) != 4:
            raise SamplerkitError(f"{path} does not hold uint8 NHWC images in arr_0")
        size = int(np.prod(shape[1:]))
        for _ in range(shape[0]):
            yield np.frombuffer(member.read(size), dtype=np.uint8).reshape(shape[1:])


# ---------------------------------------------------------------------------------------------
# model file hashes


_HASHES: dict[tuple, str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, computed once: remembered by (path, size, mtime) in this process and in
    ``<samplerkit cache>/file-sha256.json``, so resuming a run on a multi-GB checkpoint is instant."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key in _HASHES:
        return _HASHES[key]
    store = _hash_store()
    known = read_json(store).get(str(p)) if store else None
    if isinstance(known, dict) and [known.get("size"), known.get("mtime_ns")] == [st.st_size, st.st_mtime_ns]:
        _HASHES[key] = str(known.get("sha256"))
        return _HASHES[key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    _HASHES[key] = h.hexdigest()
    if store:
        with contextlib.suppress(OSError):
            table = read_json(store)
            table[str(p)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _HASHES[key]}
            atomic_json(store, table)
    return _HASHES[key]


def _hash_store() -> Path | None:
    try:
        return default_cache_dir() / "file-sha256.json"
    except RuntimeError:  # no home directory
        return None


def read_json(path: str | Path) -> dict:
    """The JSON object in ``path``; {} when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_images(images, out: str | Path, seeds: Iterable[int] | None = None,
                grid_png: bool = True) -> list[Path]:
    """Write a batch of images in [-1, 1] (NCHW, as the samplers return them) as PNGs in the
    layout of ``samplerkit sample`` (``out/000000/000123.png``, one file per seed, default seeds
    0 .. B-1) plus ``out/grid.png`` of the first 64; every file is written atomically.
    Returns the per-image paths."""
    pixels = to_uint8(images)
    seeds = list(range(len(pixels))) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != len(pixels):
        raise SamplerkitError(f"got {len(seeds)} seeds for {len(pixels)} images")
    out = check_writable(out)
    paths = [png_path(out, seed) for seed in seeds]
    for path, image in zip(paths, pixels, strict=True):
        atomic_write(path, encode_png(image))
    if grid_png:
        atomic_write(out / "grid.png", encode_png(grid(pixels)))
    return paths
