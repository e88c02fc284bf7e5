"""DiT and SiT (adapters/dit.py) and classifier-free guidance against the upstream code.

The fixture ``dit_upstream_outputs.pt`` holds a random-weight DiT/SiT (depth 2, hidden 24, 4 heads,
patch 2, 8x8x4 latents, 10 classes + the null label, learned-sigma head) in the upstream state-dict
layout, and what facebookresearch/DiT (models.py, diffusion/) and willisma/SiT (models.py,
transport/) computed on it: the network outputs, ``p_sample_loop(forward_with_cfg, ...,
clip_denoised=False)`` with 10 respaced steps and the noise it drew, and the transport's fixed-step
Euler ODE sampler, unguided and guided.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from _upstream import assert_close, checkpoint_of, load_fixture, replay
from samplerkit.adapters import dit

import samplerkit as sk
from samplerkit.errors import SamplerkitError


@pytest.fixture(scope="module")
def up():
    return load_fixture("dit_upstream_outputs.pt")


@pytest.fixture(scope="module")
def ckpt(up, tmp_path_factory):
    return checkpoint_of(up, tmp_path_factory, "dit")


@pytest.fixture(scope="module")
def dit_net(ckpt):
    return sk.load(ckpt, family="dit", num_heads=4, image_size=64, num_classes=10)


@pytest.fixture(scope="module")
def sit_net(ckpt):
    return sk.load(ckpt, family="sit", num_heads=4, image_size=64, num_classes=10)


# ---------------------------------------------------------------------------------------------
# the networks


def test_dit_eps_and_variance_equal_upstream(up, dit_net):
    assert dit_net.learned_variance and dit_net.null_label == 10 and dit_net.img_resolution == 8
    ab = dit_net.alphas_cumprod[up["t_int"]].reshape(-1, 1, 1, 1)
    sigma = ((1 - ab) / ab).sqrt().flatten()
    x = up["x"].double() / ab.sqrt()
    with torch.no_grad():
        D, v = dit_net.denoise_with_variance(x, sigma, up["y"])  # y holds the null label 10 once
    eps = (x - D) / sigma.reshape(-1, 1, 1, 1)
    assert_close(eps, up["dit_out"][:, :4])
    assert_close(v, up["dit_out"][:, 4:])


def test_sit_velocity_equals_upstream(up, sit_net):
    with torch.no_grad():
        u = sit_net.velocity(up["x"], up["t_flow"], up["y"])  # t = 0 (sigma = inf) included
    assert_close(u, up["sit_v"])


def test_sit_denoiser_is_x_t_plus_one_minus_t_velocity(up, sit_net):
    t = up["t_flow"][1:].double()  # t = 0.3, 0.75, 1 -> sigma = (1 - t) / t
    sigma = (1 - t) / t
    x_t = up["x"][1:].double()
    with torch.no_grad():
        D = sit_net(x_t / t.reshape(-1, 1, 1, 1), sigma, up["y"][1:])
    assert_close(D, x_t + (1 - t).reshape(-1, 1, 1, 1) * up["sit_v"][1:].double())


def test_sit_denoiser_does_not_clamp_large_sigma(sit_net):
    g = torch.Generator().manual_seed(0)
    n = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1])
    with torch.no_grad():
        for sigma in (1e3, 1e8):
            t = 1 / (1 + sigma)
            D = sit_net(sigma * n, torch.full((2,), sigma, dtype=torch.float64), labels)
            u = sit_net.velocity(t * sigma * n, torch.full((2,), t, dtype=torch.float64), labels).double()
            assert_close(D, t * (sigma * n) + (1 - t) * u, 1e-12)  # no clamp: the formula at this sigma


def test_sit_head_width_is_read_from_the_weights(up, tmp_path):
    """A 4-channel head (SiT's sample.py for its own checkpoints) is the 8-channel head's first four
    output channels; both load and give the same velocity."""
    sd = dict(up["state_dict"])
    p, C = 2, 8
    keep = torch.tensor([(i * p + j) * C + c for i in range(p) for j in range(p) for c in range(4)])
    sd["final_layer.linear.weight"] = sd["final_layer.linear.weight"][keep]
    sd["final_layer.linear.bias"] = sd["final_layer.linear.bias"][keep]
    torch.save(sd, tmp_path / "four.pt")
    net = sk.load(tmp_path / "four.pt", family="sit", num_heads=4)
    assert net.network.out_channels == 4
    with torch.no_grad():
        assert_close(net.velocity(up["x"], up["t_flow"], up["y"]), up["sit_v"])
    with pytest.raises(SamplerkitError, match="learn_sigma=True contradicts"):
        sk.load(tmp_path / "four.pt", family="sit", num_heads=4, learn_sigma=True)


# ---------------------------------------------------------------------------------------------
# sampling against the upstream loops


def test_ancestral_on_upstream_cfg_equals_dit_p_sample_loop(up, dit_net):
    g = sk.guidance.cfg(dit_net, float(up["cfg_scale"]), form="upstream")
    steps = sk.schedules.respace(1000, str(int(up["steps"])))
    x = sk.samplers.ancestral(g, up["z"], steps, class_labels=up["labels"], variance="learned",
                              randn_like=replay(up["cfg_noise"]), clip_denoised=False)
    assert_close(x, up["cfg_samples"])


def test_ancestral_unguided_equals_dit_p_sample_loop(up, dit_net):
    steps = sk.schedules.respace(1000, str(int(up["steps"])))
    x = sk.samplers.ancestral(dit_net, up["z"], steps, class_labels=up["labels"], variance="learned",
                              randn_like=replay(up["plain_noise"]), clip_denoised=False)
    assert_close(x, up["plain_samples"])


def test_cfg_weight_one_is_the_unguided_sampler_bit_for_bit(up, dit_net, sit_net):
    steps = sk.schedules.respace(1000, "10")
    for form in ("upstream", "score"):
        a = sk.samplers.ancestral(sk.guidance.cfg(dit_net, 1.0, form=form), up["z"], steps, class_labels=up["labels"],
                                  randn_like=replay(up["plain_noise"]), clip_denoised=False)
        b = sk.samplers.ancestral(dit_net, up["z"], steps, class_labels=up["labels"],
                                  randn_like=replay(up["plain_noise"]), clip_denoised=False)
        assert torch.equal(a, b)
    sigmas = sk.schedules.flow(5)
    a = sk.samplers.euler(sk.guidance.cfg(sit_net, 1.0), up["z"], sigmas, class_labels=up["labels"])
    assert torch.equal(a, sk.samplers.euler(sit_net, up["z"], sigmas, class_labels=up["labels"]))


def test_euler_on_the_flow_grid_equals_sit_euler_ode(up, sit_net):
    sigmas = sk.schedules.flow(int(up["ode_steps"]))
    x = sk.samplers.euler(sit_net, up["z"], sigmas, class_labels=up["labels"])
    assert_close(x, up["ode_plain"])
    g = sk.guidance.cfg(sit_net, float(up["cfg_scale"]), form="upstream")
    assert_close(sk.samplers.euler(g, up["z"], sigmas, class_labels=up["labels"]), up["ode_cfg"])


def test_flow_start_stand_in_error_falls_as_one_over_sigma_max(up, sit_net):
    """SiT starts at t = 0 (sigma = inf); the sigma-space sampler starts at a finite sigma_max. The
    first step's x0 weight is off by sigma_1 / sigma_max, so the error falls 100x per 100x sigma_max."""
    errs = []
    for sigma_max in (1e3, 1e5):
        sigmas = sk.schedules.flow(int(up["ode_steps"]), sigma_max=sigma_max)
        x = sk.samplers.euler(sit_net, up["z"], sigmas, class_labels=up["labels"])
        errs.append(float((x - up["ode_plain"].double()).abs().max()))
    assert 50 < errs[0] / errs[1] < 200, errs
    assert errs[0] < 2 * 9 / 1e3 * float(up["ode_plain"].abs().max())  # sigma_1 = N - 1 = 9


def test_sit_upstream_cfg_is_forward_with_cfg_on_velocity(up, sit_net):
    t = torch.tensor([0.3, 0.6], dtype=torch.float64)
    x_t = up["x"][:2].double()
    g = sk.guidance.cfg(sit_net, float(up["sit_cfg_scale"]), form="upstream")
    with torch.no_grad():
        D = g(x_t / t.reshape(-1, 1, 1, 1), (1 - t) / t, up["y"][:2])
    assert_close(D, x_t + (1 - t).reshape(-1, 1, 1, 1) * up["sit_v_cfg"].double())


# ---------------------------------------------------------------------------------------------
# classifier-free guidance


def _passes(net, x, sigma, labels):
    with torch.no_grad():
        cond = net.denoise_with_variance(x, sigma, labels)
        uncond = net.denoise_with_variance(x, sigma, torch.full_like(labels, net.null_label))
    return cond, uncond


def test_score_form_guides_every_channel_and_takes_variance_from_the_conditional_pass(up, dit_net):
    x, sigma, labels = up["z"].double() * 3, torch.tensor([2.0, 2.0], dtype=torch.float64), up["labels"]
    (Dc, vc), (Du, _) = _passes(dit_net, x, sigma, labels)
    with torch.no_grad():
        D, v = sk.guidance.cfg(dit_net, 3.0, form="score").denoise_with_variance(x, sigma, labels)
    assert_close(D, Du + 3.0 * (Dc - Du), 1e-6)
    assert_close(v, vc, 1e-6)
    with torch.no_grad():
        D_up = sk.guidance.cfg(dit_net, 3.0, form="upstream")(x, sigma, labels)
    assert_close(D_up[:, :3], D[:, :3], 1e-6)
    assert_close(D_up[:, 3:], Dc[:, 3:], 1e-6)


def test_interval_guides_only_sigmas_inside_it(up, sit_net):
    x, labels = up["z"].double() * 2, up["labels"]
    sigma = torch.tensor([0.5, 2.0], dtype=torch.float64)  # one outside, one inside (1, 5]
    (Dc, _), (Du, _) = _passes(sit_net, x, sigma, labels)
    with torch.no_grad():
        D = sk.guidance.cfg(sit_net, 2.0, interval=(1.0, 5.0))(x, sigma, labels)
    assert_close(D[0], Dc[0], 1e-6)
    assert_close(D[1], Du[1] + 2.0 * (Dc[1] - Du[1]), 1e-6)
    with torch.no_grad():
        outside = sk.guidance.cfg(sit_net, 2.0, interval=(5.0, 10.0))(x, sigma, labels)
        assert torch.equal(outside, sit_net(x, sigma, labels))


def test_cfg_reaches_the_null_label_through_other_wrappers(up, dit_net):
    x, sigma, labels = up["z"].double() * 3, torch.tensor([2.0, 2.0], dtype=torch.float64), up["labels"]
    scaled = sk.remedies.eps_scaling(dit_net, b=1.5)
    with torch.no_grad():
        cond = scaled(x, sigma, labels)
        uncond = scaled(x, sigma, torch.full_like(labels, 10))
        D = sk.guidance.cfg(scaled, 2.0)(x, sigma, labels)
    assert_close(D, uncond + 2.0 * (cond - uncond), 1e-6)


def test_cfg_bad_input_is_one_line(dit_net, ckpt):
    unconditional = sk.DiscreteEpsDenoiser(lambda x, t, y: torch.zeros_like(x), torch.linspace(0.99, 0.01, 10))
    with pytest.raises(SamplerkitError, match="unconditional") as err:
        sk.guidance.cfg(unconditional, 1.5)
    assert "\n" not in str(err.value)
    with pytest.raises(SamplerkitError, match=">= 0"):
        sk.guidance.cfg(dit_net, -0.5)
    with pytest.raises(SamplerkitError, match="form"):
        sk.guidance.cfg(dit_net, 1.5, form="all")
    with pytest.raises(SamplerkitError, match="interval"):
        sk.guidance.cfg(dit_net, 1.5, interval=(2.0, 1.0))
    no_null = sk.load(ckpt, family="dit", num_heads=4, num_classes=11)  # 11 rows = 11 classes, no null label
    with pytest.raises(SamplerkitError, match="null label"):
        sk.guidance.cfg(no_null, 1.5)
    with pytest.raises(SamplerkitError, match=r"\[0, 9\]"):
        sk.guidance.cfg(dit_net, 1.5)(torch.zeros(1, 4, 8, 8), 1.0, torch.tensor([10]))


# ---------------------------------------------------------------------------------------------
# loading


def _table_shaped_state_dict(arch: str, input_size: int) -> dict:
    """A state dict with the shapes of a model-table entry whose tensors share one element (small on disk)."""
    depth, hidden, heads = dit.SIZES[arch.split("-")[1].split("/")[0]]
    with torch.device("meta"):
        net = dit.DiT(input_size, int(arch[-1]), 4, hidden, depth, heads, 8, 1001)
    return {k: torch.zeros(1).expand(v.shape) for k, v in net.state_dict().items()}


def test_arch_that_contradicts_the_weights_names_theirs(tmp_path, ckpt):
    torch.save(_table_shaped_state_dict("DiT-S/8", 32), tmp_path / "s8.pt")
    with pytest.raises(SamplerkitError, match="they are DiT-S/8") as err:
        sk.load(tmp_path / "s8.pt", family="dit", arch="DiT-XL/2")
    assert "\n" not in str(err.value)
    with pytest.raises(SamplerkitError, match="they are SiT-S/8"):
        sk.load(tmp_path / "s8.pt", family="sit", arch="SiT-B/8")
    with pytest.raises(SamplerkitError, match="no configuration of the model table"):
        sk.load(ckpt, family="dit", arch="DiT-XL/2")
    with pytest.raises(SamplerkitError, match="unknown arch"):
        sk.load(ckpt, family="dit", arch="DiT-XXL/2")
    with pytest.raises(SamplerkitError, match="image_size=64"):
        sk.load(ckpt, family="dit", num_heads=4, image_size=256)
    with pytest.raises(SamplerkitError, match="num_classes=10"):
        sk.load(ckpt, family="dit", num_heads=4, num_classes=1000)


def test_every_model_table_configuration_builds():
    for arch in dit.ARCHS:
        family = arch[:3].lower()
        depth, hidden, heads = dit.SIZES[arch.split("-")[1].split("/")[0]]
        shapes = dict(depth=depth, hidden_size=hidden, patch_size=int(arch[-1]))
        assert dit.arch_of(shapes, family) == arch
        assert dit.resolve_config(shapes, family, arch, None) == heads
        with torch.device("meta"):
            net = dit.DiT(32, int(arch[-1]), 4, hidden, depth, heads, 8, 1001)
        assert len(net.blocks) == depth and net.blocks[0].attn.num_heads == heads


def test_train_py_checkpoint_with_args_namespace_loads_its_ema(up, tmp_path):
    ema = {k: v * 0.5 for k, v in up["state_dict"].items()}
    checkpoint = {"model": up["state_dict"], "ema": ema, "opt": {"state": {}, "param_groups": [{"lr": 1e-4}]},
                  "args": argparse.Namespace(model="DiT-XL/2", image_size=256, global_batch_size=256, ckpt=None)}
    torch.save(checkpoint, tmp_path / "0050000.pt")
    net = sk.load(tmp_path / "0050000.pt", family="dit", num_heads=4)
    assert torch.equal(net.network.blocks[0].attn.qkv.weight, ema["blocks.0.attn.qkv.weight"])


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/samplerkit-dit-pwned"),))


@pytest.mark.parametrize("extra", [Fraction(1, 3), _Payload()], ids=["Fraction", "code"])
def test_checkpoint_with_any_other_global_is_refused(up, tmp_path, extra):
    marker = Path("/tmp/samplerkit-dit-pwned")
    marker.unlink(missing_ok=True)
    torch.save({"ema": up["state_dict"], "args": argparse.Namespace(model="DiT-XL/2"), "extra": extra},
               tmp_path / "bad.pt")
    with pytest.raises(SamplerkitError, match="not a readable DiT/SiT checkpoint") as err:
        sk.load(tmp_path / "bad.pt", family="dit", num_heads=4)
    assert "\n" not in str(err.value) and not marker.exists()
    assert ("fractions.Fraction" if isinstance(extra, Fraction) else "getattr") in str(err.value)


def test_missing_or_unexpected_keys_are_refused(up, tmp_path):
    sd = dict(up["state_dict"])
    sd.pop("blocks.1.mlp.fc2.bias")
    torch.save(sd, tmp_path / "partial.pt")
    with pytest.raises(SamplerkitError, match="missing blocks.1.mlp.fc2.bias"):
        sk.load(tmp_path / "partial.pt", family="dit", num_heads=4)


def test_autoencoder_defaults_to_sample_ddp_vae_and_can_be_none(ckpt):
    net = sk.load(ckpt, family="sit", num_heads=4)
    assert net.autoencoder.vae_name == "sd-vae-ft-ema" and net.autoencoder.scale == 0.18215
    assert sk.load(ckpt, family="dit", num_heads=4, autoencoder=None).autoencoder is None
    with pytest.raises(SamplerkitError, match="latent scale|latent_scale"):
        sk.load(ckpt, family="dit", num_heads=4, latent_scale=-1)


def test_zoo_entries_name_their_settings():
    from samplerkit import zoo

    for name, family in (("dit-xl-2-256", "dit"), ("dit-xl-2-512", "dit"), ("sit-xl-2-256", "sit")):
        e = zoo.get(name)
        assert e.family == family and e.num_classes == 1000 and e.flags["latent_scale"] == 0.18215
        assert e.flags["autoencoder"] == "sd-vae-ft-ema" and e.guidance == {"weight": 1.5, "form": "upstream"}
    assert zoo.get("dit-xl-2-256").recommended == {"sampler": "ancestral", "steps": 250, "variance": "learned",
                                                   "clip_denoised": False}


# ---------------------------------------------------------------------------------------------
# the latent path


def test_decode_equals_sample_ddp_decode(ckpt, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                                  layers_per_block=1).eval()
    vae.save_pretrained(tmp_path / "vae", safe_serialization=True)
    net = sk.load(ckpt, family="dit", num_heads=4, autoencoder=str(tmp_path / "vae"))
    z = torch.randn(2, 4, 8, 8) * 0.2
    with torch.no_grad():
        want = torch.clamp(127.5 * vae.decode(z / 0.18215).sample + 128.0, 0, 255).to(torch.uint8)
        got = sk.decode(sk.guidance.cfg(net, 1.5), z)  # through the guidance wrapper to the model's autoencoder
    assert net.autoencoder.scale == 0.18215 and got.dtype == torch.uint8 and torch.equal(got, want)


def test_speed_policy_switches_dit_attention_to_sdpa_within_tolerance(up, ckpt):
    from samplerkit import speed

    net = sk.load(ckpt, family="dit", num_heads=4)
    x, sigma = up["z"].double() * 5, torch.tensor([4.0, 4.0], dtype=torch.float64)
    with torch.no_grad():
        exact = net(x, sigma, up["labels"])
        fast = speed.apply(net, speed.Policy(attention="sdpa"))
        assert {m.backend for m in speed._attention_modules(fast)} == {"sdpa"}
        assert_close(fast(x, sigma, up["labels"]), exact, 1e-6)
        speed.apply(net, speed.EXACT)
        assert torch.equal(net(x, sigma, up["labels"]), exact)
