"""NFE-vs-FID sweeps (samplerkit.sweep) and the `sweep` command."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_fid import assert_one_line_error, run_cli

import samplerkit as sk
from samplerkit import metrics, plots, sweep
from samplerkit.builtin import DEFAULT_MODEL
from samplerkit.errors import SamplerkitError
from samplerkit.runs import model_sha256

SEEDS = list(range(6))


class PooledPixels:
    """A cheap stand-in for Inception: 4x4-pooled pixels as 'pool' features (48-d) and 2x2-pooled
    ones as 'spatial' features (12-d); counts the images it sees and can fail on purpose."""

    def __init__(self, fail_after: int | None = None):
        self.images = 0
        self.fail_after = fail_after

    def extract(self, images, spatial=False):
        x = metrics.as_uint8(images).astype(np.float64) / 255
        n = len(x)
        if self.fail_after is not None and self.images + n > self.fail_after:
            raise RuntimeError("injected failure")
        self.images += n
        pool = x.reshape(n, 4, 8, 4, 8, 3).mean((2, 4)).reshape(n, -1)
        return pool, (x.reshape(n, 2, 16, 2, 16, 3).mean((2, 4)).reshape(n, -1) if spatial else None)


@pytest.fixture(scope="module")
def net():
    return sk.load("shapes32-ideal")


@pytest.fixture(scope="module")
def reference():
    return metrics.statistics_of_source("builtin:shapes32?n=64", PooledPixels(), ("fid", "sfid", "pr"))


def run(net, reference, csv_path, features=None, samplers=("heun", "euler"), steps=(2, 4), **kwargs):
    return sweep.run_cells(net, samplers, steps, SEEDS, reference, features or PooledPixels(), csv_path=csv_path,
                           model="shapes32-ideal", **kwargs)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_writes_one_row_per_sampler_and_step_count_with_its_nfe(net, reference, tmp_path):
    run(net, reference, tmp_path / "s.csv")
    rows = read_rows(tmp_path / "s.csv")
    cells = [(r["sampler"], int(r["steps"]), int(r["nfe"]), int(r["n_images"]), r["seeds"]) for r in rows]
    assert cells == [("heun", 2, 3, 6, "0-5"), ("heun", 4, 7, 6, "0-5"), ("euler", 2, 2, 6, "0-5"),
                     ("euler", 4, 4, 6, "0-5")]
    assert all(math.isfinite(float(r["fid"])) and float(r["fid"]) > 0 for r in rows)
    assert json.loads(rows[0]["settings"])["rho"] == 7.0


def test_sweep_plot_draws_the_csv_values_one_line_per_sampler(net, reference, tmp_path):
    run(net, reference, tmp_path / "s.csv")
    rows = read_rows(tmp_path / "s.csv")
    fig = sweep.plot(rows, tmp_path / "s.png", title="test")
    expected = {name: ([float(r["nfe"]) for r in rows if r["sampler"] == name],
                       [float(r["fid"]) for r in rows if r["sampler"] == name]) for name in ("heun", "euler")}
    assert plots.lines(fig.axes[0]) == expected
    assert fig.axes[0].get_title() == "test" and fig.axes[0].get_xscale() == "log"
    with Image.open(tmp_path / "s.png") as im:
        assert im.size == (660, 480)  # 5.5 x 4 inches at 120 dpi


def _rows(cells):
    return [{"sampler": s, "steps": n, "nfe": nfe, "fid": fid} for s, n, nfe, fid in cells]


def test_sweep_plot_nfe_tick_labels_do_not_overlap(tmp_path):
    """The README's sweep: euler/ddim at NFE 5, 10, 20, 50 and heun at 9, 19, 39, 99 (9 and 10,
    19 and 20 sit side by side on a log axis)."""
    cells = [("euler", n, n, 300.0 - n) for n in (5, 10, 20, 50)] + [("heun", n, 2 * n - 1, 310.0 - n)
                                                                      for n in (5, 10, 20, 50)]
    fig = sweep.plot(_rows(cells), tmp_path / "s.png")
    ax = fig.axes[0]
    ticks = [float(v) for v in ax.get_xticks()]
    assert ticks[0] == 5 and ticks[-1] == 99 and set(ticks) <= {5, 9, 10, 19, 20, 39, 50, 99}
    boxes = plots.label_boxes(fig, ax)
    assert len(boxes) == len(ticks) >= 4
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:], strict=False)), [(b.x0, b.x1) for b in boxes]


def test_rerunning_a_finished_sweep_computes_nothing(net, reference, tmp_path):
    run(net, reference, tmp_path / "s.csv")
    before = (tmp_path / "s.csv").read_bytes()
    counter = PooledPixels()
    run(net, reference, tmp_path / "s.csv", features=counter)
    assert counter.images == 0
    assert (tmp_path / "s.csv").read_bytes() == before


def test_deleting_a_row_recomputes_only_that_cell_to_the_same_fid(net, reference, tmp_path):
    path = tmp_path / "s.csv"
    run(net, reference, path)
    rows = read_rows(path)
    deleted = rows.pop(1)
    sweep.results_csv(path).write(rows)
    counter = PooledPixels()
    again = run(net, reference, path, features=counter)
    assert counter.images == len(SEEDS)
    assert float(again[1]["fid"]) == pytest.approx(float(deleted["fid"]), rel=1e-12)
    assert len(read_rows(path)) == 4


def test_an_interrupted_sweep_keeps_finished_cells_and_resumes_after_them(net, reference, tmp_path):
    path = tmp_path / "s.csv"
    with pytest.raises(RuntimeError, match="injected"):
        run(net, reference, path, features=PooledPixels(fail_after=len(SEEDS)))
    assert [(r["sampler"], r["steps"]) for r in read_rows(path)] == [("heun", "2")]
    counter = PooledPixels()
    run(net, reference, path, features=counter)
    assert counter.images == 3 * len(SEEDS)
    assert len(read_rows(path)) == 4


def test_changed_sampler_settings_are_a_new_cell(net, reference, tmp_path):
    path = tmp_path / "s.csv"
    run(net, reference, path, samplers=("heun",), steps=(2,))
    counter = PooledPixels()
    run(net, reference, path, features=counter, samplers=("heun",), steps=(2,), options={"rho": 3.0})
    assert counter.images == len(SEEDS)
    assert sorted(json.loads(r["settings"])["rho"] for r in read_rows(path)) == [3.0, 7.0]


def test_an_option_goes_only_to_the_samplers_that_take_it(net, reference, tmp_path):
    rows = run(net, reference, tmp_path / "s.csv", samplers=("heun", "ddim"), steps=(3,), options={"eta": 0.5})
    settings = {r["sampler"]: json.loads(r["settings"]) for r in rows}
    assert "eta" not in settings["heun"] and settings["ddim"]["eta"] == 0.5


def test_an_option_no_chosen_sampler_takes_is_an_error(net, reference, tmp_path):
    with pytest.raises(SamplerkitError, match="option eta applies to none"):
        run(net, reference, tmp_path / "s.csv", samplers=("heun",), options={"eta": 0.5})


def test_sweep_reports_sfid_precision_and_recall_when_asked(net, reference, tmp_path):
    rows = run(net, reference, tmp_path / "s.csv", samplers=("euler",), steps=(4,), metrics=("fid", "sfid", "pr"))
    values = [float(rows[0][k]) for k in ("fid", "sfid", "precision", "recall")]
    assert all(math.isfinite(v) for v in values) and 0 <= values[2] <= 1 and 0 <= values[3] <= 1


def test_table_lists_every_cell_with_its_values(net, reference, tmp_path):
    rows = run(net, reference, tmp_path / "s.csv")
    lines = sweep.table(rows).splitlines()
    assert lines[0].split() == ["sampler", "steps", "nfe", "fid", "n_images", "seconds", "images_per_s"]
    cells = [line.split()[:5] for line in lines[1:]]
    assert cells == [[r["sampler"], str(r["steps"]), str(r["nfe"]), f"{float(r['fid']):.4g}", "6"] for r in rows]


# ---------------------------------------------------------------------------------------------
# the command, with the real Inception network


def test_sweep_command_end_to_end_with_inception_resumes_without_recomputing(tmp_path, inception_path):
    args = ["sweep", "--sampler", "heun", "--steps", "3", "--num-images", "4", "--ref", "builtin:shapes32?n=4",
            "--csv", tmp_path / "s.csv", "--plot", tmp_path / "s.png", "--table", "--inception", inception_path]
    code, out, err = run_cli(*args)
    assert code == 0, err
    rows = read_rows(tmp_path / "s.csv")
    expected = [("heun", "5", "4", model_sha256(DEFAULT_MODEL))]  # the shipped weights' digest
    assert [(r["sampler"], r["nfe"], r["n_images"], r["sha256"]) for r in rows] == expected
    assert math.isfinite(float(rows[0]["fid"])) and float(rows[0]["fid"]) > 0
    assert rows[0]["speed"] == "exact"  # the network-execution policy the row was computed under (conftest)
    assert (tmp_path / "s.png").is_file() and "heun" in out
    assert len(list(tmp_path.glob("s.ref-*.npz"))) == 1
    assert "reference: one pass over 4 images of builtin:shapes32?n=4 through Inception" in err  # its cost, said
    code, _, err = run_cli(*args)
    assert code == 0 and "0 of 1 cells to run" in err and "from" in err
    assert "reference: stored statistics" in err  # cached beside the CSV: no pass this time
    assert read_rows(tmp_path / "s.csv") == rows


def test_sweep_command_with_more_images_than_seeds_is_a_one_line_error(tmp_path):
    code, _, err = run_cli("sweep", "--seeds", "0-3", "--num-images", "10", "--ref", "builtin:shapes32?n=4",
                           "--csv", tmp_path / "s.csv")
    assert_one_line_error(code, err, "--num-images")


def test_sweep_command_with_a_too_small_reference_source_is_a_one_line_error(tmp_path, inception_path):
    code, _, err = run_cli("sweep", "--num-images", "4", "--ref", "builtin:shapes32?n=4", "--ref-images", "10",
                           "--csv", tmp_path / "s.csv", "--inception", inception_path, "--quiet")
    assert_one_line_error(code, err, "fewer than the 10 requested")


def test_sweep_command_with_a_reference_of_another_dimension_is_a_one_line_error(tmp_path):
    np.savez(tmp_path / "small.npz", mu=np.zeros(64), sigma=np.eye(64))
    code, _, err = run_cli("sweep", "--num-images", "4", "--ref", tmp_path / "small.npz", "--csv", tmp_path / "s.csv")
    assert_one_line_error(code, err, "64-d")


def test_sweep_without_sampler_uses_the_models_recommended_sampler_as_sample_does(tmp_path, inception_path):
    code, _, err = run_cli("sweep", "--steps", "2", "--num-images", "4", "--ref", "builtin:shapes32?n=4",
                           "--csv", tmp_path / "s.csv", "--inception", inception_path, "--quiet")
    assert code == 0, err
    (row,) = read_rows(tmp_path / "s.csv")
    assert row["sampler"] == "ancestral" and json.loads(row["settings"])["variance"] == "learned"
    assert row["nfe"] == "2"


def test_sweep_warns_once_that_fid_of_few_images_is_biased(tmp_path, inception_path):
    code, _, err = run_cli("sweep", "--sampler", "euler", "--steps", "2", "--num-images", "4",
                           "--ref", "builtin:shapes32?n=4", "--csv", tmp_path / "s.csv", "--inception", inception_path)
    assert code == 0, err
    assert err.count("biased upward") == 1


def test_sweep_notes_an_unclipped_sigma_space_solver_and_its_noise(tmp_path, inception_path):
    """The default model's own sampler clips; heun on it unclipped makes noise, clipped it does not."""
    base = ["sweep", "--sampler", "heun", "--steps", "4", "--num-images", "4", "--ref", "builtin:shapes32?n=4",
            "--inception", inception_path]
    code, _, err = run_cli(*base, "--csv", tmp_path / "raw.csv")
    assert code == 0, err
    assert "heun runs unclipped" in err and "note: heun, 4 steps:" in err and "outside [-1, 1]" in err
    code, _, err = run_cli(*base, "--clip", "--csv", tmp_path / "clip.csv")
    assert code == 0, err
    assert "heun runs unclipped" not in err and "outside [-1, 1]" not in err


