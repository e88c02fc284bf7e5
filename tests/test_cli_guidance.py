"""Guidance by a second network and classifier-free guidance from the command line (``sample`` and
``sweep``), and the latent decode of every run.

The networks are small random-weight EDM2 pickles in the release layout (``test_adapter_edm2.py``'s
fixture: a conditional 8x8 network, a smaller conditional one, an unconditional one, a latent one
decoded by the small VAE in ``fixtures/edm2_vae``) and the small DiT of ``test_adapter_dit.py``. Each
command's PNGs are compared pixel for pixel with the library's sampler on ``sk.guidance.guided`` /
``sk.guidance.cfg`` for the same seeds (latents, labels and noise drawn per seed as
:func:`samplerkit.generate.draw` draws them), decoded with ``sk.decode``.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _http_server import FileServer
from PIL import Image
from test_adapter_edm2 import upstream, write_case  # noqa: F401 (the fixture)
from test_cli_sample import _cli as run_cli

import samplerkit as sk
from samplerkit import zoo
from samplerkit.generate import draw

FIXTURES = Path(__file__).parent / "fixtures"
SEEDS = [0, 1, 2]


pytestmark = pytest.mark.usefixtures("one_thread")


def _cli(*args):
    return run_cli(*args, "--device", "cpu", "--quiet", "--speed", "exact")


@pytest.fixture(scope="module")
def pickles(upstream, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("edm2-pickles")
    return {case: write_case(upstream, case, tmp) for case in ("cond", "small", "uncond", "latent")}


def pngs(out: Path, seeds=SEEDS) -> np.ndarray:
    """The run's images, uint8 [N, 3, H, W]."""
    return np.stack([np.asarray(Image.open(sk.output.png_path(out, s))).transpose(2, 0, 1) for s in seeds])


def heun_images(net, guided_net, steps: int, labels="random") -> np.ndarray:
    """The library's heun on ``guided_net`` for SEEDS, decoded through ``net``'s autoencoder."""
    latents, y, _ = draw(net, SEEDS, labels, "cpu")
    x = sk.samplers.heun(guided_net, latents, sk.schedules.edm(steps), class_labels=y)
    return sk.decode(guided_net, x).numpy()


# ---------------------------------------------------------------------------------------------
# --guide-model


@pytest.mark.parametrize("weight, interval", [(2.0, None), (1.7, (0.5, 10.0))])
def test_guide_model_equals_library_heun_on_guided(pickles, tmp_path, weight, interval):
    args = ["sample", "--model", str(pickles["cond"]), "--guide-model", str(pickles["small"]), "--guidance-weight",
            str(weight), "--sampler", "heun", "--steps", "6", "--seeds", "0-2", "--out", str(tmp_path / "g")]
    if interval:
        args += ["--guidance-interval", f"{interval[0]},{interval[1]}"]
    code, _, err = _cli(*args)
    assert code == 0, err
    net, gnet = sk.load(pickles["cond"]), sk.load(pickles["small"])
    want = heun_images(net, sk.guidance.guided(net, gnet, weight, interval), 6)
    assert np.array_equal(pngs(tmp_path / "g"), want)
    plain = heun_images(net, net, 6)
    assert not np.array_equal(want, plain)  # the guidance changed the images
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert manifest["guide_model"] == str(pickles["small"])
    assert manifest["guide_model_sha256"] == sk.output.file_sha256(pickles["small"])
    assert manifest["model_sha256"] == sk.output.file_sha256(pickles["cond"])
    assert manifest["guidance_weight"] == weight
    assert manifest["guidance_interval"] == (list(interval) if interval else None)


def test_guidance_weight_one_is_the_unguided_run(pickles, tmp_path):
    common = ["--model", str(pickles["cond"]), "--steps", "4", "--seeds", "0-2", "--class-labels", "1,2,3"]
    assert _cli("sample", *common, "--guide-model", str(pickles["small"]), "--guidance-weight", "1",
                "--out", str(tmp_path / "w1"))[0] == 0
    assert _cli("sample", *common, "--out", str(tmp_path / "plain"))[0] == 0
    assert np.array_equal(pngs(tmp_path / "w1"), pngs(tmp_path / "plain"))


