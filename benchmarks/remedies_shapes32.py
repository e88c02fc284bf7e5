"""Exposure-bias remedies without retraining, chosen on held-out seeds and measured with paired
intervals: Epsilon Scaling (Ning et al. 2024 (ES)) and the Time-Shift sampler (Li et al. 2024
(TS), Alg. 3's window) on the built-in shapes32-adm, ancestral sampler with learned variance and
x0 clipped, at 20 and 100 respaced steps.

Each phase writes one CSV (``<prefix>-<phase>.csv``):

* ``es-select``: lambda = b (uniform) for every b of ``--es-grid`` on the selection seeds, and the
  linear schedule lambda(t) = b + k t once (``--es-linear-top``: lambda from 1 at the last step to
  that value at the first, t the step index of the run's grid);
* ``ts-select``: every (window, cutoff) of ``--ts-grid`` on the selection seeds;
  (the grid may differ per step count: run the phase once per ``--steps``; the rows of the
  other step counts in the CSV stay);
* ``es-eval`` / ``ts-eval``: the choice of each step count (lowest FID on the selection seeds)
  on the evaluation seeds.

Every row carries FID and KID with bootstrap intervals and the paired difference to the plain
sampler (lambda = 1, no shift) on the same seeds and noise. Nothing is tuned on the evaluation
seeds. Cells are cached (Inception features) under ``--cache``, so the phases share the plain runs
and a stopped phase resumes.

    python benchmarks/remedies_shapes32.py --phase es-select --ref shapes32-ref-kid.npz \\
        --prefix benchmarks/results/remedies2
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import samplerkit as sk
from samplerkit.generate import generate, make_sampler
from samplerkit.metrics import evaluate, inception, intervals, load_statistics, reference, statistics_of_images
from samplerkit.output import atomic_csv
from samplerkit.remedies import Remedies
from samplerkit.seeds import parse_seeds

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line, print_machine  # noqa: E402

METRICS = ("fid", "kid")
COLUMNS = ["phase", "variant", "eps_scaler", "eps_slope", "ts_window", "ts_cutoff", "steps", "nfe", "seeds",
           "n_images", "fid", "fid_lo", "fid_hi", "kid", "kid_std", "kid_lo", "kid_hi", "fid_diff", "fid_diff_lo",
           "fid_diff_hi", "kid_diff", "kid_diff_lo", "kid_diff_hi", "selected", "seconds", "machine"]


def variant_name(v: dict) -> str:
    """'plain', 'ES1.002', 'ES1+2.1e-04t', 'TS80/300'."""
    if v.get("ts_window") is not None:
        return f"TS{v['ts_window']}/{v['ts_cutoff']}"
    if v.get("eps_scaler") is not None:
        return f"ES{v['eps_scaler']:g}" + (f"{v['eps_slope']:+.2e}t" if v.get("eps_slope") else "")
    return "plain"


def remedies_of(v: dict) -> Remedies | None:
    if v.get("ts_window") is not None:
        return Remedies.from_options(time_shift=True, ts_window=v["ts_window"], ts_cutoff=v["ts_cutoff"])
    if v.get("eps_scaler") is not None:
        return Remedies.from_options(eps_scaler=v["eps_scaler"], eps_scaler_slope=v.get("eps_slope") or None)
    return None


def cell(net, features, v: dict, steps: int, seeds_text: str, cache: Path):
    """(statistics with pool features, generation+Inception seconds) of one cell, from the cache if there."""
    path = cache / f"{variant_name(v)}-{steps}-{seeds_text}.npz"
    if path.exists():
        return load_statistics(path), float(path.with_suffix(".seconds").read_text())
    t0 = time.perf_counter()
    prepared = make_sampler(net, "ancestral", steps, remedies=remedies_of(v))
    batches = (x for _, x, _ in generate(net, prepared, parse_seeds(seeds_text), batch_size=100))
    stats = statistics_of_images(batches, features, METRICS, keep_feats=True)
    seconds = time.perf_counter() - t0
    stats.save(path)
    path.with_suffix(".seconds").write_text(f"{seconds:.1f}")
    return stats, seconds


def measure(ctx, phase: str, variants: list[dict], steps: int, seeds_text: str) -> list[dict]:
    """One row per variant (plain first) at ``steps`` on ``seeds_text``, paired with plain."""
    base, _ = cell(ctx.net, ctx.features, {}, steps, seeds_text, ctx.cache)
    rows = []
    for v in [{}] + variants:
        stats, seconds = cell(ctx.net, ctx.features, v, steps, seeds_text, ctx.cache)
        values = evaluate(stats, ctx.ref, METRICS)
        values.update(intervals(stats, ctx.ref, METRICS, ctx.rounds, seed=0))
        if v:
            values.update({k: x for k, x in intervals(base, ctx.ref, METRICS, ctx.rounds, seed=0, other=stats).items()
                           if "_diff" in k})
        rows.append(dict(phase=phase, variant=variant_name(v), eps_scaler=v.get("eps_scaler", ""),
                         eps_slope=v.get("eps_slope", ""), ts_window=v.get("ts_window", ""),
                         ts_cutoff=v.get("ts_cutoff", ""), steps=steps, nfe=steps, seeds=seeds_text,
                         n_images=len(stats.feats), seconds=round(seconds, 1), machine=ctx.machine, **values))
        r = rows[-1]
        diff = f"  vs plain {r['fid_diff']:+.2f} [{r['fid_diff_lo']:+.2f}, {r['fid_diff_hi']:+.2f}]" if v else ""
        print(f"{phase} {steps} steps {r['variant']}: FID {r['fid']:.2f} KID {r['kid'] * 1e3:.2f}e-3{diff} "
              f"({seconds:.0f} s)", flush=True)
    return rows


def mark_selected(rows: list[dict]) -> None:
    """selected = 1 on the lowest-FID row of each step count (plain included; the linear schedule excluded)."""
    for steps in {r["steps"] for r in rows}:
        pool = [r for r in rows if r["steps"] == steps and not r["eps_slope"]]
        best = min(pool, key=lambda r: r["fid"])
        for r in rows:
            if r["steps"] == steps:
                r["selected"] = int(r is best)


def chosen(select_csv: str, steps: int) -> dict:
    """The variant selected at ``steps`` in a selection CSV ({} = plain)."""
    for r in csv.DictReader(open(select_csv)):
        if int(r["steps"]) == steps and r["selected"] == "1":
            if r["ts_window"]:
                return {"ts_window": int(r["ts_window"]), "ts_cutoff": int(r["ts_cutoff"])}
            if r["eps_scaler"] and float(r["eps_scaler"]) != 1.0:
                return {"eps_scaler": float(r["eps_scaler"])}
            return {}
    raise SystemExit(f"{select_csv}: no selected row at {steps} steps; run the selection phase first")


def variants_for(args, steps: int) -> list[dict]:
    if args.phase == "es-select":
        out = [{"eps_scaler": b} for b in (float(s) for s in args.es_grid.split(",")) if b != 1.0]
        if args.es_linear_top:
            out.append({"eps_scaler": 1.0, "eps_slope": (args.es_linear_top - 1.0) / (steps - 1)})
        return out
    if args.phase == "ts-select":
        return [{"ts_window": int(w), "ts_cutoff": int(c)}
                for w, c in (pair.split("/") for pair in args.ts_grid.split(","))]
    pick = chosen(f"{args.prefix}-{args.phase.split('-')[0]}-select.csv", steps)
    return [pick] if pick else []


class Context:
    pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phase", required=True, choices=["es-select", "es-eval", "ts-select", "ts-eval"])
    p.add_argument("--steps", default="20,100")
    p.add_argument("--es-grid", default="1.0,1.001,1.002,1.003,1.005")
    p.add_argument("--es-linear-top", type=float, default=1.004, help="linear lambda at the first step (0: none)")
    p.add_argument("--ts-grid", default="40/300,80/300,120/300,40/200,80/200,120/200", help="window/cutoff list")
    p.add_argument("--select-seeds", default="1000-1099")
    p.add_argument("--eval-seeds", default="0-199")
    p.add_argument("--rounds", type=int, default=1000)
    p.add_argument("--ref", required=True, help="reference statistics with pool features (fid-ref --metrics fid,kid)")
    p.add_argument("--prefix", default="benchmarks/results/remedies2")
    p.add_argument("--cache", default="out/remedies2-cells")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    ctx = Context()
    ctx.machine = machine_line(print_machine())
    ctx.net, ctx.features, ctx.rounds = sk.load("shapes32-adm"), inception(), args.rounds
    ctx.ref = reference(args.ref, ctx.features, METRICS)
    ctx.cache = Path(args.cache)
    ctx.cache.mkdir(parents=True, exist_ok=True)
    seeds = args.select_seeds if args.phase.endswith("select") else args.eval_seeds
    rows = []
    for steps in (int(s) for s in args.steps.split(",")):
        rows += measure(ctx, args.phase, variants_for(args, steps), steps, seeds)
    if args.phase.endswith("select"):
        mark_selected(rows)
    out = f"{args.prefix}-{args.phase}.csv"
    done = {r["steps"] for r in rows}
    if Path(out).exists():  # rows of other step counts (another --steps run of this phase) stay
        rows = [r for r in csv.DictReader(open(out)) if int(r["steps"]) not in done] + rows
    atomic_csv(out, COLUMNS, [{c: r.get(c, "") for c in COLUMNS} for r in rows])
    print(f"wrote {out}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
