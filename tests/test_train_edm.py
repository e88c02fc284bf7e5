"""`retrain --precond edm|vp|ve`: EDM's training loss (Karras et al. 2022, Table 1), input perturbation in
sigma-space, EDM's EMA, checkpoints that `samplerkit.load` opens as EDM networks, resume, bad input."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from samplerkit.adapters.analytic import FiniteSetDenoiser
from samplerkit.adapters.edm import EDMPrecond, SongUNet, VEPrecond, VPPrecond
from scipy.special import expit
from scipy.stats import norm

import samplerkit as sk
from samplerkit.errors import SamplerkitError
from samplerkit.testing import random_weights
from samplerkit.train import TrainConfig, train
from samplerkit.train.edm import EDMObjective, ema_beta

# a small DDPM++ (SongUNet) at 16x16: a few thousand parameters, fast enough for a test
NET = dict(model_type="SongUNet", model_channels=8, channel_mult="1,2", num_blocks=1, attn_resolutions="8",
           dropout=0.0, channel_mult_emb=2)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 16, 16, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("data") / "toy.npz"
    np.savez(path, arr_0=images)
    return path


def _cfg(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), flags=NET, precond="edm", loss="simple", regularizer="none",
                iterations=4, batch_size=4, lr=1e-3, save_interval=2, log_interval=1, ema_halflife_kimg=0.05,
                ema_rampup_ratio=0.05)
    return TrainConfig(**{**base, **kw})


# ---------------------------------------------------------------------------------------------
# the loss against closed forms


def test_sigma_distributions_and_weights_are_table_1s():
    u = torch.tensor([1e-6, 0.01, 0.25, 0.5, 0.75, 0.99], dtype=torch.float64)
    edm = EDMObjective("edm")
    # ln sigma ~ N(-1.2, 1.2^2): sigma at the quantile u
    assert torch.allclose(edm.sigma(u), torch.tensor(np.exp(-1.2 + 1.2 * norm.ppf(u.numpy()))), rtol=1e-12)
    s = edm.sigma(u)
    assert torch.allclose(edm.weight(s), (s**2 + 0.25) / (0.5 * s) ** 2, rtol=1e-14)
    # VP: t = 1 + u (1e-5 - 1), sigma = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), lambda = 1 / sigma^2
    t = 1 + u.numpy() * (1e-5 - 1)
    vp_sigma = np.sqrt(np.expm1(0.5 * 19.9 * t**2 + 0.1 * t))
    assert np.allclose(EDMObjective("vp").sigma(u).numpy(), vp_sigma, rtol=1e-10)
    # VE: ln sigma ~ U(ln 0.02, ln 100)
    assert np.allclose(EDMObjective("ve").sigma(u).numpy(), np.exp(np.log(0.02) + u.numpy() * np.log(100 / 0.02)))
    for p in ("vp", "ve"):
        assert torch.equal(EDMObjective(p).weight(s), 1 / s**2)


@pytest.mark.parametrize("regularizer", ["none", "ip"])
def test_loss_of_the_exact_denoiser_equals_its_closed_form_at_each_sigma(regularizer):
    """Data set {a, -a}: the exact denoiser is D*(x; sigma) = a tanh(<x, a> / sigma^2), so for y = a the
    loss is lambda(sigma) ||a||^2 (1 - tanh(<x, a> / sigma^2))^2 / d with x = a + sigma (n + gamma xi)."""
    g = torch.Generator().manual_seed(0)
    a = 0.1 * torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64)  # ||a|| ~ 0.7: D* far from a below sigma ~ 1
    ideal = FiniteSetDenoiser(torch.cat([a, -a]))
    obj = EDMObjective("edm", regularizer, gamma=0.1)
    u = torch.linspace(0.02, 0.98, 9, dtype=torch.float64)
    B = len(u)
    y = a.expand(B, -1, -1, -1)
    n = torch.randn(B, 3, 4, 4, generator=g, dtype=torch.float64)
    xi = torch.randn(B, 3, 4, 4, generator=g, dtype=torch.float64)
    terms = obj.terms(lambda x, s, c: ideal(x, s.double()), y, u, n, xi)
    sigma = np.exp(-1.2 + 1.2 * norm.ppf(u.numpy()))
    noise = (n + 0.1 * xi if regularizer == "ip" else n).numpy().reshape(B, -1)
    av = a.numpy().reshape(-1)
    x = av[None] + sigma[:, None] * noise
    lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    one_minus_tanh = 2 * expit(-2 * (x @ av) / sigma**2)  # 1 - tanh(z), without cancellation
    expected = lam * (av @ av) * one_minus_tanh**2 / av.size
    assert (expected[-4:] > 1e-5).all()  # not only the trivial low-noise end where D* = y
    # float64 D - y cancels to ~1e-16 ||a|| where D* = y to that precision
    floor = lam * (av @ av) / av.size * 1e-24
    assert np.all(np.abs(terms["loss"].numpy() - expected) <= 1e-9 * expected + floor)
    assert np.all(np.abs(terms["mse"].numpy() - expected / lam) <= 1e-9 * expected / lam + floor / lam)


def test_ip_perturbs_the_input_and_keeps_the_target():
    """Ning et al. 2023, Eq. 6 in sigma-space: input y + sigma (n + gamma xi), target y."""
    seen = {}

    def model(x, sigma, labels):
        seen["x"] = x
        return torch.zeros_like(x)

    y, n, xi = torch.ones(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    u = torch.tensor([0.3, 0.7], dtype=torch.float64)
    obj = EDMObjective("edm", "ip", gamma=0.25)
    terms = obj.terms(model, y, u, n, xi)
    sigma = obj.sigma(u).float().reshape(-1, 1, 1, 1)
    assert torch.allclose(seen["x"], y + sigma * (n + 0.25 * xi))
    assert torch.allclose(terms["mse"], torch.ones(2))  # target y, D = 0
    obj0 = EDMObjective("edm", "none")
    obj0.terms(model, y, u, n, xi)
    assert torch.allclose(seen["x"], y + sigma * n)


def test_ema_half_life_and_ramp_up_follow_edm():
    """beta = 0.5^(batch / min(halflife_kimg 1000, ramp-up x images before the step))."""
    assert ema_beta(1, 16, 10, 0.05) == 0.0  # the first step copies the weights
    assert ema_beta(101, 16, 10, 0.05) == pytest.approx(0.5 ** (16 / (100 * 16 * 0.05)), rel=1e-15)
    assert ema_beta(100_001, 16, 10, 0.05) == pytest.approx(0.5 ** (16 / 10_000), rel=1e-15)
    assert ema_beta(1, 16, 10, None) == pytest.approx(0.5 ** (16 / 10_000), rel=1e-15)


# ---------------------------------------------------------------------------------------------
# the loop: one preconditioning definition, checkpoints, resume


def test_training_uses_the_adapters_network_and_checkpoints_load_as_edm(toy_data, tmp_path):
    trainer = train(_cfg(toy_data, tmp_path / "run", regularizer="ip"), progress=False)
    assert type(trainer.model) is EDMPrecond and isinstance(trainer.model.model, SongUNet)
    # the EMA file is a plain tensor state dict with the network's full key layout (buffers too)
    state = torch.load(tmp_path / "run" / "ema_0.05kimg_000004.pt", weights_only=True)
    assert state.keys() == trainer.model.state_dict().keys()
    net = sk.load(tmp_path / "run" / "ema_0.05kimg_000004.pt")  # flags.json: family edm, class, arguments
    assert type(net) is EDMPrecond and net.sigma_data == 0.5
    ema = trainer.ema_model()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.05, 1.0, 20.0])
    with torch.no_grad():
        assert torch.equal(net(x, sigma), ema(x, sigma))
        # D = c_skip x + c_out F(c_in x; c_noise) with the coefficients of samplerkit.denoisers
        c_skip, c_out, c_in, c_noise = sk.denoisers.edm_preconditioning(sigma.reshape(-1, 1, 1, 1))
        by_hand = c_skip * x + c_out * net.model(c_in * x, c_noise.flatten(), None)
    assert torch.allclose(net(x, sigma), by_hand, atol=1e-6)
    assert (tmp_path / "run" / "recommended.json").read_text().replace(" ", "").replace("\n", "") == \
        '{"sampler":"heun","steps":18}'


def test_the_logged_loss_is_the_objective_of_the_network(toy_data, tmp_path):
    """One step from a fresh network: the logged loss is EDMObjective.terms of the initial network on
    the step's batch, computed again here outside the loop."""
    cfg = _cfg(toy_data, tmp_path / "run", iterations=1, save_interval=1, regularizer="ip")
    from samplerkit.train.loop import Trainer

    trainer = Trainer(cfg)
    x0, u, _, n, xi, _, _ = trainer._batch(1, range(4))
    with torch.no_grad():
        expected = trainer.objective.terms(trainer.model, x0, u, n, xi)["loss"].mean()
    row = trainer.train_step()
    assert row["loss"] == pytest.approx(float(expected), rel=1e-6)


