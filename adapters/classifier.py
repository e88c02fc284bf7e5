"""Noisy-image classifiers of ADM-G (Dhariwal & Nichol 2021, Sec. 4): p_phi(y | x_t, t).

guided-diffusion trains a classifier on noised images x_t (x_t-space, the base model's
schedule) with their timestep t; its gradient steers a diffusion model towards a class
(:mod:`samplerkit.guidance`). The network is the encoder half of the ADM UNet (input blocks and
middle block, with the timestep embedding) followed by a pooling head that gives logits:

* ``attention`` (the released classifiers): GroupNorm, SiLU, then attention pooling -- a query
  made from the spatial mean attends over all positions (plus a learned positional
  embedding) with heads of ``classifier_num_head_channels`` channels (q/k/v split first, the
  ``QKVAttention`` order);
* ``adaptive``: GroupNorm, SiLU, global average pooling, a 1x1 convolution;
* ``spatial`` / ``spatial_v2``: the spatial means of every encoder block's output, concatenated,
  through a 2048-wide MLP (ReLU; or GroupNorm + SiLU).

Flags and defaults are guided-diffusion's ``script_util.classifier_defaults`` /
``create_classifier`` (``classifier_width``, ``classifier_depth``, ...). Three more flags let
small test networks be built and are fixed upstream: ``num_classes`` (1000),
``classifier_num_head_channels`` (64) and ``classifier_channel_mult`` ("" = the upstream choice
for ``image_size``). The diffusion flags ``diffusion_steps``, ``noise_schedule`` and
``rescale_timesteps`` say which timesteps the classifier was trained on (those of its base model).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from samplerkit.diffusion import alpha_bar_from_betas, betas_for, sigma_from_alpha_bar
from samplerkit.errors import SamplerkitError

from ._unet_blocks import AttentionBlock, Downsample, GroupNorm32, ResBlock, TimestepSequential, timestep_embedding
from .adm import (
    DEFAULT_CHANNEL_MULT,
    TRAINING_ONLY_FLAGS,
    attention_rates,
    channel_mult_for,
    load_weights,
    read_state_dict,
    resolve_flags,
)

POOLS = ("attention", "adaptive", "spatial", "spatial_v2")

# guided-diffusion script_util.classifier_defaults(), plus the three values create_classifier fixes
CLASSIFIER_DEFAULTS: dict[str, Any] = dict(
    image_size=64,
    classifier_use_fp16=False,
    classifier_width=128,
    classifier_depth=2,
    classifier_attention_resolutions="32,16,8",
    classifier_use_scale_shift_norm=True,
    classifier_resblock_updown=True,
    classifier_pool="attention",
    classifier_num_head_channels=64,
    classifier_channel_mult="",
    num_classes=1000,
    in_channels=3,
)

# the timesteps the classifier was trained on: its base model's diffusion flags
CLASSIFIER_DIFFUSION_DEFAULTS: dict[str, Any] = dict(diffusion_steps=1000, noise_schedule="linear",
                                                     rescale_timesteps=False)

# create_classifier's channel_mult per image size (create_model's, without 32)
CLASSIFIER_CHANNEL_MULT = {k: v for k, v in DEFAULT_CHANNEL_MULT.items() if k != 32}


def _attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, 3C, T] read as [q|k|v][head][ch] -> [B, C, T]: softmax(q^T k / sqrt(ch)) v per head,
    q and k each scaled by ch^-1/4 and the softmax taken in float32 (the upstream arithmetic)."""
    B, width, T = qkv.shape
    ch = width // (3 * heads)
    q, k, v = qkv.reshape(B, 3, heads, ch, T).unbind(1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    w = torch.einsum("bnct,bncs->bnts", q * scale, k * scale)
    w = torch.softmax(w.float(), dim=-1).to(w.dtype)
    return torch.einsum("bnts,bncs->bnct", w, v).reshape(B, heads * ch, T)


class AttentionPool2d(nn.Module):
    """Attention pooling (as in CLIP): the spatial mean, prepended to the positions, is the query
    whose attention output, projected by ``c_proj``, is the logits."""

    def __init__(self, spatial: int, channels: int, head_channels: int, out_channels: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(channels, spatial**2 + 1) / channels**0.5)
        self.qkv_proj = nn.Conv1d(channels, 3 * channels, 1)
        self.c_proj = nn.Conv1d(channels, out_channels, 1)
        self.heads = channels // head_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C = x.shape[:2]
        x = x.reshape(B, C, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1) + self.positional_embedding[None].to(x.dtype)
        return self.c_proj(_attention(self.qkv_proj(x), self.heads))[:, :, 0]


class EncoderUNetModel(nn.Module):
    """The encoder half of the ADM UNet with a pooling head: ``forward(x, timesteps) -> [B, out]``.

    Module names and shapes are guided-diffusion's ``EncoderUNetModel`` (``time_embed``,
    ``input_blocks``, ``middle_block``, ``out``) so that its state dicts load with ``strict=True``.
    ``attention_resolutions`` are downsample rates, as in :class:`~._unet_blocks.UNetModel`.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions,
        channel_mult=(1, 2, 4, 8),
        use_fp16: bool = False,
        num_head_channels: int = 64,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        pool: str = "adaptive",
    ):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"classifier_pool must be one of {', '.join(POOLS)}, got {pool!r}")
        self.model_channels, self.pool = model_channels, pool
        emb_dim = 4 * model_channels

        def res(ch_in: int, ch_out: int | None = None, down: bool = False) -> ResBlock:
            return ResBlock(ch_in, emb_dim, 0.0, ch_out, use_scale_shift_norm, down=down)

        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        features, ds = ch, 1  # features: the width of the spatial heads' input (every block's mean)
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_head_channels=num_head_channels, new_order=False))
                self.input_blocks.append(TimestepSequential(*layers))
                features += ch
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, True)
                self.input_blocks.append(TimestepSequential(down))
                features += ch
                ds *= 2
        self.middle_block = TimestepSequential(
            res(ch), AttentionBlock(ch, num_head_channels=num_head_channels, new_order=False), res(ch))
        features += ch
        if pool == "adaptive":
            self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)),
                                     nn.Conv2d(ch, out_channels, 1), nn.Flatten())
        elif pool == "attention":
            if num_head_channels == -1:
                raise ValueError("attention pooling needs classifier_num_head_channels")
            self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(),
                                     AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels))
        elif pool == "spatial":
            self.out = nn.Sequential(nn.Linear(features, 2048), nn.ReLU(), nn.Linear(2048, out_channels))
        else:  # spatial_v2
            self.out = nn.Sequential(nn.Linear(features, 2048), GroupNorm32(2048), nn.SiLU(),
                                     nn.Linear(2048, out_channels))
        if use_fp16:
            self.convert_to_fp16()

    def convert_to_fp16(self) -> EncoderUNetModel:
        """Cast the convolutions of the encoder and middle block to float16 (upstream convention)."""
        for part in (self.input_blocks, self.middle_block):
            for m in part.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                    m.half()
        return self

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        spatial = self.pool.startswith("spatial")
        h, means = x.to(self.input_blocks[0][0].weight.dtype), []
        for block in self.input_blocks:
            h = block(h, emb)
            if spatial:
                means.append(h.to(x.dtype).mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if spatial:
            means.append(h.to(x.dtype).mean(dim=(2, 3)))
            return self.out(torch.cat(means, dim=-1))
        return self.out(h.to(x.dtype))


class NoisyClassifier(nn.Module):
    """``clf(x_t, t) -> logits [B, num_classes]``: log p_phi(y | x_t, t) up to a constant.

    ``x_t`` in x_t-space, ``t`` integer training timesteps 0 .. T-1 of the schedule in
    ``alphas_cumprod`` (fed as t * 1000 / T with ``rescale_timesteps``). :meth:`timestep` maps a
    sigma-space noise level to the nearest trained timestep.
    """

    def __init__(self, encoder: EncoderUNetModel, alphas_cumprod, rescale_timesteps: bool, image_size: int,
                 num_classes: int, in_channels: int = 3):
        super().__init__()
        self.encoder = encoder
        ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.register_buffer("alphas_cumprod", ab, persistent=False)
        self.register_buffer("sigmas", sigma_from_alpha_bar(ab), persistent=False)
        self.rescale_timesteps = rescale_timesteps
        self.image_size, self.num_classes, self.in_channels = image_size, num_classes, in_channels

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.numel()

    def timestep(self, sigma) -> torch.Tensor:
        """Index of the trained level nearest to sigma (int64, flattened)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=self.sigmas.device).reshape(-1, 1)
        return (sigma - self.sigmas.reshape(1, -1)).abs().argmin(dim=1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x_t.device)
        t = t.float() * (1000.0 / self.num_timesteps) if self.rescale_timesteps else t
        return self.encoder(x_t.float(), t).float()


