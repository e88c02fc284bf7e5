"""Likelihood in bits/dim: the variational bound against improved-diffusion, the ODE likelihood
against closed forms and k-diffusion, the entropy bound, errors and the resumable ``nll`` command.

``tests/fixtures/vlb_upstream_outputs.pt`` holds the outputs of improved-diffusion's
``GaussianDiffusion.calc_bpd_loop`` (openai/improved-diffusion, run from its source tree, not part
of this repository) on a T = 40 chain: its ``UNetModel`` (``create_model`` with image_size 32,
num_channels 32, num_res_blocks 1, attention_resolutions "16") holding the weights
``test_adapter_adm.random_state_dict(template, seed)``, two ``builtin:shapes32`` images (stored
in the fixture), and ``torch.manual_seed(seed)`` before the loop (which draws its per-t noise with
``th.randn_like``). Three cases: learned Sigma with the cosine schedule and clipping; fixedlarge
(``sigma_small=False``) on the linear schedule without clipping; fixedsmall on the cosine schedule.
Each case was run twice: as released (float32 schedule arithmetic) and with
``_extract_into_tensor`` returning float64 and the network fed float32 x_t (the same formulas at
samplerkit's float64 precision); the second is compared term by term, the first's totals only
(its float32 decoder term loses ~1e-2 bits/dim to cancellation in cdf_plus - cdf_min).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from samplerkit.adapters import iddpm
from samplerkit.adapters.analytic import FiniteSetDenoiser, GaussianDenoiser
from test_adapter_adm import FIXTURES, random_state_dict, template_of
from test_cli_sample import _cli

import samplerkit as sk
from samplerkit.errors import SamplerkitError
from samplerkit.likelihood import BITS_OFFSET, run

UPSTREAM = torch.load(FIXTURES / "vlb_upstream_outputs.pt", weights_only=True)
NET_FLAGS = dict(image_size=32, num_channels=32, num_res_blocks=1, attention_resolutions="16")


def _upstream_model(tmp_path, case: dict, T: int):
    sd = random_state_dict(template_of(iddpm.create_unet, **NET_FLAGS, learn_sigma=case["learn_sigma"]), case["seed"])
    path = tmp_path / f"model-{case['seed']}.pt"
    torch.save(sd, path)
    return sk.load(str(path), family="iddpm", **NET_FLAGS, learn_sigma=case["learn_sigma"], diffusion_steps=T,
                   noise_schedule=case["noise_schedule"]), path


def _on_grid(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def _log_normal(x, mean, var) -> torch.Tensor:
    var = torch.as_tensor(var, dtype=torch.float64)
    return (-0.5 * (x - mean) ** 2 / var - 0.5 * torch.log(2 * math.pi * var)).flatten(1).sum(1)


# ---------------------------------------------------------------------------------------------
# the variational bound


@pytest.mark.parametrize("name", ["learned", "fixedlarge", "fixedsmall"])
def test_vlb_equals_improved_diffusion_calc_bpd_loop(tmp_path, name):
    case, T = UPSTREAM[name], UPSTREAM["T"]
    net, _ = _upstream_model(tmp_path, case, T)
    x0 = UPSTREAM["images"].permute(0, 3, 1, 2).float().contiguous() / 127.5 - 1
    g = torch.Generator().manual_seed(case["seed"])
    variance = "learned" if case["learn_sigma"] else ("fixedsmall" if case["sigma_small"] else "fixedlarge")
    r = sk.likelihood.vlb_terms(net, x0, clip_denoised=case["clip_denoised"], variance=variance,
                                randn_like=lambda x: torch.randn(x.shape, generator=g, dtype=x.dtype))
    # upstream's columns run t = T-1 .. 0; ours are indexed by t
    torch.testing.assert_close(r.terms, case["vb"].flip(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r.prior, case["prior_bpd"], rtol=1e-5, atol=1e-10)
    torch.testing.assert_close(r.bpd, case["total_bpd"], rtol=1e-6, atol=0)
    torch.testing.assert_close(r.mse, case["mse"].flip(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r.xstart_mse, case["xstart_mse"].flip(1), rtol=1e-5, atol=1e-6)
    assert (r.bpd - case["total_bpd_float32"].double()).abs().max() < 1e-2  # the released float32 code


def test_vlb_on_a_continuous_model_is_a_one_line_error():
    net = GaussianDenoiser(0.0, 0.5, img_channels=1, img_resolution=4)
    with pytest.raises(SamplerkitError, match="discrete-time model") as err:
        sk.likelihood.vlb_bpd(net, torch.zeros(1, 1, 4, 4))
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# the probability-flow ODE likelihood


@pytest.fixture(scope="module")
def gaussian():
    """N(mu, diag(s^2)) on 2 x 4 x 4 with per-pixel mean and std, and three images on the 8-bit grid."""
    mean = torch.linspace(-0.3, 0.3, 32).reshape(2, 4, 4)
    std = torch.linspace(0.1, 0.6, 32).reshape(2, 4, 4)
    net = GaussianDenoiser(mean, std, img_channels=2, img_resolution=4)
    g = torch.Generator().manual_seed(0)
    x = _on_grid(net.mean + net.std * torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64))
    return net, x


def test_ode_likelihood_of_a_gaussian_equals_its_closed_form(gaussian):
    """log p_{sigma_min}(x) = log N(x; mu, s^2 + sigma_min^2) exactly; the method's only other
    term is its N(0, sigma_max^2) prior at the transported point, so the computed value is the
    closed form plus [log N(x_T; 0, sigma_max^2) - log N(x_T; mu, s^2 + sigma_max^2)] with x_T the
    exact ODE transport. Rademacher probes are exact here (the Jacobian is diagonal)."""
    net, x = gaussian
    lo, hi = 0.002, 80.0
    r = sk.likelihood.ode_nll(net, x, sigma_min=lo, sigma_max=hi, atol=1e-7, rtol=1e-7)
    x_T = net.ode_solution(x, lo, hi)
    density = _log_normal(x, net.mean, net.std**2 + lo**2)
    prior_gap = _log_normal(x_T, 0.0, hi**2) - _log_normal(x_T, net.mean, net.std**2 + hi**2)
    torch.testing.assert_close(r.log_likelihood, density + prior_gap, rtol=0, atol=2e-5)
    torch.testing.assert_close(r.prior, _log_normal(x_T, 0.0, hi**2), rtol=0, atol=2e-5)
    assert prior_gap.abs().max() < 0.05  # the prior is what limits the method at sigma_max = 80
    D = x[0].numel()
    torch.testing.assert_close(r.bpd, -r.log_likelihood / (D * math.log(2)) + math.log2(127.5))


def test_ode_solver_error_shrinks_with_the_tolerance(gaussian):
    net, x = gaussian
    x_T = net.ode_solution(x, 0.002, 80.0)
    exact = _log_normal(x, net.mean, net.std**2 + 0.002**2) - _log_normal(x_T, net.mean, net.std**2 + 80.0**2) \
        + _log_normal(x_T, 0.0, 80.0**2)
    errors = [float((sk.likelihood.ode_nll(net, x, sigma_min=0.002, sigma_max=80.0, atol=tol, rtol=tol)
                     .log_likelihood - exact).abs().max()) for tol in (1e-3, 1e-5, 1e-7)]
    assert errors[1] < errors[0] / 30 and errors[2] < errors[1] / 30  # each 100x tighter tolerance
    assert errors[2] < 2e-5


def test_gaussian_probes_scatter_by_the_stated_variance(gaussian):
    """With Gaussian probes v, fixed along the path, the estimate of int tr(J) ds is v^T M v with
    M = diag(1/2 log((s^2 + sigma_max^2)/(s^2 + sigma_min^2))): unbiased, variance 2 ||M||_F^2 / P."""
    net, x = gaussian
    lo, hi, n, P = 0.01, 50.0, 400, 2
    xs = x[:1].expand(n, -1, -1, -1).contiguous()
    g = torch.Generator().manual_seed(3)
    v = torch.randn(P, n, 2, 4, 4, generator=g, dtype=torch.float64)
    r = sk.likelihood.ode_nll(net, xs, sigma_min=lo, sigma_max=hi, atol=1e-4, rtol=1e-4, probes=P,
                              probe="gaussian", probe_noise=v)
    exact = sk.likelihood.ode_nll(net, x[:1], sigma_min=lo, sigma_max=hi, atol=1e-4, rtol=1e-4).delta
    M = 0.5 * torch.log((net.std**2 + hi**2) / (net.std**2 + lo**2))
    predicted_std = math.sqrt(2 * float((M**2).sum()) / P)
    assert abs(float(r.delta.std()) / predicted_std - 1) < 0.15  # sd of a sample sd (n = 400): 3.5%
    assert abs(float(r.delta.mean() - exact)) < 4 * predicted_std / math.sqrt(n)


def test_bits_per_dim_of_discrete_data_is_bounded_by_its_entropy():
    """Data: 4 equally likely 8-bit images (entropy 2 bits, D = 32), the model their exact
    denoiser. With uniform dequantization bits/dim is an upper bound on the NLL of a proper
    distribution over 8-bit images, so its mean over the data is >= H / D; at sigma_min = w/sqrt(12)
    (w = 2/255, images far apart) it is H/D + 1/2 log2(2 pi e / 12) on average. The density at the
    grid point itself (no dequantization) is no such bound: there it is H/D + 1/2 log2(2 pi / 12),
    below the entropy."""
    g = torch.Generator().manual_seed(0)
    images = _on_grid(torch.rand(4, 2, 4, 4, generator=g, dtype=torch.float64) * 2 - 1)
    net = FiniteSetDenoiser(images)
    w, D, H = 2 / 255, 32, 2.0
    lo = w / math.sqrt(12)
    reps = 16
    x = images.repeat(reps, 1, 1, 1)
    deq = sk.likelihood.ode_nll(net, x, sigma_min=lo, sigma_max=100.0, atol=1e-5, rtol=1e-5, dequantize="uniform",
                                uniform_noise=torch.rand(x.shape, generator=g, dtype=torch.float64))
    mean, se = float(deq.bpd.mean()), float(deq.bpd.std()) / math.sqrt(len(x))
    assert mean >= H / D
    assert abs(mean - (H / D + 0.5 * math.log2(2 * math.pi * math.e / 12))) < 4 * se + 2e-3
    point = sk.likelihood.ode_bpd(net, x, sigma_min=lo, sigma_max=100.0, atol=1e-5, rtol=1e-5)
    mean, se = float(point.mean()), float(point.std()) / math.sqrt(len(x))  # se: Hutchinson's scatter
    assert abs(mean - (H / D + 0.5 * math.log2(2 * math.pi / 12))) < 4 * se + 2e-3
    assert mean < H / D


def test_ode_likelihood_equals_k_diffusion_log_likelihood():
    """k-diffusion's ``log_likelihood`` (torchdiffeq dopri5 on sigma) and ours (Dormand-Prince on
    log sigma, per-image steps) on the same nonlinear denoiser, images, interval and Rademacher
    probe: both solve the same ODE, so they agree to the solvers' tolerance."""
    from test_solvers_kdiffusion import kd as kd_fixture

    kd = kd_fixture.__wrapped__()
    images = torch.rand(5, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    net = FiniteSetDenoiser(images)
    g = torch.Generator().manual_seed(1)
    x = _on_grid(images[:3] + 0.2 * torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64))
    torch.manual_seed(0)
    expected, _ = kd.log_likelihood(net, x, 0.1, 10.0, atol=1e-7, rtol=1e-7)
    torch.manual_seed(0)
    probe = torch.randint_like(x, 2) * 2 - 1  # k-diffusion's draw
    r = sk.likelihood.ode_nll(net, x, sigma_min=0.1, sigma_max=10.0, atol=1e-7, rtol=1e-7, probe_noise=probe)
    torch.testing.assert_close(r.log_likelihood, expected, rtol=1e-6, atol=1e-4)
    torch.manual_seed(0)  # drawn by default from torch's generator, as k-diffusion draws it
    torch.testing.assert_close(sk.likelihood.ode_nll(net, x, sigma_min=0.1, sigma_max=10.0, atol=1e-7,
                                                     rtol=1e-7).log_likelihood, r.log_likelihood)


