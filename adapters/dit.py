"""DiT and SiT latent transformers -> D(x; sigma).

**The network** (Peebles & Xie 2023 (DiT), Sec. 3; the same backbone in Ma et al. 2024 (SiT)):
the latent [B, C, h, w] is cut into p x p patches, embedded with a fixed 2-D sin-cos position
table, and run through ``depth`` transformer blocks whose layer norms are modulated by the sum of
a timestep embedding and a class embedding (adaLN-Zero); a final modulated linear layer maps every
token back to a p x p patch of ``out_channels`` (2C with a learned-variance head, else C). The
class table has ``num_classes + 1`` rows when trained with label dropout: the last row is the null
label of classifier-free guidance (Ho & Salimans 2022). Every configuration of the upstream model
tables, ``{DiT,SiT}-{XL,L,B,S}/{2,4,8}`` (:data:`ARCHS`), is built from the state dict's own
shapes; the state dicts of DiT and SiT are identical in keys and shapes, so ``family`` says which.

**DiT** is guided-diffusion's process (linear beta, T = 1000, eps prediction, learned Sigma):
:class:`DiTDenoiser` is a :class:`~samplerkit.denoisers.DiscreteEpsDenoiser`,
D(x; sigma) = x - sigma eps(x / sqrt(1 + sigma^2), t(sigma)) with t(sigma) the nearest trained
level (Karras et al. 2022 (EDM), Table 1, iDDPM row); the variance channels are v of
Nichol & Dhariwal 2021, Eq. 15, from the same pass.

**SiT** (linear interpolant, velocity prediction). SiT's time runs from noise to data:
x_t = t y + (1 - t) n with y the data, n ~ N(0, I), so t = 0 is pure noise and t = 1 the data
(``transport/path.py``: alpha_t = t multiplies the data, sigma_t = 1 - t the noise), and the
network predicts the velocity u(x_t, t) = dx_t/dt = E[y - n | x_t]. Dividing by t,

    x_t / t = y + ((1 - t) / t) n,

which is EDM's sigma-space x = y + sigma n with

    sigma = (1 - t) / t,    t = 1 / (1 + sigma),    x_t = x / (1 + sigma)   (scaling s(sigma) = t).

From x_t = t y + (1 - t) n and u = y - n: x_t + (1 - t) u = y, so the denoiser is exactly

    D(x; sigma) = x_t + (1 - t) u(x_t, t) = (x + sigma u(x / (1 + sigma), 1 / (1 + sigma))) / (1 + sigma),

i.e. c_skip = c_in = 1 / (1 + sigma), c_out = sigma / (1 + sigma), c_noise = t. Every finite
sigma >= 0 is evaluated as is (no clamping; ``sigma_max`` is inf). sigma = inf is t = 0, where
x itself is infinite: the sigma-space samplers start at ``latents * sigmas[0]`` and need a finite
sigma_0; :func:`samplerkit.schedules.flow` puts SiT's uniform t grid in sigma with a finite
stand-in for t = 0 (its effect is measured in ``tests/test_adapter_dit.py``). Euler in sigma-space
on this D is Euler on SiT's ODE dx_t/dt = u in t (the same step, rearranged), so ``euler`` on the
grid of :func:`samplerkit.schedules.flow` reproduces SiT's fixed-step Euler ODE sampler.

SiT's own samplers (its reverse SDE with the diffusion forms and last steps of ``sample_sde``, and
``sample_ode``) are :func:`samplerkit.samplers.sit_sde` and :func:`samplerkit.samplers.sit_ode`; they run
in t-space on this D, with u = (D - x_t) / (1 - t) and the score (t D - x_t) / (1 - t)^2 (derived in
:mod:`samplerkit.samplers.sit`), and find this denoiser by its ``interpolant = "linear"``. SiT's
``--num-sampling-steps N`` is N time points, N - 1 steps: its Euler ODE with N is ``euler`` on
``schedules.flow(N - 1)``.

Latent space: the model lives in the Stable Diffusion VAE's latents times ``latent_scale``
(0.18215, how DiT and SiT were trained); ``autoencoder=`` names the VAE (a zoo name or a local
diffusers folder) that ``net.autoencoder`` decodes with.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from samplerkit.autoencoders import ScaledVAE
from samplerkit.denoisers import Denoiser, DiscreteEpsDenoiser, _per_sample
from samplerkit.diffusion import alpha_bar_from_betas, betas_for
from samplerkit.errors import SamplerkitError
from samplerkit.speed import Network

FAMILIES = ("dit", "sit")
# (depth, hidden_size, num_heads) of the upstream model tables; the patch size is the /2, /4, /8
SIZES: dict[str, tuple[int, int, int]] = {"XL": (28, 1152, 16), "L": (24, 1024, 16), "B": (12, 768, 12),
                                          "S": (12, 384, 6)}
ARCHS = tuple(f"{fam}-{size}/{p}" for fam in ("DiT", "SiT") for size in SIZES for p in (2, 4, 8))
DEFAULT_AUTOENCODER = "sd-vae-ft-ema"  # DiT's and SiT's sample_ddp.py: --vae ema
LATENT_SCALE = 0.18215  # SD VAE latents are multiplied by this before training (DiT sample.py: z / 0.18215)
VAE_DOWNSAMPLE = 8  # latent_size = image_size // 8 in DiT's and SiT's scripts
ATTENTION_BACKENDS = ("einsum", "sdpa")

# ---------------------------------------------------------------------------------------------
# the transformer (parameter names and shapes as upstream's state dicts)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (1 + scale) + shift per token."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos(t f_k), sin(t f_k)] with f_k = max_period^(-k / (dim/2)), k < dim/2, in float32 (GLIDE's)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1) if dim % 2 else emb


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """The fixed 2-D sin-cos position table [grid^2, dim] (MAE's): half the channels encode the row
    index, half the column, each as [sin(pos w_k), cos(pos w_k)] with w_k = 10000^(-k / (dim/4))."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32), indexing="ij")

    def one(pos):
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return torch.from_numpy(np.concatenate([one(cols), one(rows)], axis=1)).float()


class Attention(nn.Module):
    """Multi-head self-attention (qkv with bias, output projection). ``backend`` "einsum" is the
    upstream arithmetic (softmax((q d^-1/2) k^T) v); "sdpa" is scaled_dot_product_attention (same
    function, different rounding)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise SamplerkitError(f"hidden size {dim} does not split into {num_heads} heads")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.backend = "einsum"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.backend == "sdpa":
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            x = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def _ada_ln(dim: int, chunks: int) -> nn.Sequential:
    return nn.Sequential(nn.SiLU(), nn.Linear(dim, chunks * dim))


class Block(nn.Module):
    """Transformer block with adaLN-Zero conditioning (Peebles & Xie 2023, Sec. 3.2, Fig. 3)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = _ada_ln(dim, 6)

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = _ada_ln(dim, 2)

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class _PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class _TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):
        return self.mlp(timestep_embedding(t, self.frequency_size))


