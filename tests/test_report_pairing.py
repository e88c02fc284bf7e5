"""The exposure-bias report's paired differences: a remedy variant against its own model as well as
against the first model, Time-Shift rows that cannot shift, and the plot of the differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from samplerkit.adapters.analytic import GaussianDenoiser
from scipy import stats

from samplerkit import diffusion, plots
from samplerkit import exposure as ex
from samplerkit.denoisers import DiscreteEpsDenoiser
from samplerkit.exposure import harness, report
from samplerkit.remedies import Remedies, TimeShift

T = 50
AB = torch.as_tensor(diffusion.alpha_bar_from_betas(diffusion.linear_betas(T)))
GAUSS = GaussianDenoiser(0.0, 0.5, img_channels=3, img_resolution=4)


def _model(bias: float) -> DiscreteEpsDenoiser:
    return DiscreteEpsDenoiser(lambda x_t, t, labels=None: GAUSS.eps(x_t, AB[t]) + bias, AB, img_channels=3,
                               img_resolution=4, dtype=torch.float64)


def _x0(n: int = 10) -> torch.Tensor:
    return (0.5 * torch.randn(n, 3, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)).clamp(-1, 1)


def _with(spec: ex.ModelSpec, remedies: Remedies, settings: ex.Settings) -> ex.ModelSpec:
    """The variant '<name><label>' as exposure-bias makes it (Epsilon Scaling wraps the net, the time
    shift rides on the spec)."""
    if remedies.time_shift is not None:
        return ex.ModelSpec(spec.name + remedies.label(), spec.net, time_shift=remedies.time_shift)
    net, _ = remedies.apply(spec.net, ex.chain_sigmas(settings.chain(spec.net).alpha_bar))
    return ex.ModelSpec(spec.name + remedies.label(), net)


def _run(tmp_path, specs, settings, x0):
    return ex.run(specs, x0, None, settings, csv_path=tmp_path / "eb.csv", log=lambda s: None, show_progress=False)


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    d = a - b
    half = stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return d.mean(), d.mean() - half, d.mean() + half


@pytest.fixture
def four_models(tmp_path):
    """plain, biased, and each with Epsilon Scaling: the variant of the second model must be paired
    with the second model (the remedy alone), not only with the first (model and remedy mixed)."""
    settings = ex.Settings(modes=("delta",), t_values=(10, 50), batch=5)
    plain, biased = ex.ModelSpec("plain", _model(0.0)), ex.ModelSpec("biased", _model(0.05))
    es = Remedies(eps_scaler=1.02)
    specs = [plain, _with(plain, es, settings), biased, _with(biased, es, settings)]
    x0 = _x0()
    rep = _run(tmp_path, specs, settings, x0)
    per = {s.name: {t: ex.measure(s, "delta", t, x0, None, settings)[1]["per_image"] for t in (10, 50)}
           for s in specs}
    return rep, per, harness.read_per_image(tmp_path / "eb.csv")


def test_a_remedy_variant_is_paired_with_its_own_model_and_the_first(four_models):
    rep, per, stored = four_models
    pairs = {(p["model"], p["against"], p["t_full"]): p for p in report.pairings(rep.current, stored)}
    assert {(m, a) for m, a, _ in pairs} == {("plain+ES1.02", "plain"), ("biased", "plain"),
                                             ("biased+ES1.02", "biased"), ("biased+ES1.02", "plain")}
    for t in (10, 50):
        own = pairs["biased+ES1.02", "biased", t]
        assert own["kind"] == "remedy" and own["no_shift"] is None
        assert (own["mean"], own["low"], own["high"]) == pytest.approx(
            _paired(per["biased+ES1.02"][t], per["biased"][t]), rel=1e-12)
        mixed = pairs["biased+ES1.02", "plain", t]
        assert mixed["kind"] == "first"
        assert (mixed["mean"], mixed["low"], mixed["high"]) == pytest.approx(
            _paired(per["biased+ES1.02"][t], per["plain"][t]), rel=1e-12)
        assert pairs["plain+ES1.02", "plain", t]["kind"] == "remedy"  # its own model is the first: one pair
    text = report.table(rep.current, "delta", stored)
    # the column headers: the first line of each block of columns (blocks fit 100 columns)
    header = " | ".join(line for line in text.splitlines() if line.startswith(" ") and " - " in line
                        and "[" not in line)
    assert "biased+ES1.02 - biased" in header and "biased+ES1.02 - plain" in header
    assert header.count("plain+ES1.02 - plain") == 1
    assert "the remedy alone" in text and "model and remedy together" in text


def test_without_per_image_values_the_own_pair_has_its_exact_mean_and_no_interval(four_models):
    rep, per, _ = four_models
    pairs = {(p["model"], p["against"], p["t_full"]): p for p in report.pairings(rep.current)}
    own = pairs["biased+ES1.02", "biased", 50]
    assert own["mean"] == pytest.approx(float(np.mean(per["biased+ES1.02"][50] - per["biased"][50])), rel=1e-9)
    assert math.isnan(own["low"]) and math.isnan(own["high"])
    first = pairs["biased+ES1.02", "plain", 50]  # the harness's own column: with its interval
    assert not math.isnan(first["low"])
    text = report.table(rep.current, "delta")
    assert "[n/a]" in text and "per-image values of this pair were not given" in text


def test_the_plot_shows_the_paired_differences_with_their_intervals(four_models, tmp_path):
    rep, per, stored = four_models
    fig = report.plot(rep.current, "delta", tmp_path / "eb.png", stored)
    top, bottom = fig.axes
    assert set(plots.lines(top)) == {"plain", "plain+ES1.02", "biased", "biased+ES1.02"}
    assert not top.collections  # no overlapping bands over the curves
    shown = plots.lines(bottom)
    t, mean = shown["biased+ES1.02 - biased"]
    assert t == [10.0, 50.0]
    assert mean == pytest.approx([_paired(per["biased+ES1.02"][s], per["biased"][s])[0] for s in (10, 50)], rel=1e-12)
    bars = [c for c in bottom.collections if c.get_segments()]
    spans = sorted(round(float(seg[1][1] - seg[0][1]), 12) for c in bars for seg in c.get_segments())
    expected = sorted(round(float(hi - lo), 12) for m, b in (("plain+ES1.02", "plain"), ("biased", "plain"),
                                                               ("biased+ES1.02", "biased"), ("biased+ES1.02", "plain"))
                      for _, lo, hi in (_paired(per[m][s], per[b][s]) for s in (10, 50)))
    assert spans == pytest.approx(expected, rel=1e-9)


def test_a_time_shift_row_at_or_below_the_cutoff_says_no_shift_happens(tmp_path):
    settings = ex.Settings(modes=("delta",), t_values=(20, 50), batch=5)
    plain, biased = ex.ModelSpec("plain", _model(0.0)), ex.ModelSpec("biased", _model(0.3))
    ts = Remedies(time_shift=TimeShift(window=20, cutoff=25))
    specs = [plain, biased, _with(biased, ts, settings)]
    rep = _run(tmp_path, specs, settings, _x0())
    stored = harness.read_per_image(tmp_path / "eb.csv")
    pairs = {(p["against"], p["t_full"]): p for p in report.pairings(rep.current, stored)
             if p["model"] == "biased+TS20/25"}
    low = pairs["biased", 20]
    assert low["mean"] == 0.0 and low["low"] == low["high"] == 0.0
    assert low["no_shift"] == ("no shift: the chain starts at t = 20 (training timestep 19), at or below the "
                               "cutoff t_c = 25")
    assert pairs["biased", 50]["no_shift"] is None and pairs["biased", 50]["mean"] != 0.0
    assert pairs["plain", 20]["no_shift"] is None  # against the first model: the biased model's own difference
    text = report.table(rep.current, "delta", stored)
    assert "+0.00e+00 [+0.00e+00, +0.00e+00]" not in text
    assert "no shift *" in text and "* no shift: the chain starts at t = 20" in text
    assert "(biased+TS20/25 at t = 20 of T = 50)" in text


def test_names_of_remedy_variants():
    models = ["adm", "adm-ip", "adm-ip+ES1.005", "adm-ip+ES1.005+TS80/300"]
    assert report.base_model("adm-ip+ES1.005", models) == "adm-ip"
    assert report.base_model("adm-ip+ES1.005+TS80/300", models) == "adm-ip+ES1.005"
    assert report.base_model("adm-ip", models) is None
    assert report.time_shift_of("adm-ip+TS80/300ref") == (80, 300) and report.time_shift_of("adm+ES1.01") is None
