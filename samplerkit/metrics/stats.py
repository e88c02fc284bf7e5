"""Feature statistics of an image set: streaming mean/covariance, the statistics file, reference statistics.

A statistics file is an npz with ``mu`` and ``sigma`` (the form of clean-fid and EDM's ``fid-refs``),
``n``, and optionally ``mu_s``/``sigma_s`` (sFID, the guided-diffusion evaluator's names) and
``feats`` (pool features for precision/recall, clean-fid's name for them).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SamplerkitError
from .inception import extract_features

METRICS = ("fid", "sfid", "pr")


def parse_metrics(text: str | Sequence[str]) -> tuple[str, ...]:
    """'fid,sfid,pr' -> ('fid', 'sfid', 'pr') in canonical order; unknown names are an error."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names = {m.strip().lower() for m in items if m.strip()}
    unknown = sorted(names - set(METRICS))
    if unknown or not names:
        raise SamplerkitError(f"unknown metric(s) {', '.join(unknown) or '(none)'}; use a comma list of "
                              f"{', '.join(METRICS)}")
    return tuple(m for m in METRICS if m in names)


class RunningStats:
    """Streaming mean and covariance (ddof = 1, as ``np.cov``) of feature vectors, in float64.

    Keeps n, sum(x - c) and sum((x - c)(x - c)^T) with c the mean of the first batch (a shift
    that keeps the sums well conditioned); memory is O(d^2) whatever the number of images.
    """

    def __init__(self, dim: int):
        self.dim = dim
        self.n = 0
        self.shift: np.ndarray | None = None
        self.sum = np.zeros(dim)
        self.outer = np.zeros((dim, dim))

    def update(self, features: np.ndarray) -> None:
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise SamplerkitError(f"expected features of shape [n, {self.dim}], got {f.shape}")
        if len(f) == 0:
            return
        if self.shift is None:
            self.shift = f.mean(0)
        f = f - self.shift
        self.n += len(f)
        self.sum += f.sum(0)
        self.outer += f.T @ f

    @property
    def mean(self) -> np.ndarray:
        return self.shift + self.sum / self.n

    @property
    def cov(self) -> np.ndarray:
        if self.n < 2:
            raise SamplerkitError(f"a covariance needs at least 2 images, got {self.n}")
        centred = self.sum / self.n
        return (self.outer - self.n * np.outer(centred, centred)) / (self.n - 1)


@dataclass
class Statistics:
    """Feature statistics of one image set: pool_3 mean/covariance, optionally the spatial
    (sFID) ones and the pool_3 features themselves (precision/recall)."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int = 0  # 0: unknown (a stats file without a count)
    mu_s: np.ndarray | None = None
    sigma_s: np.ndarray | None = None
    feats: np.ndarray | None = None

    def metrics(self) -> tuple[str, ...]:
        have = {"fid": True, "sfid": self.mu_s is not None, "pr": self.feats is not None}
        return tuple(m for m in METRICS if have[m])

    def save(self, path: str | Path) -> Path:
        """Write the statistics file (see the module docstring), atomically."""
        from ..output import atomic_write

        path = Path(path)
        arrays = {"mu": self.mu, "sigma": self.sigma, "n": np.int64(self.n), "mode": np.array("clean")}
        if self.mu_s is not None:
            arrays.update(mu_s=self.mu_s, sigma_s=self.sigma_s)
        if self.feats is not None:
            arrays["feats"] = self.feats.astype(np.float32)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write(path, buf.getvalue())
        return path

    def fingerprint(self) -> str:
        """A short hash of mu and sigma (names a reference in sweep CSVs)."""
        h = hashlib.sha256(np.ascontiguousarray(self.mu, np.float64).tobytes())
        h.update(np.ascontiguousarray(self.sigma, np.float64).tobytes())
        return h.hexdigest()[:16]


def load_statistics(path: str | Path) -> Statistics | None:
    """The statistics file at ``path``; None when the npz holds no ``mu`` (e.g. an image batch)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            if "mu" not in f.files:
                return None
            if "sigma" not in f.files:
                raise SamplerkitError(f"{path}: has 'mu' but no 'sigma'")
            get = lambda k: f[k] if k in f.files else None  # noqa: E731
            stats = Statistics(np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64),
                               int(get("n")) if get("n") is not None else 0, get("mu_s"), get("sigma_s"), get("feats"))
    except (OSError, ValueError) as err:
        raise SamplerkitError(f"{path}: not a readable npz ({type(err).__name__}: {err})") from None
    d = stats.mu.shape[0] if stats.mu.ndim == 1 else -1
    if d < 1 or stats.sigma.shape != (d, d):
        raise SamplerkitError(f"{path}: mu {stats.mu.shape} and sigma {stats.sigma.shape} are not [d] and [d, d]")
    if (stats.mu_s is None) != (stats.sigma_s is None):
        raise SamplerkitError(f"{path}: has only one of mu_s / sigma_s")
    if stats.feats is not None and (stats.feats.ndim != 2 or stats.feats.shape[1] != d):
        raise SamplerkitError(f"{path}: feats {stats.feats.shape} do not match the {d}-d mu")
    return stats


