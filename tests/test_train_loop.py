"""The training loop: learning, resume after SIGKILL, DDP equivalence, checkpoints that sample."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import samplerkit as sk
from samplerkit.errors import SamplerkitError
from samplerkit.train import TrainConfig, train

FLAGS = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="8",
             num_head_channels=16, learn_sigma=True, noise_schedule="cosine", diffusion_steps=100, dropout=0.0,
             resblock_updown=True, use_new_attention_order=True)


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> Path:
    """16x16 images of 4 flat colours with a bright square: easy to learn in a few dozen steps."""
    rng = np.random.default_rng(0)
    colours = np.array([[230, 40, 40], [40, 200, 60], [40, 60, 220], [220, 220, 40]], dtype=np.uint8)
    images = np.repeat(colours, 8, axis=0)[:, None, None, :].repeat(16, 1).repeat(16, 2).copy()
    for im in images:
        r, c = rng.integers(2, 9, size=2)
        im[r:r + 5, c:c + 5] = 255
    path = tmp_path_factory.mktemp("data") / "toy.npz"
    np.savez(path, arr_0=images)
    return path


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "samplerkit", *args], capture_output=True, text=True, timeout=timeout)


def _flag_args(flags=FLAGS):
    return [f"--flag={k}={v}" for k, v in flags.items()]


def _nearest_distance(samples: torch.Tensor, data: torch.Tensor) -> float:
    d = torch.cdist(samples.flatten(1).float(), data.flatten(1).float())
    return float(d.min(1).values.mean())


def test_loss_falls_and_ema_samples_move_towards_the_data(toy_data, tmp_path):
    cfg = TrainConfig(data=str(toy_data), out=str(tmp_path / "run"), flags=FLAGS, iterations=60, batch_size=8,
                      lr=2e-3, ema_rates=(0.9,), save_interval=60, log_interval=1, regularizer="ip")
    trainer = train(cfg, progress=False)
    losses = [float(r["mse"]) for r in trainer.log_rows]
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5])
    data = sk.data.to_model_space(np.load(toy_data)["arr_0"]).double()
    start = sk.load(tmp_path / "run" / "model000060.pt", family="adm")  # flags from flags.json
    ema = sk.load(tmp_path / "run" / "ema_0.9_000060.pt", family="adm")
    lat = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    untrained = sk.DiscreteEpsDenoiser(lambda x, t, y: torch.zeros(x.shape[0], 6, 16, 16), start.alphas_cumprod,
                                       learned_variance=True, img_resolution=16)
    steps = sk.schedules.respace(100, "25")
    d0 = _nearest_distance(sk.samplers.ancestral(untrained, lat, steps), data)
    d1 = _nearest_distance(sk.samplers.ancestral(ema, lat, steps), data)
    # stated metric: mean L2 distance of a sample to its nearest training image
    assert d1 < 0.7 * d0, (d0, d1)


def _log(run: Path) -> list[tuple]:
    with open(run / "log.csv", newline="") as f:
        return [(r["step"], r["loss"], r["mse"], r["vb"], r["grad_norm"]) for r in csv.DictReader(f)]


def test_sigkill_then_resume_reproduces_the_uninterrupted_run(toy_data, tmp_path):
    args = ["retrain", "--data", str(toy_data), *_flag_args(), "--iterations", "14", "--batch-size", "4",
            "--save-interval", "2", "--log-interval", "1", "--loss", "vlb", "--quiet"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert _cli(*args, "--out", str(clean)).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "samplerkit", *args, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "state000006.json").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "state000014.json").exists()
    r = _cli(*args, "--out", str(killed), "--resume")
    assert r.returncode == 0, r.stderr
    assert _log(killed) == _log(clean)  # vlb: the importance sampler's history is restored too
    a = torch.load(killed / "model000014.pt", weights_only=True)
    b = torch.load(clean / "model000014.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not [p for p in killed.iterdir() if ".tmp-" in p.name]
    for p in killed.glob("*.pt"):
        torch.load(p, weights_only=True)  # every checkpoint is complete


def test_two_process_ddp_matches_one_process(toy_data, tmp_path):
    args = ["retrain", "--data", str(toy_data), *_flag_args(), "--iterations", "3", "--batch-size", "8",
            "--save-interval", "3", "--quiet", "--regularizer", "ip"]
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert _cli(*args, "--out", str(single), "--microbatch", "4").returncode == 0
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "samplerkit", *args, "--out", str(multi)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(single / "model000003.pt", weights_only=True)
    b = torch.load(multi / "model000003.pt", weights_only=True)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_checkpoint_samples_through_the_sample_command(toy_data, tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(data=str(toy_data), out=str(run), flags=FLAGS, iterations=2, batch_size=4, save_interval=2),
          progress=False)
    r = _cli("sample", "--model", str(run / "ema_0.9999_000002.pt"), "--family", "adm", "--sampler", "ancestral",
             "--respacing", "10", "--seeds", "0-3", "--out", str(tmp_path / "s"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "s").rglob("0000*.png"))) == 4


def test_bad_training_input_is_one_line(toy_data, tmp_path):
    r = _cli("retrain", "--data", str(toy_data), "--out", str(tmp_path / "r"), "--preset", "tiny", "--iterations", "1")
    assert r.returncode == 2 and "image_size" in r.stderr and r.stderr.count("\n") == 1
    cfg = TrainConfig(data=str(toy_data), out=str(tmp_path / "r2"), flags=FLAGS, iterations=1, batch_size=2)
    train(cfg, progress=False)
    with pytest.raises(SamplerkitError, match="--resume"):
        train(cfg, progress=False)
    with pytest.raises(SamplerkitError, match="changed settings"):
        train(TrainConfig(**{**cfg.__dict__, "gamma": 0.2}), resume=True, progress=False)
    with pytest.raises(SamplerkitError, match="not found"):
        train(TrainConfig(data=str(tmp_path / "none"), out=str(tmp_path / "r3"), flags=FLAGS), progress=False)


def test_presets_follow_table_9():
    from samplerkit.train import preset

    c = preset("cifar10")
    assert c["flags"]["num_channels"] == 128 and c["flags"]["channel_mult"] == "1,2,2,2"
    assert c["flags"]["dropout"] == 0.3 and c["batch_size"] == 128 and c["iterations"] == 540_000
    f = preset("ffhq128")["flags"]
    assert f["num_channels"] == 256 and f["channel_mult"] == "1,1,2,3,4" and f["attention_resolutions"] == "32,16,8"
    assert os.environ.get("PYTHONHASHSEED", "") is not None
