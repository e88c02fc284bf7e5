"""What a person reads in a terminal: everything fits 100 columns, every --help example makes
images, and a run says when its settings give noise or when its sigma grid is snapped."""

from __future__ import annotations

import csv
import json
import re
import shlex

import click
import pytest
import torch
from test_cli_sample import _cli
from test_sweep import PooledPixels

import samplerkit as sk
from samplerkit import metrics, plots, samplers, sweep, terminal, zoo
from samplerkit.builtin import DEFAULT_MODEL
from samplerkit.cli import SHORT_HELP, cli, first_sentence
from samplerkit.cli._options import flag_of
from samplerkit.exposure import report
from samplerkit.generate import OUTSIDE_LIMIT, clip_note, generate, make_sampler, outside_note, snap_note
from samplerkit.lookup import recommended

WIDTH = 100


@pytest.fixture
def columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", str(WIDTH))


def _command_paths(group=cli, prefix=()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in group.commands.items():
        out.append((*prefix, name))
        if isinstance(cmd, click.Group):
            out += _command_paths(cmd, (*prefix, name))
    return out


def _too_long(text: str) -> list[str]:
    return [f"{len(line)}: {line}" for line in text.splitlines() if len(line) > WIDTH]


def test_every_help_fits_100_columns(columns):
    paths = [(), *_command_paths()]
    assert ("models", "list") in paths and ("sample",) in paths
    for path in paths:
        code, out, err = _cli(*path, "--help")
        assert code == 0, (path, err)
        assert _too_long(out) == [], path
    code, out, _ = _cli("samplers")  # the sampler table, its knob help wrapped under each sampler
    assert code == 0 and _too_long(out) == [] and "--s-noise 1.0" in out


def test_top_level_summaries_are_whole_sentences(columns):
    code, out, _ = _cli("--help")
    flat = " ".join(out.split())
    for path in _command_paths():
        cmd = cli
        for name in path:
            cmd = cmd.commands[name]
        summary = cmd.get_short_help_str(limit=WIDTH)
        assert not summary.endswith("..."), path
        assert len(path) > 1 or " ".join(summary.split()) in flat, path
    assert "(the form clean-fid" not in out and "or another regularizer, or an\n" not in out
    assert set(SHORT_HELP) >= {"sample", "sweep", "fid", "fid-ref", "retrain", "nll", "samplers", "models"}
    assert first_sentence("Train ADM (Ning et al. 2023). More text.\n\nOther paragraph.") == \
        "Train ADM (Ning et al. 2023)"


def test_long_choice_lists_show_as_a_metavar_with_the_choices_in_the_help(columns):
    code, out, _ = _cli("sample", "--help")
    assert "--sampler SAMPLER" in out and "[euler|heun" not in out
    assert "--family FAMILY" in out and "One of: adm, iddpm, edm" in " ".join(out.split())


def test_a_folded_example_is_the_same_command():
    line = ("    samplerkit sample --model adm-imagenet64 --classifier adm-imagenet64-classifier --then-upsample "
            "adm-imagenet64to256-upsampler --out two_stage    # -> two_stage/base, two_stage/upsampled")
    lines = terminal.fit_line(line, 80)
    assert all(len(x) <= 80 for x in lines) and len(lines) >= 3
    assert lines[0] == "    # -> two_stage/base, two_stage/upsampled"
    assert all(x.endswith(" \\") for x in lines[1:-1]) and not lines[-1].endswith("\\")
    assert shlex.split(" ".join(x.rstrip("\\") for x in lines[1:])) == shlex.split(line.split("  #")[0])
    assert any("--then-upsample adm-imagenet64to256-upsampler" in x for x in lines)  # a flag stays with its value
    # a command already continued over two lines: its comments go above both, the continuation stays valid
    text = ("  samplerkit sample --model a --classifier b \\\n"
            "      --classifier-scale 10 --class-labels random                          # classifier guidance")
    folded = terminal.fit_text(text, 60).splitlines()
    assert folded[0] == "  # classifier guidance" and folded[1].endswith("\\") and all(len(x) <= 60 for x in folded)
    assert terminal.fit_text("short", 60) == "short"


def test_models_list_fits_100_columns_and_shows_what_is_known(columns):
    code, out, err = _cli("models", "list")
    assert code == 0 and _too_long(out) == [] and _too_long(err) == []
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) == {e.name for e in zoo.entries()}
    assert "?" not in out and "SHA256" not in out.splitlines()[0]
    for name in ("adm-imagenet64-classifier", "sd-vae-ft-mse"):
        assert rows[name][-1] == "-", name  # a classifier or an autoencoder has no recommended sampler
    assert rows["adm-imagenet64"][-3:] == ["ancestral", "250", "*"]
    code, wide, _ = _cli("models", "list", "--wide")
    assert code == 0 and "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/64x64_diffusion.pt" in wide
    code, text, _ = _cli("models", "list", "--csv")
    table = {r["name"]: r for r in csv.DictReader(text.splitlines())}
    assert table["shapes32-adm"]["size"] == str(zoo.get("shapes32-adm").size)
    assert table["shapes32-adm"]["sha256"] == zoo.get("shapes32-adm").expected_sha256()
    assert table["adm-imagenet64"]["size"] == "" and table["adm-imagenet64-classifier"]["recommended"] == "-"
    assert table["edm-imagenet64-cond"]["recommended"] == "stochastic 256 S_churn=40 S_min=0.05 S_max=50 S_noise=1.003"
    code, info, _ = _cli("models", "info", "adm-imagenet64")
    assert code == 0 and _too_long(info) == [] and "size:        not published" in info
    assert "--num_channels 192" in " ".join(info.split())  # the wrapped flags are all there


