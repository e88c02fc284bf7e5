"""Discretizations against Karras et al. 2022 (EDM), Table 1, and respacing against Nichol & Dhariwal 2021, Sec. 4."""

import math

import pytest
import torch

from samplerkit import schedules
from samplerkit.diffusion import vp_sigma
from samplerkit.errors import SamplerkitError


def test_edm_grid_end_points_and_interior_follow_eq5():
    s = schedules.edm(10, 0.002, 80, 7)
    assert s.dtype == torch.float64 and len(s) == 11 and s[-1] == 0
    assert float(s[0]) == pytest.approx(80) and float(s[9]) == pytest.approx(0.002)
    i = 4
    expected = (80 ** (1 / 7) + i / 9 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert float(s[i]) == pytest.approx(expected, rel=1e-12)


def test_vp_grid_is_linear_in_t_with_epsilon_s():
    s = schedules.vp(5)
    t = 1 + torch.arange(5, dtype=torch.float64) / 4 * (1e-3 - 1)
    torch.testing.assert_close(s[:-1], vp_sigma(t), rtol=1e-10, atol=0)
    assert float(s[0]) == pytest.approx(math.sqrt(math.exp(0.5 * 19.9 + 0.1) - 1), rel=1e-10)


def test_ve_grid_is_geometric():
    s = schedules.ve(6, 0.02, 100)
    ratios = s[1:-1] / s[:-2]
    torch.testing.assert_close(ratios, torch.full_like(ratios, (0.02 / 100) ** (1 / 5)))
    assert float(s[0]) == pytest.approx(100) and float(s[5]) == pytest.approx(0.02)


def test_iddpm_levels_recursion_and_grid():
    u = schedules.iddpm_levels()
    assert u[-1] == 0 and bool((u[:-1] > u[1:]).all())
    ab = lambda j: math.sin(0.5 * math.pi * j / 1000 / 1.008) ** 2  # noqa: E731
    j = 500
    expected = math.sqrt((float(u[j]) ** 2 + 1) / max(ab(j - 1) / ab(j), 0.001) - 1)
    assert float(u[j - 1]) == pytest.approx(expected, rel=1e-12)
    s = schedules.iddpm(4)
    idx = [math.floor(8 + (999 - 8) / 3 * i + 0.5) for i in range(4)]
    torch.testing.assert_close(s[:-1], u[idx])


def test_respace_full_is_every_step():
    assert schedules.respace(100, "100").tolist() == list(range(100))


def test_respace_k_is_evenly_spaced_and_rounded():
    assert schedules.respace(1000, "10").tolist() == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert schedules.respace(4000, "50").numel() == 50


def test_respace_ddim_stride():
    assert schedules.respace(1000, "ddim50").tolist() == list(range(0, 1000, 20))
    assert schedules.respace(1000, "ddim25").tolist() == list(range(0, 1000, 40))


def test_respace_section_counts():
    steps = schedules.respace(300, "10,15,20").tolist()
    assert len(steps) == 45
    assert steps[:10] == [round(i * 99 / 9) for i in range(10)]
    assert steps[10] == 100 and steps[24] == 199 and steps[25] == 200 and steps[-1] == 299


@pytest.mark.parametrize("call", [
    lambda: schedules.edm(0),
    lambda: schedules.edm(10, sigma_min=1.0, sigma_max=0.5),
    lambda: schedules.edm(10, rho=0),
    lambda: schedules.ve(3, 5, 5),
    lambda: schedules.respace(100, "200"),
    lambda: schedules.respace(100, "ddim7x"),
    lambda: schedules.respace(100, "ddim33"),
])
def test_bad_schedule_arguments_raise_our_error(call):
    with pytest.raises(SamplerkitError):
        call()


def _edm_iddpm_reference(num_steps, sigma_min, sigma_max, j0=8, M=1000, C1=0.001, C2=0.008):
    """EDM's ablation sampler, iddpm discretization, written out: u_j for j = M .. j0+1 (the rest
    stays 0), the levels within [sigma_min, sigma_max], N of them picked evenly."""
    u = torch.zeros(M + 1, dtype=torch.float64)
    alpha_bar = lambda j: math.sin(0.5 * math.pi * j / M / (C2 + 1)) ** 2  # noqa: E731
    for j in range(M, j0, -1):
        u[j - 1] = math.sqrt((float(u[j]) ** 2 + 1) / max(alpha_bar(j - 1) / alpha_bar(j), C1) - 1)
    u_filtered = u[(u >= sigma_min) & (u <= sigma_max)]
    idx = ((len(u_filtered) - 1) / (num_steps - 1) * torch.arange(num_steps, dtype=torch.float64)).round()
    return u_filtered[idx.to(torch.int64)], u_filtered


def test_iddpm_grid_keeps_a_cosine_models_smallest_level():
    """Issue: net.sigma_min of an ADM/iDDPM cosine model exceeds u_999 by ~1e-15, and the level was
    dropped (991 levels kept instead of 992, grid ending at t = 1)."""
    import samplerkit as sk
    from samplerkit import diffusion
    from samplerkit.generate import sigma_grid

    ab = diffusion.alpha_bar_from_betas(diffusion.cosine_betas(1000))
    net = sk.DiscreteEpsDenoiser(lambda x, t, labels: x * 0, ab)
    u = schedules.iddpm_levels()
    assert net.sigma_min > float(u[999])  # the rounding that used to drop it
    grid = sigma_grid(net, 992, "iddpm")
    assert torch.equal(grid[:-1], u[8:1000])  # every level u_8 .. u_999, each once
    assert net.timestep(grid[-2]) == 0  # ends at the model's t = 0
    # exact numbers: EDM's own filter with the bounds it would use (0.002 and 81 clamped to the model)
    for n in (18, 50, 256):
        expected, kept = _edm_iddpm_reference(n, float(u[999]), 81.0)
        assert kept.numel() == 992
        torch.testing.assert_close(sigma_grid(net, n, "iddpm")[:-1], expected, rtol=0, atol=0)
