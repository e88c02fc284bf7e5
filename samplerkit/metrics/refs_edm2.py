"""Reference statistics in EDM2's format, and FD_DINOv2 against them (Karras et al. 2024 (EDM2), Sec. 5).

EDM2's ``calculate_metrics.py`` keeps the statistics of an image set in a pickle,
``{'num_images': N, 'fid': {'mu', 'sigma'}, 'fd_dinov2': {'mu', 'sigma'}}`` (numpy float64 arrays;
a file may hold either metric only), and reads EDM's ``.npz`` (``mu``, ``sigma``) as ``{'fid': ...}``.

* :func:`read_reference` reads both. A pickle is never given to ``pickle.load``: the restricted unpickler
  of :mod:`samplerkit.adapters.safe_pickle` runs with an allow-list of the names numpy's array
  pickling uses (``_reconstruct``/``ndarray``/``dtype``, protocol 5's ``_frombuffer``, ``scalar``,
  under numpy 1.x's ``numpy.core`` and numpy 2's ``numpy._core`` module names) plus plain
  containers; numeric dtypes only. Anything else is refused with one line, before it is imported or called.
* :func:`save_reference` writes that layout with a plain pickle (EDM2's ``load_stats`` reads it); each
  entry also records its pipeline -- ``detector``, ``mode`` (the preprocessing) and ``network``
  (sha256 of the weights) -- as plain strings, which EDM2 ignores.
* A statistics entry without a record (EDM2's own files) is taken as made the way EDM2 makes it:
  ``fid`` by the TensorFlow Inception graph at the image's own resolution (samplerkit's
  ``legacy-tensorflow`` mode), ``fd_dinov2`` with the ``torch`` resize. Comparing statistics of different
  pipelines is an error (:func:`check_pipeline`).
"""

from __future__ import annotations

import io
import math
import pickle
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import download
from ..adapters.safe_pickle import ALLOWED_GLOBALS, RestrictedUnpickler
from ..errors import SamplerkitError
from ..output import atomic_write
from .fid import frechet_distance
from .stats import Statistics, check_same_pipeline, load_statistics

EDM2_METRICS = ("fid", "fd_dinov2")
EDM2_ORIGIN = "EDM2 reference statistics"
EDM2_PIPELINES = {"fid": ("inception-v3", "legacy-tensorflow"), "fd_dinov2": ("dinov2-vitl14", "dinov2-torch")}
"""metric -> (detector, mode) of an entry that records none: what EDM2's calculate_metrics.py uses."""

EDM2_REFS_URL = "https://nvlabs-fi-cdn.nvidia.com/edm2/dataset-refs/"
EDM2_REFERENCES = {
    "edm2-img512": ("img512.pkl", "ImageNet 512x512 (EDM2's center-crop-dhariwal img512.zip), fid and fd_dinov2"),
    "edm2-img64": ("img64.pkl", "ImageNet 64x64 (EDM2's img64.zip), fid and fd_dinov2"),
}
"""EDM2's published reference statistics: name -> (file under :data:`EDM2_REFS_URL`, what it is)."""

_OPTIONAL_ARRAYS = ("mu_s", "sigma_s", "feats")  # samplerkit extras kept in an entry when present


# ---------------------------------------------------------------------------------------------
# the restricted unpickler: numpy arrays and plain containers only


class _NdarrayName:
    """What ``numpy.ndarray`` resolves to: a marker ``_reconstruct`` checks for, never instantiated."""