def test_each_image_takes_its_own_steps(gaussian):
    """Per-image step control: an image's likelihood and NFE do not depend on its batch."""
    net, x = gaussian
    v = torch.randint(0, 2, (1, *x.shape), generator=torch.Generator().manual_seed(0)).double() * 2 - 1
    batch = sk.likelihood.ode_nll(net, x, sigma_min=0.002, sigma_max=80.0, probe_noise=v)
    for b in range(len(x)):
        alone = sk.likelihood.ode_nll(net, x[b:b + 1], sigma_min=0.002, sigma_max=80.0, probe_noise=v[:, b:b + 1])
        torch.testing.assert_close(alone.log_likelihood, batch.log_likelihood[b:b + 1], rtol=1e-12, atol=1e-9)
        assert int(alone.nfe) == int(batch.nfe[b])


@pytest.mark.parametrize("bad, message", [
    (torch.full((1, 2, 4, 4), 255.0), r"in \[-1, 1\]"),
    (torch.full((1, 2, 4, 4), -1.5), r"in \[-1, 1\]"),
    (torch.full((1, 2, 4, 4), 0.3), "8-bit grid"),
])
def test_ode_on_data_off_the_8bit_range_is_a_one_line_error(gaussian, bad, message):
    net, _ = gaussian
    with pytest.raises(SamplerkitError, match=message) as err:
        sk.likelihood.ode_bpd(net, bad, sigma_min=0.002, sigma_max=80.0)
    assert "\n" not in str(err.value)


