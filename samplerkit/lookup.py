"""What a model name stands for in a run: its recommended sampler settings, its sha256 and, for
classifier guidance, the noisy-image classifier it names (a zoo name or a local checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import zoo
from .errors import SamplerkitError
from .loading import load
from .output import file_sha256
from .train.recommend import read_recommended


@dataclass(frozen=True)
class ModelRef:
    """A model name as a run uses it, looked up once: a local checkpoint file, a zoo entry, or neither (an
    unknown name, which loading then reports with the zoo's suggestions)."""

    name: str
    entry: zoo.ZooEntry | None = None
    is_file: bool = False

    @classmethod
    def of(cls, name: str | None) -> ModelRef:
        if name and Path(name).is_file():
            return cls(str(name), None, True)
        try:
            return cls(str(name or ""), zoo.get(name) if name else None)
        except SamplerkitError:
            return cls(str(name or ""))

    def recommended(self) -> dict:
        """The recommended sampler settings: the zoo's for a zoo name, those its training run wrote
        (``recommended.json``) for a checkpoint file; {} when there are none."""
        if self.is_file:
            return read_recommended(self.name)
        return dict(self.entry.recommended) if self.entry is not None else {}

    def guidance(self) -> dict:
        """The guidance a zoo model comes with (see :func:`model_guidance`); {} for a file or none."""
        return dict(self.entry.guidance) if self.entry is not None else {}

    def sha256(self) -> str:
        """sha256 of a local file; the published or recorded one of a zoo entry; '' when there is none."""
        if self.is_file:
            return file_sha256(self.name)
        return (self.entry.expected_sha256() or "") if self.entry is not None else ""

    def load(self, family: str | None = None, flags: dict | None = None, preset: str | None = None, device="cpu"):
        """The denoiser (:func:`samplerkit.load` with the upstream ``flags`` and ``preset``); a zoo entry loads
        without a second lookup."""
        flags = {**(flags or {}), **({"preset": preset} if preset else {})}
        if self.entry is not None:
            return self.entry.load(device=device, family=family, **flags)
        return load(self.name, family=family, device=device, **flags)


def recommended(name: str | None) -> dict:
    """The recommended sampler settings of model ``name``: the zoo's for a zoo name, those its
    training run wrote (``recommended.json``) for a checkpoint file; {} when there are none."""
    return ModelRef.of(name).recommended()


def resolve_sampler(name: str | ModelRef | None, sampler: str | None, steps: int | None,
                    options: dict) -> tuple[str, int, dict]:
    """The sampler, step count and options a run uses when the user left some unset.

    No ``--sampler``: the model's recommended settings (``samplerkit models info``), with the
    user's own options on top; a model without one gets Heun with 18 steps. ``--sampler`` given
    without ``--steps``: the recommended step count when it names the recommended sampler, else 18.
    """
    rec = name.recommended() if isinstance(name, ModelRef) else recommended(name)
    rec_sampler, rec_steps = rec.pop("sampler", "heun"), rec.pop("steps", 18)
    if sampler is None:
        return rec_sampler, rec_steps if steps is None else steps, {**rec, **options}
    if steps is None:
        steps = rec_steps if sampler == rec_sampler else 18
    return sampler, steps, options


def model_sha256(name: str) -> str:
    """sha256 of a local model file; the published or recorded one for a zoo name (a shipped model's
    own); '' when there is none (an analytic model, a download not made yet)."""
    return ModelRef.of(name).sha256()  # a shipped model has its digest; an analytic one has none


def load_classifier(name: str, flags: dict, device="cpu"):
    """The noisy-image classifier ``--classifier`` names: a zoo classifier, or a ``.pt`` with its
    upstream ``classifier_*`` flags (or a flags.json beside it)."""
    if not Path(name).is_file():
        entry = zoo.get(name)
        if entry.family != "adm-classifier":
            names = ", ".join(e.name for e in zoo.entries() if e.family == "adm-classifier")
            raise SamplerkitError(f"{name} is not a classifier (family {entry.family}); use one of {names}")
    return load(name, family="adm-classifier", device=device, **flags)


def model_guidance(name: str | None) -> dict:
    """The guidance a zoo model comes with (:attr:`samplerkit.zoo.ZooEntry.guidance`): a guided preset's
    {"gnet", "weight"}, a release's recommended classifier-free guidance {"weight", "form"}; {} for a
    local file or a model without one."""
    return ModelRef.of(name).guidance()


def load_guide_model(name: str, flags: dict, device="cpu"):
    """The guiding network ``--guide-model`` names: a zoo name or a local file (EDM/EDM2 pickles are
    detected; ``flags`` as :func:`samplerkit.load` takes them). A guided preset given here is refused:
    name its network file instead."""
    net = load(name, device=device, **flags)
    if hasattr(net, "gnet"):
        raise SamplerkitError(f"{name} is itself a guided preset; guide with a single network (its file name)")
    return net


def guidance_loader(kind: str, device="cpu"):
    """``loader(name, flags)`` of a :class:`samplerkit.guidance.Guidance` of ``kind``."""
    load_fn = load_classifier if kind == "classifier" else load_guide_model
    return lambda name, flags: load_fn(name, flags, device=device)
