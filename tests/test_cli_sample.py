"""`samplerkit sample`: determinism, resume after SIGKILL, torchrun sharding, outputs, one-line errors.

The model is the analytic ``shapes32-ideal`` (exact, no download); it is loaded once per
session through the real loader and reused (loading builds its 1,024 images).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import samplerkit as sk
from samplerkit import distributed, runs
from samplerkit.cli import main
from samplerkit.data import to_uint8
from samplerkit.errors import SamplerkitError
from samplerkit.generate import draw
from samplerkit.runs import SampleSettings, sample_folder

IDEAL = "shapes32-ideal"
COND = "shapes32-ideal-cond"
SMALL = dict(model=IDEAL, steps=2, quiet=True, device="cpu")


def run_sample(net=None, **settings):
    """One sampling run to a folder, through the library entry point."""
    return sample_folder(SampleSettings(**settings), net=net)


@pytest.fixture(autouse=True)
def loaded_once(monkeypatch):
    """Every in-process run loads its model through the real loader, once per session."""
    monkeypatch.setattr(runs, "load_model", _cached_load)


def _cached_load(model, family, flags, preset, device="cpu"):
    return _load_once(model, family, tuple(sorted(dict(flags).items())), preset, str(device))


@functools.cache
def _load_once(model, family, flags, preset, device):
    return runs.load(model, family=family, device=device, **dict(flags), **({"preset": preset} if preset else {}))


def _cli(*args: str) -> tuple[int, str, str]:
    """Run ``samplerkit`` in-process through its entry point, as a console script would (click's
    CliRunner isolation captures stdout/stderr; SystemExit gives the exit code)."""
    with CliRunner().isolation() as streams:
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code
        return code, streams[0].getvalue().decode(), streams[1].getvalue().decode()


def _python_m(*args: str, cwd=None, env=None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(sk.__file__).parents[1]), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _pngs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png")) if p.name != "grid.png"}


class TinyConvEps(torch.nn.Module):
    """A two-layer conv eps-network (timestep as an input channel) for precision tests."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = torch.nn.Conv2d(4, 16, 3, padding=1), torch.nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x, t, class_labels=None):
        t_map = (t.to(x.dtype) / 100).reshape(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])
        return self.b(torch.nn.functional.silu(self.a(torch.cat([x, t_map], 1))))


def _conv_net():
    from samplerkit.diffusion import alpha_bar_from_betas, cosine_betas

    return sk.DiscreteEpsDenoiser(TinyConvEps(), alpha_bar_from_betas(cosine_betas(100)), img_resolution=8)


# ---------------------------------------------------------------------------------------------
# determinism


def test_pngs_are_bit_identical_for_batch_1_and_batch_16(tmp_path):
    for batch in (1, 16):
        run_sample(**SMALL, seeds="0-15", batch=batch, out=tmp_path / f"b{batch}", grid=False)
    one, sixteen = _pngs(tmp_path / "b1"), _pngs(tmp_path / "b16")
    assert len(one) == 16 and one == sixteen


def test_image_of_a_seed_is_edms_heun_from_that_seeds_generator(tmp_path):
    run_sample(**SMALL, seeds="3", out=tmp_path, grid=False)
    net = _cached_load(IDEAL, None, (), None, device=torch.device("cpu"))
    latents = torch.randn([1, 3, 32, 32], generator=torch.Generator().manual_seed(3))
    x = sk.samplers.heun(net, latents, sk.schedules.edm(2))
    expected = (x * 127.5 + 128).clip(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "000000" / "000003.png")), expected)


def test_pngs_go_to_subfolders_of_1000_seeds(tmp_path):
    run_sample(**SMALL, seeds="999-1000", out=tmp_path, grid=False)
    assert sorted(_pngs(tmp_path)) == ["000000/000999.png", "001000/001000.png"]


def test_two_torchrun_processes_write_the_single_process_images(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    args = ["--model", COND, "--seeds", "0-6", "--steps", "2", "--batch", "2", "--format", "both", "--quiet",
            "--device", "cpu"]
    proc = _python_m("torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                     "-m", "samplerkit", "sample", *args, "--out", str(multi))
    assert _cli("sample", *args, "--out", str(single))[0] == 0
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert len(_pngs(multi)) == 7 and _pngs(single) == _pngs(multi)
    a, b = np.load(single / "samples_7x32x32x3.npz"), np.load(multi / "samples_7x32x32x3.npz")
    assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])
    assert json.loads((multi / "manifest.json").read_text())["world_size"] == 2


