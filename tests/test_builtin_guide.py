"""The shipped guiding network shapes32-edm-xs (the autoguidance miniature, Karras et al. 2024): a
smaller, shorter-trained version of shapes32-edm, and `samplerkit sample --guide-model` with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from test_cli_guidance import heun_images, pngs
from test_cli_sample import _cli

import samplerkit as sk
from samplerkit.builtin import MODELS_DIR
from samplerkit.output import file_sha256


def test_the_guide_is_shapes32_edm_at_half_the_channels_and_under_one_mebibyte():
    names = ("shapes32-edm", "shapes32-edm-xs")
    flags = {name: json.loads((MODELS_DIR / f"{name}.json").read_text()) for name in names}
    assert flags["shapes32-edm-xs"]["model_channels"] * 2 == flags["shapes32-edm"]["model_channels"]
    assert {k: v for k, v in flags["shapes32-edm-xs"].items() if k != "model_channels"} == \
        {k: v for k, v in flags["shapes32-edm"].items() if k != "model_channels"}
    assert (MODELS_DIR / "shapes32-edm-xs.pt").stat().st_size <= 2**20
    results = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    guide, model = (json.loads((results / f"{name}-settings.json").read_text()) for name in reversed(names))
    assert guide["iterations"] * 24 == model["iterations"] == 12000  # 500 steps: a 24th of shapes32-edm's


def test_sample_guided_by_the_shipped_guide_equals_the_library(tmp_path):
    torch.set_num_threads(1)
    code, _, err = _cli("sample", "--model", "shapes32-edm", "--guide-model", "shapes32-edm-xs", "--guidance-weight",
                        "2", "--steps", "3", "--seeds", "0-2", "--out", str(tmp_path / "g"), "--device", "cpu")
    assert code == 0, err
    net, gnet = sk.load("shapes32-edm"), sk.load("shapes32-edm-xs")
    assert np.array_equal(pngs(tmp_path / "g"), heun_images(net, sk.guidance.guided(net, gnet, 2.0), 3, labels=None))
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert manifest["guide_model"] == "shapes32-edm-xs"
    assert manifest["guide_model_sha256"] == file_sha256(MODELS_DIR / "shapes32-edm-xs.pt")
    assert manifest["guidance_weight"] == 2.0