class _ArrayState:
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')``: an empty array that BUILD fills from
    ``(version, shape, dtype, is_fortran, raw bytes)`` (numpy's ``ndarray.__setstate__`` layout)."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state) -> None:
        if self.array is not None or not isinstance(state, tuple) or len(state) != 5 or state[0] != 1:
            raise _refuse("a numpy array with an unexpected state")
        _, shape, dtype, is_fortran, raw = state
        if not isinstance(is_fortran, (bool, int)):
            raise _refuse("a numpy array with an unexpected state")
        self.array = _array_from_bytes(raw, dtype, shape, "F" if is_fortran else "C")


def _refuse(what: str) -> SamplerkitError:
    return SamplerkitError(f"refusing {what} in a statistics pickle; only numpy arrays and plain containers load")


def _numeric_dtype(dtype) -> np.dtype:
    if not hasattr(dtype, "numpy") or not hasattr(dtype, "spec"):  # safe_pickle's numeric dtype stand-in
        raise _refuse("a numpy array without a numeric dtype")
    return dtype.numpy()


def _array_from_bytes(raw, dtype, shape, order: str) -> np.ndarray:
    dt = _numeric_dtype(dtype)
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise _refuse("a numpy array with a malformed shape")
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != math.prod(shape) * dt.itemsize:
        raise _refuse("a numpy array whose data does not match its shape")
    return np.frombuffer(bytes(raw), dtype=dt).reshape(shape, order=order).copy()


def _reconstruct(subtype, shape, typecode) -> _ArrayState:
    if subtype is not _NdarrayName or shape != (0,) or typecode not in (b"b", "b"):
        raise _refuse("a numpy _reconstruct call that does not rebuild a plain ndarray")
    return _ArrayState()


def _frombuffer(buffer, dtype, shape, order) -> np.ndarray:
    """``numpy.core.numeric._frombuffer`` (protocol 5's in-band array data)."""
    if order not in ("C", "F"):
        raise _refuse("a numpy array with an unexpected order")
    return _array_from_bytes(buffer, dtype, shape, order)


STATS_GLOBALS: dict[tuple[str, str], Any] = {("numpy", "ndarray"): _NdarrayName,
                                             ("numpy", "dtype"): ALLOWED_GLOBALS[("numpy", "dtype")],
                                             ("_codecs", "encode"): ALLOWED_GLOBALS[("_codecs", "encode")],
                                             ("collections", "OrderedDict"): OrderedDict}
for _core in ("numpy.core", "numpy._core"):  # numpy 1.x and numpy 2 module names
    STATS_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = _reconstruct
    STATS_GLOBALS[(f"{_core}.multiarray", "scalar")] = ALLOWED_GLOBALS[("numpy._core.multiarray", "scalar")]
    STATS_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = _frombuffer


def _plain(obj, depth: int = 0):
    """The unpickled object with every rebuilt array in place of its :class:`_ArrayState`."""
    if depth > 8:
        raise _refuse("containers nested deeper than statistics are")
    if isinstance(obj, _ArrayState):
        if obj.array is None:
            raise _refuse("a numpy array that was never filled")
        return obj.array
    if isinstance(obj, dict):
        return {k: _plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v, depth + 1) for v in obj)
    return obj


_CORRUPT = (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            OverflowError, RecursionError, UnicodeDecodeError, MemoryError)


