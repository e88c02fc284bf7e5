"""Read pickles of torch networks without running any code stored in them.

A pickle is a small program: each ``GLOBAL``/``STACK_GLOBAL`` opcode names a Python object that
the ``REDUCE``/``NEWOBJ``/``BUILD`` opcodes then call. :class:`RestrictedUnpickler` resolves
names only through :data:`ALLOWED_GLOBALS`, where every entry is a function *of ours* that
checks its arguments before building plain data:

* tensors and parameters (``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``) over
  storages from ``torch.storage._load_from_bytes``, whose payload (a legacy ``torch.save``
  stream) is parsed here: its small header pickles may name storage types and nothing else;
* containers (``collections.OrderedDict``, ``set``, ``frozenset``), numeric numpy scalars and
  numeric numpy arrays (a :class:`NumpyArray` record holding a copy of the data);
* the EDM persistence layer: ``torch_utils.persistence._reconstruct_persistent_obj(meta)``
  becomes a :class:`PersistentRecord` (the embedded ``module_src`` is hashed, never executed),
  ``torch.nn.ModuleDict`` a :class:`ModuleRecord`, ``dnnlib.util.EasyDict`` an :class:`EasyDict`.

Any other global raises :class:`~samplerkit.errors.SamplerkitError` naming it, before it is
imported or called.
"""

from __future__ import annotations

import _compat_pickle
import hashlib
import io
import pickle
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from samplerkit.errors import SamplerkitError

# ---------------------------------------------------------------------------------------------
# neutral records the unpickler builds instead of the pickled classes


@dataclass
class PersistentRecord:
    """What an EDM persistent object holds, without its class: name, arguments and ``__dict__``.

    ``module_src_sha256`` identifies the source code the pickle carries; the code is not run.
    """

    class_name: str
    module_src_sha256: str
    version: int | None
    init_args: tuple
    init_kwargs: dict | None
    state: dict = field(repr=False)

    def __setstate__(self, state) -> None:
        raise SamplerkitError("refusing a pickle that alters a persistent object after building it")


class ModuleRecord:
    """A pickled ``torch.nn`` container (``ModuleDict``): only its ``__dict__`` is kept."""

    class_name = "ModuleDict"

    def __new__(cls, *args, **kwargs):  # unpickling calls __new__ (NEWOBJ), never __init__
        record = super().__new__(cls)
        record.state = {}
        return record

    def __setstate__(self, state) -> None:
        if not isinstance(state, dict):
            raise SamplerkitError("refusing a pickled ModuleDict whose state is not a dict")
        self.state = state


class EasyDict(dict):
    """Stands in for ``dnnlib.util.EasyDict``: a plain dict (attribute access is not needed)."""

    __slots__ = ()


class _NumpyDType:
    """A numeric numpy dtype named in a pickle, as ``numpy.dtype.__reduce__`` emits it."""

    NUMERIC = frozenset(f"{kind}{size}" for kind in "iu" for size in (1, 2, 4, 8)) | {"f2", "f4", "f8", "b1"}

    def __init__(self, spec: str) -> None:
        self.spec, self.byteorder = spec, "="

    def __setstate__(self, state) -> None:
        if not (isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "=", "|")):
            raise SamplerkitError("refusing a pickled numpy dtype with an unexpected state")
        self.byteorder = state[1]

    def numpy(self) -> np.dtype:
        return np.dtype(self.spec).newbyteorder(self.byteorder) if self.byteorder in "<>" else np.dtype(self.spec)


