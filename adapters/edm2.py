"""EDM2 (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models"):
the magnitude-preserving U-Net and its preconditioning, and NVlabs/edm2's release pickles.

The network (Karras et al. 2024 (EDM2), Sec. 3 and App. B, Fig. 21) keeps activation and weight
magnitudes at one by construction: every convolution and linear layer normalises its weight
(Eq. 47, 66) and scales it by gain / sqrt(fan_in); nonlinearity (Eq. 81), sums (Eq. 88) and
concatenations (Eq. 103) are magnitude-preserving; noise enters through Fourier features (Eq. 75).
:class:`Precond` is EDM's preconditioning (Karras et al. 2022 (EDM), Table 1, "EDM" column):
D(x; sigma) = c_skip x + c_out F(c_in x; ln(sigma) / 4), a :class:`~samplerkit.denoisers.Denoiser`.

**Pickles.** :func:`load_pickle` reads a release pickle (an EasyDict with ``ema`` -- the network,
float16 --, ``encoder``, ``dataset_kwargs`` and ``loss_fn``) through
:mod:`samplerkit.adapters.safe_pickle`: no code stored in the file runs. *Our* classes of the same
names are built from the pickled constructor arguments and the pickled tensors are assigned by
name (strict). ``encoder`` becomes ``net.autoencoder``: ``StandardRGBEncoder`` ->
:class:`~samplerkit.autoencoders.RGBIdentity`, ``StabilityVAEEncoder`` ->
:class:`~samplerkit.autoencoders.StabilityVAE` with the pickle's per-channel scale and bias.

**Precision.** ``exact`` (the default) keeps the parameters as stored, float16, and computes as
``generate_images.py`` does on the CPU: every weight is cast to float32 before it is normalised, but
the learned gains (``emb_gain``, ``out_gain``) enter as ``gain / sqrt(fan_in)`` computed in float16.
Converting the network to float32 first (``dtype=torch.float32``, as ``reconstruct_phema.py`` does)
computes that factor in float32 instead: D(x; sigma) then moves by a few 1e-4 (the tests measure it).
On CUDA the U-Net runs in float16 when the pickle says ``use_fp16`` (the release networks do), as
upstream. ``fast`` (:meth:`Precond.fast`) normalises each weight once and reuses it; on the same
device and dtype that gives the same numbers, and it attends with
``scaled_dot_product_attention`` (float32 rounding apart, the same softmax attention).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from samplerkit.autoencoders import RGBIdentity, StabilityVAE
from samplerkit.denoisers import Denoiser, edm_preconditioning
from samplerkit.errors import SamplerkitError

from . import safe_pickle

# ---------------------------------------------------------------------------------------------
# magnitude-preserving operations (Karras et al. 2024 (EDM2), App. B)


def normalize(x: torch.Tensor, dim=None, eps: float = 1e-4) -> torch.Tensor:
    """x / (eps + ||x|| / sqrt(N)) over ``dim`` (default all but the first): unit magnitude per element."""
    dim = list(range(1, x.ndim)) if dim is None else dim
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=np.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def resample(x: torch.Tensor, f=(1, 1), mode: str = "keep") -> torch.Tensor:
    """2x down- (``"down"``) or upsampling (``"up"``) with the separable filter ``f``; ``"keep"``: x."""
    if mode == "keep":
        return x
    f = np.float32(f)
    pad = (len(f) - 1) // 2
    f = f / f.sum()
    kernel = torch.as_tensor(np.outer(f, f)[np.newaxis, np.newaxis], dtype=x.dtype, device=x.device)
    c = x.shape[1]
    if mode == "down":
        return torch.nn.functional.conv2d(x, kernel.tile([c, 1, 1, 1]), groups=c, stride=2, padding=(pad,))
    return torch.nn.functional.conv_transpose2d(x, (kernel * 4).tile([c, 1, 1, 1]), groups=c, stride=2,
                                                padding=(pad,))


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """Magnitude-preserving SiLU (Eq. 81): silu(x) / 0.596."""
    return torch.nn.functional.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """Magnitude-preserving sum (Eq. 88): ((1 - t) a + t b) / sqrt((1 - t)^2 + t^2)."""
    return a.lerp(b, t) / np.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Magnitude-preserving concatenation (Eq. 103), ``t`` balancing b against a."""
    na, nb = a.shape[dim], b.shape[dim]
    c = np.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    return torch.cat([c / np.sqrt(na) * (1 - t) * a, c / np.sqrt(nb) * t * b], dim=dim)


