"""Autoguidance in miniature (Karras et al. 2024, *Guiding a Diffusion Model with a Bad Version of
Itself*): a built-in EDM model guided by a smaller, shorter-trained version of itself, D = D_g +
w·(D − D_g), Heun 18 steps on EDM's grid, at several weights w.

The weight is chosen on held-out seeds (lowest FID there); every weight is then measured on the
evaluation seeds, with bootstrap intervals of FID and KID and the paired difference to w = 1 (the
unguided model) on the same seeds. Nothing is tuned on the evaluation images.

    python benchmarks/autoguidance_shapes32.py --net shapes32-edm --gnet shapes32-edm-xs \\
        --csv benchmarks/results/autoguidance-shapes32-edm.csv

Reference: the first 2,000 images of builtin:shapes32 with their Inception features (as the README's
other tables). Machine-tagged. ``--phase select`` and ``--phase eval`` split the run in two processes
(one core each): select writes the choice (``<csv>.select.json``), eval measures every weight and waits
for that file before writing the CSV with the chosen row marked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import samplerkit as sk
from samplerkit.generate import generate, make_sampler
from samplerkit.metrics import evaluate, inception, intervals, reference, statistics_of_images
from samplerkit.output import atomic_csv
from samplerkit.seeds import parse_seeds

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line, print_machine  # noqa: E402

METRICS = ("fid", "kid")
COLUMNS = ["net", "gnet", "weight", "interval", "seeds", "n_images", "steps", "nfe_per_image", "fid", "fid_lo",
           "fid_hi", "kid", "kid_lo", "kid_hi", "fid_diff", "fid_diff_lo", "fid_diff_hi", "kid_diff", "kid_diff_lo",
           "kid_diff_hi", "selected", "seconds", "machine"]


def statistics(net, gnet, weight: float, seeds: list[int], steps: int, features, interval=None):
    """Inception statistics (with pool features) of Heun-``steps`` images of the guided model on ``seeds``."""
    guided = net if weight == 1 else sk.guidance.guided(net, gnet, weight, interval=interval)
    prepared = make_sampler(guided, "heun", steps)
    batches = (x for _, x, _ in generate(guided, prepared, seeds, batch_size=100))
    return statistics_of_images(batches, features, METRICS, keep_feats=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="shapes32-edm")
    p.add_argument("--gnet", default="shapes32-edm-xs")
    p.add_argument("--weights", default="1,1.5,2,2.5,3")
    p.add_argument("--interval", default="", help="sigma_lo,sigma_hi (empty: guide everywhere)")
    p.add_argument("--select-seeds", default="1000-1199")
    p.add_argument("--eval-seeds", default="0-199")
    p.add_argument("--steps", type=int, default=18)
    p.add_argument("--rounds", type=int, default=1000)
    p.add_argument("--ref", default="builtin:shapes32",
                   help="reference statistics with pool features (samplerkit fid-ref --metrics fid,kid), or the data")
    p.add_argument("--csv", required=True)
    p.add_argument("--phase", choices=("both", "select", "eval"), default="both")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    info = print_machine()
    weights = [float(w) for w in args.weights.split(",")]
    interval = tuple(float(s) for s in args.interval.split(",")) if args.interval else None
    net, gnet = sk.load(args.net), sk.load(args.gnet)
    features = inception()
    ref = reference(args.ref, features, METRICS, num_images=2000)
    select_path = Path(args.csv).with_suffix(".select.json")
    if args.phase in ("both", "select"):
        select(args, net, gnet, features, ref, weights, interval, select_path)
    if args.phase in ("both", "eval"):
        measure(args, net, gnet, features, ref, weights, interval, select_path, info)


def select(args, net, gnet, features, ref, weights, interval, select_path: Path) -> None:
    """FID of every weight on the held-out seeds; the lowest is the choice, written to ``select_path``."""
    select_fid = {}
    for w in weights:
        t0 = time.perf_counter()
        s = statistics(net, gnet, w, parse_seeds(args.select_seeds), args.steps, features, interval)
        select_fid[w] = evaluate(s, ref, METRICS)
        print(f"held-out w={w:g}: FID {select_fid[w]['fid']:.2f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    best = min(weights, key=lambda w: select_fid[w]["fid"])
    select_path.write_text(json.dumps({"selected_weight": best, "held_out_seeds": args.select_seeds,
                                       "held_out": {str(w): v for w, v in select_fid.items()}}, indent=1))
    print(f"selected w = {best:g} on seeds {args.select_seeds}")


def measure(args, net, gnet, features, ref, weights, interval, select_path: Path, info) -> None:
    """Every weight on the evaluation seeds, paired with w = 1; the CSV once the choice is known."""
    rows = []
    eval_seeds = parse_seeds(args.eval_seeds)
    base = statistics(net, gnet, 1.0, eval_seeds, args.steps, features)
    for w in weights:
        t0 = time.perf_counter()
        s = base if w == 1 else statistics(net, gnet, w, eval_seeds, args.steps, features, interval)
        seconds = time.perf_counter() - t0
        values = evaluate(s, ref, METRICS)
        values.update(intervals(base, ref, METRICS, args.rounds, seed=0, other=s))
        values.update({k: v for k, v in intervals(s, ref, METRICS, args.rounds, seed=0).items()})
        nfe = 2 * args.steps - 1
        rows.append(dict(net=args.net, gnet=args.gnet if w != 1 else "", weight=w, interval=args.interval,
                         seeds=args.eval_seeds, n_images=len(eval_seeds), steps=args.steps,
                         nfe_per_image=nfe * (2 if w != 1 else 1), seconds=round(seconds, 1),
                         machine=machine_line(info), **values))
        print(f"eval w={w:g}: FID {values['fid']:.2f} [{values['fid_lo']:.2f}, {values['fid_hi']:.2f}]  "
              f"vs w=1 {values['fid_diff']:+.2f} [{values['fid_diff_lo']:+.2f}, {values['fid_diff_hi']:+.2f}]  "
              f"KID {values['kid'] * 1e3:.1f}e-3 diff {values['kid_diff'] * 1e3:+.1f}e-3 "
              f"[{values['kid_diff_lo'] * 1e3:+.1f}, {values['kid_diff_hi'] * 1e3:+.1f}]", flush=True)
    while not select_path.exists():  # --phase eval: the selection runs in another process
        time.sleep(10)
    best = json.loads(select_path.read_text())["selected_weight"]
    for row in rows:
        row["selected"] = int(row["weight"] == best)
    atomic_csv(args.csv, COLUMNS, [{c: r.get(c, "") for c in COLUMNS} for r in rows])
    print(f"selected w = {best:g} on seeds {args.select_seeds}; wrote {args.csv}")

if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