def test_ode_needs_a_finite_noise_range(gaussian):
    net, x = gaussian  # the analytic model has sigma_max = inf
    with pytest.raises(SamplerkitError, match="give sigma_min and sigma_max"):
        sk.likelihood.ode_bpd(net, x)


# ---------------------------------------------------------------------------------------------
# samplerkit nll


def test_nll_command_resumes_and_writes_per_t_terms(tmp_path):
    T = 10
    _, path = _upstream_model(tmp_path, UPSTREAM["learned"], T)
    common = ["nll", "--model", str(path), "--family", "iddpm", *[f"--flag={k}={v}" for k, v in NET_FLAGS.items()],
              "--flag", "learn_sigma=True", "--flag", f"diffusion_steps={T}", "--flag", "noise_schedule=cosine",
              "--data", "builtin:shapes32", "--method", "vlb"]
    csv, alone = tmp_path / "nll.csv", tmp_path / "alone.csv"
    code, out, err = _cli(*common, "--csv", str(csv), "--quiet", "--num-images", "3", "--batch", "2")
    assert code == 0, err
    first = run.results_csv(csv).read()
    assert [int(r["image"]) for r in first] == [0, 1, 2] and "bits/dim" in out
    for r in first:  # L_vlb = prior + sum_t L_t, with every L_t in the row
        terms = [float(r[f"L_{t}"]) for t in range(T)]
        assert float(r["bpd"]) == pytest.approx(float(r["prior_bpd"]) + sum(terms), rel=1e-12)
    alone.write_bytes(csv.read_bytes())
    code, out, err = _cli(*common, "--csv", str(csv), "--num-images", "4", "--batch", "4")  # resumes
    assert code == 0, err
    assert "1 of 4 images to run (3 already in" in err
    second = run.results_csv(csv).read()
    assert [r["bpd"] for r in second[:3]] == [r["bpd"] for r in first]
    # image 3 in a batch of its own draws the same noise (its generator is seed + 3): the same bound
    code, _, err = _cli(*common, "--csv", str(alone), "--quiet", "--num-images", "4", "--batch", "1")
    assert code == 0, err
    assert float(run.results_csv(alone).read()[3]["bpd"]) == pytest.approx(float(second[3]["bpd"]), rel=1e-6)


