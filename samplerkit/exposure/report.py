"""Tables, figures and image pairs of an exposure-bias run (Ning et al. 2023, Tab. 1, Tab. 6,
Fig. 2, Fig. 5, Fig. 6), all read from the CSV rows."""

from __future__ import annotations

import io
import math
import os
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import plots, terminal
from ..data import to_uint8
from ..output import atomic_write
from ..results import cell_text
from .harness import KEY_COLUMNS
from .measures import INTERVAL, paired_difference

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


# ---------------------------------------------------------------------------------------------
# paired differences of delta: each remedy variant against its own base model, every model against
# the first; what the table and the plot show of them (content only: the layout is below)


def _row_key(row: dict) -> tuple[str, ...]:
    return tuple(cell_text(row.get(k, "")) for k in KEY_COLUMNS)


def base_model(name: str, models: Sequence[str]) -> str | None:
    """The model a remedy variant '<base>+ES..' / '<base>+TS..' was made from (the longest such
    name among ``models``), or None for a model that is no variant."""
    bases = [m for m in models if m != name and name.startswith(m + "+")]
    return max(bases, key=len) if bases else None


def time_shift_of(name: str) -> tuple[int, int] | None:
    """(window, cutoff) of a Time-Shift variant's name ('...+TS80/300', '...+TS80/300ref'), else None."""
    m = re.search(r"\+TS(\d+)/(\d+)(?:ref)?$", name)
    return (int(m[1]), int(m[2])) if m else None


def no_shift(row: dict, same: bool = False) -> str | None:
    """Why a Time-Shift variant's delta row equals its base model's, or None when it may not: the
    shift leaves every state at or below the cutoff t_c alone (Li et al. 2024, Alg. 3) and never
    moves the start x_t, so a chain starting at t - 1 <= t_c (or with window < 2) is the base chain;
    ``same``: the per-image values were found equal to the base's (no state was moved)."""
    ts = time_shift_of(row["model"])
    if ts is None:
        return None
    window, cutoff = ts
    if t_full(row) - 1 <= cutoff:
        return (f"no shift: the chain starts at t = {t_full(row)} (training timestep {t_full(row) - 1}), at or "
                f"below the cutoff t_c = {cutoff}")
    if window < 2:
        return f"no shift: window {window} holds no other timestep"
    if same:
        return "no shift: no state of the chain was moved (every image equals the base model's)"
    return None


def _paired(mine, base) -> dict | None:
    if mine is None or base is None or np.shape(mine) != np.shape(base):
        return None
    s = paired_difference(mine, base)
    return dict(mean=s["mean"], low=s["ci_low"], high=s["ci_high"], same=bool(np.array_equal(mine, base)))


def pairings(rows: Sequence[dict], per_image: dict | None = None) -> list[dict]:
    """The paired differences of delta rows: for each remedy variant, against its own base model
    (``kind`` 'remedy': the remedy's effect alone), and for every model after the first, against
    the first (``kind`` 'first': model and remedy together), unless that is the same pair. Each
    has model, against, kind, t (label), t_full, mean, low, high (nan without per-image values) and
    ``no_shift`` (the reason a Time-Shift row equals its base, or None).

    Against the first model the harness's ``diff_*`` columns are used; against another base the
    per-image values of both rows (``per_image``: :func:`read_per_image`), else the difference of
    the two means, which is exact, without an interval."""
    rows = measured_rows(rows, "delta")
    models = list(dict.fromkeys(r["model"] for r in rows))
    by_cell = {(r["model"], t_label(r)): r for r in rows}
    per_image = per_image or {}
    out = []
    for r in rows:
        base = base_model(r["model"], models)
        for kind, against in (("remedy", base), ("first", models[0])):
            if against is None or against == r["model"] or (kind == "first" and against == base):
                continue
            other = by_cell.get((against, t_label(r)))
            if other is None:
                continue
            d = _paired(per_image.get(_row_key(r)), per_image.get(_row_key(other)))
            if d is None and r.get("baseline") == against and str(r.get("diff_mean", "")) != "":
                d = dict(mean=float(r["diff_mean"]), low=float(r["diff_ci_low"]), high=float(r["diff_ci_high"]),
                         same=False)
            if d is None:
                d = dict(mean=float(r["delta_mean"]) - float(other["delta_mean"]), low=math.nan, high=math.nan,
                         same=False)
            same = d.pop("same") or (d["low"] == d["high"] == d["mean"] == 0.0)
            reason = no_shift(r, same) if kind == "remedy" else None
            out.append(dict(model=r["model"], against=against, kind=kind, t=t_label(r), t_full=t_full(r),
                            no_shift=reason, **d))
    return out


