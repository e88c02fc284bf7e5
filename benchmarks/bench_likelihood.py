"""Likelihood benchmark: images/s of the variational bound and of the ODE likelihood on a built-in model.

All times are CPU time of this process (``time.process_time``, one torch thread), which other jobs
on a shared machine do not inflate; images/s are per core. VLB: the reference is the bare loop of
the same T network calls (the same x_t, levels and batch, no likelihood arithmetic), run in the
same process and alternated with the bound; their ratio is the bound's own overhead (goal:
>= 0.95). ODE: an adaptive number of network calls per image (NFE, reported), each with a
vector-Jacobian product; its cost per NFE is stated in units of one plain network call. The ODE runs at each
tolerance with the same Rademacher probes, so the change in bits/dim between tolerances is the
solver's error at the looser one.

    python benchmarks/bench_likelihood.py [--model shapes32-adm-ip] [--batch 2] [--tols 1e-3,1e-4,1e-5]
                                          [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import print_machine

import samplerkit as sk
from samplerkit.data import shapes, to_model_space
from samplerkit.diffusion import q_sample, sigma_from_alpha_bar


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def main(model: str, batch: int, tols: list[float], repeats: int) -> None:
    print_machine()
    net = sk.load(model).eval()
    x0 = to_model_space(shapes(np.arange(batch), seed=1)[0]).contiguous()  # held-out images
    alpha_bar = net.training_alpha_bar()
    T = alpha_bar.numel()
    sigma = torch.full((batch,), float(sigma_from_alpha_bar(alpha_bar[T // 2])))
    with torch.no_grad():
        net(x0, sigma)  # warm-up
        forward = best_of(lambda: net(x0, sigma), repeats)
    print(f"{model}, batch {batch}, {torch.get_num_threads()} thread(s): one network call {forward * 1e3:.1f} ms "
          f"CPU ({batch / forward:.1f} images/s)")

    def calls_only():
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for t in reversed(range(T)):
                ab = alpha_bar[t]
                x_t = q_sample(x0.double(), ab, torch.randn(x0.shape, generator=g, dtype=x0.dtype).double())
                net.denoise_with_variance(x_t / ab.sqrt(), sigma_from_alpha_bar(ab).expand(batch))

    def bound():
        g = torch.Generator().manual_seed(0)
        return sk.likelihood.vlb_terms(net, x0, randn_like=lambda x: torch.randn(x.shape, generator=g,
                                                                                 dtype=x.dtype))

    ratios, vlb_seconds, call_seconds = [], [], []
    for _ in range(repeats):  # interleaved pairs
        t0 = time.process_time()
        calls_only()
        t1 = time.process_time()
        vlb = bound()
        t2 = time.process_time()
        ratios.append((t1 - t0) / (t2 - t1))
        vlb_seconds.append(t2 - t1)
        call_seconds.append((t1 - t0) / T)
    print(f"  vlb: {batch / min(vlb_seconds):.4f} images/s (best of {repeats}; {T} calls per image); throughput "
          f"relative to the same {T} calls alone: {', '.join(f'{r:.3f}' for r in ratios)} (goal >= 0.95); "
          f"bits/dim {vlb.bpd.mean():.4f}")

    probes = (torch.randint(0, 2, (1, *x0.shape), generator=torch.Generator().manual_seed(1)) * 2 - 1).double()
    previous = None
    for tol in tols:
        t0 = time.process_time()
        r = sk.likelihood.ode_nll(net, x0, atol=tol, rtol=tol, probe_noise=probes)
        seconds = time.process_time() - t0
        nfe = r.nfe.double()
        per_nfe = seconds / float(nfe.max()) / min(call_seconds)  # the batch runs until its slowest image is done
        change = f"; change from the previous tolerance {float((r.bpd - previous).abs().max()):.4f} bits/dim (max)" \
            if previous is not None else ""
        print(f"  ode atol = rtol = {tol:g}: {batch / seconds:.4f} images/s, NFE mean {nfe.mean():.0f} "
              f"(min {nfe.min():.0f}, max {nfe.max():.0f}), {per_nfe:.2f}x a plain call's time per NFE; "
              f"bits/dim {r.bpd.mean():.4f}{change}")
        previous = r.bpd


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes32-adm-ip")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--tols", default="1e-3,1e-4,1e-5")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    main(args.model, args.batch, [float(t) for t in args.tols.split(",")], args.repeats)
