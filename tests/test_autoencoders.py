"""Model space -> pixels: RGB identity, EDM2's StabilityVAE scaling, DiT's scaled VAE, the VAE loader.

The fixture ``edm2_vae/`` is a small random diffusers ``AutoencoderKL`` folder; ``edm2_vae_decode.pt``
holds latents and what EDM2's ``StabilityVAEEncoder.decode`` (NVlabs/edm2) and DiT's ``sample_ddp.py``
decode (``vae.decode(z / 0.18215)``, ``clamp(127.5 x + 128, 0, 255)``) made of them on that VAE.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from _http_server import FileServer

import samplerkit as sk
from samplerkit import autoencoders, zoo
from samplerkit.autoencoders import RGBIdentity, ScaledVAE, StabilityVAE, load_vae
from samplerkit.data import to_uint8
from samplerkit.errors import SamplerkitError

FIXTURES = Path(__file__).parent / "fixtures"
VAE_DIR = FIXTURES / "edm2_vae"


@pytest.fixture(scope="module")
def upstream():
    return torch.load(FIXTURES / "edm2_vae_decode.pt", weights_only=True)


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(zoo, "_REGISTRY", dict(zoo._REGISTRY))


def test_rgb_identity_rounds_exactly_as_to_uint8():
    x = torch.cat([torch.linspace(-1.1, 1.1, 3 * 16 * 16).reshape(1, 3, 16, 16), torch.randn(2, 3, 16, 16)])
    images = RGBIdentity().decode(x)
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 16, 16)
    assert np.array_equal(images.permute(0, 2, 3, 1).numpy(), to_uint8(x))


def test_rgb_identity_encode_inverts_decode_on_the_pixel_grid():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(RGBIdentity().decode(RGBIdentity().encode(images)), images)


def assert_same_pixels(images: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 kernel rounding: the fixture was made at one thread, and the VAE's convolutions
    may round differently at another thread count, which moves a pixel that sits on a quantization edge
    by one level (the upstream decodes truncate to uint8). A wrong scale, bias or pixel range moves
    nearly every pixel by many levels."""
    diff = (images.to(torch.int16) - expected.to(torch.int16)).abs()
    assert images.shape == expected.shape
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.01, (int(diff.max()), (diff > 0).sum())


def test_stability_vae_decode_equals_edm2(upstream):
    pytest.importorskip("diffusers")
    vae = load_vae(VAE_DIR)
    ae = StabilityVAE.from_scale_bias(vae, upstream["scale"].numpy(), upstream["bias"].numpy(), batch_size=3)
    images = ae.decode(upstream["latents"])
    assert images.dtype == torch.uint8
    assert_same_pixels(images, upstream["images"])


def test_stability_vae_defaults_are_edm2s_scale_and_bias(upstream):
    ae = StabilityVAE(str(VAE_DIR))  # named, not loaded: the defaults alone give the scaling
    assert np.array_equal(ae.scale, upstream["scale"].numpy())
    assert np.array_equal(ae.bias, upstream["bias"].numpy())


def test_scaled_vae_decode_equals_dit(upstream):
    pytest.importorskip("diffusers")
    ae = ScaledVAE(load_vae(VAE_DIR))
    assert_same_pixels(ae.decode(upstream["dit_latents"]), upstream["dit_images"])


def test_stability_vae_encode_applies_scale_and_bias_to_the_posterior_sample():
    pytest.importorskip("diffusers")
    vae = load_vae(VAE_DIR)
    ae = StabilityVAE(vae)
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    z = ae.encode(images, randn_like=torch.zeros_like)  # no noise: the posterior mean
    mean = vae.encode(images.float() / 255).mean
    expected = mean * torch.from_numpy(ae.scale).reshape(1, -1, 1, 1) + torch.from_numpy(ae.bias).reshape(1, -1, 1, 1)
    assert z.shape == (2, 4, 8, 8) and torch.allclose(z, expected, atol=1e-6)


def test_sk_decode_finds_the_autoencoder_through_wrappers(upstream):
    pytest.importorskip("diffusers")
    net = sk.load("shapes32-edm")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(sk.decode(net, x), RGBIdentity().decode(x))
    ae = ScaledVAE(load_vae(VAE_DIR))
    net.autoencoder = ae
    wrapped = sk.remedies.eps_scaling(net, b=1.01)
    assert torch.equal(sk.decode(wrapped, upstream["dit_latents"]), upstream["dit_images"])