def _pair_text(p: dict) -> str:
    if p["no_shift"]:
        return "no shift *"
    if math.isnan(p["low"]):
        return f"{p['mean']:+.2e} [n/a]"
    return _interval(p["mean"], p["low"], p["high"], "+.2e")


def _cell_text(r: dict, mode: str) -> str:
    if mode == "delta":
        return _interval(r["delta_mean"], r["delta_ci_low"], r["delta_ci_high"])
    if mode == "eps-norm":
        return (f"{float(r['eps_norm_sample']):.3f} / {float(r['eps_norm_forward']):.3f} = "
                f"{float(r['eps_norm_ratio']):.4f}")
    return f"{float(r[STATISTIC[mode]]):.4f}"


def _pair_notes(pairs: Sequence[dict], first: str) -> list[str]:
    notes = ["  differences: per image, same x0 and noise, mean [" + INTERVAL + " interval of the paired mean]"]
    if any(p["kind"] == "remedy" for p in pairs):
        notes.append(f"  a remedy variant '<model>+...' minus its own model: the remedy alone; minus {first} "
                     f"(the first model): model and remedy together")
    if any(math.isnan(p["low"]) and not p["no_shift"] for p in pairs):
        notes.append("  [n/a]: no interval, the per-image values of this pair were not given (the harness keeps "
                     "them beside its CSV: read_per_image); the mean difference is exact")
    for reason in dict.fromkeys(p["no_shift"] for p in pairs if p["no_shift"]):
        rows = ", ".join(dict.fromkeys(f"{p['model']} at {p['t']}" for p in pairs if p["no_shift"] == reason))
        notes.append(f"  * {reason} ({rows})")
    return notes


TITLES = {"delta": f"delta_t (Alg. 4): mean [{INTERVAL} interval]", "fid": "FID of x0_hat vs real (Tab. 1)",
          "nu": "nu_t (Sec. 5.3): std of e_t = x0_hat - x0", "normality": "Shapiro-Wilk rejection rate (App. A.5)",
          "eps-norm": "||eps_hat||_2 (Ning et al. 2024, Fig. 6): sampling chain / forward chain = ratio"}


def table_content(rows: Sequence[dict], mode: str, per_image: dict | None = None):
    """What the table of ``mode`` holds: (title, t labels in order, columns [(header, {t label:
    text})], notes). delta adds the paired differences of :func:`pairings`."""
    rows = measured_rows(rows, mode)
    if not rows:
        return None
    models = list(dict.fromkeys(r["model"] for r in rows))
    level = {t_label(r): t_full(r) for r in rows}
    labels = sorted(level, key=level.get)
    columns = [(m, {t_label(r): _cell_text(r, mode) for r in rows if r["model"] == m}) for m in models]
    notes = []
    if mode == "delta":
        pairs = pairings(rows, per_image)
        for key in sorted(dict.fromkeys((p["kind"] != "remedy", p["model"], p["against"]) for p in pairs),
                          key=lambda k: k[0]):  # the remedies against their own models first
            cells = {p["t"]: _pair_text(p) for p in pairs if (p["kind"] != "remedy", p["model"], p["against"]) == key}
            columns.append((f"{key[1]} - {key[2]}", cells))
        if pairs:
            notes = _pair_notes(pairs, models[0])
    if mode == "normality":
        for m in models:
            rs = [r for r in rows if r["model"] == m]
            rej = sum(float(r["sw_reject_rate"]) * int(r["sw_tests"]) for r in rs)
            tests = sum(int(r["sw_tests"]) for r in rs)
            notes.append(f"  {m}: overall rejection rate {rej / max(tests, 1):.4f} over {tests} tests")
    return TITLES[mode], labels, columns, notes


def table(rows: Sequence[dict], mode: str, per_image: dict | None = None) -> str:
    """A printed table: one line per t, one column per model (Tab. 1 / Tab. 6 layout); for delta
    also the paired differences (:func:`pairings`: each remedy variant against its own model, each
    model against the first), with per-image values from ``per_image``
    (:func:`~samplerkit.exposure.harness.read_per_image`)."""
    content = table_content(rows, mode, per_image)
    return "" if content is None else layout(*content)