def _log(run: Path) -> list[dict]:
    with open(run / "log.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "images_per_s"} for r in csv.DictReader(f)]


def test_resume_mid_run_continues_bit_identically(toy_data, tmp_path):
    train(_cfg(toy_data, tmp_path / "clean", regularizer="ip"), progress=False)
    train(_cfg(toy_data, tmp_path / "split", iterations=2, regularizer="ip"), progress=False)
    train(_cfg(toy_data, tmp_path / "split", iterations=4, regularizer="ip"), resume=True, progress=False)
    assert _log(tmp_path / "split") == _log(tmp_path / "clean")
    for name in ("model000004.pt", "ema_0.05kimg_000004.pt", "opt000004.pt"):
        a = torch.load(tmp_path / "clean" / name, weights_only=True)
        b = torch.load(tmp_path / "split" / name, weights_only=True)
        if name.startswith("opt"):
            a, b = ([t for s in d["state"].values() for t in s.values()] for d in (a, b))
        else:
            a, b = ([v for _, v in sorted(d.items())] for d in (a, b))
        assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True)), name


@pytest.fixture(scope="module")
def labelled_data(tmp_path_factory) -> Path:
    """12 random 16x16 images in 3 classes (arr_0, arr_1)."""
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("labelled") / "toy.npz"
    np.savez(path, arr_0=rng.integers(0, 256, size=(12, 16, 16, 3), dtype=np.uint8), arr_1=np.arange(12) % 3)
    return path


