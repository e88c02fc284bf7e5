"""UniPC against an independent implementation of Zhao et al. 2023 written here: the predictor
UniP-p and corrector UniC-p in x_t-space (VP: alpha = 1/sqrt(1 + sigma^2)) with data prediction,
the phi functions by quadrature, and diffusers' conventions (lower orders on the first and last
steps, corrector on every step, the fixed weight 1/2 for UniP-2 and UniC-1)."""

import math

import numpy as np
import pytest
import torch
from samplerkit.adapters.analytic import FiniteSetDenoiser, GaussianDenoiser
from scipy.integrate import quad

from samplerkit import samplers, schedules
from samplerkit.errors import SamplerkitError


def _phi(k: int, z: float) -> float:
    """phi_k(z) = int_0^1 e^{(1 - tau) z} tau^{k-1} / (k-1)! dtau."""
    return quad(lambda tau: math.exp((1 - tau) * z) * tau ** (k - 1) / math.factorial(k - 1), 0, 1,
                epsabs=0, epsrel=1e-13)[0]


def _weights(r, h, p, variant, corrector):
    hh = -h
    B = hh if variant == "bh1" else math.expm1(hh)
    g = np.array([math.factorial(k) * hh * _phi(k + 1, hh) / B for k in range(1, p + 1)])
    if corrector:
        if p == 1:
            return [0.5], B
        nodes = list(r) + [1.0]
        return np.linalg.solve(np.vander(nodes, p, increasing=True).T, g), B
    if p == 1:
        return [], B
    if p == 2:
        return [0.5], B
    return np.linalg.solve(np.vander(r, p - 1, increasing=True).T, g[: p - 1]), B


def reference_unipc(net, latents, sigmas, order, variant):
    sig = [float(s) for s in sigmas]
    N = len(sig) - 1
    alpha = [1 / math.sqrt(1 + s * s) for s in sig]
    lam = [-math.log(s) if s > 0 else math.inf for s in sig]
    data, states = {}, []

    def update(x, s, t, p, x0_t=None):
        h = lam[t] - lam[s]
        r = [(lam[s - m] - lam[s]) / h for m in range(1, p)]
        a, B = _weights(r, h, p, variant, x0_t is not None)
        out = (sig[t] * alpha[t]) / (sig[s] * alpha[s]) * x - alpha[t] * math.expm1(-h) * data[s]
        res = sum(w * (data[s - m] - data[s]) / r[m - 1] for m, w in zip(range(1, p), a, strict=False))
        if x0_t is not None:
            res = res + a[-1] * (x0_t - data[s])
        return out - alpha[t] * B * res

    x, prev = latents * sig[0] * alpha[0], None
    for i in range(N):
        states.append(x / alpha[i])
        x0 = net(x / alpha[i], sig[i])
        if prev is not None:
            x = update(prev[0], i - 1, i, prev[1], x0_t=x0)
        data[i] = x0
        p = min(order, i + 1, N - i)
        if i == N - 1:
            return x0, states
        prev = (x, p)
        x = update(x, i, i + 1, p)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("denoiser", ["gaussian", "finite"])
def test_unipc_equals_the_papers_algorithm(variant, order, denoiser):
    if denoiser == "gaussian":
        net = GaussianDenoiser(0.1, 0.5, img_channels=2, img_resolution=3)
    else:
        images = torch.rand(4, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
        net = FiniteSetDenoiser(images)
    latents = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigmas = schedules.edm(8, 0.002, 80)
    log = []
    ours = samplers.unipc(net, latents, sigmas, order=order, variant=variant, callback=log.append)
    ref, states = reference_unipc(net, latents, sigmas, order, variant)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)
    for entry, state in zip(log, states, strict=True):  # every intermediate point, not only the end
        torch.testing.assert_close(entry["x"], state, rtol=1e-9, atol=1e-9)


def test_unipc_variants_and_orders_differ():
    """The comparison above can tell bh1 from bh2 and one order from another."""
    net = GaussianDenoiser(0.1, 0.5, img_channels=1, img_resolution=2)
    lat = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigmas = schedules.edm(8)
    outs = [samplers.unipc(net, lat, sigmas, order=p, variant=v) for p in (1, 2, 3) for v in ("bh1", "bh2")]
    for i in range(len(outs)):
        for j in range(i):
            assert float((outs[i] - outs[j]).abs().max()) > 1e-6


@pytest.mark.parametrize("kw", [{"order": 0}, {"order": 4}, {"variant": "bh3"}])
def test_unipc_bad_arguments(kw):
    net = GaussianDenoiser(0.1, 0.5, img_channels=1, img_resolution=2)
    with pytest.raises(SamplerkitError, match="order|variant"):
        samplers.unipc(net, torch.zeros(1, 1, 2, 2), schedules.edm(4), **kw)
