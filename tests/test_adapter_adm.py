"""ADM (guided-diffusion) adapter: upstream key layout, outputs, the D(x; sigma) wrapper, errors.

The reference network below is a plain functional forward over a state dict (F.conv2d,
F.group_norm, ...) computed in float64, written from the architecture description and
independent of :mod:`samplerkit.adapters._unet_blocks`; ``tests/fixtures/unet_upstream_outputs.pt``
holds outputs of the upstream guided-/improved-diffusion code on the weights of
:func:`random_state_dict`.
"""

from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from samplerkit.adapters import adm

import samplerkit as sk
from samplerkit.diffusion import alpha_bar_from_betas, betas_for, sigma_from_alpha_bar
from samplerkit.testing import random_state_dict

FIXTURES = Path(__file__).parent / "fixtures"

# ---------------------------------------------------------------------------------------------
# helpers shared with test_adapter_iddpm.py (random_state_dict: samplerkit.testing, shared with the benchmarks)


def template_of(create, **flags) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return create(**flags).state_dict()


def reference_unet(sd, x, t, y, *, channel_mult, num_res_blocks, attention_rates, heads, new_order=False,
                   scale_shift=True, updown=False, sigmoid_silu=False):
    """Functional float64 forward of the ADM / iDDPM UNet over the state dict ``sd``.

    ``heads(channels)`` gives the number of attention heads of a layer; ``t`` is what the
    network is fed (float32 timestep embedding as upstream, everything after in float64).
    """
    sd = {k: v.double() for k, v in sd.items()}
    mc = sd["time_embed.0.weight"].shape[1]

    def silu(h):
        return h * torch.sigmoid(h) if sigmoid_silu else F.silu(h)

    def gn(h, p):
        return F.group_norm(h, 32, sd[p + ".weight"], sd[p + ".bias"], 1e-5)

    def conv(h, p, stride=1):
        w = sd[p + ".weight"]
        return F.conv2d(h, w, sd[p + ".bias"], stride=stride, padding=w.shape[-1] // 2)

    def res(h, emb, p, resample=None):
        a = silu(gn(h, p + ".in_layers.0"))
        if resample is not None:
            a, h = resample(a), resample(h)
        a = conv(a, p + ".in_layers.2")
        e = F.linear(silu(emb), sd[p + ".emb_layers.1.weight"], sd[p + ".emb_layers.1.bias"])[:, :, None, None]
        if scale_shift:
            scale, shift = e.chunk(2, dim=1)
            a = silu(gn(a, p + ".out_layers.0") * (1 + scale) + shift)
        else:
            a = silu(gn(a + e, p + ".out_layers.0"))
        a = conv(a, p + ".out_layers.3")
        skip = conv(h, p + ".skip_connection") if p + ".skip_connection.weight" in sd else h
        return skip + a

    def attn(h, p):
        B, C, H, W = h.shape
        n = heads(C)
        z = h.reshape(B, C, H * W)
        qkv = F.conv1d(gn(z, p + ".norm"), sd[p + ".qkv.weight"], sd[p + ".qkv.bias"])
        if new_order:  # [q | k | v], each [head][ch]
            q, k, v = (u.reshape(B, n, C // n, H * W) for u in qkv.chunk(3, dim=1))
        else:  # [head][q | k | v][ch]
            q, k, v = qkv.reshape(B, n, 3 * C // n, H * W).chunk(3, dim=2)
        w = torch.softmax(torch.einsum("bnct,bncs->bnts", q, k) / math.sqrt(C // n), dim=-1)
        a = torch.einsum("bnts,bncs->bnct", w, v).reshape(B, C, H * W)
        return (z + F.conv1d(a, sd[p + ".proj_out.weight"], sd[p + ".proj_out.bias"])).reshape(B, C, H, W)

    half = mc // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = torch.as_tensor(t).float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1).double()
    emb = F.linear(silu(F.linear(emb, sd["time_embed.0.weight"], sd["time_embed.0.bias"])),
                   sd["time_embed.2.weight"], sd["time_embed.2.bias"])
    if y is not None:
        emb = emb + sd["label_emb.weight"][y]

    def down(h):
        return F.avg_pool2d(h, 2)

    def up(h):
        return F.interpolate(h, scale_factor=2, mode="nearest")

    h = conv(x.double(), "input_blocks.0.0")
    skips, i, ds = [h], 1, 1
    for level in range(len(channel_mult)):
        for _ in range(num_res_blocks):
            h = res(h, emb, f"input_blocks.{i}.0")
            if ds in attention_rates:
                h = attn(h, f"input_blocks.{i}.1")
            skips.append(h)
            i += 1
        if level < len(channel_mult) - 1:
            h = res(h, emb, f"input_blocks.{i}.0", down) if updown else conv(h, f"input_blocks.{i}.0.op", stride=2)
            skips.append(h)
            i, ds = i + 1, ds * 2
    h = res(attn(res(h, emb, "middle_block.0"), "middle_block.1"), emb, "middle_block.2")
    i = 0
    for level in reversed(range(len(channel_mult))):
        for j in range(num_res_blocks + 1):
            h = res(torch.cat([h, skips.pop()], dim=1), emb, f"output_blocks.{i}.0")
            layer = 1
            if ds in attention_rates:
                h, layer = attn(h, f"output_blocks.{i}.1"), 2
            if level and j == num_res_blocks:
                p = f"output_blocks.{i}.{layer}"
                h = res(h, emb, p, up) if updown else conv(up(h), p + ".conv")
                ds //= 2
            i += 1
    return conv(silu(gn(h, "out.0")), "out.2")


def network_output(net, x, t, labels=None) -> torch.Tensor:
    """The raw UNet output [B, C or 2C, H, W] through the loaded denoiser's public eps()."""
    eps, v = net.eps(x, t, labels)
    return eps if v is None else torch.cat([eps, v], dim=1)


def res_keys(p: str, skip: bool = False) -> list[str]:
    names = ["in_layers.0", "in_layers.2", "emb_layers.1", "out_layers.0", "out_layers.3"]
    names += ["skip_connection"] if skip else []
    return [f"{p}.{n}.{wb}" for n in names for wb in ("weight", "bias")]


def attn_keys(p: str) -> list[str]:
    return [f"{p}.{n}.{wb}" for n in ("norm", "qkv", "proj_out") for wb in ("weight", "bias")]


def conv_keys(p: str) -> list[str]:
    return [f"{p}.weight", f"{p}.bias"]


# ---------------------------------------------------------------------------------------------
# released ADM architectures at reduced width (same topology, fewer channels)

ADM_CONFIGS = {
    # guided-diffusion 64x64_diffusion.pt: 192 ch, 64-ch heads
    "imagenet64-cond": dict(
        image_size=64, num_channels=32, num_res_blocks=3, attention_resolutions="32,16,8", num_head_channels=16,
        resblock_updown=True, use_new_attention_order=True, learn_sigma=True, class_cond=True,
        use_scale_shift_norm=True, dropout=0.1, diffusion_steps=1000, noise_schedule="cosine",
    ),
    # 128x128_diffusion.pt: 256 ch, 4 heads, legacy head order
    "imagenet128-cond": dict(
        image_size=128, num_channels=32, num_res_blocks=2, attention_resolutions="32,16,8", num_heads=4,
        resblock_updown=True, learn_sigma=True, class_cond=True, use_scale_shift_norm=True,
        diffusion_steps=1000, noise_schedule="linear",
    ),
    # 256x256_diffusion.pt
    "imagenet256-cond": dict(
        image_size=256, num_channels=32, num_res_blocks=2, attention_resolutions="32,16,8", num_head_channels=16,
        resblock_updown=True, learn_sigma=True, class_cond=True, use_scale_shift_norm=True,
        diffusion_steps=1000, noise_schedule="linear",
    ),
    # 256x256_diffusion_uncond.pt
    "imagenet256-uncond": dict(
        image_size=256, num_channels=32, num_res_blocks=2, attention_resolutions="32,16,8", num_head_channels=16,
        resblock_updown=True, learn_sigma=True, class_cond=False, use_scale_shift_norm=True,
        diffusion_steps=1000, noise_schedule="linear",
    ),
    # lsun_bedroom.pt / lsun_cat.pt
    "lsun256": dict(
        image_size=256, num_channels=32, num_res_blocks=2, attention_resolutions="32,16,8", num_head_channels=16,
        resblock_updown=True, learn_sigma=True, class_cond=False, use_scale_shift_norm=True, dropout=0.1,
        diffusion_steps=1000, noise_schedule="linear",
    ),
    # DDPM-IP CIFAR-10 ADM / ADM-IP: 128 ch, 32-ch heads, 3 blocks, attention 16,8, dropout 0.3
    "ddpm-ip-cifar10": dict(
        image_size=32, num_channels=32, num_head_channels=8, num_res_blocks=3, attention_resolutions="16,8",
        resblock_updown=True, use_new_attention_order=True, learn_sigma=True, dropout=0.3,
        use_scale_shift_norm=True, diffusion_steps=1000, noise_schedule="cosine",
    ),
}
NETWORK_ONLY = ("diffusion_steps", "noise_schedule", "rescale_timesteps")
INPUT_SIZE = {"imagenet64-cond": 64, "imagenet128-cond": 32, "ddpm-ip-cifar10": 32}  # 256s: 64


def net_flags(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in NETWORK_ONLY}


def adm_reference(sd, cfg, x, t, y):
    rates = [cfg["image_size"] // int(r) for r in cfg["attention_resolutions"].split(",")]
    hc = cfg.get("num_head_channels", -1)
    return reference_unet(
        sd, x, t, y,
        channel_mult=adm.channel_mult_for(cfg["image_size"], cfg.get("channel_mult", "")),
        num_res_blocks=cfg["num_res_blocks"], attention_rates=rates,
        heads=(lambda C: C // hc) if hc > 0 else (lambda C: cfg.get("num_heads", 4)),
        new_order=cfg.get("use_new_attention_order", False), scale_shift=cfg.get("use_scale_shift_norm", True),
        updown=cfg.get("resblock_updown", False),
    )


def save_checkpoint(tmp_path, cfg, seed=0, name="model.pt") -> tuple[Path, dict]:
    sd = random_state_dict(template_of(adm.create_unet, **net_flags(cfg)), seed)
    path = tmp_path / name
    torch.save(sd, path)
    return path, sd


def inputs(size, cond, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    t = torch.tensor([7, 901][:batch])
    y = torch.tensor([3, 998][:batch]) if cond else None
    return x, t, y


# ---------------------------------------------------------------------------------------------


def test_state_dict_keys_are_guided_diffusions():
    flags = dict(image_size=32, num_channels=32, channel_mult="1,2", num_res_blocks=1, attention_resolutions="16",
                 class_cond=True, learn_sigma=True, resblock_updown=True, num_head_channels=16)
    expected = (
        conv_keys("time_embed.0") + conv_keys("time_embed.2") + ["label_emb.weight"]
        + conv_keys("input_blocks.0.0") + res_keys("input_blocks.1.0") + res_keys("input_blocks.2.0")
        + res_keys("input_blocks.3.0", skip=True) + attn_keys("input_blocks.3.1")
        + res_keys("middle_block.0") + attn_keys("middle_block.1") + res_keys("middle_block.2")
        + res_keys("output_blocks.0.0", skip=True) + attn_keys("output_blocks.0.1")
        + res_keys("output_blocks.1.0", skip=True) + attn_keys("output_blocks.1.1") + res_keys("output_blocks.1.2")
        + res_keys("output_blocks.2.0", skip=True) + res_keys("output_blocks.3.0", skip=True)
        + conv_keys("out.0") + conv_keys("out.2")
    )
    sd = adm.create_unet(**flags).state_dict()
    assert list(sd) == expected
    assert sd["label_emb.weight"].shape == (1000, 128)
    assert sd["middle_block.1.qkv.weight"].shape == (192, 64, 1)
    assert sd["out.2.weight"].shape == (6, 32, 3, 3)


def test_resampling_without_resblock_updown_uses_upstream_conv_names():
    flags = dict(image_size=32, num_channels=32, channel_mult="1,2", num_res_blocks=1, attention_resolutions="8")
    keys = adm.create_unet(**flags).state_dict()
    assert "input_blocks.2.0.op.weight" in keys
    assert "output_blocks.1.1.conv.weight" in keys


@pytest.mark.parametrize("name", list(ADM_CONFIGS))
def test_loaded_checkpoint_matches_reference_forward(tmp_path, name):
    cfg = ADM_CONFIGS[name]
    path, sd = save_checkpoint(tmp_path, cfg)
    net = sk.load(path, family="adm", **cfg)
    batch = 1 if name == "imagenet64-cond" else 2
    x, t, y = inputs(INPUT_SIZE.get(name, 64), cfg.get("class_cond", False), batch=batch)
    with torch.no_grad():
        got = network_output(net, x, t, y)
        want = adm_reference(sd, cfg, x, t, y)
    assert got.shape == (x.shape[0], 6, x.shape[2], x.shape[3])
    assert (got - want).abs().max().item() <= 1e-5


def test_loaded_checkpoint_matches_upstream_guided_diffusion_outputs(tmp_path):
    fixture = torch.load(FIXTURES / "unet_upstream_outputs.pt", weights_only=True)["adm-imagenet64-cond"]
    cfg = ADM_CONFIGS["imagenet64-cond"]
    path, _ = save_checkpoint(tmp_path, cfg, seed=int(fixture["seed"]))
    net = sk.load(path, family="adm", **cfg)
    with torch.no_grad():
        got = network_output(net, fixture["x"], fixture["t"], fixture["y"])
    assert (got - fixture["out"].double()).abs().max().item() <= 1e-5


def test_attention_head_order_flag_changes_the_network(tmp_path):
    cfg = {**ADM_CONFIGS["ddpm-ip-cifar10"]}
    path, _ = save_checkpoint(tmp_path, cfg)
    x, t, _ = inputs(32, False)
    with torch.no_grad():
        new = network_output(sk.load(path, family="adm", **cfg), x, t)
        legacy = network_output(sk.load(path, family="adm", **{**cfg, "use_new_attention_order": False}), x, t)
    assert (new - legacy).abs().max().item() > 1e-3


def test_denoiser_is_x_minus_sigma_eps_at_nearest_trained_level(tmp_path):
    cfg = ADM_CONFIGS["ddpm-ip-cifar10"]
    path, sd = save_checkpoint(tmp_path, cfg)
    net = sk.load(path, family="adm", **cfg)
    levels = sigma_from_alpha_bar(torch.as_tensor(alpha_bar_from_betas(betas_for("cosine", 1000))))
    sigma = torch.tensor([levels[12].item() * 1.01, levels[640].item() * 0.9995], dtype=torch.float64)
    t = (sigma[:, None] - levels[None]).abs().argmin(dim=1)
    assert t.tolist() == [12, 640]
    x, _, _ = inputs(32, False)
    with torch.no_grad():
        D, v = net.denoise_with_variance(x, sigma)
        out = adm_reference(sd, cfg, (x / (sigma**2 + 1).sqrt()[:, None, None, None]).float(), t, None)
    want = x.double() - sigma[:, None, None, None] * out[:, :3]
    assert (D - want).abs().max().item() <= 1e-4  # eps error 1e-5 times sigma <= ~10
    assert (v - out[:, 3:]).abs().max().item() <= 1e-5
    assert net.img_resolution == 32 and net.img_channels == 3 and net.label_dim == 0


def test_rescale_timesteps_feeds_t_times_1000_over_T(tmp_path):
    cfg = {**ADM_CONFIGS["ddpm-ip-cifar10"], "diffusion_steps": 4000, "rescale_timesteps": True}
    path, sd = save_checkpoint(tmp_path, cfg)
    net = sk.load(path, family="adm", **cfg)
    x, _, _ = inputs(32, False)
    t = torch.tensor([1, 2999])
    with torch.no_grad():
        got = network_output(net, x, t)
        want = adm_reference(sd, cfg, x, t.float() * 0.25, None)
        unscaled = adm_reference(sd, cfg, x, t, None)
    assert (got - want).abs().max().item() <= 1e-5
    assert (got - unscaled).abs().max().item() > 1e-3


def test_one_hot_labels_give_the_same_output_as_int_labels(tmp_path):
    cfg = ADM_CONFIGS["imagenet128-cond"]
    path, _ = save_checkpoint(tmp_path, cfg)
    net = sk.load(path, family="adm", **cfg)
    x, t, y = inputs(32, True)
    with torch.no_grad():
        a = network_output(net, x, t, y)
        b = network_output(net, x, t, F.one_hot(y, 1000).float())
        c = network_output(net, x, t, torch.tensor([4, 998]))
    assert net.label_dim == 1000
    assert torch.equal(a, b)
    assert (a - c).abs().max().item() > 1e-4


def test_default_channel_mult_per_image_size_is_create_models():
    want = {512: "0.5,1,1,2,2,4,4", 256: "1,1,2,2,4,4", 128: "1,1,2,3,4", 64: "1,2,3,4", 32: "1,2,2,2"}
    got = {s: adm.infer_flags(template_of(adm.create_unet, image_size=s, num_channels=64))["channel_mult"]
           for s in want}
    assert got == want


def test_attention_resolutions_as_list_equals_string():
    a = template_of(adm.create_unet, image_size=64, attention_resolutions="32,16,8")
    b = template_of(adm.create_unet, image_size=64, attention_resolutions=[32, 16, 8])
    assert list(a) == list(b)
    assert adm.infer_flags(a, 64)["attention_resolutions"] == "32,16,8"


def test_infer_flags_reads_the_architecture_from_the_weights():
    cfg = net_flags(ADM_CONFIGS["imagenet64-cond"])
    got = adm.infer_flags(template_of(adm.create_unet, **cfg), image_size=64)
    assert got == dict(num_channels=32, in_channels=3, learn_sigma=True, class_cond=True, num_classes=1000,
                       use_scale_shift_norm=True, num_res_blocks=3, resblock_updown=True, channel_mult="1,2,3,4",
                       attention_downsample_rates=(2, 4, 8), attention_resolutions="32,16,8")


def test_loading_adopts_the_checkpoint_tensors_without_copying(tmp_path, monkeypatch):
    cfg = ADM_CONFIGS["ddpm-ip-cifar10"]
    path, _ = save_checkpoint(tmp_path, cfg)
    loaded = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        loaded.update(real_load(*args, **kwargs))
        return loaded

    monkeypatch.setattr(torch, "load", spy)
    net = sk.load(path, family="adm", **cfg)
    params = dict(net.unet.named_parameters())
    assert all(params[k].data_ptr() == v.data_ptr() for k, v in loaded.items())


def test_fp16_body_runs_and_stays_close_to_fp32(tmp_path):
    cfg = ADM_CONFIGS["ddpm-ip-cifar10"]
    path, _ = save_checkpoint(tmp_path, cfg)
    net16 = sk.load(path, family="adm", **cfg, use_fp16=True)
    net32 = sk.load(path, family="adm", **cfg)
    assert net16.unet.input_blocks[1][0].in_layers[2].weight.dtype == torch.float16
    assert net16.unet.out[2].weight.dtype == torch.float32
    x, t, _ = inputs(32, False)
    with torch.no_grad():
        a, b = network_output(net16, x, t), network_output(net32, x, t)
    assert a.dtype == torch.float64  # the wrapper hands float64 to the samplers
    assert (a - b).abs().max().item() <= 2e-2 * b.abs().max().item()


# ---------------------------------------------------------------------------------------------
# errors


def test_unknown_flag_is_named():
    with pytest.raises(sk.SamplerkitError, match="num_chanels"):
        adm.create_unet(num_chanels=64)


def test_wrong_num_res_blocks_is_diagnosed(tmp_path):
    cfg = ADM_CONFIGS["ddpm-ip-cifar10"]
    path, _ = save_checkpoint(tmp_path, cfg)
    with pytest.raises(sk.SamplerkitError) as err:
        sk.load(path, family="adm", **{**cfg, "num_res_blocks": 2})
    msg = str(err.value)
    assert "checkpoint has num_res_blocks 3, flags say 2" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "override, hint",
    [
        ({"learn_sigma": False}, "checkpoint has learn_sigma True, flags say False"),
        ({"class_cond": True}, "checkpoint has class_cond False, flags say True"),
        ({"num_channels": 64}, "checkpoint has num_channels 32, flags say 64"),
        ({"attention_resolutions": "16"}, "checkpoint has attention_resolutions 16,8, flags say 16"),
        ({"resblock_updown": False}, "checkpoint has resblock_updown True, flags say False"),
    ],
)
def test_wrong_architecture_flag_is_named_in_the_error(tmp_path, override, hint):
    cfg = ADM_CONFIGS["ddpm-ip-cifar10"]
    path, _ = save_checkpoint(tmp_path, cfg)
    with pytest.raises(sk.SamplerkitError, match=hint):
        sk.load(path, family="adm", **{**cfg, **override})


def test_missing_keys_are_listed(tmp_path):
    cfg = ADM_CONFIGS["ddpm-ip-cifar10"]
    sd = random_state_dict(template_of(adm.create_unet, **net_flags(cfg)))
    del sd["middle_block.1.qkv.weight"]
    torch.save(sd, tmp_path / "m.pt")
    with pytest.raises(sk.SamplerkitError, match=r"missing keys middle_block\.1\.qkv\.weight"):
        sk.load(tmp_path / "m.pt", family="adm", **cfg)


def test_corrupt_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    with pytest.raises(sk.SamplerkitError, match="truncated or corrupted") as err:
        sk.load(path, family="adm")
    assert "\n" not in str(err.value)


def test_non_state_dict_file_is_refused(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(sk.SamplerkitError, match="not a state dict of tensors"):
        sk.load(tmp_path / "list.pt", family="adm")


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(_Exploit.target),))


def test_checkpoint_code_is_never_executed(tmp_path):
    _Exploit.target = str(tmp_path / "pwned")
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"time_embed.0.weight": _Exploit()}, fh, protocol=2)
    with pytest.raises(sk.SamplerkitError):
        sk.load(tmp_path / "evil.pt", family="adm")
    assert not (tmp_path / "pwned").exists()


def test_timestep_respacing_flag_is_refused_with_advice(tmp_path):
    path, _ = save_checkpoint(tmp_path, ADM_CONFIGS["ddpm-ip-cifar10"])
    with pytest.raises(sk.SamplerkitError, match="sampler setting"):
        sk.load(path, family="adm", timestep_respacing="100", **ADM_CONFIGS["ddpm-ip-cifar10"])


# ---------------------------------------------------------------------------------------------
# the rebuild hint and run folders (a samplerkit retrain run: model.pt + flags.json)

# what `samplerkit retrain` writes to flags.json for a 32 px run (the built-in models' recipe)
RUN_FLAGS = dict(
    image_size=32, num_channels=32, channel_mult="1,2,2", num_res_blocks=1, attention_resolutions="8",
    num_head_channels=16, resblock_updown=True, use_new_attention_order=True, learn_sigma=True, class_cond=False,
    use_scale_shift_norm=True, dropout=0.0, diffusion_steps=1000, noise_schedule="cosine",
)


def hint_flags(message: str) -> dict[str, str]:
    """The name=value pairs the error says the weights record."""
    listed = re.search(r"pass (.*?) \(read from the weights\)", message).group(1)
    return dict(item.split("=", 1) for item in listed.split(" "))


def hint_unrecorded(message: str) -> list[str]:
    listed = re.search(r"as it was trained, (.*?) \(the weights do not record these", message).group(1)
    return [item.split("=", 1)[0] for item in listed.split(" ") if "=" in item]


def test_flags_that_fit_the_weights_only_at_another_image_size_are_refused_naming_it(tmp_path):
    path, _ = save_checkpoint(tmp_path, RUN_FLAGS)
    without_size = {k: v for k, v in RUN_FLAGS.items() if k != "image_size"}
    with pytest.raises(sk.SamplerkitError) as err:
        sk.load(path, family="adm", **without_size)
    msg = str(err.value)
    assert "attention_resolutions 8 at the checkpoint's attention levels means image_size 32, flags say 64" in msg
    assert hint_flags(msg)["image_size"] == "32"
    assert "\n" not in msg


def test_hint_names_every_flag_that_rebuilds_the_network(tmp_path):
    path, _ = save_checkpoint(tmp_path, RUN_FLAGS)
    with pytest.raises(sk.SamplerkitError) as err:
        sk.load(path, family="adm")  # the checkpoint moved away from its flags.json
    msg = str(err.value)
    assert "\n" not in msg
    assert hint_flags(msg) == dict(
        num_channels="32", num_res_blocks="1", channel_mult="1,2,2", learn_sigma="True", class_cond="False",
        use_scale_shift_norm="True", resblock_updown="True", attention_resolutions="image_size/4",
    )
    assert hint_unrecorded(msg) == ["image_size", "noise_schedule", "diffusion_steps", "rescale_timesteps",
                                    "num_heads", "num_head_channels", "use_new_attention_order"]
    assert "image_size=64 (default)" in msg and "noise_schedule=linear (default)" in msg


def test_flags_from_the_hint_plus_the_training_ones_rebuild_the_network_exactly(tmp_path):
    path, sd = save_checkpoint(tmp_path, RUN_FLAGS)
    with pytest.raises(sk.SamplerkitError) as err:
        sk.load(path, family="adm", image_size=32)
    trained = dict(noise_schedule="cosine", diffusion_steps=1000, num_head_channels=16, use_new_attention_order=True)
    net = sk.load(path, family="adm", image_size=32, **hint_flags(str(err.value)), **trained)
    x, t, _ = inputs(32, False)
    with torch.no_grad():
        got = network_output(net, x, t)
        want = adm_reference(sd, RUN_FLAGS, x, t, None)
    assert (got - want).abs().max().item() <= 1e-5
    assert net.img_resolution == 32
    assert np.array_equal(net.training_alpha_bar(), alpha_bar_from_betas(betas_for("cosine", 1000)))


def write_run(tmp_path, flags=RUN_FLAGS) -> tuple[Path, dict]:
    """A run folder as `samplerkit retrain` leaves it: checkpoints and flags.json (no family named)."""
    run = tmp_path / "run"
    run.mkdir()
    path, sd = save_checkpoint(run, RUN_FLAGS, name="ema_0.9999_000010.pt")
    (run / "flags.json").write_text(json.dumps(flags))
    return path, sd


def test_run_folder_loads_without_family_or_flags(tmp_path):
    path, sd = write_run(tmp_path)
    net = sk.load(path)
    x, t, _ = inputs(32, False)
    with torch.no_grad():
        got = network_output(net, x, t)
    assert (got - adm_reference(sd, RUN_FLAGS, x, t, None)).abs().max().item() <= 1e-5
    assert net.learned_variance and net.img_resolution == 32
    assert np.array_equal(net.training_alpha_bar(), alpha_bar_from_betas(betas_for("cosine", 1000)))


def test_flag_contradicting_the_runs_flags_json_is_refused(tmp_path):
    path, _ = write_run(tmp_path)
    with pytest.raises(sk.SamplerkitError) as err:
        sk.load(path, family="adm", **{**RUN_FLAGS, "noise_schedule": "linear"})
    assert str(err.value) == (
        "flag noise_schedule=linear contradicts the flags.json beside ema_0.9999_000010.pt "
        "(noise_schedule=cosine), which records how the model was trained; drop the flag"
    )


def test_run_flags_json_takes_agreeing_and_runtime_flags(tmp_path):
    path, _ = write_run(tmp_path)
    net = sk.load(path, image_size="32", learn_sigma="true", use_fp16=True)
    assert net.unet.input_blocks[1][0].in_layers[2].weight.dtype == torch.float16


def test_family_named_in_flags_json_must_agree(tmp_path):
    path, _ = write_run(tmp_path, {**RUN_FLAGS, "family": "adm"})
    assert sk.load(path).img_resolution == 32
    with pytest.raises(sk.SamplerkitError, match="says family adm, not iddpm"):
        sk.load(path, family="iddpm")
