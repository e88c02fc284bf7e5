"""`samplerkit sample`: outputs, resume, determinism, sharding and one-line errors."""

from __future__ import annotations

import json
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
from samplerkit.cli.sample import run_sample

FAST = ["--steps", "4", "--quiet"]


def _invoke(*args):
    """Run the CLI in-process through its entry point (one-line errors, exit codes)."""
    import contextlib
    import io

    from samplerkit.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


def _cli(*args, env=None, timeout=300):
    """Run the real console entry point in a subprocess."""
    return subprocess.run([sys.executable, "-m", "samplerkit", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def _pngs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png")) if p.name != "grid.png"}


def test_pngs_are_identical_across_batch_sizes(tmp_path):
    for batch in (1, 16):
        run_sample(seeds="0-15", steps=4, batch=batch, out=tmp_path / f"b{batch}", quiet=True, grid=False)
    a, b = _pngs(tmp_path / "b1"), _pngs(tmp_path / "b16")
    assert len(a) == 16 and a == b
    assert "000000/000015.png" in a


def test_images_follow_edm_seed_convention(tmp_path):
    """seed s -> latents from torch.Generator().manual_seed(s), then Heun on the EDM grid."""
    run_sample(seeds="3", steps=4, out=tmp_path, quiet=True, grid=False)
    net = sk.load("shapes32-ideal")
    lat = torch.randn([1, 3, 32, 32], generator=torch.Generator().manual_seed(3))
    x = sk.samplers.heun(net, lat, sk.schedules.edm(4))
    expected = (x * 127.5 + 128).clip(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "000000" / "000003.png")), expected)


def test_manifest_records_settings_nfe_seeds_and_versions(tmp_path):
    m = run_sample(seeds="0,5,9-10", steps=5, out=tmp_path, quiet=True)
    saved = json.loads((tmp_path / "manifest.json").read_text())
    assert saved["nfe_per_image"] == 9 == m["nfe_per_image"]
    assert saved["seeds"] == [0, 5, 9, 10] and saved["sampler"] == "heun" and saved["steps"] == 5
    assert saved["sigma_max"] == pytest.approx(80.0) and saved["versions"]["torch"] == torch.__version__
    assert (tmp_path / "grid.png").is_file()


