"""Figures without a display: matplotlib figures on the Agg canvas, written atomically.

No pyplot and no global backend switch: a :class:`matplotlib.figure.Figure` is made on its own
Agg canvas, so plotting works on headless machines and leaves the caller's matplotlib state alone.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from .output import atomic_write


def figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6, 4), **subplots):
    """(fig, axes) of a new figure on an Agg canvas; ``axes`` as ``Figure.subplots`` returns them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **subplots)


def save(fig, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` atomically, in the format its suffix names (PNG when none)."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi)
    atomic_write(path, buf.getvalue())
    return path


def lines(ax) -> dict[str, tuple[list[float], list[float]]]:
    """label -> (x, y) of every labelled line on ``ax``: the data the figure shows."""
    return {line.get_label(): ([float(v) for v in line.get_xdata()], [float(v) for v in line.get_ydata()])
            for line in ax.get_lines() if not line.get_label().startswith("_")}


def label_boxes(fig, ax) -> list:
    """Window extents of the visible x tick labels of ``ax`` after drawing ``fig``, left to right."""
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
    return sorted(boxes, key=lambda b: b.x0)


def spaced_xticks(fig, ax, values, pad_px: float = 4.0) -> list[float]:
    """Put x ticks, labelled with their values and no minor labels, at those of ``values`` whose
    labels do not overlap (``pad_px`` apart), smallest first and the largest always kept (a log
    axis with the measured NFE as ticks); returns the ticks kept. Call it once the layout is final
    (after ``tight_layout``)."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    values = sorted(set(values))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(values)
    fig.canvas.draw()
    boxes = {v: t.get_window_extent() for v, t in zip(values, ax.get_xticklabels(), strict=True)}
    kept: list[float] = []
    for v in values:
        if kept and boxes[v].x0 < boxes[kept[-1]].x1 + pad_px:
            if v != values[-1]:
                continue
            while kept and boxes[v].x0 < boxes[kept[-1]].x1 + pad_px:
                kept.pop()
        kept.append(v)
    ax.set_xticks(kept)
    return kept


def clipped(row: dict) -> bool | None:
    """Whether a sweep row's sampler clipped x0 to [-1, 1]: its ``clip_denoised`` setting, as a
    column or inside the row's JSON ``settings``; None when the row does not say."""
    value = row.get("clip_denoised", "")
    if str(value) == "" and str(row.get("settings", "")).startswith("{"):
        value = json.loads(row["settings"]).get("clip_denoised", "")
    value = str(value).strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    return None


def clip_suffixes(rows) -> list[str]:
    """' (clip)' / ' (no clip)' for each row's legend label once any row clipped (a clipped ddim
    beside an unclipped heun is not only a solver difference); all '' when none did."""
    flags = [clipped(r) for r in rows]
    if True not in flags:
        return ["" for _ in flags]
    return [{True: " (clip)", False: " (no clip)", None: ""}[f] for f in flags]


def with_clip_column(df, rows, after: str = "sampler"):
    """``df`` (one line per row of ``rows``) with a 'clip' column (yes / no) after ``after`` once
    any row clipped x0; unchanged when none did."""
    flags = [clipped(r) for r in rows]
    if True not in flags:
        return df
    df.insert(list(df.columns).index(after) + 1, "clip", [{True: "yes", False: "no", None: "-"}[f] for f in flags])
    return df
