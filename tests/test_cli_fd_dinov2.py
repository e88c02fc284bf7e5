"""``--metrics fd_dinov2`` on the `fid`, `fid-ref` and `sweep` commands: the values equal the library's, EDM2's
``.pkl`` written and read, and the refusals that keep FD_DINOv2 from being silently wrong.

The DINOv2 weights are a ViT-L/14 state dict in the released layout whose matrices are Hankel views
(``as_strided`` with unit strides) of one short random vector each: the file is a few MB, yet the features
vary from image to image. A ViT-L forward at 224 px costs seconds per image on a small CPU, so every set
holds 3 images.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from test_fid import assert_one_line_error, run_cli, write_pngs

import samplerkit as sk
from samplerkit.metrics import dinov2 as dino
from samplerkit.metrics import refs_edm2
from samplerkit.testing import under_two_processes

pytestmark = pytest.mark.usefixtures("one_thread")

N = 3  # images per set


def hankel_vitl14(path: Path) -> Path:
    """Random ViT-L/14 weights in ``dinov2_vitl14``'s state-dict layout, each tensor a Hankel view of a vector of
    sum(shape) numbers (entry [i, j, ...] = v[i + j + ...]), LayerNorm gains 1, LayerScale gains 0.1."""
    with torch.device("meta"):
        net = dino.VisionTransformer()  # ViT-L/14: embed 1024, depth 24, the 37 x 37 position grid
    g = torch.Generator().manual_seed(0)
    state = {}
    for k, v in net.state_dict().items():
        shape = tuple(v.shape)
        if k.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
            state[k] = torch.ones(1).expand(shape)
        elif k.endswith("gamma"):
            state[k] = torch.full((1,), 0.1).expand(shape)
        else:
            scale = 1 / np.sqrt(np.prod(shape[1:])) if len(shape) >= 2 and k.endswith("weight") else 0.02
            state[k] = (torch.randn(sum(shape), generator=g) * scale).as_strided(shape, (1,) * len(shape))
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return hankel_vitl14(tmp_path_factory.mktemp("dinov2") / dino.DINOV2_FILE)


def images(seed: int, bright: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256 - bright, (N, 4, 4, 3))
    return (np.kron(base, np.ones((1, 8, 8, 1))) + bright).astype(np.uint8)  # 32 x 32 blocky images


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fd-images")
    return {"a": write_pngs(root / "a", images(0, 0)), "b": write_pngs(root / "b", images(1, 60))}


@pytest.fixture(scope="module")
def library(folders, weights, inception_path) -> dict:
    """What the library computes for both folders: Inception (clean) and DINOv2 statistics with features."""
    inception = sk.metrics.inception(inception_path, mode="clean")
    extractor = dino.extractor(weights)
    return {k: sk.metrics.statistics_of_images_multi(p, "fid,fd_dinov2", inception=inception, dinov2=extractor,
                                                     keep_feats=True) for k, p in folders.items()}


@pytest.fixture(scope="module")
def a_vs_b(folders, weights, inception_path) -> dict:
    code, out, err = run_cli("fid", "--images", folders["a"], "--ref", folders["b"], "--metrics", "fid,fd_dinov2",
                             "--inception", inception_path, "--dinov2", weights, "--device", "cpu", "--json",
                             "--quiet")
    assert code == 0, err
    return json.loads(out)


def test_fid_and_fd_dinov2_from_the_cli_equal_the_library(a_vs_b, library, weights):
    a, b = library["a"], library["b"]
    assert a_vs_b["fid"] == pytest.approx(sk.metrics.evaluate(a["fid"], b["fid"])["fid"], rel=1e-9)
    assert a_vs_b["fd_dinov2"] == pytest.approx(refs_edm2.frechet("fd_dinov2", a["fd_dinov2"], b["fd_dinov2"]),
                                                rel=1e-9)
    # and EDM2's formula on the features themselves (np.cov, scipy's sqrtm)
    fa, fb = a["fd_dinov2"].feats.astype(np.float64), b["fd_dinov2"].feats.astype(np.float64)
    s1, s2 = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    root = np.real(scipy.linalg.sqrtm(s1 @ s2))
    expected = np.square(fa.mean(0) - fb.mean(0)).sum() + np.trace(s1 + s2 - 2 * root)
    assert a_vs_b["fd_dinov2"] == pytest.approx(expected, rel=1e-5)
    assert a_vs_b["fd_dinov2"] > 1e-3 and a_vs_b["fd_dinov2"] != pytest.approx(a_vs_b["fid"], rel=1e-2)
    assert a_vs_b["dinov2_mode"] == "dinov2-torch"
    assert a_vs_b["dinov2_network"] == dino.weights_sha256(dino.read_state_dict(weights))


@pytest.fixture(scope="module")
def ref_pkl(folders, weights, inception_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fd-ref") / "b.pkl"
    old = os.environ.get(dino.ENV_DINOV2)
    os.environ[dino.ENV_DINOV2] = str(weights.parent)  # the folder holding the file, as the library reads it
    try:
        code, _, err = run_cli("fid-ref", "--data", folders["b"], "--out", out, "--metrics", "fid,fd_dinov2",
                               "--inception", inception_path, "--device", "cpu", "--quiet")
    finally:
        if old is None:
            os.environ.pop(dino.ENV_DINOV2)
        else:
            os.environ[dino.ENV_DINOV2] = old
    assert code == 0, err
    return out


def test_fid_ref_pkl_is_edm2s_layout_for_a_plain_pickle_load(ref_pkl, library):
    with open(ref_pkl, "rb") as f:
        loaded = pickle.load(f)  # EDM2's load_stats
    assert loaded["num_images"] == N and {"fid", "fd_dinov2"} <= set(loaded)
    for metric, dim in (("fid", 2048), ("fd_dinov2", 1024)):
        assert loaded[metric]["mu"].shape == (dim,) and loaded[metric]["sigma"].shape == (dim, dim)
        assert loaded[metric]["mu"].dtype == np.float64
        np.testing.assert_allclose(loaded[metric]["mu"], library["b"][metric].mu, rtol=0, atol=1e-9)
        np.testing.assert_allclose(loaded[metric]["sigma"], library["b"][metric].sigma, rtol=0, atol=1e-9)
    assert loaded["fd_dinov2"]["mode"] == "dinov2-torch" and loaded["fid"]["mode"] == "clean"


def test_fid_against_the_pkl_with_paired_intervals_equals_the_library(ref_pkl, folders, weights, inception_path,
                                                                      a_vs_b, library):
    code, out, err = run_cli("fid", "--images", folders["a"], "--paired-with", folders["b"], "--ref", ref_pkl,
                             "--metrics", "fid,fd_dinov2", "--bootstrap", "20", "--inception", inception_path,
                             "--dinov2", weights, "--device", "cpu", "--json", "--quiet")
    assert code == 0, err
    got = json.loads(out)
    first, second = got["results"]
    for metric in ("fid", "fd_dinov2"):
        assert first[metric] == pytest.approx(a_vs_b[metric], rel=1e-9)
    a, b = library["a"]["fd_dinov2"], library["b"]["fd_dinov2"]
    ref = refs_edm2.read_reference(ref_pkl)["fd_dinov2"]
    own = sk.metrics.intervals(a, ref, ["fid"], 20, 0)
    paired = sk.metrics.intervals(a, ref, ["fid"], 20, 0, other=b)
    assert (first["fd_dinov2_lo"], first["fd_dinov2_hi"]) == pytest.approx((own["fid_lo"], own["fid_hi"]), rel=1e-9)
    for end in ("diff", "diff_lo", "diff_hi"):
        assert second[f"fd_dinov2_{end}"] == pytest.approx(paired[f"fid_{end}"], rel=1e-9, abs=1e-12)
    assert second["fd_dinov2_diff"] == pytest.approx(second["fd_dinov2"] - first["fd_dinov2"], rel=1e-9)
    assert "fid_diff" in second


def test_an_edm2_written_pkl_is_accepted_by_fid(ref_pkl, folders, weights, tmp_path, a_vs_b):
    with open(ref_pkl, "rb") as f:
        ours = pickle.load(f)
    edm2 = {"num_images": N, "fd_dinov2": {"mu": ours["fd_dinov2"]["mu"], "sigma": ours["fd_dinov2"]["sigma"]},
            "fid": {"mu": ours["fid"]["mu"], "sigma": ours["fid"]["sigma"]}}  # exactly save_stats' layout
    path = tmp_path / "edm2.pkl"
    path.write_bytes(pickle.dumps(edm2))
    code, out, err = run_cli("fid", "--images", folders["a"], "--ref", path, "--metrics", "fd_dinov2",
                             "--dinov2", weights, "--device", "cpu", "--json", "--quiet")
    assert code == 0, err
    assert json.loads(out)["fd_dinov2"] == pytest.approx(a_vs_b["fd_dinov2"], rel=1e-9)
    # EDM2's fid entry is TensorFlow Inception statistics: refused in clean mode before any network runs
    code, _, err = run_cli("fid", "--images", folders["a"], "--ref", path, "--metrics", "fid,fd_dinov2",
                           "--inception", tmp_path / "none.pt", "--dinov2", tmp_path / "none.pth")
    assert_one_line_error(code, err, "legacy-tensorflow")


def test_fd_dinov2_against_an_inception_only_npz_is_one_line(folders, tmp_path):
    f = np.random.default_rng(0).normal(size=(5, 2048))
    sk.metrics.Statistics(f.mean(0), np.cov(f, rowvar=False), 5, mode="clean").save(tmp_path / "inception.npz")
    code, _, err = run_cli("fid", "--images", folders["a"], "--ref", tmp_path / "inception.npz", "--metrics",
                           "fid,fd_dinov2", "--dinov2", tmp_path / "none.pth", "--inception", tmp_path / "none.pt")
    assert code == 2
    assert_one_line_error(code, err, "no fd_dinov2 statistics", "Inception")
    code, _, err = run_cli("fid-ref", "--data", folders["a"], "--out", tmp_path / "r.npz", "--metrics", "fd_dinov2")
    assert code == 2
    assert_one_line_error(code, err, ".pkl")
    assert not (tmp_path / "r.npz").exists()


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("metrics", ["fid,fd_dinov2", "fid", "fd_dinov2"])
def test_a_malicious_pkl_ref_is_one_line_and_runs_nothing(folders, tmp_path, metrics):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"fid": {"mu": np.zeros(2048), "sigma": Payload(marker)},
                                   "fd_dinov2": {"mu": np.zeros(1024), "sigma": Payload(marker)}}))
    code, _, err = run_cli("fid", "--images", folders["a"], "--ref", evil, "--metrics", metrics,
                           "--dinov2", tmp_path / "none.pth", "--inception", tmp_path / "none.pt")
    assert code == 2
    assert_one_line_error(code, err, "refusing", str(evil))
    assert not marker.exists()


def test_sweep_writes_fid_and_fd_dinov2_columns(tmp_path, weights, inception_path):
    csv_path = tmp_path / "s.csv"
    args = ["sweep", "--sampler", "euler", "--steps", "1", "--num-images", "2", "--ref", "builtin:shapes32?n=3",
            "--csv", csv_path, "--metrics", "fid,fd_dinov2", "--inception", inception_path, "--dinov2", weights,
            "--device", "cpu", "--quiet", "--table", "--plot", tmp_path / "s.png"]
    code, out, err = run_cli(*args)
    assert code == 0, err
    (row,) = sk.sweep.read_csv(csv_path)
    assert float(row["fid"]) > 0 and float(row["fd_dinov2"]) > 0
    assert row["dinov2_pipeline"].startswith("dinov2-torch ") and row["ref_dinov2"]
    header = out.splitlines()[0].split()
    assert header.index("fd_dinov2") == header.index("fid") + 1
    assert (tmp_path / "s.png").stat().st_size > 0
    # the DINOv2 reference/pipeline belongs to the experiment: another resize mode is refused before any cell runs
    code, _, err = run_cli(*args, "--dinov2-resize", "pil")
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error:") and "another experiment (ref_dinov2" in last
    assert len(sk.sweep.read_csv(csv_path)) == 1


# ---------------------------------------------------------------------------------------------
# two processes (torchrun's environment) give the numbers of one; a cheap stand-in for the network


class PooledDINOv2:
    """A stand-in for the DINOv2 extractor (its pipeline record, 4x4-pooled pixels as features)."""

    mode, sha256, resize_mode = "dinov2-torch", "d" * 64, "torch"

    def extract(self, images, spatial=False, logits=False):
        x = sk.metrics.as_uint8(images).astype(np.float64) / 255
        return x.reshape(len(x), 4, 8, 4, 8, 3).mean((2, 4)).reshape(len(x), -1), None


FD_ARGS = ("fid", "--images", "builtin:shapes32?n=64", "--num-images", "50", "--ref", "builtin:shapes32?n=64&seed=1",
           "--ref-images", "40", "--metrics", "fd_dinov2", "--bootstrap", "10", "--batch", "7", "--json", "--quiet")


def fd_command_with_stand_in() -> dict:
    from samplerkit import evaluation as fid_cli

    fid_cli.dinov2_extractor = lambda *args, **kwargs: PooledDINOv2()
    code, out, err = run_cli(*FD_ARGS)
    assert code == 0, err
    return json.loads(out) if out.strip() else {}  # under torchrun only rank 0 prints


def test_fd_dinov2_under_two_processes_gives_the_numbers_of_one(tmp_path, monkeypatch):
    from samplerkit import evaluation as fid_cli

    two = under_two_processes(fd_command_with_stand_in, tmp_path)  # the command joins the group of torchrun's env
    monkeypatch.setattr(fid_cli, "dinov2_extractor", fid_cli.dinov2_extractor)  # restored after the test
    one = fd_command_with_stand_in()
    assert (two["n_images"], two["n_ref_dinov2"]) == (one["n_images"], one["n_ref_dinov2"]) == (50, 40)
    assert one["fd_dinov2"] > 0 and two["fd_dinov2"] == pytest.approx(one["fd_dinov2"], rel=1e-10)
    assert (two["fd_dinov2_lo"], two["fd_dinov2_hi"]) == pytest.approx((one["fd_dinov2_lo"], one["fd_dinov2_hi"]),
                                                                       rel=1e-9)
