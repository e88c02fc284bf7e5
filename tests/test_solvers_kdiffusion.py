"""The k-diffusion family against k-diffusion itself: the same denoiser, sigma grid, latents and
noise give the same images (float64, 1e-6 relative) and the same callback records.

k-diffusion is a test-only dependency (installed with ``--no-deps``, see the README's test
command); its ``sampling.py`` is loaded from the installed file without importing the package,
whose ``__init__`` pulls in training dependencies the samplers do not need.
"""

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
from samplerkit.adapters.analytic import FiniteSetDenoiser

from samplerkit import samplers, schedules

KD_INSTALL = ('pip install --no-deps "k-diffusion==0.1.1.post1" "torchsde==0.2.6" "torchdiffeq==0.2.5" '
              '"trampoline==0.1.2"')


@pytest.fixture(scope="module")
def kd():
    """k_diffusion/sampling.py of the installed k-diffusion, with a stand-in for its ``utils``
    module (which needs safetensors; sampling.py uses only ``utils.append_dims`` from it)."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"these tests run k-diffusion's samplers: {KD_INSTALL}", pytrace=False)
    folder = Path(list(spec.submodule_search_locations)[0])
    package = types.ModuleType("_kd_reference")
    package.__path__ = [str(folder)]
    utils = types.ModuleType("_kd_reference.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    sys.modules.update({"_kd_reference": package, "_kd_reference.utils": utils})
    try:
        file_spec = importlib.util.spec_from_file_location("_kd_reference.sampling", folder / "sampling.py")
        module = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(module)
    except ImportError as e:
        pytest.fail(f"k-diffusion's sampling.py does not load ({e}): {KD_INSTALL}", pytrace=False)
    finally:
        sys.modules.pop("_kd_reference", None)
        sys.modules.pop("_kd_reference.utils", None)
    return module


@pytest.fixture(scope="module")
def net():
    """The ideal denoiser of 5 random images: nonlinear in x, exact, float64."""
    images = torch.rand(5, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    return FiniteSetDenoiser(images)


def _noise_list(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) for _ in range(n)]


CASES = [
    ("euler_ancestral", {}), ("euler_ancestral", {"eta": 0.5, "s_noise": 0.9}),
    ("dpm_2", {}),
    ("dpm_2_ancestral", {}), ("dpm_2_ancestral", {"eta": 0.7, "s_noise": 1.1}),
    ("lms", {}), ("lms", {"order": 2}),
    ("dpmpp_2s_ancestral", {}), ("dpmpp_2s_ancestral", {"eta": 0.0}),
    ("dpmpp_2m", {}),
    ("dpmpp_2m_sde", {}), ("dpmpp_2m_sde", {"solver_type": "heun"}), ("dpmpp_2m_sde", {"eta": 0.0}),
    ("dpmpp_2m_sde", {"eta": 0.5, "s_noise": 0.8, "solver_type": "heun"}),
    ("dpmpp_3m_sde", {}), ("dpmpp_3m_sde", {"eta": 0.0}), ("dpmpp_3m_sde", {"eta": 0.3, "s_noise": 1.2}),
]


@pytest.mark.parametrize("name,knobs", CASES)
def test_sampler_equals_k_diffusion(kd, net, name, knobs):
    sigmas = schedules.edm(7, 0.002, 80)
    latents = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours_log, theirs_log = [], []
    fn = getattr(samplers, name)
    kwargs = dict(knobs, callback=ours_log.append)
    if samplers.SAMPLERS[name].stochastic:
        ours_noise = iter(_noise_list())
        kwargs["randn_like"] = lambda x: next(ours_noise)
    ours = fn(net, latents, sigmas, **kwargs)

    theirs_noise = iter(_noise_list())
    extra = {"noise_sampler": lambda s, t: next(theirs_noise)} if samplers.SAMPLERS[name].stochastic else {}
    theirs = getattr(kd, f"sample_{name}")(lambda x, s: net(x, s), latents * sigmas[0], sigmas, disable=True,
                                          callback=theirs_log.append, **knobs, **extra)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)
    assert len(ours_log) == len(theirs_log) == len(sigmas) - 1
    for a, b in zip(ours_log, theirs_log, strict=True):
        assert a["i"] == b["i"] and float(a["sigma"]) == pytest.approx(float(b["sigma"]), rel=1e-12)
        assert float(a["sigma_hat"]) == pytest.approx(float(b["sigma_hat"]), rel=1e-12)
        torch.testing.assert_close(a["x"], b["x"], rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(a["denoised"], b["denoised"], rtol=1e-6, atol=1e-9)
    if samplers.SAMPLERS[name].stochastic:  # both used the same number of draws
        assert sum(1 for _ in ours_noise) == sum(1 for _ in theirs_noise)


@pytest.mark.parametrize("name", ["euler", "heun"])
def test_euler_and_heun_equal_k_diffusion(kd, net, name):
    sigmas = schedules.edm(6, 0.002, 80)
    latents = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    theirs = getattr(kd, f"sample_{name}")(lambda x, s: net(x, s), latents * sigmas[0], sigmas, disable=True)
    torch.testing.assert_close(getattr(samplers, name)(net, latents, sigmas), theirs, rtol=1e-6, atol=1e-9)
