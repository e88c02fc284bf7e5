"""EDM network pickles -> our modules, without running the code stored in the pickle.

EDM releases its networks (and its training snapshots ``network-snapshot-*.pkl``) as pickles
whose objects carry the source of their defining module (``torch_utils.persistence``).
:func:`load_pickle` reads such a file with :mod:`samplerkit.adapters.safe_pickle`, which turns
every persistent object into a neutral record, then builds *our* class of the same name
(:mod:`~samplerkit.adapters.edm.precond`, :mod:`~samplerkit.adapters.edm.networks`) from the
pickled constructor arguments and assigns the pickled parameters and buffers by name (strict).

:func:`load_state_dict` reads the other form of the same networks: a plain tensor state dict
(``torch.load(weights_only=True)``, as ``samplerkit retrain --precond edm|vp|ve`` writes them) plus
the class name and constructor arguments that a pickle would have recorded (the run's
``flags.json``); the network is built and assigned exactly as from a pickle.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from samplerkit.denoisers import Denoiser
from samplerkit.errors import SamplerkitError

from .. import edm2, safe_pickle
from .networks import skip_weight_init
from .precond import PRECONDITIONERS, _Preconditioned


def load_pickle(path: str | Path, device: str | torch.device = "cpu") -> Denoiser:
    """Load an EDM network pickle as a denoiser, without running code from the file.

    Accepts the released pickles and training snapshots (a dict whose ``'ema'`` entry is the
    network, as EDM's ``generate.py`` reads them) and pickles of a bare network object; an EDM2
    pickle goes to :func:`samplerkit.adapters.edm2.from_pickle_data`.
    """
    path = Path(path)
    data = safe_pickle.load_path(path)
    if edm2.is_edm2_pickle(data):  # an EDM2 release pickle (Karras et al. 2024): same persistence layer
        return edm2.from_pickle_data(data, path.name, device=device)
    net = build_network(_network_record(data, path.name))
    return net.to(device).eval().requires_grad_(False)


def load_state_dict(path: str | Path, class_name: str, device: str | torch.device = "cpu",
                    **init_kwargs) -> Denoiser:
    """A preconditioner ``class_name`` (EDMPrecond, VPPrecond, VEPrecond, iDDPMPrecond) built from
    ``init_kwargs`` with the tensors of the state-dict file ``path`` assigned by name (strict)."""
    path = Path(path)
    cls = PRECONDITIONERS.get(class_name)
    if cls is None:
        raise SamplerkitError(f"unsupported network class {class_name}; samplerkit loads {', '.join(PRECONDITIONERS)}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise SamplerkitError(f"cannot open {path}: {err.strerror or err}") from None
    except Exception as err:  # noqa: BLE001 -- torch raises many types for a file that is not a state dict
        raise SamplerkitError(f"{path.name} is not a tensor state dict: {' '.join(str(err).split())[:200]}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SamplerkitError(f"{path.name} is not a tensor state dict")
    try:
        with skip_weight_init():
            net = cls(**init_kwargs)
    except (TypeError, ValueError) as err:
        raise SamplerkitError(f"cannot build {class_name} from the recorded arguments: {err}") from None
    expected = net.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise SamplerkitError(f"{path.name} does not match the {class_name} its flags describe: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    tensors = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()}
    try:
        net.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as err:
        raise SamplerkitError(f"{path.name} does not match the {class_name} its flags describe: "
                              f"{' '.join(str(err).split())}") from None
    return net.to(device).eval().requires_grad_(False)


def _network_record(data, name: str) -> safe_pickle.PersistentRecord:
    if isinstance(data, dict) and "ema" in data:
        data = data["ema"]
    if not isinstance(data, safe_pickle.PersistentRecord):
        raise SamplerkitError(
            f"{name} is not an EDM network pickle: expected a network object or a dict with an 'ema' network"
        )
    return data


def build_network(record: safe_pickle.PersistentRecord) -> _Preconditioned:
    """Our network for a pickled preconditioner: built from its constructor arguments, state assigned."""
    cls = PRECONDITIONERS.get(record.class_name)
    if cls is None:
        raise SamplerkitError(
            f"unsupported network class {record.class_name}; samplerkit loads {', '.join(PRECONDITIONERS)}"
        )
    if record.init_kwargs is None:
        raise SamplerkitError(f"the pickled {record.class_name} does not record its constructor arguments")
    try:
        with skip_weight_init():
            net = cls(*record.init_args, **record.init_kwargs)
    except (TypeError, ValueError) as err:
        raise SamplerkitError(f"cannot build {record.class_name} from its pickled arguments: {err}") from None
    tensors = safe_pickle.collect_tensors(record, net, {})
    tensors = {k: v.to(torch.float32) for k, v in tensors.items()}
    return safe_pickle.assign_tensors(net, tensors, f"the pickled {record.class_name}")
