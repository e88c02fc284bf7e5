"""SiT's own samplers (samplerkit.samplers.sit_sde / sit_ode) against willisma/SiT.

The fixture ``sit_sampler_outputs.pt`` holds a random-weight SiT (depth 2, hidden 24, 4 heads,
patch 2, 8x8x4 latents, 10 classes + the null label, learned-sigma head) in the upstream state-dict
layout, two latents and labels, and what willisma/SiT's ``Sampler.sample_sde`` (with the noise it
drew) and ``Sampler.sample_ode`` (torchdiffeq 0.2.5) returned on them, unguided and with
``forward_with_cfg`` at 1.5; ``upstream_commit`` names the commit that ran
(947f95bd3a510e9af441d38c1e9f72e0eee873c5).
"""

from __future__ import annotations

import pytest
import torch
from _upstream import TOL, assert_close, checkpoint_of, load_fixture, replay

import samplerkit as sk
from samplerkit.errors import SamplerkitError
from samplerkit.generate import make_sampler
from samplerkit.lookup import resolve_sampler


@pytest.fixture(scope="module")
def up():
    return load_fixture("sit_sampler_outputs.pt")


@pytest.fixture(scope="module")
def ckpt(up, tmp_path_factory):
    return checkpoint_of(up, tmp_path_factory, "sit")


@pytest.fixture(scope="module")
def net(ckpt):
    return sk.load(ckpt, family="sit", num_heads=4, image_size=64, num_classes=10)


def guided(net, run):
    w = float(run["cfg_scale"])
    return net if w == 1.0 else sk.guidance.cfg(net, w, form="upstream")


def sde_knobs(settings: dict) -> dict:
    return {"sde_method": settings["sampling_method"], "diffusion_form": settings["diffusion_form"],
            "diffusion_norm": settings["diffusion_norm"], "last_step": settings["last_step"],
            "last_step_size": settings["last_step_size"]}


# ---------------------------------------------------------------------------------------------
# against upstream


@pytest.mark.parametrize("k", range(5))
def test_sde_equals_upstream_sample_sde_on_the_same_noise(up, net, k):
    """Euler-Maruyama with w_t = sigma_t and the Mean last step (SiT's FID setting, unguided and with
    forward_with_cfg 1.5), SiT's Heun with Tweedie, the decreasing form with the Euler last step,
    and no last step."""
    run = up["sde"][k]
    s = run["settings"]
    with torch.no_grad():
        x = sk.samplers.sit_sde(guided(net, run), up["z"], int(s["num_steps"]), up["labels"],
                                randn_like=replay(run["noise"]), **sde_knobs(s))
    assert_close(x, run["sample"])


def test_ode_equals_upstream_sample_ode(up, net):
    """dopri5 at tight tolerances and fixed-step heun2 to 1e-5 of the output scale; dopri5 at upstream's
    defaults (atol 1e-6, rtol 1e-3) to within rtol of it (measured 1.4e-4 unguided, 3.3e-4 guided): its
    step control runs per image where torchdiffeq's runs over the batch, so the steps differ."""
    for run in up["ode"]:
        s = run["settings"]
        with torch.no_grad():
            x = sk.samplers.sit_ode(guided(net, run), up["z"], int(s["num_steps"]), up["labels"],
                                    ode_method=s["sampling_method"], ode_atol=s["atol"], ode_rtol=s["rtol"])
        loose = s["sampling_method"] == "dopri5" and s["rtol"] >= 1e-3
        assert_close(x, run["sample"], tol=1e-3 if loose else TOL)
        if loose:  # not bit for bit: the difference is the solvers' truncation error
            assert float((x - run["sample"].double()).abs().max()) > 1e-6


def test_sit_ode_euler_is_euler_on_the_flow_grid_with_one_step_less(up, net):
    """sit_ode's N points are N - 1 steps: samplerkit's euler on schedules.flow(N - 1), whose start
    sigma_0 = 1e9 stands in for t = 0 (sigma = inf)."""
    with torch.no_grad():
        a = sk.samplers.sit_ode(net, up["z"], 7, up["labels"], ode_method="euler")
        b = sk.samplers.euler(net, up["z"], sk.schedules.flow(6, sigma_max=1e9), up["labels"])
    assert_close(a, b, tol=1e-6)


# ---------------------------------------------------------------------------------------------
# the grid, the callback, the command line's path