def _exposure_rows() -> list[dict]:
    """The rows of a delta run of two base models, each with ES and TS variants, on a respaced chain
    (the shape of the 385-column table)."""
    models = ["adm", "adm+ES1.005", "adm+TS", "adm-ip", "adm-ip+ES1.005", "adm-ip+TS"]
    rows = []
    for j, m in enumerate(models):
        for t in (20, 60, 100):
            row = {"model": m, "mode": "delta", "t": t, "T": 100, "T_full": 1000, "t_full": 10 * t - 4,
                   "delta_mean": 0.01 * j + t / 1e4, "delta_ci_low": 0.001, "delta_ci_high": 0.2,
                   "baseline": "adm", "diff_mean": "", "diff_ci_low": "", "diff_ci_high": ""}
            if j:
                row.update(diff_mean=-1.234e-3 * j, diff_ci_low=-2.5e-3 * j, diff_ci_high=1e-4)
            rows.append(row)
    return rows


def test_the_exposure_bias_table_fits_100_columns_in_blocks():
    rows = _exposure_rows()
    text = report.table(rows, "delta")
    assert _too_long(text) == []
    for r in rows:  # every cell is still there, under its model's column
        assert f"{float(r['delta_mean']):.4f} [" in text
        if r["diff_mean"] != "":
            assert f"{float(r['diff_mean']):+.2e} [" in text
    for m in ("adm-ip+TS - adm", "adm+ES1.005 - adm", "adm-ip"):
        assert m in text
    label = report.t_label(rows[0])
    blocks = text.count(label)
    assert blocks >= 3  # the label column is repeated in every block


def test_the_exposure_bias_command_prints_its_table_within_100_columns(columns, tmp_path):
    code, out, err = _cli("exposure-bias", "--model", "shapes32-ideal", "--num-images", "2", "--t", "3,5",
                          "--device", "cpu", "--eps-scaler", "1.005", "--no-clip", "--quiet",
                          "--csv", str(tmp_path / "eb.csv"))
    assert code == 0, err
    assert "delta_t (Alg. 4)" in out and "shapes32-ideal+ES1.005 - shapes32-ideal" in out
    assert _too_long(out) == []


def test_column_blocks_keep_each_row_on_its_label():
    lines = terminal.column_blocks(["", "r1", "r2"], ["a" * 30, "b" * 30, "c" * 30], [["1", "2", "3"], ["4", "5", "6"]],
                                   width=70)
    assert all(len(x) <= 70 for x in lines)
    assert lines[1].split() == ["r1", "1", "2"] and lines[-1].split() == ["r2", "6"]


