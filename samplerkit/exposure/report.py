"""Tables, figures and image pairs of an exposure-bias run (Ning et al. 2023, Tab. 1, Tab. 6,
Fig. 2, Fig. 5, Fig. 6), all read from the CSV rows."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import plots, terminal
from ..data import to_uint8
from ..output import atomic_write
from .measures import INTERVAL

STATISTIC = {"delta": "delta_mean", "fid": "fid", "nu": "nu", "normality": "sw_reject_rate",
             "eps-norm": "eps_norm_ratio"}


def measured_rows(rows: Sequence[dict], mode: str) -> list[dict]:
    """The rows of ``mode`` that hold its statistic."""
    return [r for r in rows if r["mode"] == mode and str(r.get(STATISTIC[mode], "")) != ""]


def t_full(row: dict) -> int:
    """The start level of a row as the paper's t on the full schedule (old CSVs: the t column)."""
    return int(row.get("t_full") or row["t"])


def t_label(row: dict) -> str:
    """'t = 600 of T = 1000', or for a chain run on a respaced schedule
    't = 596 of T = 1000 via 60 respaced steps'."""
    T, T_full = int(row["T"]), int(row.get("T_full") or row["T"])
    text = f"t = {t_full(row)} of T = {T_full}"
    if T != T_full and row["mode"] in ("delta", "fid"):
        text += f" via {int(row['t'])} respaced steps"
    elif T != T_full:
        text += f" (grid of a {T}-step respaced chain)"
    return text


def _interval(mean, low, high, fmt: str = ".4f") -> str:
    return f"{float(mean):{fmt}} [{float(low):{fmt}}, {float(high):{fmt}}]"


def table(rows: Sequence[dict], mode: str) -> str:
    """A printed table: one line per t, one column per model (Tab. 1 / Tab. 6 layout); for delta
    with several models also each model's paired difference to the first."""
    rows = measured_rows(rows, mode)
    if not rows:
        return ""
    models = list(dict.fromkeys(r["model"] for r in rows))
    cell = {(r["model"], t_label(r)): r for r in rows}
    level = {t_label(r): t_full(r) for r in rows}
    labels = sorted(level, key=level.get)
    title = {"delta": f"delta_t (Alg. 4): mean [{INTERVAL} interval]", "fid": "FID of x0_hat vs real (Tab. 1)",
             "nu": "nu_t (Sec. 5.3): std of e_t = x0_hat - x0", "normality": "Shapiro-Wilk rejection rate (App. A.5)",
             "eps-norm": "||eps_hat||_2 (Ning et al. 2024, Fig. 6): sampling chain / forward chain = ratio"}
    columns = [(m, m) for m in models]
    diffs = [(m, f"{m} - {r['baseline']}") for m in models for r in rows
             if mode == "delta" and r["model"] == m and str(r.get("diff_mean", "")) != ""]
    columns += list(dict.fromkeys(diffs))
    body = []
    for label in labels:
        texts = []
        for i, (m, _) in enumerate(columns):
            r = cell.get((m, label))
            if r is None or (i >= len(models) and str(r.get("diff_mean", "")) == ""):
                texts.append("-")
            elif i >= len(models):
                texts.append(_interval(r["diff_mean"], r["diff_ci_low"], r["diff_ci_high"], "+.2e"))
            elif mode == "delta":
                texts.append(_interval(r["delta_mean"], r["delta_ci_low"], r["delta_ci_high"]))
            elif mode == "eps-norm":
                texts.append(f"{float(r['eps_norm_sample']):.3f} / {float(r['eps_norm_forward']):.3f} = "
                             f"{float(r['eps_norm_ratio']):.4f}")
            else:
                texts.append(f"{float(r[STATISTIC[mode]]):.4f}")
        body.append((label, texts))
    # columns in blocks that fit the terminal's 100 columns, each block with the t labels again
    out = [title[mode], *terminal.column_blocks(["", *(label for label, _ in body)], [name for _, name in columns],
                                                [texts for _, texts in body])]
    if len(columns) > len(models):
        out.append(f"  differences: per image, same x0 and noise, mean [{INTERVAL} interval of the paired mean]")
    if mode == "normality":
        for m in models:
            rs = [r for r in rows if r["model"] == m]
            rej = sum(float(r["sw_reject_rate"]) * int(r["sw_tests"]) for r in rs)
            tests = sum(int(r["sw_tests"]) for r in rs)
            out.append(f"  {m}: overall rejection rate {rej / max(tests, 1):.4f} over {tests} tests")
    return "\n".join(out)


