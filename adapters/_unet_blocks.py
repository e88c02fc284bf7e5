"""The UNet of ADM (guided-diffusion) and iDDPM (improved-diffusion), with the upstream module names.

Both releases share one network (Ho et al. 2020's DDPM UNet as extended by Nichol & Dhariwal
2021, Sec. 3, and Dhariwal & Nichol 2021, Sec. 3): residual blocks conditioned on a sinusoidal timestep embedding
(plus a class embedding), self-attention at chosen downsample rates, skip connections between
the encoder and decoder. iDDPM's network is the special case ``resblock_updown=False``,
``num_head_channels=-1`` and heads split before q/k/v ("legacy" order). Module names and
parameter shapes follow the upstream ``unet.py`` so that released state dicts load with
``strict=True``: ``time_embed.0``, ``label_emb``, ``input_blocks.{i}.{j}``, ``middle_block``,
``output_blocks``, ``out.2``, with ``in_layers``/``emb_layers``/``out_layers``/
``skip_connection`` in residual blocks and ``norm``/``qkv``/``proj_out`` in attention blocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from samplerkit.speed import Network


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of (possibly fractional) timesteps t [B], float32.

    ``[cos(t f_i), sin(t f_i)]`` with ``f_i = exp(-ln(max_period) i / half)``, i = 0 .. half-1,
    cosines first as in the upstream code; an odd ``dim`` gets one trailing zero.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32 groups) computed in float32 and cast back to the input dtype."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)


class SigmoidSiLU(nn.Module):
    """x * sigmoid(x) written out, as improved-diffusion computes it (rounds unlike the fused nn.SiLU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class TimestepSequential(nn.Sequential):
    """A sequence of layers; residual blocks among them also receive the embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, then a 3x3 conv (``conv``) when ``use_conv``."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class Downsample(nn.Module):
    """2x downsampling: a stride-2 3x3 conv (``op``) when ``use_conv``, else 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block with timestep conditioning, optionally resampling (ADM's ``resblock_updown``).

    h = in_layers(x); with ``use_scale_shift_norm`` (ADM's AdaGN) the embedding gives (s, b) and
    h = GN(h)(1 + s) + b, else h = GN(h + emb); out = skip(x) + conv(dropout(SiLU(h))).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
        use_checkpoint: bool = False,
        act: type[nn.Module] = nn.SiLU,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(GroupNorm32(channels), act(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            act(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            act(),
            nn.Dropout(p=dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.out_layers[3].weight)
        nn.init.zeros_(self.out_layers[3].bias)
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h, x = self.h_upd(h), self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions, residual: x + proj_out(attn(qkv(GN(x)))).

    ``qkv`` is a 1x1 Conv1d to 3C channels. ``new_order=False`` (guided-diffusion's
    QKVAttentionLegacy, improved-diffusion's only order) reads those channels as
    [head][q|k|v][ch]; ``new_order=True`` (QKVAttention) reads them as [q|k|v][head][ch].
    ``backend`` "einsum" (default) is the upstream arithmetic: q and k each scaled by ch^-1/4,
    softmax in float32, which reproduces upstream outputs bit for bit; "sdpa" uses torch's
    scaled_dot_product_attention (same function, different rounding, faster on CPU).
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        new_order: bool = False,
        use_checkpoint: bool = False,
        backend: str = "einsum",
    ):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"{channels} attention channels do not split into heads of {num_head_channels}")
            self.num_heads = channels // num_head_channels
        if channels % self.num_heads:
            raise ValueError(f"{channels} attention channels are not divisible by {self.num_heads} heads")
        self.new_order = new_order
        self.use_checkpoint = use_checkpoint
        self.backend = backend
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        x = x.reshape(B, C, H * W)
        qkv = self.qkv(self.norm(x))
        h = self.proj_out(self.attend(qkv))
        return (x + h).reshape(B, C, H, W)

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """[B, 3C, T] -> [B, C, T]: softmax(q^T k / sqrt(ch)) weighted sum of v, per head."""
        B, width, T = qkv.shape
        n, ch = self.num_heads, width // (3 * self.num_heads)
        if self.new_order:
            q, k, v = qkv.reshape(B, 3, n, ch, T).unbind(1)
        else:
            q, k, v = qkv.reshape(B, n, 3, ch, T).unbind(2)
        if self.backend == "sdpa":
            a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
            return a.transpose(-1, -2).reshape(B, n * ch, T)
        scale = 1 / math.sqrt(math.sqrt(ch))
        w = torch.einsum("bnct,bncs->bnts", q * scale, k * scale)
        w = torch.softmax(w.float(), dim=-1).to(w.dtype)
        return torch.einsum("bnts,bncs->bnct", w, v).reshape(B, n * ch, T)


@dataclass(frozen=True)
class _BlockMaker:
    """The residual and attention blocks of one :class:`UNetModel`, built with its shared settings."""

    emb_dim: int
    dropout: float
    use_scale_shift_norm: bool
    use_checkpoint: bool
    act: type[nn.Module]
    num_head_channels: int
    use_new_attention_order: bool

    def res(self, ch_in: int, ch_out: int | None = None, **updown) -> ResBlock:
        return ResBlock(ch_in, self.emb_dim, self.dropout, ch_out, self.use_scale_shift_norm,
                        use_checkpoint=self.use_checkpoint, act=self.act, **updown)

    def attn(self, ch_in: int, heads: int) -> AttentionBlock:
        return AttentionBlock(ch_in, heads, self.num_head_channels, self.use_new_attention_order, self.use_checkpoint)


class UNetModel(Network):
    """The ADM / iDDPM UNet: ``forward(x [B, C, H, W], timesteps [B], y [B] int | None) -> [B, out, H, W]``.

    ``attention_resolutions`` are downsample rates (1, 2, 4, ...), as in the upstream class;
    the flag parsers in :mod:`samplerkit.adapters.adm` and :mod:`samplerkit.adapters.iddpm` convert image
    resolutions to rates. With ``use_fp16`` the convolutions of the encoder, middle and
    decoder hold float16 weights and run in float16 (upstream ``convert_to_fp16``); the
    embeddings, group norms and the output head stay float32, as do inputs and outputs.
    ``act`` is the activation class (improved-diffusion: :class:`SigmoidSiLU`).
    """

    def __init__(
        self,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        num_classes: int | None = None,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        use_checkpoint: bool = False,
        act: type[nn.Module] = nn.SiLU,
    ):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.model_channels = model_channels
        self.num_classes = num_classes
        self.use_fp16 = use_fp16
        emb_dim = 4 * model_channels
        make = _BlockMaker(emb_dim, dropout, use_scale_shift_norm, use_checkpoint, act, num_head_channels,
                           use_new_attention_order)
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), act(), nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_dim)

        input_ch = int(channel_mult[0] * model_channels)
        ch, skip_chans, ds = self._build_input(make, in_channels, input_ch, model_channels, num_res_blocks,
                                               attention_resolutions, channel_mult, conv_resample, num_heads,
                                               resblock_updown)
        self.middle_block = TimestepSequential(make.res(ch), make.attn(ch, num_heads), make.res(ch))
        ch = self._build_output(make, ch, skip_chans, ds, model_channels, num_res_blocks, attention_resolutions,
                                channel_mult, conv_resample, num_heads_upsample, resblock_updown)

        self.out = nn.Sequential(GroupNorm32(ch), act(), nn.Conv2d(input_ch, out_channels, 3, padding=1))
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)
        if use_fp16:
            self.convert_to_fp16()

    def _build_input(self, make: _BlockMaker, in_channels, ch, model_channels, num_res_blocks, attention_resolutions,
                     channel_mult, conv_resample, num_heads, resblock_updown) -> tuple[int, list[int], int]:
        """The encoder in ``self.input_blocks``; returns (its last width, the widths of its skips, the
        downsample rate reached)."""
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_chans, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [make.res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(make.attn(ch, num_heads))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = make.res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample)
                self.input_blocks.append(TimestepSequential(down))
                skip_chans.append(ch)
                ds *= 2
        return ch, skip_chans, ds

    def _build_output(self, make: _BlockMaker, ch, skip_chans, ds, model_channels, num_res_blocks,
                      attention_resolutions, channel_mult, conv_resample, num_heads_upsample, resblock_updown) -> int:
        """The decoder in ``self.output_blocks``, taking the encoder's skips last first; returns its width."""
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [make.res(ch + skip_chans.pop(), int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(make.attn(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(make.res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))
        return ch

    def body(self) -> list[nn.Module]:
        return [self.input_blocks, self.middle_block, self.output_blocks]

    def convert_to_fp16(self) -> UNetModel:
        """Cast the convolutions of the encoder, middle and decoder to float16 (upstream convention)."""
        for part in self.body():
            for m in part.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                    m.half()
        self.use_fp16 = True
        return self

    @property
    def inner_dtype(self) -> torch.dtype:
        """dtype the encoder/middle/decoder run in (that of the first convolution)."""
        return self.input_blocks[0][0].weight.dtype

    def attention_blocks(self) -> list[nn.Module]:
        """The attention blocks whose ``backend`` :mod:`samplerkit.speed` sets."""
        return [m for m in self.modules() if isinstance(m, AttentionBlock)]

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("pass class labels y if and only if the network is class-conditional")
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if y is not None:
            emb = emb + self.label_emb(y)
        h, skips = x.to(self.inner_dtype), []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.to(x.dtype))
