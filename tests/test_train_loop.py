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


pytestmark = pytest.mark.usefixtures("one_thread")


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
RESULTS = Path(__file__).parent.parent / "benchmarks" / "results"


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
    return subprocess.run([sys.executable, "-m", "samplerkit", *args], capture_output=True, text=True, timeout=timeout,
                          env=ENV)


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
    ema = sk.load(tmp_path / "run" / "ema_0.9_000060.pt", family="adm")  # flags from flags.json
    lat = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    # the step-0 network: ADM zero-initialises its output convolution, so it predicts eps = 0, v = 0
    from samplerkit.adapters.adm import create_unet

    fresh = create_unet(**{k: v for k, v in FLAGS.items() if k not in ("noise_schedule", "diffusion_steps")})
    assert float(fresh(lat, torch.zeros(16, dtype=torch.long)).detach().abs().max()) == 0.0
    untrained = sk.DiscreteEpsDenoiser(lambda x, t, y: fresh(x.float(), t).detach(), ema.alphas_cumprod,
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
    args = ["retrain", "--data", str(toy_data), *_flag_args(), "--iterations", "10", "--batch-size", "4",
            "--save-interval", "2", "--log-interval", "1", "--loss", "vlb", "--quiet"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert _cli(*args, "--out", str(clean)).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "samplerkit", *args, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "state000004.json").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "state000010.json").exists()
    r = _cli(*args, "--out", str(killed), "--resume")
    assert r.returncode == 0, r.stderr
    assert _log(killed) == _log(clean)  # vlb: the importance sampler's history is restored too
    a = torch.load(killed / "model000010.pt", weights_only=True)
    b = torch.load(clean / "model000010.pt", weights_only=True)
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
                        "-m", "samplerkit", *args, "--out", str(multi)], capture_output=True, text=True, timeout=600,
                       env=ENV)
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
    with pytest.raises(SamplerkitError, match="resume=True"):
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
    assert preset("lsun-tower64")["flags"]["image_size"] == 64 and preset("imagenet32")["batch_size"] == 512
    assert preset("celeba64")["iterations"] == 540_000 and preset("ffhq128")["flags"]["dropout"] == 0.1
    assert all(preset(n)["flags"]["noise_schedule"] == "cosine" and preset(n)["flags"]["learn_sigma"]
               for n in ("cifar10", "imagenet32", "lsun-tower64", "celeba64", "ffhq128", "tiny"))


def test_resume_picks_the_latest_checkpoint_whose_files_are_all_present(tmp_path):
    from samplerkit.train.loop import checkpoint_files, latest_checkpoint

    for step in (2, 4):
        for name in checkpoint_files(step, (0.9999, 0.999)):
            (tmp_path / name).write_bytes(b"x")
    assert latest_checkpoint(tmp_path, (0.9999, 0.999)) == 4
    (tmp_path / "ema_0.999_000004.pt").unlink()
    assert latest_checkpoint(tmp_path, (0.9999, 0.999)) == 2


def test_log_reader_drops_rows_after_the_checkpoint_and_a_partial_last_row(tmp_path):
    from samplerkit.train.loop import LOG_COLUMNS, _read_log

    rows = [",".join([str(s)] + ["0.5"] * (len(LOG_COLUMNS) - 1)) for s in (1, 2, 3, 11)]
    path = tmp_path / "log.csv"
    path.write_text(",".join(LOG_COLUMNS) + "\n" + "\n".join(rows) + "\n1")  # killed while writing step 12
    assert [int(r["step"]) for r in _read_log(path, 20)] == [1, 2, 3, 11]
    assert [int(r["step"]) for r in _read_log(path, 2)] == [1, 2]
    path.write_text(",".join(LOG_COLUMNS) + "\n" + "\n".join(rows) + "\n21,0.4")
    assert [int(r["step"]) for r in _read_log(path, 30)] == [1, 2, 3, 11]