def nu_text(name: str, s: dict) -> str:
    """E_t[nu_t] with and without the endpoints, and which eps_hat it is of; the range Sec. 5.3
    searched gamma in only when the endpoints do not dominate the mean."""
    clip = "clipped to [-1, 1]" if s.get("clip_denoised", True) else "unclipped"
    interior = (f" ({s['nu_mean_interior']:.4f} without t = {s['t_first']} and t = {s['t_last']}, where nu = "
                f"{s['nu_first']:.4f} and {s['nu_last']:.4f})" if s["points"] > 2 else "")
    text = (f"{name}: E_t[nu_t] = {s['nu_mean']:.4f} over {s['points']} t values{interior}; "
            f"eps_hat = eps_theta(x_t, t) at the ground-truth x_t of Eq. 4, x0_hat {clip}.")
    if s["dominated"]:
        return text + (" The endpoints dominate the mean, so it says nothing about gamma"
                       + (" (rerun without --no-clip-denoised)." if not s.get("clip_denoised", True) else "."))
    return text + f" Sec. 5.3 searched a constant gamma on a grid in [0, E_t[nu_t]] = [0, {s['nu_mean']:.4f}]."


def eps_norm_text(name: str, s: dict) -> str:
    """The lambda the eps-norm ratio suggests, labelled as what it is."""
    clip = "clipped" if s.get("clip_denoised", True) else "unclipped"
    return (f"{name}: suggested eps_scaler (a suggestion, not a tuned value) = {s['suggested_eps_scaler']:.4f}, "
            f"the mean over {s['points']} t values of ||eps_hat|| along the sampling chain / along the forward chain "
            f"(x0_hat {clip}); Ning et al. 2024 (ES) choose lambda by FID, so sweep it around this value "
            "(samplerkit sweep --eps-scaler ...).")


