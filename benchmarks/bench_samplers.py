"""Sampler benchmarks (core issue).

1. Overhead: wall time of each sampler divided by (NFE x time of one denoiser call), measured
   in the same run on a small convolutional eps-network wrapped in DiscreteEpsDenoiser.
   Goal: <= 1.02 for euler/heun/ddim, <= 1.05 for stochastic/ancestral.
2. NFE efficiency on the Gaussian test bed (data N(0.1, 0.5^2) per pixel): the NFE each
   sampler needs for the output distribution to come within a W2 distance of the data
   distribution. Every sampler maps the latent and its noise draws affinely, so the output
   distribution is known exactly from one batched run (see :func:`exact_w2`); no sampling error.

3. Against k-diffusion: wall time of each sampler of the k-diffusion family divided by that of
   k-diffusion's own function (``sample_<name>``, from the installed k-diffusion==0.1.1.post1) on the
   same denoiser, grid, latents and noise, interleaved repeats. Goal: <= 1.02.

    python benchmarks/bench_samplers.py [--batch 64] [--repeats 3] [--only overhead|nfe|kdiffusion]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import time
import types
import warnings
from pathlib import Path

import torch
from _common import SmallConvNet, best_time, print_machine
from samplerkit.adapters.analytic import GaussianDenoiser

import samplerkit as sk
from samplerkit import diffusion, samplers, schedules


def overhead(batch: int, repeats: int, steps: int = 10) -> None:
    torch.manual_seed(0)
    ab = diffusion.alpha_bar_from_betas(diffusion.linear_betas(1000))
    net = sk.DiscreteEpsDenoiser(SmallConvNet().eval(), ab, img_channels=3, img_resolution=32)
    lat = torch.randn(batch, 3, 32, 32)
    x = lat.double() * 10
    sigma = torch.full((batch,), 10.0, dtype=torch.float64)
    runs = {
        "euler": (lambda: samplers.euler(net, lat, schedules.edm(steps, 0.01, 80)), steps),
        "heun": (lambda: samplers.heun(net, lat, schedules.edm(steps, 0.01, 80)), 2 * steps - 1),
        "ddim": (lambda: samplers.ddim(net, lat, schedules.respace(1000, str(steps))), steps),
        "stochastic": (lambda: samplers.stochastic(net, lat, schedules.edm(steps, 0.01, 80), S_churn=10),
                       2 * steps - 1),
        "ancestral": (lambda: samplers.ancestral(net, lat, schedules.respace(1000, str(steps))), steps),
    }
    with torch.no_grad():
        for _ in range(3):
            net(x, sigma)
        print(f"sampler overhead, batch {batch}, {steps} steps, ratio = sampler time / (NFE x one call)")
        for name, (fn, nfe) in runs.items():
            ratios = []
            for _ in range(repeats):  # interleave reference and sampler to share machine noise
                t0 = time.perf_counter()
                for _ in range(nfe):
                    net(x, sigma)
                call = (time.perf_counter() - t0) / nfe
                t0 = time.perf_counter()
                fn()
                ratios.append((time.perf_counter() - t0) / (nfe * call))
            print(f"  {name:10s} NFE {nfe:3d}  ratio {min(ratios):.3f} (median {sorted(ratios)[len(ratios) // 2]:.3f})")


def _w2(mean, std, mu=0.1, s=0.5):
    return math.sqrt((mean - mu) ** 2 + (std - s) ** 2)


STEP_COUNTS = [2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512]

# (row label, sampler, knobs); every sampler at its defaults, plus the variants worth a row
# dpm_adaptive is left out: its error norm couples the rows of the batch, so the one-batch affine
# read-off of exact_w2 does not apply, and its NFE is not a function of N
NFE_RUNS = [(name, name, {}) for name in samplers.SAMPLERS if name != "dpm_adaptive"] + [
    ("ancestral (fixed small)", "ancestral", {"variance": "fixedsmall"}),
    ("euler_ancestral (eta 0)", "euler_ancestral", {"eta": 0.0}),
    ("dpmpp_2m_sde (heun)", "dpmpp_2m_sde", {"solver_type": "heun"}),
    ("dpmpp_3m_sde (eta 0)", "dpmpp_3m_sde", {"eta": 0.0}),
    ("lms (order 2)", "lms", {"order": 2}),
    ("unipc (bh2)", "unipc", {"variant": "bh2"}),
    ("unipc (order 3)", "unipc", {"order": 3}),
    ("unipc (order 3, bh2)", "unipc", {"order": 3, "variant": "bh2"}),
    ("ipndm (order 2)", "ipndm", {"order": 2}),
]


def exact_w2(net, name: str, N: int, **knobs) -> float:
    """W2 between the output distribution and the data N(0.1, 0.5^2), exactly.

    With a Gaussian data set D(x; sigma) is affine in x, so every sampler's output is affine in
    the latent z and the per-step noises xi_k: out = c + a z + sum_k b_k xi_k, a Gaussian with mean
    c and variance a^2 + sum_k b_k^2. One batched run reads off c, a and every b_k: row 0 has
    z = 0 and no noise, row 1 z = 1, row 2 + k unit noise at draw k only.
    """
    info = samplers.SAMPLERS[name]
    sigmas = schedules.edm(N)
    rows = 2 + 2 * N  # room for up to two draws per step
    z = torch.zeros(rows, 1, 1, 1, dtype=torch.float64)
    z[1] = 1.0
    draws = iter(range(rows))

    def unit_noise(x):
        k = next(draws)
        xi = torch.zeros_like(x)
        xi[2 + k] = 1.0
        return xi

    if info.grid == "chain":  # x_t-space start at the same point as the sigma-space samplers
        z = z * float(sigmas[0]) / math.sqrt(1 + float(sigmas[0]) ** 2)
        knobs = {"clip_denoised": False, **knobs}
    kw = {"randn_like": unit_noise} if info.stochastic else {}
    out = getattr(samplers, name)(net, z, sigmas, **knobs, **kw).flatten()
    c, a, b = float(out[0]), float(out[1] - out[0]), out[2:] - out[0]
    return _w2(c, math.sqrt(a**2 + float((b**2).sum())))


def nfe_efficiency(targets=(1e-2, 1e-3)) -> list[tuple[str, list]]:
    net = GaussianDenoiser(0.1, 0.5, img_channels=1, img_resolution=1)
    print("NFE to reach a W2 distance to the data distribution N(0.1, 0.5^2) (EDM rho = 7 grid, sigma 0.002-80)")
    table = []
    for label, name, knobs in NFE_RUNS:
        errors = [exact_w2(net, name, N, **knobs) for N in STEP_COUNTS]
        row = []
        for target in targets:  # the fewest steps from which on every listed count stays within the target
            within = [e <= target for e in errors]
            first = next((k for k in range(len(within)) if all(within[k:])), None)
            row.append(samplers.nfe(name, STEP_COUNTS[first]) if first is not None else None)
        table.append((label, row))
        cells = "   ".join(f"W2<={t:g}: NFE {f if f is not None else '> 512 steps'}"
                           for t, f in zip(targets, row, strict=True))
        print(f"  {label:26s} {cells}", flush=True)
    return table


def load_k_diffusion_sampling():
    """k-diffusion's sampling.py from the installed package, without its ``__init__`` (which pulls
    in training dependencies); its one use of ``utils`` (append_dims) is stood in for."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        sys.exit('needs k-diffusion: pip install --no-deps "k-diffusion==0.1.1.post1" "torchsde==0.2.6" '
                 '"torchdiffeq==0.2.5" "trampoline==0.1.2"')
    folder = Path(list(spec.submodule_search_locations)[0])
    package, utils = types.ModuleType("_kd_bench"), types.ModuleType("_kd_bench.utils")
    package.__path__ = [str(folder)]
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    sys.modules.update({"_kd_bench": package, "_kd_bench.utils": utils})
    file_spec = importlib.util.spec_from_file_location("_kd_bench.sampling", folder / "sampling.py")
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


