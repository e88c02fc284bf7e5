"""An adaptive solver's NFE is counted, not the nominal N of its grid: dpm_adaptive and sit_ode's
dopri5 choose their steps by error control, so a run records the network calls they made."""

from __future__ import annotations

import json

import pytest

import samplerkit as sk
from samplerkit import samplers
from samplerkit.denoisers import CallCounter
from samplerkit.generate import generate, make_sampler
from samplerkit.runs import SampleSettings, sample_folder


@pytest.fixture(scope="module")
def ideal():
    return sk.load("shapes32-ideal")


def test_only_the_error_controlled_solvers_are_adaptive():
    assert sorted(n for n, row in samplers.SAMPLERS.items() if row.adaptive) == ["dpm_adaptive", "sit_ode"]


def test_dpm_adaptive_counts_the_calls_of_each_batch(ideal):
    tally = CallCounter(ideal)  # a second count, of the calls that reach the model
    prepared = make_sampler(tally, "dpm_adaptive", 10, rtol=0.01, atol=0.001)
    list(generate(prepared.net, prepared, list(range(6)), batch_size=3))
    assert prepared.batches == 2 and prepared.calls == tally.calls
    assert prepared.measured_nfe == tally.calls / 2
    assert prepared.measured_nfe != prepared.nfe == 10  # the grid's N is nominal here


def test_a_fixed_step_solver_reports_no_measured_nfe(ideal):
    prepared = make_sampler(ideal, "heun", 4)
    list(generate(prepared.net, prepared, [0, 1], batch_size=2))
    assert prepared.measured_nfe is None and prepared.counter is None


def test_the_manifest_records_the_counted_nfe_beside_the_nominal_one(tmp_path):
    sample_folder(SampleSettings(model="shapes32-ideal", sampler="dpm_adaptive", steps=10, seeds="0-3", batch=2,
                                 out=tmp_path, device="cpu", quiet=True, speed="exact"))
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["nfe_per_image"] == 10 and m["nfe_measured"] > 0 and m["nfe_measured"] != 10
    heun = tmp_path / "heun"
    sample_folder(SampleSettings(model="shapes32-ideal", sampler="heun", steps=4, seeds="0-1", out=heun,
                                 device="cpu", quiet=True, speed="exact"))
    assert "nfe_measured" not in json.loads((heun / "manifest.json").read_text())
