"""DINOv2 ViT-L/14 image features as EDM2 measures FD_DINOv2 (Karras et al. 2024 (EDM2), Sec. 5).

FD_DINOv2 (Stein et al. 2023) is the Fréchet distance between Gaussians fitted to the class-token
features of DINOv2 ViT-L/14 (Oquab et al. 2023, ``dinov2_vitl14``), the model EDM2 ranks its
models by beside FID. The network is written here; its weights are facebookresearch's
``dinov2_vitl14_pretrain.pth``, a plain state dict read with ``torch.load(weights_only=True)``.

The network, as the released backbone computes it in inference:

* a 14x14 stride-14 convolution embeds the patches; a learned class token is put in front;
* the position embedding, learned for 518 px inputs (a 37x37 grid plus the class token), is resized
  bicubically to the input's grid. Upstream resizes with ``scale_factor = (grid + 0.1) / 37`` rather
  than with the output size (a work-around kept for compatibility): the output is the same 16x16
  grid at 224 px, but the sampling positions follow the scale factor, so the same call is made here;
* 24 pre-norm blocks: x + ls1 * attn(norm1(x)), then x + ls2 * mlp(norm2(x)); LayerNorm eps 1e-6,
  16 heads of 64 channels, GELU (erf) MLP of 4096, LayerScale gains ``ls1``/``ls2``;
* a final LayerNorm; the output is the normed class token, 1024 floats.

Preprocessing as EDM2's ``DINOv2Detector``: uint8 images are resized to 224x224, with
``resize_mode="torch"`` (EDM2's default) by bicubic interpolation with antialiasing on float32 pixels,
with ``"pil"`` (dgm-eval's exact pipeline) by PIL's bicubic resize of the uint8 image; then /255 and
ImageNet's mean and standard deviation.

Speed: ``exact`` computes attention with ``scaled_dot_product_attention``, as the released backbone
does since 2025 -- bit for bit what EDM2's script gets from ``torch.hub`` today (without xFormers);
``fast`` adds a channels-last patch embedding. The backbone's arithmetic of 2023 (scaled queries times
keys, softmax, times values) stays available as ``VisionTransformer.forward(x, attention="einsum")``;
all of them compute the same function up to float32 rounding (about 1e-6 of the feature scale).
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .. import download
from ..errors import SamplerkitError
from .inception import Features, as_uint8, resolve_weights

ENV_DINOV2 = "SAMPLERKIT_DINOV2"
DINOV2_FILE = "dinov2_vitl14_pretrain.pth"
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth"
FEATURE_DIM = 1024
RESOLUTION = 224
PATCH_SIZE = 14
HEAD_DIM = 64  # every DINOv2 ViT has 64-channel heads
RESIZE_MODES = ("torch", "pil")
SPEEDS = ("exact", "fast")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POS_OFFSET = 0.1  # upstream's interpolate_offset
VIT_L14 = {"embed_dim": 1024, "depth": 24, "patch_size": 14, "mlp_dim": 4096}
VIT_NAMES = {384: "ViT-S", 768: "ViT-B", 1024: "ViT-L", 1536: "ViT-g"}

_HOW_TO_PROVIDE = (f"download {DINOV2_URL} and set {ENV_DINOV2}=/path/to/{DINOV2_FILE} (a file or its folder), "
                   "or let samplerkit download it (unset SAMPLERKIT_OFFLINE)")


# ---------------------------------------------------------------------------------------------
# the network; module and parameter names follow the released state dict


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, C, h, w] -> [B, h*w, C], rows first


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attention: str = "sdpa") -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        if attention == "sdpa":
            q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            qkv = qkv.permute(2, 0, 3, 1, 4)
            weights = (qkv[0] * self.scale) @ qkv[1].transpose(-2, -1)
            out = weights.softmax(dim=-1) @ qkv[2]
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor, attention: str = "sdpa") -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), attention))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """DINOv2's ViT backbone in inference: ``forward(x)`` -> the normed class token [B, embed_dim]."""

    def __init__(self, embed_dim: int = 1024, depth: int = 24, num_heads: int = 16, mlp_dim: int = 4096,
                 patch_size: int = PATCH_SIZE, grid: int = 37):
        super().__init__()
        self.patch_size, self.grid = patch_size, grid
        self.patch_embed = PatchEmbed(embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # training only; kept for a strict load
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        """The position embedding for an input of ``height`` x ``width`` pixels (see the module docstring)."""
        rows, cols = height // self.patch_size, width // self.patch_size
        if rows == cols == self.grid:
            return self.pos_embed
        pos = self.pos_embed.float()
        dim = pos.shape[-1]
        grid = pos[:, 1:].reshape(1, self.grid, self.grid, dim).permute(0, 3, 1, 2)
        scale = ((rows + POS_OFFSET) / self.grid, (cols + POS_OFFSET) / self.grid)
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
        return torch.cat([pos[:, :1], grid], dim=1).to(self.pos_embed.dtype)

    def forward(self, x: torch.Tensor, attention: str = "sdpa", channels_last: bool = False) -> torch.Tensor:
        height, width = x.shape[-2:]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embedding(height, width)
        for block in self.blocks:
            tokens = block(tokens, attention)
        return self.norm(tokens)[:, 0]


# ---------------------------------------------------------------------------------------------
# weights: what a state dict holds, finding the file, loading it


def _count_blocks(state: dict) -> int:
    depth = 0
    while f"blocks.{depth}.norm1.weight" in state:
        depth += 1
    return depth


def vit_config(state: dict) -> dict:
    """The architecture a DINOv2 backbone state dict implies: embed_dim, depth, mlp_dim, patch_size,
    grid (of its position embedding) and registers (register tokens); an error if it is not one."""
    try:
        dim = int(state["cls_token"].shape[-1])
        patch = int(state["patch_embed.proj.weight"].shape[-1])
        n_pos = int(state["pos_embed"].shape[1]) - 1
        fc1 = state.get("blocks.0.mlp.fc1.weight")
        mlp_dim = int(fc1.shape[0]) if fc1 is not None else 0  # 0: not a plain MLP (ViT-g's SwiGLU)
    except (KeyError, AttributeError, IndexError, TypeError):
        raise SamplerkitError("not a DINOv2 backbone state dict (no cls_token, pos_embed and patch_embed.proj "
                              "tensors); use facebookresearch's dinov2_vitl14_pretrain.pth") from None
    grid = math.isqrt(n_pos)
    registers = state.get("register_tokens")
    return {"embed_dim": dim, "depth": _count_blocks(state), "mlp_dim": mlp_dim, "patch_size": patch,
            "grid": grid if grid * grid == n_pos else -1,
            "registers": int(registers.shape[1]) if registers is not None else 0}


def describe(config: dict) -> str:
    """'ViT-S/14 (embed dim 384, depth 12)' for a :func:`vit_config`."""
    name = VIT_NAMES.get(config["embed_dim"], "ViT")
    regs = f", {config['registers']} register tokens" if config["registers"] else ""
    return f"{name}/{config['patch_size']} (embed dim {config['embed_dim']}, depth {config['depth']}{regs})"


def check_vit_l14(config: dict, where: str) -> None:
    """A one-line error unless ``config`` is DINOv2 ViT-L/14 without register tokens (``dinov2_vitl14``)."""
    if any(config[k] != v for k, v in VIT_L14.items()) or config["registers"] or config["grid"] < 1:
        raise SamplerkitError(f"{where} holds a DINOv2 {describe(config)}; FD_DINOv2 needs ViT-L/14 (embed dim "
                              f"1024, depth 24, no register tokens), facebookresearch's {DINOV2_FILE}")


def vit_from_state_dict(state: dict, num_heads: int | None = None, where: str = "the state dict") -> VisionTransformer:
    """A :class:`VisionTransformer` of the architecture ``state`` implies, its tensors loaded strictly (cast to
    float32, as upstream's ``load_state_dict`` into a float32 model). ``num_heads``: default embed_dim / 64."""
    config = vit_config(state)
    if config["registers"] or config["grid"] < 1 or not config["mlp_dim"] or not config["depth"]:
        raise SamplerkitError(f"{where} is a DINOv2 backbone this loader does not build ({describe(config)}, "
                              f"mlp {config['mlp_dim'] or 'SwiGLU'}); use {DINOV2_FILE}")
    heads = num_heads or config["embed_dim"] // HEAD_DIM
    with torch.device("meta"):
        model = VisionTransformer(config["embed_dim"], config["depth"], heads, config["mlp_dim"],
                                  config["patch_size"], config["grid"])
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        first = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected
                 else f"{wrong[0]} is {tuple(state[wrong[0]].shape)}, expected {expected[wrong[0]]}")
        raise SamplerkitError(f"{where} does not match the DINOv2 {describe(config)} layout "
                              f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} mis-shaped "
                              f"keys; {first})")
    tensors = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def dinov2_path(path: str | Path | None = None) -> Path:
    """The weights file: ``path`` (a file or its folder), else ``$SAMPLERKIT_DINOV2``, else the samplerkit
    cache, downloaded there from facebookresearch's URL (:data:`DINOV2_URL`) when missing."""
    return resolve_weights(path, env=ENV_DINOV2, filename=DINOV2_FILE, what="DINOv2 weights", how=_HOW_TO_PROVIDE,
                           url=DINOV2_URL)