def test_manifest_has_sha256_of_a_model_file(tmp_path):
    from adapters.adm import create_unet

    flags = dict(image_size=8, num_channels=32, num_res_blocks=1, attention_resolutions="4", num_head_channels=16,
                 learn_sigma=True, diffusion_steps=50, noise_schedule="cosine", channel_mult="1,2")
    arch = {k: v for k, v in flags.items() if k not in ("diffusion_steps", "noise_schedule")}
    ckpt = tmp_path / "tiny.pt"
    torch.save(create_unet(**arch).state_dict(), ckpt)
    import hashlib

    args = ["--model", str(ckpt), "--family", "adm", *[f"--flag={k}={v}" for k, v in flags.items()]]
    for extra in (["--sampler", "heun", "--steps", "3"], ["--sampler", "ancestral", "--respacing", "10"]):
        out = tmp_path / extra[1]
        code, err = _invoke("sample", *args, *extra, "--seeds", "0-1", "--out", str(out), "--quiet")
        assert code == 0, err
        m = json.loads((out / "manifest.json").read_text())
        assert m["model_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert m["variance"] == "auto" and m["nfe_per_image"] == 10


def test_npz_matches_the_evaluator_format(tmp_path):
    run_sample(model="shapes32-ideal-cond", seeds="0-5", steps=3, out=tmp_path, fmt="npz", quiet=True)
    d = np.load(tmp_path / "samples_6x32x32x3.npz")
    assert d["arr_0"].shape == (6, 32, 32, 3) and d["arr_0"].dtype == np.uint8
    assert d["arr_1"].shape == (6,) and d["arr_1"].dtype == np.int64 and set(d["arr_1"]) <= {0, 1, 2, 3}
    assert not (tmp_path / ".parts").exists() or not any((tmp_path / ".parts").iterdir())
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["labels"] == d["arr_1"].tolist()


def test_npz_equals_pngs(tmp_path):
    run_sample(seeds="0-3", steps=3, out=tmp_path, fmt="both", quiet=True)
    from PIL import Image

    arr = np.load(tmp_path / "samples_4x32x32x3.npz")["arr_0"]
    for s in range(4):
        assert np.array_equal(arr[s], np.asarray(Image.open(tmp_path / "000000" / f"{s:06d}.png")))


def test_rerun_skips_written_seeds_and_extends(tmp_path):
    run_sample(seeds="0-3", steps=3, out=tmp_path, quiet=True)
    before = _pngs(tmp_path)
    m = run_sample(seeds="0-7", steps=3, out=tmp_path, quiet=True)
    assert m["new_images"] == 4 and {k: v for k, v in _pngs(tmp_path).items() if k in before} == before


def test_changed_settings_are_refused_unless_overwrite(tmp_path):
    run_sample(seeds="0-1", steps=3, out=tmp_path, quiet=True)
    code, err = _invoke("sample", "--seeds", "0-1", "--steps", "4", "--out", str(tmp_path), "--quiet")
    assert code != 0 and "steps: 3 there, 4 now" in err
    code, err = _invoke("sample", "--seeds", "0-1", "--steps", "4", "--out", str(tmp_path), "--quiet", "--overwrite")
    assert code == 0, err
    assert json.loads((tmp_path / "settings.json").read_text())["steps"] == 4


def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_set(tmp_path):
    args = ["sample", "--seeds", "0-199", "--steps", "2", "--batch", "4", "--quiet"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen([sys.executable, "-m", "samplerkit", *args, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(killed.rglob("*.png"))) < 20:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(list(killed.rglob("*.png")))
    assert 20 <= partial < 200
    assert _cli(*args, "--out", str(killed)).returncode == 0
    assert _cli(*args, "--out", str(clean)).returncode == 0
    assert _pngs(killed) == _pngs(clean) and len(_pngs(clean)) == 200
    assert not [p for p in killed.rglob("*") if ".tmp-" in p.name]


def test_two_torchrun_processes_give_the_single_process_images(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    args = ["sample", "--seeds", "0-7", "--steps", "3", "--batch", "2", "--quiet", "--device", "cpu"]
    assert _cli(*args, "--out", str(single)).returncode == 0
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "samplerkit", *args, "--out", str(multi)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _pngs(single) == _pngs(multi)
    assert json.loads((multi / "manifest.json").read_text())["world_size"] == 2


def test_nan_in_the_model_output_names_the_seed(tmp_path, monkeypatch):
    import samplerkit.cli.sample as sample_cli

    class NaNNet(sk.Denoiser):
        img_channels, img_resolution = 3, 8

        def forward(self, x, sigma, class_labels=None):
            return torch.full_like(x, float("nan"))

    monkeypatch.setattr(sample_cli, "load_model", lambda *a, **k: NaNNet())
    code, err = _invoke("sample", "--seeds", "4-5", "--steps", "2", "--out", str(tmp_path), "--quiet")
    assert code != 0 and "seed(s) [4, 5]" in err


BAD = [
    (["--model", "no-such-model"], "unknown model"),
    (["--model", "missing/file.pt"], "not found"),
    (["--seeds", "5-1"], "seed"),
    (["--seeds", "a,b"], "seed"),
    (["--steps", "0"], "steps"),
    (["--sigma-min", "-1"], "positive"),
    (["--sigma-min", "5", "--sigma-max", "1"], "sigma_min"),
    (["--rho", "0"], "rho"),
    (["--sampler", "ddim", "--eta", "-0.5"], "eta"),
    (["--sampler", "plms"], "plms"),
    (["--sampler", "heun", "--eta", "0.5"], "do not apply"),
    (["--sampler", "euler", "--S-churn", "10"], "do not apply"),
    (["--class-labels", "3"], "unconditional"),
    (["--model", "shapes32-ideal-cond", "--class-labels", "9"], "[0, 3]"),
    (["--model", "shapes32-ideal-cond", "--class-labels", "x"], "class-labels"),
    (["--batch", "0"], "batch"),
    (["--dtype", "float8"], "dtype"),
    (["--flag", "noequals"], "KEY=VALUE"),
    (["--sampler", "ddim", "--respacing", "50"], "discrete-time"),
    (["--out", "/proc/forbidden"], "cannot write"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, needle, capsys):
    from samplerkit.cli import main

    full = ["sample", "--seeds", "0-1", "--steps", "3", "--quiet", "--out", str(tmp_path / "o"), *args]
    with pytest.raises(SystemExit) as done:
        main(full)
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code != 0
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


def test_bad_input_through_the_console_script_has_no_traceback():
    r = _cli("sample", "--steps", "0", "--quiet")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