def test_class_conditional_edm_trains_on_the_labels_and_loads_conditional(labelled_data, tmp_path):
    """label_dim = 3: every batch's loss is EDMObjective.terms of the network given the batch's own
    labels (other labels give another loss), and the checkpoint loads as a 3-class EDMPrecond."""
    from samplerkit.train.loop import Trainer

    cfg = _cfg(labelled_data, tmp_path / "run", flags={**NET, "label_dim": 3}, iterations=2, save_interval=2)
    trainer = Trainer(cfg)
    assert trainer.model.label_dim == 3
    random_weights(trainer.model)  # EDM zero-initializes the output layer: D would ignore every input
    x0, u, _, n, xi, _, y = trainer._batch(1, range(4))
    assert torch.equal(y.cpu(), torch.as_tensor(trainer._indices(1)[:4] % 3))  # arr_1 of the batch's images
    with torch.no_grad():
        expected = trainer.objective.terms(trainer.model, x0, u, n, xi, labels=y)["loss"].mean()
        shuffled = trainer.objective.terms(trainer.model, x0, u, n, xi, labels=(y + 1) % 3)["loss"].mean()
    assert float(shuffled) != pytest.approx(float(expected), rel=1e-6)
    assert trainer.train_step()["loss"] == pytest.approx(float(expected), rel=1e-6)
    trainer.run(progress=False)
    net = sk.load(tmp_path / "run" / "ema_0.05kimg_000002.pt")
    assert type(net) is EDMPrecond and net.label_dim == 3
    x, sigma = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)), torch.tensor([1.0, 1.0])
    with torch.no_grad():
        assert not torch.equal(net(x, sigma, torch.tensor([0, 1])), net(x, sigma, torch.tensor([2, 2])))


@pytest.mark.parametrize(("precond", "cls"), [("vp", VPPrecond), ("ve", VEPrecond)])
def test_vp_and_ve_columns_train_and_load(toy_data, tmp_path, precond, cls):
    trainer = train(_cfg(toy_data, tmp_path / precond, precond=precond, iterations=2), progress=False)
    assert type(trainer.model) is cls
    assert all(math.isfinite(float(r["loss"])) for r in trainer.log_rows)
    assert type(sk.load(tmp_path / precond / "ema_0.05kimg_000002.pt")) is cls


# ---------------------------------------------------------------------------------------------
# bad input: one-line errors


@pytest.mark.parametrize(("args", "message"), [
    (["--precond", "edm", "--loss", "hybrid"], "--loss hybrid is ADM-only"),
    (["--precond", "edm", "--preset", "tiny"], "preset tiny is an ADM preset"),
    (["--precond", "adm", "--preset", "tiny-edm"], "preset tiny-edm is an EDM-family preset"),
    (["--precond", "edm", "--flag", "learn_sigma=True"], "learn_sigma is an ADM (guided-diffusion) flag"),
    (["--precond", "edm", "--regularizer", "gp"], "--regularizer none or ip"),
    (["--precond", "edm", "--schedule-sampler", "loss-second-moment"], "timestep sampler is ADM-only"),
    (["--precond", "edm", "--ema-rate", "0.99", "--ema-halflife-kimg", "5"], "not both"),
])
def test_bad_input_gives_one_line_errors(toy_data, tmp_path, capsys, args, message):
    from samplerkit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["retrain", "--data", str(toy_data), "--out", str(tmp_path / "run"), "--iterations", "1",
              "--flag", "img_resolution=16", *args])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "run" / "model000001.pt").exists()


def test_the_edm_objective_refuses_unknown_settings():
    with pytest.raises(SamplerkitError, match="unknown preconditioning"):
        EDMObjective("adm")
    with pytest.raises(SamplerkitError, match="gamma"):
        EDMObjective("edm", "ip", gamma=-1)