def test_resume_accepts_settings_written_before_a_setting_existed(toy_data, tmp_path):
    import json

    cfg = TrainConfig(data=str(toy_data), out=str(tmp_path / "r"), flags=FLAGS, iterations=1, batch_size=2)
    train(cfg, progress=False)
    path = tmp_path / "r" / "settings.json"
    old = json.loads(path.read_text())
    del old["schedule_sampler"]  # its default, "auto", is what such a run used
    path.write_text(json.dumps(old))
    assert train(TrainConfig(**{**cfg.__dict__, "iterations": 2}), resume=True, progress=False).step == 2


def test_fp16_keeps_fp32_weights_and_resumes_the_loss_scale(toy_data, tmp_path):
    from samplerkit.train import Trainer

    cfg = TrainConfig(data=str(toy_data), out=str(tmp_path / "r"), flags=FLAGS, iterations=2, batch_size=2,
                      save_interval=2, precision="fp16")
    train(cfg, progress=False)
    assert all(v.dtype == torch.float32 for v in torch.load(tmp_path / "r" / "ema_0.9999_000002.pt").values())
    resumed = Trainer(TrainConfig(**{**cfg.__dict__, "iterations": 3}), resume=True)
    assert resumed.scaler.state_dict()["_growth_tracker"] == 2  # a fresh scaler would start at 0


def test_grad_clip_bounds_the_gradient_norm_the_optimizer_sees(toy_data, tmp_path):
    from samplerkit.train import Trainer

    cfg = TrainConfig(data=str(toy_data), out=str(tmp_path / "r"), flags=FLAGS, iterations=1, batch_size=2,
                      grad_clip=1e-3)
    trainer = Trainer(cfg)
    seen, step = [], trainer.opt.step

    def spy(*args, **kwargs):
        grads = [p.grad.norm() for p in trainer.model.parameters() if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack(grads))))
        return step(*args, **kwargs)

    trainer.opt.step = spy
    row = trainer.train_step()
    assert row["grad_norm"] > 0.1 and seen == [pytest.approx(1e-3, rel=1e-4)]  # logged: the norm before clipping


def test_use_fp16_flag_is_refused_in_favour_of_fp32_master_weights(toy_data, tmp_path):
    cfg = TrainConfig(data=str(toy_data), out=str(tmp_path / "r"), flags={**FLAGS, "use_fp16": True}, iterations=1,
                      batch_size=2)
    with pytest.raises(SamplerkitError, match="precision=fp16"):
        train(cfg, progress=False)


def _one_step(cfg: TrainConfig):
    """(initial parameters, parameters after one step, the trainer)."""
    from samplerkit.train import Trainer

    trainer = Trainer(cfg)
    p0 = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train_step()
    return p0, [p.detach().clone() for p in trainer.model.parameters()], trainer


def test_regularizer_wd_is_adamw_decoupled_decay_by_default(toy_data, tmp_path):
    """One step with --regularizer wd moves every weight exactly lr * lambda_WD * theta_0 further
    than plain training (AdamW's decoupled decay): the Adam step itself, hence the loss, is unchanged."""
    base = dict(data=str(toy_data), flags=FLAGS, iterations=1, batch_size=2, lr=1e-3)
    p0, plain, _ = _one_step(TrainConfig(out=str(tmp_path / "none"), regularizer="none", **base))
    p0_wd, decayed, trainer = _one_step(TrainConfig(out=str(tmp_path / "wd"), regularizer="wd", lambda_wd=0.03,
                                                    **base))
    assert trainer.opt.param_groups[0]["weight_decay"] == 0.03
    assert all(torch.equal(a, b) for a, b in zip(p0, p0_wd, strict=True))
    gap = max(float((d - (p - 1e-3 * 0.03 * w)).abs().max()) for d, p, w in zip(decayed, plain, p0, strict=True))
    assert gap < 1e-7
    _, literal, trainer = _one_step(TrainConfig(out=str(tmp_path / "loss"), regularizer="wd", wd_form="loss",
                                                **base))
    assert trainer.opt.param_groups[0]["weight_decay"] == 0.0
    assert max(float((a - b).abs().max()) for a, b in zip(literal, decayed, strict=True)) > 1e-4  # Eq. 11 literally


