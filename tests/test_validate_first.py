"""Bad arguments are refused before any network loads or the speed policy autotunes (issue 31, item 5):
one line, exit 2, and neither a model load nor a ``speed:`` line before it."""

from __future__ import annotations

import pytest
from test_cli_sample import _cli

from samplerkit import speed, zoo


@pytest.fixture
def no_loading(monkeypatch):
    """Any model load or speed autotune fails the test loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("a network was loaded (or autotuned) before the arguments were checked")

    monkeypatch.setattr(zoo.ZooEntry, "load", refuse)
    monkeypatch.setattr(speed, "for_denoiser", refuse)
    monkeypatch.setattr(speed, "autotune", refuse)


SAMPLE_CASES = [
    (["--steps", "0"], "number of steps must be an integer >= 1, got 0"),
    (["--eps-scaler", "0"], "--eps-scaler must be > 0"),
    (["--class-labels", "3"], "--class-labels given but the model is unconditional"),
    (["--model", "shapes32-ideal-cond", "--class-labels", "9"], "class labels must lie in [0, 3]"),
    (["--ts-window", "10"], "--ts-window need(s) --time-shift"),
    (["--sampler", "heun", "--S-churn", "3"], "option(s) --S-churn do not apply to the heun sampler"),
    (["--sampler", "heun", "--rho", "0"], "--rho must be > 0"),
]


@pytest.mark.parametrize("args,needle", SAMPLE_CASES)
def test_sample_refuses_bad_arguments_before_loading(no_loading, tmp_path, args, needle):
    code, out, err = _cli("sample", "--seeds", "0-1", "--out", str(tmp_path / "o"), *args)
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert "speed:" not in err + out and "AssertionError" not in err
    assert not (tmp_path / "o").exists()


def test_a_knob_error_names_every_option_as_a_flag(no_loading, tmp_path):
    code, _, err = _cli("sample", "--seeds", "0", "--out", str(tmp_path / "o"), "--sampler", "heun", "--eta", "1")
    assert code == 2, err
    listed = err.split("it takes: ")[1].rstrip(")\n").split(", ")
    assert listed[:4] == ["--disc", "--sigma-min", "--sigma-max", "--rho"], err
    assert all(name.startswith("--") for name in listed), err  # no Python name (disc, epsilon_s) among flags


SWEEP_CASES = [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--eps-scaler", "0"], "--eps-scaler must be > 0"),
    (["--ts-window", "10"], "--ts-window need(s) --time-shift"),
    (["--sampler", "heun", "--S-churn", "3"], "--S-churn"),
    (["--num-images", "1"], "at least 2 images per cell"),
]


@pytest.mark.parametrize("args,needle", SWEEP_CASES)
def test_sweep_refuses_bad_arguments_before_loading(no_loading, tmp_path, args, needle):
    code, out, err = _cli("sweep", "--ref", "builtin:shapes32", "--ref-images", "8", "--num-images", "4",
                          "--csv", str(tmp_path / "s.csv"), *args)
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert "speed:" not in err + out and "AssertionError" not in err


@pytest.fixture
def no_autotune(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the speed policy ran before the arguments were checked")

    monkeypatch.setattr(speed, "for_denoiser", refuse)


@pytest.mark.parametrize("args,needle", [
    (["--sampler", "ddim", "--eta", "-1"], "--eta"),  # checked by the sampler's row, which sees the network
    (["--model", "shapes32-ideal", "--sampler", "ddim", "--respacing", "10"], "respacing needs a discrete"),
])
def test_sample_checks_what_needs_the_network_before_autotuning(no_autotune, tmp_path, args, needle):
    code, out, err = _cli("sample", "--seeds", "0-1", "--out", str(tmp_path / "o"), *args)
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert "speed:" not in err + out


@pytest.mark.parametrize("args,needle", [
    (["--eps-scaler", "0"], "--eps-scaler must be > 0"),
    (["--ts-window", "10"], "--ts-window need(s) --time-shift"),
    (["--num-images", "0"], "--num-images must be >= 1"),
])
def test_exposure_bias_refuses_bad_arguments_before_loading(no_loading, tmp_path, args, needle):
    code, out, err = _cli("exposure-bias", "--num-images", "2", "--t", "3", "--csv", str(tmp_path / "e.csv"), *args)
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert "speed:" not in err + out and "AssertionError" not in err


@pytest.mark.parametrize("args,needle", [
    (["--t", "5000"], "5000"),  # longer than the model's chain: needs the model, not its speed policy
    (["--model", "shapes32-edm", "--time-shift"], "--time-shift needs a discrete-time model"),
])
def test_exposure_bias_checks_what_needs_the_network_before_autotuning(no_autotune, tmp_path, args, needle):
    code, out, err = _cli("exposure-bias", "--num-images", "2", "--csv", str(tmp_path / "e.csv"), *args)
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert "speed:" not in err + out


# ---------------------------------------------------------------------------------------------
# one lookup of the model's name per run (issue 27)


@pytest.fixture
def zoo_lookups(monkeypatch):
    """The names :func:`samplerkit.zoo.get` is asked for during the test."""
    asked, get = [], zoo.get

    def counting(name, *args, **kwargs):
        asked.append(name)
        return get(name, *args, **kwargs)

    monkeypatch.setattr(zoo, "get", counting)
    return asked


@pytest.mark.parametrize("model", ["shapes32-ideal", "shapes32-adm"])
def test_a_sample_run_looks_its_model_up_once_besides_the_loader(zoo_lookups, tmp_path, model):
    code, _, err = _cli("sample", "--model", model, "--seeds", "0-1", "--steps", "2", "--quiet",
                        "--out", str(tmp_path / "o"))
    assert code == 0, err
    assert zoo_lookups.count(model) == 2, zoo_lookups  # the run's one lookup, and the loader's (runs.load_model)


def test_a_sweep_looks_its_model_up_once(zoo_lookups, tmp_path, monkeypatch):
    from test_sweep import PooledPixels

    from samplerkit import evaluation, metrics

    monkeypatch.setattr(metrics, "inception", lambda *args, **kwargs: PooledPixels())  # no Inception download
    monkeypatch.setattr(speed, "for_inception", lambda features, *args, **kwargs: (features, {}))
    monkeypatch.setattr(evaluation, "_check_dim", lambda stats, where: None)
    code, _, err = _cli("sweep", "--model", "shapes32-ideal", "--sampler", "euler", "--steps", "2", "--num-images", "4",
                        "--ref", "builtin:shapes32?n=8", "--csv", str(tmp_path / "s.csv"), "--quiet",
                        "--speed", "exact")
    assert code == 0, err
    assert zoo_lookups.count("shapes32-ideal") == 1, zoo_lookups


def test_an_exposure_bias_run_looks_each_model_up_once(zoo_lookups, tmp_path):
    code, _, err = _cli("exposure-bias", "--model", "shapes32-ideal", "--model", "shapes32-ideal-cond",
                        "--num-images", "2", "--t", "3", "--quiet", "--speed", "exact",
                        "--csv", str(tmp_path / "e.csv"))
    assert code == 0, err
    assert zoo_lookups.count("shapes32-ideal") == 1 and zoo_lookups.count("shapes32-ideal-cond") == 1, zoo_lookups
