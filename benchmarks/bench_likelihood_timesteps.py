"""ODE likelihood of a discrete epsilon-model at its trained levels vs at continuous timesteps.

At the trained levels (``timesteps='trained'``) the network gets the index of the level nearest to
sigma, so D(x; sigma) jumps where sigma crosses the midpoint of two levels and the adaptive
Dormand-Prince solver shrinks its steps at each jump. With ``timesteps='continuous'`` the network
gets the real index between the levels (ln sigma interpolated), D is continuous in sigma, and the
solver can take long steps -- a deviation from the levels the model was trained on. Both runs use
the same images (held-out ``builtin:shapes32?seed=1``, indices 0 .. N-1), the same Rademacher probe
of each image (generator seeded with seed + index, as ``samplerkit nll``) and the same tolerances.
Prints per model and mode: mean NFE (min-max), mean bits/dim and the paired bits/dim difference.

    python benchmarks/bench_likelihood_timesteps.py [--models shapes32-adm,shapes32-adm-ip] [--n 8]
                                                    [--tol 1e-5] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import print_machine

import samplerkit as sk
from samplerkit.data import shapes, to_model_space
from samplerkit.likelihood import run as nll


def measure(model: str, n: int, tol: float) -> None:
    net = sk.load(model).eval()
    x0 = to_model_space(shapes(np.arange(n), seed=1)[0]).double()
    rows = {}
    for mode in ("trained", "continuous"):
        settings = nll.Settings(method="ode", atol=tol, rtol=tol, timesteps=mode)
        t0 = time.process_time()
        rows[mode] = nll.measure(net, x0, list(range(n)), None, settings)
        nfe = np.array([r["nfe"] for r in rows[mode]])
        bpd = np.array([r["bpd"] for r in rows[mode]])
        print(f"{model:<16} {mode:<10} N={n} tol {tol:g}: NFE mean {nfe.mean():.1f} "
              f"(min {nfe.min()}, max {nfe.max()}), "
              f"bits/dim {bpd.mean():.4f} (sd {bpd.std(ddof=1):.4f}), {time.process_time() - t0:.0f} CPU-s", flush=True)
    diff = np.array([c["bpd"] - t["bpd"] for c, t in zip(rows["continuous"], rows["trained"], strict=True)])
    print(f"{model:<16} continuous - trained bits/dim: mean {diff.mean():+.5f}, per image "
          f"{' '.join(f'{d:+.4f}' for d in diff)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="shapes32-adm,shapes32-adm-ip")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print_machine()
    for model in args.models.split(","):
        measure(model, args.n, args.tol)


if __name__ == "__main__":
    main()
