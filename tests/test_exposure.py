"""Exposure-bias harness (Ning et al. 2023, Sec. 4, 5.3, App. A.1, A.5) against exact denoisers."""

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image
from samplerkit.adapters.analytic import FiniteSetDenoiser, GaussianDenoiser

import samplerkit as sk
from samplerkit import diffusion, plots
from samplerkit import exposure as ex
from samplerkit.builtin import DEFAULT_MODEL
from samplerkit.cli import main
from samplerkit.data import to_uint8
from samplerkit.exposure import harness

REF = ex.reference_alpha_bar("linear:1000")
REF100 = ex.reference_alpha_bar("linear:100")


def _discrete(eps_fn, T: int, resolution: int) -> sk.DiscreteEpsDenoiser:
    ab = torch.as_tensor(diffusion.alpha_bar_from_betas(diffusion.linear_betas(T)))
    return sk.DiscreteEpsDenoiser(eps_fn, ab, img_channels=3, img_resolution=resolution, dtype=torch.float64)


def _exact_eps(den, ab):
    """eps_fn of the exact model: eps = (x - D(x; sigma)) / sigma with x = x_t / sqrt(abar)."""

    def eps_fn(x_t, t, labels=None):
        a = ab[t].reshape(-1, 1, 1, 1).to(x_t)
        sigma = ((1 - a) / a).sqrt()
        x = x_t / a.sqrt()
        return (x - den(x, sigma.flatten())) / sigma

    return eps_fn


def _single_image_models():
    y = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    continuous = FiniteSetDenoiser(y)
    discrete = _discrete(_exact_eps(continuous, REF100), 100, 8)
    return y, {"continuous": continuous, "discrete": discrete}


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_exact_single_image_denoiser_has_zero_delta_for_every_t(kind):
    y, models = _single_image_models()
    settings = ex.Settings(modes=("delta",), t_values=(1, 10, 60, 100), reference="linear:100", batch=4)
    report = ex.run([ex.ModelSpec(kind, models[kind])], y.repeat(4, 1, 1, 1), None, settings, log=lambda s: None,
                    show_progress=False)
    deltas = {r["t"]: r["delta_mean"] for r in report.current}
    assert set(deltas) == {1, 10, 60, 100}
    assert max(deltas.values()) < 1e-9


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_exact_single_image_denoiser_has_zero_nu(kind):
    y, models = _single_image_models()
    settings = ex.Settings(modes=("nu",), stride=10, reference="linear:100", batch=8)
    report = ex.run([ex.ModelSpec(kind, models[kind])], y.repeat(8, 1, 1, 1), None, settings, log=lambda s: None,
                    show_progress=False)
    assert len(report.current) == 10
    assert max(r["nu"] for r in report.current) < 1e-9


def test_delta_grows_with_t_and_with_the_eps_error():
    """Tab. 1 / Tab. 6 shape: a constant bias b u added to the exact eps of an image set makes
    delta_t grow with t, and grow less for the smaller bias. The images lie on a line along u,
    so the accumulated drift b u (sigma_t - sigma) carries the chain to other images."""
    g = torch.Generator().manual_seed(0)
    u = (torch.randint(0, 2, (1, 3, 4, 4), generator=g) * 2 - 1).to(torch.float64)
    images = torch.stack([(j - 3.5) * 1.9 * u[0] / math.sqrt(48) for j in range(8)])
    ideal = FiniteSetDenoiser(images)
    ab = torch.as_tensor(diffusion.alpha_bar_from_betas(diffusion.linear_betas(100)))

    def biased(b):
        exact = _exact_eps(ideal, ab)
        return _discrete(lambda x_t, t, labels=None: exact(x_t, t) + b * u, 100, 4)

    specs = [ex.ModelSpec("small-error", biased(0.05)), ex.ModelSpec("large-error", biased(0.2))]
    settings = ex.Settings(modes=("delta",), t_values=(10, 20, 50, 70), batch=16)
    report = ex.run(specs, images[2:6].repeat(4, 1, 1, 1), None, settings, log=lambda s: None, show_progress=False)
    delta = {(r["model"], r["t"]): r["delta_mean"] for r in report.current}
    for name in ("small-error", "large-error"):
        curve = [delta[name, t] for t in (10, 20, 50, 70)]
        assert all(a < b for a, b in zip(curve, curve[1:], strict=False)), (name, curve)
    assert all(delta["small-error", t] < delta["large-error", t] for t in (10, 20, 50, 70))


