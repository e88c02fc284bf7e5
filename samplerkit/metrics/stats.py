"""Feature statistics of an image set: streaming mean/covariance, the statistics file, reference statistics.

A statistics file is an npz with ``mu`` and ``sigma`` (the form of clean-fid and EDM's ``fid-refs``),
``n``, ``mode`` (the feature pipeline, ``clean`` or ``legacy-tensorflow``) and ``network`` (sha256
of the Inception network's weights), and optionally ``mu_s``/``sigma_s`` (sFID, the guided-diffusion evaluator's
names) and ``feats`` (pool features for precision/recall and KID, clean-fid's name for them).
Statistics of different pipelines are never compared silently (:func:`check_same_pipeline`).

Under ``torchrun`` each process accumulates its share of the images and :meth:`StatsBuilder.gather` combines
them exactly: the float64 sums of the streaming statistics are added, the features concatenated
in image order.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import distributed
from ..data import open_source
from ..download import default_cache_dir
from ..errors import SamplerkitError
from ..output import atomic_write
from .inception import extract_features

METRICS = ("fid", "sfid", "pr", "kid", "is")
FEATURE_METRICS = ("pr", "kid")  # metrics that need the pool features of both sets
ADM_REFERENCE = "ADM evaluator reference batch"


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

    def merge(self, other: RunningStats) -> None:
        """Add the images of ``other`` (same dimension): the sums are moved to this object's shift
        and added, so the result equals one pass over both sets to float64 rounding."""
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.shift, self.sum, self.outer = other.n, other.shift.copy(), other.sum.copy(), other.outer.copy()
            return
        delta = other.shift - self.shift  # other's sums about self.shift: x - s = (x - s_o) + delta
        cross = np.outer(other.sum, delta)
        self.outer += other.outer + cross + cross.T + other.n * np.outer(delta, delta)
        self.sum += other.sum + other.n * delta
        self.n += other.n

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
    mode: str = ""  # feature pipeline ('clean', 'legacy-tensorflow'); '' = not recorded
    network: str = ""  # sha256 of the Inception weights (metrics.network_sha256); '' = not recorded
    logits: np.ndarray | None = None  # softmax/logits [n, 1008] (Inception Score; not saved)
    origin: str = ""  # where the numbers come from, when that is worth saying (not saved)
    resolution: int = 0  # side of the (square) images the statistics are of; 0 = not recorded

    def metrics(self) -> tuple[str, ...]:
        have = {"fid": True, "sfid": self.mu_s is not None, "pr": self.feats is not None,
                "kid": self.feats is not None, "is": self.logits is not None}
        return tuple(m for m in METRICS if have[m])

    def pipeline(self) -> str:
        """'clean mode, network 26f1ecf4…' or what is not recorded."""
        mode = f"{self.mode} mode" if self.mode else "unrecorded mode"
        return f"{mode}, network {self.network[:12] + '…' if self.network else 'unrecorded'}"

    def save(self, path: str | Path) -> Path:
        """Write the statistics file (see the module docstring), atomically."""
        path = Path(path)
        arrays = {"mu": self.mu, "sigma": self.sigma, "n": np.int64(self.n)}
        if self.mode:
            arrays["mode"] = np.array(self.mode)
        if self.network:
            arrays["network"] = np.array(self.network)
        if self.resolution:
            arrays["resolution"] = np.int64(self.resolution)
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
                               int(get("n")) if get("n") is not None else 0, get("mu_s"), get("sigma_s"), get("feats"),
                               str(get("mode")) if get("mode") is not None else "",
                               str(get("network")) if get("network") is not None else "")
            if "resolution" in f.files:
                stats.resolution = int(f["resolution"])
            if "arr_0" in f.files and not stats.mode:  # the guided-diffusion evaluator's layout: TensorFlow statistics
                stats.mode, stats.origin = "legacy-tensorflow", ADM_REFERENCE
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
    """Accumulates the statistics a set of metrics needs, batch by batch, from one feature pass:
    streaming pool (and spatial) statistics; the pool features for precision/recall, KID or a
    bootstrap (``keep_feats``); the logits for the Inception Score."""

    def __init__(self, features, metrics: Sequence[str] = ("fid",), keep_feats: bool = False):
        self.features = features
        self.metrics = parse_metrics(metrics)
        self.keep_feats = keep_feats or any(m in self.metrics for m in FEATURE_METRICS)
        self.pool: RunningStats | None = None
        self.spatial: RunningStats | None = None
        self.feats: list[np.ndarray] = []
        self.logits: list[np.ndarray] = []

    def add(self, images) -> None:
        """Add uint8 NHWC images or [-1, 1] NCHW float images."""
        got = extract_features(self.features, images, "sfid" in self.metrics, "is" in self.metrics)
        if self.pool is None:
            self.pool = RunningStats(got.pool.shape[1])
            if got.spatial is not None:
                self.spatial = RunningStats(got.spatial.shape[1])
        self.pool.update(got.pool)
        if got.spatial is not None:
            self.spatial.update(got.spatial)
        if self.keep_feats:
            self.feats.append(np.asarray(got.pool, np.float32))
        if got.logits is not None:
            self.logits.append(np.asarray(got.logits, np.float32))

    @property
    def n(self) -> int:
        return 0 if self.pool is None else self.pool.n

    def gather(self) -> None:
        """Under ``torchrun``: combine every process's share (each called on its block of images, in
        rank order) into this object, on every rank. A no-op in one process."""
        if distributed.world_size() == 1:
            return
        import torch.distributed as dist

        mine = (self.pool, self.spatial, self.feats, self.logits)
        parts: list = [None] * distributed.world_size()
        dist.all_gather_object(parts, mine)
        self.pool = self.spatial = None
        self.feats, self.logits = [], []
        for pool, spatial, feats, logits in parts:  # rank order = image order
            for name, part in (("pool", pool), ("spatial", spatial)):
                if part is None:
                    continue
                if getattr(self, name) is None:
                    setattr(self, name, RunningStats(part.dim))
                getattr(self, name).merge(part)
            self.feats += feats
            self.logits += logits

    def result(self) -> Statistics:
        if self.pool is None or self.pool.n < 2:
            raise SamplerkitError(f"statistics need at least 2 images, got {self.n}")
        stats = Statistics(self.pool.mean, self.pool.cov, self.pool.n, mode=getattr(self.features, "mode", ""),
                           network=getattr(self.features, "sha256", ""))
        if self.spatial is not None:
            stats.mu_s, stats.sigma_s = self.spatial.mean, self.spatial.cov
        if self.keep_feats:
            stats.feats = np.concatenate(self.feats)
        if "is" in self.metrics:
            stats.logits = np.concatenate(self.logits)
        return stats


def check_same_pipeline(sample: Statistics, ref: Statistics, force: bool = False,
                        messages: tuple[Callable, Callable] | None = None) -> None:
    """Statistics of different feature pipelines (mode) or networks (weights sha256) are not comparable:
    an error unless ``force``. A side that records nothing is not checked. ``messages``: the
    (mode, network) mismatch messages of another detector, each ``f(sample, ref) -> str`` (default:
    Inception's)."""
    if force:
        return
    mode_differs = bool(sample.mode and ref.mode and sample.mode != ref.mode)
    network_differs = bool(sample.network and ref.network and sample.network != ref.network)
    if messages is not None and (mode_differs or network_differs):
        raise SamplerkitError(messages[0](sample, ref) if mode_differs else messages[1](sample, ref))
    if mode_differs:
        where = f" ({ref.origin}: stored TensorFlow statistics)" if ref.origin else ""
        raise SamplerkitError(f"the reference was made in {ref.mode} mode{where}, the samples in {sample.mode} "
                              f"mode; use fid_mode {ref.mode}, rebuild the reference, or pass force_pipeline=True "
                              "to compare anyway")
    if network_differs:
        raise SamplerkitError(f"the reference was made with another Inception network (sha256 {ref.network[:12]}…, "
                              f"samples {sample.network[:12]}…); rebuild it with this network or pass "
                              "force_pipeline=True to compare anyway")


def statistics_of_images(batches: Iterable, features, metrics: Sequence[str] = ("fid",),
                         progress: Callable[[int], None] | None = None, keep_feats: bool = False) -> Statistics:
    """Statistics of an iterable of image batches (uint8 NHWC or [-1, 1] NCHW); ``progress(n)`` after each."""
    builder = StatsBuilder(features, metrics, keep_feats)
    for images in batches:
        builder.add(images)
        if progress is not None:
            progress(len(images))
    return builder.result()


def block(n: int) -> range:
    """This process's contiguous block of ``range(n)`` under ``torchrun`` (all of it in one process);
    blocks in rank order are the images in order, so gathered features keep the order of one process."""
    rank, world = distributed.rank(), distributed.world_size()
    return range(rank * n // world, (rank + 1) * n // world)


def feed_source_block(source, n: int, builder, batch_size: int = 64,
                      progress: Callable[[int], None] | None = None) -> None:
    """Feed this process's block of the first ``n`` images of an opened source to ``builder`` (anything
    with ``add(images)`` and ``gather()``), ``batch_size`` at a time, then gather across processes."""
    mine = block(n)
    for start in range(mine.start, mine.stop, batch_size):
        images, _ = source.read(np.arange(start, min(start + batch_size, mine.stop)))
        builder.add(images)
        if progress is not None:
            progress(len(images))
    builder.gather()


def statistics_of_source_block(source, n: int, features, metrics: Sequence[str] = ("fid",), batch_size: int = 64,
                               progress: Callable[[int], None] | None = None, keep_feats: bool = False) -> Statistics:
    """Statistics of the first ``n`` images of an opened source; under ``torchrun`` every process
    extracts features of its block only and the statistics are gathered (every rank gets them)."""
    builder = StatsBuilder(features, metrics, keep_feats)
    feed_source_block(source, n, builder, batch_size, progress)
    stats = builder.result()
    stats.resolution = int(getattr(source, "resolution", 0) or 0)
    return stats


def count_images(source, num_images: int | None) -> int:
    """``num_images`` checked against the source (None: all of it)."""
    if num_images is None:
        return len(source)
    if num_images < 2:
        raise SamplerkitError(f"num_images must be >= 2, got {num_images}")
    if num_images > len(source):
        raise SamplerkitError(f"{source.name} holds {len(source)} images, fewer than the {num_images} requested")
    return num_images


def open_images(src: str | Path, num_images: int | None = None):
    """(source, n): the data source ``src`` (see :mod:`samplerkit.data`) and the number of its images
    to use (default all), after every check that needs no network -- at least 2 images, each
    readable and of one size -- so that a bad file fails before any feature is computed."""
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
    return statistics_of_source_block(source, n, features, reference_metrics(metrics), batch_size, progress)


# ---------------------------------------------------------------------------------------------
# reference statistics


def reference_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    """What a reference must hold for ``metrics``: the Inception Score needs nothing of it."""
    return tuple(m for m in parse_metrics(metrics) if m != "is") or ("fid",)


def _npz_has_images(path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as f:
            return "arr_0" in f.files or "images" in f.files
    except (OSError, ValueError):
        return False


def _stats_file(ref: str | Path) -> Statistics | None:
    path = Path(ref)
    return load_statistics(path) if path.suffix == ".npz" and path.is_file() else None


def _builtin_cache_path(source: str, metrics: Sequence[str], n: int, mode: str = "clean") -> Path:
    """Where the statistics of the first ``n`` images of a built-in data set are cached (under the samplerkit
    cache), per feature mode; the file records the network, and one of another network is not used."""
    pipeline = "" if mode in ("", "clean") else f"|{mode}"
    key = hashlib.sha256(f"{source}|{sorted(metrics)}|{n}{pipeline}".encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9]+", "-", source).strip("-")
    return Path(default_cache_dir()) / "fid-refs" / f"{name}-{key}.npz"


def stored_reference(ref: str | Path, metrics: Sequence[str] = ("fid",), num_images: int | None = None,
                     recompute: bool = False, mode: str = "", network: str = "") -> Statistics | None:
    """Reference statistics that need no feature pass: a statistics npz (clean-fid, EDM ``fid-refs``,
    ``fid-ref`` output, an evaluator reference batch) holding all that ``metrics`` need, or the cached
    statistics of a built-in data set; None when they must be computed from images. A statistics npz
    that lacks what ``metrics`` need and holds no images (``arr_0``) is an error.

    ``mode``: the pipeline of the samples ('' = any). An evaluator reference batch's stored ``mu``/
    ``sigma`` are TensorFlow statistics: used only in legacy-tensorflow mode; in clean mode its
    ``arr_0`` images are measured instead."""
    metrics = reference_metrics(metrics)
    text, path = str(ref), Path(ref)
    stored = _stats_file(path)
    if recompute:
        return None
    if stored is not None:
        if stored.origin == ADM_REFERENCE and mode and mode != stored.mode:
            return None
        missing = [m for m in metrics if m not in stored.metrics()]
        if not missing:
            return stored
        if not _npz_has_images(path):
            what = {"sfid": "spatial statistics (mu_s, sigma_s)", "pr": "pool features (feats)",
                    "kid": "pool features (feats)"}
            raise SamplerkitError(f"{path} has no {' or '.join(dict.fromkeys(what[m] for m in missing))} for "
                                  f"{', '.join(missing)}; rebuild it with metrics "
                                  f"{','.join(metrics)}")
        return None
    if text.startswith("builtin:"):
        cached = _builtin_cache_path(text, metrics, count_images(open_source(text), num_images), mode or "clean")
        if cached.is_file():
            stats = load_statistics(cached)
            if not (network and stats.network and stats.network != network):
                return stats
    return None


def computed_reference(ref: str | Path, source, n: int, features, metrics: Sequence[str] = ("fid",),
                       batch_size: int = 64, recompute: bool = False,
                       progress: Callable[[int], None] | None = None) -> Statistics:
    """Statistics of the first ``n`` images of ``source`` (from :func:`open_images` of ``ref``). A
    built-in data set's are cached (it is deterministic); an evaluator reference batch keeps its
    stored ``mu``/``sigma`` (as the evaluator does) in legacy-tensorflow mode unless ``recompute``."""
    metrics = reference_metrics(metrics)
    computed = _statistics_of(source, n, features, metrics, batch_size, progress)
    text = str(ref)
    if text.startswith("builtin:") and distributed.is_main():
        cached = _builtin_cache_path(text, metrics, n, computed.mode or "clean")
        cached.parent.mkdir(parents=True, exist_ok=True)
        computed.save(cached)
    stored = None if recompute else _stats_file(ref)
    if stored is not None and stored.origin == ADM_REFERENCE and stored.mode == computed.mode:
        computed.mu, computed.sigma = stored.mu, stored.sigma
        if stored.mu_s is not None:
            computed.mu_s, computed.sigma_s = stored.mu_s, stored.sigma_s
        computed.network, computed.origin = "", ADM_REFERENCE
    return computed


def reference(ref: str | Path, features=None, metrics: Sequence[str] = ("fid",), num_images: int | None = None,
              batch_size: int = 64, recompute: bool = False,
              progress: Callable[[int], None] | None = None) -> Statistics:
    """Reference statistics of ``ref``: :func:`stored_reference` when it has them, else computed with
    ``features`` from the npz's images (``arr_0``) or the data source (:func:`computed_reference`)."""
    stored = stored_reference(ref, metrics, num_images, recompute, getattr(features, "mode", ""),
                              getattr(features, "sha256", ""))
    if stored is not None:
        return stored
    if features is None:
        raise SamplerkitError(f"computing statistics of {ref} needs a feature extractor")
    source, n = open_images(ref, num_images)
    return computed_reference(ref, source, n, features, metrics, batch_size, recompute, progress)