def create_classifier(**flags) -> EncoderUNetModel:
    """guided-diffusion's ``create_classifier`` with its flag names and defaults (see the module
    docstring); an unknown flag or an invalid combination raises SamplerkitError."""
    return _build(resolve_flags(flags, CLASSIFIER_DEFAULTS, "classifier"))


def _build(f: dict[str, Any], use_fp16: bool | None = None) -> EncoderUNetModel:
    size = f["image_size"]
    if f["classifier_pool"] not in POOLS:
        raise SamplerkitError(f"classifier_pool must be one of {', '.join(POOLS)}, got {f['classifier_pool']!r}")
    try:
        return EncoderUNetModel(
            image_size=size,
            in_channels=f["in_channels"],
            model_channels=f["classifier_width"],
            out_channels=f["num_classes"],
            num_res_blocks=f["classifier_depth"],
            attention_resolutions=attention_rates(size, f["classifier_attention_resolutions"]),
            channel_mult=channel_mult_for(size, f["classifier_channel_mult"], CLASSIFIER_CHANNEL_MULT),
            use_fp16=f["classifier_use_fp16"] if use_fp16 is None else use_fp16,
            num_head_channels=f["classifier_num_head_channels"],
            use_scale_shift_norm=f["classifier_use_scale_shift_norm"],
            resblock_updown=f["classifier_resblock_updown"],
            pool=f["classifier_pool"],
        )
    except ValueError as err:  # head widths that do not divide the channels
        raise SamplerkitError(f"invalid classifier flags: {err}") from None