def _some_eps_net(T=1000):
    return _discrete(lambda x_t, t, labels=None: torch.tanh(x_t) * 0.7 + 1e-3 * t.reshape(-1, 1, 1, 1), T, 4)


def _alg4_line6(net, x, t):
    """x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps(x_t, t)), t 1-based."""
    abar = net.training_alpha_bar()
    alpha = abar[t - 1] / (abar[t - 2] if t > 1 else 1.0)
    eps = net.eps_fn(x, torch.full((x.shape[0],), t - 1), None)
    return (x - (1 - alpha) / (1 - abar[t - 1]).sqrt() * eps) / alpha.sqrt()


@pytest.mark.parametrize("t", [1, 2, 500, 1000])
def test_one_chain_step_is_alg4_line6(t):
    net = _some_eps_net()
    x = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    chain = diffusion.Chain.from_alpha_bar(net.training_alpha_bar())
    step = ex.ddpm_mean_step(net, x, t - 1, chain, clip_denoised=False)
    assert torch.allclose(step, _alg4_line6(net, x, t), rtol=1e-10, atol=1e-10)


def test_chain_of_five_steps_iterates_alg4_line6():
    net = _some_eps_net()
    x = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = x
    for t in range(5, 0, -1):
        expected = _alg4_line6(net, expected, t)
    chain = ex.ddpm_mean_chain(net, x, 5, net.training_alpha_bar(), clip_denoised=False)
    assert torch.allclose(chain, expected, rtol=1e-10, atol=1e-10)


def _gaussian_models(mean=0.1, std=0.5):
    gauss = GaussianDenoiser(mean, std, img_channels=3, img_resolution=8)
    discrete = _discrete(lambda x_t, t, labels=None: gauss.eps(x_t, REF[t]), 1000, 8)
    return gauss, {"continuous": gauss, "discrete": discrete}


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_nu_of_the_exact_gaussian_model_is_the_posterior_std(kind):
    """y ~ N(mu, s^2), x = y + sigma n: e = E[y | x] - y ~ N(0, s^2 sigma^2 / (s^2 + sigma^2))."""
    mu, s = 0.1, 0.5
    _, models = _gaussian_models(mu, s)
    x0 = mu + s * torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    settings = ex.Settings(modes=("nu",), batch=64, clip_denoised=False)  # the closed form is unclipped
    for t in (20, 200, 500, 900):
        stats, _ = ex.measure(ex.ModelSpec(kind, models[kind]), "nu", t, x0, None, settings)
        sigma2 = float((1 - REF[t - 1]) / REF[t - 1])
        exact = math.sqrt(s**2 * sigma2 / (s**2 + sigma2))
        # 12288 values: relative standard error of a std estimate 1/sqrt(2 * 12288) = 0.64 %
        assert stats["nu"] == pytest.approx(exact, rel=0.03)