class NumpyArray:
    """A numeric numpy array as pickled (EDM2's ``StabilityVAEEncoder`` keeps its scale and bias so):
    ``numpy.core.multiarray._reconstruct`` makes an empty record, ``BUILD`` passes
    ``(version, shape, dtype, is_fortran, raw bytes)``; ``array`` is then a fresh copy of the data."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state) -> None:
        if self.array is not None or not (isinstance(state, tuple) and len(state) == 5):
            raise SamplerkitError("refusing a pickled numpy array with an unexpected state")
        version, shape, dtype, fortran, raw = state
        if version != 1 or not isinstance(dtype, _NumpyDType) or not isinstance(fortran, bool):
            raise SamplerkitError("refusing a pickled numpy array with an unexpected state")
        if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
            raise SamplerkitError("refusing a pickled numpy array with a malformed shape")
        dt = dtype.numpy()
        if not isinstance(raw, bytes) or len(raw) != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
            raise SamplerkitError("refusing a pickled numpy array whose data does not match its shape")
        self.array = np.frombuffer(raw, dtype=dt).reshape(shape, order="F" if fortran else "C").copy()


_NDARRAY = object()  # what ``numpy.ndarray`` resolves to: only ever an argument of _numpy_reconstruct


# ---------------------------------------------------------------------------------------------
# the allowed callables, each checking what the pickle passes it


def _refuse(what: str) -> SamplerkitError:
    return SamplerkitError(f"refusing {what} in pickle; the file is not a plain network pickle")


def _check_no_hooks(hooks) -> None:
    if not isinstance(hooks, Mapping) or len(hooks) != 0:
        raise _refuse("a tensor with backward hooks")


class _Storage:
    """The flat data of one pickled storage: a 1-D tensor of its dtype, owned by us."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data


# the storage classes a legacy torch.save stream names, by dtype
_STORAGE_DTYPES = {
    f"{name}Storage": dtype
    for name, dtype in [("Float", torch.float32), ("Double", torch.float64), ("Half", torch.float16),
                        ("BFloat16", torch.bfloat16), ("Long", torch.int64), ("Int", torch.int32),
                        ("Short", torch.int16), ("Char", torch.int8), ("Byte", torch.uint8), ("Bool", torch.bool)]
}
_LEGACY_MAGIC, _LEGACY_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001


class _StorageHeaderUnpickler(pickle.Unpickler):
    """Reads the small pickles of a legacy ``torch.save`` stream: only storage type names resolve."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise SamplerkitError(f"refusing to load {module}.{name} from a tensor storage: not a storage type")

    def persistent_load(self, pid: Any) -> Any:
        return ("persistent", pid)


def _load_from_bytes(payload) -> _Storage:
    """``torch.storage._load_from_bytes``: parse the legacy ``torch.save`` stream of one storage.

    The stream is five small pickles (magic number, protocol, system info, a persistent id
    ``('storage', storage type, key, location, numel[, view])``, the list of keys), then the
    element count as int64 and the raw little-endian bytes. Only that shape is accepted.
    """
    if not isinstance(payload, (bytes, bytearray)):
        raise _refuse("a storage payload that is not bytes")
    f = io.BytesIO(payload)
    try:
        magic, protocol, sys_info, pid, keys = (_StorageHeaderUnpickler(f).load() for _ in range(5))
        if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL or not isinstance(sys_info, dict):
            raise ValueError("not a torch.save storage stream")
        if not sys_info.get("little_endian", False):
            raise ValueError("big-endian storages are not supported")
        kind, (tag, dtype, key, _location, numel, *view) = pid
        if kind != "persistent" or tag != "storage" or not isinstance(dtype, torch.dtype) or keys != [key]:
            raise ValueError("the stream does not hold exactly one storage")
        if any(v is not None for v in view) or not isinstance(numel, int):
            raise ValueError("storage views are not supported")
        stored_numel = int.from_bytes(f.read(8), "little")
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        start = f.tell()
        if stored_numel != numel or len(payload) - start != nbytes:
            raise ValueError("the storage size does not match its data")
    except SamplerkitError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, OverflowError) as err:
        raise SamplerkitError(f"refusing a tensor storage in pickle: {err}; the file is damaged or not a network"
                              " pickle") from None
    raw = np.frombuffer(payload, dtype=np.uint8, count=nbytes, offset=start).copy()
    return _Storage(torch.from_numpy(raw).view(dtype))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2``: a strided view of one of our storages; hooks must be empty."""
    if not isinstance(storage, _Storage):
        raise _refuse("a tensor over something other than a pickled storage")
    if not (isinstance(storage_offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)):
        raise _refuse("a tensor with a malformed layout")
    if not all(isinstance(n, int) for n in size + stride) or not isinstance(requires_grad, bool):
        raise _refuse("a tensor with a malformed layout")
    _check_no_hooks(OrderedDict() if backward_hooks is None else backward_hooks)
    if metadata:
        raise _refuse("a tensor with extra metadata")
    try:
        return storage.data.as_strided(size, stride, storage_offset)  # bounds are checked against the storage
    except RuntimeError as err:
        raise _refuse(f"a tensor outside its storage ({' '.join(str(err).split())[:80]})") from None


