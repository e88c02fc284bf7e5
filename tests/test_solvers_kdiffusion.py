"""The k-diffusion family against k-diffusion itself: the same denoiser, sigma grid, latents and
noise give the same images (float64, 1e-6 relative) and the same callback records.

k-diffusion is a test-only dependency (installed with ``--no-deps``, see the README's test
command); its ``sampling.py`` is loaded from the installed file without importing the package,
whose ``__init__`` pulls in training dependencies the samplers do not need.
"""

import contextlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
from samplerkit.adapters.analytic import FiniteSetDenoiser

from samplerkit import samplers, schedules
from samplerkit.errors import SamplerkitError

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



class _Counted:
    """The test denoiser, counting its calls."""

    def __init__(self, net):
        self.net, self.calls = net, 0
        self.round_sigma = net.round_sigma

    def __call__(self, x, sigma, class_labels=None):
        self.calls += 1
        return self.net(x, sigma, class_labels)


@contextlib.contextmanager
def _float64_default():
    """k-diffusion's DPMSolver builds its lambda grid with torch.linspace in the default dtype; the
    ideal denoiser at sigma = 0.002 turns that float32 rounding (1e-7) into 1e-3 differences, so
    the reference runs with float64 as the default (samplerkit's samplers compute in float64)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _check_logs(ours_log, theirs_log):
    assert len(ours_log) == len(theirs_log)
    for a, b in zip(ours_log, theirs_log, strict=True):
        assert a["i"] == b["i"] and float(a["sigma"]) == pytest.approx(float(b["sigma"]), rel=1e-6)
        torch.testing.assert_close(a["x"], b["x"], rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(a["denoised"], b["denoised"], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("N,knobs", [(2, {}), (3, {}), (7, {}), (10, {}), (12, {}),
                                     (10, {"eta": 0.6, "s_noise": 0.9}), (9, {"eta": 1.0})])
def test_dpm_fast_equals_k_diffusion(kd, net, N, knobs):
    """An N-step grid is k-diffusion's sample_dpm_fast(sigma_min=sigmas[-2], sigma_max=sigmas[0], n=N)."""
    sigmas = schedules.edm(N, 0.002, 80)
    latents = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    counted, ours_log, theirs_log = _Counted(net), [], []
    ours_noise, theirs_noise = iter(_noise_list()), iter(_noise_list())
    ours = samplers.dpm_fast(counted, latents, sigmas, randn_like=lambda x: next(ours_noise),
                             callback=ours_log.append, **knobs)
    with _float64_default():  # k-diffusion's linspace of lambdas is otherwise float32
        theirs = kd.sample_dpm_fast(lambda x, s: net(x, s), latents * sigmas[0], sigmas[-2], sigmas[0], N,
                                    disable=True, callback=theirs_log.append,
                                    noise_sampler=lambda s, t: next(theirs_noise), **knobs)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)
    assert counted.calls == N == samplers.nfe("dpm_fast", N)
    assert len(ours_log) == N // 3 + 1
    _check_logs(ours_log, theirs_log)
    if knobs.get("eta"):  # one draw per step, as k-diffusion
        assert sum(1 for _ in ours_noise) == sum(1 for _ in theirs_noise)


@pytest.mark.parametrize("knobs", [{}, {"order": 2}, {"rtol": 0.01, "atol": 0.001},
                                   {"pcoeff": 0.2, "icoeff": 0.6, "dcoeff": 0.1, "h_init": 0.2},
                                   {"eta": 0.8, "s_noise": 1.1}, {"order": 2, "eta": 1.0, "rtol": 0.02}])
def test_dpm_adaptive_equals_k_diffusion(kd, net, knobs):
    """dpm_adaptive on a grid is k-diffusion's sample_dpm_adaptive between the grid's end points:
    same image, same accepted / rejected steps and errors; a rejected step costs one call fewer."""
    sigmas = schedules.edm(18, 0.002, 80)
    latents = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    counted, ours_log, theirs_log = _Counted(net), [], []
    ours_noise, theirs_noise = iter(_noise_list(400)), iter(_noise_list(400))
    # k-diffusion holds rtol and atol as float32 tensors: give samplerkit the same rounded values
    tols = {k: float(torch.tensor(knobs.get(k, d), dtype=torch.float32)) for k, d in (("rtol", 0.05), ("atol", 0.0078))}
    ours = samplers.dpm_adaptive(counted, latents, sigmas, randn_like=lambda x: next(ours_noise),
                                 callback=ours_log.append, **{**knobs, **tols})
    theirs, info = kd.sample_dpm_adaptive(lambda x, s: net(x, s), latents * sigmas[0], sigmas[-2], sigmas[0],
                                          disable=True, callback=theirs_log.append, return_info=True,
                                          noise_sampler=lambda s, t: next(theirs_noise), **knobs)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)
    _check_logs(ours_log, theirs_log)
    for a, b in zip(ours_log, theirs_log, strict=True):
        assert float(a["error"]) == pytest.approx(float(b["error"]), rel=1e-6)
        assert (a["n_accept"], a["n_reject"]) == (b["n_accept"], b["n_reject"])
    assert info["n_accept"] > 3
    assert counted.calls == info["nfe"] - info["n_reject"] == ours_log[-1]["nfe"]
    if knobs.get("eta"):
        assert sum(1 for _ in ours_noise) == sum(1 for _ in theirs_noise)


def test_dpm_fast_and_adaptive_need_two_positive_levels(net):
    latents = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    for fn in (samplers.dpm_fast, samplers.dpm_adaptive):
        with pytest.raises(SamplerkitError, match="two positive levels"):
            fn(net, latents, schedules.edm(1, 0.002, 80))
    with pytest.raises(SamplerkitError, match="order 2 or 3"):
        samplers.dpm_adaptive(net, latents, schedules.edm(5, 0.002, 80), order=1)
