"""iDDPM (improved-diffusion) adapter: key layout, outputs, t * 1000 / T timesteps, errors.

Reference forward and weight generator: see test_adapter_adm.py.
"""

from __future__ import annotations

import pytest
import torch
from samplerkit.adapters import iddpm
from test_adapter_adm import (
    FIXTURES,
    attn_keys,
    conv_keys,
    network_output,
    random_state_dict,
    reference_unet,
    res_keys,
    template_of,
)

import samplerkit as sk
from samplerkit.diffusion import alpha_bar_from_betas, betas_for, sigma_from_alpha_bar

# released improved-diffusion models at reduced width (128 / 192 channels -> 32)
IDDPM_CONFIGS = {
    # cifar10_uncond_50M_500K.pt
    "cifar10": dict(image_size=32, num_channels=32, num_res_blocks=3, learn_sigma=True, dropout=0.3,
                    diffusion_steps=4000, noise_schedule="cosine"),
    # imagenet64_uncond_100M_1500K.pt
    "imagenet64-uncond": dict(image_size=64, num_channels=32, num_res_blocks=3, learn_sigma=True,
                              diffusion_steps=4000, noise_schedule="cosine"),
    # imagenet64_cond_270M_250K.pt (trained with rescale_timesteps False)
    "imagenet64-cond": dict(image_size=64, num_channels=32, num_res_blocks=3, learn_sigma=True, class_cond=True,
                            diffusion_steps=4000, noise_schedule="cosine", rescale_timesteps=False),
    # lsun_uncond_100M_1200K_bs128.pt
    "lsun256": dict(image_size=256, num_channels=32, num_res_blocks=2, num_heads=1, learn_sigma=True,
                    use_scale_shift_norm=False, attention_resolutions="16", diffusion_steps=1000,
                    noise_schedule="linear", rescale_timesteps=False),
}
CHANNEL_MULT = {32: (1, 2, 2, 2), 64: (1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4)}
DIFFUSION = ("diffusion_steps", "noise_schedule", "rescale_timesteps")


def net_flags(cfg):
    return {k: v for k, v in cfg.items() if k not in DIFFUSION}


