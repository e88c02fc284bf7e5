"""The restricted unpickler: allowed globals load as plain data, anything else is refused unrun."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
from samplerkit.adapters import safe_pickle

from samplerkit.errors import SamplerkitError


def global_call(module: str, name: str, *args) -> bytes:
    """A protocol-2 pickle that calls ``module.name(*args)`` (GLOBAL, args tuple, REDUCE)."""
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + pickle.dumps(args, protocol=2)[2:-1] + b"R."


def _load_from_bytes_payload(tensor: torch.Tensor) -> bytes:
    """The bytes torch's pickling of ``tensor`` hands to ``torch.storage._load_from_bytes``."""
    fn, (payload,) = tensor._typed_storage().__reduce__()
    assert fn is torch.storage._load_from_bytes
    return payload


class Reduce:
    """An object whose unpickling calls ``fn(*args)``, pickled the ordinary way."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def write_marker_code(marker) -> str:
    return f"open({str(marker)!r}, 'w').close()"


# ---------------------------------------------------------------------------------------------
# refused


@pytest.mark.parametrize("module, name, make_args", [
    ("os", "system", lambda marker: (f"touch {marker}",)),
    ("posix", "system", lambda marker: (f"touch {marker}",)),
    ("subprocess", "Popen", lambda marker: (["touch", str(marker)],)),
    ("builtins", "eval", lambda marker: (write_marker_code(marker),)),
    ("builtins", "exec", lambda marker: (write_marker_code(marker),)),
    ("builtins", "getattr", lambda marker: (OrderedDict, "fromkeys")),
])
def test_dangerous_global_is_refused_by_name_and_never_called(module, name, make_args, tmp_path):
    marker = tmp_path / "executed"
    message = rf"^refusing to load {module}\.{name} from pickle: not an allowed global"
    with pytest.raises(SamplerkitError, match=message):
        safe_pickle.loads(global_call(module, name, *make_args(marker)))
    assert not marker.exists()


def test_reduce_to_os_system_pickled_the_ordinary_way_is_refused(tmp_path):
    marker = tmp_path / "executed"
    data = pickle.dumps({"ema": Reduce(os.system, f"touch {marker}")}, protocol=4)
    with pytest.raises(SamplerkitError, match=rf"refusing to load {os.system.__module__}\.system"):
        safe_pickle.loads(data)
    assert not marker.exists()


def test_subprocess_popen_pickled_the_ordinary_way_is_refused(tmp_path):
    marker = tmp_path / "executed"
    with pytest.raises(SamplerkitError, match=r"refusing to load subprocess\.Popen"):
        safe_pickle.loads(pickle.dumps(Reduce(subprocess.Popen, ["touch", str(marker)]), protocol=4))
    assert not marker.exists()


def test_global_from_an_arbitrary_module_is_refused_before_import(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "sk_side_effect_module.py").write_text(write_marker_code(marker) + "\ndef run():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SamplerkitError, match=r"refusing to load sk_side_effect_module\.run"):
        safe_pickle.loads(global_call("sk_side_effect_module", "run"))
    assert not marker.exists() and "sk_side_effect_module" not in sys.modules


def test_storage_payload_with_a_system_call_is_refused(tmp_path):
    """The bytes of a pickled storage are a torch.save stream; its pickles may name storage types only."""
    marker = tmp_path / "executed"
    payload = io.BytesIO()
    torch.save(Reduce(os.system, f"touch {marker}"), payload, _use_new_zipfile_serialization=False)
    message = rf"refusing to load {os.system.__module__}\.system from a tensor storage"
    with pytest.raises(SamplerkitError, match=message):
        safe_pickle.loads(global_call("torch.storage", "_load_from_bytes", payload.getvalue()))
    assert not marker.exists()


def test_storage_payload_shorter_than_its_size_is_refused():
    good = pickle.dumps(torch.arange(4.0), protocol=4)
    data = _load_from_bytes_payload(torch.arange(4.0))[:-4]
    with pytest.raises(SamplerkitError, match="storage size does not match its data"):
        safe_pickle.loads(global_call("torch.storage", "_load_from_bytes", data))
    assert safe_pickle.loads(good).tolist() == [0.0, 1.0, 2.0, 3.0]


def test_tensor_reaching_outside_its_storage_is_refused():
    storage = torch.arange(4.0)._typed_storage()
    data = pickle.dumps(Reduce(torch._utils._rebuild_tensor_v2, storage, 0, (100,), (1,), False, OrderedDict()))
    with pytest.raises(SamplerkitError, match="outside its storage"):
        safe_pickle.loads(data)


def test_tensor_with_backward_hooks_is_refused():
    hooks = OrderedDict(hook=OrderedDict)  # any allowed callable could be smuggled in as a hook
    data = pickle.dumps(Reduce(torch._utils._rebuild_parameter, torch.ones(2), False, hooks), protocol=4)
    with pytest.raises(SamplerkitError, match="backward hooks"):
        safe_pickle.loads(data)


def test_numpy_object_dtype_is_refused():
    with pytest.raises(SamplerkitError, match="numpy dtype 'O8'"):
        safe_pickle.loads(pickle.dumps(np.dtype(object)))


def test_persistent_id_is_refused():
    with pytest.raises(SamplerkitError, match="persistent id"):
        safe_pickle.loads(b"P0\n.")


# ---------------------------------------------------------------------------------------------
# allowed


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_tensors_and_containers_round_trip(protocol):
    weight, buffer = torch.nn.Parameter(torch.randn(3, 4)), torch.arange(6.0).reshape(2, 3)[:, 1:]
    data = dict(params=OrderedDict(weight=weight), buffers={"b": buffer}, names={"a"}, frozen=frozenset({1}))
    out = safe_pickle.loads(pickle.dumps(data, protocol=protocol))
    assert torch.equal(out["params"]["weight"], weight.detach()) and torch.equal(out["buffers"]["b"], buffer)
    assert type(out["params"]) is OrderedDict and out["names"] == {"a"} and out["frozen"] == frozenset({1})


def test_numpy_float_scalar_loads_as_its_python_value():
    out = safe_pickle.loads(pickle.dumps({"skip_scale": np.float64(np.sqrt(0.5))}, protocol=4))
    assert out["skip_scale"] == np.sqrt(0.5) and type(out["skip_scale"]) is float


def test_numpy_1_scalar_module_name_is_accepted():
    data = pickle.dumps(np.float32(0.25), protocol=2)
    data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"cnumpy.core.multiarray\nscalar\n" in data
    assert safe_pickle.loads(data) == 0.25


def test_persistent_object_becomes_a_record_and_its_source_never_runs(tmp_path):
    marker = tmp_path / "executed"
    src = write_marker_code(marker)
    state = dict(_init_args=(), _init_kwargs=dict(img_resolution=32), _parameters={}, sigma_data=0.5)
    meta = dict(type="class", version=6, module_src=src, class_name="EDMPrecond", state=state)
    record = safe_pickle.loads(global_call("torch_utils.persistence", "_reconstruct_persistent_obj", meta))
    assert (record.class_name, record.version, record.init_kwargs) == ("EDMPrecond", 6, dict(img_resolution=32))
    assert record.module_src_sha256 == hashlib.sha256(src.encode()).hexdigest()
    assert record.state["sigma_data"] == 0.5 and not marker.exists()


def test_persistent_object_with_malformed_meta_is_refused():
    meta = dict(type="function", version=6, module_src="", class_name="f", state={})
    with pytest.raises(SamplerkitError, match="malformed meta"):
        safe_pickle.loads(global_call("torch_utils.persistence", "_reconstruct_persistent_obj", meta))


def test_pickle_that_alters_a_persistent_record_after_building_it_is_refused():
    meta = dict(type="class", version=6, module_src="", class_name="EDMPrecond", state={})
    built = global_call("torch_utils.persistence", "_reconstruct_persistent_obj", meta)
    with pytest.raises(SamplerkitError, match="alters a persistent object"):
        safe_pickle.loads(built[:-1] + b"}b.")  # EMPTY_DICT, BUILD: would set attributes on the record


def test_module_dict_becomes_a_record_of_its_state():
    container = torch.nn.ModuleDict({"conv": torch.nn.Conv2d(1, 1, 1)})
    with pytest.raises(SamplerkitError, match=r"refusing to load torch\.nn\.modules\.conv\.Conv2d"):
        safe_pickle.loads(pickle.dumps(container))
    empty = safe_pickle.loads(pickle.dumps(torch.nn.ModuleDict(), protocol=4))
    assert empty.class_name == "ModuleDict" and empty.state["_modules"] == {}


def test_easydict_loads_as_a_plain_dict_subclass():
    data = b"\x80\x02cdnnlib.util\nEasyDict\n)\x81(X\x01\x00\x00\x00aK\x01u."  # NEWOBJ, then SETITEMS a=1
    out = safe_pickle.loads(data)
    assert isinstance(out, safe_pickle.EasyDict) and out == {"a": 1}


# ---------------------------------------------------------------------------------------------
# damaged input


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_pickle_is_a_one_line_error(damage):
    good = pickle.dumps({"w": torch.randn(8, 8)}, protocol=4)
    data = {"truncated": good[: len(good) // 2], "empty": b"", "garbage": b"\x80\x04\x95not a pickle at all"}[damage]
    with pytest.raises(SamplerkitError, match="truncated or corrupted") as info:
        safe_pickle.loads(data, name="net.pkl")
    assert str(info.value).startswith("cannot read net.pkl") and "\n" not in str(info.value)


def test_randomly_damaged_pickles_load_or_raise_one_line_errors_only():
    good = pickle.dumps(dict(w=torch.nn.Parameter(torch.randn(3, 3)), b=torch.zeros(2), s=np.float64(0.5),
                             m=OrderedDict(k={1, 2})), protocol=4)
    rng, outcomes = random.Random(0), {"loaded": 0, "refused": 0}
    for _ in range(300):
        data = bytearray(good)
        for _ in range(rng.choice([1, 2, 4])):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            safe_pickle.loads(bytes(data[: rng.randrange(len(data) // 2, len(data) + 1)]))
            outcomes["loaded"] += 1
        except SamplerkitError as err:
            assert "\n" not in str(err)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100
