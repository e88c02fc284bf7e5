"""FD_DINOv2 as EDM2 computes it: DINOv2 ViT features against facebookresearch/dinov2's own outputs, EDM2's
statistics, FD and ``.pkl`` reference files, the restricted unpickler, and one pass for both detectors.

The fixture ``dinov2_upstream_outputs.pt`` holds random weights in the ``dinov2_vitl14`` state-dict layout
(same keys, the 518 px position grid of 37 x 37 + class token; embed dim 16, depth 2, 2 heads to keep it
small), uint8 images, and what upstream code gave on them: facebookresearch/dinov2 at b8931f7 (attention by
``scaled_dot_product_attention``, what torch.hub loads today) and at 81b2b64 (explicit softmax attention, the
code of 2023), each called
through NVlabs/edm2's ``DINOv2Detector`` (4bf8162) in both resize modes; EDM2's
``calculate_stats_for_iterable`` + ``save_stats`` on two image sets (the ``fid`` entry from an 8-d stand-in
detector) and its ``calculate_metrics_from_stats`` between them.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from _http_server import FileServer
from PIL import Image

import samplerkit as sk
from samplerkit import download
from samplerkit.errors import SamplerkitError
from samplerkit.metrics import Statistics, StatsBuilder, refs_edm2
from samplerkit.metrics import dinov2 as dino
from samplerkit.metrics.multi import MultiStatsBuilder, statistics_of_source_multi

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURE = Path(__file__).parent / "fixtures" / "dinov2_upstream_outputs.pt"


@pytest.fixture(scope="module")
def fx() -> dict:
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(scope="module")
def model(fx) -> dino.VisionTransformer:
    return dino.vit_from_state_dict(fx["state_dict"], num_heads=fx["num_heads"])


def one_line(err) -> bool:
    return "\n" not in str(err.value) and len(str(err.value)) > 0


# ---------------------------------------------------------------------------------------------
# features


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("resize_mode", ["torch", "pil"])
@pytest.mark.parametrize("speed", ["exact", "fast"])
def test_features_equal_upstream_dinov2_under_edm2_preprocessing(fx, model, size, resize_mode, speed):
    images = fx[f"images{size}"]  # uint8 NCHW, as EDM2's detector takes them
    ours = torch.from_numpy(dino.DINOv2(model, resize_mode=resize_mode, speed=speed)(images))
    for key in ("upstream_features", "upstream_features_81b2b64"):
        ref = fx[key][f"{resize_mode}{size}"]
        scale = float(ref.abs().max())
        assert ours.shape == ref.shape and scale > 0.5
        assert float((ours - ref).abs().max()) <= 1e-4 * scale
    # both speeds call sdpa as the current backbone does: its features to float rounding
    own = fx["upstream_features"][f"{resize_mode}{size}"]
    assert float((ours - own).abs().max()) <= 1e-6 * float(own.abs().max())


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("resize_mode", ["torch", "pil"])
def test_the_2023_attention_arithmetic_equals_upstream_of_2023(fx, model, size, resize_mode):
    x = dino.preprocess(fx[f"images{size}"], resize_mode)
    with torch.inference_mode():
        ours = model(x, attention="einsum")
    own = fx["upstream_features_81b2b64"][f"{resize_mode}{size}"]
    assert float((ours - own).abs().max()) <= 1e-6 * float(own.abs().max())
    assert float((ours - fx["upstream_features"][f"{resize_mode}{size}"]).abs().max()) <= 1e-4 * float(own.abs().max())


def test_the_two_resize_modes_differ_and_image_layouts_agree(fx, model):
    images = fx["images32"]
    torch_mode = dino.DINOv2(model, resize_mode="torch")
    nhwc = images.permute(0, 2, 3, 1).numpy()  # samplerkit's data sources give uint8 NHWC arrays
    np.testing.assert_array_equal(torch_mode(images), torch_mode(nhwc))
    floats = images.float() / 127.5 - 1  # [-1, 1] NCHW, rounded back to these uint8 values
    np.testing.assert_array_equal(torch_mode(images), torch_mode(floats))
    pil = dino.DINOv2(model, resize_mode="pil")(images)
    assert np.abs(pil - torch_mode(images)).max() > 1e-3  # the resize is part of the pipeline


def test_position_embedding_follows_upstreams_scale_factor_not_the_output_size(model):
    pos = model.position_embedding(224, 224)
    assert pos.shape == (1, 16 * 16 + 1, 16)
    grid = model.pos_embed[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    by_size = torch.nn.functional.interpolate(grid, size=(16, 16), mode="bicubic")
    by_size = by_size.permute(0, 2, 3, 1).reshape(1, 256, -1)
    assert float((pos[:, 1:] - by_size).abs().max()) > 1e-3  # the (16 + 0.1) / 37 scale moves the samples
    torch.testing.assert_close(pos[:, :1], model.pos_embed[:, :1], rtol=0, atol=0)
    assert model.position_embedding(518, 518) is model.pos_embed


def test_resize_mode_and_speed_are_checked(model):
    with pytest.raises(SamplerkitError, match="resize_mode") as err:
        dino.DINOv2(model, resize_mode="bilinear")
    assert one_line(err)
    with pytest.raises(SamplerkitError, match="speed"):
        dino.DINOv2(model, speed="turbo")
    with pytest.raises(SamplerkitError, match=r"\[N, 3, H, W\]"):
        dino.DINOv2(model)(np.zeros((2, 8, 8), np.uint8))


# ---------------------------------------------------------------------------------------------
# weights files


def layout_file(path: Path, embed_dim: int = 1024, depth: int = 24, registers: int = 0) -> Path:
    """A state dict in the released layout of a DINOv2 ViT (/14, 518 px grid) whose tensors are views of one
    stored element each, so that even ViT-L/14 takes a few kB on disk."""
    with torch.device("meta"):
        net = dino.VisionTransformer(embed_dim, depth, embed_dim // 64, 4 * embed_dim)
    state = {}
    for i, (k, v) in enumerate(net.state_dict().items()):
        value = 1.0 if k.endswith(("norm1.weight", "norm2.weight", "norm.weight")) else 0.02 * ((i % 7) - 3)
        state[k] = torch.full((1,), value).expand(v.shape)
    if registers:
        state["register_tokens"] = torch.zeros(1).expand(1, registers, embed_dim)
    torch.save(state, path)
    return path


def test_a_vit_l14_state_dict_loads_strictly_through_the_public_entry(tmp_path, monkeypatch):
    file = layout_file(tmp_path / dino.DINOV2_FILE)
    assert file.stat().st_size < 200_000
    monkeypatch.setenv("SAMPLERKIT_DINOV2", str(tmp_path))  # a folder holding the file, as SAMPLERKIT_INCEPTION
    assert dino.dinov2_path() == file
    images = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    feats = sk.metrics.dinov2_features(images, resize_mode="torch")
    assert feats.shape == (1, 1024) and feats.dtype == np.float32 and np.isfinite(feats).all()
    extractor = dino.extractor()
    assert extractor.sha256 == dino.weights_sha256(dino.read_state_dict(file)) and len(extractor.sha256) == 64
    assert extractor.mode == "dinov2-torch"


@pytest.mark.parametrize("embed_dim,depth,registers,name", [(384, 12, 0, "ViT-S/14"), (768, 12, 0, "ViT-B/14"),
                                                             (1024, 24, 4, "4 register tokens")])
def test_weights_of_another_vit_are_refused_in_one_line(tmp_path, embed_dim, depth, registers, name):
    file = layout_file(tmp_path / "weights.pth", embed_dim, depth, registers)
    with pytest.raises(SamplerkitError, match=name) as err:
        dino.extractor(file)
    assert one_line(err) and "ViT-L/14" in str(err.value)


def test_a_weights_file_that_is_not_a_state_dict_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "bad.pth"
    torch.save({"cls_token": Payload()}, bad)
    with pytest.raises(SamplerkitError, match="weights_only") as err:
        dino.extractor(bad)
    assert one_line(err) and not marker.exists()
    with pytest.raises(SamplerkitError, match="not found"):
        dino.extractor(tmp_path / "missing.pth")


def test_missing_weights_download_into_the_cache_and_become_trusted_once_they_load(tmp_path, monkeypatch):
    monkeypatch.delenv("SAMPLERKIT_DINOV2", raising=False)
    monkeypatch.setenv("SAMPLERKIT_CACHE", str(tmp_path / "cache"))
    payload = layout_file(tmp_path / "served.pth").read_bytes()
    with FileServer() as srv:
        srv.add("/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth", payload)
        monkeypatch.setattr(dino, "DINOV2_URL", srv.url("/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth"))
        path = dino.dinov2_path()
        assert path == tmp_path / "cache" / dino.DINOV2_FILE and path.read_bytes() == payload
        assert download.trusted_sha256(path) is None  # not trusted before it loads as a ViT-L/14
        dino.load_dinov2()
        assert download.trusted_sha256(path) == download.sha256_file(path)
        assert dino.dinov2_path() == path and len(srv.log) == 1  # cached: no second request


def test_offline_without_weights_says_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.delenv("SAMPLERKIT_DINOV2", raising=False)
    monkeypatch.setenv("SAMPLERKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("SAMPLERKIT_OFFLINE", "1")
    with pytest.raises(SamplerkitError, match="SAMPLERKIT_DINOV2") as err:
        dino.dinov2_path()
    assert one_line(err) and dino.DINOV2_URL in str(err.value)


def test_edm2_references_are_named_and_fetched_from_the_cdn(tmp_path, monkeypatch, fx):
    assert refs_edm2.EDM2_REFS_URL == "https://nvlabs-fi-cdn.nvidia.com/edm2/dataset-refs/"
    assert {k: v[0] for k, v in refs_edm2.EDM2_REFERENCES.items()} == {"edm2-img512": "img512.pkl",
                                                                       "edm2-img64": "img64.pkl"}
    monkeypatch.setenv("SAMPLERKIT_CACHE", str(tmp_path))
    with FileServer() as srv:
        srv.add("/edm2/dataset-refs/img64.pkl", fx["edm2_stats_pkl"]["a"].numpy().tobytes())
        monkeypatch.setattr(refs_edm2, "EDM2_REFS_URL", srv.url("/edm2/dataset-refs/"))
        path = refs_edm2.edm2_reference("edm2-img64", progress=False)
    assert set(refs_edm2.read_reference(path)) == {"fid", "fd_dinov2"}
    with pytest.raises(SamplerkitError, match="edm2-img512"):
        refs_edm2.edm2_reference("edm2-img256")


# ---------------------------------------------------------------------------------------------
# statistics and FD as EDM2 computes them


def edm2_statistics_formula(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """calculate_stats_for_iterable: float64 sums of f and f^T f, mu = sum / n, sigma = (S - n mu mu^T) / (n - 1)."""
    f = features.astype(np.float64)
    n = len(f)
    mu = f.sum(0) / n
    return mu, (f.T @ f - np.outer(mu, mu) * n) / (n - 1)


def edm2_fd_formula(mu1, s1, mu2, s2) -> float:
    """calculate_metrics_from_stats: |mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))."""
    m = np.square(mu1 - mu2).sum()
    s, _ = scipy.linalg.sqrtm(np.dot(s1, s2), disp=False)
    return float(np.real(m + np.trace(s1 + s2 - s * 2)))


def edm2_pkl(fx, name: str, tmp_path: Path) -> Path:
    path = tmp_path / f"edm2-{name}.pkl"
    path.write_bytes(fx["edm2_stats_pkl"][name].numpy().tobytes())
    return path


def dino_statistics(model, images, speed="exact") -> Statistics:
    builder = StatsBuilder(dino.DINOv2(model, batch_size=8, speed=speed), ("fid",))
    builder.add(images[:8])
    builder.add(images[8:])
    return builder.result()


def test_statistics_and_fd_equal_edm2s_on_the_same_images(fx, model, tmp_path):
    ours = {k: dino_statistics(model, fx[f"set_{k}"], speed="fast") for k in ("a", "b")}  # fast: upstream's sdpa
    refs = {k: refs_edm2.read_reference(edm2_pkl(fx, k, tmp_path)) for k in ("a", "b")}
    for k in ("a", "b"):
        theirs = refs[k]["fd_dinov2"]
        assert ours[k].n == theirs.n == 20
        np.testing.assert_allclose(ours[k].mu, theirs.mu, rtol=0, atol=1e-12)
        np.testing.assert_allclose(ours[k].sigma, theirs.sigma, rtol=0, atol=1e-12)
    # FD of EDM2's own statistics files equals what EDM2's calculate_metrics_from_stats printed
    for metric in ("fid", "fd_dinov2"):
        fd = refs_edm2.frechet(metric, refs["b"][metric], refs["a"][metric])
        assert fd == pytest.approx(float(fx["edm2_fd"][metric]), rel=1e-9, abs=1e-12)
    fd = refs_edm2.frechet("fd_dinov2", ours["b"], refs["a"]["fd_dinov2"])
    assert fd == pytest.approx(float(fx["edm2_fd"]["fd_dinov2"]), rel=1e-9)


def test_exact_statistics_equal_edm2s_formulas_on_the_same_features(fx, model):
    feats = dino.DINOv2(model)(fx["set_a"])
    mu, sigma = edm2_statistics_formula(feats)
    stats = dino_statistics(model, fx["set_a"])
    np.testing.assert_allclose(stats.mu, mu, rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats.sigma, sigma, rtol=0, atol=1e-12)
    other = dino_statistics(model, fx["set_b"])
    expected = edm2_fd_formula(other.mu, other.sigma, stats.mu, stats.sigma)
    assert refs_edm2.frechet("fd_dinov2", other, stats) == pytest.approx(expected, rel=1e-8)
    assert expected > 0.05


# ---------------------------------------------------------------------------------------------
# EDM2 .pkl files


def inception_like(n: int = 20, d: int = 8, mode: str = "legacy-tensorflow") -> Statistics:
    f = np.random.default_rng(3).normal(size=(n, d))
    return Statistics(f.mean(0), np.cov(f, rowvar=False), n, mode=mode, network="ab" * 32)


def test_a_written_pkl_is_edm2s_layout_for_a_plain_pickle_load(fx, model, tmp_path):
    dino_stats = dino_statistics(model, fx["set_a"])
    path = refs_edm2.save_reference({"fid": inception_like(), "fd_dinov2": dino_stats}, tmp_path / "ref.pkl")
    with open(path, "rb") as f:
        loaded = pickle.load(f)  # EDM2's load_stats
    assert loaded["num_images"] == 20
    for metric, stats in (("fid", inception_like()), ("fd_dinov2", dino_stats)):
        assert loaded[metric]["mu"].dtype == np.float64 and loaded[metric]["sigma"].shape == stats.sigma.shape
        np.testing.assert_array_equal(loaded[metric]["mu"], stats.mu)
        np.testing.assert_array_equal(loaded[metric]["sigma"], stats.sigma)
    assert loaded["fd_dinov2"]["mode"] == "dinov2-torch" and loaded["fd_dinov2"]["detector"] == "dinov2-vitl14"
    # EDM2's calculate_metrics_from_stats on what it loaded, against our reading of the same file
    back = refs_edm2.read_reference(path)
    assert back["fd_dinov2"].network == dino_stats.network and back["fid"].mode == "legacy-tensorflow"
    other = dino_statistics(model, fx["set_b"])
    ours = refs_edm2.metrics_from_stats({"fd_dinov2": other}, back, ["fd_dinov2"])["fd_dinov2"]
    theirs = edm2_fd_formula(other.mu, other.sigma, loaded["fd_dinov2"]["mu"], loaded["fd_dinov2"]["sigma"])
    assert ours == pytest.approx(theirs, rel=1e-8)


def numpy1_names(data: bytes) -> bytes:
    """The same pickle as numpy 1.x writes it: ``numpy.core.*`` module names (protocol 2 spells globals as
    text; protocol 4/5 as length-prefixed strings inside one frame, whose length is fixed up)."""
    if data[1] <= 3:
        return data.replace(b"numpy._core.", b"numpy.core.")
    assert data[2] == 0x95 and int.from_bytes(data[3:11], "little") == len(data) - 11  # one frame
    body = data[11:]
    for name in (b"multiarray", b"numeric"):
        old, new = b"numpy._core." + name, b"numpy.core." + name
        body = body.replace(bytes([0x8C, len(old)]) + old, bytes([0x8C, len(new)]) + new)
    return data[:2] + b"\x95" + len(body).to_bytes(8, "little") + body


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("numpy1", [False, True])
def test_edm2_style_pkls_are_read_under_numpy_1_and_2_names(fx, tmp_path, protocol, numpy1):
    edm2 = pickle.loads(fx["edm2_stats_pkl"]["a"].numpy().tobytes())  # the trusted fixture, written by EDM2
    edm2["fid"]["n_scalar"] = np.float64(2.5)  # a numpy scalar too
    data = pickle.dumps(edm2, protocol=protocol)
    if numpy1:
        data = numpy1_names(data)
        assert b"numpy.core.multiarray" in data and b"numpy._core" not in data
        assert pickle.loads(data)["fd_dinov2"]["mu"].tolist() == edm2["fd_dinov2"]["mu"].tolist()
    path = tmp_path / "ref.pkl"
    path.write_bytes(data)
    refs = refs_edm2.read_reference(path)
    assert set(refs) == {"fid", "fd_dinov2"}
    for metric in refs:
        np.testing.assert_array_equal(refs[metric].mu, edm2[metric]["mu"])
        np.testing.assert_array_equal(refs[metric].sigma, edm2[metric]["sigma"])
    assert refs["fd_dinov2"].mode == "dinov2-torch" and refs["fid"].mode == "legacy-tensorflow"
    assert refs["fd_dinov2"].origin == refs_edm2.EDM2_ORIGIN and refs["fd_dinov2"].n == 20


def test_the_edm2_fixture_pkl_itself_is_read(fx, tmp_path):
    refs = refs_edm2.read_reference(edm2_pkl(fx, "b", tmp_path))
    raw = pickle.loads(fx["edm2_stats_pkl"]["b"].numpy().tobytes())
    np.testing.assert_array_equal(refs["fd_dinov2"].sigma, raw["fd_dinov2"]["sigma"])


def test_an_edm1_npz_is_read_as_fid_statistics(tmp_path):
    stats = inception_like(d=6)
    np.savez(tmp_path / "cifar10-32x32.npz", mu=stats.mu, sigma=stats.sigma)  # EDM's fid-refs layout
    refs = refs_edm2.read_reference(tmp_path / "cifar10-32x32.npz")
    assert set(refs) == {"fid"}
    np.testing.assert_array_equal(refs["fid"].sigma, stats.sigma)


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["os.system", "object array", "eval"])
def test_a_malicious_pkl_is_refused_in_one_line_and_runs_nothing(tmp_path, kind):
    marker = tmp_path / "ran"
    mu = np.zeros(2)
    if kind == "os.system":
        obj = {"fd_dinov2": {"mu": mu, "sigma": Payload(marker)}}
    elif kind == "object array":
        obj = {"fd_dinov2": {"mu": np.array([Payload(marker), 1], dtype=object), "sigma": np.eye(2)}}
    else:
        obj = {"fid": {"mu": mu, "sigma": np.eye(2)}, "x": _Eval(f"open({str(marker)!r}, 'w')")}
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=4))
    with pytest.raises(SamplerkitError, match="refusing") as err:
        refs_edm2.read_reference(path)
    assert one_line(err) and str(path) in str(err.value)
    assert not marker.exists()


class _Eval:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


def test_a_damaged_or_foreign_pkl_is_one_line(tmp_path):
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps({"fid": {"mu": np.zeros(3), "sigma": np.eye(3)}})[:-20])
    with pytest.raises(SamplerkitError) as err:
        refs_edm2.read_reference(path)
    assert one_line(err)
    path.write_bytes(pickle.dumps({"mu": np.zeros(3)}))
    with pytest.raises(SamplerkitError, match="not EDM2 statistics"):
        refs_edm2.read_reference(path)


# ---------------------------------------------------------------------------------------------
# mixing pipelines


def test_fd_dinov2_against_an_inception_only_reference_is_one_line(fx, model, tmp_path):
    sample = {"fd_dinov2": dino_statistics(model, fx["set_a"])}
    npz = inception_like(d=16)
    npz.save(tmp_path / "inception.npz")
    pkl = refs_edm2.save_reference({"fid": inception_like(d=16)}, tmp_path / "inception.pkl")
    for path in (tmp_path / "inception.npz", pkl):
        refs = refs_edm2.read_reference(path)
        with pytest.raises(SamplerkitError, match="no fd_dinov2 statistics.*Inception") as err:
            refs_edm2.metrics_from_stats(sample, refs, ["fd_dinov2"], where=str(path))
        assert one_line(err)
    # DINOv2 statistics compared against Inception ones of the same dimension are refused too
    with pytest.raises(SamplerkitError, match="fid statistics") as err:
        refs_edm2.frechet("fd_dinov2", sample["fd_dinov2"], inception_like(d=16))
    assert one_line(err)


def test_dinov2_statistics_of_another_resize_mode_or_weights_are_refused(fx, model, tmp_path):
    torch_stats = dino_statistics(model, fx["set_a"])
    pil = StatsBuilder(dino.DINOv2(model, resize_mode="pil"), ("fid",))
    pil.add(fx["set_b"])
    pil_stats = pil.result()
    with pytest.raises(SamplerkitError, match="resize_mode='torch'") as err:
        refs_edm2.frechet("fd_dinov2", pil_stats, torch_stats)
    assert one_line(err)
    assert refs_edm2.frechet("fd_dinov2", pil_stats, torch_stats, force=True) > 0
    a, b = dino_statistics(model, fx["set_a"]), dino_statistics(model, fx["set_b"])
    a.network, b.network = "1" * 64, "2" * 64
    with pytest.raises(SamplerkitError, match="other DINOv2 weights"):
        refs_edm2.frechet("fd_dinov2", b, a)


# ---------------------------------------------------------------------------------------------
# one pass for both detectors


def test_inception_and_dinov2_statistics_come_from_one_read_of_each_png(fx, model, tmp_path, inception_path):
    folder = tmp_path / "pngs"
    folder.mkdir()
    images = fx["set_a"][:6].permute(0, 2, 3, 1).numpy()
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    inception = sk.metrics.inception(inception_path, batch_size=4, mode="legacy-tensorflow")
    dinov2 = dino.DINOv2(model, batch_size=4)
    source, n = sk.metrics.open_images(folder)
    reads = []
    inner = source._read
    source._read = lambda idx: (reads.extend(idx.tolist()), inner(idx))[1]
    builder = MultiStatsBuilder.for_metrics("fid,kid,fd_dinov2", inception=inception, dinov2=dinov2)
    got = statistics_of_source_multi(source, n, builder, batch_size=4)
    assert sorted(reads) == list(range(6))  # every image decoded once for both networks
    assert set(got) == {"fid", "fd_dinov2"} and got["fid"].feats is not None
    alone = {"fid": sk.metrics.statistics_of_images([images], inception, ("fid", "kid")),
             "fd_dinov2": sk.metrics.statistics_of_images([images], dinov2)}
    for metric in got:
        np.testing.assert_allclose(got[metric].mu, alone[metric].mu, rtol=0, atol=1e-9)
        np.testing.assert_allclose(got[metric].sigma, alone[metric].sigma, rtol=0, atol=1e-9)
    assert got["fd_dinov2"].mode == "dinov2-torch" and got["fid"].mode == "legacy-tensorflow"
    path = refs_edm2.save_reference(got, tmp_path / "ref.pkl")
    assert set(pickle.loads(path.read_bytes())) == {"num_images", "fid", "fd_dinov2"}


def test_split_metrics():
    assert sk.metrics.split_metrics("kid,fd_dinov2,fid") == (("fid", "kid"), True)
    assert sk.metrics.split_metrics(["fd_dinov2"]) == ((), True)
    with pytest.raises(SamplerkitError):
        sk.metrics.split_metrics("fd_inception")


def test_fd_dinov2_takes_fids_bootstrap_intervals(fx, model):
    builder = MultiStatsBuilder.for_metrics("fd_dinov2", dinov2=dino.DINOv2(model), keep_feats=True)
    builder.add(fx["set_b"])
    sample = builder.result()["fd_dinov2"]
    ref = dino_statistics(model, fx["set_a"])
    ci = sk.metrics.intervals(sample, ref, ["fid"], rounds=50, seed=0)
    fd = refs_edm2.frechet("fd_dinov2", sample, ref)
    assert ci["fid_lo"] < fd < ci["fid_hi"]