def test_nll_command_vlb_on_a_continuous_model_is_a_one_line_error(tmp_path):
    code, out, err = _cli("nll", "--model", "shapes32-ideal", "--method", "vlb", "--num-images", "2",
                          "--csv", str(tmp_path / "x.csv"), "--quiet")
    assert code == 2
    assert err.startswith("error: ") and "--method ode" in err and err.count("\n") == 1


def test_paired_summary_uses_the_same_images():
    rows = {"a": [dict(image=i, bpd=b, prior_bpd=0.0, nfe=10, method="vlb") for i, b in enumerate([1.0, 2.0, 3.0])],
            "b": [dict(image=str(i), bpd=b, prior_bpd=0.0, nfe=10, method="vlb")
                  for i, b in enumerate([1.1, 2.1, 3.1])]}
    lines = run.summary(rows)
    assert lines[1]["diff"] == pytest.approx(0.1) and lines[1]["diff_ci"] == pytest.approx(0.0, abs=1e-12)
    assert lines[0]["ci"] == pytest.approx(4.302652729749464 / math.sqrt(3), rel=1e-9)  # t_{0.975, 2} sd / sqrt(n)


def test_bits_offset_is_the_8bit_bin_width():
    assert BITS_OFFSET == pytest.approx(math.log2(127.5))


def test_nll_command_ode_rows_equal_the_library_call(tmp_path):
    """`nll --method ode` on the exact denoiser of the first 1,024 shapes32 images: each row is
    ode_nll of that image with the Rademacher probe of its own generator (seed + index)."""
    from samplerkit.builtin import shapes32_ideal
    from samplerkit.data import shapes, to_model_space
    from samplerkit.seeds import StackedRandomGenerator

    csv = tmp_path / "ode.csv"
    code, out, err = _cli("nll", "--model", "shapes32-ideal", "--method", "ode", "--num-images", "2", "--seed", "5",
                          "--sigma-min", "0.1", "--sigma-max", "20", "--atol", "1e-3", "--rtol", "1e-3",
                          "--csv", str(csv), "--quiet")
    assert code == 0, err
    rows = run.results_csv(csv).read()
    x0 = to_model_space(shapes(np.arange(2))[0]).double()
    probe = StackedRandomGenerator("cpu", [5, 6]).randint(2, x0.shape).double()[None] * 2 - 1
    r = sk.likelihood.ode_nll(shapes32_ideal(), x0, sigma_min=0.1, sigma_max=20.0, atol=1e-3, rtol=1e-3,
                              probe_noise=probe)
    assert [float(row["bpd"]) for row in rows] == pytest.approx(r.bpd.tolist(), rel=1e-9)
    assert [int(row["nfe"]) for row in rows] == r.nfe.tolist()
