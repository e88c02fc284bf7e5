"""``nll``: the variational bound of a respaced chain (improved-diffusion's ``image_nll.py`` with
``--timestep_respacing``), its labels, the table's half-width column, per-batch timing columns, and
the run as one settings object."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from test_adapter_adm import FIXTURES
from test_cli_sample import _cli
from test_likelihood import UPSTREAM, _upstream_model

import samplerkit as sk
from samplerkit.denoisers import DiscreteEpsDenoiser
from samplerkit.diffusion import alpha_bar_from_betas, linear_betas
from samplerkit.errors import SamplerkitError
from samplerkit.likelihood import run
from samplerkit.schedules import respace

T = 40
ALPHA_BAR = torch.as_tensor(alpha_bar_from_betas(linear_betas(T)), dtype=torch.float64)


def _point_model(point: torch.Tensor) -> DiscreteEpsDenoiser:
    """The exact eps-model of data that is the one image ``point``: eps = (x_t - sqrt(abar_t) x*) / sqrt(1 - abar_t)."""

    def eps_fn(x_t, t, labels=None):
        ab = ALPHA_BAR[t].reshape(-1, 1, 1, 1)
        return (x_t - ab.sqrt() * point) / (1 - ab).sqrt()

    return DiscreteEpsDenoiser(eps_fn, ALPHA_BAR, img_channels=point.shape[1], img_resolution=point.shape[-1],
                               dtype=torch.float64)


def _phi(z):  # the tanh approximation of the normal CDF the DDPM decoder uses
    return 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))


@pytest.mark.parametrize("respacing", [None, "10", "ddim5", "3,2"])
def test_respaced_bound_of_a_one_point_model_equals_its_closed_form(respacing):
    """D(x) = x* exactly: every KL term is 0, the decoder is N(x*, beta~^S_1) on x*'s bin (the clipped
    posterior variance of the respaced chain: beta^S_1 (1 - abar_{S_0}) / (1 - abar_{S_1}),
    beta^S_1 = 1 - abar_{S_1} / abar_{S_0}) and the prior is
    KL(N(sqrt(abar_{S_K-1}) x*, 1 - abar_{S_K-1}) || N(0, I))."""
    point = (torch.arange(12, dtype=torch.float64).reshape(1, 3, 2, 2) * 20 + 10) / 127.5 - 1
    point[0, 0, 0, 0] = -1.0  # an edge bin
    steps = torch.arange(T) if respacing is None else respace(T, respacing)
    r = sk.likelihood.vlb_terms(_point_model(point), point, variance="fixedsmall", clip_denoised=False,
                                timesteps=None if respacing is None else steps)
    ab = ALPHA_BAR[steps]
    beta1 = 1 - ab[1] / ab[0]
    std = (beta1 * (1 - ab[0]) / (1 - ab[1])).sqrt()
    h = 1 / 255
    bins = torch.where(point < -0.999, _phi(h / std), _phi(h / std) - _phi(-h / std))
    decoder = -torch.log(bins).mean() / math.log(2)
    a = ab[-1]
    prior = (0.5 * (-torch.log(1 - a) - 1 + (1 - a) + a * point**2)).mean() / math.log(2)
    assert r.timesteps.tolist() == steps.tolist() and r.terms.shape == (1, len(steps))
    assert float(r.terms[0, 0]) == pytest.approx(float(decoder), rel=1e-9)
    assert r.terms[0, 1:].abs().max() < 1e-9
    assert float(r.prior[0]) == pytest.approx(float(prior), rel=1e-12)
    assert float(r.bpd[0]) == pytest.approx(float(decoder + prior), rel=1e-9)


def _toy_eps(x_t, t, labels=None, *, table=None):
    """A fixed nonlinear eps-network with learned variance: (tanh(c_t x), sin(x) / 2), c_t from the timestep."""
    c = (0.3 + (t if table is None else table[t]).to(torch.float64) / T).reshape(-1, 1, 1, 1)
    return torch.cat([torch.tanh(c * x_t), torch.sin(x_t + c) / 2], dim=1)


@pytest.mark.parametrize("respacing", ["10", "ddim8"])
def test_respaced_bound_equals_the_full_bound_of_the_k_step_model(respacing):
    """The bound on the kept steps S of a T-step model = the full bound of the K-step model with
    abar_{S_k} whose network at k is the T-step network at S_k (same noise draws): the respaced
    chain's betas, learned-variance interpolation, decoder and prior, computed a second way."""
    steps = respace(T, respacing)
    x0 = torch.randint(0, 256, (2, 3, 4, 4)).double() / 127.5 - 1
    full = DiscreteEpsDenoiser(_toy_eps, ALPHA_BAR, learned_variance=True, img_resolution=4, dtype=torch.float64)
    small = DiscreteEpsDenoiser(lambda x, t, lab=None: _toy_eps(x, t, table=steps), ALPHA_BAR[steps],
                                learned_variance=True, img_resolution=4, dtype=torch.float64)
    draws = [torch.Generator().manual_seed(3) for _ in range(2)]
    a = sk.likelihood.vlb_terms(full, x0, variance="learned", timesteps=steps,
                                randn_like=lambda x: torch.randn(x.shape, generator=draws[0], dtype=x.dtype))
    b = sk.likelihood.vlb_terms(small, x0, variance="learned",
                                randn_like=lambda x: torch.randn(x.shape, generator=draws[1], dtype=x.dtype))
    torch.testing.assert_close(a.terms, b.terms, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.bpd, b.bpd, rtol=1e-12, atol=0)
    full_bound = sk.likelihood.vlb_terms(full, x0, variance="learned")
    assert full_bound.terms.shape[1] == T and not torch.allclose(full_bound.bpd, a.bpd)