def test_resuming_a_wd_run_from_before_wd_form_keeps_the_loss_form(toy_data, tmp_path):
    import json

    cfg = TrainConfig(data=str(toy_data), out=str(tmp_path / "r"), flags=FLAGS, iterations=1, batch_size=2,
                      regularizer="wd", wd_form="loss")
    train(cfg, progress=False)
    path = tmp_path / "r" / "settings.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "wd_form"}))
    with pytest.raises(SamplerkitError, match="wd_form: 'loss' -> 'decoupled'"):
        train(TrainConfig(**{**cfg.__dict__, "wd_form": "decoupled", "iterations": 2}), resume=True, progress=False)
    assert train(TrainConfig(**{**cfg.__dict__, "iterations": 2}), resume=True, progress=False).step == 2


def test_ema_warmup_uses_rate_min_rate_and_1_plus_s_over_10_plus_s(toy_data, tmp_path):
    cfg = TrainConfig(data=str(toy_data), out=str(tmp_path / "r"), flags=FLAGS, iterations=1, batch_size=2,
                      ema_rates=(0.999,), ema_warmup=True)
    p0, p1, trainer = _one_step(cfg)
    assert [trainer.ema_rate(0.999, s) for s in (1, 8990, 8991, 20000)] == [2 / 11, 8991 / 9000, 0.999, 0.999]
    for e, a, b in zip(trainer.emas[0.999], p0, p1, strict=True):
        assert torch.allclose(e, 2 / 11 * a + 9 / 11 * b, atol=1e-7)
    _, _, plain = _one_step(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "p"), "ema_warmup": False}))
    assert plain.ema_rate(0.999, 1) == 0.999


def test_tiny_preset_is_the_recipe_of_the_built_in_models_plus_ema_warmup():
    import json

    from samplerkit.train import preset

    tiny = preset("tiny")
    for run in ("adm", "adm-ip"):
        recorded = json.loads((RESULTS / f"shapes32-{run}-settings.json").read_text())
        assert tiny["flags"] == recorded["flags"]
        assert (tiny["lr"], tiny["warmup"], tiny["grad_clip"], list(tiny["ema_rates"]), tiny["batch_size"]) == (
            recorded["lr"], recorded["warmup"], recorded["grad_clip"], recorded["ema_rates"], recorded["batch_size"])
        # the recorded settings define the built-in runs: made before EMA warm-up existed, so without it
        assert "ema_warmup" not in recorded and TrainConfig(**{**recorded, "ema_rates": (0.999,)}).ema_warmup is False
    assert tiny["ema_warmup"] is True


def test_retrain_takes_the_preset_loop_settings_and_says_what_to_sample(tmp_path, capsys):
    import json

    from samplerkit.cli import main

    out = tmp_path / "run"
    main(["retrain", "--data", "builtin:shapes32", "--out", str(out), "--iterations", "1", "--batch-size", "2",
          "--no-flip"])
    settings = json.loads((out / "settings.json").read_text())
    assert (settings["lr"], settings["warmup"], settings["grad_clip"], settings["ema_rates"], settings["ema_warmup"]) \
        == (5e-4, 500, 1.0, [0.999], True)
    assert json.loads((out / "recommended.json").read_text()) == {"sampler": "ancestral", "steps": 50,
                                                                  "variance": "learned"}
    err = capsys.readouterr().err
    assert f"sample it: samplerkit sample --model {out / 'ema_0.999_000001.pt'}" in err.splitlines()