def test_shapiro_wilk_rejects_about_five_percent_of_exactly_gaussian_errors():
    """App. A.5 on the Gaussian test bed, where e_t is exactly normal: with 3 t values x 768
    independent pixels = 2304 tests at alpha = 0.05 the rejection rate has binomial standard
    deviation sqrt(0.05 * 0.95 / 2304) = 0.0045; the tolerance is 0.02 (4.4 sigma)."""
    gauss = GaussianDenoiser(0.1, 0.5, img_channels=3, img_resolution=16)
    settings = ex.Settings(modes=("normality",), batch=50, clip_denoised=False)
    rejected = tests = 0
    for t in (100, 400, 800):
        x0 = 0.1 + 0.5 * torch.randn(50, 3, 16, 16, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        stats, _ = ex.measure(ex.ModelSpec("gauss", gauss), "normality", t, x0, None, settings)
        rejected += stats["sw_reject_rate"] * stats["sw_tests"]
        tests += stats["sw_tests"]
    assert tests == 2304
    assert abs(rejected / tests - 0.05) < 0.02


def test_shapiro_wilk_rejects_uniform_errors_mostly():
    errors = torch.rand(50, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rejected, tests = ex.shapiro_rejections(errors, 50, 0.05, np.random.default_rng(0))
    assert rejected / tests > 0.5


def test_fid_of_an_exact_ideal_denoiser_from_small_t_is_zero():
    """From x_t at t = 3 the ideal denoiser of the x0 set returns every x0 exactly, so the x0_hat
    set equals the real set and its FID (here on 4 pixel features) is 0."""
    y, _ = _single_image_models()
    x0 = (y.repeat(6, 1, 1, 1) + 0.1 * torch.arange(6, dtype=torch.float64).reshape(-1, 1, 1, 1)).clamp(-1, 1)

    def features(u8):
        return u8.reshape(len(u8), -1)[:, :4].astype(np.float64)

    settings = ex.Settings(modes=("fid",), t_values=(3,), batch=6)
    real = ex.feature_stats(features(to_uint8(x0.float())))
    stats, _ = ex.measure(ex.ModelSpec("m", FiniteSetDenoiser(x0)), "fid", 3, x0, None, settings,
                          features=features, real_features=real)
    assert stats["fid"] == pytest.approx(0.0, abs=1e-6)


def test_rows_already_in_the_csv_are_not_recomputed(tmp_path, monkeypatch):
    y, models = _single_image_models()
    spec = ex.ModelSpec("one", models["continuous"])
    settings = ex.Settings(modes=("delta",), t_values=(2, 5), batch=2)
    csv_path = tmp_path / "eb.csv"
    ex.run([spec], y.repeat(2, 1, 1, 1), None, settings, csv_path=csv_path, log=lambda s: None, show_progress=False)
    first = csv_path.read_text()

    def fail(*args, **kwargs):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(harness, "measure", fail)
    report = ex.run([spec], y.repeat(2, 1, 1, 1), None, settings, csv_path=csv_path, log=lambda s: None,
                    show_progress=False)
    assert csv_path.read_text() == first
    assert [int(r["t"]) for r in report.current] == [2, 5]


# ---------------------------------------------------------------------------------------------
# command line


def _csv_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _cli(capsys, *args):
    try:
        main(["exposure-bias", "--quiet", *args])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr()


def _one_line_error(code, out) -> str:
    assert code != 0
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    return lines[0]


def test_cli_rejects_t_beyond_the_chain(capsys):
    line = _one_line_error(*_cli(capsys, "--t", "100,2000", "--num-images", "2"))
    assert "t=2000" in line


def test_cli_rejects_wrong_image_size_without_resizing(tmp_path, capsys):
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    line = _one_line_error(*_cli(capsys, "--data", str(tmp_path), "--no-resize", "--t", "2", "--num-images", "2"))
    assert "16x16" in line and "32x32" in line


def test_cli_rejects_an_empty_dataset(tmp_path, capsys):
    line = _one_line_error(*_cli(capsys, "--data", str(tmp_path), "--t", "2", "--num-images", "2"))
    assert "no images" in line


def test_cli_writes_csv_plot_and_pairs(tmp_path, capsys):
    code, out = _cli(capsys, "--data", "builtin:shapes32?n=4", "--t", "2,4", "--num-images", "4",
                     "--csv", str(tmp_path / "eb.csv"), "--plot", str(tmp_path / "eb.png"),
                     "--pairs", str(tmp_path / "pairs"))
    assert code == 0, out.err
    rows = _csv_rows(tmp_path / "eb.csv")
    assert list(rows[0])[: len(ex.CSV_COLUMNS)] == list(ex.CSV_COLUMNS)
    assert [(r["model"], r["mode"], r["t"], r["n"], r["nfe"], r["T"], r["t_full"], r["T_full"]) for r in rows] == [
        (DEFAULT_MODEL, "delta", "2", "4", "8", "1000", "2", "1000"),
        (DEFAULT_MODEL, "delta", "4", "4", "16", "1000", "4", "1000")]
    assert all("clip=1" in r["settings"].split(";") for r in rows)  # clipping is the default, and recorded
    assert all(0 <= float(r["delta_ci_low"]) <= float(r["delta_mean"]) <= float(r["delta_ci_high"]) <= 2
               for r in rows)
    with Image.open(tmp_path / "eb.png") as im:
        assert im.size == (720, 480)  # 6 x 4 inches at 120 dpi
    assert sorted(p.name for p in (tmp_path / "pairs").iterdir()) == [f"{DEFAULT_MODEL}-delta-t2.png",
                                                                      f"{DEFAULT_MODEL}-delta-t4.png"]
    with Image.open(tmp_path / "pairs" / f"{DEFAULT_MODEL}-delta-t2.png") as im:
        assert im.height == 2 * 32 + 3 * 2
        assert im.info["Description"].startswith("top row: x0 (real); bottom row: x0_hat")


def test_cli_puts_the_first_modes_plot_at_the_plot_path(tmp_path, capsys):
    code, out = _cli(capsys, "--model", "shapes32-ideal", "--data", "builtin:shapes32?n=4", "--num-images", "4",
                     "--mode", "nu,delta", "--t", "2", "--stride", "500", "--plot", str(tmp_path / "nu.png"))
    assert code == 0, out.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nu-delta.png", "nu.png"]


def test_clipped_prediction_error_clips_x0_hat_before_subtracting():
    """The nu/normality modes clip by default: e_t = clip(x0_hat, -1, 1) - x0, same x_t."""
    net = _some_eps_net()
    x0 = torch.rand(4, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    noise = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ab = net.training_alpha_bar()
    t = ab.numel()  # abar_T is tiny: the unclipped x0_hat leaves [-1, 1] by far
    raw = ex.prediction_error(net, x0, t, ab, noise, clip_denoised=False)
    clipped = ex.prediction_error(net, x0, t, ab, noise)
    assert (raw + x0).abs().max() > 2
    assert torch.equal(clipped, (raw + x0).clamp(-1, 1) - x0)
    assert clipped.abs().max() <= 2


def test_cli_help_states_the_clipping_default(capsys):
    code, out = _cli(capsys, "--help")
    assert code == 0
    text = " ".join(out.out.split())
    assert "--clip / --no-clip" in text and "[default: clip]" in text


# ---------------------------------------------------------------------------------------------
# Ning et al. 2023 as its authors measure: clipped x0_hat, full chains, paired differences


def _blowup_net():
    """An eps-model whose eps is off by 0.3 everywhere: at t = T of the linear schedule the
    unclipped x0_hat = (x_T - sqrt(1 - abar_T) eps_hat) / sqrt(abar_T) is off by 0.3 sigma_T ~ 47."""
    return _discrete(lambda x_t, t, labels=None: torch.zeros_like(x_t) + 0.3, 1000, 4)


def test_delta_and_nu_clip_x0_hat_by_default_so_delta_is_at_most_two():
    x0 = torch.rand(4, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    spec = ex.ModelSpec("m", _blowup_net())
    clipped = ex.run([spec], x0, None, ex.Settings(modes=("delta", "nu"), t_values=(1000,), stride=500),
                     log=lambda s: None, show_progress=False).current
    raw = ex.run([spec], x0, None, ex.Settings(modes=("delta", "nu"), t_values=(1000,), stride=500,
                                               clip_denoised=False), log=lambda s: None, show_progress=False).current
    assert all("clip=1" in r["settings"].split(";") for r in clipped)
    assert all("clip=0" in r["settings"].split(";") for r in raw)
    delta = {r["mode"]: r for r in clipped}["delta"]["delta_mean"]
    assert 0 < delta <= 2
    assert {r["mode"]: r for r in raw}["delta"]["delta_mean"] > 10
    nu_t = {(r["clip"] if "clip" in r else None, r["t"]): r["nu"] for r in clipped if r["mode"] == "nu"}
    assert max(nu_t.values()) <= 2
    assert max(r["nu"] for r in raw if r["mode"] == "nu") > 10


def test_a_respaced_run_is_labelled_in_the_csv_the_table_and_the_plot(tmp_path):
    net = _discrete(lambda x_t, t, labels=None: torch.tanh(x_t) * 0.1, 100, 4)
    x0 = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    settings = ex.Settings(modes=("delta",), t_values=(3, 6), respacing="10")
    report = ex.run([ex.ModelSpec("m", net)], x0, None, settings, csv_path=tmp_path / "eb.csv", log=lambda s: None,
                    show_progress=False)
    levels = sk.schedules.respace(100, "10")  # 0, 11, 22, ..., 99
    rows = _csv_rows(tmp_path / "eb.csv")
    assert [(r["t"], r["T"], r["t_full"], r["T_full"]) for r in rows] == [
        ("3", "10", str(int(levels[2]) + 1), "100"), ("6", "10", str(int(levels[5]) + 1), "100")]
    assert ex.t_label(rows[1]) == f"t = {int(levels[5]) + 1} of T = 100 via 6 respaced steps"
    assert ex.t_label(rows[1]) in ex.table(report.current, "delta")
    fig = ex.plot(report.current, "delta", tmp_path / "eb.png")
    ax = fig.axes[0]
    assert "respaced chain of 10 steps" in ax.get_title() and ex.t_label(rows[1]) in ax.get_title()
    assert plots.lines(ax)["m"] == ([float(r["t_full"]) for r in rows], [float(r["delta_mean"]) for r in rows])


def test_full_chain_rows_are_labelled_plainly():
    row = {"mode": "delta", "t": "600", "T": "1000", "t_full": "600", "T_full": "1000"}
    assert ex.t_label(row) == "t = 600 of T = 1000"
    assert ex.Settings().respacing is None


def _two_models():
    """Two eps-models on the same T = 50 chain, one exact for a Gaussian data set and one biased."""
    gauss = GaussianDenoiser(0.0, 0.5, img_channels=3, img_resolution=4)
    ab = torch.as_tensor(diffusion.alpha_bar_from_betas(diffusion.linear_betas(50)))
    exact = _discrete(lambda x_t, t, labels=None: gauss.eps(x_t, ab[t]), 50, 4)
    biased = _discrete(lambda x_t, t, labels=None: gauss.eps(x_t, ab[t]) + 0.05, 50, 4)
    x0 = (0.5 * torch.randn(12, 3, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)).clamp(-1, 1)
    return [ex.ModelSpec("exact", exact), ex.ModelSpec("biased", biased)], x0


def test_several_models_get_the_paired_difference_of_per_image_delta(tmp_path):
    """Same x0, same noise: d_i = delta_i(biased) - delta_i(exact); mean and the paired 95 % t
    interval of d go into the biased model's rows, and survive a resumed run."""
    from scipy import stats

    specs, x0 = _two_models()
    settings = ex.Settings(modes=("delta",), t_values=(10, 50), batch=5)
    report = ex.run(specs, x0, None, settings, csv_path=tmp_path / "eb.csv", log=lambda s: None, show_progress=False)
    rows = {(r["model"], r["t"]): r for r in _csv_rows(tmp_path / "eb.csv")}
    for t in (10, 50):
        a = ex.measure(specs[0], "delta", t, x0, None, settings)[1]["per_image"]
        b = ex.measure(specs[1], "delta", t, x0, None, settings)[1]["per_image"]
        d = b - a
        half = stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
        row = rows["biased", str(t)]
        assert row["baseline"] == "exact" and rows["exact", str(t)]["diff_mean"] == ""
        assert float(row["diff_mean"]) == pytest.approx(d.mean(), rel=1e-12)
        assert (float(row["diff_ci_low"]), float(row["diff_ci_high"])) == pytest.approx(
            (d.mean() - half, d.mean() + half), rel=1e-12)
        assert float(row["diff_mean"]) == pytest.approx(float(row["delta_mean"]) -
                                                        float(rows["exact", str(t)]["delta_mean"]), rel=1e-9)
    text = ex.table(report.current, "delta")
    assert "biased - exact" in text and "paired" in text
    first = (tmp_path / "eb.csv").read_text()
    again = ex.run(specs, x0, None, settings, csv_path=tmp_path / "eb.csv", log=lambda s: None, show_progress=False)
    assert (tmp_path / "eb.csv").read_text() == first
    assert all(r["diff_mean"] != "" for r in again.current if r["model"] == "biased")


def test_nu_summary_reports_the_mean_with_and_without_the_endpoints():
    s = ex.nu_summary([30, 10, 20, 40], [0.3, 0.1, 0.2, 0.4])
    assert (s["t_first"], s["t_last"], s["nu_first"], s["nu_last"]) == (10, 40, 0.1, 0.4)
    assert (s["nu_mean"], s["nu_mean_interior"]) == pytest.approx((0.25, 0.25))
    assert not s["dominated"]


def test_no_gamma_range_is_printed_when_the_t_equals_T_blowup_dominates():
    """The unclipped nu_T of a cosine schedule is ~ 848 (issue: 'suggested gamma = 42.46')."""
    blown = ex.nu_summary([10, 500, 990, 1000], [0.05, 0.15, 0.2, 848.0])
    assert blown["dominated"]
    text = ex.nu_text("adm", dict(blown, clip_denoised=False))
    assert "[0," not in text and "gamma" in text and "without" in text and "eps_theta(x_t, t)" in text
    fine = ex.nu_text("adm", dict(ex.nu_summary([10, 500, 990, 1000], [0.05, 0.15, 0.2, 0.3]), clip_denoised=True))
    assert "grid in [0, E_t[nu_t]] = [0, 0.1750]" in fine
    assert not any(word in (text + fine).lower() for word in ("rule", "midpoint", "suggest"))


def test_plot_shows_exactly_the_csv_values(tmp_path):
    specs, x0 = _two_models()
    settings = ex.Settings(modes=("delta", "nu"), t_values=(5, 20, 50), stride=25)
    ex.run(specs, x0, None, settings, csv_path=tmp_path / "eb.csv", log=lambda s: None, show_progress=False)
    rows = _csv_rows(tmp_path / "eb.csv")
    for mode, column in (("delta", "delta_mean"), ("nu", "nu")):
        fig = ex.plot(rows, mode, tmp_path / f"{mode}.png")
        expected = {m: ([float(r["t_full"]) for r in rows if r["model"] == m and r["mode"] == mode],
                        [float(r[column]) for r in rows if r["model"] == m and r["mode"] == mode])
                    for m in ("exact", "biased")}
        assert plots.lines(fig.axes[0]) == expected
        with Image.open(tmp_path / f"{mode}.png") as im:
            assert im.size == ((720, 780) if mode == "delta" else (720, 480))  # delta: + the paired differences


def test_pair_png_labels_its_rows_and_holds_the_exact_images(tmp_path):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    x_hat = torch.rand(3, 3, 8, 8, generator=g, dtype=torch.float64) * 4 - 2  # partly outside [-1, 1]
    [path] = ex.save_pairs({("a/b.pt", "delta", 7): (x0, x_hat)}, tmp_path)
    assert path.name == "b.pt-delta-t7.png"
    with Image.open(path) as im:
        canvas = np.asarray(im.convert("RGB"))
        assert im.info["Description"].startswith("top row: x0 (real); bottom row: x0_hat")
    assert np.array_equal(canvas, ex.pair_image(x0, x_hat))
    top, bottom = to_uint8(x0.float()), to_uint8(x_hat.float().clamp(-1, 1))
    H, W, pad = 8, 8, 2
    row_h = (canvas.shape[0] - 3 * pad) // 2
    label_w = canvas.shape[1] - 3 * (W + pad) - pad
    for j in range(3):
        x = label_w + pad + j * (W + pad)
        assert np.array_equal(canvas[pad : pad + H, x : x + W], top[j])
        assert np.array_equal(canvas[2 * pad + row_h : 2 * pad + row_h + H, x : x + W], bottom[j])
    # each row's label column holds dark text pixels
    for y0 in (pad, 2 * pad + row_h):
        assert (canvas[y0 : y0 + row_h, :label_w] < 128).any()


def test_a_model_added_to_a_finished_run_is_paired_with_the_rows_already_in_the_csv(tmp_path):
    specs, x0 = _two_models()
    settings = ex.Settings(modes=("delta",), t_values=(10,), batch=6)
    ex.run(specs[:1], x0, None, settings, csv_path=tmp_path / "eb.csv", log=lambda s: None, show_progress=False)
    assert ex.per_image_path(tmp_path / "eb.csv").name == "eb.per-image.npz"
    report = ex.run(specs, x0, None, settings, csv_path=tmp_path / "eb.csv", log=lambda s: None, show_progress=False)
    a = ex.measure(specs[0], "delta", 10, x0, None, settings)[1]["per_image"]
    b = ex.measure(specs[1], "delta", 10, x0, None, settings)[1]["per_image"]
    [row] = [r for r in report.current if r["model"] == "biased"]
    assert row["baseline"] == "exact" and row["diff_mean"] == pytest.approx((b - a).mean(), rel=1e-12)


def test_cli_rows_record_the_speed_policy_of_their_network(tmp_path, capsys):
    args = ("--model", "shapes32-ideal", "--data", "builtin:shapes32?n=4", "--num-images", "4", "--t", "2",
            "--eps-scaler", "1.01")
    code, out = _cli(capsys, *args, "--speed", "exact", "--csv", str(tmp_path / "exact.csv"))
    assert code == 0, out.err
    code, out = _cli(capsys, *args, "--speed", "attention=sdpa", "--csv", str(tmp_path / "sdpa.csv"))
    assert code == 0, out.err
    exact, sdpa = _csv_rows(tmp_path / "exact.csv"), _csv_rows(tmp_path / "sdpa.csv")
    assert [r["model"] for r in exact] == ["shapes32-ideal", "shapes32-ideal+ES1.01"]  # the variant keeps it too
    assert {r["speed"] for r in exact} == {"exact"}
    assert all(r["speed"] for r in sdpa) and {r["speed"] for r in sdpa} != {"exact"}
