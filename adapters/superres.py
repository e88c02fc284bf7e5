"""Super-resolution diffusion models (ADM-U, Dhariwal & Nichol 2021, Sec. 5.2; and
improved-diffusion's class-conditional upsampler) -> D(x; sigma | low-res image).

The upsampler is the ADM / iDDPM UNet with twice the input channels: the low-resolution image,
upsampled bilinearly to the model's size, is concatenated to x_t on the channel axis
(guided-/improved-diffusion ``SuperResModel``). Flags are the upstream
``sr_model_and_diffusion_defaults`` ones: ``large_size`` (the output size), ``small_size``,
then the UNet flags; ``channel_mult`` ("" = the upstream choice for ``large_size``),
``num_classes`` and ``in_channels`` are extra, for small test networks.

**Low-resolution conditioning.** The denoiser contract stays ``net(x, sigma, class_labels)``:
:func:`bind` returns a denoiser with a batch of low-resolution images [B, C, small, small] in
[-1, 1] bound to it, row b conditioning image b of every call. Every sampler runs it unchanged;
a run binds each batch's images before sampling it (``samplerkit sample --low-res``). Calling the
unbound model is an error that says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from samplerkit.diffusion import alpha_bar_from_betas, betas_for
from samplerkit.errors import SamplerkitError

from ._unet_blocks import SigmoidSiLU, UNetModel
from .adm import (
    ADM_RECORD,
    UNetDenoiser,
    attention_rates,
    channel_mult_for,
    diffusion_settings,
    load_weights,
    read_state_dict,
    rebuild_advice,
    resolve_flags,
)
from .adm import DIFFUSION_DEFAULTS as ADM_DIFFUSION_DEFAULTS
from .iddpm import DIFFUSION_DEFAULTS as IDDPM_DIFFUSION_DEFAULTS

# guided-diffusion sr_model_and_diffusion_defaults(), network part (+ channel_mult, num_classes, in_channels)
ADM_SR_DEFAULTS: dict[str, Any] = dict(
    large_size=256,
    small_size=64,
    num_channels=128,
    num_res_blocks=2,
    num_heads=4,
    num_heads_upsample=-1,
    num_head_channels=-1,
    attention_resolutions="16,8",
    channel_mult="",
    dropout=0.0,
    class_cond=False,
    learn_sigma=False,
    use_checkpoint=False,
    use_scale_shift_norm=True,
    resblock_updown=False,
    use_fp16=False,
    num_classes=1000,
    in_channels=3,
)

# improved-diffusion sr_model_and_diffusion_defaults(), network part
IDDPM_SR_DEFAULTS: dict[str, Any] = dict(
    large_size=256,
    small_size=64,
    num_channels=128,
    num_res_blocks=2,
    num_heads=4,
    num_heads_upsample=-1,
    attention_resolutions="16,8",
    channel_mult="",
    dropout=0.0,
    class_cond=False,
    learn_sigma=False,
    use_checkpoint=False,
    use_scale_shift_norm=True,
    num_classes=1000,
    in_channels=3,
)

# sr_create_model's channel_mult per large_size (guided-diffusion; improved-diffusion has 256 and 64)
ADM_SR_CHANNEL_MULT = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}
IDDPM_SR_CHANNEL_MULT = {256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}


class SuperResNetwork(nn.Module):
    """eps_fn of the upsampler: (x_t, t, y) -> UNet(cat[x_t, bilinear(low_res)], t, y), with the
    bound low-resolution batch ``low_res`` [B, C, small, small] (None: unbound)."""

    def __init__(self, unet: UNetModel, num_timesteps: int, rescale_timesteps: bool, low_res=None):
        super().__init__()
        self.unet = unet
        self.num_timesteps, self.rescale_timesteps = num_timesteps, rescale_timesteps
        self.low_res = low_res

    def with_low_res(self, low_res: torch.Tensor) -> SuperResNetwork:
        return SuperResNetwork(self.unet, self.num_timesteps, self.rescale_timesteps, low_res)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.low_res is None:
            raise SamplerkitError("this is a super-resolution model: bind its low-resolution images first "
                                  "(samplerkit.adapters.superres.bind, or the low_res setting of a run)")
        if self.low_res.shape[0] != x_t.shape[0]:
            raise SamplerkitError(f"{self.low_res.shape[0]} low-resolution images are bound but the batch has "
                                  f"{x_t.shape[0]}")
        low = self.low_res.to(device=x_t.device, dtype=x_t.dtype)
        upsampled = F.interpolate(low, x_t.shape[-2:], mode="bilinear")
        t = t.float() * (1000.0 / self.num_timesteps) if self.rescale_timesteps else t
        return self.unet(torch.cat([x_t, upsampled], dim=1), t, y)


class SuperResDenoiser(UNetDenoiser):
    """D(x; sigma | low_res) of an upsampler; ``low_res_resolution`` is the conditioning size."""

    @property
    def unet(self) -> UNetModel:
        return self.eps_fn.unet


def bind(net: SuperResDenoiser, low_res) -> SuperResDenoiser:
    """``net`` with the low-resolution images ``low_res`` [B, C, small, small] in [-1, 1] bound: a
    denoiser of the usual contract for batches of exactly those B images (shares the network)."""
    if not isinstance(net, SuperResDenoiser):
        raise SamplerkitError("low-resolution images condition super-resolution models only")
    low = torch.as_tensor(low_res)
    size, C = net.low_res_resolution, net.img_channels
    if low.ndim != 4 or tuple(low.shape[1:]) != (C, size, size):
        got = "x".join(str(s) for s in low.shape[1:]) if low.ndim == 4 else f"a {low.ndim}-d array"
        raise SamplerkitError(f"the upsampler takes {size}x{size} low-resolution images with {C} channels "
                              f"([B, {C}, {size}, {size}]), got {got}")
    if not low.dtype.is_floating_point:
        raise SamplerkitError("low-resolution images must be floats in [-1, 1] (uint8 x / 127.5 - 1)")
    eps_fn = net.eps_fn.with_low_res(low.to(torch.float32))
    bound = SuperResDenoiser(eps_fn, net.alphas_cumprod, net.learned_variance, img_channels=C,
                             img_resolution=net.img_resolution, label_dim=net.label_dim, dtype=net.dtype)
    bound.low_res_resolution = size
    return bound.to(net.alphas_cumprod.device)


def _build(f: dict[str, Any], table: dict[int, tuple], family: str, use_fp16: bool = False,
           iddpm: bool = False) -> UNetModel:
    size = f["large_size"]
    if f["small_size"] <= 0 or f["small_size"] > size:
        raise SamplerkitError(f"small_size must lie in 1 .. large_size ({size}), got {f['small_size']}")
    try:
        return UNetModel(
            in_channels=2 * f["in_channels"],
            model_channels=f["num_channels"],
            out_channels=2 * f["in_channels"] if f["learn_sigma"] else f["in_channels"],
            num_res_blocks=f["num_res_blocks"],
            attention_resolutions=attention_rates(size, f["attention_resolutions"]),
            dropout=f["dropout"],
            channel_mult=channel_mult_for(size, f["channel_mult"], table),
            num_classes=f["num_classes"] if f["class_cond"] else None,
            use_fp16=use_fp16,
            num_heads=f["num_heads"],
            num_head_channels=f.get("num_head_channels", -1),
            num_heads_upsample=f["num_heads_upsample"],
            use_scale_shift_norm=f["use_scale_shift_norm"],
            resblock_updown=f.get("resblock_updown", False),
            use_checkpoint=f["use_checkpoint"],
            act=SigmoidSiLU if iddpm else nn.SiLU,
        )
    except ValueError as err:
        raise SamplerkitError(f"invalid {family} flags: {err}") from None


def create_upsampler(family: str = "adm", **flags) -> UNetModel:
    """The upsampler UNet of guided-diffusion (``family="adm"``) or improved-diffusion (``"iddpm"``)
    from its ``sr_create_model`` flags."""
    iddpm = family == "iddpm"
    f = resolve_flags(flags, IDDPM_SR_DEFAULTS if iddpm else ADM_SR_DEFAULTS, f"{family} upsampler")
    return _build(f, IDDPM_SR_CHANNEL_MULT if iddpm else ADM_SR_CHANNEL_MULT, family, iddpm=iddpm)


def load_upsampler(path: str | Path, family: str = "adm", device: str | torch.device = "cpu",
                   **flags) -> SuperResDenoiser:
    """An upsampler ``.pt`` state dict + its upstream flags -> :class:`SuperResDenoiser` (unbound).

    ``family`` "adm" (guided-diffusion, diffusion defaults T=1000 linear, integer t) or "iddpm"
    (improved-diffusion, ``rescale_timesteps`` True by default; its released upsampler was trained
    with False, T=4000, linear). Loaded strictly.
    """
    iddpm = family == "iddpm"
    name = f"{'iDDPM' if iddpm else 'ADM'} upsampler"
    net_flags, d = diffusion_settings(flags, IDDPM_DIFFUSION_DEFAULTS if iddpm else ADM_DIFFUSION_DEFAULTS, name)
    f = resolve_flags(net_flags, IDDPM_SR_DEFAULTS if iddpm else ADM_SR_DEFAULTS, name)
    table = IDDPM_SR_CHANNEL_MULT if iddpm else ADM_SR_CHANNEL_MULT
    sd = read_state_dict(path, device)
    said = {**f, **d, "image_size": f["large_size"], "in_channels": 2 * f["in_channels"],
            "use_new_attention_order": False, "num_head_channels": f.get("num_head_channels", -1)}
    said["channel_mult"] = ",".join(f"{m:g}" for m in channel_mult_for(f["large_size"], f["channel_mult"], table))
    advice = lambda: rebuild_advice(sd, said, {"image_size", *flags}, ADM_RECORD)  # noqa: E731
    unet = load_weights(lambda: _build(f, table, name, iddpm=iddpm), sd, advice, name)
    if f.get("use_fp16"):
        unet.convert_to_fp16()
    label_dim = f["num_classes"] if f["class_cond"] else 0
    abar = alpha_bar_from_betas(betas_for(d["noise_schedule"], d["diffusion_steps"]))
    eps_fn = SuperResNetwork(unet.eval().requires_grad_(False), d["diffusion_steps"], d["rescale_timesteps"])
    net = SuperResDenoiser(eps_fn, abar, f["learn_sigma"], img_channels=f["in_channels"],
                           img_resolution=f["large_size"], label_dim=label_dim)
    net.low_res_resolution = f["small_size"]
    return net.to(device)