def _rebuild_parameter(data, requires_grad, backward_hooks) -> torch.Tensor:
    """``torch._utils._rebuild_parameter``: the tensor itself (the loader decides what is a parameter)."""
    if not isinstance(data, torch.Tensor) or not isinstance(requires_grad, bool):
        raise _refuse("a malformed parameter")
    _check_no_hooks(backward_hooks)
    return data


def _reconstruct_persistent_obj(meta) -> PersistentRecord:
    """``torch_utils.persistence._reconstruct_persistent_obj``: a record; ``module_src`` is only hashed."""
    if not isinstance(meta, dict):
        raise _refuse("a persistent object without a meta dict")
    class_name, module_src, state = meta.get("class_name"), meta.get("module_src"), meta.get("state")
    if meta.get("type") != "class" or not isinstance(class_name, str) or not isinstance(module_src, str):
        raise _refuse("a persistent object with malformed meta")
    if not isinstance(state, dict):
        raise _refuse(f"a persistent {class_name} without a state dict")
    init_args, init_kwargs = state.get("_init_args", ()), state.get("_init_kwargs")
    if not isinstance(init_args, (tuple, list)) or not (init_kwargs is None or isinstance(init_kwargs, dict)):
        raise _refuse(f"a persistent {class_name} with malformed constructor arguments")
    return PersistentRecord(
        class_name=class_name,
        module_src_sha256=hashlib.sha256(module_src.encode("utf-8", "surrogatepass")).hexdigest(),
        version=meta.get("version"),
        init_args=tuple(init_args),
        init_kwargs=None if init_kwargs is None else dict(init_kwargs),
        state=state,
    )


def _numpy_dtype(spec, align=False, copy=True) -> _NumpyDType:
    """``numpy.dtype`` as pickled: numeric kinds only (an object dtype could smuggle references)."""
    if spec not in _NumpyDType.NUMERIC:
        raise _refuse(f"numpy dtype {spec!r}")
    return _NumpyDType(spec)


def _numpy_scalar(dtype, data=None):
    """``numpy.core.multiarray.scalar``: a numeric scalar from its raw bytes, as a Python number."""
    if not isinstance(dtype, _NumpyDType) or not isinstance(data, bytes):
        raise _refuse("a numpy scalar that is not a plain number")
    dt = dtype.numpy()
    if len(data) != dt.itemsize:
        raise _refuse("a numpy scalar of the wrong size")
    return np.frombuffer(data, dtype=dt)[0].item()


def _numpy_reconstruct(cls, shape, typecode) -> NumpyArray:
    """``numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b')``: an empty :class:`NumpyArray`."""
    if cls is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
        raise _refuse("a numpy array that is not a plain ndarray")
    return NumpyArray()


def _codecs_encode(text, encoding="utf-8"):
    """``_codecs.encode``: how protocol-2 pickles store bytes (latin-1 text)."""
    if not isinstance(text, str) or encoding != "latin1":
        raise _refuse("a call to _codecs.encode")
    return text.encode("latin1")


ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _codecs_encode,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,  # numpy 1.x
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,  # numpy 2.x
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,  # numpy 1.x
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,  # numpy 2.x
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch.nn.modules.container", "ModuleDict"): ModuleRecord,
    ("dnnlib.util", "EasyDict"): EasyDict,
}


# ---------------------------------------------------------------------------------------------


class RestrictedUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` that resolves globals only through an allow-list."""

    def __init__(self, file: BinaryIO, allowed: Mapping[tuple[str, str], Any] = ALLOWED_GLOBALS):
        super().__init__(file)
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        # protocol-2 pickles spell some names as Python 2 did (``__builtin__.set``)
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return self.allowed[(module, name)]
        except (KeyError, TypeError):
            raise SamplerkitError(f"refusing to load {module}.{name} from pickle: not an allowed global") from None

    def persistent_load(self, pid: Any) -> Any:
        raise SamplerkitError("refusing a persistent id in pickle: not a plain network pickle")


# what damaged pickle data raises (MemoryError: a damaged length field asking for a huge allocation)
_CORRUPT = (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            OverflowError, RecursionError, UnicodeDecodeError, RuntimeError, MemoryError)


def load(file: BinaryIO, name: str = "the pickle") -> Any:
    """Unpickle ``file`` through :class:`RestrictedUnpickler`; ``name`` is used in error messages."""
    try:
        return RestrictedUnpickler(file).load()
    except SamplerkitError:
        raise
    except _CORRUPT as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else "unexpected end of data"
        raise SamplerkitError(
            f"cannot read {name}: it is truncated or corrupted ({type(err).__name__}: {detail}); download it again"
        ) from None


def loads(data: bytes, name: str = "the pickle") -> Any:
    """:func:`load` from bytes."""
    return load(io.BytesIO(data), name=name)


def load_path(path: str | Path) -> Any:
    """:func:`load` of the file ``path``, named by its file name in messages; an unreadable file is a
    one-line error."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return load(f, name=path.name)
    except OSError as err:
        raise SamplerkitError(f"cannot open {path}: {err.strerror or err}") from None


# ---------------------------------------------------------------------------------------------
# the tensors of a pickled torch.nn.Module tree (EDM's and EDM2's persistence layer), assigned to ours


def collect_tensors(record, module: torch.nn.Module, out: dict[str, torch.Tensor], prefix: str = "",
                    family: str = "") -> dict[str, torch.Tensor]:
    """The pickled ``_parameters``/``_buffers`` of ``record`` and its children, walked alongside our
    ``module`` (class names must agree, so the record tree is only followed where our architecture
    has a submodule), into ``out`` by state-dict name in their stored dtype; returns ``out``.
    ``family`` ("EDM2 ", or "") names the pickle in messages."""
    where = prefix.rstrip(".") or "network"
    expected = "ModuleDict" if isinstance(module, torch.nn.ModuleDict) else type(module).__name__
    if getattr(record, "class_name", None) != expected:
        found = getattr(record, "class_name", type(record).__name__)
        raise SamplerkitError(f"pickled {family}module {where} is a {found}, expected {expected}")
    state = record.state
    if not isinstance(state, Mapping):
        raise SamplerkitError(f"pickled {family}module {where} has no state dict")
    for kind in ("_parameters", "_buffers"):
        entries = state.get(kind) or {}
        if not isinstance(entries, Mapping):
            raise SamplerkitError(f"pickled {family}module {where} has malformed {kind}")
        for key, tensor in entries.items():
            if tensor is None:
                continue
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
                raise SamplerkitError(f"pickled {prefix}{key} is not a floating-point tensor")
            out[f"{prefix}{key}"] = tensor
    children = state.get("_modules") or {}
    if not isinstance(children, Mapping):
        raise SamplerkitError(f"pickled {family}module {where} has malformed _modules")
    for key, child in children.items():
        ours = module._modules.get(key)
        if child is None and ours is None:
            continue
        if ours is None or child is None:
            raise SamplerkitError(f"pickled {family}submodule {prefix}{key} does not match the architecture built "
                                  "from its arguments")
        collect_tensors(child, ours, out, f"{prefix}{key}.", family)
    return out


def assign_tensors(net: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str) -> torch.nn.Module:
    """``net`` with ``tensors`` assigned by state-dict name (strict: the same names and shapes, else a
    one-line error naming ``what``, e.g. "the pickled EDMPrecond"); returns ``net``."""
    expected = net.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise SamplerkitError(f"{what} does not match its architecture: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    wrong = [k for k, v in tensors.items() if v.shape != expected[k].shape]
    if wrong:
        raise SamplerkitError(f"{what} does not match its architecture: {wrong[0]} has shape "
                              f"{list(tensors[wrong[0]].shape)}, expected {list(expected[wrong[0]].shape)}")
    try:
        net.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as err:
        raise SamplerkitError(f"{what} does not match its architecture: {' '.join(str(err).split())}") from None
    return net