def test_recommended_sampler_follows_the_training(toy_data, tmp_path):
    from samplerkit.train import read_recommended, recommended_sampler

    assert recommended_sampler({"learn_sigma": True}) == sk.zoo.get("shapes32-adm-ip").recommended
    fixed = {**FLAGS, "learn_sigma": False}
    train(TrainConfig(data=str(toy_data), out=str(tmp_path / "r"), flags=fixed, loss="simple", iterations=1,
                      batch_size=2, save_interval=1), progress=False)
    assert read_recommended(tmp_path / "r" / "ema_0.9999_000001.pt") == {"sampler": "ddim", "steps": 50, "eta": 0.0}
    assert read_recommended(tmp_path / "elsewhere.pt") == {}


def test_table_9_presets_use_the_appendix_a7_recipe():
    from samplerkit.train import preset

    for name in ("cifar10", "imagenet32", "lsun-tower64", "celeba64", "ffhq128"):
        p = preset(name)
        assert p["precision"] == "fp16" and p["schedule_sampler"] == "loss-second-moment", name
    assert preset("tiny").get("precision", "fp32") == "fp32"  # CPU-sized runs stay in fp32


def _stop_at(monkeypatch, step: int):
    """Ctrl-C when the run is about to take step ``step + 1``."""
    from samplerkit.train.loop import Trainer

    original = Trainer.train_step

    def interrupted(self):
        if self.step == step:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted)


def _toy_cfg(toy_data, out, iterations=6):
    return TrainConfig(data=str(toy_data), out=str(out), flags=FLAGS, iterations=iterations, batch_size=2,
                       save_interval=2, log_interval=1)


def test_ctrl_c_names_the_last_checkpoints_step_and_the_resume_call(toy_data, tmp_path, monkeypatch):
    from samplerkit.errors import Interrupted

    _stop_at(monkeypatch, 3)
    with pytest.raises(Interrupted) as info:
        train(_toy_cfg(toy_data, tmp_path / "run"), progress=False)
    assert str(info.value) == (f"interrupted at step 3 of 6; the last checkpoint in {tmp_path / 'run'} holds step 2 "
                               "(the steps after it are lost); resume with: train(cfg, resume=True)")


def test_ctrl_c_before_the_first_checkpoint_says_nothing_is_saved(toy_data, tmp_path, monkeypatch):
    from samplerkit.errors import Interrupted

    _stop_at(monkeypatch, 1)
    with pytest.raises(Interrupted, match=r"interrupted at step 1 of 6, before the first checkpoint \(step 2\): "
                                          r"nothing is saved in .*; start again with: train\(cfg, resume=True\)"):
        train(_toy_cfg(toy_data, tmp_path / "run"), progress=False)


def test_cli_ctrl_c_prints_the_command_that_resumes_and_it_resumes(toy_data, tmp_path, monkeypatch, capsys):
    import shlex

    from test_fid import run_cli

    out = tmp_path / "run"
    args = ["retrain", "--data", str(toy_data), *_flag_args(), "--iterations", "6", "--batch-size", "2",
            "--save-interval", "2", "--log-interval", "1", "--no-flip", "--out", str(out)]
    _stop_at(monkeypatch, 3)
    code, _, err = run_cli(*args)
    lines = [line for line in err.splitlines() if line.strip() and "it/s" not in line and "|" not in line]
    assert code == 130 and lines[-1].startswith("interrupted at step 3 of 6; the last checkpoint in "), err
    assert "holds step 2" in lines[-1]
    command = lines[-1].split("resume with: ", 1)[1]
    assert command.startswith("samplerkit retrain ") and command.endswith(" --resume") and "--no-flip" in command
    monkeypatch.undo()
    code, _, err = run_cli(*shlex.split(command)[1:])
    assert code == 0, err
    assert f"resuming from step 2 (the latest complete checkpoint in {out})" in err
    assert (out / "state000006.json").is_file()


def test_resume_in_a_folder_without_a_checkpoint_says_it_starts_from_scratch(toy_data, tmp_path, capsys):
    train(_toy_cfg(toy_data, tmp_path / "run", iterations=1), resume=True)
    assert (f"resume: no complete checkpoint in {tmp_path / 'run'}; starting from scratch (step 0)"
            in capsys.readouterr().err)
