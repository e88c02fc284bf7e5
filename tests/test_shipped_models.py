"""The models shipped inside the package: loadable offline, reproducible, and actually trained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import samplerkit as sk
from samplerkit.builtin import MODELS_DIR
from samplerkit.data import shapes, to_model_space, to_uint8
from samplerkit.generate import generate, make_sampler
from samplerkit.runs import resolve_sampler

FIXTURE = Path(__file__).parent / "fixtures" / "shapes32_samples.npz"
EDM_FIXTURE = Path(__file__).parent / "fixtures" / "shapes32_edm_samples.npz"
NAMES = ["shapes32-adm", "shapes32-adm-ip"]
EDM_NAMES = ["shapes32-edm", "shapes32-edm-ip"]
# the weights come from benchmarks/shapes32_recipe.sh and shapes32_edm_recipe.sh (about an hour or more of
# CPU per model) and ship in the package: a missing file is a failure here, never a skip


@pytest.mark.parametrize("name", NAMES)
def test_shipped_model_loads_through_the_public_path_with_learned_variance(name):
    net = sk.load(name)
    assert isinstance(net, sk.DiscreteEpsDenoiser) and net.learned_variance
    assert net.img_resolution == 32 and net.label_dim == 0 and net.num_timesteps == 1000
    assert all(p.dtype == torch.float32 for p in net.parameters())


@pytest.mark.parametrize("name", EDM_NAMES)
def test_shipped_edm_model_loads_as_the_edm_network(name):
    from samplerkit.adapters.edm import EDMPrecond, SongUNet

    net = sk.load(name)
    assert type(net) is EDMPrecond and type(net.model) is SongUNet and net.sigma_data == 0.5
    assert net.img_resolution == 32 and net.label_dim == 0 and net.training_alpha_bar() is None
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert sk.zoo.get(name).recommended == {"sampler": "heun", "steps": 18}
    assert (MODELS_DIR / f"{name}.pt").stat().st_size <= 8 * 2**20


@pytest.mark.parametrize("name", NAMES + EDM_NAMES)
def test_float16_storage_loads_exactly_into_float32(name):
    stored = torch.load(MODELS_DIR / f"{name}.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in stored.values())
    loaded = {k.removeprefix("eps_fn.unet."): v for k, v in sk.load(name).state_dict().items()}
    assert stored.keys() == loaded.keys()
    assert all(loaded[k].dtype == torch.float32 and torch.equal(loaded[k], v.float()) for k, v in stored.items())


def _recommended(net, name):
    sampler, steps, options = resolve_sampler(name, None, None, {})
    # what `samplerkit sample` uses: ancestral with the learned variance for the ADMs, Heun 18 for the EDMs
    expected = ("heun", 18, {}) if name in EDM_NAMES else ("ancestral", 50, {"variance": "learned"})
    assert (sampler, steps, options) == expected
    return make_sampler(net, sampler, steps, **options)


@pytest.mark.parametrize("key", [*(f"{n}{v}" for n in NAMES + EDM_NAMES for v in ("", "/heun8"))])
def test_shipped_model_reproduces_the_recorded_samples(key):
    """Seeds 0-3 with the recommended sampler and with Heun 8 steps, recorded when the weights
    were embedded (benchmarks/embed_shapes32.py): within 1/255 per pixel."""
    name, _, variant = key.partition("/")
    net = sk.load(name)
    prepared = make_sampler(net, "heun", 8) if variant else _recommended(net, name)
    ((_, x, _),) = generate(net, prepared, [0, 1, 2, 3], batch_size=4)
    recorded = np.load(EDM_FIXTURE if name in EDM_NAMES else FIXTURE)[key]
    assert np.abs(to_uint8(x).astype(int) - recorded.astype(int)).max() <= 1


# ---------------------------------------------------------------------------------------------
# sample quality: statistics of the images that a broken model cannot fake
#
# Per image (pixels in [0, 1]): "smooth" -- median over neighbouring-pixel pairs of the largest
# channel difference (a smooth two-colour background with faint stripes); "colour" -- 95th
# percentile of the saturation max - min over channels (the saturated shape); "shape" -- the
# fraction of pixels more than 0.2 away from the least-squares linear background (the object's
# area). Bounds: the medians of the samples lie within the 1-99 % range of the data set's
# images, and at least 75 % of the samples lie within its 0.5-99.5 % range on smooth and
# colour together. Measured on 16 images each: fresh data 100 %, shape median 0.12; shapes32-adm
# / shapes32-adm-ip with the recommended sampler (ancestral, 50 steps) 94 % / 88 %, shape medians
# 0.081 / 0.092 (data: median 0.134, 1-99 % range 0.043-0.506); a flat grey image, uniform noise
# and the ADM-IP with its weights shuffled: 0 %, shape medians 0 / 0.93 / 0.99.

SAMPLES = 16


def _structure_stats(x: torch.Tensor) -> dict[str, np.ndarray]:
    x = (x.double().clamp(-1, 1) + 1) / 2
    B, C, H, W = x.shape
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().amax(1).flatten(1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().amax(1).flatten(1)
    saturation = (x.amax(1) - x.amin(1)).flatten(1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H, dtype=x.dtype), torch.linspace(-1, 1, W, dtype=x.dtype),
                            indexing="ij")
    A = torch.stack([torch.ones_like(xx), xx, yy], -1).reshape(1, H * W, 3).expand(B, -1, -1)
    pixels = x.permute(0, 2, 3, 1).reshape(B, H * W, C)
    background = A @ torch.linalg.lstsq(A, pixels).solution
    return {
        "smooth": torch.cat([dx, dy], 1).median(1).values.numpy(),
        "colour": torch.quantile(saturation, 0.95, dim=1).numpy(),
        "shape": ((pixels - background).abs().amax(-1) > 0.2).double().mean(1).numpy(),
    }


@pytest.fixture(scope="module")
def data_stats() -> dict[str, np.ndarray]:
    return _structure_stats(to_model_space(shapes(np.arange(2048))[0]))


def _unlike_the_data(x: torch.Tensor, ref: dict[str, np.ndarray]) -> list[str]:
    """What makes the images ``x`` unlike the data set (empty: nothing)."""
    stats = _structure_stats(x)
    problems = []
    for key, values in stats.items():
        lo, hi = np.quantile(ref[key], [0.01, 0.99])
        if not lo <= np.median(values) <= hi:
            problems.append(f"median {key} {np.median(values):.3f} outside the data's 1-99 % range "
                            f"[{lo:.3f}, {hi:.3f}]")
    inside = np.ones(len(x), dtype=bool)
    for key in ("smooth", "colour"):
        lo, hi = np.quantile(ref[key], [0.005, 0.995])
        inside &= (stats[key] >= lo) & (stats[key] <= hi)
    if inside.mean() < 0.75:
        problems.append(f"only {inside.mean():.0%} of the images are data-like in smoothness and colour")
    return problems


def _samples(net, name: str) -> torch.Tensor:
    ((_, x, _),) = generate(net, _recommended(net, name), list(range(100, 100 + SAMPLES)), batch_size=SAMPLES)
    return x


@pytest.mark.parametrize("name", NAMES + EDM_NAMES)
def test_samples_have_the_structure_of_the_data(name, data_stats):
    assert _unlike_the_data(_samples(sk.load(name), name), data_stats) == []
    fresh = to_model_space(shapes(np.arange(10_000, 10_000 + SAMPLES))[0])
    assert _unlike_the_data(fresh, data_stats) == []


def test_the_structure_check_fails_grey_noise_and_a_shuffled_model(data_stats):
    grey = torch.zeros(SAMPLES, 3, 32, 32)
    noise = torch.rand(SAMPLES, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    net = sk.load("shapes32-adm-ip")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(p.flatten()[torch.randperm(p.numel(), generator=g)].reshape(p.shape))
    shuffled = _samples(net, "shapes32-adm-ip")
    for broken in (grey, noise, shuffled):
        problems = _unlike_the_data(broken, data_stats)
        assert any("median shape" in p for p in problems) and any("data-like" in p for p in problems), problems


def test_sample_command_defaults_to_the_shipped_adm_ip(tmp_path):
    """`samplerkit sample` with no model or sampler options: the shipped ADM-IP, its recommended
    sampler, a grid, and the weights' sha256 in the manifest."""
    import hashlib
    import json

    from samplerkit.cli import main

    out = tmp_path / "out"
    main(["sample", "--seeds", "0-3", "--out", str(out), "--quiet"])
    manifest = json.loads((out / "manifest.json").read_text())
    digest = hashlib.sha256((MODELS_DIR / "shapes32-adm-ip.pt").read_bytes()).hexdigest()
    assert (manifest["model"], manifest["model_sha256"]) == ("shapes32-adm-ip", digest)
    assert (manifest["sampler"], manifest["variance"]) == ("ancestral", "learned")
    assert sorted(p.name for p in out.glob("000000/*.png")) == [f"00000{i}.png" for i in range(4)]