# ---------------------------------------------------------------------------------------------
# every example in --help makes images on the model it names


def _examples() -> list[list[str]]:
    """The `samplerkit sample` / `samplerkit sweep` examples of every --help that run on a built-in
    model (the default one when they name none), as argument lists."""
    texts = [_cli(*path, "--help")[1] for path in [(), *_command_paths()]]
    found = []
    for text in texts:
        logical = re.sub(r"\\\n\s*", " ", text)
        for line in logical.splitlines():
            line = line.split("  #")[0].strip()
            if not re.match(r"samplerkit (sample|sweep)( |$)", line):
                continue
            args = shlex.split(line)[2:]
            model = args[args.index("--model") + 1] if "--model" in args else DEFAULT_MODEL
            if model.startswith("shapes32") and "--low-res" not in args:
                found.append(args)
    return found


def _knobs(sampler: str, args: list[str]) -> dict:
    """The sampler knobs an example sets, by their Python names."""
    out = {}
    for knob, default in samplers.info(sampler).knobs.items():
        flag = flag_of(knob)
        if flag and "/" in flag:
            on, off = flag.split("/")
            out.update({knob: True} if on in args else {knob: False} if off in args else {})
        elif flag and flag in args:
            value = args[args.index(flag) + 1]
            out[knob] = type(default)(value) if isinstance(default, int | float) else value
    return out


def test_every_help_example_on_a_builtin_model_makes_images():
    examples = _examples()
    assert any("dpmpp_2m" in a for a in examples) and any("unipc" in a for a in examples)
    checked = 0
    for args in examples:
        model = args[args.index("--model") + 1] if "--model" in args else DEFAULT_MODEL
        rec = recommended(model)
        names = args[args.index("--sampler") + 1].split(",") if "--sampler" in args else [rec.get("sampler", "heun")]
        steps = (int(args[args.index("--steps") + 1].split(",")[0]) if "--steps" in args
                 else rec.get("steps", 18) if names == [rec.get("sampler")] else 18)
        if "--guide-model" in args:  # the guidance is the example's point; its sampler runs on the main network
            assert not model.startswith("shapes32-adm"), args
        net = sk.load(model)
        for name in names:
            knobs = {**({k: v for k, v in rec.items() if k not in ("sampler", "steps")} if name == rec.get("sampler")
                        else {}), **_knobs(name, args)}
            prepared = make_sampler(net, name, min(steps, 20), **knobs)
            for _ in generate(net, prepared, [0, 1]):
                pass
            share = prepared.outside / prepared.values
            assert share <= OUTSIDE_LIMIT, (args, name, share)
            checked += 1
    assert checked >= 6


# ---------------------------------------------------------------------------------------------
# notes at run time


def test_an_unclipped_solver_on_the_builtin_adm_prints_each_note_once(tmp_path):
    code, _, err = _cli("sample", "--sampler", "dpmpp_2m", "--steps", "10", "--seeds", "0-1", "--no-grid",
                        "--out", str(tmp_path / "a"))
    assert code == 0, err
    assert err.count("note: dpmpp_2m runs unclipped") == 1 and "add --clip" in err
    share = re.search(r"note: ([0-9.]+) % of the output values lie outside \[-1, 1\]", err)
    assert share and float(share.group(1)) > 50 and err.count("lie outside [-1, 1]") == 1
    assert err.count("note: the sigma grid is snapped to the model's trained levels: sigma_min 0.002 -> 0.006425") == 1
    code, _, err = _cli("sample", "--sampler", "dpmpp_2m", "--steps", "10", "--clip", "--seeds", "0-1", "--no-grid",
                        "--out", str(tmp_path / "b"))
    assert code == 0 and "runs unclipped" not in err and "lie outside" not in err
    code, _, err = _cli("sample", "--sampler", "ddim", "--steps", "10", "--seeds", "0", "--no-grid",
                        "--out", str(tmp_path / "c"))
    assert code == 0 and "note:" not in err  # a chain of trained timesteps, clipped: nothing to say


