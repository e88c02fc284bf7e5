"""Markdown tables and the combined sweep plot of the shapes32 results (last step of
``shapes32_results.sh``): reads the sweep and exposure-bias CSVs in OUT_DIR.

    python benchmarks/shapes32_report.py OUT_DIR > OUT_DIR/results.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from samplerkit import plots

MODELS = ("shapes32-adm", "shapes32-adm-ip")
SAMPLERS = ("euler", "heun", "ddim", "ancestral")


def sweep_table(out: Path) -> pd.DataFrame:
    frames = [pd.read_csv(out / f"sweep-{m.removeprefix('shapes32-')}.csv").assign(model=m) for m in MODELS]
    return pd.concat(frames)[["model", "sampler", "steps", "nfe", "fid"]]


def markdown(df: pd.DataFrame, index: str | list[str], columns: str, values: str, fmt: str) -> str:
    wide = df.pivot_table(index=index, columns=columns, values=values, sort=False)
    head = f"| {' | '.join([index if isinstance(index, str) else ' / '.join(index), *map(str, wide.columns)])} |"
    rule = "|" + "---|" * (len(wide.columns) + 1)
    rows = [
        f"| {' / '.join(map(str, k)) if isinstance(k, tuple) else k} | {' | '.join(format(v, fmt) for v in row)} |"
        for k, row in zip(wide.index, wide.to_numpy(), strict=True)
    ]
    return "\n".join([head, rule, *rows])


def sweep_plot(df: pd.DataFrame, path: Path) -> None:
    fig, ax = plots.figure(figsize=(6, 4))
    for i, sampler in enumerate(SAMPLERS):
        for model, style in zip(MODELS, ("--", "-"), strict=True):
            d = df[(df.model == model) & (df.sampler == sampler)].sort_values("nfe")
            label = f"{sampler}, {model.removeprefix('shapes32-')}"
            ax.plot(d.nfe, d.fid, style, marker="o", color=f"C{i}", label=label)
    ax.set(xscale="log", xlabel="NFE", ylabel="FID (200 images vs 2,000 reference images)",
           title="shapes32: ADM (dashed) vs ADM-IP (solid)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    plots.save(fig, path)


def grids(out: Path) -> None:
    """grids.png: the data set, ADM and ADM-IP grids side by side (64 images each)."""
    from PIL import Image

    images = [Image.open(out / f"grid-{name}.png").convert("RGB") for name in ("data", *MODELS)]
    gap = 8
    canvas = Image.new("RGB", (sum(i.width for i in images) + gap * (len(images) - 1), images[0].height), "white")
    for k, image in enumerate(images):
        canvas.paste(image, (k * (image.width + gap), 0))
    canvas.save(out / "grids.png")


def loss_curves(out: Path) -> str:
    """loss.png: the training loss of both runs (log.csv rows every 100 steps, rolling mean of 10);
    returns a markdown table of the last 1,000 steps."""
    fig, ax = plots.figure(figsize=(6, 3.5))
    rows = []
    for model, style in zip(MODELS, ("--", "-"), strict=True):
        log = pd.read_csv(out / f"{model}-log.csv")
        ax.plot(log.step, log.loss.rolling(10, min_periods=1).mean(), style, label=model)
        tail = log[log.step > log.step.max() - 1000]
        rows.append(f"| {model} | {tail.loss.mean():.4f} | {tail.mse.mean():.4f} | {tail.vb.mean():.4f} | "
                    f"{log.images_per_s.median():.0f} |")
    ax.set(yscale="log", xlabel="step", ylabel="hybrid loss (rolling mean)", title="shapes32 training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    plots.save(fig, out / "loss.png")
    head = "| model | loss | L_simple (mse) | L_vlb term | images/s |\n|---|---|---|---|---|"
    return "\n".join([head, *rows])


def main(out: Path) -> None:
    grids(out)
    print("### Training (mean over the last 1,000 steps)\n")
    print(loss_curves(out))
    print()
    sweep = sweep_table(out)
    sweep_plot(sweep, out / "sweep.png")
    floor = json.loads((out / "fid-data-floor.json").read_text())["fid"]
    print(f"### NFE vs FID (200 fresh data-set images score {floor:.1f}: the floor at this sample size)\n")
    print(markdown(sweep, ["sampler", "nfe"], "model", "fid", ".1f"))
    eb = pd.read_csv(out / "exposure.csv")
    delta = eb[eb["mode"] == "delta"].assign(model=lambda d: d.model.str.replace("shapes32-", ""))
    print("\n### Exposure bias: delta_t, 100-step respaced chain, x0_hat unclipped (mean over images, 95 % "
          "interval in the CSV)\n")
    print(markdown(delta, "model", "t", "delta_mean", ".4f"))
    clip = pd.read_csv(out / "exposure-clip.csv").assign(model=lambda d: d.model.str.replace("shapes32-", ""))
    print("\n### Exposure bias: delta_t, 100-step respaced chain, x0_hat clipped to [-1, 1] at every step\n")
    print(markdown(clip, "model", "t", "delta_mean", ".4f"))
    fid = eb[eb["mode"] == "fid"].assign(model=lambda d: d.model.str.replace("shapes32-", ""))
    if len(fid):
        print("\n### Exposure bias: FID of x0_hat against x0 (Tab. 1's measurement), 100-step respaced chain "
              "(ancestral, learned variance), x0_hat unclipped\n")
        print(markdown(fid, "model", "t", "fid", ".1f"))
    nu = pd.read_csv(out / "exposure-nu.csv").assign(model=lambda d: d.model.str.replace("shapes32-", ""))
    print("\n### Prediction error nu_t (one call on forward-noised data, no chain; x0_hat clipped to [-1, 1]; "
          "t on the 100-step respaced grid)\n")
    print(markdown(nu[nu.t % 20 == 0], "model", "t", "nu", ".4f"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