def read_pickle(path: str | Path):
    """The objects of the statistics pickle at ``path``, through the allow-list :data:`STATS_GLOBALS`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SamplerkitError(f"cannot read {path} ({err.strerror or err})") from None
    try:
        return _plain(RestrictedUnpickler(io.BytesIO(data), STATS_GLOBALS).load())
    except SamplerkitError as err:
        raise SamplerkitError(f"{path}: {err}") from None
    except _CORRUPT as err:
        detail = " ".join(str(err).split())[:120] or "unexpected end of data"
        raise SamplerkitError(f"{path}: not a readable statistics pickle ({type(err).__name__}: {detail})") from None


# ---------------------------------------------------------------------------------------------
# EDM2's layout <-> Statistics


def _entry_statistics(metric: str, entry, n: int, where: str) -> Statistics:
    if not isinstance(entry, dict) or "mu" not in entry or "sigma" not in entry:
        raise SamplerkitError(f"{where}: its {metric!r} entry is not a dict with 'mu' and 'sigma'")
    mu, sigma = np.asarray(entry["mu"]), np.asarray(entry["sigma"])
    d = mu.shape[0] if mu.ndim == 1 else -1
    if d < 1 or sigma.shape != (d, d) or mu.dtype.kind != "f" or sigma.dtype.kind != "f":
        raise SamplerkitError(f"{where}: {metric} mu {mu.shape} and sigma {sigma.shape} are not float [d] and [d, d]")
    detector, mode = EDM2_PIPELINES[metric]
    recorded = "mode" in entry
    stats = Statistics(mu.astype(np.float64), sigma.astype(np.float64), n,
                       mode=str(entry.get("mode", mode)), network=str(entry.get("network", "")),
                       origin="" if recorded else EDM2_ORIGIN)
    for name in _OPTIONAL_ARRAYS:
        if isinstance(entry.get(name), np.ndarray):
            setattr(stats, name, entry[name])
    if str(entry.get("detector", detector)) != detector:
        raise SamplerkitError(f"{where}: its {metric} entry was made by {entry['detector']}, not {detector}")
    return stats


def edm2_statistics(obj, where: str = "the statistics") -> dict[str, Statistics]:
    """``{'fid': Statistics, 'fd_dinov2': Statistics}`` (those present) of an object in EDM2's layout."""
    if not isinstance(obj, dict) or not any(m in obj for m in EDM2_METRICS):
        raise SamplerkitError(f"{where} is not EDM2 statistics (a dict with 'fid' and/or 'fd_dinov2' entries)")
    n = obj.get("num_images", 0)
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise SamplerkitError(f"{where}: num_images {n!r} is not a count")
    return {m: _entry_statistics(m, obj[m], n, where) for m in EDM2_METRICS if m in obj}


def metric_of(stats: Statistics) -> str:
    """'fd_dinov2' for statistics of DINOv2 features (their ``mode`` says so), else 'fid'."""
    return "fd_dinov2" if stats.mode.startswith("dinov2") else "fid"


def read_reference(path: str | Path) -> dict[str, Statistics]:
    """Reference statistics by metric from an EDM2 ``.pkl`` (restricted unpickler) or a statistics ``.npz``
    (EDM's ``fid-refs``, clean-fid, ``samplerkit fid-ref``; read with ``allow_pickle=False``), as EDM2's
    ``load_stats`` reads them: an npz is one metric, 'fid' unless its recorded mode is DINOv2's."""
    path = Path(path)
    if path.suffix.lower() == ".npz":
        stats = load_statistics(path)
        if stats is None:
            raise SamplerkitError(f"{path} holds no statistics ('mu', 'sigma')")
        return {metric_of(stats): stats}
    return edm2_statistics(read_pickle(path), str(path))


def _entry(stats: Statistics, metric: str) -> dict:
    detector, mode = EDM2_PIPELINES[metric]
    entry: dict[str, Any] = {"mu": np.asarray(stats.mu, np.float64), "sigma": np.asarray(stats.sigma, np.float64),
                             "detector": detector, "mode": stats.mode or mode, "network": stats.network}
    for name in _OPTIONAL_ARRAYS:
        if getattr(stats, name) is not None:
            entry[name] = np.asarray(getattr(stats, name))
    return entry


def save_reference(stats: Mapping[str, Statistics], path: str | Path) -> Path:
    """Write ``{'num_images', 'fid', 'fd_dinov2'}`` (the metrics given) as EDM2's ``save_stats`` does -- a plain
    pickle that its ``load_stats`` reads -- plus each entry's pipeline record; atomically."""
    unknown = sorted(set(stats) - set(EDM2_METRICS))
    if unknown or not stats:
        raise SamplerkitError(f"EDM2 statistics hold {', '.join(EDM2_METRICS)}; got {', '.join(unknown) or 'none'}")
    for metric, s in stats.items():
        if metric_of(s) != metric:
            raise SamplerkitError(f"the {metric} statistics given were made by another detector ({s.mode} mode)")
    counts = {s.n for s in stats.values()}
    obj: dict[str, Any] = {"num_images": int(max(counts))}
    obj.update({m: _entry(s, m) for m, s in stats.items()})
    path = Path(path)
    atomic_write(path, pickle.dumps(obj, protocol=4))
    return path


# ---------------------------------------------------------------------------------------------
# comparing