def test_load_vae_records_name_source_and_sha256_of_a_folder():
    pytest.importorskip("diffusers")
    vae = load_vae(VAE_DIR)
    digest = hashlib.sha256((VAE_DIR / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()
    assert vae.describe() == {"name": "edm2_vae", "source": str(VAE_DIR.resolve()), "sha256": digest}


def test_load_vae_from_a_zoo_entry_downloads_both_files_then_works_offline(registry, monkeypatch):
    pytest.importorskip("diffusers")
    files = {name: (VAE_DIR / name).read_bytes() for name in ("config.json", "diffusion_pytorch_model.safetensors")}
    with FileServer() as srv:
        urls = {name: srv.add(f"/tiny-vae/{name}", body) for name, body in files.items()}
        zoo.register(zoo.ZooEntry(
            name="x-tiny-vae", family="vae", urls=(urls["diffusion_pytorch_model.safetensors"],),
            filename="diffusion_pytorch_model.safetensors", subdir="x-tiny-vae",
            extra_files=(("config.json", urls["config.json"]),)))
        vae = load_vae("x-tiny-vae")
        assert sorted(hit.path for hit in srv.log) == sorted(f"/tiny-vae/{n}" for n in files)
    digest = hashlib.sha256(files["diffusion_pytorch_model.safetensors"]).hexdigest()
    assert (vae.name, vae.sha256) == ("x-tiny-vae", digest)
    assert zoo.get("x-tiny-vae").expected_sha256() == digest  # trusted once it loaded
    monkeypatch.setenv("SAMPLERKIT_OFFLINE", "1")
    monkeypatch.setattr(requests.Session, "request", lambda *a, **k: pytest.fail("network touched offline"))
    z = torch.randn(1, 4, 8, 8)
    assert torch.equal(load_vae("x-tiny-vae").decode(z), vae.decode(z))


def test_zoo_names_the_stability_vaes_with_their_huggingface_files():
    for name in ("sd-vae-ft-mse", "sd-vae-ft-ema"):
        entry = zoo.get(name)
        base = f"https://huggingface.co/stabilityai/{name}/resolve/main/"
        assert entry.family == "vae" and entry.subdir == name
        assert entry.urls == (base + "diffusion_pytorch_model.safetensors",)
        assert entry.extra_files == (("config.json", base + "config.json"),)


def test_a_vae_zoo_name_is_no_denoiser():
    with pytest.raises(SamplerkitError, match="sd-vae-ft-mse is an autoencoder, not a denoiser"):
        sk.load("sd-vae-ft-mse")


def test_without_diffusers_a_latent_model_says_what_to_install(monkeypatch):
    real = importlib.import_module

    def no_diffusers(name, *args, **kwargs):
        if name == "diffusers":
            raise ImportError("No module named 'diffusers'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(autoencoders.importlib, "import_module", no_diffusers)
    for call in (lambda: load_vae(VAE_DIR), lambda: StabilityVAE("sd-vae-ft-mse").check(),
                 lambda: ScaledVAE("sd-vae-ft-ema").decode(torch.zeros(1, 4, 2, 2))):
        with pytest.raises(SamplerkitError) as err:
            call()
        assert str(err.value) == 'latent models need diffusers and safetensors; pip install "samplerkit[latent]"'


def test_load_vae_refuses_a_folder_without_the_diffusers_files_and_a_non_vae_name(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SamplerkitError, match="needs config.json and diffusion_pytorch_model.safetensors"):
        autoencoders._folder_of(tmp_path)
    with pytest.raises(SamplerkitError, match="not a VAE"):
        autoencoders._folder_of("edm-cifar10-cond-vp")


def test_bad_latent_scales_are_refused():
    with pytest.raises(SamplerkitError, match="positive"):
        ScaledVAE("sd-vae-ft-ema", scale=0)
    with pytest.raises(SamplerkitError, match="scale nonzero"):
        StabilityVAE.from_scale_bias("sd-vae-ft-mse", [1.0, 0.0], [0.0, 0.0])
