"""The README's code runs as written."""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(python_blocks()) >= 1


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_python_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAMPLERKIT_OFFLINE", "1")
    namespace: dict = {}
    exec(compile(python_blocks()[index], f"README.md python block {index}", "exec"), namespace)  # noqa: S102
    if "save_images" in python_blocks()[index]:
        pngs = sorted(p for p in tmp_path.rglob("*.png") if p.name != "grid.png")
        x = namespace["x"]
        assert len(pngs) == x.shape[0]
        first = np.asarray(Image.open(pngs[0]))
        assert first.shape == (x.shape[2], x.shape[3], x.shape[1])
        expected = (x[0] * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        assert np.array_equal(first, expected)


def tour_lines() -> list[list[str]]:
    """The commands between the README's tour markers, split as a shell would."""
    block = README.read_text().split("<!-- tour -->")[1].split("<!-- /tour -->")[0]
    return [shlex.split(line.strip())[1:] for line in block.splitlines() if line.strip().startswith("samplerkit ")]


def test_the_readme_tour_runs_in_sequence_and_the_commands_compose(tmp_path, monkeypatch, inception_path):
    """sample -> fid on that folder; sweep -> CSV and plot; exposure-bias -> paired rows;
    retrain -> sample its checkpoint with no extra flags."""
    from test_cli_sample import _cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAMPLERKIT_OFFLINE", "1")
    monkeypatch.setenv("SAMPLERKIT_INCEPTION", str(inception_path))
    outputs = []
    for args in tour_lines():
        code, out, err = _cli(*args)
        assert code == 0, f"samplerkit {' '.join(args)}: {err[-2000:]}"
        outputs.append(out)

    samples = sorted(p.name for p in (tmp_path / "tour/samples/000000").glob("*.png"))
    assert samples == [f"{i:06d}.png" for i in range(8)]
    fid = json.loads(outputs[1].strip().splitlines()[-1])
    assert fid["n_images"] == 8 and fid["n_ref"] == 32 and fid["fid"] > 0  # per-seed images only, no grid.png

    with open(tmp_path / "tour/sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["sampler"], r["steps"]) for r in rows] == [("ancestral", "4"), ("ancestral", "8"),
                                                         ("dpmpp_2m", "4"), ("dpmpp_2m", "8")]
    assert all(float(r["fid"]) > 0 for r in rows)
    assert Image.open(tmp_path / "tour/sweep.png").size[0] > 300

    with open(tmp_path / "tour/eb.csv", newline="") as f:
        eb = list(csv.DictReader(f))
    assert {r["model"] for r in eb} == {"shapes32-adm", "shapes32-adm-ip"}
    assert any(r.get("diff_mean") not in (None, "") for r in eb)  # the paired comparison of the two models

    manifest = json.loads((tmp_path / "tour/run-samples/manifest.json").read_text())
    assert (manifest["sampler"], manifest["steps"], manifest["variance"]) == ("ancestral", 50, "learned")
    assert manifest["family"] == "adm" and manifest["flags"]["image_size"] == 32