RESPACED = torch.load(FIXTURES / "vlb_respaced_upstream_outputs.pt", weights_only=True)


@pytest.mark.parametrize("name", ["learned", "fixedlarge"])
def test_respaced_bound_equals_improved_diffusion_with_timestep_respacing(tmp_path, name):
    """``tests/fixtures/vlb_respaced_upstream_outputs.pt``: improved-diffusion's ``calc_bpd_loop`` of
    a ``SpacedDiffusion`` (``create_gaussian_diffusion(..., timestep_respacing=...)``, as ``image_nll.py``
    builds it from ``--timestep_respacing``) on the networks, images and seeds of
    ``vlb_upstream_outputs.pt`` (its docstring in test_likelihood.py): 'learned' on '10', 'fixedlarge'
    on 'ddim8'; run with float64 schedule arithmetic (terms compared) and as released (totals)."""
    case, ref = RESPACED["cases"][name], UPSTREAM[name]
    net, _ = _upstream_model(tmp_path, ref, T)
    steps = respace(T, case["respacing"])
    assert steps.tolist() == case["timestep_map"].tolist()
    x0 = UPSTREAM["images"].permute(0, 3, 1, 2).float().contiguous() / 127.5 - 1
    g = torch.Generator().manual_seed(ref["seed"])
    variance = "learned" if ref["learn_sigma"] else "fixedlarge"
    r = sk.likelihood.vlb_terms(net, x0, clip_denoised=ref["clip_denoised"], variance=variance, timesteps=steps,
                                randn_like=lambda x: torch.randn(x.shape, generator=g, dtype=x.dtype))
    torch.testing.assert_close(r.terms, case["vb"].flip(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r.prior, case["prior_bpd"], rtol=1e-5, atol=1e-10)
    torch.testing.assert_close(r.bpd, case["total_bpd"], rtol=1e-6, atol=0)
    assert (r.bpd - case["total_bpd_float32"]).abs().max() < 1e-2


@pytest.mark.parametrize("bad", [[0, 0, 5], [3, 2], [0, T]])
def test_respaced_timesteps_are_checked(bad):
    net = DiscreteEpsDenoiser(_toy_eps, ALPHA_BAR, learned_variance=True, img_resolution=4, dtype=torch.float64)
    with pytest.raises(SamplerkitError, match="strictly increasing training timesteps"):
        sk.likelihood.vlb_terms(net, torch.zeros(1, 3, 4, 4), timesteps=bad)


# ---------------------------------------------------------------------------------------------
# the nll command and its library entry point


def _model_file(tmp_path):
    _, path = _upstream_model(tmp_path, UPSTREAM["fixedsmall"], T)
    return ["--model", str(path), "--family", "iddpm", "--flag", "image_size=32", "--flag", "num_channels=32",
            "--flag", "num_res_blocks=1", "--flag", "attention_resolutions=16", "--flag", f"diffusion_steps={T}",
            "--flag", "noise_schedule=cosine"]


def test_nll_respaced_rows_are_labelled_and_hold_the_kept_terms(tmp_path):
    model = _model_file(tmp_path)
    out_csv = tmp_path / "r.csv"
    code, out, err = _cli("nll", *model, "--respacing", "10", "--num-images", "2", "--csv", str(out_csv), "--quiet")
    assert code == 0, err
    rows = run.results_csv(out_csv).read()
    steps = respace(T, "10").tolist()
    assert json.loads(rows[0]["settings"])["respacing"] == "10" and rows[0]["nfe"] == "10"
    assert [k for k in rows[0] if k.startswith("L_")] == [f"L_{t}" for t in steps]
    for r in rows:
        assert float(r["bpd"]) == pytest.approx(float(r["prior_bpd"]) + sum(float(r[f"L_{t}"]) for t in steps))
    assert "vlb@10" in out and "respaced chain '10'" in out
    # a full-chain run is another experiment: it refuses to mix into this file
    code, _, err = _cli("nll", *model, "--num-images", "2", "--csv", str(out_csv), "--quiet")
    assert code == 2 and "another experiment" in err and "--csv" in err


def test_nll_table_names_the_half_width_and_pairs_only_several_models():
    rows = {"a": [dict(image=i, bpd=b, prior_bpd=0.0, nfe=10, method="vlb", settings="{}")
                  for i, b in enumerate([1.0, 2.0, 3.0])]}
    text = run.table(run.summary(rows))
    assert "95% CI" not in text and "+-95%" in text and "paired" not in text
    rows["b"] = [dict(r, bpd=r["bpd"] + 0.5) for r in rows["a"]]
    text = run.table(run.summary(rows))
    assert "paired diff vs a (+-95%)" in text and "+0.5000 +- 0.0000" in text


def test_nll_timing_columns_are_per_batch_and_old_files_resume(tmp_path):
    out_csv = tmp_path / "ode.csv"
    args = ["nll", "--model", "shapes32-ideal", "--method", "ode", "--sigma-min", "0.5", "--sigma-max", "20",
            "--atol", "1e-2", "--rtol", "1e-2", "--csv", str(out_csv), "--quiet", "--batch", "2"]
    code, _, err = _cli(*args, "--num-images", "2")
    assert code == 0, err
    rows = run.results_csv(out_csv).read()
    assert "seconds" not in rows[0] and [r["batch_images"] for r in rows] == ["2", "2"]
    assert rows[0]["batch_seconds"] == rows[1]["batch_seconds"] and float(rows[0]["batch_seconds"]) > 0
    # the file as the code before these columns wrote it: 'seconds' = batch seconds / images
    with open(out_csv, newline="") as f:
        old = list(csv.DictReader(f))
    columns = [c for c in old[0] if c not in ("batch_seconds", "batch_images")] + ["seconds"]
    with open(out_csv, "w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerows({c: r.get(c, "0.1") for c in columns} for r in old)
    code, _, err = _cli(*args[:-3], "--batch", "2", "--num-images", "3")
    assert code == 0, err
    assert "1 of 3 images to run (2 already in" in err
    rows = run.results_csv(out_csv).read()
    assert [r["seconds"] for r in rows] == ["0.1", "0.1", ""] and rows[2]["batch_images"] == "1"
    assert [r["bpd"] for r in rows[:2]] == [r["bpd"] for r in old]


@pytest.mark.parametrize("kwargs,needle", [(dict(num_images=0), "num_images must be >= 1"),
                                           (dict(batch=0), "batch must be >= 1"),
                                           (dict(measure=run.Settings(method="ode", respacing="10")), "respacing"),
                                           (dict(measure=run.Settings(variance="wide")), "unknown variance")])
def test_nll_settings_are_checked_when_made(tmp_path, kwargs, needle):
    with pytest.raises(SamplerkitError, match=needle):
        run.NllSettings(tmp_path / "x.csv", **kwargs)


def test_nll_command_names_flags_for_library_errors(tmp_path):
    code, _, err = _cli("nll", "--model", "shapes32-ideal", "--method", "ode", "--respacing", "10",
                        "--csv", str(tmp_path / "x.csv"), "--quiet")
    assert code == 2 and err.count("\n") == 1 and "--respacing" in err and "--method vlb" in err, err
    code, _, err = _cli("nll", *_model_file(tmp_path), "--respacing", "50", "--csv", str(tmp_path / "x.csv"))
    assert code == 2 and err.count("\n") == 1 and "--respacing '50'" in err, err
    assert not (tmp_path / "x.csv").exists()
    code, _, err = _cli("nll", "--num-images", "0", "--csv", str(tmp_path / "x.csv"), "--quiet")
    assert code == 2 and "--num-images must be >= 1" in err, err
    code, _, err = _cli("nll", "--batch", "0", "--csv", str(tmp_path / "x.csv"), "--quiet")
    assert code == 2 and "--batch must be >= 1" in err, err
    code, _, err = _cli("nll", "--method", "ode", "--probes", "0", "--csv", str(tmp_path / "x.csv"), "--quiet")
    assert code == 2 and "--probes must be >= 1 and --atol, --rtol > 0" in err, err
    code, _, err = _cli("nll", "--sigma-min", "0.1", "--csv", str(tmp_path / "x.csv"), "--quiet")
    assert code == 2 and "--sigma-min and --sigma-max set the ODE's interval" in err, err


def test_evaluate_is_the_command_without_the_parsing(tmp_path):
    settings = run.NllSettings(tmp_path / "lib.csv", ("shapes32-ideal",), num_images=2, quiet=True,
                               measure=run.Settings(method="ode", atol=1e-2, rtol=1e-2, sigma_min=0.5, sigma_max=20.0))
    rows = run.evaluate(settings)["shapes32-ideal"]
    code, _, err = _cli("nll", "--model", "shapes32-ideal", "--method", "ode", "--sigma-min", "0.5", "--sigma-max",
                        "20", "--atol", "1e-2", "--rtol", "1e-2", "--num-images", "2", "--device", "cpu",
                        "--csv", str(tmp_path / "cli.csv"), "--quiet")
    assert code == 0, err
    assert [float(r["bpd"]) for r in run.results_csv(tmp_path / "cli.csv").read()] == [r["bpd"] for r in rows]
