"""Headless figures (samplerkit.plots)."""

from __future__ import annotations

import os

from PIL import Image

from samplerkit import plots


def test_save_writes_the_figure_atomically_at_its_size(tmp_path):
    fig, ax = plots.figure(figsize=(3, 2))
    ax.plot([1, 2, 3], [4, 5, 6], label="a")
    path = plots.save(fig, tmp_path / "sub" / "f.png", dpi=50)
    with Image.open(path) as im:
        assert im.size == (150, 100) and im.format == "PNG"
    assert sorted(os.listdir(tmp_path / "sub")) == ["f.png"]  # no temporary left behind


def test_save_follows_the_suffix(tmp_path):
    fig, ax = plots.figure()
    ax.plot([0, 1], [0, 1])
    assert plots.save(fig, tmp_path / "f.svg").read_text().lstrip().startswith("<?xml")


def test_lines_returns_the_labelled_series_only():
    fig, ax = plots.figure()
    ax.plot([1, 2], [3.5, 4.5], label="mine")
    ax.plot([0, 1], [0, 0])  # unlabelled helper line
    assert plots.lines(ax) == {"mine": ([1.0, 2.0], [3.5, 4.5])}


def test_spaced_xticks_keeps_the_ends_and_drops_labels_that_would_touch():
    fig, ax = plots.figure(figsize=(3, 2))
    ax.plot([1, 1000], [0, 1])
    ax.set_xscale("log")
    kept = plots.spaced_xticks(fig, ax, [1, 2, 3, 4, 5, 10, 100, 999, 1000])
    assert kept[0] == 1 and kept[-1] == 1000 and 999 not in kept
    boxes = plots.label_boxes(fig, ax)
    assert len(boxes) == len(kept)
    assert all(a.x1 + 4 <= b.x0 for a, b in zip(boxes, boxes[1:], strict=False))
