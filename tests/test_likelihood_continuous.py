"""Continuous-timestep evaluation of a discrete epsilon-model (issue 31, item 15): the network fed
the real index between its trained levels equals the nearest-level denoiser at the levels, is
continuous and monotone between them, and lets the adaptive ODE solver of the likelihood take fewer
steps than the piecewise-constant nearest-level timestep does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from samplerkit.adapters._unet_blocks import timestep_embedding
from samplerkit.adapters.analytic import GaussianDenoiser
from test_cli_sample import _cli

import samplerkit as sk
from samplerkit.denoisers import ContinuousTimestep
from samplerkit.diffusion import alpha_bar_from_betas, betas_for
from samplerkit.errors import SamplerkitError
from samplerkit.likelihood import run
from samplerkit.testing import random_weights


class TinyEps(torch.nn.Module):
    """A random-weight epsilon-network whose sinusoidal timestep embedding (ADM's) takes real t."""

    def __init__(self, channels: int = 3, width: int = 8):
        super().__init__()
        self.width = width
        self.emb = torch.nn.Linear(width, width)
        self.conv1 = torch.nn.Conv2d(channels, width, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, t, labels=None):
        emb = self.emb(timestep_embedding(torch.as_tensor(t).reshape(-1), self.width, max_period=100.0).to(x.dtype))
        return self.conv2(torch.nn.functional.silu(self.conv1(x) + emb[:, :, None, None]))


def _net(T: int = 40) -> sk.DiscreteEpsDenoiser:
    torch.manual_seed(0)
    abar = alpha_bar_from_betas(betas_for("cosine", T))
    eps = random_weights(TinyEps().double(), seed=3).eval().requires_grad_(False)
    return sk.DiscreteEpsDenoiser(eps, abar, img_resolution=8, dtype=torch.float64)


def _images(B: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (B, 3, 8, 8), generator=g).double() / 127.5 - 1


def test_continuous_timestep_is_the_level_index_at_the_levels_and_log_sigma_linear_between():
    net = _net()
    T = net.num_timesteps
    assert torch.equal(net.continuous_timestep(net.sigmas), torch.arange(T, dtype=torch.float64))
    mid = (net.sigmas[:-1] * net.sigmas[1:]).sqrt()  # halfway in ln sigma
    assert net.continuous_timestep(mid) == pytest.approx(np.arange(T - 1) + 0.5, abs=1e-9)
    dense = torch.logspace(np.log10(net.sigma_min), np.log10(net.sigma_max), 5001, dtype=torch.float64)
    t = net.continuous_timestep(dense)
    assert bool((t[1:] > t[:-1]).all())  # strictly monotone
    assert float((t[1:] - t[:-1]).max()) < 0.05  # no jumps: T levels over 5,000 points
    ends = net.continuous_timestep(torch.tensor([net.sigma_min / 2, net.sigma_max * 2], dtype=torch.float64))
    assert ends.tolist() == [0.0, T - 1.0]


def test_continuous_denoiser_equals_the_nearest_level_one_exactly_at_the_trained_levels():
    net = _net()
    cont = ContinuousTimestep(net)
    x = _images(4) + 0.3 * torch.randn(4, 3, 8, 8, dtype=torch.float64)
    for i in (0, 1, 17, net.num_timesteps - 1):
        sigma = net.sigmas[i].expand(4)
        assert torch.equal(cont(x, sigma), net(x, sigma))


def test_continuous_denoiser_has_no_jump_where_the_nearest_level_one_jumps():
    net = _net()
    cont = ContinuousTimestep(net)
    x = _images(1)
    i = 20
    mid = float((net.sigmas[i] * net.sigmas[i + 1]).sqrt())
    # the nearest level changes between the two arithmetic-midpoint sides
    edge = float(net.sigmas[i] + net.sigmas[i + 1]) / 2
    below, above = (torch.tensor([edge * (1 + d)], dtype=torch.float64) for d in (-1e-9, 1e-9))
    jump = (net(x, above) - net(x, below)).abs().max()
    step = (cont(x, above) - cont(x, below)).abs().max()
    assert float(jump) > 1e-4 * float(net(x, above).abs().max())
    assert float(step) < 1e-6 * float(jump)
    # between the levels D moves along with t; at the ends it meets the nearest-level values
    sig = torch.tensor([mid], dtype=torch.float64)
    assert not torch.equal(cont(x, sig), net(x, sig))


def test_ode_needs_fewer_steps_at_continuous_timesteps():
    net, x = _net(), _images(1)
    probe = torch.randint(0, 2, (1, *x.shape), generator=torch.Generator().manual_seed(2)).double() * 2 - 1
    kw = dict(atol=1e-4, rtol=1e-4, probe_noise=probe)
    trained = sk.likelihood.ode_nll(net, x, **kw)
    cont = sk.likelihood.ode_nll(net, x, timesteps="continuous", **kw)
    assert trained.timesteps == "trained" and cont.timesteps == "continuous"
    print(f"NFE trained {trained.nfe.tolist()}, continuous {cont.nfe.tolist()}; bits/dim {trained.bpd.tolist()}, "
          f"{cont.bpd.tolist()}")
    assert bool((cont.nfe < 0.6 * trained.nfe).all()), (cont.nfe, trained.nfe)
    assert cont.bpd.tolist() == pytest.approx(trained.bpd.tolist(), abs=0.05)


def test_continuous_timesteps_on_a_continuous_model_is_a_one_line_error():
    net = GaussianDenoiser(torch.zeros(1, 2, 2), torch.ones(1, 2, 2), img_channels=1, img_resolution=2)
    with pytest.raises(SamplerkitError, match="discrete epsilon-models") as e:
        sk.likelihood.ode_nll(net, torch.zeros(1, 1, 2, 2, dtype=torch.float64), timesteps="continuous",
                              sigma_min=0.01, sigma_max=10.0)
    assert "\n" not in str(e.value)
    with pytest.raises(SamplerkitError, match="unknown timesteps"):
        sk.likelihood.ode_nll(_net(), _images(1), timesteps="real")
    with pytest.raises(SamplerkitError, match="apply to the ODE likelihood"):
        run.Settings(method="vlb", timesteps="continuous").check()


def test_nll_command_reports_both_timestep_modes(tmp_path):
    csv = tmp_path / "ode.csv"
    code, out, err = _cli("nll", "--model", "shapes32-adm", "--method", "ode", "--num-images", "1", "--atol", "1e-1",
                          "--rtol", "1e-1", "--sigma-min", "0.5", "--sigma-max", "5", "--timesteps", "both",
                          "--csv", str(csv), "--quiet")
    assert code == 0, err
    rows = run.results_csv(csv).read()
    assert sorted('"timesteps": "continuous"' in r["settings"] for r in rows) == [False, True]
    assert "shapes32-adm (continuous t)" in out and "shapes32-adm " in out
    lines = [ln for ln in out.splitlines() if ln.startswith("shapes32-adm")]
    assert len(lines) == 2 and all(str(int(float(r["nfe"]))) in " ".join(lines) for r in rows)
    assert len({ln.index(" ode ") for ln in out.splitlines()[:3] if " ode " in ln}) == 1  # columns aligned


def test_settings_of_trained_timesteps_keep_the_csv_keys_of_earlier_runs():
    trained, cont = run.Settings(method="ode"), run.Settings(method="ode", timesteps="continuous")
    assert "timesteps" not in trained.for_csv()
    assert '"timesteps": "continuous"' in cont.for_csv() and cont.for_csv() != trained.for_csv()