def _pool_of(sd) -> str:
    if "out.2.positional_embedding" in sd:
        return "attention"
    if "out.3.weight" in sd and sd["out.3.weight"].ndim == 4:
        return "adaptive"
    return "spatial_v2" if "out.1.weight" in sd else "spatial"


def _advice(sd, f: dict[str, Any]) -> str:
    """What the weights say against the flags: width, class count, pool type."""
    got = {}
    if "time_embed.0.weight" in sd:
        got["classifier_width"] = int(sd["time_embed.0.weight"].shape[1])
    got["classifier_pool"] = _pool_of(sd)
    head = {"attention": "out.2.c_proj.weight", "adaptive": "out.3.weight", "spatial": "out.2.weight",
            "spatial_v2": "out.3.weight"}[got["classifier_pool"]]
    if head in sd:
        got["num_classes"] = int(sd[head].shape[0])
    hints = [f"checkpoint has {k} {v}, flags say {f[k]}" for k, v in got.items() if f[k] != v]
    return "; ".join(hints) or (
        "check classifier_depth, classifier_attention_resolutions, classifier_resblock_updown, "
        "classifier_use_scale_shift_norm and image_size against the classifier's training flags")


def load_classifier(path: str | Path, device: str | torch.device = "cpu", **flags) -> NoisyClassifier:
    """A guided-diffusion classifier ``.pt`` state dict + upstream ``classifier_*`` flags -> clf(x_t, t).

    Loaded strictly (every key, every shape); the diffusion flags (``diffusion_steps``,
    ``noise_schedule``, ``rescale_timesteps``) are those of the base model it was trained with.
    """
    flags = {k: v for k, v in flags.items() if k not in TRAINING_ONLY_FLAGS}
    diffusion = {k: flags.pop(k) for k in list(flags) if k in CLASSIFIER_DIFFUSION_DEFAULTS}
    d = resolve_flags(diffusion, CLASSIFIER_DIFFUSION_DEFAULTS, "classifier")
    f = resolve_flags(flags, CLASSIFIER_DEFAULTS, "classifier")
    sd = read_state_dict(path, device)
    encoder = load_weights(lambda: _build(f, use_fp16=False), sd, lambda: _advice(sd, f), "classifier")
    if f["classifier_use_fp16"]:
        encoder.convert_to_fp16()
    abar = alpha_bar_from_betas(betas_for(d["noise_schedule"], d["diffusion_steps"]))
    clf = NoisyClassifier(encoder.eval().requires_grad_(False), abar, d["rescale_timesteps"], f["image_size"],
                          f["num_classes"], f["in_channels"])
    return clf.to(device)

