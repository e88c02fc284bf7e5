"""EDM adapter: network pickles in the upstream persistence layout -> D(x; sigma), safely.

The pickles here are written in the exact layout of NVlabs EDM's ``torch_utils.persistence``:
every network object is a call ``_reconstruct_persistent_obj(meta)`` with
``meta = dict(type, version, module_src, class_name, state)`` and ``state`` the object's
``__dict__`` (``_parameters``, ``_buffers``, ``_modules``, ``_init_args``, ``_init_kwargs``, ...);
``torch.nn.ModuleDict`` containers pickle as themselves. Stand-in modules give pickle the
upstream names while a file is written and are removed before it is read.

References: ``tests/fixtures/edm_upstream_outputs.pt`` holds D(x; sigma) of the upstream
``training/networks.py`` on the weights of :func:`randomize` for every case of :data:`CASES`
(inputs x, sigma, labels stored with it); :func:`reference_ddpmpp` is a functional forward
written from the architecture description. The layout checks (:data:`UPSTREAM_GLOBALS`, the
meta fields) were compared against pickles written by EDM's own persistence code.
"""

from __future__ import annotations

import copy
import math
import pickletools
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from samplerkit.adapters import edm, safe_pickle
from torch import nn

import samplerkit as sk
from samplerkit.testing import Persistent, dump_upstream, upstream_module_names  # noqa: F401 (benchmarks)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks run fastest on one thread

FIXTURES = Path(__file__).parent / "fixtures"
PLACEHOLDER_SRC = "# module source of training/networks.py would be here; it must never run\n"

DDPMPP = dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard", decoder_type="standard",
              channel_mult_noise=1, resample_filter=[1, 1])
NCSNPP = dict(model_type="SongUNet", embedding_type="fourier", encoder_type="residual", decoder_type="standard",
              channel_mult_noise=2, resample_filter=[1, 3, 3, 1])
SMALL_SONG = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.13)
SMALL_ADM = dict(model_type="DhariwalUNet", model_channels=32, channel_mult=[1, 2], num_blocks=1,
                 attn_resolutions=[8], dropout=0.1)

# name -> (class, constructor kwargs without label_dim), as EDM's train.py composes them
CONFIGS = {
    "edm-ddpmpp": ("EDMPrecond", dict(**DDPMPP, **SMALL_SONG, augment_dim=9, use_fp16=False)),
    "vp-ddpmpp": ("VPPrecond", dict(**DDPMPP, **SMALL_SONG, use_fp16=False)),
    "ve-ncsnpp": ("VEPrecond", dict(**NCSNPP, **SMALL_SONG, use_fp16=False)),
    "iddpm-adm": ("iDDPMPrecond", dict(**SMALL_ADM, use_fp16=False)),
    "edm-adm": ("EDMPrecond", dict(**SMALL_ADM, use_fp16=True)),
}
CASES = [f"{name}-{cond}" for name in CONFIGS for cond in ("cond", "uncond")]
LABEL_DIM = 10
RESOLUTION = 16


def case_kwargs(case: str) -> tuple[str, dict]:
    name, cond = case.rsplit("-", 1)
    class_name, kwargs = CONFIGS[name]
    label_dim = LABEL_DIM if cond == "cond" else 0
    return class_name, dict(img_resolution=RESOLUTION, img_channels=3, label_dim=label_dim, **kwargs)


# ---------------------------------------------------------------------------------------------
# writing pickles in the upstream layout

# constants EDM's networks.py computes with numpy (np.sqrt(...)), so they pickle as numpy scalars
NUMPY_CONSTANTS = {math.sqrt(0.5), math.sqrt(0.2), math.sqrt(1 / 3)}


