"""Random weights of realistic scale, for the tests and benchmarks that build a published
architecture without its checkpoint: fan-in normal weights, biases 0.1 N(0, 1), 1-d gains
1 + 0.1 N(0, 1), drawn in sorted name order from one seed. (Upstream networks zero-initialize their
output layers, so untrained weights would make a network that outputs zeros.)"""

from __future__ import annotations

import json
import math
import os
import pickle
import socket
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from . import distributed


def random_state_dict(template: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights for every key of ``template`` (only the shapes are read; a meta-device state dict
    will do), drawn in sorted key order."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(template):
        shape = tuple(template[key].shape)
        v = torch.randn(shape, generator=g)
        if key.endswith("bias"):
            v = 0.1 * v
        elif len(shape) == 1:  # normalization gains
            v = 1 + 0.1 * v
        else:
            v = v / math.sqrt(math.prod(shape[1:]))
        out[key] = v
    return out


def random_weights(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``module`` with every parameter replaced by :func:`random_state_dict`'s weights (buffers
    untouched); returns it."""
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in random_state_dict(params, seed).items():
            params[name].copy_(value)
    return module


# ---------------------------------------------------------------------------------------------
# pickles written as EDM's and EDM2's persistence layer writes them (for the adapter tests)


def _stand_in_reconstruct(meta):
    raise AssertionError("the stand-in persistence hook must never run")


class StandInEasyDict(dict):
    """Pickled under upstream's name ``dnnlib.util.EasyDict`` (inside :func:`upstream_module_names`)."""


@contextmanager
def upstream_module_names() -> Iterator[None]:
    """``torch_utils.persistence`` and ``dnnlib.util`` stand-ins in ``sys.modules``, so that pickle can
    name upstream's globals; the previous modules come back afterwards."""
    persistence, util = types.ModuleType("torch_utils.persistence"), types.ModuleType("dnnlib.util")
    _stand_in_reconstruct.__module__, _stand_in_reconstruct.__qualname__ = persistence.__name__, \
        "_reconstruct_persistent_obj"
    StandInEasyDict.__module__, StandInEasyDict.__qualname__ = util.__name__, "EasyDict"
    persistence._reconstruct_persistent_obj = _stand_in_reconstruct
    util.EasyDict = StandInEasyDict
    modules = {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
               "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class Persistent:
    """Pickles as upstream persistent objects do: ``(_reconstruct_persistent_obj, (meta,))``."""

    def __init__(self, class_name: str, state: dict, module_src: str, version: int = 6):
        self.meta = dict(type="class", version=version, module_src=module_src, class_name=class_name, state=state)

    def __reduce__(self):
        return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (self.meta,)


def dump_upstream(obj, path: Path) -> Path:
    """``obj`` pickled (protocol 4) to ``path`` with upstream's global names; returns ``path``."""
    with upstream_module_names():
        Path(path).write_bytes(pickle.dumps(obj, protocol=4))
    return Path(path)


# ---------------------------------------------------------------------------------------------
# one function under two gloo processes, as torchrun would start them


def _two_process_worker(rank: int, port: int, fn: Callable[[], object], out: str, cache: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1", SAMPLERKIT_CACHE=cache)
    distributed.init("cpu")
    try:
        result = fn()
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        distributed.cleanup()


def under_two_processes(fn: Callable[[], object], folder: Path):
    """What rank 0 of two CPU processes (torch.multiprocessing, torchrun's environment variables, a TCP
    store on 127.0.0.1, a fresh cache under ``folder``) returned from ``fn()``, through JSON. ``fn``
    must be importable by name (a module-level function)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = Path(folder)
    torch.multiprocessing.spawn(_two_process_worker, args=(port, fn, str(folder / "out.json"), str(folder / "cache")),
                                nprocs=2, join=True)
    return json.loads((folder / "out.json").read_text())
