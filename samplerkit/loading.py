"""``samplerkit.load``: a zoo name or a checkpoint file -> a :class:`~samplerkit.denoisers.Denoiser`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from samplerkit.adapters import adm, classifier, dit, edm, edm2, iddpm, superres

from . import zoo
from .checkpoint_files import check_intact
from .denoisers import Denoiser
from .errors import SamplerkitError

FAMILIES = ("adm", "iddpm", "edm", "adm-classifier", "adm-superres", "iddpm-superres", "edm2", "dit", "sit")


def load(name_or_path: str | Path | None = None, family: str | None = None, device: str | torch.device = "cpu",
         **flags) -> Denoiser:
    """Load a model as a denoiser D(x; sigma).

    ``name_or_path`` is None for the default model (the built-in one ``samplerkit sample`` uses
    without ``--model``), a zoo name (``samplerkit models list``; downloaded and cached on first
    use) or a local file. For a guided-/improved-diffusion ``.pt`` pass ``family="adm"`` or
    ``"iddpm"`` and the upstream architecture flags (``num_channels=192``,
    ``attention_resolutions="32,16,8"``, ...), or ``preset=<zoo name>`` plus overrides; a
    checkpoint of a ``samplerkit retrain`` run folder (``flags.json`` beside it) needs neither.
    EDM ``.pkl`` network pickles are detected and loaded without running code from the pickle.
    ``family="adm-classifier"`` loads a guided-diffusion noisy-image classifier (``clf(x_t, t) ->
    logits``, upstream ``classifier_*`` flags), ``"adm-superres"`` / ``"iddpm-superres"`` an upsampler
    (``large_size``, ``small_size``, ...; see :mod:`samplerkit.adapters.superres`).
    """
    if name_or_path is None:
        name_or_path = zoo.DEFAULT_MODEL
    path = Path(name_or_path)
    if path.is_file():
        return load_file(path, family=family, device=device, **flags)
    if path.suffix in (".pt", ".pkl", ".pth") or "/" in str(name_or_path):
        raise SamplerkitError(f"model file not found: {name_or_path}")
    entry = zoo.get(str(name_or_path))
    return entry.load(device=device, family=family, **flags)


RUN_FLAGS = "flags.json"
RUN_FAMILY = "adm"  # the family of a run folder whose flags.json names none (``samplerkit retrain`` trains ADM)
# flags a load may change from a run's flags.json: they change how the network runs, not what it computes
RUNTIME_FLAGS = ("use_fp16", "use_checkpoint", "dropout")


def file_family_and_flags(path: Path, family: str | None, flags: dict) -> tuple[str, dict]:
    """The family and the complete upstream flags a local checkpoint is built with.

    ``flags`` may hold ``preset`` (a zoo entry whose flags are the base). A ``.pt`` with a
    ``flags.json`` beside it (a ``samplerkit retrain`` run folder) needs no family or flags: the
    file records both (family ``adm`` unless it says otherwise). Flags passed as well must agree
    with it, except the runtime flags ``use_fp16``, ``use_checkpoint`` and ``dropout``.
    """
    flags = dict(flags)
    preset = flags.pop("preset", None)
    if preset is not None:
        entry = zoo.get(preset)
        family = family or entry.family
        flags = {**entry.flags, **flags}
    run_flags = read_run_flags(path) if path.suffix != ".pkl" else None
    if run_flags is not None:
        recorded_family = run_flags.pop("family", None)
        if family is not None and recorded_family is not None and family != recorded_family:
            raise SamplerkitError(f"the {RUN_FLAGS} beside {path.name} says family {recorded_family}, not {family}; "
                                  "drop the family argument")
        family = family or recorded_family or RUN_FAMILY
        if family in ("adm", "iddpm", "adm-classifier", "adm-superres", "iddpm-superres"):
            flags = merge_run_flags(run_flags, flags, path)
        elif family == "edm" and recorded_family == "edm":  # retrain --precond edm|vp|ve: class + constructor arguments
            flags = merge_run_flags(run_flags, flags, path)
    if family is None:
        family = "edm" if path.suffix == ".pkl" else None
    if family is None:
        raise SamplerkitError(
            f"cannot tell the network family of {path.name}; pass family='adm' or 'iddpm' "
            f"with the upstream flags, or preset=<zoo name>, or keep the run's {RUN_FLAGS} beside it"
        )
    return family, flags


def load_file(path: str | Path, family: str | None = None, device="cpu", **flags) -> Denoiser:
    """Load a local checkpoint file; the family comes from ``family``, the file type, or a run folder
    (see :func:`file_family_and_flags`)."""
    path = Path(path)
    check_intact(path)  # a cut-short file says so, before any guess at its family
    family, flags = file_family_and_flags(path, family, flags)
    if family == "adm":
        return adm.load_checkpoint(path, device=device, **flags)
    if family == "iddpm":
        return iddpm.load_checkpoint(path, device=device, **flags)
    if family == "adm-classifier":  # a noisy-image classifier clf(x_t, t), for samplerkit.guidance
        return classifier.load_classifier(path, device=device, **flags)
    if family in ("adm-superres", "iddpm-superres"):
        return superres.load_upsampler(path, family=family.split("-")[0], device=device, **flags)
    if family == "edm":
        if path.suffix != ".pkl" and "class_name" in flags:  # a state dict + the run's constructor arguments
            return edm.load_state_dict(path, device=device, **flags)
        if flags:
            raise SamplerkitError(f"EDM pickles carry their own architecture; unexpected flags {sorted(flags)}")
        return edm.load_pickle(path, device=device)
    if family == "edm2":  # EDM2 pickles (also detected under family "edm"); variant=, dtype=, autoencoder=
        unknown = sorted(set(flags) - {"variant", "dtype", "autoencoder"})
        if unknown:
            raise SamplerkitError(f"EDM2 pickles carry their own architecture; unexpected flags {unknown}")
        return edm2.load_pickle(path, device=device, **flags)
    if family in ("dit", "sit"):  # DiT / SiT latent transformers (arch, image_size, num_classes, autoencoder)
        return dit.load_checkpoint(path, family=family, device=device, **flags)
    raise SamplerkitError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")


def read_run_flags(checkpoint: Path) -> dict | None:
    """The flags.json beside ``checkpoint`` (what ``samplerkit retrain`` writes), or None."""
    file = checkpoint.parent / RUN_FLAGS
    if not file.is_file():
        return None
    try:
        flags = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise SamplerkitError(f"cannot read {file}: {err}; fix or remove it") from None
    if not isinstance(flags, dict):
        raise SamplerkitError(f"{file} holds a {type(flags).__name__}, not a JSON object of flags; fix or remove it")
    return flags


def _canonical(value) -> str:
    """A flag value as text for comparison: 32 == "32", True == "true", [16, 8] == "16,8"."""
    if isinstance(value, (list, tuple)):
        return ",".join(_canonical(v) for v in value)
    return str(value).replace(" ", "").lower()


def merge_run_flags(recorded: dict, flags: dict, path: Path) -> dict:
    """The run's recorded flags plus ``flags``; a flag that contradicts the record is refused."""
    for name, value in flags.items():
        if name in recorded and name not in RUNTIME_FLAGS and _canonical(value) != _canonical(recorded[name]):
            raise SamplerkitError(
                f"flag {name}={_canonical(value)} contradicts the {RUN_FLAGS} beside {path.name} "
                f"({name}={_canonical(recorded[name])}), which records how the model was trained; drop the flag"
            )
    return {**recorded, **flags}


zoo.set_file_loader(load_file)  # ZooEntry.load reads its downloaded file with load_file