# ---------------------------------------------------------------------------------------------
# statistics of images


class StatsBuilder:
    """Accumulates the statistics a set of metrics needs, batch by batch."""

    def __init__(self, features, metrics: Sequence[str] = ("fid",)):
        self.features = features
        self.metrics = parse_metrics(metrics)
        self.pool: RunningStats | None = None
        self.spatial: RunningStats | None = None
        self.feats: list[np.ndarray] = []

    def add(self, images) -> None:
        """Add uint8 NHWC images or [-1, 1] NCHW float images."""
        pool, spatial = extract_features(self.features, images, "sfid" in self.metrics)
        if self.pool is None:
            self.pool = RunningStats(pool.shape[1])
            if spatial is not None:
                self.spatial = RunningStats(spatial.shape[1])
        self.pool.update(pool)
        if spatial is not None:
            self.spatial.update(spatial)
        if "pr" in self.metrics:
            self.feats.append(np.asarray(pool, np.float32))

    @property
    def n(self) -> int:
        return 0 if self.pool is None else self.pool.n

    def result(self) -> Statistics:
        if self.pool is None or self.pool.n < 2:
            raise SamplerkitError(f"statistics need at least 2 images, got {self.n}")
        stats = Statistics(self.pool.mean, self.pool.cov, self.pool.n)
        if self.spatial is not None:
            stats.mu_s, stats.sigma_s = self.spatial.mean, self.spatial.cov
        if "pr" in self.metrics:
            stats.feats = np.concatenate(self.feats)
        return stats


def statistics_of_images(batches: Iterable, features, metrics: Sequence[str] = ("fid",),
                         progress: Callable[[int], None] | None = None) -> Statistics:
    """Statistics of an iterable of image batches (uint8 NHWC or [-1, 1] NCHW); ``progress(n)`` after each."""
    builder = StatsBuilder(features, metrics)
    for images in batches:
        builder.add(images)
        if progress is not None:
            progress(len(images))
    return builder.result()


def count_images(source, num_images: int | None) -> int:
    """``num_images`` checked against the source (None: all of it)."""
    if num_images is None:
        return len(source)
    if num_images < 2:
        raise SamplerkitError(f"--num-images must be >= 2, got {num_images}")
    if num_images > len(source):
        raise SamplerkitError(f"{source.name} holds {len(source)} images, fewer than the {num_images} requested")
    return num_images


def open_images(src: str | Path, num_images: int | None = None):
    """(source, n): the data source ``src`` (see :mod:`samplerkit.data`) and the number of its images
    to use (default all), after every check that needs no network -- at least 2 images, each
    readable and of one size -- so that a bad file fails before any feature is computed."""
    from ..data import open_source

    source = open_source(src)
    n = count_images(source, num_images)
    if n < 2:
        raise SamplerkitError(f"{source.name} holds {n} image; statistics need at least 2")
    source.check(n)
    return source, n


def statistics_of_source(src: str | Path, features, metrics: Sequence[str] = ("fid",), num_images: int | None = None,
                         batch_size: int = 64, progress: Callable[[int], None] | None = None) -> Statistics:
    """Statistics of the first ``num_images`` (default all) images of a data source
    (folder, zip, npz, builtin:...; see :mod:`samplerkit.data`)."""
    source, n = open_images(src, num_images)
    return _statistics_of(source, n, features, metrics, batch_size, progress)


