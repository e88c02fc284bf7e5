"""ADM (guided-diffusion) checkpoints -> D(x; sigma); also the DDPM-IP release (ADM-IP and its baselines).

A checkpoint is a bare state dict of the guided-diffusion ``UNetModel``; its architecture is
given by the upstream flags (``num_channels``, ``num_res_blocks``, ``attention_resolutions``,
...), with the defaults of guided-diffusion's ``script_util.model_and_diffusion_defaults``.
The network predicts eps (and v of Nichol & Dhariwal 2021, Eq. 15, with ``learn_sigma``) on a discrete
schedule of ``diffusion_steps`` levels; :class:`UNetDenoiser` wraps it as
D(x; sigma) = x - sigma eps(x / sqrt(sigma^2 + 1), t(sigma)) (Karras et al. 2022 (EDM), Table 1, iDDPM row).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from samplerkit.denoisers import DiscreteEpsDenoiser
from samplerkit.diffusion import alpha_bar_from_betas, betas_for
from samplerkit.errors import SamplerkitError

from ._unet_blocks import UNetModel

# guided-diffusion script_util.model_and_diffusion_defaults(), network part (+ in_channels, num_classes)
NETWORK_DEFAULTS: dict[str, Any] = dict(
    image_size=64,
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
    use_new_attention_order=False,
    in_channels=3,
    num_classes=1000,
)

# diffusion_defaults(): the flags that change what the network means
DIFFUSION_DEFAULTS: dict[str, Any] = dict(diffusion_steps=1000, noise_schedule="linear", rescale_timesteps=False)

# upstream flags that only matter for training or for the upstream sampler loop
TRAINING_ONLY_FLAGS = ("use_kl", "rescale_learned_sigmas", "input_pertub", "sigma_small")

# create_model's channel_mult for channel_mult="" (32 px: the DDPM-IP fork's addition)
DEFAULT_CHANNEL_MULT: dict[int, tuple[float, ...]] = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
}


# ---------------------------------------------------------------------------------------------
# flags


def _coerce(name: str, value: Any, default: Any) -> Any:
    """A flag value (possibly a command-line string) in the type of its default."""
    if isinstance(default, bool):
        if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.strip().lower() in ("true", "1", "yes")
        if isinstance(value, (bool, int)) and value in (0, 1):
            return bool(value)
        raise SamplerkitError(f"flag {name} must be True or False, got {value!r}")
    try:
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        raise SamplerkitError(f"flag {name} must be a {type(default).__name__}, got {value!r}") from None
    return value


def _int_list(name: str, value: Any, kind=int) -> tuple:
    """ "16,8" or [16, 8] -> (16, 8); "" -> ()."""
    if isinstance(value, str):
        items = [v for v in value.replace(" ", "").split(",") if v]
    elif isinstance(value, int):
        items = [value]
    else:
        items = list(value)
    try:
        out = tuple(kind(v) for v in items)
    except (TypeError, ValueError):
        raise SamplerkitError(f"flag {name} must be comma-separated numbers like '16,8', got {value!r}") from None
    return tuple(int(v) if float(v).is_integer() else v for v in out)


def resolve_flags(flags: Mapping[str, Any], defaults: Mapping[str, Any], family: str) -> dict[str, Any]:
    """Defaults overridden by ``flags``, each coerced to its default's type; unknown names are errors."""
    unknown = [k for k in flags if k not in defaults]
    if unknown:
        raise SamplerkitError(f"unknown {family} flag {unknown[0]!r}; known flags: {', '.join(sorted(defaults))}")
    return {k: _coerce(k, flags[k], d) if k in flags else d for k, d in defaults.items()}


def channel_mult_for(image_size: int, channel_mult: Any, table: Mapping[int, tuple] = DEFAULT_CHANNEL_MULT) -> tuple:
    """The explicit ``channel_mult`` or, for "" (the default), the upstream choice for ``image_size``."""
    if channel_mult in ("", None, ()):
        if image_size not in table:
            sizes = ", ".join(str(s) for s in sorted(table))
            raise SamplerkitError(
                f"no default channel_mult for image_size {image_size} (only for {sizes}); pass channel_mult"
            )
        return tuple(table[image_size])
    return _int_list("channel_mult", channel_mult, kind=float)