# ---------------------------------------------------------------------------------------------
# layers


class MPFourier(nn.Module):
    """Fourier features cos(2 pi (f sigma_noise + phi)) * sqrt 2 (Eq. 75); ``freqs``, ``phases`` are buffers."""

    def __init__(self, num_channels: int, bandwidth: float = 1):
        super().__init__()
        self.register_buffer("freqs", 2 * np.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * np.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.to(torch.float32).ger(self.freqs.to(torch.float32)) + self.phases.to(torch.float32)
        return (y.cos() * np.sqrt(2)).to(x.dtype)


class MPConv(nn.Module):
    """Magnitude-preserving convolution / linear layer (Eq. 47) with weight normalisation (Eq. 66):
    w = normalize(weight) * gain / sqrt(fan_in). ``kernel=()`` is a linear layer."""

    def __init__(self, in_channels: int, out_channels: int, kernel):
        super().__init__()
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))
        self.cache: dict | None = None  # fast mode: {(dtype, device): w} for gain 1

    def scaled_weight(self, dtype: torch.dtype, gain=1) -> torch.Tensor:
        """normalize(weight) * (gain / sqrt(fan_in)) in ``dtype``, computed as upstream (gain as given)."""
        w = normalize(self.weight.to(torch.float32))
        w = w * (gain / np.sqrt(w[0].numel()))
        return w.to(dtype)

    def forward(self, x: torch.Tensor, gain=1) -> torch.Tensor:
        if self.cache is not None:
            key = (x.dtype, x.device, None if isinstance(gain, (int, float)) and gain == 1 else id(gain))
            w = self.cache.get(key)
            if w is None:
                w = self.cache[key] = self.scaled_weight(x.dtype, gain)
        else:
            w = self.scaled_weight(x.dtype, gain)
        if w.ndim == 2:
            return x @ w.t()
        return torch.nn.functional.conv2d(x, w, padding=(w.shape[-1] // 2,))


class Block(nn.Module):
    """Encoder (``flavor="enc"``) or decoder (``"dec"``) block of Fig. 21: residual branch with the
    embedding as a multiplicative modulation, magnitude-preserving sums, optional self-attention."""

    def __init__(self, in_channels, out_channels, emb_channels, flavor="enc", resample_mode="keep",
                 resample_filter=(1, 1), attention=False, channels_per_head=64, dropout=0, res_balance=0.3,
                 attn_balance=0.3, clip_act=256):
        super().__init__()
        if flavor not in ("enc", "dec") or resample_mode not in ("keep", "up", "down"):
            raise SamplerkitError(f"unsupported EDM2 block flavor {flavor!r} / resample_mode {resample_mode!r}")
        self.out_channels, self.flavor = out_channels, flavor
        self.resample_filter, self.resample_mode = list(resample_filter), resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout, self.res_balance, self.attn_balance, self.clip_act = dropout, res_balance, attn_balance, clip_act
        self.sdpa = False  # fast mode: scaled_dot_product_attention
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, kernel=[3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=[])
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=[3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, kernel=[1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=[1, 1]) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=[1, 1]) if self.num_heads else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = resample(x, f=self.resample_filter, mode=self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * c.unsqueeze(2).unsqueeze(3).to(y.dtype))
        if self.training and self.dropout != 0:
            y = torch.nn.functional.dropout(y, p=self.dropout)
        y = self.conv_res1(y)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        if self.num_heads:
            x = mp_sum(x, self.attention(x), t=self.attn_balance)
        return x.clip_(-self.clip_act, self.clip_act) if self.clip_act is not None else x

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention over pixels, q, k, v pixel-normalised per head (Fig. 21)."""
        y = self.attn_qkv(x)
        y = y.reshape(y.shape[0], self.num_heads, -1, 3, y.shape[2] * y.shape[3])
        q, k, v = normalize(y, dim=2).unbind(3)  # [N, heads, C_head, pixels] each
        if self.sdpa:
            y = torch.nn.functional.scaled_dot_product_attention(q.transpose(2, 3), k.transpose(2, 3),
                                                                 v.transpose(2, 3)).transpose(2, 3)
        else:
            w = torch.einsum("nhcq,nhck->nhqk", q, k / np.sqrt(q.shape[2])).softmax(dim=3)
            y = torch.einsum("nhqk,nhck->nhcq", w, v)
        return self.attn_proj(y.reshape(*x.shape))


class UNet(nn.Module):
    """EDM2's U-Net (Fig. 21): ``enc`` / ``dec`` ModuleDicts keyed ``{res}x{res}_{conv,down,blockN,inN,up}``,
    noise embedding (Fourier features + linear), class embedding mixed in by ``label_balance``."""

    def __init__(self, img_resolution, img_channels, label_dim, model_channels=192, channel_mult=(1, 2, 3, 4),
                 channel_mult_noise=None, channel_mult_emb=None, num_blocks=3, attn_resolutions=(16, 8),
                 label_balance=0.5, concat_balance=0.5, **block_kwargs):
        super().__init__()
        cblock = [model_channels * m for m in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
        self.label_balance, self.concat_balance = label_balance, concat_balance
        self.out_gain = nn.Parameter(torch.zeros([]))
        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, kernel=[])
        self.emb_label = MPConv(label_dim, cemb, kernel=[]) if label_dim != 0 else None
        self.enc = nn.ModuleDict()
        cout = img_channels + 1  # the constant-one channel
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_conv"] = MPConv(cin, cout, kernel=[3, 3])
            else:
                self.enc[f"{res}x{res}_down"] = Block(cout, cout, cemb, flavor="enc", resample_mode="down",
                                                      **block_kwargs)
            for idx in range(num_blocks):
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_block{idx}"] = Block(cin, cout, cemb, flavor="enc",
                                                            attention=res in attn_resolutions, **block_kwargs)
        self.dec = nn.ModuleDict()
        skips = [block.out_channels for block in self.enc.values()]
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = Block(cout, cout, cemb, flavor="dec", attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = Block(cout, cout, cemb, flavor="dec", **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = Block(cout, cout, cemb, flavor="dec", resample_mode="up", **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), channels
                self.dec[f"{res}x{res}_block{idx}"] = Block(cin, cout, cemb, flavor="dec",
                                                            attention=res in attn_resolutions, **block_kwargs)
        self.out_conv = MPConv(cout, img_channels, kernel=[3, 3])

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None):
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            emb = mp_sum(emb, self.emb_label(class_labels * np.sqrt(class_labels.shape[1])), t=self.label_balance)
        emb = mp_silu(emb)
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if "conv" in name else block(x, emb)
            skips.append(x)
        for name, block in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        return self.out_conv(x, gain=self.out_gain)


class Precond(Denoiser):
    """EDM2's denoiser: EDM preconditioning (Karras et al. 2022 (EDM), Table 1) over :class:`UNet`,
    plus the learned uncertainty u(sigma) of Karras et al. 2024 (EDM2), Eq. 21 (:meth:`logvar`).

    ``sigma_min``/``sigma_max`` are EDM2's sampling range 0.002-80. Labels: int [B] or one-hot
    [B, label_dim]; a zero vector is upstream's "no class" input.
    """

    def __init__(self, img_resolution, img_channels, label_dim, use_fp16=True, sigma_data=0.5, logvar_channels=128,
                 **unet_kwargs):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16, self.sigma_data = use_fp16, sigma_data
        self.sigma_min, self.sigma_max = 0.002, 80.0
        self.unet = UNet(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, **unet_kwargs)
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, kernel=[])
        self.variant = "exact"

    def _sigma(self, sigma, x: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
        if sigma.shape[0] not in (1, x.shape[0]):
            raise SamplerkitError(f"got {sigma.shape[0]} noise levels for a batch of {x.shape[0]}; "
                                  "pass one or one each")
        return sigma

    def forward(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        x = x.to(torch.float32)
        sigma = self._sigma(sigma, x)
        labels = self.prepare_labels(class_labels, x.shape[0], x.device)
        dtype = torch.float16 if self.use_fp16 and x.device.type == "cuda" else torch.float32
        c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, self.sigma_data)
        F_x = self.unet((c_in * x).to(dtype), c_noise.flatten(), labels)
        return c_skip * x + c_out * F_x.to(torch.float32)

    def logvar(self, sigma) -> torch.Tensor:
        """u(sigma), the loss's learned log-variance (Karras et al. 2024 (EDM2), Eq. 21), [B, 1, 1, 1]."""
        c_noise = torch.as_tensor(sigma).to(torch.float32).flatten().log() / 4
        return self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1, 1, 1, 1)

    def fast(self) -> Precond:
        """Normalise every weight once per device/dtype and attend with SDPA (module docstring); returns self."""
        for m in self.modules():
            if isinstance(m, MPConv) and m.cache is None:
                m.cache = {}
            elif isinstance(m, Block):
                m.sdpa = True
        self.variant = "fast"
        return self

    def exact(self) -> Precond:
        """Back to upstream's arithmetic (the default); returns self."""
        for m in self.modules():
            if isinstance(m, MPConv):
                m.cache = None
            elif isinstance(m, Block):
                m.sdpa = False
        self.variant = "exact"
        return self

    def _apply(self, fn, recurse=True):  # .to() / .half() invalidate the normalised weights of fast mode
        for m in self.modules():
            if isinstance(m, MPConv) and m.cache is not None:
                m.cache = {}
        return super()._apply(fn, recurse)


# ---------------------------------------------------------------------------------------------
# release pickles -> our modules

CLASSES = {cls.__name__: cls for cls in (Precond, UNet, Block, MPConv, MPFourier)}
# the constructor arguments Precond, UNet and Block take: a pickled one outside them is refused
PRECOND_ARGS = frozenset({"img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_data", "logvar_channels",
                          "model_channels", "channel_mult", "channel_mult_noise", "channel_mult_emb", "num_blocks",
                          "attn_resolutions", "label_balance", "concat_balance", "resample_filter",
                          "channels_per_head", "dropout", "res_balance", "attn_balance", "clip_act"})
ENCODERS = ("StandardRGBEncoder", "StabilityVAEEncoder")


def is_edm2_pickle(data) -> bool:
    """True when unpickled ``data`` (records of :mod:`safe_pickle`) holds an EDM2 ``Precond`` as ``ema``."""
    record = data.get("ema") if isinstance(data, Mapping) else data
    return isinstance(record, safe_pickle.PersistentRecord) and record.class_name == "Precond"


def load_pickle(path: str | Path, device="cpu", dtype: torch.dtype | None = None, variant: str = "exact",
                autoencoder: str | Path | None = None) -> Precond:
    """An EDM2 network pickle (release or training snapshot) as a denoiser with ``net.autoencoder``.

    ``dtype=None`` keeps the parameters as stored (float16 in the releases; what upstream's
    ``generate_images.py`` runs), ``torch.float32`` converts them first (``reconstruct_phema.py``).
    ``variant``: ``"exact"`` or ``"fast"`` (module docstring). ``autoencoder``: the VAE a latent
    model decodes through instead of the one its pickle names (a zoo name or a diffusers folder;
    the pickle's scale and bias stay). No code from the file runs.
    """
    path = Path(path)
    data = safe_pickle.load_path(path)
    net = from_pickle_data(data, path.name, device=device, dtype=dtype, variant=variant)
    net.path = str(path)
    if autoencoder is not None:
        if not isinstance(net.autoencoder, StabilityVAE):
            raise SamplerkitError(f"{path.name} is a pixel-space model; it takes no autoencoder")
        ae = net.autoencoder
        net.autoencoder = StabilityVAE.from_scale_bias(str(autoencoder), ae.scale, ae.bias, batch_size=ae.batch_size)
    return net


def from_pickle_data(data, name: str = "the pickle", device="cpu", dtype: torch.dtype | None = None,
                     variant: str = "exact") -> Precond:
    """:func:`load_pickle` on data already read by :func:`safe_pickle.load`."""
    if variant not in ("exact", "fast"):
        raise SamplerkitError(f"unknown variant {variant!r}; use exact or fast")
    if not is_edm2_pickle(data):
        found = data.get("ema") if isinstance(data, Mapping) else data
        what = getattr(found, "class_name", type(found).__name__)
        raise SamplerkitError(f"{name} is not an EDM2 network pickle: its network is a {what}, not an EDM2 Precond")
    net = build_network(data["ema"] if isinstance(data, Mapping) else data)
    if dtype is not None:
        net = net.to(dtype)
    net.autoencoder = build_autoencoder(data.get("encoder") if isinstance(data, Mapping) else None, name)
    net.name = Path(name).stem  # named in manifests (a zoo entry adds its sha256)
    net = net.to(device).eval().requires_grad_(False)
    return net.fast() if variant == "fast" else net


def _check_arguments(record: safe_pickle.PersistentRecord) -> dict:
    kwargs = dict(record.init_kwargs or {})
    if record.init_args or record.init_kwargs is None:
        raise SamplerkitError("the pickled EDM2 Precond does not record its constructor arguments by name")
    unknown = sorted(set(kwargs) - PRECOND_ARGS)
    if unknown:
        raise SamplerkitError(f"the pickled EDM2 Precond has constructor arguments samplerkit does not know: {unknown}")
    for key in ("img_resolution", "img_channels", "label_dim"):
        if not isinstance(kwargs.get(key), int) or isinstance(kwargs[key], bool) or kwargs[key] < 0:
            raise SamplerkitError(f"the pickled EDM2 Precond has no valid {key}")
    return kwargs


def build_network(record: safe_pickle.PersistentRecord) -> Precond:
    """Our :class:`Precond` for a pickled one: built on the meta device from its constructor arguments,
    then the pickled tensors assigned by name (strict), in their stored dtype."""
    kwargs = _check_arguments(record)
    try:
        with torch.device("meta"):
            net = Precond(**kwargs)
    except (TypeError, ValueError, ZeroDivisionError, SamplerkitError) as err:
        raise SamplerkitError(f"cannot build EDM2 Precond from its pickled arguments: {err}") from None
    tensors = safe_pickle.collect_tensors(record, net, {}, family="EDM2 ")
    return safe_pickle.assign_tensors(net, tensors, "the pickled EDM2 Precond")


def build_autoencoder(record, name: str = "the pickle"):
    """``net.autoencoder`` for the pickle's ``encoder``: RGB for ``StandardRGBEncoder`` (or none, as
    upstream's default), :class:`StabilityVAE` with the pickled scale and bias for ``StabilityVAEEncoder``."""
    if record is None:
        return RGBIdentity()
    class_name = getattr(record, "class_name", type(record).__name__)
    if not isinstance(record, safe_pickle.PersistentRecord) or class_name not in ENCODERS:
        raise SamplerkitError(f"{name} has an encoder of class {class_name}; samplerkit knows {', '.join(ENCODERS)}")
    if class_name == "StandardRGBEncoder":
        return RGBIdentity()
    state = record.state
    scale, bias = state.get("scale"), state.get("bias")
    vae_name, batch_size = state.get("vae_name"), state.get("batch_size", 8)
    if not all(isinstance(a, safe_pickle.NumpyArray) for a in (scale, bias)) or not isinstance(vae_name, str):
        raise SamplerkitError(f"{name} has a StabilityVAEEncoder without vae_name, scale and bias arrays")
    if not isinstance(batch_size, int) or not 0 < batch_size <= 4096:
        raise SamplerkitError(f"{name} has a StabilityVAEEncoder with an invalid batch_size {batch_size!r}")
    return StabilityVAE.from_scale_bias(vae_name, scale.array, bias.array, batch_size=batch_size)


def describe(net: Precond) -> dict:
    """The architecture facts a manifest records about an EDM2 network."""
    return {"family": "edm2", "img_resolution": net.img_resolution, "img_channels": net.img_channels,
            "label_dim": net.label_dim, "variant": net.variant,
            "dtype": str(next(net.parameters()).dtype).removeprefix("torch."),
            "autoencoder": net.autoencoder.describe(), "parameters": sum(p.numel() for p in net.parameters())}
