"""The networks of NVlabs EDM's ``training/networks.py``, re-implemented: SongUNet, DhariwalUNet, their blocks.

The architectures of the EDM paper's experiments (Karras et al. 2022 (EDM), Sec. 5, App. F.2):
DDPM++ and NCSN++ (:class:`SongUNet`, Song et al. 2021's score-SDE networks) and ADM
(:class:`DhariwalUNet`, Dhariwal & Nichol 2021). Class names, submodule names, parameter shapes
and constructor arguments are upstream's, so that the state of a pickled network maps 1:1 onto
ours (:mod:`samplerkit.adapters.edm.loader`). Each network is F(x; c_noise, labels); the
preconditioning that makes it a denoiser lives in :mod:`samplerkit.adapters.edm.precond`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from samplerkit.errors import SamplerkitError
from samplerkit.speed import Network

# ---------------------------------------------------------------------------------------------
# layers


_SKIP_INIT = contextvars.ContextVar("skip_init", default=False)


@contextlib.contextmanager
def skip_weight_init() -> Iterator[None]:
    """Build layers with uninitialised weights (for a loader that assigns every tensor afterwards)."""
    token = _SKIP_INIT.set(True)
    try:
        yield
    finally:
        _SKIP_INIT.reset(token)


def weight_init(shape: Sequence[int], mode: str, fan_in: int, fan_out: int, scale: float = 1) -> torch.Tensor:
    """Random initial weights times ``scale``: Xavier (Glorot) or Kaiming (He) variance, uniform or normal."""
    fan = {"xavier": (fan_in + fan_out) / 2, "kaiming": fan_in}
    family, _, dist = mode.partition("_")
    if family not in fan or dist not in ("uniform", "normal"):
        raise SamplerkitError(f"unknown init mode {mode!r}; use xavier_/kaiming_ + uniform/normal")
    if _SKIP_INIT.get():  # the loader assigns every weight; untouched pages cost no memory
        return torch.empty(*shape)
    if dist == "uniform":  # U(-a, a) has variance a^2 / 3
        return scale * math.sqrt(3 / fan[family]) * (2 * torch.rand(*shape) - 1)
    return scale * math.sqrt(1 / fan[family]) * torch.randn(*shape)


class Linear(nn.Module):
    """Fully connected layer; weights are cast to the input dtype (fp16 support)."""

    def __init__(self, in_features, out_features, bias=True, init_mode="kaiming_normal", init_weight=1, init_bias=0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(weight_init([out_features, in_features], **fans, scale=init_weight))
        self.bias = nn.Parameter(weight_init([out_features], **fans, scale=init_bias)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


class Conv2d(nn.Module):
    """Convolution with optional 2x up/downsampling by a separable FIR ``resample_filter``.

    ``kernel=0`` gives a pure resampling layer. ``fused_resample`` applies the filter and the
    convolution in one pass with adjusted padding, as NCSN++'s residual encoder does.
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel,
        bias=True,
        up=False,
        down=False,
        resample_filter=(1, 1),
        fused_resample=False,
        init_mode="kaiming_normal",
        init_weight=1,
        init_bias=0,
    ):
        if up and down:
            raise SamplerkitError("a Conv2d layer cannot both upsample and downsample")
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        k = kernel
        fans = dict(mode=init_mode, fan_in=in_channels * k * k, fan_out=out_channels * k * k)
        self.weight = self.bias = None
        if k:
            self.weight = nn.Parameter(weight_init([out_channels, in_channels, k, k], **fans, scale=init_weight))
        if k and bias:
            self.bias = nn.Parameter(weight_init([out_channels], **fans, scale=init_bias))
        f = torch.as_tensor(list(resample_filter), dtype=torch.float32)
        f = torch.outer(f, f)[None, None] / f.sum() ** 2  # 2-D filter with unit DC gain, [1, 1, k, k]
        self.register_buffer("resample_filter", f if up or down else None)

    def _upsample(self, x, f, padding):
        # transposed depthwise conv with stride 2: zero-insertion upsampling; gain 4 keeps the mean
        return F.conv_transpose2d(x, (4 * f).tile([x.shape[1], 1, 1, 1]), groups=x.shape[1], stride=2, padding=padding)

    def _downsample(self, x, f, padding):
        return F.conv2d(x, f.tile([x.shape[1], 1, 1, 1]), groups=x.shape[1], stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        f = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        w_pad = 0 if w is None else w.shape[-1] // 2
        f_pad = 0 if f is None else (f.shape[-1] - 1) // 2
        if self.fused_resample and self.up and w is not None:
            x = self._upsample(x, f, max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = self._downsample(x, f, 0)
        else:
            if self.up:
                x = self._upsample(x, f, f_pad)
            if self.down:
                x = self._downsample(x, f, f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalization with at most 32 groups and at least ``min_channels_per_group`` channels each."""

    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """softmax_k(q . k / sqrt(C)) over [N, C, L] queries and keys, computed in float32."""
    logits = torch.einsum("ncq,nck->nqk", q.to(torch.float32), (k / math.sqrt(k.shape[1])).to(torch.float32))
    return logits.softmax(dim=2).to(q.dtype)


class UNetBlock(nn.Module):
    """Residual block conditioned on an embedding, optionally resampling, optionally with self-attention.

    One block type covers DDPM++, NCSN++ (``adaptive_scale=False``: the embedding is added) and
    ADM (``adaptive_scale=True``: the embedding gives a scale and a shift of the normalized features).
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        emb_channels,
        up=False,
        down=False,
        attention=False,
        num_heads=None,
        channels_per_head=64,
        dropout=0,
        skip_scale=1,
        eps=1e-5,
        resample_filter=(1, 1),
        resample_proj=False,
        adaptive_scale=True,
        init=None,
        init_zero=None,
        init_attn=None,
    ):
        super().__init__()
        init = {} if init is None else dict(init)
        init_zero = dict(init_weight=0) if init_zero is None else dict(init_zero)
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.num_heads = heads if attention else 0
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale
        self.backend = "einsum"  # attention arithmetic: "einsum" (upstream, float32 softmax) or "sdpa"

        resample = dict(up=up, down=down, resample_filter=resample_filter)
        self.norm0 = GroupNorm(num_channels=in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=3, **resample, **init)
        self.affine = Linear(in_features=emb_channels, out_features=out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(num_channels=out_channels, eps=eps)
        self.conv1 = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=kernel, **resample, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(num_channels=out_channels, eps=eps)
            self.qkv = Conv2d(
                in_channels=out_channels,
                out_channels=out_channels * 3,
                kernel=1,
                **(init if init_attn is None else init_attn),
            )
            self.proj = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = F.silu(self.norm1(h + params))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        x = (h + (x if self.skip is None else self.skip(x))) * self.skip_scale
        if self.num_heads:
            B, C = x.shape[:2]
            # qkv channels are laid out as [head, channel, (q, k, v)]
            q, k, v = self.qkv(self.norm2(x)).reshape(B * self.num_heads, C // self.num_heads, 3, -1).unbind(2)
            if self.backend == "sdpa":  # same function, torch's fused kernel (different rounding)
                a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
                a = a.transpose(1, 2)
            else:
                a = torch.einsum("nqk,nck->ncq", attention_weights(q, k), v)
            x = (self.proj(a.reshape(x.shape)) + x) * self.skip_scale
        return x


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding [cos(x f_i), sin(x f_i)] with f_i = max_positions^(-i / (n/2 - endpoint))."""

    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        i = torch.arange(half, dtype=torch.float32, device=x.device)
        freqs = (1 / self.max_positions) ** (i / (half - (1 if self.endpoint else 0)))
        args = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([args.cos(), args.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features [cos(2 pi f x), sin(2 pi f x)], f ~ N(0, scale^2) (NCSN++)."""

    def __init__(self, num_channels, scale=16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([args.cos(), args.sin()], dim=1)


# ---------------------------------------------------------------------------------------------
# networks F(x; c_noise, labels)


def _decoder_level(dec: nn.ModuleDict, res: int, lowest: bool, cin: int, cout: int, skips: list[int],
                   num_blocks: int, attention_at, block_kwargs: dict) -> int:
    """Add one decoder level of SongUNet / DhariwalUNet to ``dec`` under EDM's key names: the two
    middle blocks (lowest resolution) or an upsampling block, then num_blocks + 1 blocks that each
    take one skip connection (``attention_at(idx)`` says where attention sits). Returns the width."""
    if lowest:
        dec[f"{res}x{res}_in0"] = UNetBlock(in_channels=cin, out_channels=cin, attention=True, **block_kwargs)
        dec[f"{res}x{res}_in1"] = UNetBlock(in_channels=cin, out_channels=cin, **block_kwargs)
    else:
        dec[f"{res}x{res}_up"] = UNetBlock(in_channels=cin, out_channels=cin, up=True, **block_kwargs)
    for idx in range(num_blocks + 1):
        dec[f"{res}x{res}_block{idx}"] = UNetBlock(in_channels=cin + skips.pop(), out_channels=cout,
                                                   attention=attention_at(idx), **block_kwargs)
        cin = cout
    return cout


def _attention_blocks(net: nn.Module) -> list[nn.Module]:
    """The UNet blocks with attention, whose ``backend`` :mod:`samplerkit.speed` sets."""
    return [m for m in net.modules() if isinstance(m, UNetBlock) and m.num_heads]


def _check_song_options(embedding_type, encoder_type, decoder_type) -> None:
    for option, value, allowed in [
        ("embedding_type", embedding_type, ("fourier", "positional")),
        ("encoder_type", encoder_type, ("standard", "skip", "residual")),
        ("decoder_type", decoder_type, ("standard", "skip")),
    ]:
        if value not in allowed:
            raise SamplerkitError(f"SongUNet {option} must be one of {allowed}, got {value!r}")


class SongUNet(Network):
    """DDPM++ / NCSN++ (Song et al. 2021) as configured in Karras et al. 2022 (EDM), App. F.2.

    DDPM++: ``embedding_type='positional'``, ``encoder_type='standard'``, ``channel_mult_noise=1``,
    ``resample_filter=[1,1]``. NCSN++: ``'fourier'``, ``'residual'``, ``2``, ``[1,3,3,1]``.
    Encoder blocks are stored in ``enc`` and decoder blocks in ``dec`` under ``'{res}x{res}_...'``
    names; ``aux`` entries are the progressive input/output branches.
    """

    def __init__(
        self,
        img_resolution,
        in_channels,
        out_channels,
        label_dim=0,
        augment_dim=0,
        model_channels=128,
        channel_mult=(1, 2, 2, 2),
        channel_mult_emb=4,
        num_blocks=4,
        attn_resolutions=(16,),
        dropout=0.10,
        label_dropout=0,
        embedding_type="positional",
        channel_mult_noise=1,
        encoder_type="standard",
        decoder_type="standard",
        resample_filter=(1, 1),
    ):
        _check_song_options(embedding_type, encoder_type, decoder_type)
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        block_kwargs = dict(
            emb_channels=emb_channels,
            num_heads=1,
            dropout=dropout,
            skip_scale=math.sqrt(0.5),
            eps=1e-6,
            resample_filter=resample_filter,
            resample_proj=True,
            adaptive_scale=False,
            init=init,
            init_zero=init_zero,
            init_attn=init_attn,
        )
        self._build_mapping(embedding_type, noise_channels, emb_channels, label_dim, augment_dim, init)
        cout = self._build_encoder(img_resolution, in_channels, model_channels, channel_mult, num_blocks,
                                   attn_resolutions, encoder_type, resample_filter, init, block_kwargs)
        self._build_decoder(img_resolution, out_channels, model_channels, channel_mult, num_blocks, attn_resolutions,
                            decoder_type, resample_filter, cout, init_zero, block_kwargs)

    def _build_mapping(self, embedding_type, noise_channels, emb_channels, label_dim, augment_dim, init):
        """The mapping network: noise level (+ labels, augmentation) -> embedding."""
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(num_channels=noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(num_channels=noise_channels)
        self.map_label = Linear(in_features=label_dim, out_features=noise_channels, **init) if label_dim else None
        self.map_augment = (
            Linear(in_features=augment_dim, out_features=noise_channels, bias=False, **init) if augment_dim else None
        )
        self.map_layer0 = Linear(in_features=noise_channels, out_features=emb_channels, **init)
        self.map_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, **init)

    def _build_encoder(self, img_resolution, in_channels, model_channels, channel_mult, num_blocks, attn_resolutions,
                       encoder_type, resample_filter, init, block_kwargs) -> int:
        """The encoder levels in ``self.enc`` (with the skip/residual input branch); returns its last width."""
        self.enc = nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(in_channels=cout, out_channels=model_channels, kernel=3, **init)
                cout = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(
                    in_channels=cout, out_channels=cout, down=True, **block_kwargs
                )
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(
                        in_channels=caux, out_channels=caux, kernel=0, down=True, resample_filter=resample_filter
                    )
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(in_channels=caux, out_channels=cout, kernel=1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        in_channels=caux,
                        out_channels=cout,
                        kernel=3,
                        down=True,
                        resample_filter=resample_filter,
                        fused_resample=True,
                        **init,
                    )
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    in_channels=cin, out_channels=cout, attention=res in attn_resolutions, **block_kwargs
                )
        return cout

    def _build_decoder(self, img_resolution, out_channels, model_channels, channel_mult, num_blocks,
                       attn_resolutions, decoder_type, resample_filter, cout, init_zero, block_kwargs) -> None:
        """The decoder levels in ``self.dec`` (with the skip output branch), fed by the encoder's skips."""
        skips = [block.out_channels for name, block in self.enc.items() if "aux" not in name]
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            # DDPM++/NCSN++: attention only in the last block of a level
            cout = _decoder_level(self.dec, res, level == len(channel_mult) - 1, cout, model_channels * mult, skips,
                                  num_blocks, lambda idx, r=res: idx == num_blocks and r in attn_resolutions,
                                  block_kwargs)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(
                        in_channels=out_channels,
                        out_channels=out_channels,
                        kernel=0,
                        up=True,
                        resample_filter=resample_filter,
                    )
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(num_channels=cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(
                    in_channels=cout, out_channels=out_channels, kernel=3, **init_zero
                )

    attention_blocks = _attention_blocks

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)  # [cos, sin] -> [sin, cos]
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        skips, aux = [], x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        out = features = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                out = block(out)
            elif "aux_norm" in name:
                features = block(x)
            elif "aux_conv" in name:
                features = block(F.silu(features))
                out = features if out is None else features + out
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return out


class DhariwalUNet(Network):
    """ADM (Dhariwal & Nichol 2021) as configured in Karras et al. 2022 (EDM), App. F.2, with ``enc``/``dec`` naming."""

    def __init__(
        self,
        img_resolution,
        in_channels,
        out_channels,
        label_dim=0,
        augment_dim=0,
        model_channels=192,
        channel_mult=(1, 2, 3, 4),
        channel_mult_emb=4,
        num_blocks=3,
        attn_resolutions=(32, 16, 8),
        dropout=0.10,
        label_dropout=0,
    ):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        block_kwargs = dict(
            emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init, init_zero=init_zero
        )

        self._build_mapping(model_channels, emb_channels, label_dim, augment_dim, init, init_zero)
        cout = self._build_encoder(img_resolution, in_channels, model_channels, channel_mult, num_blocks,
                                   attn_resolutions, init, block_kwargs)
        skips = [block.out_channels for block in self.enc.values()]
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            # ADM: attention in every block of an attention resolution
            cout = _decoder_level(self.dec, res, level == len(channel_mult) - 1, cout, model_channels * mult, skips,
                                  num_blocks, lambda idx, r=res: r in attn_resolutions, block_kwargs)
        self.out_norm = GroupNorm(num_channels=cout)
        self.out_conv = Conv2d(in_channels=cout, out_channels=out_channels, kernel=3, **init_zero)

    def _build_mapping(self, model_channels, emb_channels, label_dim, augment_dim, init, init_zero):
        """The mapping network: noise level (+ augmentation) -> embedding, and the label projection."""
        self.map_noise = PositionalEmbedding(num_channels=model_channels)
        self.map_augment = (
            Linear(in_features=augment_dim, out_features=model_channels, bias=False, **init_zero)
            if augment_dim
            else None
        )
        self.map_layer0 = Linear(in_features=model_channels, out_features=emb_channels, **init)
        self.map_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, **init)
        self.map_label = None
        if label_dim:
            self.map_label = Linear(
                in_features=label_dim,
                out_features=emb_channels,
                bias=False,
                init_mode="kaiming_normal",
                init_weight=math.sqrt(label_dim),
            )

    def _build_encoder(self, img_resolution, in_channels, model_channels, channel_mult, num_blocks, attn_resolutions,
                       init, block_kwargs) -> int:
        """The encoder levels in ``self.enc``; returns the last width."""
        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(
                    in_channels=cout, out_channels=model_channels * mult, kernel=3, **init
                )
                cout = model_channels * mult
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(
                    in_channels=cout, out_channels=cout, down=True, **block_kwargs
                )
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    in_channels=cin, out_channels=cout, attention=res in attn_resolutions, **block_kwargs
                )
        return cout

    attention_blocks = _attention_blocks

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels)
        emb = F.silu(emb)

        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


MODELS: dict[str, type[nn.Module]] = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}