RESULTS = Path(__file__).parent.parent / "benchmarks" / "results"


@pytest.mark.parametrize("run", ["adm", "adm-ip"])
def test_recipe_reproduces_the_recorded_loss_curve(run, tmp_path):
    """The first 100 steps of the recipe (its recorded settings, benchmarks/results) give the
    recorded log row: the same on the same CPU, within 2 % where float32 kernels differ."""
    import csv
    import json

    from samplerkit.train import TrainConfig, train

    settings = json.loads((RESULTS / f"shapes32-{run}-settings.json").read_text())
    settings.update(out=str(tmp_path), iterations=100, save_interval=100, ema_rates=tuple(settings["ema_rates"]))
    with open(RESULTS / f"shapes32-{run}-log.csv") as f:
        recorded = next(csv.DictReader(f))
    assert recorded["step"] == "100"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainConfig(**settings), progress=False)
    finally:
        torch.set_num_threads(threads)
    with open(tmp_path / "log.csv") as f:
        row = next(csv.DictReader(f))
    for key in ("loss", "mse", "vb", "grad_norm"):
        assert float(row[key]) == pytest.approx(float(recorded[key]), rel=0.02), key


FIRST_STEPS = Path(__file__).parent / "fixtures" / "shapes32_edm_first_steps.json"


