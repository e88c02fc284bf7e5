"""EDM2 adapter: release-layout pickles -> D(x; sigma) equal to NVlabs/edm2's Precond, safely.

``fixtures/edm2_upstream_outputs.pt.gz`` was made with NVlabs/edm2's own code, outside this
repository: four small random-weight ``Precond`` networks (``cond`` and ``small``: 5 classes;
``uncond``; ``latent``: 4 channels with a ``StabilityVAEEncoder``), each pickled as EDM2's
``training_loop.py`` pickles a snapshot (an EasyDict of ``encoder``, ``dataset_kwargs``,
``loss_fn`` and ``ema`` converted to float16). For each it holds the pickle's *layout* -- every
object the pickle builds, with the module source dropped -- and upstream's D(x; sigma) on the CPU
with the parameters as stored (``D``), converted to float32 first (``D_fp32``), ``logvar``, and
``edm_sampler`` runs (6 Heun steps) guided by ``small`` (autoguidance, w = 2), by ``uncond``
(classifier-free, w = 1.7) and at w = 1, in float32 and float64.

The tests write the layout back into a pickle with the upstream global names (stand-in modules)
and a placeholder module source, and load it through ``sk.load``.
"""

from __future__ import annotations

import gzip
import io
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _http_server import FileServer
from samplerkit.adapters import edm2, safe_pickle
from torch import nn

import samplerkit as sk
from samplerkit import zoo
from samplerkit.autoencoders import RGBIdentity, StabilityVAE
from samplerkit.errors import SamplerkitError
from samplerkit.testing import Persistent, StandInEasyDict, dump_upstream

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURES = Path(__file__).parent / "fixtures"
PLACEHOLDER_SRC = "# module source of training/networks_edm2.py would be here; it must never run\n"


@pytest.fixture(scope="module")
def upstream():
    data = gzip.decompress((FIXTURES / "edm2_upstream_outputs.pt.gz").read_bytes())
    return torch.load(io.BytesIO(data), weights_only=True)


# ---------------------------------------------------------------------------------------------
# writing the recorded layout back as a pickle with the upstream global names