def test_shard_takes_every_world_size_th_seed_from_rank(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert distributed.shard(list(range(10))) == [1, 4, 7] and not distributed.is_main()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert distributed.shard([5, 6]) == [5, 6] and distributed.init() == (0, 1)


def test_bfloat16_runs_the_network_in_bfloat16_and_float32_does_not(tmp_path):
    net = _conv_net()
    for dtype in ("float32", "bfloat16"):
        run_sample(net=net, steps=3, seeds="0-3", out=tmp_path / dtype, dtype=dtype, quiet=True, device="cpu")
    latents = torch.randn([1, 3, 8, 8], generator=torch.Generator().manual_seed(0))
    sigmas = sk.schedules.edm(3, sigma_min=max(0.002, net.sigma_min), sigma_max=min(80, net.sigma_max))
    with torch.no_grad():
        reference = to_uint8(sk.samplers.heun(net, latents, sigmas))[0]
    f32, bf16 = _pngs(tmp_path / "float32"), _pngs(tmp_path / "bfloat16")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "float32" / "000000" / "000000.png")), reference)
    assert sum(f32[k] != bf16[k] for k in f32) >= 3


# ---------------------------------------------------------------------------------------------
# resume


def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_set(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    args = dict(model=IDEAL, seeds="0-199", steps=1, batch=4)
    proc = _python_m("samplerkit", "sample", "--model", IDEAL, "--seeds", "0-199", "--steps", "1", "--batch", "4",
                     "--quiet", "--device", "cpu", "--out", str(killed))
    deadline = time.time() + 120
    while time.time() < deadline and len(list(killed.rglob("0*.png"))) < 20 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    survivors = sorted(killed.rglob("0*.png"))
    assert 20 <= len(survivors) < 200
    for png in survivors:  # no truncated file: every PNG decodes completely
        with Image.open(png) as im:
            im.load()
    resumed = run_sample(**args, out=killed, quiet=True, device="cpu")
    run_sample(**args, out=clean, quiet=True, device="cpu")
    assert resumed["new_images"] == 200 - len(survivors)
    assert len(_pngs(clean)) == 200 and _pngs(killed) == _pngs(clean)
    assert not [p for p in killed.rglob("*") if ".tmp-" in p.name]


def test_rerun_makes_only_the_missing_seeds(tmp_path):
    run_sample(**SMALL, seeds="0-3", out=tmp_path)
    before = _pngs(tmp_path)
    (tmp_path / "000000" / "000002.png").unlink()
    manifest = run_sample(**SMALL, seeds="0-5", out=tmp_path)
    assert manifest["new_images"] == 3 and len(_pngs(tmp_path)) == 6
    assert {k: v for k, v in _pngs(tmp_path).items() if k in before} == before


def test_leftover_temporaries_are_removed_on_the_next_run(tmp_path):
    run_sample(**SMALL, seeds="0", out=tmp_path, grid=False)
    leftover = tmp_path / "000000" / ".000001.png.tmp-abc"
    leftover.write_bytes(b"\x89PNG half")
    run_sample(**SMALL, seeds="0-1", out=tmp_path, grid=False)
    assert not leftover.exists() and len(_pngs(tmp_path)) == 2


def test_changed_setting_is_refused_naming_it_unless_overwrite(tmp_path):
    run_sample(**SMALL, seeds="0-1", out=tmp_path)
    base = ["sample", "--model", IDEAL, "--seeds", "0-1", "--steps", "3", "--out", str(tmp_path), "--quiet"]
    code, _, err = _cli(*base)
    assert code == 2 and err.count("\n") == 1 and "steps: 2 there, 3 now" in err and "--overwrite" in err
    code, _, err = _cli(*base, "--overwrite")
    assert code == 0, err
    assert json.loads((tmp_path / "settings.json").read_text())["steps"] == 3
    assert json.loads((tmp_path / "manifest.json").read_text())["new_images"] == 2


def test_a_failed_run_does_not_lock_its_folder(tmp_path):
    with pytest.raises(SamplerkitError, match="eta"):
        run_sample(**{**SMALL, "sampler": "ddim"}, options={"eta": -1.0}, seeds="0", out=tmp_path)
    run_sample(**{**SMALL, "sampler": "ddim"}, options={"eta": 1.0}, seeds="0", out=tmp_path)
    assert json.loads((tmp_path / "settings.json").read_text())["eta"] == 1.0


# ---------------------------------------------------------------------------------------------
# outputs


def test_npz_has_the_evaluators_layout_and_the_labels_of_the_seeds(tmp_path):
    manifest = run_sample(**{**SMALL, "model": COND}, seeds="0-5", out=tmp_path, fmt="npz")
    data = np.load(tmp_path / "samples_6x32x32x3.npz")
    assert data.files == ["arr_0", "arr_1"]
    assert data["arr_0"].shape == (6, 32, 32, 3) and data["arr_0"].dtype == np.uint8
    assert data["arr_1"].dtype == np.int64 and data["arr_1"].tolist() == manifest["labels"]
    net = _cached_load(COND, None, (), None, device=torch.device("cpu"))
    drawn = draw(net, list(range(6)), "random", "cpu")[1]
    assert data["arr_1"].tolist() == drawn.tolist()
    assert not (tmp_path / ".parts").exists() and not _pngs(tmp_path)


def test_npz_of_format_both_equals_the_pngs(tmp_path):
    run_sample(**SMALL, seeds="0-3", out=tmp_path, fmt="both")
    arr = np.load(tmp_path / "samples_4x32x32x3.npz")
    assert arr.files == ["arr_0"]
    for s in range(4):
        assert np.array_equal(arr["arr_0"][s], np.asarray(Image.open(tmp_path / "000000" / f"{s:06d}.png")))


def test_npz_only_run_extends_from_its_finished_npz(tmp_path):
    run_sample(**SMALL, seeds="0-3", out=tmp_path, fmt="npz")
    first = np.load(tmp_path / "samples_4x32x32x3.npz")["arr_0"]
    manifest = run_sample(**SMALL, seeds="0-5", out=tmp_path, fmt="npz")
    run_sample(**SMALL, seeds="0-5", out=tmp_path / "fresh", fmt="npz")
    extended = np.load(tmp_path / "samples_6x32x32x3.npz")["arr_0"]
    assert manifest["new_images"] == 2 and np.array_equal(extended[:4], first)
    assert np.array_equal(extended, np.load(tmp_path / "fresh" / "samples_6x32x32x3.npz")["arr_0"])
    assert not (tmp_path / "samples_4x32x32x3.npz").exists()


def test_per_seed_class_labels_reach_the_images(tmp_path):
    manifest = run_sample(**{**SMALL, "model": COND}, seeds="0-3", class_labels="2,0,3,3", out=tmp_path)
    assert manifest["labels"] == [2, 0, 3, 3]


def test_manifest_records_sampler_settings_nfe_seeds_and_versions(tmp_path):
    run_sample(**{**SMALL, "steps": 5}, seeds="0,5,9-10", out=tmp_path)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["nfe_per_image"] == 9 and m["seeds"] == [0, 5, 9, 10] and m["labels"] is None
    assert (m["model"], m["sampler"], m["steps"], m["disc"], m["rho"]) == (IDEAL, "heun", 5, "edm", 7.0)
    assert m["sigma_max"] == pytest.approx(80.0) and m["sigma_min"] == pytest.approx(0.002)
    assert m["versions"]["torch"] == torch.__version__ and m["versions"]["samplerkit"] == sk.__version__
    assert m["device"] == "cpu" and m["dtype"] == "float32" and m["images_per_second"] > 0
    assert m["settings_fingerprint"] and (tmp_path / "grid.png").is_file()


def test_manifest_records_the_sha256_of_a_model_file(tmp_path, monkeypatch):
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(os.urandom(4096))
    seen = []
    monkeypatch.setattr(runs, "load_model", lambda model, *a, **k: seen.append(model) or _cached_load(
        IDEAL, None, (), None, device=torch.device("cpu")))
    code, _, err = _cli("sample", "--model", str(checkpoint), "--family", "adm", "--flag", "num_channels=8",
                        "--seeds", "0", "--steps", "2", "--out", str(tmp_path / "o"), "--quiet")
    assert code == 0, err
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert seen == [str(checkpoint)] and m["model_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert m["family"] == "adm" and m["flags"] == {"num_channels": 8}


def test_same_model_file_under_another_path_resumes(tmp_path, monkeypatch):
    first, moved = tmp_path / "a.pt", tmp_path / "moved" / "a.pt"
    moved.parent.mkdir()
    first.write_bytes(b"weights")
    moved.write_bytes(b"weights")
    monkeypatch.setattr(runs, "load_model", lambda *a, **k: _cached_load(IDEAL, None, (), None, "cpu"))
    run_sample(**{**SMALL, "model": str(first), "family": "adm"}, seeds="0", out=tmp_path / "o")
    m = run_sample(**{**SMALL, "model": str(moved), "family": "adm"}, seeds="0-1", out=tmp_path / "o")
    assert m["new_images"] == 1 and m["model"] == str(moved)
    moved.write_bytes(b"other weights")
    with pytest.raises(SamplerkitError, match="model_sha256"):
        run_sample(**{**SMALL, "model": str(moved), "family": "adm"}, seeds="0-1", out=tmp_path / "o")


def test_default_run_is_offline_and_says_where_the_images_went(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAMPLERKIT_OFFLINE", "1")
    code, out, err = _cli("sample", "--seeds", "0-1", "--steps", "2")  # default model, default --out
    assert code == 0, err
    assert runs.DEFAULT_MODEL in ("shapes32-ideal", "shapes32-adm-ip")
    assert "2 images (2 new) in out/: 000000/000000.png ... 000000/000001.png" in out
    assert "img/s" in err  # the progress bar
    assert len(_pngs(tmp_path / "out")) == 2


def test_nan_stops_the_run_naming_the_seed_and_the_evaluation(tmp_path, monkeypatch):
    class NaNLater(sk.Denoiser):
        """Finite for two evaluations, then NaN in batch row 1."""

        img_channels, img_resolution, calls = 3, 8, 0

        def forward(self, x, sigma, class_labels=None):
            self.calls += 1
            D = torch.zeros_like(x)
            if self.calls == 3:
                D[1] = float("nan")
            return D

    monkeypatch.setattr(runs, "load_model", lambda *a, **k: NaNLater())
    code, _, err = _cli("sample", "--sampler", "heun", "--seeds", "4-7", "--steps", "3", "--out", str(tmp_path),
                        "--quiet")
    assert code == 2 and err.count("\n") == 1
    assert "seed(s) [5] at network evaluation 3 of 5" in err


# ---------------------------------------------------------------------------------------------
# bad input: one line on stderr, non-zero exit, no traceback

BAD = [
    (["--model", "no-such-model"], "unknown model"),
    (["--model", "missing/file.pt"], "not found"),
    (["--seeds", "5-1"], "seed"),
    (["--seeds", "a,b"], "seed"),
    (["--seeds", "1,1"], "repeats"),
    (["--seeds", "0-99999999999"], "more than 10,000,000 seeds"),
    (["--steps", "0"], "steps"),
    (["--sigma-min", "-1"], "positive"),
    (["--sigma-min", "5", "--sigma-max", "1"], "--sigma-min < --sigma-max"),
    (["--rho", "0"], "rho"),
    (["--sampler", "ddim", "--eta", "-0.5"], "eta"),
    (["--sampler", "plms"], "plms"),
    (["--sampler", "heun", "--eta", "0.5"], "do not apply to the heun sampler"),
    (["--sampler", "euler", "--S-churn", "10"], "do not apply to the euler sampler"),
    (["--sampler", "ancestral", "--variance", "learned"], "learned variance"),
    (["--sampler", "ddim", "--respacing", "50"], "discrete-time"),
    (["--class-labels", "3"], "unconditional"),
    (["--model", COND, "--class-labels", "9"], "[0, 3]"),
    (["--model", COND, "--class-labels", "1,2,3"], "one per seed"),
    (["--model", COND, "--class-labels", "x"], "class-labels"),
    (["--batch", "0"], "batch"),
    (["--dtype", "float8"], "float8"),
    (["--format", "gif"], "gif"),
    (["--flag", "noequals"], "KEY=VALUE"),
    (["--out", "/proc/forbidden"], "cannot write"),
    (["--no-such-option"], "no-such-option"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_gives_one_error_line_and_exit_2(tmp_path, args, needle):
    code, _, err = _cli("sample", "--model", IDEAL, "--seeds", "0-1", "--steps", "2", "--quiet",
                        "--out", str(tmp_path / "o"), *args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err


def test_out_that_is_a_file_is_an_error(tmp_path):
    (tmp_path / "f").write_text("")
    code, _, err = _cli("sample", "--model", IDEAL, "--seeds", "0", "--out", str(tmp_path / "f"), "--quiet")
    assert code == 2 and err.count("\n") == 1 and "cannot write" in err


SUBPROCESS_BAD = [
    (["--steps", "0"], "steps"),
    (["--sampler", "heun", "--eta", "0.5"], "do not apply"),
    (["--model", "no-such-model"], "unknown model"),
    (["--dtype", "float8"], "float8"),
]


@pytest.fixture(scope="module")
def console_runs(tmp_path_factory):
    """The bad inputs of SUBPROCESS_BAD through ``python -m samplerkit``, all started at once."""
    out = tmp_path_factory.mktemp("console")
    procs = [_python_m("samplerkit", "sample", "--model", IDEAL, "--seeds", "0", "--quiet", "--out", str(out), *a)
             for a, _ in SUBPROCESS_BAD]
    return [(p.communicate(timeout=300), p.returncode) for p in procs]


@pytest.mark.parametrize("case", range(len(SUBPROCESS_BAD)), ids=[" ".join(a) for a, _ in SUBPROCESS_BAD])
def test_bad_input_through_python_m_samplerkit_has_no_traceback(console_runs, case):
    (stdout, stderr), code = console_runs[case]
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and SUBPROCESS_BAD[case][1] in stderr
    assert "Traceback" not in stderr


def test_default_sampler_is_the_models_recommendation(tmp_path, monkeypatch):
    """Without --sampler the zoo entry's recommended settings are used, the user's knobs on top;
    --sampler without --steps takes the recommended count only for the recommended sampler."""
    from samplerkit import zoo
    from samplerkit.runs import resolve_sampler

    entry = zoo.get("adm-imagenet64")
    assert entry.recommended["sampler"] == "ancestral"
    assert resolve_sampler("adm-imagenet64", None, None, {}) == ("ancestral", entry.recommended["steps"],
                                                                 {"variance": "learned"})
    assert resolve_sampler("adm-imagenet64", None, 50, {"variance": "fixedlarge"}) == (
        "ancestral", 50, {"variance": "fixedlarge"})
    assert resolve_sampler("adm-imagenet64", "heun", None, {}) == ("heun", 18, {})
    assert resolve_sampler("adm-imagenet64", "ancestral", None, {}) == ("ancestral", entry.recommended["steps"], {})
    assert resolve_sampler("some/file.pt", None, None, {}) == ("heun", 18, {})

    monkeypatch.setitem(zoo.get(IDEAL).__dict__, "recommended", {"sampler": "ddim", "steps": 3, "eta": 0.0})
    manifest = run_sample(model=IDEAL, seeds="0-1", out=tmp_path, quiet=True, device="cpu", grid=False)
    assert (manifest["sampler"], manifest["steps"], manifest["eta"], manifest["nfe_per_image"]) == ("ddim", 3, 0.0, 3)


def test_refused_folder_names_sampler_steps_and_model_first_and_how_to_start_anew(tmp_path):
    base = ["sample", "--model", IDEAL, "--seeds", "0", "--out", str(tmp_path), "--quiet", "--device", "cpu"]
    assert _cli(*base, "--sampler", "heun", "--steps", "2")[0] == 0
    code, _, err = _cli(*base, "--sampler", "euler", "--steps", "3", "--rho", "5")
    assert code == 2 and err.count("\n") == 1
    assert err.index("sampler: \"heun\" there, \"euler\" now") < err.index("steps: 2 there, 3 now") < err.index("rho")
    assert "pass another --out" in err


def test_ctrl_c_says_how_many_images_are_saved_and_that_a_rerun_resumes(tmp_path, monkeypatch):
    class StopAfterTwoBatches(sk.Denoiser):
        img_channels, img_resolution, calls = 3, 8, 0

        def forward(self, x, sigma, class_labels=None):
            self.calls += 1
            if self.calls > 2 * 3:  # heun 2 steps = 3 evaluations per batch
                raise KeyboardInterrupt
            return torch.zeros_like(x)

    monkeypatch.setattr(runs, "load_model", lambda *a, **k: StopAfterTwoBatches())
    code, _, err = _cli("sample", "--sampler", "heun", "--steps", "2", "--seeds", "0-9", "--batch", "2",
                        "--out", str(tmp_path), "--quiet")
    assert code == 130 and err.count("\n") == 1, err
    assert f"4 of 10 images are saved in {tmp_path}" in err and "rerun the same command" in err
    assert len(_pngs(tmp_path)) == 4


def test_churn_free_stochastic_and_cpu_float16_each_print_one_note(tmp_path):
    args = ["sample", "--model", IDEAL, "--seeds", "0", "--steps", "2", "--device", "cpu", "--no-grid"]
    code, _, err = _cli(*args, "--sampler", "stochastic", "--out", str(tmp_path / "a"))
    assert code == 0 and err.count("S_churn = 0 is exactly heun") == 1
    code, _, err = _cli(*args, "--sampler", "heun", "--dtype", "float16", "--out", str(tmp_path / "b"))
    assert code == 0 and err.count("--dtype float16 on a CPU") == 1
    code, _, err = _cli(*args, "--sampler", "heun", "--out", str(tmp_path / "c"))
    assert "note:" not in err and "warning:" not in err


@pytest.mark.parametrize("sampler", [None, "heun", "ancestral"])
def test_a_sigma_knob_is_never_silently_ignored(tmp_path, sampler):
    """Without --sampler the built-in model's recommended ancestral sampler runs on its own
    respaced chain; a sigma-grid knob is then an error, as it is for an explicit sampler."""
    args = ["sample", "--seeds", "0-1", "--sigma-min", "-1", "--out", str(tmp_path), "--quiet", "--device", "cpu"]
    code, _, err = _cli(*args, *(["--sampler", sampler] if sampler else []))
    assert code == 2 and err.count("\n") == 1 and ("--sigma-min" in err or "sigma_min" in err)
    assert not _pngs(tmp_path)


def test_per_seed_latents_and_noise_do_not_depend_on_the_batch_and_pixels_agree_to_kernel_rounding(tmp_path):
    """The stated guarantee (README): a seed's latents and every noise draw are the same for any
    --batch; the pixels of a real network then agree up to float32 kernel rounding (one level)."""
    from samplerkit import generate

    net = runs.load("shapes32-adm-ip")
    prepared = generate.make_sampler(net, "ancestral", 10)
    seeds = list(range(12))
    latents = {}
    images = {}
    for batch in (1, 5):
        draws: dict[int, list] = {}
        for chunk, x, _ in generate.generate(net, prepared, seeds, batch, device="cpu"):
            images.setdefault(batch, []).append(to_uint8(x))
            lat, _, rnd = generate.draw(net, chunk, None, "cpu")
            first_noise, second_noise = rnd.randn_like(lat), rnd.randn_like(lat)
            for i, seed in enumerate(chunk):
                draws[seed] = [lat[i], first_noise[i], second_noise[i]]
        latents[batch] = draws
    for seed in seeds:
        for a, b in zip(latents[1][seed], latents[5][seed], strict=True):
            assert torch.equal(a, b)
    one, five = np.concatenate(images[1]).astype(int), np.concatenate(images[5]).astype(int)
    assert np.abs(one - five).max() <= 1
    assert (one != five).mean() < 1e-3


def test_progress_moves_within_a_batch_per_network_evaluation(tmp_path, monkeypatch):
    class Slow(sk.Denoiser):
        img_channels, img_resolution = 3, 8

        def forward(self, x, sigma, class_labels=None):
            time.sleep(0.15)  # longer than tqdm's refresh interval
            return torch.zeros_like(x)

    monkeypatch.setattr(runs, "load_model", lambda *a, **k: Slow())
    code, _, err = _cli("sample", "--sampler", "euler", "--steps", "4", "--seeds", "0-3", "--batch", "4",
                        "--out", str(tmp_path), "--no-grid")
    assert code == 0, err
    shown = [int(m) for m in re.findall(r"\| (\d+)/4 \[", err)]
    assert {1, 2, 3} <= set(shown) and shown[-1] == 4  # one batch of 4 images, yet the bar moved in between


def test_manifest_of_a_run_folder_checkpoint_records_the_flags_it_was_built_with(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model000010.pt").write_bytes(b"weights")
    (run / "flags.json").write_text(json.dumps({"image_size": 32, "num_channels": 32, "noise_schedule": "cosine"}))
    monkeypatch.setattr(runs, "load_model", lambda *a, **k: _cached_load(IDEAL, None, (), None, "cpu"))
    m = run_sample(**{**SMALL, "model": str(run / "model000010.pt")}, seeds="0", out=tmp_path / "o")
    assert m["family"] == "adm"
    assert m["flags"] == {"image_size": 32, "num_channels": 32, "noise_schedule": "cosine"}
