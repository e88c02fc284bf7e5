"""Super-resolution models (ADM-U and improved-diffusion's upsampler): upstream outputs, binding, runs.

``tests/fixtures/guidance_upstream_outputs.pt`` ("superres_adm", "superres_iddpm") holds the outputs
of guided-diffusion's ``SuperResModel`` (openai/guided-diffusion 22e0df8) and improved-diffusion's
``SuperResModel`` (openai/improved-diffusion), CPU float32, on the weights
``random_state_dict(template, seed)`` (test_adapter_adm.py); from
``torch.Generator().manual_seed(seed)`` the script drew x = randn(2, 3, 32, 32), then the 16x16
low-resolution images as rand(2, 3, 16, 16) * 2 - 1. The generating script is kept outside the
repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from samplerkit.adapters import superres
from test_adapter_adm import random_state_dict, template_of

import samplerkit as sk

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def upstream():
    return torch.load(FIXTURES / "guidance_upstream_outputs.pt", weights_only=True)


def sr_flags(ref: dict) -> dict:
    flags = {k: v for k, v in ref["flags"].items()}
    return {**flags, "large_size": 32, "small_size": 16, "class_cond": True, "num_classes": 10,
            **({} if "channel_mult" in flags else {"channel_mult": "1,2"})}


def save_upsampler(tmp_path: Path, family: str, flags: dict, seed: int) -> Path:
    path = tmp_path / f"{family}-{seed}.pt"
    template = template_of(lambda **f: superres.create_upsampler(family, **f), **flags)
    torch.save(random_state_dict(template, seed), path)
    return path


def inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 32, 32, generator=g)
    return x, torch.rand(2, 3, 16, 16, generator=g) * 2 - 1


@pytest.mark.parametrize("family,key", [("adm", "superres_adm"), ("iddpm", "superres_iddpm")])
def test_upsampler_outputs_equal_upstream_superres_model(tmp_path, upstream, family, key):
    ref = upstream[key]
    flags = sr_flags(ref)
    net = sk.load(save_upsampler(tmp_path, family, flags, int(ref["seed"])), family=f"{family}-superres", **flags)
    x, low = inputs(int(ref["seed"]))
    eps, v = superres.bind(net, low).eps(x, ref["t"].long(), ref["y"])
    assert (torch.cat([eps, v], dim=1) - ref["out"]).abs().max() <= 1e-5


def test_bound_denoiser_is_x_minus_sigma_eps_of_the_conditioned_network(tmp_path, upstream):
    ref = upstream["superres_adm"]
    flags = sr_flags(ref)
    net = sk.load(save_upsampler(tmp_path, "adm", flags, 7), family="adm-superres", **flags)
    x, low = inputs(7)
    bound = superres.bind(net, low)
    t = torch.tensor([300, 300])
    sigma = bound.sigmas[t]
    D = bound(x * (1 + sigma[:, None, None, None] ** 2).sqrt(), sigma, torch.tensor([1, 2]))
    eps, _ = bound.eps(x, t, torch.tensor([1, 2]))
    expected = x.double() * (1 + sigma[:, None, None, None] ** 2).sqrt() - sigma[:, None, None, None] * eps
    assert (D - expected).abs().max() <= 1e-10
    other = superres.bind(net, -low)(x, sigma, torch.tensor([1, 2]))
    assert (other - D).abs().max() > 1e-3  # the low-resolution images condition the output


def test_binding_is_per_row_so_a_batch_splits_into_the_same_images(tmp_path, upstream):
    ref = upstream["superres_iddpm"]
    flags = sr_flags(ref)
    net = sk.load(save_upsampler(tmp_path, "iddpm", flags, 8), family="iddpm-superres", **flags)
    x, low = inputs(8)
    y, sigma = torch.tensor([4, 5]), torch.tensor([2.0, 2.0])
    both = superres.bind(net, low)(x, sigma, y)
    first = superres.bind(net, low[:1])(x[:1], sigma[:1], y[:1])
    assert (both[:1] - first).abs().max() <= 1e-5


def test_unbound_upsampler_and_wrong_low_res_size_are_one_line_errors(tmp_path, upstream):
    ref = upstream["superres_adm"]
    flags = sr_flags(ref)
    net = sk.load(save_upsampler(tmp_path, "adm", flags, 9), family="adm-superres", **flags)
    assert net.low_res_resolution == 16 and net.img_resolution == 32
    with pytest.raises(sk.SamplerkitError, match="super-resolution model: bind its low-resolution images"):
        net(torch.randn(1, 3, 32, 32), torch.tensor([1.0]), torch.tensor([0]))
    with pytest.raises(sk.SamplerkitError, match=r"takes 16x16 low-resolution images .* got 3x8x8"):
        superres.bind(net, torch.zeros(1, 3, 8, 8))
    with pytest.raises(sk.SamplerkitError, match="2 low-resolution images are bound but the batch has 1"):
        superres.bind(net, torch.zeros(2, 3, 16, 16))(torch.randn(1, 3, 32, 32), torch.tensor([1.0]),
                                                      torch.tensor([0]))


def test_zoo_upsampler_flags_build_their_networks_at_reduced_width():
    from samplerkit import zoo

    entries = [e for e in zoo.entries() if e.family.endswith("-superres")]
    assert {e.name for e in entries} == {"adm-imagenet64to256-upsampler", "adm-imagenet128to512-upsampler",
                                         "iddpm-imagenet64to256-upsampler"}
    for e in entries:
        family = e.family.split("-")[0]
        defaults = superres.IDDPM_SR_DEFAULTS if family == "iddpm" else superres.ADM_SR_DEFAULTS
        flags = {k: v for k, v in e.flags.items() if k in defaults}
        flags["num_channels"] = 32
        if flags.get("num_head_channels", -1) > 0:
            flags["num_head_channels"] = 16
        with torch.device("meta"):
            unet = superres.create_upsampler(family, **flags)
        assert unet.input_blocks[0][0].in_channels == 6 and unet.out[-1].out_channels == 6, e.name
        assert e.resolution == e.flags["large_size"] and e.recommended["sampler"] == "ancestral"


# ---------------------------------------------------------------------------------------------
# runs: `samplerkit sample --low-res` and the two-stage `--then-upsample`

BASE = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
            num_head_channels=32, learn_sigma=True)
CLASSIFIER = dict(image_size=16, classifier_width=32, classifier_depth=1, classifier_channel_mult="1,2",
                  classifier_attention_resolutions="8", classifier_num_head_channels=32, num_classes=10)
UPSAMPLER = dict(large_size=32, small_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2",
                 attention_resolutions="16", num_heads=1, learn_sigma=True, class_cond=True, num_classes=10)


def tiny_models(root: Path) -> dict[str, Path]:
    """16 px base model, 16 px classifier (10 classes) and a 16 -> 32 class-conditional upsampler, each a
    random-weight .pt with its flags.json beside it (as a samplerkit run folder keeps them)."""
    import json

    from samplerkit.adapters import adm
    from samplerkit.adapters import classifier as C

    made = {}
    for name, create, family, flags, seed in (
        ("base", adm.create_unet, "adm", BASE, 1),
        ("classifier", C.create_classifier, "adm-classifier", CLASSIFIER, 2),
        ("upsampler", lambda **f: superres.create_upsampler("adm", **f), "adm-superres", UPSAMPLER, 3),
    ):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(random_state_dict(template_of(create, **flags), seed), folder / "model.pt")
        (folder / "flags.json").write_text(json.dumps({"family": family, **flags, "diffusion_steps": 1000}))
        made[name] = folder / "model.pt"
    return made


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("models"))


def _cli(*args):
    from test_cli_sample import _cli as run

    return run(*args, "--device", "cpu", "--quiet", "--speed", "exact")


def _pngs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png")) if p.name != "grid.png"}


def test_low_res_npz_is_upsampled_with_its_labels(models, tmp_path):
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8), np.array([3, 1, 4, 1, 5])
    np.savez(tmp_path / "low.npz", images, labels)
    code, _, err = _cli("sample", "--model", str(models["upsampler"]), "--low-res", str(tmp_path / "low.npz"),
                        "--sampler", "ddim", "--steps", "2", "--seeds", "1-3", "--out", str(tmp_path / "up"))
    assert code == 0, err
    manifest = json.loads((tmp_path / "up" / "manifest.json").read_text())
    assert manifest["labels"] == [1, 4, 1] and manifest["image_shape"] == [3, 32, 32]
    assert manifest["low_res_id"] == sk.output.file_sha256(tmp_path / "low.npz")
    assert len(_pngs(tmp_path / "up")) == 3


def test_two_stage_run_writes_both_stages_and_resumes_after_a_kill(models, tmp_path, monkeypatch):
    import json

    args = ["sample", "--model", str(models["base"]), "--classifier", str(models["classifier"]), "--classifier-scale",
            "2", "--class-labels", "random", "--sampler", "ddim", "--steps", "2", "--seeds", "0-5", "--batch", "2",
            "--then-upsample", str(models["upsampler"]), "--upsample-sampler", "ddim", "--upsample-steps", "2"]
    assert _cli(*args, "--out", str(tmp_path / "clean"))[0] == 0
    clean = _pngs(tmp_path / "clean")
    assert sorted(clean) == [f"{stage}/000000/00000{i}.png" for stage in ("base", "upsampled") for i in range(6)]
    base, up = (json.loads((tmp_path / "clean" / s / "manifest.json").read_text()) for s in ("base", "upsampled"))
    assert up["labels"] == base["labels"] and len(set(base["labels"])) > 1  # the base's classes go to the upsampler
    assert up["low_res_id"] == base["settings_fingerprint"] and up["image_shape"] == [3, 32, 32]

    calls = {"n": 0}
    forward = superres.SuperResNetwork.forward

    def killed_after_two_batches(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > 2 * 2:  # ddim 2 steps = 2 evaluations per batch
            raise KeyboardInterrupt
        return forward(self, *a, **k)

    monkeypatch.setattr(superres.SuperResNetwork, "forward", killed_after_two_batches)
    code, _, err = _cli(*args, "--out", str(tmp_path / "killed"))
    assert code == 130 and "4 of 6 images are saved" in err, err
    assert len(_pngs(tmp_path / "killed" / "upsampled")) == 4
    monkeypatch.setattr(superres.SuperResNetwork, "forward", forward)
    assert _cli(*args, "--out", str(tmp_path / "killed"))[0] == 0
    assert _pngs(tmp_path / "killed") == clean


def test_low_res_of_the_wrong_size_is_a_one_line_error(models, tmp_path):
    import numpy as np

    np.savez(tmp_path / "low.npz", np.zeros((2, 8, 8, 3), dtype=np.uint8), np.array([0, 1]))
    code, _, err = _cli("sample", "--model", str(models["upsampler"]), "--low-res", str(tmp_path / "low.npz"),
                        "--seeds", "0-1", "--out", str(tmp_path / "o"))
    assert code == 2 and err.count("\n") == 1
    assert "--low-res images are 8x8 but" in err and "upsamples 16x16 images" in err


def test_upsampler_without_low_res_and_low_res_without_upsampler_are_errors(models, tmp_path):
    code, _, err = _cli("sample", "--model", str(models["upsampler"]), "--out", str(tmp_path / "a"))
    assert code == 2 and "is a super-resolution model: give --low-res with its 16x16 images" in err
    code, _, err = _cli("sample", "--model", str(models["base"]), "--low-res", str(tmp_path), "--out",
                        str(tmp_path / "b"))
    assert code == 2 and "--low-res conditions super-resolution models only" in err


def test_zoo_upsampler_flags_build_the_released_state_dict_layout():
    """Every key and shape of guided-/improved-diffusion's sr_create_model with the README's flags (the
    fixture holds the digest of its 'key:shape' lines, computed on the meta device)."""
    from test_adapter_classifier import layout

    from samplerkit import zoo

    released = torch.load(FIXTURES / "guidance_upstream_outputs.pt", weights_only=True)["release_layouts"]
    for e in (e for e in zoo.entries() if e.family.endswith("-superres")):
        family = e.family.split("-")[0]
        defaults = superres.IDDPM_SR_DEFAULTS if family == "iddpm" else superres.ADM_SR_DEFAULTS
        with torch.device("meta"):
            unet = superres.create_upsampler(family, **{k: v for k, v in e.flags.items() if k in defaults})
        assert layout(unet.state_dict()) == released[e.name], e.name