def test_unconditional_guide_model_is_classifier_free_guidance_by_a_second_network(pickles, tmp_path):
    code, _, err = _cli("sample", "--model", str(pickles["cond"]), "--guide-model", str(pickles["uncond"]),
                        "--guidance-weight", "1.5", "--steps", "4", "--seeds", "0-2", "--out", str(tmp_path / "o"))
    assert code == 0, err
    net, gnet = sk.load(pickles["cond"]), sk.load(pickles["uncond"])
    assert np.array_equal(pngs(tmp_path / "o"), heun_images(net, sk.guidance.guided(net, gnet, 1.5), 4))


@pytest.fixture
def preset(pickles, monkeypatch):
    """A guided preset in the zoo as EDM2's are registered: net file + {"gnet": zoo name, "weight": 2.0}."""
    monkeypatch.setattr(zoo, "_REGISTRY", dict(zoo._REGISTRY))
    with FileServer() as srv:
        zoo.register(zoo.ZooEntry(name="x-cli-edm2-small", family="edm2", filename="x-cli-edm2-small.pkl", resolution=8,
                                  urls=(srv.add("/small.pkl", pickles["small"].read_bytes()),)))
        zoo.register(zoo.ZooEntry(name="x-cli-edm2-autog", family="edm2", filename="x-cli-edm2-cond.pkl", resolution=8,
                                  urls=(srv.add("/cond.pkl", pickles["cond"].read_bytes()),),
                                  guidance={"gnet": "x-cli-edm2-small", "weight": 2.0}))
        yield "x-cli-edm2-autog"


@pytest.mark.parametrize("override", [None, "1.5"])
def test_guided_preset_as_model_is_net_gnet_and_weight_and_records_both(pickles, preset, tmp_path, override):
    extra = ["--guidance-weight", override] if override else []
    code, _, err = _cli("sample", "--model", preset, "--steps", "6", "--seeds", "0-2", "--out", str(tmp_path / "p"),
                        *extra)
    assert code == 0, err
    weight = float(override) if override else 2.0
    net, gnet = sk.load(pickles["cond"]), sk.load(pickles["small"])
    assert np.array_equal(pngs(tmp_path / "p"), heun_images(net, sk.guidance.guided(net, gnet, weight), 6))
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["model"] == preset and manifest["model_sha256"] == sk.output.file_sha256(pickles["cond"])
    assert manifest["guide_model"] == "x-cli-edm2-small"
    assert manifest["guide_model_sha256"] == sk.output.file_sha256(pickles["small"])
    assert manifest["guidance_weight"] == weight and manifest["guidance_interval"] is None


def test_sweep_takes_a_list_of_guidance_weights_as_one_more_axis(pickles, tmp_path, inception_path):
    csv_path = tmp_path / "sweep.csv"
    code, out, err = _cli("sweep", "--model", str(pickles["cond"]), "--guide-model", str(pickles["small"]),
                          "--guidance-weight", "1,2", "--guidance-interval", "0.1,50", "--sampler", "heun",
                          "--steps", "3", "--num-images", "2", "--ref", "builtin:shapes32", "--ref-images", "4",
                          "--csv", str(csv_path), "--inception", str(inception_path), "--table")
    assert code == 0, err
    rows = list(csv.DictReader(open(csv_path, newline="")))
    g_sha = sk.output.file_sha256(pickles["small"])
    assert [r["model"] for r in rows] == [f"{pickles['cond']} + guided by {pickles['small']} w {w} in (0.1, 50]"
                                          for w in (1, 2)]
    assert [float(r["guidance_weight"]) for r in rows] == [1.0, 2.0]
    assert all(r["guide_model"] == str(pickles["small"]) and r["guide_model_sha256"] == g_sha for r in rows)
    assert all(r["sha256"].endswith(f" + {g_sha}") and r["guidance_interval"] == "[0.1, 50.0]" for r in rows)
    assert rows[0]["fid"] != rows[1]["fid"] and "heun w=2" in out


