"""iDDPM (improved-diffusion) checkpoints -> D(x; sigma).

improved-diffusion's UNet is ADM's without its later options: heads are a fixed count
(``num_heads``, split before q/k/v), resampling is by conv layers, the first level has
``num_channels`` channels, and ``channel_mult`` follows from ``image_size``. Its state dicts
share ADM's key layout, so the network and the loading come from :mod:`samplerkit.adapters.adm`; only
the flags and their defaults (improved-diffusion's ``script_util``) differ. By default the
network is fed t * 1000 / T (``rescale_timesteps=True``); the released models use
``diffusion_steps=4000`` with the cosine schedule (Nichol & Dhariwal 2021, Sec. 3.2, Eq. 17).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from samplerkit.denoisers import DiscreteEpsDenoiser
from samplerkit.errors import SamplerkitError

from ._unet_blocks import SigmoidSiLU, UNetModel
from .adm import (
    FlagRecord,
    attention_rates,
    channel_mult_for,
    diffusion_settings,
    infer_flags,
    load_weights,
    read_state_dict,
    rebuild_advice,
    resolve_flags,
    wrap_unet,
)

__all__ = ["NETWORK_DEFAULTS", "DIFFUSION_DEFAULTS", "create_unet", "infer_flags", "load_checkpoint"]

# improved-diffusion script_util.model_and_diffusion_defaults(), network part (+ in_channels, num_classes)
NETWORK_DEFAULTS: dict[str, Any] = dict(
    image_size=64,
    num_channels=128,
    num_res_blocks=2,
    num_heads=4,
    num_heads_upsample=-1,
    attention_resolutions="16,8",
    dropout=0.0,
    learn_sigma=False,
    class_cond=False,
    use_checkpoint=False,
    use_scale_shift_norm=True,
    in_channels=3,
    num_classes=1000,
)

DIFFUSION_DEFAULTS: dict[str, Any] = dict(diffusion_steps=1000, noise_schedule="linear", rescale_timesteps=True)

# improved-diffusion create_model's channel_mult per image_size
CHANNEL_MULT: dict[int, tuple[int, ...]] = {256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}

# what an improved-diffusion state dict records: its channel_mult fixes image_size
IDDPM_RECORD = FlagRecord(
    "iDDPM",
    recorded=("num_channels", "num_res_blocks", "attention_resolutions", "learn_sigma", "class_cond", "num_classes",
              "use_scale_shift_norm", "in_channels"),
    unrecorded=("image_size", "noise_schedule", "diffusion_steps", "rescale_timesteps", "num_heads"),
    image_size_of_channel_mult={",".join(map(str, m)): size for size, m in CHANNEL_MULT.items()},
)


def create_unet(**flags) -> UNetModel:
    """improved-diffusion's ``create_model`` with its flag names and defaults -> :class:`UNetModel`.

    Flags: image_size (32, 64 or 256), num_channels, num_res_blocks, num_heads,
    num_heads_upsample, attention_resolutions ("16,8" or a list of image resolutions), dropout,
    learn_sigma, class_cond, use_scale_shift_norm, use_checkpoint, in_channels (3),
    num_classes (1000). An unknown flag raises SamplerkitError naming it.
    """
    return _build_iddpm(resolve_flags(flags, NETWORK_DEFAULTS, "iDDPM"))


def _build_iddpm(f: dict[str, Any]) -> UNetModel:
    if f["image_size"] not in CHANNEL_MULT:
        sizes = ", ".join(str(s) for s in sorted(CHANNEL_MULT))
        raise SamplerkitError(f"improved-diffusion UNets exist for image_size {sizes}, not {f['image_size']}")
    try:
        return UNetModel(
            in_channels=f["in_channels"],
            model_channels=f["num_channels"],
            out_channels=2 * f["in_channels"] if f["learn_sigma"] else f["in_channels"],
            num_res_blocks=f["num_res_blocks"],
            attention_resolutions=attention_rates(f["image_size"], f["attention_resolutions"]),
            dropout=f["dropout"],
            channel_mult=channel_mult_for(f["image_size"], "", CHANNEL_MULT),
            num_classes=f["num_classes"] if f["class_cond"] else None,
            num_heads=f["num_heads"],
            num_heads_upsample=f["num_heads_upsample"],
            use_scale_shift_norm=f["use_scale_shift_norm"],
            use_checkpoint=f["use_checkpoint"],
            act=SigmoidSiLU,
        )
    except ValueError as err:  # a head count that does not divide the channels
        raise SamplerkitError(f"invalid iDDPM flags: {err}") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", **flags) -> DiscreteEpsDenoiser:
    """An improved-diffusion ``.pt`` state dict + upstream flags -> D(x; sigma).

    Network flags as :func:`create_unet`; diffusion flags ``diffusion_steps`` (1000; the
    released models use 4000), ``noise_schedule`` ("linear" | "cosine") and
    ``rescale_timesteps`` (True: the network gets t * 1000 / T; the class-conditional
    ImageNet-64 release was trained with False).
    """
    net_flags, d = diffusion_settings(flags, DIFFUSION_DEFAULTS, "iDDPM")
    f = resolve_flags(net_flags, NETWORK_DEFAULTS, "iDDPM")
    sd = read_state_dict(path, device)
    said = {**f, **d, "channel_mult": ",".join(map(str, CHANNEL_MULT.get(f["image_size"], ())))}
    advice = lambda: rebuild_advice(sd, said, flags, IDDPM_RECORD)  # noqa: E731
    unet = load_weights(lambda: _build_iddpm(f), sd, advice, "iDDPM")
    label_dim = f["num_classes"] if f["class_cond"] else 0
    return wrap_unet(unet, d, f["learn_sigma"], f["image_size"], f["in_channels"], label_dim).to(device)