def _statistics_of(source, n: int, features, metrics, batch_size: int, progress) -> Statistics:
    batches = (images for images, _ in source.batches(batch_size, limit=n))
    return statistics_of_images(batches, features, metrics, progress)


# ---------------------------------------------------------------------------------------------
# reference statistics


def _npz_has_images(path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as f:
            return "arr_0" in f.files or "images" in f.files
    except (OSError, ValueError):
        return False


def _stats_file(ref: str | Path) -> Statistics | None:
    path = Path(ref)
    return load_statistics(path) if path.suffix == ".npz" and path.is_file() else None


def _builtin_cache_path(source: str, metrics: Sequence[str], n: int) -> Path:
    """Where the statistics of the first ``n`` images of a built-in data set are cached (under the samplerkit cache)."""
    from ..download import default_cache_dir

    key = hashlib.sha256(f"{source}|{sorted(metrics)}|{n}".encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9]+", "-", source).strip("-")
    return Path(default_cache_dir()) / "fid-refs" / f"{name}-{key}.npz"


def stored_reference(ref: str | Path, metrics: Sequence[str] = ("fid",), num_images: int | None = None,
                     recompute: bool = False) -> Statistics | None:
    """Reference statistics that need no feature pass: a statistics npz (clean-fid, EDM ``fid-refs``,
    ``fid-ref`` output, an evaluator reference batch) holding all that ``metrics`` need, or the cached
    statistics of a built-in data set; None when they must be computed from images. A statistics npz
    that lacks what ``metrics`` need and holds no images (``arr_0``) is an error."""
    metrics = parse_metrics(metrics)
    text, path = str(ref), Path(ref)
    stored = _stats_file(path)
    if recompute:
        return None
    if stored is not None:
        missing = [m for m in metrics if m not in stored.metrics()]
        if not missing:
            return stored
        if not _npz_has_images(path):
            what = {"sfid": "spatial statistics (mu_s, sigma_s)", "pr": "pool features (feats)"}
            raise SamplerkitError(f"{path} has no {' or '.join(what[m] for m in missing)} for "
                                  f"{', '.join(missing)}; rebuild it with samplerkit fid-ref --metrics "
                                  f"{','.join(metrics)}")
        return None
    if text.startswith("builtin:"):
        from ..data import open_source

        cached = _builtin_cache_path(text, metrics, count_images(open_source(text), num_images))
        if cached.is_file():
            return load_statistics(cached)
    return None


def computed_reference(ref: str | Path, source, n: int, features, metrics: Sequence[str] = ("fid",),
                       batch_size: int = 64, recompute: bool = False,
                       progress: Callable[[int], None] | None = None) -> Statistics:
    """Statistics of the first ``n`` images of ``source`` (from :func:`open_images` of ``ref``). A
    built-in data set's are cached (it is deterministic); an evaluator reference batch keeps its
    stored ``mu``/``sigma`` (as the evaluator does) unless ``recompute``."""
    metrics = parse_metrics(metrics)
    computed = _statistics_of(source, n, features, metrics, batch_size, progress)
    text = str(ref)
    if text.startswith("builtin:"):
        cached = _builtin_cache_path(text, metrics, n)
        cached.parent.mkdir(parents=True, exist_ok=True)
        computed.save(cached)
    stored = None if recompute else _stats_file(ref)
    if stored is not None:
        computed.mu, computed.sigma = stored.mu, stored.sigma
        if stored.mu_s is not None:
            computed.mu_s, computed.sigma_s = stored.mu_s, stored.sigma_s
    return computed


def reference(ref: str | Path, features=None, metrics: Sequence[str] = ("fid",), num_images: int | None = None,
              batch_size: int = 64, recompute: bool = False,
              progress: Callable[[int], None] | None = None) -> Statistics:
    """Reference statistics of ``ref``: :func:`stored_reference` when it has them, else computed with
    ``features`` from the npz's images (``arr_0``) or the data source (:func:`computed_reference`)."""
    stored = stored_reference(ref, metrics, num_images, recompute)
    if stored is not None:
        return stored
    if features is None:
        raise SamplerkitError(f"computing statistics of {ref} needs a feature extractor")
    source, n = open_images(ref, num_images)
    return computed_reference(ref, source, n, features, metrics, batch_size, recompute, progress)