def test_the_notes_follow_the_model_and_the_measured_share():
    adm, edm = sk.load("shapes32-adm-ip"), sk.load("shapes32-edm")
    prepared = make_sampler(adm, "heun", 4)
    assert clip_note(adm, prepared, recommended("shapes32-adm-ip"))
    assert clip_note(adm, prepared, {"sampler": "ancestral", "clip_denoised": False}) is None  # DiT's own: unclipped
    assert clip_note(adm, make_sampler(adm, "heun", 4, clip_denoised=True), {}) is None
    assert clip_note(edm, make_sampler(edm, "heun", 4), recommended("shapes32-edm")) is None  # continuous time
    assert snap_note(edm, make_sampler(edm, "heun", 4)) is None
    prepared.outside, prepared.values = 10, 1000  # exactly 1 %: no note
    assert outside_note(prepared) is None
    prepared.outside = 11
    assert "1.1 % of the output values" in outside_note(prepared)


def test_the_snap_note_names_the_largest_move():
    adm = sk.load("shapes32-adm-ip")
    prepared = make_sampler(adm, "euler", 6, sigma_min=0.01)
    head = prepared.grid[:-1]
    snapped = adm.round_sigma(head)
    moved = ((snapped - head).abs() / head).max()
    note = snap_note(adm, prepared)
    assert (note is not None) == bool(moved > 0.01)
    quiet = make_sampler(adm, "euler", 6, sigma_min=float(adm.sigma_min))
    quiet.grid = torch.cat([adm.round_sigma(quiet.grid[:-1]), quiet.grid.new_zeros(1)])
    assert snap_note(adm, quiet) is None


# ---------------------------------------------------------------------------------------------
# clip in the sweep table and plot


def test_the_sweep_table_and_legend_say_whether_a_sampler_clipped(tmp_path):
    rows = [{"sampler": "ddim", "steps": 10, "nfe": 10, "fid": 30.0, "n_images": 4, "seconds": 1, "images_per_s": 4,
             "clip_denoised": "True"},
            {"sampler": "heun", "steps": 10, "nfe": 19, "fid": 90.0, "n_images": 4, "seconds": 1, "images_per_s": 4,
             "clip_denoised": "False"}]
    lines = sweep.table(rows).splitlines()
    assert lines[0].split()[:2] == ["sampler", "clip"]
    assert lines[1].split()[:2] == ["ddim", "yes"] and lines[2].split()[:2] == ["heun", "no"]
    fig = sweep.plot(rows, tmp_path / "s.png")
    assert set(plots.lines(fig.axes[0])) == {"ddim (clip)", "heun (no clip)"}
    unclipped = [dict(r, clip_denoised="False") for r in rows]
    assert "clip" not in sweep.table(unclipped).splitlines()[0].split()  # no row clipped: no column, no suffix
    assert set(plots.lines(sweep.plot(unclipped, tmp_path / "u.png").axes[0])) == {"ddim", "heun"}
    as_run = {"settings": json.dumps({"clip_denoised": True, "disc": "edm"})}  # a sweep CSV keeps it in settings
    assert plots.clipped(as_run) is True and plots.clipped({"settings": "{}"}) is None


def test_a_sweep_of_a_clipped_and_an_unclipped_sampler_says_so(tmp_path):
    net = sk.load("shapes32-ideal")
    reference = metrics.statistics_of_source("builtin:shapes32?n=16", PooledPixels(), ("fid",))
    rows = sweep.run_cells(net, ("ddim", "heun"), (2,), [0, 1], reference, PooledPixels(),
                           csv_path=tmp_path / "s.csv", model="shapes32-ideal")
    lines = sweep.table(rows).splitlines()
    assert [line.split()[:2] for line in lines] == [["sampler", "clip"], ["ddim", "yes"], ["heun", "no"]]


def test_load_without_a_name_is_the_default_model():
    net = sk.load()
    again = sk.load(DEFAULT_MODEL)
    shape = (1, net.img_channels, net.img_resolution, net.img_resolution)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    assert type(net) is type(again) and torch.equal(net(x, 1.0), again(x, 1.0))