KD_FAMILY = ["euler", "heun", "euler_ancestral", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral",
             "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpm_fast", "dpm_adaptive"]


def _kd_pair(kd, net, name: str, lat, sigmas):
    """(samplerkit call, k-diffusion call) of sampler ``name``, same grid, latents and noise."""
    x0 = lat.double() * sigmas[0]
    stochastic = samplers.SAMPLERS[name].stochastic
    ours_kw = {"randn_like": torch.randn_like} if stochastic else {}
    theirs_kw = {"noise_sampler": lambda s, t: torch.randn_like(x0)} if stochastic else {}
    model = lambda x, s: net(x, s)  # noqa: E731
    if name == "dpm_fast":
        theirs = lambda: kd.sample_dpm_fast(model, x0, sigmas[-2], sigmas[0], len(sigmas) - 1,  # noqa: E731
                                            disable=True, **theirs_kw)
    elif name == "dpm_adaptive":
        theirs = lambda: kd.sample_dpm_adaptive(model, x0, sigmas[-2], sigmas[0], disable=True,  # noqa: E731
                                                rtol=0.05, atol=0.0078, **theirs_kw)
    else:
        theirs = lambda: getattr(kd, f"sample_{name}")(model, x0, sigmas, disable=True, **theirs_kw)  # noqa: E731
    ours = lambda: getattr(samplers, name)(net, lat, sigmas, **ours_kw)  # noqa: E731
    return ours, theirs