def as_upstream_value(value):
    """Python floats that upstream holds as numpy scalars become numpy scalars, recursively."""
    if isinstance(value, float) and value in NUMPY_CONSTANTS:
        return np.float64(value)
    if isinstance(value, dict):
        return type(value)((k, as_upstream_value(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(as_upstream_value(v) for v in value)
    return value


@contextmanager
def recording_init_arguments():
    """Make each EDM class keep ``_init_args``/``_init_kwargs`` as upstream persistent classes do."""
    classes = [getattr(edm, name) for name in ("Linear", "Conv2d", "GroupNorm", "UNetBlock", "PositionalEmbedding",
                                               "FourierEmbedding", "SongUNet", "DhariwalUNet")]
    classes += list(edm.PRECONDITIONERS.values())
    originals = {cls: cls.__dict__["__init__"] for cls in classes}

    def recorder(original):
        def __init__(self, *args, **kwargs):
            original(self, *args, **kwargs)
            self.__dict__["_init_args"] = copy.deepcopy(args)
            self.__dict__["_init_kwargs"] = as_upstream_value(copy.deepcopy(kwargs))

        return __init__

    for cls, original in originals.items():
        cls.__init__ = recorder(original)
    try:
        yield
    finally:
        for cls, original in originals.items():
            cls.__init__ = original


def as_upstream(module: nn.Module, module_src: str = PLACEHOLDER_SRC):
    """Our module tree as upstream pickles it: persistent objects, plain ``ModuleDict`` containers."""
    children = {k: None if v is None else as_upstream(v, module_src) for k, v in module._modules.items()}
    if isinstance(module, nn.ModuleDict):
        container = nn.ModuleDict.__new__(nn.ModuleDict)
        container.__dict__.update(module.__dict__, _modules=children)
        return container
    state = {k: as_upstream_value(v) for k, v in module.__dict__.items()}
    state["_modules"] = children
    return Persistent(type(module).__name__, state, module_src)


# ---------------------------------------------------------------------------------------------
# networks with deterministic weights


def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """Weights of realistic scale in sorted-name order; the resampling filters and ``u`` stay as built."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in sorted(net.state_dict().items()):
            if name.endswith("resample_filter") or name == "u":
                continue
            v = torch.randn(t.shape, generator=g)
            if name.endswith("freqs"):
                v = 16 * v
            elif t.ndim >= 2:
                v = v / math.sqrt(t[0].numel())
            elif "norm" in name and name.endswith("weight"):
                v = 1 + 0.1 * v
            else:
                v = 0.1 * v
            t.copy_(v)
    return net


def build(case: str) -> nn.Module:
    class_name, kwargs = case_kwargs(case)
    torch.manual_seed(0)
    with recording_init_arguments():
        net = edm.PRECONDITIONERS[class_name](**kwargs)
    return randomize(net).eval()


def write_case(case: str, tmp_path: Path, snapshot: bool = False) -> Path:
    net = build(case)
    data = dict(ema=as_upstream(net))
    if snapshot:
        data.update(loss_fn=Persistent("EDMLoss", dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5, _init_args=(),
                                                       _init_kwargs={}), PLACEHOLDER_SRC),
                    augment_pipe=Persistent("AugmentPipe", dict(p=0.12, xflip=1e8, _init_args=(),
                                                                _init_kwargs=dict(p=0.12, xflip=1e8)),
                                              PLACEHOLDER_SRC),
                    dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="cifar10.zip",
                                        use_labels=True, xflip=False, cache=True, resolution=32, max_size=50000))
    return dump_upstream(data, tmp_path / f"{case}.pkl")


@pytest.fixture(scope="module")
def upstream_outputs():
    return torch.load(FIXTURES / "edm_upstream_outputs.pt", weights_only=True)


# ---------------------------------------------------------------------------------------------
# outputs


@pytest.mark.parametrize("case", CASES)
def test_loaded_pickle_matches_upstream_outputs(case, tmp_path, upstream_outputs):
    ref = upstream_outputs[case]
    net = sk.load(write_case(case, tmp_path))
    labels = ref["labels"] if net.label_dim else None
    D = net(ref["x"], ref["sigma"], labels)
    assert D.dtype == torch.float32
    # float32 kernels differ between CPUs in the last bits: 1e-5 relative to the output's scale
    assert (D - ref["D"]).abs().max().item() <= 1e-5 * max(1.0, ref["D"].abs().max().item())


@pytest.mark.parametrize("case", ["vp-ddpmpp-cond", "vp-ddpmpp-uncond"])
def test_loaded_vp_pickle_matches_upstream_outputs_to_float32_precision_of_c_noise(case, tmp_path, upstream_outputs):
    ref = upstream_outputs[case]
    net = sk.load(write_case(case, tmp_path))
    D = net(ref["x"], ref["sigma"], ref["labels"] if net.label_dim else None)
    assert ((D - ref["D"]).abs().max() / ref["D"].abs().max()).item() <= 2e-5


def test_one_hot_labels_give_the_same_output_as_int_labels(tmp_path, upstream_outputs):
    ref = upstream_outputs["edm-adm-cond"]
    net = sk.load(write_case("edm-adm-cond", tmp_path))
    one_hot = F.one_hot(ref["labels"], LABEL_DIM).float()
    assert torch.equal(net(ref["x"], ref["sigma"], one_hot), net(ref["x"], ref["sigma"], ref["labels"]))


def _group_norm(sd, prefix, x, eps):
    groups = min(32, x.shape[1] // 4)
    return F.group_norm(x, groups, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps)


def _reference_block(sd, p, x, emb, resample=None):
    """DDPM++ residual block: GN-SiLU-conv, + affine(emb), GN-SiLU-conv, skip, /sqrt2; attention if present."""
    def resampled(t):
        if resample == "down":
            return F.avg_pool2d(t, 2)  # filter [1, 1]: a 2x2 box
        if resample == "up":
            return F.interpolate(t, scale_factor=2, mode="nearest")
        return t

    def conv(name, t):
        w = sd[f"{p}.{name}.weight"]
        return F.conv2d(t, w, sd[f"{p}.{name}.bias"], padding=w.shape[-1] // 2)

    h = conv("conv0", resampled(F.silu(_group_norm(sd, f"{p}.norm0", x, 1e-6))))
    h = h + F.linear(emb, sd[f"{p}.affine.weight"], sd[f"{p}.affine.bias"])[:, :, None, None]
    h = conv("conv1", F.silu(_group_norm(sd, f"{p}.norm1", h, 1e-6)))
    skip = conv("skip", resampled(x)) if f"{p}.skip.weight" in sd else x
    x = (h + skip) / math.sqrt(2)
    if f"{p}.qkv.weight" in sd:
        B, C, H, W = x.shape
        qkv = conv("qkv", _group_norm(sd, f"{p}.norm2", x, 1e-6)).reshape(B, C, 3, H * W)
        q, k, v = (qkv[:, :, i].transpose(1, 2)[:, None] for i in range(3))  # [B, 1 head, HW, C]
        a = F.scaled_dot_product_attention(q, k, v)[:, 0].transpose(1, 2).reshape(B, C, H, W)
        x = (conv("proj", a) + x) / math.sqrt(2)
    return x


def reference_ddpmpp(sd, x, c_noise, labels, *, channel_mult, num_blocks, resolution):
    """Functional float64 DDPM++ (Song et al.'s architecture as EDM App. F.2 configures it)."""
    sd = {k: v.double() for k, v in sd.items()}
    x, c_noise = x.double(), c_noise.double()
    half = sd["map_layer0.weight"].shape[1] // 2
    freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / (half - 1))
    emb = torch.cat([(c_noise[:, None] * freqs).sin(), (c_noise[:, None] * freqs).cos()], dim=1)
    if labels is not None:
        emb = emb + F.linear(labels.double() * math.sqrt(labels.shape[1]), sd["map_label.weight"], sd["map_label.bias"])
    emb = F.silu(F.linear(emb, sd["map_layer0.weight"], sd["map_layer0.bias"]))
    emb = F.silu(F.linear(emb, sd["map_layer1.weight"], sd["map_layer1.bias"]))

    skips = []
    for level in range(len(channel_mult)):
        res = resolution >> level
        if level == 0:
            x = F.conv2d(x, sd[f"enc.{res}x{res}_conv.weight"], sd[f"enc.{res}x{res}_conv.bias"], padding=1)
        else:
            x = _reference_block(sd, f"enc.{res}x{res}_down", x, emb, "down")
        skips.append(x)
        for i in range(num_blocks):
            x = _reference_block(sd, f"enc.{res}x{res}_block{i}", x, emb)
            skips.append(x)
    for level in reversed(range(len(channel_mult))):
        res = resolution >> level
        if level == len(channel_mult) - 1:
            x = _reference_block(sd, f"dec.{res}x{res}_in0", x, emb)
            x = _reference_block(sd, f"dec.{res}x{res}_in1", x, emb)
        else:
            x = _reference_block(sd, f"dec.{res}x{res}_up", x, emb, "up")
        for i in range(num_blocks + 1):
            x = _reference_block(sd, f"dec.{res}x{res}_block{i}", torch.cat([x, skips.pop()], dim=1), emb)
    p = f"dec.{resolution}x{resolution}_aux"
    h = F.silu(_group_norm(sd, f"{p}_norm", x, 1e-6))
    return F.conv2d(h, sd[f"{p}_conv.weight"], sd[f"{p}_conv.bias"], padding=1)


def test_edm_ddpmpp_matches_functional_reference(tmp_path, upstream_outputs):
    ref = upstream_outputs["edm-ddpmpp-cond"]
    net = sk.load(write_case("edm-ddpmpp-cond", tmp_path))
    sigma = ref["sigma"].double()[:, None, None, None]
    sd = {k: v for k, v in net.state_dict().items() if k.startswith("model.")}
    sd = {k.removeprefix("model."): v for k, v in sd.items()}
    # Karras et al. 2022 (EDM), Table 1, "ours" column with sigma_data = 0.5
    c_skip = 0.25 / (sigma**2 + 0.25)
    c_out = sigma * 0.5 / (sigma**2 + 0.25).sqrt()
    c_in = 1 / (sigma**2 + 0.25).sqrt()
    F_x = reference_ddpmpp(sd, c_in * ref["x"].double(), sigma.flatten().log() / 4,
                           F.one_hot(ref["labels"], LABEL_DIM), channel_mult=[1, 2], num_blocks=1,
                           resolution=RESOLUTION)
    expected = c_skip * ref["x"].double() + c_out * F_x
    D = net(ref["x"], ref["sigma"], ref["labels"])
    assert (D.double() - expected).abs().max().item() <= 1e-5


# ---------------------------------------------------------------------------------------------
# pickle layout


def referenced_globals(data: bytes) -> set[str]:
    """``module.name`` of every GLOBAL / STACK_GLOBAL opcode, following the memo for STACK_GLOBAL."""
    memo, pushed, names = {}, [], set()
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            pushed.append(arg)
        elif op.name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            pushed.append(memo.get(arg))
        elif op.name == "STACK_GLOBAL":
            names.add(f"{pushed[-2]}.{pushed[-1]}")
        elif op.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
        if op.name not in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "BINGET", "LONG_BINGET",
                           "GET", "MEMOIZE"):
            pushed.append(None)
    return names


# what pickle.dump of an EDM network references (checked against a pickle made by EDM's own code)
UPSTREAM_GLOBALS = {
    "torch_utils.persistence._reconstruct_persistent_obj",
    "torch.nn.modules.container.ModuleDict",
    "collections.OrderedDict",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_tensor_v2",
    "torch.storage._load_from_bytes",
    "numpy.dtype",
    f"{np.float64(0).__reduce__()[0].__module__}.scalar",
}


def test_written_pickle_references_exactly_the_upstream_globals(tmp_path):
    path = write_case("ve-ncsnpp-cond", tmp_path)
    assert referenced_globals(path.read_bytes()) == UPSTREAM_GLOBALS


def test_written_pickle_meta_has_the_persistence_layout(tmp_path):
    path = write_case("vp-ddpmpp-cond", tmp_path)
    ema = safe_pickle.loads(path.read_bytes())["ema"]
    assert (ema.class_name, ema.version, ema.init_args) == ("VPPrecond", 6, ())
    assert ema.init_kwargs["model_type"] == "SongUNet" and ema.init_kwargs["label_dim"] == LABEL_DIM
    assert {"_parameters", "_buffers", "_modules", "_init_args", "_init_kwargs"} <= set(ema.state)
    conv = ema.state["_modules"]["model"].state["_modules"]["enc"].state["_modules"]["16x16_conv"]
    assert conv.class_name == "Conv2d" and conv.state["_buffers"]["resample_filter"] is None


# ---------------------------------------------------------------------------------------------
# pickle variants


def test_training_snapshot_loads_its_ema_network(tmp_path, upstream_outputs):
    ref = upstream_outputs["edm-ddpmpp-uncond"]
    net = sk.load(write_case("edm-ddpmpp-uncond", tmp_path, snapshot=True))
    assert (net(ref["x"], ref["sigma"]) - ref["D"]).abs().max().item() <= 1e-5


def test_bare_network_pickle_loads(tmp_path, upstream_outputs):
    ref = upstream_outputs["ve-ncsnpp-uncond"]
    net = sk.load(dump_upstream(as_upstream(build("ve-ncsnpp-uncond")), tmp_path / "net.pkl"))
    assert (net(ref["x"], ref["sigma"]) - ref["D"]).abs().max().item() <= 1e-5


def test_load_pickle_moves_the_network_to_the_device(tmp_path):
    net = edm.load_pickle(write_case("edm-adm-uncond", tmp_path), device="cpu")
    assert {p.device.type for p in net.state_dict().values()} == {"cpu"}
    assert not net.training and not any(p.requires_grad for p in net.parameters())


def test_unknown_network_class_is_refused_by_name(tmp_path):
    net = Persistent("StyleGAN2Generator", dict(_init_args=(), _init_kwargs={}), PLACEHOLDER_SRC)
    path = dump_upstream(dict(ema=net), tmp_path / "x.pkl")
    with pytest.raises(sk.SamplerkitError, match="unsupported network class StyleGAN2Generator"):
        sk.load(path)


def test_parameter_missing_from_the_pickle_is_an_error(tmp_path):
    upstream = as_upstream(build("edm-adm-uncond"))
    del upstream.meta["state"]["_modules"]["model"].meta["state"]["_modules"]["map_layer0"].meta["state"][
        "_parameters"]["bias"]
    path = dump_upstream(dict(ema=upstream), tmp_path / "x.pkl")
    with pytest.raises(sk.SamplerkitError, match=r"does not match its architecture: missing \['model.map_layer0.bias'"):
        sk.load(path)


def test_parameter_of_the_wrong_shape_is_an_error(tmp_path):
    upstream = as_upstream(build("edm-adm-uncond"))
    layer = upstream.meta["state"]["_modules"]["model"].meta["state"]["_modules"]["map_layer0"].meta["state"]
    layer["_parameters"]["bias"] = torch.zeros(3)
    with pytest.raises(sk.SamplerkitError, match=r"model.map_layer0.bias has shape \[3\], expected"):
        sk.load(dump_upstream(dict(ema=upstream), tmp_path / "x.pkl"))


def test_pickle_without_a_network_is_an_error(tmp_path):
    loss = Persistent("EDMLoss", dict(_init_args=(), _init_kwargs={}), PLACEHOLDER_SRC)
    path = dump_upstream(dict(loss_fn=loss), tmp_path / "x.pkl")
    with pytest.raises(sk.SamplerkitError, match="not an EDM network pickle"):
        sk.load(path)


# ---------------------------------------------------------------------------------------------
# the denoiser contract


def test_vp_noise_range_is_sigma_of_epsilon_t_and_1(tmp_path):
    net = sk.load(write_case("vp-ddpmpp-uncond", tmp_path))

    def sigma(t):  # Karras et al. 2022 (EDM), Table 1, VP: sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)
        return math.sqrt(math.exp(0.5 * 19.9 * t**2 + 0.1 * t) - 1)

    assert net.sigma_min == pytest.approx(sigma(1e-5), rel=1e-9)
    assert net.sigma_max == pytest.approx(sigma(1.0), rel=1e-9)


def test_ve_and_edm_attributes_follow_their_constructor_arguments(tmp_path):
    ve, edm_net = sk.load(write_case("ve-ncsnpp-cond", tmp_path)), sk.load(write_case("edm-adm-uncond", tmp_path))
    assert (ve.sigma_min, ve.sigma_max, ve.label_dim, ve.img_channels, ve.img_resolution) == (0.02, 100, 10, 3, 16)
    assert (edm_net.sigma_min, edm_net.sigma_max, edm_net.sigma_data, edm_net.label_dim) == (0, math.inf, 0.5, 0)
    sigma = torch.tensor([0.0123, 7.5], dtype=torch.float64)
    assert torch.equal(ve.round_sigma(sigma), sigma) and torch.equal(edm_net.round_sigma(sigma), sigma)


def test_iddpm_round_sigma_returns_the_nearest_trained_level(tmp_path):
    net = sk.load(write_case("iddpm-adm-uncond", tmp_path))
    u = net.u.double()
    sigma = torch.tensor([0.003, 0.1, 1.0, 3.3, 79.0, 1e5], dtype=torch.float64)
    rounded = net.round_sigma(sigma)
    nearest = u[(sigma[:, None] - u[None]).abs().argmin(dim=1)]
    assert rounded.dtype == torch.float64 and torch.equal(rounded, nearest)
    assert (net.sigma_min, net.sigma_max) == (float(net.u[999]), float(net.u[0]))


def test_iddpm_levels_are_the_pickled_buffer(tmp_path):
    upstream = as_upstream(build("iddpm-adm-uncond"))
    levels = 1.5 * upstream.meta["state"]["_buffers"]["u"]
    upstream.meta["state"]["_buffers"]["u"] = levels
    net = sk.load(dump_upstream(dict(ema=upstream), tmp_path / "x.pkl"))
    assert torch.equal(net.u, levels) and net.sigma_max == float(levels[0])


def test_scalar_sigma_is_used_for_every_sample(tmp_path, upstream_outputs):
    ref = upstream_outputs["ve-ncsnpp-uncond"]
    net = sk.load(write_case("ve-ncsnpp-uncond", tmp_path))
    assert torch.equal(net(ref["x"], 0.8), net(ref["x"], torch.full((3,), 0.8)))


def test_constructor_argument_the_network_does_not_take_is_an_error(tmp_path):
    upstream = as_upstream(build("edm-adm-uncond"))
    upstream.meta["state"]["_init_kwargs"]["channel_mult_noise"] = 2  # a SongUNet option, not an ADM one
    with pytest.raises(sk.SamplerkitError, match="cannot build EDMPrecond from its pickled arguments"):
        sk.load(dump_upstream(dict(ema=upstream), tmp_path / "x.pkl"))


def test_conditional_model_requires_labels(tmp_path, upstream_outputs):
    ref = upstream_outputs["edm-ddpmpp-cond"]
    net = sk.load(write_case("edm-ddpmpp-cond", tmp_path))
    with pytest.raises(sk.SamplerkitError, match="class-conditional"):
        net(ref["x"], ref["sigma"])


# ---------------------------------------------------------------------------------------------
# safety and damaged files


def test_module_source_in_the_pickle_is_never_executed(tmp_path, upstream_outputs):
    marker = tmp_path / "executed"
    src = f"open({str(marker)!r}, 'w').close()\n"
    net = build("edm-adm-uncond")
    path = dump_upstream(dict(ema=as_upstream(net, module_src=src)), tmp_path / "x.pkl")
    loaded = sk.load(path)
    ref = upstream_outputs["edm-adm-uncond"]
    assert (loaded(ref["x"], ref["sigma"]) - ref["D"]).abs().max().item() <= 1e-5
    assert not marker.exists()


class SystemCall:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


def test_network_pickle_with_a_system_call_is_refused(tmp_path):
    marker = tmp_path / "executed"
    upstream = as_upstream(build("edm-adm-uncond"))
    upstream.meta["state"]["_hook"] = SystemCall(f"touch {marker}")
    with pytest.raises(sk.SamplerkitError, match=r"refusing to load (posix|os)\.system from pickle"):
        sk.load(dump_upstream(dict(ema=upstream), tmp_path / "x.pkl"))
    assert not marker.exists()


def test_truncated_pickle_is_a_one_line_error(tmp_path):
    path = write_case("edm-adm-uncond", tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(sk.SamplerkitError, match="truncated or corrupted") as info:
        sk.load(path)
    assert "\n" not in str(info.value)


def test_file_that_is_not_a_pickle_is_a_one_line_error(tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(b"<html>404 Not Found</html>\n" * 10)
    with pytest.raises(sk.SamplerkitError, match="truncated or corrupted") as info:
        sk.load(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("args,nfe", [
    (["--sampler", "heun", "--steps", "18"], 35),
    (["--sampler", "stochastic", "--steps", "256", "--S-churn", "40", "--S-min", "0.05", "--S-max", "50",
      "--S-noise", "1.003"], 511),
])
def test_edm_readme_sampler_settings_run_through_the_cli(tmp_path, args, nfe):
    import json
    import subprocess

    pkl = write_case("edm-ddpmpp-cond", tmp_path)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "samplerkit", "sample", "--model", str(pkl), *args, "--seeds", "0-1",
                        "--class-labels", "random", "--out", str(out), "--quiet", "--device", "cpu"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["nfe_per_image"] == nfe and len(manifest["labels"]) == 2
    assert len(list(out.rglob("00000*.png"))) == 2


# ---------------------------------------------------------------------------------------------
# the EDM README's sampler runs through `samplerkit sample` on a pickle


def _edm_alg2(net, latents, labels, rnd, num_steps, S_churn=0.0, S_min=0.0, S_max=float("inf"), S_noise=1.0,
              sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """EDM Alg. 2 written out from the paper (Heun when S_churn = 0), float64, one noise draw per step."""
    sigma_min, sigma_max = max(sigma_min, net.sigma_min), min(sigma_max, net.sigma_max)
    i = torch.arange(num_steps, dtype=torch.float64)
    t = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t = torch.cat([t, torch.zeros(1, dtype=torch.float64)])
    x = latents.to(torch.float64) * t[0]
    for n in range(num_steps):
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t[n] <= S_max else 0.0
        t_hat = t[n] + gamma * t[n]
        x_hat = x + (t_hat**2 - t[n] ** 2).sqrt() * S_noise * rnd.randn_like(x)
        d = (x_hat - net(x_hat, t_hat, labels).to(torch.float64)) / t_hat
        x = x_hat + (t[n + 1] - t_hat) * d
        if n < num_steps - 1:
            d2 = (x - net(x, t[n + 1], labels).to(torch.float64)) / t[n + 1]
            x = x_hat + (t[n + 1] - t_hat) * (d / 2 + d2 / 2)
    return x


@pytest.mark.parametrize("sampler,knobs", [
    ("heun", {}),
    ("stochastic", dict(S_churn=40, S_min=0.05, S_max=50, S_noise=1.003)),
])
def test_sample_command_on_a_pickle_matches_edm_algorithm_2(tmp_path, sampler, knobs):
    """`samplerkit sample --model net.pkl` (EDM README: Heun 18 / stochastic, here 5 steps) gives the
    images of Alg. 2 run on the same loaded network with the same per-seed noise."""
    from samplerkit.cli import main
    from samplerkit.data import to_uint8
    from samplerkit.seeds import StackedRandomGenerator

    path = write_case("edm-ddpmpp-cond", tmp_path)
    flags = {"S_churn": "--S-churn", "S_min": "--S-min", "S_max": "--S-max", "S_noise": "--S-noise"}
    args = ["sample", "--model", str(path), "--sampler", sampler, "--steps", "5", "--seeds", "0-3",
            "--class-labels", "0,1,2,3", "--format", "npz", "--out", str(tmp_path / "out"), "--device", "cpu",
            "--quiet", *[a for k, v in knobs.items() for a in (flags[k], str(v))]]
    main(args)  # the console entry point; an error would exit non-zero
    (npz,) = (tmp_path / "out").glob("*.npz")
    images = np.load(npz)["arr_0"]

    net = sk.load(path)
    rnd = StackedRandomGenerator("cpu", [0, 1, 2, 3])
    latents = rnd.randn([4, 3, RESOLUTION, RESOLUTION])
    with torch.no_grad():
        x = _edm_alg2(net, latents, torch.arange(4), rnd, 5, **knobs)
    expected = to_uint8(x)
    assert images.shape == expected.shape == (4, RESOLUTION, RESOLUTION, 3)
    diff = np.abs(images.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # float rounding may flip a pixel by one level