def reference_for(metric: str, refs: Mapping[str, Statistics], where: str = "the reference") -> Statistics:
    """The ``metric`` entry of ``refs`` (from :func:`read_reference`), or a one-line error saying what it holds."""
    if metric not in EDM2_METRICS:
        raise SamplerkitError(f"unknown metric {metric!r}; use one of {', '.join(EDM2_METRICS)}")
    if metric not in refs:
        held = ", ".join(refs) or "nothing"
        what = " (Inception statistics only)" if set(refs) == {"fid"} else ""
        raise SamplerkitError(f"{where} has no {metric} statistics; it holds {held}{what}: rebuild it with both "
                              "detectors or use one of EDM2's references (edm2-img512, edm2-img64)")
    return refs[metric]


def check_pipeline(metric: str, sample: Statistics, ref: Statistics, force: bool = False) -> None:
    """Statistics of different detectors, preprocessing or weights are not comparable: an error unless ``force``
    (a side that records nothing is not checked). DINOv2's are checked here, Inception's by
    :func:`samplerkit.metrics.check_same_pipeline`."""
    if metric_of(sample) != metric_of(ref) or sample.mu.shape != ref.mu.shape:
        raise SamplerkitError(f"the {metric} reference holds {metric_of(ref)} statistics ({ref.mu.shape[0]}-d, "
                              f"{ref.mode or 'unrecorded'} mode) but the samples' are {metric_of(sample)} "
                              f"({sample.mu.shape[0]}-d, {sample.mode or 'unrecorded'} mode)")
    check_same_pipeline(sample, ref, force, None if metric != "fd_dinov2" else (_dinov2_mode, _dinov2_network))


def _dinov2_mode(sample: Statistics, ref: Statistics) -> str:
    return (f"the fd_dinov2 reference was made with resize_mode={ref.mode.split('-', 1)[1]!r}, the samples with "
            f"{sample.mode.split('-', 1)[1]!r}; use the same resize_mode, or force to compare anyway")


def _dinov2_network(sample: Statistics, ref: Statistics) -> str:
    return (f"the fd_dinov2 reference was made with other DINOv2 weights (sha256 {ref.network[:12]}…, samples "
            f"{sample.network[:12]}…); rebuild it with these weights, or force to compare anyway")


def frechet(metric: str, sample: Statistics, ref: Statistics, force: bool = False) -> float:
    """FID or FD_DINOv2 of ``sample`` against ``ref`` after :func:`check_pipeline`: ||mu1 - mu2||^2 + tr(S1) +
    tr(S2) - 2 tr((S1 S2)^(1/2)), the formula of EDM2's calculate_metrics_from_stats (Heusel et al. 2017)."""
    check_pipeline(metric, sample, ref, force)
    return frechet_distance(sample.mu, sample.sigma, ref.mu, ref.sigma)


def metrics_from_stats(sample: Mapping[str, Statistics], refs: Mapping[str, Statistics],
                       metrics: Sequence[str] = EDM2_METRICS, where: str = "the reference",
                       force: bool = False) -> dict[str, float]:
    """``{'fid': ..., 'fd_dinov2': ...}`` (those of ``metrics``), as EDM2's ``calculate_metrics_from_stats``;
    a metric the samples or the reference lack is an error rather than skipped."""
    out = {}
    for metric in metrics:
        ref = reference_for(metric, refs, where)
        if metric not in sample:
            raise SamplerkitError(f"no {metric} statistics were computed for the samples")
        out[metric] = frechet(metric, sample[metric], ref, force)
    return out


def edm2_reference(name: str, progress: bool = True) -> Path:
    """The cached file of one of EDM2's published references (:data:`EDM2_REFERENCES`), downloaded once."""
    if name not in EDM2_REFERENCES:
        raise SamplerkitError(f"unknown EDM2 reference {name!r}; use one of {', '.join(EDM2_REFERENCES)}")
    file = EDM2_REFERENCES[name][0]
    return download.fetch(EDM2_REFS_URL + file, filename=f"edm2-dataset-refs-{file}", progress=progress, label=name)
