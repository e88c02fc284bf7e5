"""A result is never silently replaced or mixed: fid-ref refuses to overwrite statistics, fid refuses
images of another resolution than the reference's. Each check names how to go on in one line."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from test_fid import assert_one_line_error, counting_features, run_cli, write_pngs  # noqa: F401 (fixture)

from samplerkit.metrics import load_statistics


def _write_csv(path: Path, rows: list[dict]) -> Path:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerows(rows)
    return path


def _ends_in_one_error_line(code: int, err: str, *words: str) -> None:
    """A refusal after the sweep's small-sample warning: the last line is the one error line."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and lines[-1].startswith("error:") and not lines[-1].startswith("error: Traceback"), err
    for word in words:
        assert word in lines[-1], err


# ---------------------------------------------------------------------------------------------
# item 1: fid-ref --out


def test_fid_ref_refuses_to_overwrite_statistics_unless_asked(tmp_path, counting_features):  # noqa: F811
    out = tmp_path / "ref.npz"
    code, _, err = run_cli("fid-ref", "--data", "builtin:shapes32?n=16", "--out", out, "--quiet")
    assert code == 0, err
    before = out.read_bytes()
    code, _, err = run_cli("fid-ref", "--data", "builtin:shapes32?n=8", "--out", out, "--quiet")
    assert_one_line_error(code, err, f"{out} already holds statistics of 16 images", "--overwrite")
    assert out.read_bytes() == before and counting_features.seen == 16  # refused before any feature
    code, _, err = run_cli("fid-ref", "--data", "builtin:shapes32?n=8", "--out", out, "--quiet", "--overwrite")
    assert code == 0, err
    assert load_statistics(out).n == 8


def test_fid_ref_records_the_resolution_of_its_images(tmp_path, counting_features):  # noqa: F811
    out = tmp_path / "ref.npz"
    assert run_cli("fid-ref", "--data", "builtin:shapes32?n=8", "--out", out, "--quiet")[0] == 0
    assert load_statistics(out).resolution == 32


# ---------------------------------------------------------------------------------------------
# item 3: fid across resolutions


def test_fid_refuses_images_of_another_resolution_unless_told(tmp_path, counting_features):  # noqa: F811
    ref = tmp_path / "ref32.npz"
    assert run_cli("fid-ref", "--data", "builtin:shapes32?n=8", "--out", ref, "--quiet")[0] == 0
    big = write_pngs(tmp_path / "big", np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8))
    seen = counting_features.seen
    code, _, err = run_cli("fid", "--images", big, "--ref", ref, "--quiet")
    assert_one_line_error(code, err, "64x64 images", "32x32", "--allow-resolution-mismatch")
    assert counting_features.seen == seen  # refused before any feature
    code, out, err = run_cli("fid", "--images", big, "--ref", ref, "--quiet", "--allow-resolution-mismatch")
    assert code == 0, err
    assert "fid" in out


def test_fid_checks_the_resolution_of_an_image_reference_too(tmp_path, counting_features):  # noqa: F811
    big = write_pngs(tmp_path / "big", np.random.default_rng(1).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8))
    code, _, err = run_cli("fid", "--images", "builtin:shapes32?n=8", "--ref", big, "--quiet")
    assert_one_line_error(code, err, "32x32 images", "64x64")
