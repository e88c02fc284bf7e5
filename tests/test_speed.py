"""The network-execution policy (samplerkit.speed): ``exact`` is upstream's arithmetic bit for bit,
every ``fast`` variant stays within the stated tolerance of it on ADM, iDDPM and EDM networks (tiny,
random weights of realistic scale), a fixed seed's samples move by less than one 8-bit level, and
the autotune picks only variants within tolerance and caches its choice."""

from __future__ import annotations

import json
import math

import pytest
import torch
from samplerkit.adapters import adm, iddpm
from samplerkit.adapters.adm import wrap_unet
from samplerkit.adapters.edm.precond import EDMPrecond

from samplerkit import speed
from samplerkit.denoisers import Denoiser
from samplerkit.errors import SamplerkitError
from samplerkit.generate import generate, make_sampler

FP32_VARIANTS = [speed.Policy("sdpa"), speed.Policy("einsum", "channels_last"), speed.Policy("sdpa", "channels_last")]


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights of realistic scale everywhere (the upstream zero-initialized output layers included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        params = dict(module.named_parameters())
        for name in sorted(params):
            v = torch.randn(params[name].shape, generator=g)
            if name.endswith("bias"):
                v = 0.1 * v
            elif v.ndim == 1:
                v = 1 + 0.1 * v
            else:
                v = v / math.sqrt(math.prod(v.shape[1:]))
            params[name].copy_(v)
    return module


def adm_net():
    unet = adm.create_unet(image_size=32, num_channels=32, num_res_blocks=1, attention_resolutions="16,8",
                           num_head_channels=16, resblock_updown=True, use_new_attention_order=True,
                           use_scale_shift_norm=True, learn_sigma=True, class_cond=True, num_classes=10)
    d = dict(noise_schedule="cosine", diffusion_steps=1000, rescale_timesteps=False)
    return wrap_unet(randomize(unet), d, True, 32, 3, 10)


def iddpm_net():
    unet = iddpm.create_unet(image_size=32, num_channels=32, num_res_blocks=1, attention_resolutions="16",
                             learn_sigma=True)
    d = dict(noise_schedule="cosine", diffusion_steps=4000, rescale_timesteps=True)
    return wrap_unet(randomize(unet), d, True, 32, 3, 0)


def edm_net(model_type="SongUNet"):
    net = EDMPrecond(img_resolution=32, img_channels=3, label_dim=10, model_type=model_type, model_channels=32,
                     channel_mult=[1, 2], num_blocks=1, attn_resolutions=[16])
    return randomize(net).eval().requires_grad_(False)


NETS = {"adm": adm_net, "iddpm": iddpm_net, "edm-ddpmpp": edm_net, "edm-adm": lambda: edm_net("DhariwalUNet")}


def inputs(net, sigma: float, batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 3, net.img_resolution, net.img_resolution)
    x = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) + sigma * torch.randn(shape, generator=g,
                                                                                             dtype=torch.float64)
    labels = torch.randint(0, net.label_dim, (batch,), generator=g) if net.label_dim else None
    return x, torch.full((batch,), sigma, dtype=torch.float64), labels


def test_exact_is_the_network_untouched_and_undoes_every_variant():
    net = adm_net()
    x, s, y = inputs(net, 2.0)
    with torch.no_grad():
        before = net(x, s, y)
        speed.apply(net, speed.Policy("sdpa", "channels_last"))
        speed.apply(net, speed.EXACT)
        after = net(x, s, y)
    assert torch.equal(before, after)
    assert all(m.backend == "einsum" for m in speed._attention_modules(net))
    assert all(p.is_contiguous() for p in net.parameters())


@pytest.mark.parametrize("family", list(NETS))
@pytest.mark.parametrize("variant", FP32_VARIANTS, ids=lambda v: v.describe())
def test_fast_variants_stay_within_tolerance_of_exact(family, variant):
    net = NETS[family]()
    for sigma in (0.05, 1.0, 20.0):
        x, s, y = inputs(net, sigma)
        with torch.no_grad():
            exact = net(x, s, y)
            run = speed.apply(net, variant)
            got = run(x, s, y)
            speed.apply(net, speed.EXACT)
        assert float((got - exact).abs().max()) / max(1.0, sigma) <= speed.TOLERANCE