class _LabelEmbedder(nn.Module):
    def __init__(self, rows: int, dim: int):
        super().__init__()
        self.embedding_table = nn.Embedding(rows, dim)

    def forward(self, y):
        return self.embedding_table(y)


class DiT(Network):
    """The DiT / SiT transformer: ``forward(x, t, y) -> [B, out_channels, H, W]`` on latents x,
    time t [B] (DiT: the integer training timestep; SiT: t in [0, 1]) and int labels y [B]
    (``num_classes`` = the null label when ``label_rows = num_classes + 1``)."""

    def __init__(self, input_size: int, patch_size: int, in_channels: int, hidden_size: int, depth: int,
                 num_heads: int, out_channels: int, label_rows: int, mlp_ratio: float = 4.0):
        super().__init__()
        if input_size % patch_size:
            raise SamplerkitError(f"latent size {input_size} is not a multiple of the patch size {patch_size}")
        self.in_channels, self.out_channels, self.patch_size = in_channels, out_channels, patch_size
        self.input_size, self.num_heads, self.label_rows = input_size, num_heads, label_rows
        self.x_embedder = _PatchEmbed(in_channels, hidden_size, patch_size)
        self.t_embedder = _TimestepEmbedder(hidden_size)
        self.y_embedder = _LabelEmbedder(label_rows, hidden_size)
        grid = input_size // patch_size
        self.pos_embed = nn.Parameter(sincos_pos_embed(hidden_size, grid).unsqueeze(0), requires_grad=False)
        self.blocks = nn.ModuleList([Block(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, out_channels)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, h w, p p C] tokens -> [B, C, h p, w p]."""
        p, c, h = self.patch_size, self.out_channels, self.input_size // self.patch_size
        return x.reshape(x.shape[0], h, h, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(x.shape[0], c, h * p, h * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))

    def attention_blocks(self) -> list[nn.Module]:
        """The attention layers whose ``backend`` the speed policy sets (samplerkit.speed.Network)."""
        return [m for m in self.modules() if isinstance(m, Attention)]

    def set_attention_backend(self, backend: str) -> None:
        """Run every attention layer with the upstream ``"einsum"`` arithmetic (default) or ``"sdpa"``."""
        if backend not in ATTENTION_BACKENDS:
            raise SamplerkitError(f"attention backend must be one of {', '.join(ATTENTION_BACKENDS)}, got {backend!r}")
        for m in self.modules():
            if isinstance(m, Attention):
                m.backend = backend


# ---------------------------------------------------------------------------------------------
# the configuration a state dict implies


def shapes_of(sd: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """depth, hidden_size, patch_size, in/out channels, latent input size and class rows of a
    DiT/SiT state dict (upstream key names)."""
    try:
        proj = sd["x_embedder.proj.weight"]
        hidden, in_channels, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
        blocks = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
        tokens = sd["pos_embed"].shape[1]
        out = sd["final_layer.linear.weight"].shape[0] // (patch * patch)
        rows = sd["y_embedder.embedding_table.weight"].shape[0]
    except (KeyError, IndexError, AttributeError):
        raise SamplerkitError("not a DiT/SiT state dict (no x_embedder.proj / pos_embed / final_layer.linear / "
                              "y_embedder weights); pass the model's .pt or a train.py checkpoint") from None
    grid = math.isqrt(tokens)
    return dict(depth=len(blocks), hidden_size=hidden, patch_size=patch, in_channels=in_channels, out_channels=out,
                input_size=grid * patch, label_rows=rows)


def arch_of(shapes: Mapping[str, int], family: str) -> str | None:
    """The model-table name (``DiT-XL/2``) of the shapes, or None when no table entry has them."""
    prefix = "DiT" if family == "dit" else "SiT"
    for size, (depth, hidden, _) in SIZES.items():
        if (depth, hidden) == (shapes["depth"], shapes["hidden_size"]) and shapes["patch_size"] in (2, 4, 8):
            return f"{prefix}-{size}/{shapes['patch_size']}"
    return None


def _describe(shapes: Mapping[str, int]) -> str:
    return f"depth {shapes['depth']}, hidden size {shapes['hidden_size']}, patch {shapes['patch_size']}"


def resolve_config(shapes: Mapping[str, int], family: str, arch: str | None, num_heads: int | None) -> int:
    """The number of heads: from ``arch`` (checked against the shapes) or the table entry the shapes
    match, else ``num_heads``. An ``arch`` the weights contradict is a one-line error naming theirs."""
    implied = arch_of(shapes, family)
    if arch is not None:
        m = re.fullmatch(r"(DiT|SiT)-(XL|L|B|S)/(2|4|8)", str(arch).strip())
        if m is None:
            raise SamplerkitError(f"unknown arch {arch!r}; use one of the model tables' names, e.g. "
                                  f"{'DiT' if family == 'dit' else 'SiT'}-XL/2 (or pass num_heads= for another size)")
        depth, hidden, heads = SIZES[m.group(2)]
        if (depth, hidden, int(m.group(3))) != (shapes["depth"], shapes["hidden_size"], shapes["patch_size"]):
            which = implied or f"no configuration of the model table ({_describe(shapes)}; pass num_heads=)"
            raise SamplerkitError(f"arch {arch} contradicts the weights: they are {which}")
        if num_heads is not None and int(num_heads) != heads:
            raise SamplerkitError(f"arch {arch} has {heads} heads, not num_heads={num_heads}")
        return heads
    if num_heads is not None:
        return int(num_heads)
    if implied is None:
        raise SamplerkitError(f"the weights ({_describe(shapes)}) are no configuration of the DiT/SiT model "
                              "tables; pass num_heads=")
    return SIZES[implied.split("-")[1].split("/")[0]][2]


# ---------------------------------------------------------------------------------------------
# reading checkpoints


def read_checkpoint(path: str | Path, device: Any = "cpu") -> dict[str, torch.Tensor]:
    """The network weights of a released ``.pt`` (a bare state dict) or of a ``train.py`` checkpoint
    (its ``ema`` entry), read with ``torch.load(weights_only=True)``.

    ``train.py`` pickles its ``argparse.Namespace`` under ``args``; exactly that class is allowed
    (``torch.serialization.safe_globals``), every other non-tensor global is refused.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise SamplerkitError(f"checkpoint not found: {path}") from None
    except Exception as err:
        text = " ".join(str(err).split())
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        reason = (f"it pickles {refused.group(1)}, which is not allowed" if refused
                  else text.split(". ")[0].rstrip(".") if text else type(err).__name__)
        raise SamplerkitError(f"{path.name} is not a readable DiT/SiT checkpoint ({reason}); pass the released "
                              ".pt or a train.py checkpoint") from None
    if isinstance(obj, Mapping) and "ema" in obj:
        obj = obj["ema"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SamplerkitError(f"{path.name} holds a {type(obj).__name__}, not a state dict of tensors; pass the "
                              "released .pt or a train.py checkpoint (its 'ema' weights are used)")
    return {str(k): v for k, v in obj.items()}


def build(sd: Mapping[str, torch.Tensor], num_heads: int) -> DiT:
    """The network of ``sd``'s shapes with ``num_heads`` heads, holding ``sd``'s tensors (strict)."""
    s = shapes_of(sd)
    with torch.device("meta"):
        net = DiT(s["input_size"], s["patch_size"], s["in_channels"], s["hidden_size"], s["depth"], num_heads,
                  s["out_channels"], s["label_rows"])
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    problems = [f"missing {k}" for k in expected if k not in sd] + [f"unexpected {k}" for k in sd if k not in expected]
    problems += [f"{k} {tuple(sd[k].shape)} vs {expected[k]}" for k in expected if k in sd
                 and tuple(sd[k].shape) != expected[k]]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise SamplerkitError(f"the state dict is not a DiT/SiT network: {', '.join(problems[:3])}{more}")
    net.load_state_dict(sd, strict=True, assign=True)
    return net.float().eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# denoisers


class _Latent:
    """What DiT's and SiT's denoisers share: int labels with the null label, and the latent space."""

    num_classes: int = 0
    null_label: int | None = None  # the label of the unconditional pass (classifier-free guidance)
    latent_scale: float = LATENT_SCALE
    autoencoder = None

    def network_labels(self, class_labels, batch: int, device) -> torch.Tensor:
        """int64 labels [B] for the network: ints in [0, num_classes), the null label ``num_classes``
        (unconditional) where the model has one, or one-hot [B, num_classes]."""
        labels = torch.as_tensor(class_labels, device=device) if class_labels is not None else None
        if labels is not None and labels.ndim == 1 and not labels.dtype.is_floating_point and labels.numel() == batch:
            top = self.num_classes if self.null_label is not None else self.num_classes - 1
            if labels.numel() and int(labels.min()) >= 0 and int(labels.max()) <= top:
                return labels.long()
        return self.prepare_labels(class_labels, batch, device).argmax(dim=1)


class DiTDenoiser(_Latent, DiscreteEpsDenoiser):
    """DiT as the learned-Sigma discrete eps-model (module docstring): eps_fn is the transformer,
    fed the integer training timestep as upstream's respaced sampler does."""

    def __init__(self, network: DiT, num_classes: int, alphas_cumprod):
        C = network.in_channels
        super().__init__(network, alphas_cumprod, learned_variance=network.out_channels == 2 * C,
                         img_channels=C, img_resolution=network.input_size, label_dim=num_classes)
        self.num_classes = num_classes
        self.null_label = num_classes if network.label_rows == num_classes + 1 else None

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, class_labels=None):
        return super().eps(x_t, t, self.network_labels(class_labels, x_t.shape[0], x_t.device))

    @property
    def network(self) -> DiT:
        return self.eps_fn


class SiTDenoiser(_Latent, Denoiser):
    """SiT's velocity as D(x; sigma) = x_t + (1 - t) u(x_t, t), t = 1 / (1 + sigma), x_t = t x
    (module docstring). sigma_max is inf: every finite sigma is evaluated as given."""

    sigma_min, sigma_max = 0.0, float("inf")
    interpolant = "linear"  # x_t = t y + (1 - t) n: what samplerkit.samplers.sit_sde / sit_ode run on

    def __init__(self, network: DiT, num_classes: int):
        super().__init__()
        self.network = network
        self.img_channels, self.img_resolution = network.in_channels, network.input_size
        self.label_dim = self.num_classes = num_classes
        self.null_label = num_classes if network.label_rows == num_classes + 1 else None
        self.dtype = torch.float32

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, class_labels=None) -> torch.Tensor:
        """u(x_t, t) of the network (its first C channels: SiT drops a learned-sigma head's rest)."""
        y = self.network_labels(class_labels, x_t.shape[0], x_t.device)
        out = self.network(x_t.to(self.dtype), t.to(self.dtype).expand(x_t.shape[0]), y)
        return out[:, : self.img_channels]

    def forward(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        sigma = _per_sample(sigma, x)
        t = 1 / (1 + sigma)  # c_skip = c_in = t
        x_t = t * x.to(torch.float64)
        u = self.velocity(x_t, t.flatten(), class_labels).to(torch.float64)
        return x_t + (1 - t) * u  # c_out = 1 - t = sigma / (1 + sigma)


def attach_autoencoder(net: _Latent, autoencoder: str | Path | None, latent_scale: float) -> None:
    """``net.autoencoder``: the VAE named by ``autoencoder`` (zoo name or diffusers folder, loaded at
    first decode) scaled by ``latent_scale`` (:class:`samplerkit.autoencoders.ScaledVAE`)."""
    try:
        net.latent_scale = float(latent_scale)
    except (TypeError, ValueError):
        raise SamplerkitError(f"latent_scale must be a positive number, got {latent_scale!r}") from None
    net.autoencoder_name = None if autoencoder is None else str(autoencoder)
    if autoencoder is not None:
        net.autoencoder = ScaledVAE(autoencoder, scale=net.latent_scale)


def _int_flag(name: str, value) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SamplerkitError(f"{name} must be an integer, got {value!r}") from None


def _check_sizes(shapes: Mapping[str, int], image_size, num_classes) -> tuple[int, int]:
    """(latent size, num_classes) from the flags, checked against the weights; the weights' own when None."""
    latent = shapes["input_size"]
    if image_size is not None and int(image_size) // VAE_DOWNSAMPLE != latent:
        raise SamplerkitError(f"image_size={image_size} contradicts the weights: their position table is for "
                              f"{latent}x{latent} latents, i.e. image_size={latent * VAE_DOWNSAMPLE}")
    rows = shapes["label_rows"]
    if num_classes is None:
        return latent, rows - 1  # upstream trains with label dropout: the last row is the null label
    if num_classes not in (rows, rows - 1):
        raise SamplerkitError(f"num_classes={num_classes} contradicts the weights: their class table has {rows} "
                              f"rows, i.e. num_classes={rows - 1} (plus the null label)")
    return latent, num_classes


def load_checkpoint(path: str | Path, family: str = "dit", device: Any = "cpu", arch: str | None = None,
                    image_size: int | None = None, num_classes: int | None = None, num_heads: int | None = None,
                    autoencoder: str | Path | None = DEFAULT_AUTOENCODER, latent_scale: float = LATENT_SCALE,
                    learn_sigma=None, **flags) -> DiTDenoiser | SiTDenoiser:
    """A DiT (``family="dit"``) or SiT (``"sit"``) checkpoint -> D(x; sigma).

    ``arch`` (``"DiT-XL/2"`` ...), ``image_size`` (pixels; latents are image_size // 8) and
    ``num_classes`` are checked against the weights and default to what they imply; ``num_heads``
    only for a size outside the model tables. The head width (learned Sigma or not) is read from the
    weights (``learn_sigma`` is accepted for upstream's flag and must agree). ``autoencoder``: the
    VAE ``net.autoencoder`` decodes with (default sd-vae-ft-ema, ``sample_ddp.py``'s default for both
    DiT and SiT; None for no autoencoder); ``latent_scale``: how the model's latents were scaled.
    """
    if family not in FAMILIES:
        raise SamplerkitError(f"unknown family {family!r}; use dit or sit")
    if flags:
        raise SamplerkitError(f"unexpected {family} options {sorted(flags)}; use arch, image_size, num_classes, "
                              "num_heads, autoencoder, latent_scale")
    sd = read_checkpoint(path, device)
    shapes = shapes_of(sd)
    heads = resolve_config(shapes, family, arch, _int_flag("num_heads", num_heads))
    _, classes = _check_sizes(shapes, _int_flag("image_size", image_size), _int_flag("num_classes", num_classes))
    learned = shapes["out_channels"] == 2 * shapes["in_channels"]
    if learn_sigma is not None and str(learn_sigma).lower() in ("true", "1", "false", "0") \
            and (str(learn_sigma).lower() in ("true", "1")) != learned:
        raise SamplerkitError(f"learn_sigma={learn_sigma} contradicts the weights: their head has "
                              f"{shapes['out_channels']} channels for {shapes['in_channels']} input channels")
    network = build(sd, heads)
    if family == "dit":
        abar = alpha_bar_from_betas(betas_for("linear", 1000))  # DiT's create_diffusion: linear, T = 1000
        net = DiTDenoiser(network, classes, abar)
    else:
        net = SiTDenoiser(network, classes)
    attach_autoencoder(net, autoencoder, latent_scale)
    return net.to(device)