def attention_rates(image_size: int, attention_resolutions: Any) -> tuple[int, ...]:
    """Image resolutions ("32,16,8") -> the downsample rates image_size // res the UNet uses."""
    resolutions = _int_list("attention_resolutions", attention_resolutions)
    for r in resolutions:
        if r <= 0 or image_size % r:
            raise SamplerkitError(f"attention resolution {r} does not divide image_size {image_size}")
    return tuple(image_size // r for r in resolutions)


def create_unet(**flags) -> UNetModel:
    """guided-diffusion's ``create_model`` with its flag names and defaults -> :class:`UNetModel`.

    Flags: image_size, num_channels, num_res_blocks, channel_mult ("" or "1,2,2,2"),
    learn_sigma, class_cond, attention_resolutions ("16,8" or a list of image resolutions),
    num_heads, num_head_channels, num_heads_upsample, use_scale_shift_norm, dropout,
    resblock_updown, use_fp16, use_new_attention_order, use_checkpoint, in_channels (3),
    num_classes (1000). An unknown flag raises SamplerkitError naming it.
    """
    f = resolve_flags(flags, NETWORK_DEFAULTS, "ADM")
    return _build_adm(f)


def _build_adm(f: Mapping[str, Any], use_fp16: bool | None = None) -> UNetModel:
    try:
        return UNetModel(
            in_channels=f["in_channels"],
            model_channels=f["num_channels"],
            out_channels=2 * f["in_channels"] if f["learn_sigma"] else f["in_channels"],
            num_res_blocks=f["num_res_blocks"],
            attention_resolutions=attention_rates(f["image_size"], f["attention_resolutions"]),
            dropout=f["dropout"],
            channel_mult=channel_mult_for(f["image_size"], f["channel_mult"]),
            num_classes=f["num_classes"] if f["class_cond"] else None,
            use_fp16=f["use_fp16"] if use_fp16 is None else use_fp16,
            num_heads=f["num_heads"],
            num_head_channels=f["num_head_channels"],
            num_heads_upsample=f["num_heads_upsample"],
            use_scale_shift_norm=f["use_scale_shift_norm"],
            resblock_updown=f["resblock_updown"],
            use_new_attention_order=f["use_new_attention_order"],
            use_checkpoint=f["use_checkpoint"],
        )
    except ValueError as err:  # head counts that do not divide the channels
        raise SamplerkitError(f"invalid ADM flags: {err}") from None


# ---------------------------------------------------------------------------------------------
# reading the architecture back from a state dict (for error messages)


def _block_layers(sd: Mapping[str, torch.Tensor], prefix: str) -> list[dict[int, str]]:
    """For each ``{prefix}.{i}``: {layer index: 'res' | 'attn' | 'conv' | ''} read from the key names."""
    kind_of = {"in_layers": "res", "qkv": "attn", "op": "conv", "conv": "conv"}
    blocks: dict[int, dict[int, str]] = {}
    for key in sd:
        parts = key.split(".")
        if parts[0] != prefix or len(parts) < 4:
            continue
        layers = blocks.setdefault(int(parts[1]), {})
        layers[int(parts[2])] = layers.get(int(parts[2])) or kind_of.get(parts[3], "")
    return [blocks.get(i, {}) for i in range(max(blocks, default=-1) + 1)]


def infer_flags(state_dict: Mapping[str, torch.Tensor], image_size: int | None = None) -> dict[str, Any]:
    """Best-effort architecture flags read from the key names and shapes of an ADM/iDDPM state dict.

    Returns what the weights determine: num_channels, in_channels, learn_sigma, class_cond,
    num_classes, use_scale_shift_norm, num_res_blocks, resblock_updown, channel_mult
    ("1,2,3,4"), attention_downsample_rates and, given ``image_size``, attention_resolutions
    ("16,8"). num_heads, num_head_channels, use_new_attention_order and dropout leave no trace
    in the weights and are never inferred; entries that cannot be read are left out.
    """
    sd, out = state_dict, {}
    try:
        if "time_embed.0.weight" in sd:
            out["num_channels"] = int(sd["time_embed.0.weight"].shape[1])
        if "input_blocks.0.0.weight" in sd:
            out["in_channels"] = int(sd["input_blocks.0.0.weight"].shape[1])
        if "out.2.weight" in sd and "in_channels" in out:
            out["learn_sigma"] = int(sd["out.2.weight"].shape[0]) == 2 * out["in_channels"]
        out["class_cond"] = "label_emb.weight" in sd
        if out["class_cond"]:
            out["num_classes"] = int(sd["label_emb.weight"].shape[0])
        emb, conv = sd.get("middle_block.0.emb_layers.1.weight"), sd.get("middle_block.0.in_layers.2.weight")
        if emb is not None and conv is not None:
            out["use_scale_shift_norm"] = int(emb.shape[0]) == 2 * int(conv.shape[0])
        outputs, inputs = _block_layers(sd, "output_blocks"), _block_layers(sd, "input_blocks")
        if not outputs:
            return out
        # a decoder block ends in an upsampler (a conv, or a residual block after position 0) at level ends
        ups = [
            i
            for i, layers in enumerate(outputs)
            if max(layers, default=0) > 0 and layers[max(layers)] in ("conv", "res")
        ]
        nrb = ups[0] if ups else len(outputs) - 1
        levels = len(outputs) // (nrb + 1)
        out["num_res_blocks"] = nrb
        out["resblock_updown"] = bool(ups) and outputs[ups[0]][max(outputs[ups[0]])] == "res"
        if "num_channels" in out:
            widths = [sd[f"input_blocks.{1 + lv * (nrb + 1)}.0.out_layers.3.weight"].shape[0] for lv in range(levels)]
            out["channel_mult"] = ",".join(f"{int(w) / out['num_channels']:g}" for w in widths)
        rates = sorted(
            {2**lv for lv in range(levels) for j in range(nrb) if "attn" in inputs[1 + lv * (nrb + 1) + j].values()}
        )
        out["attention_downsample_rates"] = tuple(rates)
        if image_size:
            out["attention_resolutions"] = ",".join(str(image_size // r) for r in rates)
    except (KeyError, IndexError, ValueError, ZeroDivisionError):
        pass
    return out


@dataclass(frozen=True)
class FlagRecord:
    """Which flags of a family the weights of a checkpoint record, and which they leave no trace of.

    ``image_size_of_channel_mult`` maps a channel_mult ("1,2,2,2") to the image size it implies
    (improved-diffusion fixes channel_mult per image size; guided-diffusion takes any).
    """

    family: str
    recorded: tuple[str, ...]
    unrecorded: tuple[str, ...]
    image_size_of_channel_mult: Mapping[str, int] = field(default_factory=dict)


ADM_RECORD = FlagRecord(
    "ADM",
    recorded=("num_channels", "num_res_blocks", "channel_mult", "attention_resolutions", "learn_sigma", "class_cond",
              "num_classes", "use_scale_shift_norm", "resblock_updown", "in_channels"),
    unrecorded=("image_size", "noise_schedule", "diffusion_steps", "rescale_timesteps", "num_heads",
                "num_head_channels", "use_new_attention_order"),
)


def _fmt(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def _attention_fractions(rates: Sequence[int]) -> str:
    return ",".join(f"1/{r}" for r in rates) or "no level"


def _implied_image_size(resolutions: Sequence[int], rates: Sequence[int]) -> int | None:
    """The image size at which the flag resolutions (descending) fall on the weights' attention
    rates (ascending): resolution x rate is the same for every pair, or None."""
    if len(resolutions) != len(rates):
        return None
    sizes = {r * q for r, q in zip(sorted(resolutions, reverse=True), sorted(rates), strict=True)}
    return sizes.pop() if len(sizes) == 1 else None


def _contradictions(got: Mapping[str, Any], f: Mapping[str, Any], record: FlagRecord, size_given: bool) -> list[str]:
    """'checkpoint has num_res_blocks 3, flags say 2' for every flag the weights contradict, and
    the image size that the weights' channel_mult or attention levels imply where it differs."""
    said = dict(f)
    said["channel_mult"] = _fmt(channel_mult_for(f["image_size"], f["channel_mult"]))
    if not said.get("class_cond", False):
        said.pop("num_classes", None)
    hints = []
    for name in dict.fromkeys(("channel_mult", *record.recorded)):
        if name == "attention_resolutions" or name not in got or name not in said or got[name] == said[name]:
            continue
        hints.append(f"checkpoint has {name} {_fmt(got[name])}, flags say {_fmt(said[name])}")
    size = f["image_size"]
    implied = record.image_size_of_channel_mult.get(got.get("channel_mult", ""))
    if implied is not None and implied != size:
        hints.append(f"checkpoint's channel_mult {got['channel_mult']} means image_size {implied}, flags say {size}")
    rates = got.get("attention_downsample_rates")
    if rates is None:
        return hints
    resolutions = _int_list("attention_resolutions", f["attention_resolutions"])
    flag_rates = tuple(sorted({size // r for r in resolutions}))
    if flag_rates != tuple(rates):
        if size_given:
            hints.append(f"checkpoint has attention_resolutions {_fmt([size // r for r in rates])}, "
                         f"flags say {_fmt(sorted(set(resolutions), reverse=True))}")
        else:
            hints.append(f"checkpoint has attention at {_attention_fractions(rates)} of image_size, flags put it at "
                         f"{_attention_fractions(flag_rates)} (attention_resolutions {_fmt(resolutions)} "
                         f"at image_size {size}, the default)")
        implied = _implied_image_size(resolutions, rates)
        if implied is not None and implied != size:
            hints.append(f"attention_resolutions {_fmt(resolutions)} at the checkpoint's attention levels means "
                         f"image_size {implied}, flags say {size}")
    return hints


def rebuild_advice(sd: Mapping[str, torch.Tensor], flags: Mapping[str, Any], given: Collection[str],
                   record: FlagRecord = ADM_RECORD) -> str:
    """One line for a checkpoint that does not match its flags: what the weights contradict, then
    every flag that rebuilds the network exactly -- those read from the weights with their values,
    and those the weights do not record with the value in use now, to check against training.

    ``flags`` are the resolved network + diffusion flags, ``given`` the names the caller passed
    (a default image_size is not evidence of the image size).
    """
    size_given = "image_size" in given
    got = infer_flags(sd)
    hints = _contradictions(got, flags, record, size_given)
    size = record.image_size_of_channel_mult.get(got.get("channel_mult", ""))  # read from the weights
    if size is None and not size_given and "attention_downsample_rates" in got:
        resolutions = _int_list("attention_resolutions", flags["attention_resolutions"])
        size = _implied_image_size(resolutions, got["attention_downsample_rates"])
    from_weights = size is not None
    if size is None and size_given:
        size = flags["image_size"]

    known = [f"image_size={size}"] if from_weights else []
    for name in record.recorded:
        if name == "attention_resolutions":
            rates = got.get("attention_downsample_rates")
            if rates is not None:
                known.append(f"{name}={_fmt([size // r for r in rates])}" if size else
                             f"{name}=" + ",".join(f"image_size/{r}" for r in rates))
        elif name in got and not (name == "num_classes" and not got.get("class_cond")):
            if not (name == "in_channels" and got[name] == 3):
                known.append(f"{name}={_fmt(got[name])}")
    unknown = [
        f"{name}={_fmt(flags[name])}" + ("" if name in given else " (default)")
        for name in record.unrecorded
        if name in flags and not (name == "image_size" and from_weights)
    ]
    advice = (f"to rebuild it exactly pass {' '.join(known)} (read from the weights) and, as it was trained, "
              f"{' '.join(unknown)} (the weights do not record these; a samplerkit retrain run's flags.json "
              "beside the checkpoint holds them all)")
    return "; ".join([*hints, advice])


# ---------------------------------------------------------------------------------------------
# loading


def read_state_dict(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A guided-/improved-diffusion ``.pt`` (a bare state dict) read without running pickled code."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise SamplerkitError(f"checkpoint not found: {path}") from None
    except Exception as err:
        text = " ".join(str(err).split())
        reason = text.split(". ")[0].rstrip(".") if text else type(err).__name__  # its first whole sentence
        raise SamplerkitError(
            f"{path.name} is not a readable PyTorch state dict ({reason}); "
            "pass the model*.pt / ema_*.pt file the upstream training saved"
        ) from None
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SamplerkitError(
            f"{path.name} holds a {type(obj).__name__}, not a state dict of tensors; "
            "pass the model*.pt / ema_*.pt file the upstream training saved"
        )
    return {str(k): v for k, v in obj.items()}


def load_weights(build: Callable[[], UNetModel], sd: Mapping[str, torch.Tensor], advice: Callable[[], str],
                 family: str) -> UNetModel:
    """Build the network on the meta device and adopt the checkpoint tensors (no second copy).

    Missing / unexpected keys or shape mismatches raise SamplerkitError: ``advice()`` (what the
    flags get wrong and how to rebuild the network, :func:`rebuild_advice`), then the first
    offending keys.
    """
    with torch.device("meta"):
        unet = build()
    expected = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [
        f"{k} {tuple(sd[k].shape)} vs {expected[k]}" for k in expected if k in sd and tuple(sd[k].shape) != expected[k]
    ]
    if missing or unexpected or wrong:
        problems = []
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", wrong),
        ):
            if items:
                more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
                problems.append(f"{label} {', '.join(items[:3])}{more}")
        details = "; ".join(problems)
        raise SamplerkitError(f"{family} checkpoint does not match the flags: {advice()}. Details: {details}")
    unet.load_state_dict(sd, strict=True, assign=True)
    return unet.float()


class EpsNetwork(nn.Module):
    """eps_fn of :class:`UNetDenoiser`: (x_t, integer t, int labels) -> UNet output [B, C or 2C, H, W].

    With ``rescale_timesteps`` the network is fed t * 1000 / T as a float (improved-diffusion's
    default, guided-diffusion's option), else the integer t.
    """

    def __init__(self, unet: UNetModel, num_timesteps: int, rescale_timesteps: bool):
        super().__init__()
        self.unet = unet
        self.num_timesteps = num_timesteps
        self.rescale_timesteps = rescale_timesteps

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        return t.float() * (1000.0 / self.num_timesteps) if self.rescale_timesteps else t

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(x_t, self.network_time(t), y)


class UNetDenoiser(DiscreteEpsDenoiser):
    """:class:`~samplerkit.denoisers.DiscreteEpsDenoiser` over an ADM/iDDPM UNet.

    Class labels arrive as int [B] or one-hot [B, label_dim]; the network gets int labels.
    """

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, class_labels=None):
        labels = self.prepare_labels(class_labels, x_t.shape[0], x_t.device)
        y = None if labels is None else labels.argmax(dim=1)
        return super().eps(x_t, t, y)

    @property
    def unet(self) -> UNetModel:
        return self.eps_fn.unet


def diffusion_settings(flags: Mapping[str, Any], defaults: Mapping[str, Any], family: str) -> tuple[dict, dict]:
    """Split load flags into (network flags, diffusion flags) with the family's defaults.

    Training-only upstream flags are accepted and ignored; a respacing or x0-prediction flag is
    refused with what to do instead.
    """
    flags = dict(flags)
    for name in TRAINING_ONLY_FLAGS:
        flags.pop(name, None)
    if str(flags.pop("timestep_respacing", "") or ""):
        raise SamplerkitError(
            "timestep_respacing is a sampler setting: load the full model and give the sampler a step count"
        )
    if _coerce("predict_xstart", flags.pop("predict_xstart", False), False):
        raise SamplerkitError("predict_xstart=True checkpoints (x0 prediction) are not supported; only eps prediction")
    diffusion = {k: flags.pop(k) for k in list(flags) if k in defaults}
    return flags, resolve_flags(diffusion, defaults, family)


def wrap_unet(
    unet: UNetModel,
    d: Mapping[str, Any],
    learn_sigma: bool,
    image_size: int,
    in_channels: int,
    label_dim: int,
) -> UNetDenoiser:
    """The denoiser over ``unet`` trained on ``d['noise_schedule']`` with ``d['diffusion_steps']`` levels."""
    abar = alpha_bar_from_betas(betas_for(d["noise_schedule"], d["diffusion_steps"]))
    net = UNetDenoiser(
        EpsNetwork(unet.eval().requires_grad_(False), d["diffusion_steps"], d["rescale_timesteps"]),
        abar,
        learned_variance=learn_sigma,
        img_channels=in_channels,
        img_resolution=image_size,
        label_dim=label_dim,
    )
    return net


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", **flags) -> DiscreteEpsDenoiser:
    """A guided-diffusion (or DDPM-IP) ``.pt`` state dict + upstream flags -> D(x; sigma).

    Network flags as :func:`create_unet`; diffusion flags ``diffusion_steps`` (1000),
    ``noise_schedule`` ("linear" | "cosine") and ``rescale_timesteps`` (False: the network gets
    the integer t; True: t * 1000 / T). ``learn_sigma`` makes the denoiser expose v
    (Nichol & Dhariwal 2021, Eq. 15); ``class_cond`` makes it take labels (label_dim = num_classes).
    """
    net_flags, d = diffusion_settings(flags, DIFFUSION_DEFAULTS, "ADM")
    f = resolve_flags(net_flags, NETWORK_DEFAULTS, "ADM")
    sd = read_state_dict(path, device)
    advice = lambda: rebuild_advice(sd, {**f, **d}, flags)  # noqa: E731
    unet = load_weights(lambda: _build_adm(f, use_fp16=False), sd, advice, "ADM")
    if f["use_fp16"]:
        unet.convert_to_fp16()
    label_dim = f["num_classes"] if f["class_cond"] else 0
    return wrap_unet(unet, d, f["learn_sigma"], f["image_size"], f["in_channels"], label_dim).to(device)