def read_state_dict(path: str | Path) -> dict:
    """The state dict in ``path``, read with ``torch.load(weights_only=True)`` (memory-mapped when the file
    allows): a dict of tensors, else a one-line error."""
    path = Path(path)
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):  # a legacy (non-zip) torch.save file cannot be memory-mapped
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        detail = " ".join(str(err).split())[:160]
        raise SamplerkitError(f"cannot read DINOv2 weights from {path} with torch.load(weights_only=True) "
                              f"({type(err).__name__}: {detail})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SamplerkitError(f"{path} is not a plain state dict of tensors (as {DINOV2_FILE}); a training "
                              "checkpoint must be converted to the backbone's state dict first")
    return state


def weights_sha256(state: dict) -> str:
    """sha256 of a state dict's tensors (name, dtype, shape and bytes of each, in name order): what the
    features depend on, so a re-saved copy of the same weights keeps its digest (as
    :func:`samplerkit.metrics.network_sha256` for Inception)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)  # the bytes in place, no copy
    return h.hexdigest()


_MODELS: dict[tuple, tuple[VisionTransformer, str]] = {}


def load_dinov2(path: str | Path | None = None, device: str | torch.device = "cpu") -> tuple[VisionTransformer, str]:
    """(the ViT-L/14 of :func:`dinov2_path`, the sha256 of its weights), loaded once per file and device.
    Any ViT-L/14 state dict is accepted; weights of another size are a one-line error naming it."""
    file = dinov2_path(path)
    device = torch.device(device)
    st = file.stat()
    key = (str(file.resolve()), st.st_size, st.st_mtime_ns, str(device))
    if key not in _MODELS:
        state = read_state_dict(file)
        check_vit_l14(vit_config(state), str(file))
        digest = weights_sha256(state)
        model = vit_from_state_dict(state, where=str(file)).to(device)
        _MODELS[key] = (model, digest)
        if path is None and not os.environ.get(ENV_DINOV2):
            download.trust(file, DINOV2_URL)  # the downloaded file loaded: its digest becomes the trusted one
    return _MODELS[key]


# ---------------------------------------------------------------------------------------------
# images in, features out


def check_resize_mode(resize_mode: str) -> str:
    name = str(resize_mode).strip().lower()
    if name not in RESIZE_MODES:
        raise SamplerkitError(f"unknown resize_mode {resize_mode!r}; use one of {', '.join(RESIZE_MODES)}")
    return name


def as_nchw_uint8(images) -> torch.Tensor:
    """uint8 [N, 3, H, W] (a tensor, as ``sk.decode`` returns and EDM2's detectors take) or [N, H, W, 3]
    (an array or tensor, as samplerkit's data sources give), or float [-1, 1] [N, 3, H, W] rounded as
    saved to PNG -> a uint8 [N, 3, H, W] tensor. Where both readings fit (3 x 3 images) a tensor is
    taken as NCHW and an array as NHWC."""
    is_uint8 = (isinstance(images, np.ndarray) and images.dtype == np.uint8) or (
        isinstance(images, torch.Tensor) and images.dtype == torch.uint8)
    if not is_uint8:
        return torch.from_numpy(as_uint8(images)).permute(0, 3, 1, 2)
    x = torch.as_tensor(images)
    if x.ndim == 4 and x.shape[1] == 3 and (x.shape[-1] != 3 or isinstance(images, torch.Tensor)):
        return x
    if x.ndim == 4 and x.shape[-1] == 3:
        return x.permute(0, 3, 1, 2)
    raise SamplerkitError(f"uint8 images must be [N, 3, H, W] or [N, H, W, 3] RGB, got shape {tuple(x.shape)}")


def pil_resize(x: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> uint8 [N, 3, 224, 224] by PIL's bicubic resize of each RGB image (dgm-eval)."""
    arrays = x.permute(0, 2, 3, 1).cpu().numpy()
    out = [np.asarray(Image.fromarray(a, "RGB").resize((RESOLUTION, RESOLUTION), Image.Resampling.BICUBIC))
           for a in arrays]
    stacked = np.stack(out) if out else np.empty((0, RESOLUTION, RESOLUTION, 3), np.uint8)
    return torch.from_numpy(stacked).permute(0, 3, 1, 2)


def preprocess(x: torch.Tensor, resize_mode: str = "torch") -> torch.Tensor:
    """uint8 [N, 3, H, W] -> the network's float32 input [N, 3, 224, 224] on ``x``'s device, in the order
    of EDM2's detector: resize, /255, minus the ImageNet mean, over the ImageNet standard deviation."""
    if check_resize_mode(resize_mode) == "pil":
        x = pil_resize(x).to(x.device)
    else:
        x = F.interpolate(x.to(torch.float32), size=(RESOLUTION, RESOLUTION), mode="bicubic", antialias=True)
    x = x.to(torch.float32) / 255
    x = x - torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    return x / torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)


def check_speed(speed: str) -> str:
    name = str(speed or "exact").strip().lower()
    if name not in SPEEDS:
        raise SamplerkitError(f"unknown speed {speed!r} for DINOv2 features; use one of {', '.join(SPEEDS)}")
    return name


class DINOv2:
    """DINOv2 features of images, EDM2's preprocessing in ``resize_mode``; ``speed`` 'exact' | 'fast' (see
    the module docstring). Calling the object gives a float32 [N, 1024] numpy array; ``extract`` the same as
    :class:`~samplerkit.metrics.Features` (as Inception's), so it serves wherever samplerkit takes a feature
    extractor (:class:`samplerkit.metrics.StatsBuilder`).
    ``mode`` ('dinov2-torch' / 'dinov2-pil') and ``sha256`` (of the weights) name the pipeline in statistics."""

    detector = "dinov2-vitl14"

    def __init__(self, model: VisionTransformer, device: str | torch.device = "cpu", batch_size: int = 32,
                 resize_mode: str = "torch", sha256: str = "", speed: str = "exact"):
        self.model = model
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.resize_mode = check_resize_mode(resize_mode)
        self.sha256 = sha256
        self.speed = check_speed(speed)
        self.dim = int(model.norm.weight.shape[0])

    @property
    def mode(self) -> str:
        return f"dinov2-{self.resize_mode}"

    def forward(self, images) -> torch.Tensor:
        """Features as a float32 tensor on the device, one batch (no batching)."""
        x = preprocess(as_nchw_uint8(images).to(self.device).contiguous(), self.resize_mode)  # NCHW as upstream
        fast = self.speed == "fast"
        with torch.inference_mode():
            return self.model(x, attention="sdpa", channels_last=fast)

    def extract(self, images, spatial: bool = False, logits: bool = False) -> Features:
        """:class:`~samplerkit.metrics.Features` with the DINOv2 features as ``pool`` (the interface of
        :meth:`samplerkit.metrics.Inception.extract`); DINOv2 has no spatial features or logits."""
        if spatial or logits:
            raise SamplerkitError(f"DINOv2 features have no {'spatial features (sFID)' if spatial else 'logits (IS)'}; "
                                  "those metrics use Inception")
        x = as_nchw_uint8(images)
        parts = [self.forward(x[i : i + self.batch_size]).float().cpu().numpy()
                 for i in range(0, len(x), self.batch_size)]
        return Features(np.concatenate(parts) if parts else np.empty((0, self.dim), np.float32))

    def __call__(self, images) -> np.ndarray:
        return self.extract(images).pool


def extractor(path: str | Path | None = None, device: str | torch.device = "cpu", batch_size: int = 32,
           resize_mode: str = "torch", speed: str = "exact") -> DINOv2:
    """The FD_DINOv2 feature extractor: ViT-L/14 weights from :func:`dinov2_path` (loaded once per file and device)."""
    resize_mode, speed = check_resize_mode(resize_mode), check_speed(speed)
    model, digest = load_dinov2(path, device)
    return DINOv2(model, device, batch_size, resize_mode, digest, speed)


def dinov2_features(images, resize_mode: str = "torch", *, path: str | Path | None = None,
                    device: str | torch.device = "cpu", batch_size: int = 32, speed: str = "exact") -> np.ndarray:
    """DINOv2 ViT-L/14 features [N, 1024] (float32) of uint8 images, computed as EDM2's ``calculate_metrics.py``
    does for FD_DINOv2: ``resize_mode`` 'torch' (EDM2's default) or 'pil' (dgm-eval's exact resize).
    Images: uint8 [N, 3, H, W] or [N, H, W, 3] (see :func:`as_nchw_uint8`); weights: ``path``, else
    ``$SAMPLERKIT_DINOV2``, else downloaded into the samplerkit cache."""
    return extractor(path, device, batch_size, resize_mode, speed)(images)