@pytest.mark.parametrize("run", ["edm", "edm-ip"])
def test_edm_recipe_reproduces_the_recorded_first_steps(run, tmp_path):
    """The EDM recipe's first steps (its recorded settings, benchmarks/results) give the recorded losses.

    The fixture holds the per-step loss, mse and gradient norm of the recipe's first 100 steps,
    made by rerunning its recorded settings with log_interval 1 (train(TrainConfig(**settings)) with
    iterations 100, in a scratch folder); its step-100 row is checked here against the recipe's own
    log, and the first 10 steps are rerun: the same on the same CPU, within 2 % where float32
    kernels differ."""
    import csv
    import json

    from samplerkit.train import TrainConfig, train

    settings = json.loads((RESULTS / f"shapes32-{run}-settings.json").read_text())
    recorded = json.loads(FIRST_STEPS.read_text())["none" if run == "edm" else "ip"]
    with open(RESULTS / f"shapes32-{run}-log.csv") as f:
        logged = next(csv.DictReader(f))
    assert logged["step"] == "100" and len(recorded["loss"]) == 100
    for key in ("loss", "mse", "grad_norm"):  # the fixture is the recipe's run
        assert recorded[key][99] == pytest.approx(float(logged[key]), rel=1e-5), key
    steps = 10
    settings.update(out=str(tmp_path), iterations=steps, save_interval=steps, log_interval=1,
                    ema_rates=tuple(settings["ema_rates"]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = train(TrainConfig(**settings), progress=False)
    finally:
        torch.set_num_threads(threads)
    for key in ("loss", "mse", "grad_norm"):
        rerun = [float(r[key]) for r in trainer.log_rows]
        assert rerun == pytest.approx(recorded[key][:steps], rel=0.02), key