# ---------------------------------------------------------------------------------------------
# latent models decode through their autoencoder


def test_latent_model_writes_decoded_pngs_and_records_its_autoencoder(pickles, tmp_path):
    pytest.importorskip("diffusers")
    code, _, err = _cli("sample", "--model", str(pickles["latent"]), "--steps", "3", "--seeds", "0-2",
                        "--out", str(tmp_path / "l"))
    assert code == 0, err
    net = sk.load(pickles["latent"])
    images = pngs(tmp_path / "l")
    assert images.shape[1] == 3 and images.shape[2] > net.img_resolution  # decoded, not the 4-channel latents
    assert np.array_equal(images, heun_images(net, net, 3))
    recorded = json.loads((tmp_path / "l" / "manifest.json").read_text())["autoencoder"]
    vae = FIXTURES / "edm2_vae"
    assert recorded["name"] == "stability-vae" and recorded["vae"]["source"] == str(vae.resolve())
    assert recorded["vae"]["sha256"] == sk.output.file_sha256(vae / "diffusion_pytorch_model.safetensors")


def test_latent_model_without_diffusers_fails_in_one_line_before_sampling(pickles, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    code, _, err = _cli("sample", "--model", str(pickles["latent"]), "--steps", "3", "--seeds", "0",
                        "--out", str(tmp_path / "l"))
    assert code == 2 and err.count("\n") == 1 and "samplerkit[latent]" in err, err
    assert not list((tmp_path / "l").rglob("*.png"))


# ---------------------------------------------------------------------------------------------
# --cfg on DiT


@pytest.fixture(scope="module")
def dit_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("dit") / "small.pt"
    torch.save(torch.load(FIXTURES / "dit_upstream_outputs.pt", weights_only=True)["state_dict"], path)
    return path


def test_cfg_on_dit_equals_library_ancestral_on_cfg_decoded(dit_ckpt, tmp_path):
    pytest.importorskip("diffusers")
    vae = FIXTURES / "edm2_vae"
    code, _, err = _cli("sample", "--model", str(dit_ckpt), "--family", "dit", "--flag", "num_heads=4",
                        "--flag", "image_size=64", "--flag", "num_classes=10", "--flag", f"autoencoder={vae}",
                        "--cfg", "1.5", "--cfg-form", "upstream", "--sampler", "ancestral", "--steps", "10",
                        "--variance", "learned", "--no-clip", "--class-labels", "random", "--seeds", "0-2",
                        "--out", str(tmp_path / "c"))
    assert code == 0, err
    net = sk.load(dit_ckpt, family="dit", num_heads=4, image_size=64, num_classes=10, autoencoder=str(vae))
    latents, y, rnd = draw(net, SEEDS, "random", "cpu")
    g = sk.guidance.cfg(net, 1.5, form="upstream")
    x = sk.samplers.ancestral(g, latents, sk.schedules.respace(1000, "10"), class_labels=y, variance="learned",
                              clip_denoised=False, randn_like=rnd.randn_like)
    assert np.array_equal(pngs(tmp_path / "c"), sk.decode(net, x).numpy())
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["cfg"] == 1.5 and manifest["cfg_form"] == "upstream" and manifest["guidance_interval"] is None
    assert manifest["autoencoder"]["name"] == "scaled-vae" and manifest["autoencoder"]["scale"] == 0.18215


# ---------------------------------------------------------------------------------------------
# bad input: one line, before any model loads where the options alone say it


@pytest.mark.parametrize("extra, message", [
    (["--guide-model", "G", "--guidance-weight", "-1"], "--guidance-weight must be >= 0, got -1"),
    (["--guide-model", "G", "--guidance-weight", "2", "--guidance-interval", "5,1"],
     "--guidance-interval (LO, HI] must have 0 <= LO < HI, got (5, 1]"),
    (["--guide-model", "G", "--guidance-weight", "2", "--guidance-interval", "1"], "bad --guidance-interval '1'"),
    (["--guide-model", "G", "--classifier", "C"],
     "classifier and --guide-model are given; a run takes one kind of guidance"),
    (["--guidance-weight", "2"], "--guidance-weight need(s) a --guide-model"),
    (["--guide-model", "G"], "--guide-model needs a --guidance-weight"),
    (["--guidance-interval", "0.1,1"], "--guidance-interval need(s) --cfg or --guide-model"),
    (["--cfg-form", "upstream"], "--cfg-form need(s) --cfg"),
    (["--guide-model", "G", "--guidance-weight", "2", "--cfg-form", "score"],
     "--cfg-form applies to --cfg, not to guidance by a --guide-model"),
    (["--cfg", "-2"], "--cfg must be >= 0, got -2"),
    (["--guide-model", "G", "--guidance-weight", "1,2"], "sample takes one --guidance-weight"),
    (["--cfg", "2"], "--cfg needs a class-conditional model with a null label; this one is unconditional"),
])
def test_bad_guidance_input_is_one_line(tmp_path, extra, message):
    code, _, err = _cli("sample", "--model", "shapes32-ideal", "--steps", "2", "--seeds", "0",
                        "--out", str(tmp_path / "o"), *extra)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").rglob("*.png"))


def test_guide_model_of_another_resolution_is_one_line(pickles, tmp_path):
    code, _, err = _cli("sample", "--model", "shapes32-ideal", "--guide-model", str(pickles["uncond"]),
                        "--guidance-weight", "2", "--steps", "2", "--seeds", "0", "--out", str(tmp_path / "o"))
    assert code == 2 and err.count("\n") == 1
    assert "the guiding network has img_resolution 8 but the model has 32" in err, err


def test_zoo_guidance_becomes_the_runs_guidance_unless_the_options_say_otherwise():
    from samplerkit.guidance import Guidance

    dit = zoo.get("dit-xl-2-256").guidance
    assert Guidance.from_options(model_guidance=dit) == [Guidance("cfg", "", 1.5, "upstream")]  # sample_ddp.py's
    assert Guidance.from_options(cfg="1", model_guidance=dit) == [Guidance("cfg", "", 1.0, "upstream")]
    assert Guidance.from_options(cfg="1,4", cfg_form="score", model_guidance=dit) == [
        Guidance("cfg", "", w, "score") for w in (1.0, 4.0)]
    autog = zoo.get("edm2-img64-s-autog-fid").guidance
    assert Guidance.from_options(model_guidance=autog) == [Guidance("guided", "edm2-img64-xs-0134217-0.110", 1.7)]
    assert Guidance.from_options(guidance_weight="1,2.2", guidance_interval="0.28,2.9", model_guidance=autog) == [
        Guidance("guided", "edm2-img64-xs-0134217-0.110", w, interval=(0.28, 2.9)) for w in (1.0, 2.2)]
    with pytest.raises(sk.SamplerkitError, match="guided preset"):
        Guidance.from_options(cfg="2", model_guidance=autog)


def test_sweep_measures_a_latent_model_on_its_decoded_images(pickles, tmp_path):
    pytest.importorskip("diffusers")
    from samplerkit import sweep
    from samplerkit.metrics import Statistics

    seen = []

    def features(images):  # a callable(uint8 NHWC) -> [n, d] feature extractor that keeps what it is given
        seen.append(np.array(images))
        return np.asarray(images, np.float64).reshape(len(images), -1)[:, :6]

    reference = Statistics(np.zeros(6), np.eye(6), 100)
    net = sk.load(pickles["latent"])
    sweep.run_cells(net, ["heun"], [3], SEEDS, reference, features, csv_path=tmp_path / "s.csv", model="latent",
                    class_labels="random")
    want = heun_images(net, net, 3).transpose(0, 2, 3, 1)
    assert np.array_equal(np.concatenate(seen), want) and want.shape[-1] == 3