def iddpm_reference(sd, cfg, x, t_in, y):
    size = cfg["image_size"]
    return reference_unet(
        sd, x, t_in, y,
        channel_mult=CHANNEL_MULT[size], num_res_blocks=cfg["num_res_blocks"],
        attention_rates=[size // int(r) for r in str(cfg.get("attention_resolutions", "16,8")).split(",")],
        heads=lambda C: cfg.get("num_heads", 4), scale_shift=cfg.get("use_scale_shift_norm", True),
        sigmoid_silu=True,
    )


def save_checkpoint(tmp_path, cfg, seed=0):
    sd = random_state_dict(template_of(iddpm.create_unet, **net_flags(cfg)), seed)
    torch.save(sd, tmp_path / "model.pt")
    return tmp_path / "model.pt", sd


def inputs(size, cond, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, size, size, generator=g)
    return x, torch.tensor([5, 3990]), (torch.tensor([0, 999]) if cond else None)


def network_time(cfg, t):
    return t.float() * (1000.0 / cfg["diffusion_steps"]) if cfg.get("rescale_timesteps", True) else t


# ---------------------------------------------------------------------------------------------


def test_state_dict_keys_are_improved_diffusions():
    sd = iddpm.create_unet(image_size=32, num_channels=32, num_res_blocks=1, attention_resolutions="16").state_dict()
    expected = (
        conv_keys("time_embed.0") + conv_keys("time_embed.2") + conv_keys("input_blocks.0.0")
        + res_keys("input_blocks.1.0") + conv_keys("input_blocks.2.0.op")
        + res_keys("input_blocks.3.0", skip=True) + attn_keys("input_blocks.3.1") + conv_keys("input_blocks.4.0.op")
        + res_keys("input_blocks.5.0") + conv_keys("input_blocks.6.0.op") + res_keys("input_blocks.7.0")
        + res_keys("middle_block.0") + attn_keys("middle_block.1") + res_keys("middle_block.2")
        + res_keys("output_blocks.0.0", skip=True) + res_keys("output_blocks.1.0", skip=True)
        + conv_keys("output_blocks.1.1.conv")
        + res_keys("output_blocks.2.0", skip=True) + res_keys("output_blocks.3.0", skip=True)
        + conv_keys("output_blocks.3.1.conv")
        + res_keys("output_blocks.4.0", skip=True) + attn_keys("output_blocks.4.1")
        + res_keys("output_blocks.5.0", skip=True) + attn_keys("output_blocks.5.1")
        + conv_keys("output_blocks.5.2.conv")
        + res_keys("output_blocks.6.0", skip=True) + res_keys("output_blocks.7.0", skip=True)
        + conv_keys("out.0") + conv_keys("out.2")
    )
    assert list(sd) == expected
    assert sd["input_blocks.3.1.qkv.weight"].shape == (192, 64, 1)
    assert sd["out.2.weight"].shape == (3, 32, 3, 3)


@pytest.mark.parametrize("name", list(IDDPM_CONFIGS))
def test_loaded_checkpoint_matches_reference_forward(tmp_path, name):
    cfg = IDDPM_CONFIGS[name]
    path, sd = save_checkpoint(tmp_path, cfg)
    net = sk.load(path, family="iddpm", **cfg)
    x, t, y = inputs(min(cfg["image_size"], 64), cfg.get("class_cond", False))
    t = t.clamp(max=cfg["diffusion_steps"] - 1)
    with torch.no_grad():
        got = network_output(net, x, t, y)
        want = iddpm_reference(sd, cfg, x, network_time(cfg, t), y)
    assert got.shape == (2, 6, x.shape[2], x.shape[3])
    assert (got - want).abs().max().item() <= 1e-5


def test_loaded_checkpoint_matches_upstream_improved_diffusion_outputs(tmp_path):
    fixture = torch.load(FIXTURES / "unet_upstream_outputs.pt", weights_only=True)["iddpm-cifar10"]
    cfg = IDDPM_CONFIGS["cifar10"]
    path, _ = save_checkpoint(tmp_path, cfg, seed=int(fixture["seed"]))
    net = sk.load(path, family="iddpm", **cfg)
    with torch.no_grad():
        got = network_output(net, fixture["x"], fixture["t"])
    assert (got - fixture["out"].double()).abs().max().item() <= 1e-5


def test_denoiser_feeds_the_network_t_times_1000_over_T(tmp_path):
    cfg = IDDPM_CONFIGS["cifar10"]
    path, sd = save_checkpoint(tmp_path, cfg)
    net = sk.load(path, family="iddpm", **cfg)
    levels = sigma_from_alpha_bar(torch.as_tensor(alpha_bar_from_betas(betas_for("cosine", 4000))))
    sigma = torch.tensor([levels[40].item() * 1.002, levels[3001].item()], dtype=torch.float64)
    t = torch.tensor([40, 3001])
    assert torch.equal((sigma[:, None] - levels[None]).abs().argmin(dim=1), t)
    x, _, _ = inputs(32, False)
    with torch.no_grad():
        D = net(x, sigma)
        out = iddpm_reference(sd, cfg, (x / (sigma**2 + 1).sqrt()[:, None, None, None]).float(), t * 0.25, None)
    want = x.double() - sigma[:, None, None, None] * out[:, :3]
    assert (D - want).abs().max().item() <= 1e-4
    assert net.num_timesteps == 4000 and net.learned_variance


def test_num_heads_changes_the_network(tmp_path):
    cfg = IDDPM_CONFIGS["cifar10"]
    path, _ = save_checkpoint(tmp_path, cfg)
    x, t, _ = inputs(32, False)
    with torch.no_grad():
        four = network_output(sk.load(path, family="iddpm", **cfg), x, t)
        one = network_output(sk.load(path, family="iddpm", **cfg, num_heads=1), x, t)
    assert (four - one).abs().max().item() > 1e-3


def test_default_flags_are_improved_diffusions():
    assert iddpm.NETWORK_DEFAULTS["num_heads"] == 4
    assert iddpm.NETWORK_DEFAULTS["use_scale_shift_norm"] is True
    assert iddpm.NETWORK_DEFAULTS["attention_resolutions"] == "16,8"
    assert iddpm.DIFFUSION_DEFAULTS == dict(diffusion_steps=1000, noise_schedule="linear", rescale_timesteps=True)


def test_wrong_num_res_blocks_is_diagnosed(tmp_path):
    cfg = IDDPM_CONFIGS["cifar10"]
    path, _ = save_checkpoint(tmp_path, cfg)
    with pytest.raises(sk.SamplerkitError, match="checkpoint has num_res_blocks 3, flags say 2"):
        sk.load(path, family="iddpm", **{**cfg, "num_res_blocks": 2})


def test_wrong_image_size_is_diagnosed_through_channel_mult(tmp_path):
    cfg = IDDPM_CONFIGS["cifar10"]
    path, _ = save_checkpoint(tmp_path, cfg)
    with pytest.raises(sk.SamplerkitError, match="checkpoint has channel_mult 1,2,2,2, flags say 1,2,3,4"):
        sk.load(path, family="iddpm", **{**cfg, "image_size": 64})


def test_adm_only_flag_is_unknown_to_iddpm():
    with pytest.raises(sk.SamplerkitError, match="resblock_updown"):
        iddpm.create_unet(resblock_updown=True)


def test_unsupported_image_size_is_refused():
    with pytest.raises(sk.SamplerkitError, match="image_size 32, 64, 256"):
        iddpm.create_unet(image_size=128)


def test_hint_reads_the_image_size_from_the_channel_mult(tmp_path):
    path, _ = save_checkpoint(tmp_path, IDDPM_CONFIGS["cifar10"])
    with pytest.raises(sk.SamplerkitError) as err:
        sk.load(path, family="iddpm")
    msg = str(err.value)
    assert "checkpoint's channel_mult 1,2,2,2 means image_size 32, flags say 64" in msg
    assert ("pass image_size=32 num_channels=32 num_res_blocks=3 attention_resolutions=16,8 learn_sigma=True "
            "class_cond=False use_scale_shift_norm=True (read from the weights) and, as it was trained, "
            "noise_schedule=linear (default) diffusion_steps=1000 (default) rescale_timesteps=True (default) "
            "num_heads=4 (default) (the weights do not record these") in msg
    assert "\n" not in msg