def plot(rows: Sequence[dict], mode: str, path: str | Path):
    """delta_t (with its 95 % interval), FID, nu_t or the rejection rate against the paper's t
    (the start level on the full schedule), one line per model; a respaced chain says so in the
    title. Returns the saved figure, or None when there is nothing to plot."""
    rows = measured_rows(rows, mode)
    if not rows:
        return None
    fig, ax = plots.figure(figsize=(6, 4))
    for m in dict.fromkeys(r["model"] for r in rows):
        rs = sorted((r for r in rows if r["model"] == m), key=t_full)
        t = [t_full(r) for r in rs]
        if mode == "eps-norm":  # Ning et al. 2024 (ES), Fig. 6: both chains, one colour per model
            line, = ax.plot(t, [float(r["eps_norm_sample"]) for r in rs], label=f"{m}: sampling")
            ax.plot(t, [float(r["eps_norm_forward"]) for r in rs], linestyle="--", color=line.get_color(),
                    label=f"{m}: forward")
            continue
        ax.plot(t, [float(r[STATISTIC[mode]]) for r in rs], marker="o" if len(t) < 30 else None, label=m)
        if mode == "delta":
            ax.fill_between(t, [float(r["delta_ci_low"]) for r in rs], [float(r["delta_ci_high"]) for r in rs],
                            alpha=0.2)
    ylabels = {"delta": r"$\bar\delta_t$ (mean $|x_0-\hat x_0|$)", "fid": "FID", "nu": r"$\nu_t$",
               "normality": "Shapiro-Wilk rejection rate", "eps-norm": r"$\|\hat\epsilon\|_2$"}
    T_full = max(int(r.get("T_full") or r["T"]) for r in rows)
    respaced = [r for r in rows if int(r["T"]) != int(r.get("T_full") or r["T"])]
    ax.set_xlabel(f"t (of T = {T_full})")
    ax.set_ylabel(ylabels[mode])
    if respaced:
        last = max(respaced, key=t_full)
        ax.set_title(f"respaced chain of {int(last['T'])} steps: {t_label(last)}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    plots.save(fig, path)
    return fig


def plot_histograms(histograms: dict, path: str | Path):
    """Fig. 6: histograms of e_t^i for a few t and pixels i; the saved figure, or None."""
    if not histograms:
        return None
    keys = sorted(histograms)
    ncols = max(len(v) for v in histograms.values())
    fig, axes = plots.figure(len(keys), ncols, figsize=(3 * ncols, 2.4 * len(keys)), squeeze=False)
    for row, key in enumerate(keys):
        for col, (i, values) in enumerate(sorted(histograms[key].items())):
            ax = axes[row][col]
            ax.hist(values, bins=min(40, max(10, len(values) // 5)))
            ax.set_title(f"{key[0]}: t={key[1]}, i={i}", fontsize=8)
            ax.set_xlabel(r"$e_t^i$", fontsize=8)
    fig.tight_layout()
    plots.save(fig, path, dpi=100)
    return fig


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name if os.sep in name or "/" in name else name)


PAIR_ROWS = ("x0", "x0_hat")
PAD = 2


def pair_image(x0, x_hat) -> np.ndarray:
    """Fig. 5 as a uint8 HWC canvas: a label column on the left ('x0', 'x0_hat'), then k images of
    x0 on the top row and their x0_hat (clamped to [-1, 1]) below, PAD white pixels around each."""
    from PIL import Image, ImageDraw, ImageFont

    top, bottom = to_uint8(x0.float()), to_uint8(x_hat.float().clamp(-1, 1))
    k, H, W, _ = top.shape
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [probe.textbbox((0, 0), s, font=font) for s in PAIR_ROWS]
    label_w = max(b[2] for b in boxes) + 2 * PAD
    row_h = max(H, *(b[3] for b in boxes))
    canvas = Image.new("RGB", (label_w + k * (W + PAD) + PAD, 2 * row_h + 3 * PAD), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (text, images) in enumerate(zip(PAIR_ROWS, (top, bottom), strict=True)):
        y = PAD + r * (row_h + PAD)
        draw.text((PAD, y + (row_h - boxes[r][3]) // 2), text, fill="black", font=font)
        for j in range(k):
            canvas.paste(Image.fromarray(images[j]), (label_w + PAD + j * (W + PAD), y))
    return np.asarray(canvas)


def save_pairs(pairs: dict, directory: str | Path) -> list[Path]:
    """Fig. 5: for each (model, mode, t) a PNG of :func:`pair_image`, named ``<model>-<mode>-t<t>.png``."""
    from PIL import Image, PngImagePlugin

    directory = Path(directory)
    written = []
    for (model, mode, t), (x0, x_hat) in pairs.items():
        info = PngImagePlugin.PngInfo()
        info.add_text("Description", f"top row: {PAIR_ROWS[0]} (real); bottom row: {PAIR_ROWS[1]} "
                                     f"({model}, {mode}, t = {t})")
        buf = io.BytesIO()
        Image.fromarray(pair_image(x0, x_hat)).save(buf, format="PNG", pnginfo=info)
        path = directory / f"{safe_name(model)}-{mode}-t{t}.png"
        atomic_write(path, buf.getvalue())
        written.append(path)
    return written


def companion_path(path: str | Path, mode: str, first: str = "delta") -> Path:
    """The plot of the ``first`` mode asked for at ``path``; the others beside it as ``<stem>-<mode><suffix>``."""
    path = Path(path)
    return path if mode == first else path.with_name(f"{path.stem}-{mode}{path.suffix or '.png'}")