def rebuild(tree, module_src: str = PLACEHOLDER_SRC):
    """The objects of a recorded layout, ready to pickle as upstream did."""
    if isinstance(tree, str):
        return {"__empty_set__": set(), "__empty_ordereddict__": OrderedDict()}.get(tree, tree)
    if isinstance(tree, list):
        return [rebuild(v, module_src) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__persistent__" in tree:
        return Persistent(tree["__persistent__"], rebuild(tree["state"], module_src), module_src, tree["version"])
    if "__moduledict__" in tree:
        container = nn.ModuleDict.__new__(nn.ModuleDict)
        container.__dict__.update(rebuild(tree["__moduledict__"], module_src))
        return container
    if "__parameter__" in tree:
        return nn.Parameter(tree["__parameter__"], requires_grad=tree["requires_grad"])
    if "__ndarray__" in tree:
        return tree["__ndarray__"].numpy().astype(tree["dtype"])
    if "__npscalar__" in tree:
        return np.dtype(tree["dtype"]).type(tree["__npscalar__"])
    if "__easydict__" in tree:
        return StandInEasyDict(rebuild(tree["__easydict__"], module_src))
    for marker, kind in (("__set__", set), ("__tuple__", tuple)):
        if marker in tree:
            return kind(rebuild(tree[marker], module_src))
    if "__ordereddict__" in tree:
        return OrderedDict((k, rebuild(v, module_src)) for k, v in tree["__ordereddict__"])
    return {k: rebuild(v, module_src) for k, v in tree.items()}


def write_case(upstream, case: str, tmp_path: Path, edit=None) -> Path:
    data = rebuild(upstream[case]["layout"])
    if case == "latent":
        data["encoder"].meta["state"]["vae_name"] = str(FIXTURES / "edm2_vae")
    if edit is not None:
        edit(data)
    return dump_upstream(data, tmp_path / f"edm2-{case}.pkl")


def close(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to b's scale (at least 1)."""
    return (a.double() - b.double()).abs().max().item() / max(1.0, b.abs().max().item())


# ---------------------------------------------------------------------------------------------
# D(x; sigma)


@pytest.mark.parametrize("case", ["cond", "uncond", "small", "latent"])
def test_loaded_pickle_matches_upstream_precond(upstream, case, tmp_path):
    ref = upstream[case]
    net = sk.load(write_case(upstream, case, tmp_path))
    assert isinstance(net, edm2.Precond) and net.unet.out_gain.dtype == torch.float16  # kept as stored
    assert net.name == f"edm2-{case}"
    D = net(ref["x"], ref["sigma"], ref["labels"])
    assert D.dtype == torch.float32 and D.shape == ref["x"].shape
    assert close(D, ref["D"]) <= 1e-5


def test_one_hot_labels_give_the_int_labels_output(upstream, tmp_path):
    ref = upstream["cond"]
    net = sk.load(write_case(upstream, "cond", tmp_path))
    one_hot = F.one_hot(ref["labels"], 5).float()
    assert torch.equal(net(ref["x"], ref["sigma"], one_hot), net(ref["x"], ref["sigma"], ref["labels"]))
    assert close(net(ref["x"], ref["sigma"], one_hot), ref["D"]) <= 1e-5


def test_zero_label_vector_is_upstreams_no_class_input(upstream, tmp_path):
    ref = upstream["cond"]
    net = sk.load(write_case(upstream, "cond", tmp_path))
    assert close(net(ref["x"], ref["sigma"], torch.zeros(len(ref["x"]), 5)), ref["D_nolabel"]) <= 1e-5


def test_float32_conversion_matches_upstream_converted_and_differs_from_stored(upstream, tmp_path):
    """Converting the float16 parameters to float32 first (reconstruct_phema.py) changes D by a few 1e-4:
    the gains' gain / sqrt(fan_in) is no longer rounded to float16."""
    for case in ("cond", "small"):
        ref = upstream[case]
        net32 = edm2.load_pickle(write_case(upstream, case, tmp_path), dtype=torch.float32)
        D32 = net32(ref["x"], ref["sigma"], ref["labels"])
        assert close(D32, ref["D_fp32"]) <= 1e-5
        distance = close(D32, ref["D"])
        assert 1e-5 < distance < 2e-3, distance


def test_logvar_matches_upstream(upstream, tmp_path):
    ref = upstream["cond"]
    net = sk.load(write_case(upstream, "cond", tmp_path))
    assert close(net.logvar(ref["sigma"]), ref["logvar"]) <= 1e-5


def test_fast_variant_stays_within_float32_rounding_of_exact(upstream, tmp_path):
    ref = upstream["cond"]
    path = write_case(upstream, "cond", tmp_path)
    exact = sk.load(path)
    fast = sk.load(path, family="edm2", variant="fast")
    assert fast.variant == "fast"
    args = ref["x"], ref["sigma"], ref["labels"]
    for _ in range(2):  # the second call reuses the normalised weights
        assert close(fast(*args), exact(*args)) <= 1e-6
    assert torch.equal(fast.exact()(*args), exact(*args))


def test_encoder_becomes_the_autoencoder(upstream, tmp_path):
    assert isinstance(sk.load(write_case(upstream, "cond", tmp_path)).autoencoder, RGBIdentity)
    latent = sk.load(write_case(upstream, "latent", tmp_path))
    ae = latent.autoencoder
    assert isinstance(ae, StabilityVAE) and ae.vae_name == str(FIXTURES / "edm2_vae") and ae.batch_size == 8
    layout = upstream["latent"]["layout"]["__easydict__"]["encoder"]["state"]
    assert np.array_equal(ae.scale, layout["scale"]["__ndarray__"].numpy())
    assert np.array_equal(ae.bias, layout["bias"]["__ndarray__"].numpy())


def test_latent_model_decodes_as_edm2(upstream, tmp_path):
    pytest.importorskip("diffusers")
    latent = sk.load(write_case(upstream, "latent", tmp_path))
    latent.autoencoder.batch_size = 3  # as the fixture's upstream decode ran
    vae_ref = torch.load(FIXTURES / "edm2_vae_decode.pt", weights_only=True)  # default scale/bias = this pickle's
    assert torch.equal(sk.decode(latent, vae_ref["latents"]), vae_ref["images"])


def test_a_pickle_without_encoder_decodes_as_rgb(upstream, tmp_path):
    path = write_case(upstream, "uncond", tmp_path, edit=lambda d: d.pop("encoder"))
    assert isinstance(sk.load(path).autoencoder, RGBIdentity)


# ---------------------------------------------------------------------------------------------
# no code from the pickle runs


def _evil_source(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('pwned')\n" + PLACEHOLDER_SRC


def test_tampered_network_and_loss_sources_are_never_run(upstream, tmp_path):
    marker = tmp_path / "pwned.txt"
    data = rebuild(upstream["cond"]["layout"], module_src=_evil_source(marker))
    path = dump_upstream(data, tmp_path / "tampered.pkl")
    net = sk.load(path)
    ref = upstream["cond"]
    assert close(net(ref["x"], ref["sigma"], ref["labels"]), ref["D"]) <= 1e-5  # rebuilt from our classes
    assert not marker.exists()


def test_an_ema_that_is_no_edm2_network_is_refused_in_one_line(upstream, tmp_path):
    marker = tmp_path / "pwned.txt"
    data = rebuild(upstream["cond"]["layout"])
    data["ema"] = Persistent("Exploit", dict(_init_args=(), _init_kwargs={}), _evil_source(marker))
    path = dump_upstream(data, tmp_path / "evil.pkl")
    for family in (None, "edm2"):
        with pytest.raises(SamplerkitError) as err:
            sk.load(path, family=family)
        assert "\n" not in str(err.value) and "Exploit" in str(err.value)
    assert not marker.exists()


def test_a_global_outside_the_allow_list_in_the_encoder_is_refused(upstream, tmp_path):
    class Evil:
        def __reduce__(self):
            return (eval, ("1",))

    path = write_case(upstream, "cond", tmp_path, edit=lambda d: d.__setitem__("encoder", Evil()))
    with pytest.raises(SamplerkitError, match="refusing to load builtins.eval"):
        sk.load(path)


def test_an_unknown_encoder_class_is_refused(upstream, tmp_path):
    encoder = Persistent("MyEncoder", dict(_init_args=()), PLACEHOLDER_SRC)
    path = write_case(upstream, "cond", tmp_path, edit=lambda d: d.__setitem__("encoder", encoder))
    with pytest.raises(SamplerkitError, match="encoder of class MyEncoder"):
        sk.load(path)


def test_unknown_constructor_arguments_and_mismatched_tensors_are_refused(upstream, tmp_path):
    def extra(d):
        d["ema"].meta["state"]["_init_kwargs"]["exec_this"] = "x"

    with pytest.raises(SamplerkitError, match="does not know: \\['exec_this'\\]"):
        sk.load(write_case(upstream, "cond", tmp_path, edit=extra))

    def wider(d):
        d["ema"].meta["state"]["_init_kwargs"]["model_channels"] = 16

    with pytest.raises(SamplerkitError, match="does not match its architecture"):
        sk.load(write_case(upstream, "cond", tmp_path, edit=wider))


def test_numpy_arrays_unpickle_as_copies_and_object_arrays_are_refused():
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    record = safe_pickle.loads(pickle.dumps(arr, protocol=4))
    assert isinstance(record, safe_pickle.NumpyArray) and np.array_equal(record.array, arr)
    with pytest.raises(SamplerkitError, match="numpy dtype"):
        safe_pickle.loads(pickle.dumps(np.array([{"a": 1}], dtype=object), protocol=4))


# ---------------------------------------------------------------------------------------------
# guided sampling = EDM2's edm_sampler(net, noise, labels, gnet, guidance=w)


@pytest.fixture(scope="module")
def networks(upstream, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("edm2-nets")
    return {case: sk.load(write_case(upstream, case, tmp)) for case in ("cond", "uncond", "small")}


@pytest.mark.parametrize("tag, gnet, weight", [("autog", "small", 2.0), ("cfg", "uncond", 1.7)])
def test_heun_on_guided_equals_edm2_edm_sampler(upstream, networks, tag, gnet, weight):
    ref = upstream["sampling"]
    g = sk.guidance.guided(networks["cond"], networks[gnet], weight)
    x = sk.samplers.heun(g, ref["noise"], sk.schedules.edm(6), class_labels=ref["labels"])
    assert g.evaluations == {"net": 11, "gnet": 11}  # 2N - 1 each
    # edm_sampler(dtype=float64) runs samplerkit's arithmetic; float32 kernels may differ between CPUs
    assert close(x, ref[f"{tag}_float64"]) <= 1e-6  # bit-equal on the machine that made the fixture
    # its default float32 arithmetic (grid and state in float32) differs by float32 rounding only
    assert close(x, ref[f"{tag}_float32"]) <= 2e-5


def test_weight_one_is_the_unguided_sampler_bit_for_bit(upstream, networks):
    ref = upstream["sampling"]
    g = sk.guidance.guided(networks["cond"], networks["small"], 1.0)
    x = sk.samplers.heun(g, ref["noise"], sk.schedules.edm(6), class_labels=ref["labels"])
    plain = sk.samplers.heun(networks["cond"], ref["noise"], sk.schedules.edm(6), class_labels=ref["labels"])
    assert torch.equal(x, plain) and g.evaluations["gnet"] == 0
    assert close(x, ref["w1_float64"]) <= 1e-6


# ---------------------------------------------------------------------------------------------
# zoo: the files and presets of EDM2's generate_images.py


def test_zoo_presets_name_net_gnet_weight_and_figure_as_config_presets():
    root = "https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/"
    assert len(zoo.EDM2_PRESETS) == 36
    e = zoo.get("edm2-img512-xxl-autog-fid")
    assert e.urls == (root + "edm2-img512-xxl-0939524-0.075.pkl",)
    assert e.guidance == {"gnet": "edm2-img512-m-0268435-0.155", "weight": 2.05}
    assert zoo.get(e.guidance["gnet"]).urls == (root + "edm2-img512-m-0268435-0.155.pkl",)
    assert "FID 1.25" in e.notes
    e = zoo.get("edm2-img64-s-autog-fid")
    assert e.guidance == {"gnet": "edm2-img64-xs-0134217-0.110", "weight": 1.70} and "FID 1.01" in e.notes
    assert zoo.get("edm2-img512-xs-guid-fid").guidance["gnet"] == "edm2-img512-xs-uncond-2147483-0.045"
    assert zoo.get("edm2-img512-xs-uncond-2147483-0.045").conditional is False
    assert zoo.get("edm2-img512-xxl-fid").guidance == {} and "FID 1.91" in zoo.get("edm2-img512-xxl-fid").notes


def test_zoo_edm2_entries_are_heun_32_on_edms_grid_under_cc_by_nc_sa():
    entries = [e for e in zoo.entries() if e.family == "edm2"]
    files = {e.urls[0] for e in entries}
    assert len(files) == 51  # every net and gnet file config_presets names
    for e in entries:
        assert e.license == "CC BY-NC-SA 4.0" and e.urls[0].endswith("/" + e.filename)
        assert e.recommended == {"sampler": "heun", "steps": 32, "disc": "edm", "sigma_min": 0.002,
                                 "sigma_max": 80.0, "rho": 7.0}
        assert e.resolution == (512 if "img512" in e.name else 64)
        if e.guidance:
            assert zoo.get(e.guidance["gnet"]).family == "edm2" and e.guidance["weight"] > 1


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(zoo, "_REGISTRY", dict(zoo._REGISTRY))


def test_a_guided_preset_loads_as_net_guided_by_gnet(upstream, tmp_path, registry):
    cond, small = (write_case(upstream, c, tmp_path).read_bytes() for c in ("cond", "small"))
    with FileServer() as srv:
        zoo.register(zoo.ZooEntry(name="x-edm2-small", family="edm2", urls=(srv.add("/small.pkl", small),),
                                  filename="x-edm2-small.pkl", resolution=8))
        zoo.register(zoo.ZooEntry(name="x-edm2-autog", family="edm2", urls=(srv.add("/cond.pkl", cond),),
                                  filename="x-edm2-cond.pkl", resolution=8,
                                  guidance={"gnet": "x-edm2-small", "weight": 2.0}))
        g = sk.load("x-edm2-autog")
    assert isinstance(g, sk.guidance.Guided) and g.weight == 2.0
    assert g.describe()["gnet"]["name"] == "x-edm2-small" and len(g.describe()["gnet"]["sha256"]) == 64
    ref = upstream["sampling"]
    x = sk.samplers.heun(g, ref["noise"], sk.schedules.edm(6), class_labels=ref["labels"])
    assert close(x, ref["autog_float64"]) <= 1e-6


def test_autoencoder_argument_replaces_the_vae_and_keeps_the_scaling(upstream, tmp_path):
    path = write_case(upstream, "latent", tmp_path)
    net = sk.load(path, family="edm2", autoencoder="sd-vae-ft-ema")
    assert net.autoencoder.vae_name == "sd-vae-ft-ema"
    assert np.array_equal(net.autoencoder.scale, sk.load(path).autoencoder.scale)
    with pytest.raises(SamplerkitError, match="pixel-space model; it takes no autoencoder"):
        sk.load(write_case(upstream, "cond", tmp_path), family="edm2", autoencoder="sd-vae-ft-ema")