@pytest.mark.parametrize("family", ["adm", "edm-ddpmpp"])
def test_a_variant_really_changes_the_execution(family):
    """The variants are not no-ops: the attention blocks switch backend and the conv weights go channels_last."""
    net = NETS[family]()
    speed.apply(net, speed.Policy("sdpa", "channels_last"))
    blocks = speed._attention_modules(net)
    assert blocks and all(m.backend == "sdpa" for m in blocks)
    convs = [p for p in net.parameters() if p.ndim == 4 and p.shape[-1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in convs)
    speed.apply(net, speed.EXACT)


def test_bfloat16_autocast_is_beyond_the_tolerance():
    """Why ``fast`` does not pick reduced precision: its error is ~10x the tolerance on these networks."""
    net = edm_net()
    x, s, y = inputs(net, 1.0)
    with torch.no_grad():
        exact = net(x, s, y)
        got = speed.apply(net, speed.Policy("sdpa", "channels_last", "bfloat16"), "cpu")(x, s, y)
        speed.apply(net, speed.EXACT)
    assert float((got - exact).abs().max()) > speed.TOLERANCE


@pytest.mark.parametrize("family,sampler,steps", [("adm", "ancestral", 6), ("iddpm", "ancestral", 6),
                                                   ("edm-ddpmpp", "heun", 5)])
def test_fixed_seed_samples_move_by_less_than_one_level(family, sampler, steps):
    net = NETS[family]()
    prepared = make_sampler(net, sampler, steps)
    seeds = [3, 4]

    def images(run):
        return torch.cat([x for _, x, _ in generate(run, prepared, seeds, 2, "random")])

    exact = images(net)
    for variant in FP32_VARIANTS:
        run = speed.apply(net, variant)
        prepared = make_sampler(run, sampler, steps)
        got = images(run)
        speed.apply(net, speed.EXACT)
        assert float((got - exact).abs().max()) <= speed.SAMPLE_TOLERANCE, variant.describe()
    prepared = make_sampler(net, sampler, steps)
    assert torch.equal(images(net), exact)  # exact after a fast run: the same images, bit for bit


def test_autotune_chooses_within_tolerance_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMPLERKIT_CACHE", str(tmp_path))
    net = edm_net()
    first = speed.autotune_denoiser(net, 2, "cpu")
    assert not first.cached
    rows = {row["policy"]: row for row in first.table}
    assert rows[first.policy.describe()]["within"]
    assert rows["exact"]["max_error"] == 0.0
    assert all(row["within"] == (row["max_error"] <= speed.TOLERANCE) for row in rows.values())
    assert all(p.is_contiguous() for p in net.parameters())  # the autotune leaves the network exact
    stored = json.loads((tmp_path / "speed" / "autotune.json").read_text())
    assert list(stored) == [first.key] and stored[first.key]["device_name"] == speed.device_name("cpu")
    again = speed.autotune_denoiser(net, 2, "cpu")
    assert again.cached and again.policy == first.policy and again.key == first.key
    other_batch = speed.autotune_denoiser(net, 3, "cpu")
    assert other_batch.key != first.key


def test_autotune_never_picks_a_variant_beyond_tolerance_or_without_gain(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMPLERKIT_CACHE", str(tmp_path))
    net = adm_net()
    monkeypatch.setattr(speed, "TOLERANCE", -1.0)  # every variant is "beyond tolerance"
    assert speed.autotune_denoiser(net, 2, "cpu", cache=False).policy == speed.EXACT
    monkeypatch.setattr(speed, "TOLERANCE", 1e-3)
    monkeypatch.setattr(speed, "MIN_GAIN", 1e9)  # no variant is fast enough to be worth it
    assert speed.autotune_denoiser(net, 2, "cpu", cache=False).policy == speed.EXACT


def test_a_network_without_convolutions_or_attention_stays_exact():
    from samplerkit.adapters.analytic import GaussianDenoiser

    net = GaussianDenoiser(mean=torch.zeros(3, 8, 8), std=torch.ones(3, 8, 8))
    assert speed.choose(net, "fast", 4, "cpu").policy == speed.EXACT


def test_parse_reads_modes_and_explicit_settings():
    assert speed.parse("exact") == "exact" and speed.parse("fast") == "fast"
    p = speed.parse("attention=sdpa,memory=channels_last,autocast=bfloat16,compile=on")
    assert p == speed.Policy("sdpa", "channels_last", "bfloat16", True)
    assert speed.parse(p.describe()) == p
    assert speed.Policy().describe() == "exact"
    for bad in ("quick", "attention=flash", "compile=maybe", "memory_format"):
        with pytest.raises(SamplerkitError):
            speed.parse(bad)


def test_compile_wraps_the_unet_and_exact_unwraps_it():
    net = adm_net()
    unet = net.unet
    speed.apply(net, speed.Policy(compile=True))
    assert net.eps_fn.unet is not unet and net.eps_fn.unet._orig_mod is unet
    speed.apply(net, speed.EXACT)
    assert net.eps_fn.unet is unet


def test_sample_command_records_the_policy_in_the_manifest(tmp_path, monkeypatch):
    from test_cli_sample import _cli

    monkeypatch.setenv("SAMPLERKIT_CACHE", str(tmp_path / "cache"))
    unet = randomize(adm.create_unet(image_size=32, num_channels=32, num_res_blocks=1, attention_resolutions="16"))
    torch.save(unet.state_dict(), tmp_path / "m.pt")
    common = ["sample", "--model", str(tmp_path / "m.pt"), "--family", "adm", "--flag", "image_size=32",
              "--flag", "num_channels=32", "--flag", "num_res_blocks=1", "--flag", "attention_resolutions=16",
              "--sampler", "ddim", "--steps", "3", "--seeds", "0-1", "--batch", "2", "--quiet"]
    code, _, err = _cli(*common, "--out", str(tmp_path / "exact"), "--speed", "exact")
    assert code == 0, err
    manifest = json.loads((tmp_path / "exact" / "manifest.json").read_text())
    assert manifest["speed"]["mode"] == "exact" and manifest["speed"]["policy"] == "exact"
    assert manifest["speed"]["machine"]["device_name"] == speed.device_name("cpu")
    code, _, err = _cli(*common, "--out", str(tmp_path / "fast"), "--speed", "fast")
    assert code == 0, err
    fast = json.loads((tmp_path / "fast" / "manifest.json").read_text())["speed"]
    assert fast["mode"] == "fast" and fast["table"][0]["policy"] == "exact"
    assert fast["compile"]["calls"] == 3 and fast["compile"]["decision"].startswith("not tried")  # 1 batch x 3 NFE
    code, _, err = _cli(*common, "--out", str(tmp_path / "bad"), "--speed", "warp=9")
    assert code == 2 and err.startswith("error: bad --speed")


def test_default_mode_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(speed.ENV_SPEED, raising=False)
    assert speed.default_mode() == "fast" and speed.default_mode("exact") == "exact"
    monkeypatch.setenv(speed.ENV_SPEED, "exact")
    assert speed.default_mode() == "exact"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_autotune_measures_reduced_precision_and_stays_within_tolerance(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMPLERKIT_CACHE", str(tmp_path))
    net = adm_net().cuda()
    tuning = speed.autotune_denoiser(net, 4, "cuda")
    policies = [row["policy"] for row in tuning.table]
    assert any("float16" in p for p in policies)
    assert {row["policy"]: row for row in tuning.table}[tuning.policy.describe()]["within"]
    x, s, y = (t.cuda() if t is not None else None for t in inputs(net, 1.0))
    with torch.no_grad():
        exact = net(x, s, y)
        got = speed.apply(net, tuning.policy, "cuda")(x, s, y)
    assert float((got - exact).abs().max()) <= speed.TOLERANCE


def test_inception_under_channels_last_stays_within_tolerance_and_leaves_the_shared_network_exact(inception_path):
    import numpy as np

    from samplerkit.metrics import inception

    features = inception(inception_path)
    images = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    exact = features(images)
    fast, record = speed.for_inception(features, "memory_format=channels_last", "cpu")
    got = fast(images)
    assert record["policy"] == "memory_format=channels_last" and fast.layers is not features.layers
    assert float(np.abs(got - exact).max()) <= speed.TOLERANCE * max(1.0, float(np.abs(exact).max()))
    assert all(p.is_contiguous() for p in features.layers.parameters())
    assert np.array_equal(features(images), exact)


def test_retrain_policy_autotunes_forward_and_backward_and_refuses_autocast():
    unet = randomize(adm.create_unet(image_size=32, num_channels=32, num_res_blocks=1, attention_resolutions="16"))
    g = torch.Generator().manual_seed(0)
    example = lambda: (torch.randn(2, 3, 32, 32, generator=g), torch.randint(0, 1000, (2,), generator=g), None)  # noqa: E731
    call, record = speed.for_training(unet, unet, "fast", example, "cpu")
    assert record["mode"] == "fast" and all(row["within"] for row in record["table"] if "autocast" not in row["policy"])
    assert all(p.grad is None for p in unet.parameters())  # the autotune's backward passes leave no gradients
    speed.apply(unet, speed.EXACT)
    with pytest.raises(SamplerkitError, match="precision=fp16"):
        speed.for_training(unet, unet, "autocast=bfloat16", example, "cpu")


# ---------------------------------------------------------------------------------------------
# fast weighs torch.compile against the run's length


class _TinyUNet(speed.Network):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, c):
        return self.conv(x) * c.reshape(-1, 1, 1, 1)


class _TinyDenoiser(Denoiser):
    img_channels, img_resolution, sigma_min, sigma_max = 1, 4, 0.002, 80.0

    def __init__(self):
        super().__init__()
        self.net = _TinyUNet()

    def forward(self, x, sigma, class_labels=None):
        sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1)
        return x - self.net(x.float(), 1 / (1 + sigma)).to(x.dtype)


def _eager(net, seconds: float) -> speed.Tuning:
    """The eager stage's outcome as autotune reports it: exact, ``seconds`` per call at the autotune batch
    (the run's batch, at most CPU_TUNE_BATCH = 8 on a CPU)."""
    return speed.Tuning(speed.EXACT, [{"policy": "exact", "seconds": seconds, "speedup": 1.0, "max_error": 0.0,
                                       "within": True}], key="k")


@pytest.fixture
def trial_of(monkeypatch, tmp_path):
    """Replace the compile trial by one reporting the given figures; returns the list of its calls."""
    monkeypatch.setenv("SAMPLERKIT_CACHE", str(tmp_path))
    made = []

    def install(compiled_seconds, compile_seconds=30.0, max_error=1e-6):
        def trial(net, eager, batch, device, repeats):
            made.append(batch)
            return {"compile_seconds": compile_seconds, "eager_seconds": 1.0, "compiled_seconds": compiled_seconds,
                    "max_error": max_error, "within": max_error <= speed.TOLERANCE, "batch": batch}
        monkeypatch.setattr(speed, "_compile_trial", trial)
        return made
    return install


def test_fast_does_not_try_compile_when_the_run_cannot_pay_for_it(trial_of):
    made, net = trial_of(0.5), _TinyDenoiser()
    # 1 s per call at batch 8 -> 1,000 calls are 1,000 s; the guessed 75 s of compilation is 7.5 % of that
    out = speed.consider_compile(net, _eager(net, 1.0), 1000, 8, "cpu")
    assert made == [] and out.policy == speed.EXACT and out.compile["decision"].startswith("not tried")
    assert out.compile["predicted_eager_seconds"] == pytest.approx(1000.0)
    # batch 16 doubles the predicted seconds per call (the autotune timed batch 8): 2,000 s, 3.75 % -> a trial
    out = speed.consider_compile(net, _eager(net, 1.0), 1000, 16, "cpu")
    assert made == [16] and out.policy == speed.Policy(compile=True)
    assert out.compile["decision"] == "compiled (trial in this run)"


def test_fast_keeps_compile_only_within_tolerance_and_beyond_the_minimum_gain(trial_of):
    net = _TinyDenoiser()
    trial_of(compiled_seconds=1 / (speed.MIN_GAIN * 0.99))  # a gain just short of MIN_GAIN
    assert speed.consider_compile(net, _eager(net, 1.0), 10**6, 2, "cpu", cache=False).policy == speed.EXACT
    trial_of(compiled_seconds=0.5, max_error=10 * speed.TOLERANCE)  # twice as fast, beyond the tolerance
    out = speed.consider_compile(net, _eager(net, 1.0), 10**6, 2, "cpu", cache=False)
    assert out.policy == speed.EXACT and out.compile["decision"] == "eager (trial in this run)"


def test_a_cached_compile_trial_is_reused_and_weighed_against_the_compile_seconds(trial_of):
    made, net = trial_of(compiled_seconds=0.9, compile_seconds=30.0), _TinyDenoiser()
    first = speed.consider_compile(net, _eager(net, 1.0), 10**4, 2, "cpu")  # the trial: kept at once
    assert made == [2] and first.policy.compile
    # later runs recompile: 0.1 s saved per call pays for 30 s only beyond 300 calls
    short = speed.consider_compile(net, _eager(net, 1.0), 299, 2, "cpu")
    long = speed.consider_compile(net, _eager(net, 1.0), 301, 2, "cpu")
    assert made == [2] and not short.policy.compile and long.policy.compile
    assert short.compile["decision"] == "eager (cached trial)" and long.compile["compile_seconds"] == 30.0
    note = speed.compile_note({"compile": long.compile})
    assert note.startswith("speed: torch.compile compiled (cached trial): 1.111x")
    assert speed.compile_note({"compile": {"decision": "not tried"}}) is None and speed.compile_note({}) is None


def test_the_compile_trial_compiles_at_the_run_batch_and_leaves_the_network_exact():
    net = _TinyDenoiser()
    found = speed._compile_trial(net, speed.EXACT, 3, torch.device("cpu"), repeats=1)
    assert found["within"] and found["max_error"] <= 1e-6 and found["batch"] == 3
    assert found["compile_seconds"] > 0 and found["compiled_seconds"] > 0 and found["eager_seconds"] > 0
    assert not hasattr(net.net, "_orig_mod")  # exact again
    x, sigma = torch.randn(3, 1, 4, 4, dtype=torch.float64), torch.full((3,), 2.0, dtype=torch.float64)
    with torch.no_grad():
        expected = net(x, sigma)
        compiled = speed.apply(net, speed.Policy(compile=True))
        assert hasattr(net.net, "_orig_mod")
        torch.testing.assert_close(compiled(x, sigma), expected, atol=1e-6, rtol=0)


def test_the_sample_command_tells_fast_how_many_calls_the_run_makes(tmp_path, monkeypatch):
    from test_cli_sample import _cli

    seen = []
    monkeypatch.setattr(speed, "consider_compile", lambda net, tuning, calls, batch, device, **kw: seen.append(
        (calls, batch)) or tuning)
    monkeypatch.setenv("SAMPLERKIT_CACHE", str(tmp_path / "cache"))
    code, _, err = _cli("sample", "--sampler", "heun", "--steps", "4", "--seeds", "0-4", "--batch", "2",
                        "--out", str(tmp_path / "o"), "--speed", "fast", "--quiet")
    assert code == 0, err
    assert seen == [(3 * 7, 2)]  # ceil(5 / 2) batches x 7 NFE (Heun, 4 steps)
