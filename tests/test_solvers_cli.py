"""The samplers on the command line: `samplerkit samplers`, the new knobs, and knob errors that
name the flag the user typed."""

from __future__ import annotations

import json
import re

import pytest
from test_cli_sample import _cli

from samplerkit import samplers
from samplerkit.cli._options import KNOBS, chosen_options, with_flag_names


def _evaluate(formula: str, n: int) -> int:
    """'2N - 1' at N = n."""
    m = re.fullmatch(r"(\d*)N(?: ([+-]) (\d+))?", formula)
    assert m, formula
    a, sign, b = int(m.group(1) or 1), m.group(2), int(m.group(3) or 0)
    return a * n + (b if sign == "+" else -b)


def test_samplers_command_lists_every_sampler_with_its_nfe_knobs_and_source():
    code, out, _ = _cli("samplers", "--json")
    assert code == 0
    table = {row["name"]: row for row in json.loads(out)}
    assert list(table) == list(samplers.SAMPLERS)
    for name, row in table.items():
        info = samplers.SAMPLERS[name]
        assert [_evaluate(row["nfe"], n) for n in (1, 2, 7, 50)] == [info.nfe(n) for n in (1, 2, 7, 50)]
        assert row["source"] == info.source and row["order"] == info.order
        assert len(row["knobs"]) == len(info.knobs)
    assert table["unipc"]["knobs"] == {"--order": 2, "--variant": "bh1", "--clip/--no-clip": False}
    assert table["dpmpp_2m_sde"]["knobs"]["--solver-type"] == "midpoint"
    assert table["heun"]["nfe"] == "2N - 1" and table["dpmpp_2m"]["nfe"] == "N"
    code, text, _ = _cli("samplers")
    assert code == 0 and "dpmpp_3m_sde" in text and "--s-noise 1.0" in text


def test_new_knobs_reach_the_sampler_under_their_python_names():
    clicked = {"S_churn": 1.0, "s_noise": 0.5, "order": 3, "variant": "bh2", "solver_type": "heun", "clip": True,
               "eta": None}
    assert chosen_options(clicked) == {"S_churn": 1.0, "s_noise": 0.5, "order": 3, "variant": "bh2",
                                       "solver_type": "heun", "clip_denoised": True}
    python_only = {"epsilon_s", "h_init", "pcoeff", "icoeff", "dcoeff", "accept_safety"}  # dpm_adaptive's controller
    every_knob = {k for row in samplers.SAMPLERS.values() for k in row.knobs} - python_only
    assert every_knob <= set(KNOBS.values())  # every knob but these has a flag


def test_error_messages_name_flags_not_python_names():
    assert with_flag_names("need S_churn >= 0, got S_churn=-1") == "need --S-churn >= 0, got --S-churn=-1"
    assert with_flag_names("s_noise must be >= 0") == "--s-noise must be >= 0"
    assert with_flag_names("--sigma-min is fine; sigma_min is not") == "--sigma-min is fine; --sigma-min is not"
    assert with_flag_names("dpmpp_2m_sde takes solver_type") == "dpmpp_2m_sde takes --solver-type"


@pytest.mark.parametrize("args,needle,python_name", [
    (["--sampler", "euler", "--S-churn", "10"], "--S-churn", "S_churn"),
    (["--sampler", "stochastic", "--S-churn", "-1"], "--S-churn", "S_churn"),
    (["--sampler", "euler_ancestral", "--S-noise", "1.1"], "--S-noise", "S_noise"),
    (["--sampler", "dpmpp_2m_sde", "--s-noise", "-1"], "--s-noise", "s_noise"),
    (["--sampler", "unipc", "--order", "4"], "--order", None),
    (["--sampler", "dpm_2_ancestral", "--eta", "2"], "--eta", None),
])
def test_sample_knob_errors_are_one_line_with_the_flag(tmp_path, args, needle, python_name):
    code, _, err = _cli("sample", "--model", "shapes32-ideal", "--seeds", "0", "--steps", "2", "--quiet",
                        "--out", str(tmp_path / "o"), *args)
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert python_name is None or f" {python_name}" not in err


def test_sample_runs_a_new_sampler_with_its_knobs(tmp_path):
    code, _, err = _cli("sample", "--model", "shapes32-ideal", "--seeds", "0-1", "--steps", "3", "--quiet",
                        "--sampler", "unipc", "--order", "3", "--variant", "bh2", "--out", str(tmp_path / "o"))
    assert code == 0, err
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["sampler"] == "unipc" and manifest["order"] == 3 and manifest["variant"] == "bh2"
    assert manifest["nfe_per_image"] == 3 and manifest["clip_denoised"] is False
