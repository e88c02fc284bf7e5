"""The README's code runs as written."""

from __future__ import annotations

import re
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