def test_a_grid_counts_only_its_steps_and_the_callback_runs_once_per_step(up, net):
    noise = torch.randn(9, *up["z"].shape, generator=torch.Generator().manual_seed(0))
    seen = []
    with torch.no_grad():
        a = sk.samplers.sit_sde(net, up["z"], 10, up["labels"], randn_like=replay(noise),
                                callback=lambda d: seen.append((d["i"], float(d["sigma"]))))
        b = sk.samplers.sit_sde(net, up["z"], sk.schedules.flow(10), up["labels"], randn_like=replay(noise))
    assert torch.equal(a, b)
    assert [i for i, _ in seen] == list(range(10)) and seen[0][1] == float("inf")
    assert seen[-1][1] == pytest.approx(0.04 / 0.96)  # the last step at t1 = 1 - last_step_size


class _Counting(torch.nn.Module):
    interpolant = "linear"

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x, sigma, class_labels=None):
        self.calls += 1
        return self.net(x, sigma, class_labels)


@pytest.mark.parametrize(("knobs", "nfe"), [({}, 7), ({"last_step": "None"}, 6), ({"sde_method": "Heun"}, 13),
                                            ({"last_step": "Tweedie"}, 7)])
def test_sde_network_calls_are_the_table_nfe_for_the_defaults_and_as_documented_otherwise(up, net, knobs, nfe):
    counting = _Counting(net)
    noise = torch.randn(6, *up["z"].shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        sk.samplers.sit_sde(counting, up["z"], 7, up["labels"], randn_like=replay(noise), **knobs)
    assert counting.calls == nfe
    assert sk.samplers.nfe("sit_sde", 7) == 7


def test_zoo_recommends_sample_ddp_sde_defaults_and_make_sampler_runs_them(up, net):
    rec = sk.zoo.get("sit-xl-2-256").recommended
    assert rec == {"sampler": "sit_sde", "steps": 250, "sde_method": "Euler", "diffusion_form": "sigma",
                   "diffusion_norm": 1.0, "last_step": "Mean", "last_step_size": 0.04}
    knobs = {k: v for k, v in rec.items() if k not in ("sampler", "steps")}
    prepared = make_sampler(net, rec["sampler"], 6, **knobs)
    assert prepared.nfe == 6 and prepared.settings["last_step_size"] == 0.04
    noise = torch.randn(5, *up["z"].shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = prepared.run(up["z"], up["labels"], replay(noise))
        b = sk.samplers.sit_sde(net, up["z"], 6, up["labels"], randn_like=replay(noise))
    assert torch.equal(a, b)
    # what `samplerkit sample --model sit-xl-2-256` resolves to when no sampler is given
    assert resolve_sampler("sit-xl-2-256", None, None, {}) == ("sit_sde", 250, knobs)


# ---------------------------------------------------------------------------------------------
# bad input


def test_a_model_that_is_not_a_linear_flow_is_refused_in_one_line(ckpt, up):
    dit = sk.load(ckpt, family="dit", num_heads=4)
    for name in ("sit_sde", "sit_ode"):
        with pytest.raises(SamplerkitError, match=f"{name} needs a linear-interpolant flow model") as err:
            sk.samplers.SAMPLERS[name].fn(dit, up["z"], 5, up["labels"])
        assert "\n" not in str(err.value)
        with pytest.raises(SamplerkitError, match="linear-interpolant"):
            make_sampler(dit, name, 5)


@pytest.mark.parametrize(("sampler", "knobs", "message"), [
    ("sit_sde", {"diffusion_form": "SBDM"}, "unknown diffusion_form 'SBDM'"),
    ("sit_sde", {"last_step": "Mean", "last_step_size": 0.0}, "last_step_size must be in"),
    ("sit_sde", {"diffusion_norm": -1.0}, "diffusion_norm must be"),
    ("sit_sde", {"sde_method": "RK4"}, "unknown sde_method"),
    ("sit_ode", {"ode_method": "rk4"}, "unknown ode_method"),
    ("sit_ode", {"ode_rtol": 0.0}, "must be > 0"),
])
def test_bad_knobs_are_one_line_errors(up, net, sampler, knobs, message):
    with pytest.raises(SamplerkitError, match=message) as err:
        make_sampler(net, sampler, 5, **knobs)
    assert "\n" not in str(err.value)
    with pytest.raises(SamplerkitError, match=message):
        sk.samplers.SAMPLERS[sampler].fn(net, up["z"], 5, up["labels"], **knobs)


def test_one_step_is_refused(up, net):
    with pytest.raises(SamplerkitError, match="steps >= 2"):
        sk.samplers.sit_sde(net, up["z"], 1, up["labels"])