def test_an_adaptive_solvers_row_holds_the_nfe_it_took(net, reference, tmp_path):
    """dpm_adaptive's step count is set by its error control: the NFE column counts its calls (the mean
    over the batches), so an NFE-vs-FID plot places it where it ran, not at the grid's nominal N."""
    found = run(net, reference, tmp_path / "s.csv", samplers=("dpm_adaptive",), steps=(10,), batch_size=3,
                options={"rtol": 0.01, "atol": 0.001})
    prepared = sweep.make_sampler(net, "dpm_adaptive", 10, rtol=0.01, atol=0.001)
    list(sweep.generate(prepared.net, prepared, list(SEEDS), 3))
    assert float(found[0]["nfe"]) == round(prepared.measured_nfe, 1) != 10
    assert read_rows(tmp_path / "s.csv")[0]["nfe"] == str(round(prepared.measured_nfe, 1))


def test_sweep_tells_fast_how_many_calls_its_cells_make(tmp_path, inception_path, monkeypatch):
    from samplerkit import speed

    seen = []
    monkeypatch.setattr(speed, "consider_compile", lambda net, tuning, calls, batch, device, **kw: seen.append(
        (calls, batch)) or tuning)
    monkeypatch.setenv("SAMPLERKIT_CACHE", str(tmp_path / "cache"))
    code, _, err = run_cli("sweep", "--sampler", "euler,heun", "--steps", "2,3", "--num-images", "5", "--batch", "2",
                           "--ref", "builtin:shapes32?n=5", "--csv", tmp_path / "s.csv", "--inception",
                           inception_path, "--speed", "fast", "--quiet")
    assert code == 0, err
    assert seen == [((2 + 3 + 3 + 5) * 3, 2)]  # euler 2, 3 and heun 2, 3 steps (NFE 3, 5) x ceil(5 / 2) batches


def test_sweep_run_takes_settings_only():
    with pytest.raises(SamplerkitError, match="run_cells"):
        sweep.run(object())
