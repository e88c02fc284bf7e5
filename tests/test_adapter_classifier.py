"""Noisy-image classifiers (guided-diffusion ``EncoderUNetModel``): upstream outputs, strict loading, errors.

``tests/fixtures/guidance_upstream_outputs.pt`` ("classifiers") holds the logits of guided-diffusion's
own ``EncoderUNetModel`` (unet.py at openai/guided-diffusion 22e0df8, run on CPU in float32) for
four flag sets, one per pool type, on the weights ``random_state_dict(template, seed)`` (of
test_adapter_adm.py) and the input ``torch.randn(2, 3, 32, 32, generator=manual_seed(seed))`` at
timesteps ``t``. The generating script built each network with the upstream class directly
(``create_classifier`` fixes 1000 classes and 64-channel heads, too big for a fixture) and is
kept outside the repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from samplerkit.adapters import classifier as C
from test_adapter_adm import random_state_dict, template_of

import samplerkit as sk

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def upstream():
    return torch.load(FIXTURES / "guidance_upstream_outputs.pt", weights_only=True)["classifiers"]


def save_classifier(tmp_path, flags: dict, seed: int) -> Path:
    path = tmp_path / f"clf{seed}.pt"
    torch.save(random_state_dict(template_of(C.create_classifier, **flags), seed), path)
    return path


@pytest.mark.parametrize("pool", C.POOLS)
def test_logits_equal_guided_diffusions_encoder_unet(tmp_path, upstream, pool):
    ref = upstream[pool]
    clf = sk.load(save_classifier(tmp_path, ref["flags"], int(ref["seed"])), family="adm-classifier", **ref["flags"])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(int(ref["seed"])))
    with torch.no_grad():
        logits = clf(x, ref["t"])
    assert logits.shape == ref["out"].shape
    assert (logits - ref["out"]).abs().max() <= 1e-5


def test_release_flags_build_the_upstream_key_layout():
    """create_classifier's defaults at 64 px with depth 4 (the 64x64 release): attention pooling
    over a 8x8 map, 1000 classes, 64-channel heads."""
    with torch.device("meta"):
        sd = C.create_classifier(image_size=64, classifier_depth=4).state_dict()
    assert tuple(sd["out.2.positional_embedding"].shape) == (512, 8 * 8 + 1)
    assert tuple(sd["out.2.c_proj.weight"].shape) == (1000, 512, 1)
    assert tuple(sd["input_blocks.0.0.weight"].shape) == (128, 3, 3, 3)
    assert "input_blocks.5.0.in_layers.0.weight" in sd  # resblock_updown: the downsampler is a ResBlock


def test_timestep_is_the_nearest_trained_level_of_its_schedule(tmp_path, upstream):
    ref = upstream["adaptive"]
    clf = sk.load(save_classifier(tmp_path, ref["flags"], 1), family="adm-classifier", noise_schedule="cosine",
                  **ref["flags"])
    sigmas = clf.sigmas[[0, 17, 999]]
    assert clf.timestep(sigmas).tolist() == [0, 17, 999]
    assert clf.timestep(sigmas[1] * (1 + 1e-9)).tolist() == [17]


def test_rescale_timesteps_feeds_t_times_1000_over_T(tmp_path, upstream):
    ref = upstream["adaptive"]
    path = save_classifier(tmp_path, ref["flags"], 2)
    plain = sk.load(path, family="adm-classifier", diffusion_steps=4000, **ref["flags"])
    scaled = sk.load(path, family="adm-classifier", diffusion_steps=4000, rescale_timesteps=True, **ref["flags"])
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(scaled(x, torch.tensor([400])), plain(x, torch.tensor([100.0])))


def test_wrong_pool_flag_is_named_in_the_error(tmp_path, upstream):
    ref = upstream["attention"]
    path = save_classifier(tmp_path, ref["flags"], 3)
    with pytest.raises(sk.SamplerkitError, match="checkpoint has classifier_pool attention, flags say adaptive"):
        sk.load(path, family="adm-classifier", **{**ref["flags"], "classifier_pool": "adaptive"})


def test_wrong_class_count_is_named_in_the_error(tmp_path, upstream):
    ref = upstream["attention"]
    path = save_classifier(tmp_path, ref["flags"], 4)
    with pytest.raises(sk.SamplerkitError, match="checkpoint has num_classes 10, flags say 1000"):
        sk.load(path, family="adm-classifier", **{**ref["flags"], "num_classes": 1000})


def test_unknown_pool_and_flag_are_one_line_errors():
    with pytest.raises(sk.SamplerkitError, match="classifier_pool must be one of attention, adaptive"):
        C.create_classifier(classifier_pool="max")
    with pytest.raises(sk.SamplerkitError, match="unknown classifier flag 'classifier_heads'"):
        C.create_classifier(classifier_heads=4)


def test_zoo_classifiers_carry_the_readme_flags_and_build_at_reduced_width():
    from samplerkit import zoo

    entries = {e.name: e for e in zoo.entries() if e.family == "adm-classifier"}
    assert sorted(entries) == [f"adm-imagenet{r}-classifier" for r in (128, 256, 512, 64)]
    assert entries["adm-imagenet64-classifier"].flags["classifier_depth"] == 4  # --classifier_depth 4 at 64 px
    assert entries["adm-imagenet64-classifier"].schedule == "cosine"  # the 64x64 base model's schedule
    assert "adm-imagenet256-uncond at --classifier-scale 10.0" in entries["adm-imagenet256-classifier"].notes
    for e in entries.values():
        assert e.filename == f"{e.resolution}x{e.resolution}_classifier.pt" and e.flags["image_size"] == e.resolution
        flags = {k: v for k, v in e.flags.items() if k in C.CLASSIFIER_DEFAULTS}
        flags.update(classifier_width=32 if e.resolution < 512 else 64, classifier_num_head_channels=16)
        with torch.device("meta"):
            net = C.create_classifier(**flags)
        assert net.out[2].c_proj.out_channels == 1000 and net.pool == "attention", e.name


def layout(sd: dict) -> dict:
    """sha256 of the sorted 'key:shape' lines, the key count and the parameter count of a state dict."""
    import hashlib

    text = "\n".join(f"{k}:{','.join(map(str, v.shape))}" for k, v in sorted(sd.items()))
    return dict(digest=hashlib.sha256(text.encode()).hexdigest(), keys=len(sd),
                params=sum(v.numel() for v in sd.values()))


def test_zoo_classifier_flags_build_the_released_state_dict_layout(upstream):
    """Every key and shape of guided-diffusion's create_classifier with the README's flags (the fixture
    holds the digest of its 'key:shape' lines, computed on the meta device), so the released files load
    strictly."""
    from samplerkit import zoo

    released = torch.load(FIXTURES / "guidance_upstream_outputs.pt", weights_only=True)["release_layouts"]
    for e in (e for e in zoo.entries() if e.family == "adm-classifier"):
        with torch.device("meta"):
            net = C.create_classifier(**{k: v for k, v in e.flags.items() if k in C.CLASSIFIER_DEFAULTS})
        assert layout(net.state_dict()) == released[e.name], e.name
