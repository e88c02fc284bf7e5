"""The orchestration layer: a sampler is one function plus one table row, and the command line
follows the table without any other edit."""

from __future__ import annotations

import json

import pytest
import torch
from test_cli_sample import _cli

from samplerkit import samplers
from samplerkit.errors import SamplerkitError
from samplerkit.generate import make_sampler
from samplerkit.knobs import Knob


def toy(net, latents, sigmas, class_labels=None, *, toy_gain: float = 1.0, toy_mode: str = "plain",
        callback=None) -> torch.Tensor:
    """Euler, its result scaled by ``toy_gain`` and mirrored when ``toy_mode`` is 'flip'."""
    x = samplers.euler(net, latents, sigmas, class_labels, callback=callback) * toy_gain
    return x.flip(-1) if toy_mode == "flip" else x


def _resolve_toy(net, options: dict) -> dict:
    if not options["toy_gain"] >= 0:
        raise SamplerkitError(f"toy_gain must be >= 0, got {options['toy_gain']}")
    return options


@pytest.fixture
def with_toy(monkeypatch):
    row = samplers.SamplerInfo(toy, "1", lambda n: n, "sigmas", "a test sampler", _resolve_toy,
                               knob_help={"toy_gain": Knob("Gain of the toy sampler."),
                                          "toy_mode": Knob("Mirror the toy's images or not.", ("plain", "flip"))})
    monkeypatch.setitem(samplers.SAMPLERS, "toy", row)
    return row


def test_a_table_row_is_a_sampler_with_flags_on_sample_and_sweep(with_toy):
    for command in ("sample", "sweep"):
        code, out, err = _cli(command, "--help")
        assert code == 0, err
        assert "--toy-gain FLOAT" in out and "Gain of the toy sampler." in out, command
        assert "--toy-mode [plain|flip]" in out, command
    code, out, _ = _cli("samplers", "--json")
    row = {r["name"]: r for r in json.loads(out)}["toy"]
    assert row["knobs"] == {"--toy-gain": 1.0, "--toy-mode": "plain"}
    assert row["knob_help"]["--toy-mode"] == "Mirror the toy's images or not."
    code, text, _ = _cli("samplers")
    assert "--toy-gain 1.0: Gain of the toy sampler." in text


def test_a_table_row_runs_from_the_command_line_with_its_knobs(with_toy, tmp_path):
    code, _, err = _cli("sample", "--model", "shapes32-ideal", "--seeds", "0-1", "--steps", "3", "--quiet",
                        "--sampler", "toy", "--toy-gain", "0.5", "--toy-mode", "flip", "--out", str(tmp_path / "o"))
    assert code == 0, err
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["sampler"] == "toy" and manifest["toy_gain"] == 0.5 and manifest["toy_mode"] == "flip"
    assert manifest["nfe_per_image"] == 3


@pytest.mark.parametrize("args,needle", [
    (["--toy-mode", "sideways"], "--toy-mode"),  # a choice outside the row's list: click
    (["--toy-gain", "-1"], "--toy-gain"),  # the row's resolve, in Python words, shown with the flag
    (["--toy-gain", "x"], "--toy-gain"),
])
def test_a_table_rows_knobs_are_validated_with_one_line_errors(with_toy, tmp_path, args, needle):
    code, _, err = _cli("sample", "--model", "shapes32-ideal", "--seeds", "0", "--steps", "2", "--quiet",
                        "--sampler", "toy", "--out", str(tmp_path / "o"), *args)
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert " toy_gain" not in err


def test_a_table_rows_knob_on_another_sampler_is_a_one_line_error(with_toy, tmp_path):
    code, _, err = _cli("sweep", "--sampler", "heun", "--steps", "2", "--num-images", "2", "--ref", "builtin:shapes32",
                        "--csv", str(tmp_path / "s.csv"), "--toy-gain", "2")
    assert code == 2 and err.count("\n") == 1 and "--toy-gain" in err, err


def test_choices_of_a_table_row_are_checked_by_the_library_too(with_toy):
    from samplerkit.builtin import shapes32_ideal

    net = shapes32_ideal(64)
    with pytest.raises(SamplerkitError, match="unknown toy_mode 'sideways'"):
        make_sampler(net, "toy", 2, toy_mode="sideways")


def test_every_knob_of_every_sampler_has_a_flag_and_help():
    from samplerkit.cli._options import flag_of

    for name, row in samplers.SAMPLERS.items():
        for knob in row.knobs:
            assert flag_of(knob) and row.knob(knob).help, (name, knob)
    assert flag_of("epsilon_s") == "--epsilon-s"
