"""A result is never silently replaced or mixed: fid-ref refuses to overwrite statistics, fid refuses
images of another resolution than the reference's, and a sweep / nll / exposure-bias CSV takes rows
of its own experiment only. Each check names how to go on in one line."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from test_fid import assert_one_line_error, counting_features, run_cli, write_pngs  # noqa: F401 (fixture)

from samplerkit import results
from samplerkit.errors import SamplerkitError
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


# ---------------------------------------------------------------------------------------------
# item 2: one experiment per CSV


def test_check_experiment_accepts_its_own_rows_and_a_resumed_subset(tmp_path):
    path = _write_csv(tmp_path / "t.csv", [{"model": "a", "n_images": "16"}, {"model": "b", "n_images": "16"}])
    results.check_experiment(path, "rows", {"model": ["a", "b", "c"], "n_images": [16]})
    results.check_experiment(tmp_path / "none.csv", "rows", {"model": ["x"]})
    results.check_experiment(None, "rows", {"model": ["x"]})


def test_check_experiment_refuses_rows_of_another_experiment_in_one_line(tmp_path):
    path = _write_csv(tmp_path / "t.csv", [{"model": "a", "n_images": "16", "ref": "r1"}])
    with pytest.raises(SamplerkitError) as info:
        results.check_experiment(path, "sweep rows", {"model": ["a"], "n_images": [4], "ref": ["r1"]})
    assert str(info.value) == (f"{path} holds sweep rows of another experiment (n_images 16 there, 4 now); start a "
                               f"new file with another csv_path, or move {path} away")
    with pytest.raises(SamplerkitError, match="model a there, b now"):
        results.check_experiment(path, "sweep rows", {"model": ["b"]})


def test_a_row_without_the_column_is_not_checked_on_it(tmp_path):
    path = _write_csv(tmp_path / "t.csv", [{"model": "a"}])
    results.check_experiment(path, "rows", {"model": ["a"], "mode": ["clean"]})


def test_sweep_refuses_a_csv_of_another_model_reference_or_size(tmp_path, counting_features):  # noqa: F811
    ref = tmp_path / "ref.npz"
    assert run_cli("fid-ref", "--data", "builtin:shapes32?n=8", "--out", ref, "--quiet")[0] == 0
    table = tmp_path / "sweep.csv"
    args = ["sweep", "--sampler", "ddim", "--steps", "2", "--num-images", "4", "--ref", ref, "--csv", table, "--quiet"]
    code, _, err = run_cli(*args)
    assert code == 0, err
    rows = list(csv.DictReader(open(table)))
    code, _, err = run_cli(*args[:6], "8", *args[7:])  # 8 images per cell into the 4-image CSV
    _ends_in_one_error_line(code, err, "another experiment", "n_images 4 there, 8 now", "--csv")
    code, _, err = run_cli(*args, "--model", "shapes32-adm")  # the default model is shapes32-adm-ip
    _ends_in_one_error_line(code, err, "another experiment", "model shapes32-adm-ip there, shapes32-adm now")
    other = tmp_path / "other.npz"
    assert run_cli("fid-ref", "--data", "builtin:shapes32?n=8&seed=3", "--out", other, "--quiet")[0] == 0
    code, _, err = run_cli(*args[:8], other, *args[9:])
    _ends_in_one_error_line(code, err, "another experiment", "ref ")
    assert list(csv.DictReader(open(table))) == rows  # untouched
    code, _, err = run_cli(*args[:4], "2,3", *args[5:])  # the same experiment grows by a cell
    assert code == 0, err


def test_nll_refuses_a_csv_of_another_method(tmp_path):
    table = _write_csv(tmp_path / "nll.csv", [{"model": "shapes32-adm", "sha256": "x", "method": "vlb",
                                               "data": "builtin:shapes32?seed=1", "image": "0", "bpd": "3.0",
                                               "settings": "{}"}])
    code, _, err = run_cli("nll", "--model", "shapes32-adm", "--data", "builtin:shapes32?seed=1", "--method", "ode",
                           "--num-images", "2", "--csv", table, "--quiet")
    assert_one_line_error(code, err, "holds likelihood rows of another experiment", "method vlb there, ode now")


def test_exposure_bias_refuses_a_csv_of_another_model_set(tmp_path):
    table = _write_csv(tmp_path / "eb.csv", [{"model": "shapes32-adm", "sha256": "x", "mode": "delta", "t": "10",
                                              "n": "4", "seed": "0",
                                              "settings": "chain=model:1000/respace:10;data=builtin:shapes32;clip=1"}])
    code, _, err = run_cli("exposure-bias", "--model", "shapes32-adm-ip", "--num-images", "4", "--t", "10",
                           "--respacing", "10", "--csv", table, "--quiet")
    assert_one_line_error(code, err, "holds exposure-bias rows of another experiment",
                          "model shapes32-adm there, shapes32-adm-ip now")
    code, _, err = run_cli("exposure-bias", "--model", "shapes32-adm", "--num-images", "2", "--t", "10",
                           "--respacing", "10", "--csv", table, "--quiet")
    assert_one_line_error(code, err, "n 4 there, 2 now")
