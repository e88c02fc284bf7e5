"""Convergence orders of the deterministic solvers on the Gaussian test bed: the probability-flow
ODE of N(0.1, 0.5^2) data has a closed-form solution, so the global error at sigma = 0 is known
exactly; its slope against N on EDM's grid is the solver's order. sigma_min = 1e-4 keeps the
error of the last jump to sigma = 0 (~1e-8) below the discretization error."""

import numpy as np
import pytest
import torch
from samplerkit.adapters.analytic import GaussianDenoiser

from samplerkit import samplers, schedules

NS = [64, 128, 256]

# (sampler, knobs, lowest and highest accepted slope)
ORDERS = [
    ("euler_ancestral", {"eta": 0.0}, 0.9, 1.1),
    ("dpm_2", {}, 1.8, 2.3),
    ("dpmpp_2s_ancestral", {"eta": 0.0}, 1.8, 2.3),
    ("dpmpp_2m", {}, 1.8, 2.3),
    ("dpmpp_2m_sde", {"eta": 0.0}, 1.8, 2.3),
    ("dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}, 1.8, 2.3),
    ("dpmpp_3m_sde", {"eta": 0.0}, 1.6, 2.3),  # k-diffusion's 3M at eta = 0: about 2 here (1.9 at N = 128-512)
    ("lms", {"order": 2}, 1.8, 2.3),
    ("lms", {"order": 3}, 2.7, 3.3),
    ("lms", {}, 3.6, 4.3),
    ("unipc", {"order": 1}, 1.8, 2.3),
    ("unipc", {"order": 2}, 2.8, 3.3),
    ("unipc", {"order": 2, "variant": "bh2"}, 2.8, 3.3),
    ("unipc", {"order": 3}, 3.7, 4.3),
    ("unipc", {"order": 3, "variant": "bh2"}, 3.7, 4.3),
    ("ipndm", {"order": 1}, 0.9, 1.1),
    ("ipndm", {}, 1.8, 2.3),  # equal-step weights on a non-uniform grid: order 2, not 4
]


@pytest.fixture(scope="module")
def gauss():
    return GaussianDenoiser(0.1, 0.5, img_channels=2, img_resolution=3)


def _slope(net, sampler, **knobs):
    lat = torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = []
    for N in NS:
        sigmas = schedules.edm(N, 1e-4, 80)
        exact = net.ode_solution(lat * sigmas[0], float(sigmas[0]), 0.0)
        errors.append(float((sampler(net, lat, sigmas, **knobs) - exact).abs().max()))
    return -np.polyfit(np.log(NS), np.log(errors), 1)[0]


@pytest.mark.parametrize("name,knobs,lo,hi", ORDERS, ids=[f"{n}-{k}" for n, k, _, _ in ORDERS])
def test_solver_converges_at_its_order(gauss, name, knobs, lo, hi):
    slope = _slope(gauss, getattr(samplers, name), **knobs)
    assert lo <= slope <= hi