def layout(title: str, labels: Sequence[str], columns: Sequence[tuple[str, dict]], notes: Sequence[str]) -> str:
    """The table as text: a column per (header, cells), right-aligned, '-' where a cell is missing."""
    body = [(label, [cells.get(label, "-") for _, cells in columns]) for label in labels]
    # columns in blocks that fit the terminal's 100 columns, each block with the t labels again
    out = [title, *terminal.column_blocks(["", *labels], [name for name, _ in columns], [texts for _, texts in body])]
    wrapped = [line for note in notes for line in textwrap.wrap(note, terminal.WIDTH, subsequent_indent="    ",
                                                                drop_whitespace=False) or [note]]
    return "\n".join(out + wrapped)


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


YLABELS = {"delta": r"$\bar\delta_t$ (mean $|x_0-\hat x_0|$)", "fid": "FID", "nu": r"$\nu_t$",
           "normality": "Shapiro-Wilk rejection rate", "eps-norm": r"$\|\hat\epsilon\|_2$"}


def plot(rows: Sequence[dict], mode: str, path: str | Path, per_image: dict | None = None):
    """delta_t, FID, nu_t or the rejection rate against the paper's t (the start level on the full
    schedule), one line per model; a respaced chain says so in the title. For delta with several
    models a second panel holds the paired differences (:func:`pairings`, each with its 95 %
    interval as error bars), which overlapping per-model bands would hide. Returns the saved
    figure, or None when there is nothing to plot."""
    rows = measured_rows(rows, mode)
    if not rows:
        return None
    pairs = pairings(rows, per_image) if mode == "delta" else []
    fig, axes = plots.figure(2 if pairs else 1, 1, figsize=(6, 6.5 if pairs else 4), squeeze=False)
    ax = axes[0][0]
    for m in dict.fromkeys(r["model"] for r in rows):
        rs = sorted((r for r in rows if r["model"] == m), key=t_full)
        t = [t_full(r) for r in rs]
        if mode == "eps-norm":  # Ning et al. 2024 (ES), Fig. 6: both chains, one colour per model
            line, = ax.plot(t, [float(r["eps_norm_sample"]) for r in rs], label=f"{m}: sampling")
            ax.plot(t, [float(r["eps_norm_forward"]) for r in rs], linestyle="--", color=line.get_color(),
                    label=f"{m}: forward")
            continue
        ax.plot(t, [float(r[STATISTIC[mode]]) for r in rs], marker="o" if len(t) < 30 else None, label=m)
    T_full = max(int(r.get("T_full") or r["T"]) for r in rows)
    respaced = [r for r in rows if int(r["T"]) != int(r.get("T_full") or r["T"])]
    ax.set_ylabel(YLABELS[mode])
    if respaced:
        last = max(respaced, key=t_full)
        ax.set_title(f"respaced chain of {int(last['T'])} steps: {t_label(last)}", fontsize=9)
    if pairs:
        _plot_pairings(axes[1][0], pairs)
    for row in axes:
        row[0].set_xlabel(f"t (of T = {T_full})")
        row[0].grid(alpha=0.3)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    plots.save(fig, path)
    return fig


def _plot_pairings(ax, pairs: Sequence[dict]) -> None:
    """The paired differences, one series per (model, against), with their intervals as error bars:
    solid for a remedy against its own model, dashed against the first model; a Time-Shift point
    where no shift happens is drawn hollow (it equals its base by construction)."""
    for key in dict.fromkeys((p["model"], p["against"]) for p in pairs):
        ps = sorted((p for p in pairs if (p["model"], p["against"]) == key), key=lambda p: p["t_full"])
        t, mean = [p["t_full"] for p in ps], [p["mean"] for p in ps]
        err = [[p["mean"] - p["low"] for p in ps], [p["high"] - p["mean"] for p in ps]]
        line, = ax.plot(t, mean, marker="o" if len(t) < 30 else None, label=f"{key[0]} - {key[1]}",
                        linestyle="-" if ps[0]["kind"] == "remedy" else "--")
        ax.errorbar(t, mean, yerr=np.nan_to_num(np.asarray(err, dtype=np.float64)), fmt="none",
                    ecolor=line.get_color(), capsize=3)
        hollow = [p for p in ps if p["no_shift"]]
        if hollow:
            ax.plot([p["t_full"] for p in hollow], [p["mean"] for p in hollow], "o", mfc="white",
                    color=line.get_color(), label="_no shift")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_ylabel(r"paired difference of $\bar\delta_t$ (95 % interval)")


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