def kdiffusion_overhead(batch: int, repeats: int, steps: int = 10) -> dict:
    """samplerkit time / k-diffusion time per sampler, same denoiser (the small conv eps-net of
    :func:`overhead`), same rounded EDM grid, interleaved repeats; best and median of the ratios."""
    kd = load_k_diffusion_sampling()
    warnings.filterwarnings("ignore", message="To copy construct from a tensor")  # k-diffusion's torch.tensor(sigma)
    torch.manual_seed(0)
    ab = diffusion.alpha_bar_from_betas(diffusion.linear_betas(1000))
    net = sk.DiscreteEpsDenoiser(SmallConvNet().eval(), ab, img_channels=3, img_resolution=32)
    lat = torch.randn(batch, 3, 32, 32)
    sigmas = torch.cat([net.round_sigma(schedules.edm(steps, 0.01, 80)[:-1]).double(), torch.zeros(1).double()])
    print(f"samplerkit / k-diffusion wall time, batch {batch}, {steps} steps, {repeats} interleaved repeats")
    results = {}
    with torch.no_grad():
        for name in KD_FAMILY:
            ours, theirs = _kd_pair(kd, net, name, lat, sigmas)
            ours(), theirs()  # warm-up
            t_ours, t_theirs = [], []
            for r in range(repeats):  # alternate which goes first
                for fn, times in ((ours, t_ours), (theirs, t_theirs))[:: 1 if r % 2 == 0 else -1]:
                    t0 = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t0)
            ratios = [a / b for a, b in zip(t_ours, t_theirs, strict=True)]
            results[name] = (min(t_ours) / min(t_theirs), statistics.median(ratios))
            print(f"  {name:20s} best/best {results[name][0]:.3f}  median of paired ratios {results[name][1]:.3f}",
                  flush=True)
    bookkeeping(kd, net, lat, sigmas, repeats=max(20, 4 * repeats))
    return results


def bookkeeping(kd, net, lat, sigmas, repeats: int) -> None:
    """The samplers' own cost, measured apart from the network: each pair on an analytic denoiser
    that costs almost nothing (best of many repeats, so little disturbed by other jobs), and the
    ratio it implies on the conv net: (NFE x one call + ours) / (NFE x one call + k-diffusion's)."""
    free = GaussianDenoiser(0.1, 0.5, img_channels=3, img_resolution=32)
    x = lat.double() * float(sigmas[0])
    sigma = torch.full((len(lat),), float(sigmas[0]), dtype=torch.float64)
    call = min(best_time(lambda: net(x, sigma), 3) for _ in range(3))
    print(f"bookkeeping on a free denoiser (best of {repeats}); one conv-net call {call * 1e3:.2f} ms")
    for name in KD_FAMILY:
        ours, theirs = _kd_pair(kd, free, name, lat, sigmas)
        counted = []
        counting = lambda x, s, labels=None: counted.append(1) or free(x, s, labels)  # noqa: E731, B023
        counting.round_sigma = free.round_sigma
        getattr(samplers, name)(counting, lat, sigmas, **({"randn_like": torch.randn_like}
                                                           if samplers.SAMPLERS[name].stochastic else {}))
        nfe = len(counted)
        t_ours, t_theirs = best_time(ours, repeats), best_time(theirs, repeats)
        implied = (nfe * call + t_ours) / (nfe * call + t_theirs)
        note = "  (its step sizes follow the denoiser: not the conv net's NFE)" if name == "dpm_adaptive" else ""
        print(f"  {name:20s} NFE {nfe:3d}  ours {t_ours * 1e3:7.2f} ms  k-diffusion {t_theirs * 1e3:7.2f} ms  "
              f"implied ratio on the conv net {implied:.4f}{note}", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["overhead", "nfe", "kdiffusion"], default=None, help="Run one of the parts.")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print_machine()
    if args.only in (None, "overhead"):
        overhead(args.batch, args.repeats)
    if args.only in (None, "nfe"):
        nfe_efficiency()
    if args.only in (None, "kdiffusion"):
        kdiffusion_overhead(args.batch, args.repeats)
