"""Exposure bias of an autoguided model against the model alone (Ning et al. 2023, Alg. 4: delta_t),
on the same images and noise, with the paired per-image difference.

The guided denoiser D_g + w (D - D_g) (Karras et al. 2024) is a denoiser like any other, so the
exposure-bias harness measures it unchanged; the command line's ``exposure-bias`` takes no guidance
option, hence this script. A continuous-time EDM model is measured on the reference DDPM chain
(linear, 1,000 steps), here respaced to ``--respacing`` steps to keep the guided chains (two networks
per step) affordable on a CPU; rows say so in their settings column.

    python benchmarks/exposure_guided_shapes32.py --net shapes32-edm --gnet shapes32-edm-xs --weight 2 \\
        --csv benchmarks/results/exposure-guided-shapes32-edm.csv
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import pandas as pd
import torch
from _common import print_machine

import samplerkit as sk
from samplerkit.data import shapes, to_model_space
from samplerkit.exposure.harness import ModelSpec, Settings, run
from samplerkit.lookup import ModelRef


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="shapes32-edm")
    p.add_argument("--gnet", default="shapes32-edm-xs")
    p.add_argument("--weight", type=float, default=2.0)
    p.add_argument("--t", default="25,50,100", help="chain lengths, in steps of the respaced chain")
    p.add_argument("--respacing", default="100")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--csv", required=True)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print_machine()
    net, gnet = sk.load(args.net).eval(), sk.load(args.gnet).eval()
    guided = sk.guidance.guided(net, gnet, args.weight)
    specs = [ModelSpec(args.net, net, ModelRef.of(args.net).sha256()),
             ModelSpec(f"{args.net} + {args.gnet} w={args.weight:g}", guided, ModelRef.of(args.net).sha256())]
    x0 = to_model_space(shapes(np.arange(args.images))[0]).to(torch.float64)
    settings = Settings(modes=("delta",), t_values=tuple(int(t) for t in args.t.split(",")), respacing=args.respacing,
                        data="builtin:shapes32", batch=args.images)
    run(specs, x0, None, settings, csv_path=args.csv, show_progress=False)
    rows = pd.read_csv(args.csv)
    for _, r in rows.iterrows():
        diff = "" if pd.isna(r["diff_mean"]) else (f"  guided - model {r['diff_mean']:+.5f} "
                                                   f"[{r['diff_ci_low']:+.5f}, {r['diff_ci_high']:+.5f}]")
        print(f"{r['model']}: t {r['t']} of {r['T']} (t_full {r['t_full']}): delta {r['delta_mean']:.5f}{diff}")


if __name__ == "__main__":
    main()
