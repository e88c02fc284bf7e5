"""Classifier guidance (Dhariwal & Nichol 2021, Sec. 4, Alg. 1-2) as a denoiser for every sampler.

A noisy-image classifier p_phi(y | x_t, t) (:mod:`samplerkit.adapters.classifier`) steers a
diffusion model towards class y by adding s * grad log p_phi(y | x_t, t) to its score.

**sigma-space form** (``form="score"``, every sampler). The score of the noised data is
grad_x log p(x; sigma) = (D(x; sigma) - x) / sigma^2 (Karras et al. 2022 (EDM), Eq. 3), so adding
s grad_x log p(y | x; sigma) to it is the guided denoiser

    D_g(x; sigma) = D(x; sigma) + s sigma^2 grad_x log p_phi(y | x_t, t).

The classifier was trained in x_t-space: it is fed x_t = x / sqrt(1 + sigma^2) (the VP scaling,
sqrt(abar) = 1 / sqrt(1 + sigma^2)) and the trained timestep t nearest to sigma. By the chain rule,
with dx_t / dx = 1 / sqrt(1 + sigma^2),

    grad_x log p_phi(y | x_t, t) = grad_{x_t} log p_phi(y | x_t, t) / sqrt(1 + sigma^2),

so D_g = D + s sigma^2 / sqrt(1 + sigma^2) * g_t with g_t the classifier gradient in x_t-space.
In x_t-space this is eps_g = eps - s sqrt(1 - abar) g_t, the DDIM form of Dhariwal & Nichol 2021,
Alg. 2 (guided-diffusion's ``condition_score``): both are the same shift of the x0 estimate,
s (1 - abar) / sqrt(abar) g_t.

**upstream form** (``form="upstream"``, ``ddim`` and ``ancestral`` only). guided-diffusion's
``scripts/classifier_sample.py`` exactly: the ancestral sampler shifts the posterior mean,
mu + s Sigma g_t (``condition_mean``, Alg. 1, Sigma the step's variance); DDIM shifts eps after
the x0 estimate was clipped (``condition_score``). The denoiser then returns the unguided D and
those two samplers apply :meth:`ClassifierGuided.grad_log_prob` themselves, passed to them as
guided-diffusion passes ``cond_fn`` (:meth:`ClassifierGuided.split_guidance`).

A run's guidance is one value, :class:`Guidance` (a kind and its fields): parsed once
(:meth:`Guidance.from_options`), its network loaded once (:meth:`Guidance.load`), and applied in
one place (:meth:`Guidance.apply`, which returns the denoiser a sampler runs and what the sampler
is given besides). A sweep axis is a list of them.

Class labels given to the guided denoiser select y for the classifier; the base model gets them
too when it is class-conditional (guided-diffusion's ``model_fn``), never otherwise.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .denoisers import DenoiserWrapper, _per_sample
from .errors import SamplerkitError
from .knobs import Knob

FORMS = ("score", "upstream")
KINDS = ("classifier", "guided", "cfg")


class ClassifierGuided(DenoiserWrapper):
    """D_g(x; sigma) = D(x; sigma) + s sigma^2 grad_x log p_phi(y | x_t, t) (module docstring).

    ``label_dim`` is the classifier's class count: every call needs labels y.
    """

    def __init__(self, net, classifier, scale: float = 1.0, form: str = "score"):
        super().__init__(net)
        if form not in FORMS:
            raise SamplerkitError(f"unknown guidance form {form!r}; use score or upstream")
        try:
            scale = float(scale)
        except (TypeError, ValueError):
            raise SamplerkitError(f"the classifier scale must be a number >= 0, got {scale!r}") from None
        if not scale >= 0:
            raise SamplerkitError(f"the classifier scale must be >= 0, got {scale}")
        num_classes = int(classifier.num_classes)
        size = int(getattr(classifier, "image_size", 0))
        if size and self.img_resolution and size != self.img_resolution:
            raise SamplerkitError(f"the classifier is for {size}x{size} images but the model makes "
                                  f"{self.img_resolution}x{self.img_resolution}; use the classifier of its resolution")
        channels = int(getattr(classifier, "in_channels", self.img_channels))
        if channels != self.img_channels:
            raise SamplerkitError(f"the classifier takes {channels}-channel images but the model makes "
                                  f"{self.img_channels}-channel ones")
        inner_classes = int(getattr(net, "label_dim", 0))
        if inner_classes and inner_classes != num_classes:
            raise SamplerkitError(f"the classifier has {num_classes} classes but the model has {inner_classes}; "
                                  "use a classifier trained on the model's classes")
        self.classifier = classifier
        self.scale, self.form = scale, form
        self.label_dim = num_classes

    def labels(self, class_labels, batch: int, device) -> torch.Tensor:
        """The class y of every image (int64 [B]) from int or one-hot labels."""
        onehot = self.prepare_labels(class_labels, batch, device)
        return onehot.argmax(dim=1)

    def grad_log_prob(self, x_t: torch.Tensor, sigma, class_labels) -> torch.Tensor:
        """s grad_{x_t} log p_phi(y | x_t, t) in x_t-space (float64), t the trained timestep nearest to
        sigma: what guided-diffusion's ``cond_fn`` returns."""
        y = self.labels(class_labels, x_t.shape[0], x_t.device)
        if self.scale == 0:
            return torch.zeros_like(x_t, dtype=torch.float64)
        t = self.classifier.timestep(torch.as_tensor(sigma, dtype=torch.float64).flatten()).to(x_t.device)
        t = t.expand(x_t.shape[0]) if t.numel() == 1 else t
        with torch.enable_grad():  # the classifier casts x_t to its own dtype (float32 for a network)
            x_in = x_t.detach().to(torch.float64).requires_grad_(True)
            log_probs = torch.log_softmax(self.classifier(x_in, t).to(torch.float64), dim=-1)
            selected = log_probs[torch.arange(x_t.shape[0], device=x_t.device), y]
            grad = torch.autograd.grad(selected.sum(), x_in)[0]
        return grad.to(torch.float64) * self.scale

    def inner_labels(self, class_labels):
        """The labels for the base model: passed on when it is class-conditional, else none."""
        return class_labels if int(getattr(self.inner, "label_dim", 0)) else None

    def split_guidance(self):
        """In the upstream form: (the unguided base model, ``cond_fn(x_t, sigma, class_labels)`` =
        s grad_{x_t} log p), for ddim / ancestral to apply as guided-diffusion does; else (self, None)."""
        return (Unguided(self), self.grad_log_prob) if self.form == "upstream" else (self, None)

    def denoise_with_variance(self, x, sigma, class_labels=None):
        if self.form == "upstream":
            raise SamplerkitError(_UPSTREAM_ONLY)
        self.labels(class_labels, x.shape[0], x.device)  # before the network call: labels are required
        D, v = super().denoise_with_variance(x, sigma, self.inner_labels(class_labels))
        s = _per_sample(sigma, x)
        x_t = x.to(torch.float64) / (1 + s**2).sqrt()
        g = self.grad_log_prob(x_t, s.flatten(), class_labels)
        return D.to(torch.float64) + s**2 / (1 + s**2).sqrt() * g, v


def classifier_guided(net, clf, scale: float = 1.0, form: str = "score") -> ClassifierGuided:
    """``net`` guided by the noisy-image classifier ``clf`` (``clf(x_t, t) -> logits``, with
    ``num_classes``, ``image_size`` and ``timestep(sigma)`` as :class:`samplerkit.adapters.classifier.NoisyClassifier`)
    at scale s >= 0: a denoiser for every sampler; class labels go to the classifier.

    ``form="score"``: D + s sigma^2 grad_x log p (any sampler); ``form="upstream"``: guided-diffusion's
    condition_mean (ancestral) / condition_score (ddim), see the module docstring.
    """
    return ClassifierGuided(net, clf, scale, form)


_UPSTREAM_ONLY = ("guidance form 'upstream' (guided-diffusion's condition_mean / condition_score) is applied by "
                  "the ddim and ancestral samplers only; use form 'score' with other samplers")


class Unguided(DenoiserWrapper):
    """The base model of a :class:`ClassifierGuided` in the upstream form, for the sampler that applies
    the guidance itself: D unguided, the labels routed as the guided denoiser routes them."""

    def __init__(self, guided: ClassifierGuided):
        super().__init__(guided.inner)
        self.label_dim, self.guided = guided.label_dim, guided

    def denoise_with_variance(self, x, sigma, class_labels=None):
        self.guided.labels(class_labels, x.shape[0], x.device)  # labels are required, as for the guided one
        return super().denoise_with_variance(x, sigma, self.guided.inner_labels(class_labels))


# ---------------------------------------------------------------------------------------------
# the guidance of a run, as one value

GUIDANCE_KNOBS: dict[str, Knob] = {
    "classifier": Knob("Noisy-image classifier for classifier guidance (ADM-G): a zoo name such as "
                       "adm-imagenet256-classifier, or a .pt with --classifier-flag.", type=str),
    "classifier_flags": Knob("Upstream classifier_* / diffusion flag of a local classifier .pt; repeatable.",
                             flag="--classifier-flag", type=str, metavar="KEY=VALUE"),
    "classifier_scale": Knob("Classifier guidance scale s >= 0 [default: 1.0]; sweep takes a list (e.g. 0,1,4,10), "
                             "one more axis of cells.", type=str, metavar="S"),
    "guidance_form": Knob("score: D + s sigma^2 grad log p, every sampler (default); upstream: guided-diffusion's "
                          "condition_mean (ancestral) / condition_score (ddim).", FORMS),
    "guide_model": Knob("Guide by a second network, D_g + w (D - D_g) (autoguidance, Karras et al. 2024; an "
                        "unconditional one is classifier-free guidance): a zoo name or a local EDM/EDM2 pickle "
                        "of the same resolution.", type=str, metavar="NAME|FILE"),
    "guidance_weight": Knob("Weight w >= 0 of --guide-model (1: unguided) [default: a guided preset's own weight]; "
                            "sweep takes a list (e.g. 1,1.5,2), one more axis of cells.", type=str, metavar="W"),
    "guidance_interval": Knob("Guide only the evaluations with sigma in (LO, HI] (Kynkaanniemi et al. 2024); "
                              "with --guide-model or --cfg.", type=str, metavar="LO,HI"),
    "cfg": Knob("Classifier-free guidance weight w >= 0 of a model with a null label (DiT, SiT; Ho & Salimans "
                "2022), 1: unguided [default: the zoo model's recommended weight]; sweep takes a list.",
                type=str, metavar="W"),
    "cfg_form": Knob("score: guide every channel; upstream: DiT's/SiT's forward_with_cfg, channels 0-2 "
                     "[default: the zoo model's recommended form, else score].", FORMS),
}

# the option that holds each kind's weight (its scale)
WEIGHT_OPTION = {"classifier": "classifier_scale", "guided": "guidance_weight", "cfg": "cfg"}


@dataclass(frozen=True)
class Guidance:
    """The guidance of a run: ``kind`` and its fields, checked when it is made.

    ``kind="classifier"``: Dhariwal & Nichol 2021 with the noisy-image classifier ``name`` (a zoo
    name or a ``.pt`` with its upstream ``flags``), scale ``scale`` >= 0 and ``form`` score | upstream.
    ``kind="guided"``: guidance by the second network ``name`` (a zoo name or a local file, loaded with
    ``flags``) at weight ``scale`` = w >= 0 (:func:`guided`). ``kind="cfg"``: classifier-free guidance of
    the model itself at weight ``scale`` = w, ``form`` score | upstream (:func:`cfg`; no network).
    ``network``: the loaded guiding network (:meth:`load`); ``interval`` = (sigma_lo, sigma_hi): guide
    only inside it (Kynkaanniemi et al. 2024), for guided and cfg. :meth:`apply` wraps a denoiser;
    :meth:`settings` is what a manifest records.
    """

    kind: str = "classifier"
    name: str = ""
    scale: float = 1.0
    form: str = "score"
    flags: dict = field(default_factory=dict)
    interval: tuple[float, float] | None = None
    network: object = field(default=None, compare=False, repr=False)
    sha256: str | None = field(default=None, compare=False, repr=False)  # the guiding network's, once loaded

    def __post_init__(self):
        if self.kind not in KINDS:
            raise SamplerkitError(f"unknown guidance kind {self.kind!r}; use {' or '.join(KINDS)}")
        if self.form not in FORMS:
            name = "cfg_form" if self.kind == "cfg" else "guidance_form"
            raise SamplerkitError(f"unknown {name} {self.form!r}; use score or upstream")
        what = WEIGHT_OPTION[self.kind]
        if not (isinstance(self.scale, int | float) and self.scale >= 0 and self.scale != float("inf")):
            raise SamplerkitError(f"{what} must be >= 0 and finite, got {self.scale}")
        if self.kind == "guided" and not self.name:
            raise SamplerkitError("guidance by a second network needs its guide_model")
        if self.interval is not None:
            if self.kind == "classifier":
                raise SamplerkitError(f"a guidance interval does not apply to {self.kind} guidance")
            object.__setattr__(self, "interval", _interval_option(self.interval))

    @classmethod
    def from_options(cls, classifier: str | None = None, classifier_flags: dict | None = None,
                     classifier_scale=None, guidance_form: str | None = None, *, guide_model: str | None = None,
                     guidance_weight=None, guidance_interval=None, cfg=None, cfg_form: str | None = None,
                     model_guidance: dict | None = None) -> list[Guidance]:
        """The guidance the options ask for, one per weight (a comma list '0.5,1,4' is a sweep axis); []
        when none is asked for, where the options of a kind not chosen are an error.

        ``model_guidance``: the zoo entry's ``guidance`` of the model (:attr:`samplerkit.zoo.ZooEntry.guidance`):
        a guided preset's {"gnet", "weight"} is the guide model and weight unless the options name others;
        a release's recommended classifier-free guidance {"weight", "form"} applies unless ``cfg`` is given."""
        preset = dict(model_guidance or {})
        kinds = (("classifier", classifier), ("guide_model", guide_model), ("cfg", cfg))
        chosen = [n for n, v in kinds if v is not None]
        if len(chosen) > 1:
            raise SamplerkitError(f"{' and '.join(chosen)} are given; a run takes one kind of guidance")
        if preset.get("gnet") and chosen and chosen != ["guide_model"]:
            raise SamplerkitError(f"the model is a guided preset (guide_model {preset['gnet']}); "
                                  f"{chosen[0]} cannot be added to it, use its network by name instead")
        _unused("classifier", classifier, classifier_flags=classifier_flags, classifier_scale=classifier_scale,
                guidance_form=guidance_form)
        if classifier is not None:
            return [cls("classifier", classifier, s, guidance_form or "score", dict(classifier_flags or {}))
                    for s in _scales(classifier_scale, "classifier_scale")]
        if guide_model or preset.get("gnet"):
            if cfg_form is not None:
                raise SamplerkitError("cfg_form applies to cfg, not to guidance by a guide_model")
            name = guide_model or preset["gnet"]
            weights = preset.get("weight") if guidance_weight is None and not guide_model else guidance_weight
            if weights is None:
                raise SamplerkitError("guide_model needs a guidance_weight (e.g. 2.0; 1 is unguided)")
            return [cls("guided", name, w, interval=guidance_interval) for w in _scales(weights, "guidance_weight")]
        _unused("guide_model", None, guidance_weight=guidance_weight)
        _unused("cfg", cfg if cfg is not None else preset.get("weight"), cfg_form=cfg_form)
        _unused("interval", cfg if cfg is not None else preset.get("weight"), guidance_interval=guidance_interval)
        cfg = preset.get("weight") if cfg is None else cfg  # the release's recommended weight and form by default
        cfg_form = cfg_form or (preset.get("form") if cfg is not None else None)
        if cfg is None:
            return []
        return [cls("cfg", "", w, cfg_form or "score", interval=guidance_interval) for w in _scales(cfg, "cfg")]

    def load(self, loader: Callable[[str, dict], object], sha256: str | None = None) -> Guidance:
        """This guidance with its network, ``loader(name, flags)`` (one load per run), and the network's
        ``sha256`` for :meth:`settings`; classifier-free guidance has none to load."""
        if self.kind == "cfg":
            return self
        network = self.network if self.network is not None else loader(self.name, self.flags)
        return dataclasses.replace(self, network=network, sha256=sha256 or self.sha256)

    def apply(self, net, sampler_fn: Callable | None = None) -> tuple[object, dict]:
        """(the denoiser a sampler runs, keyword arguments for the sampler). Guidance by a second network,
        classifier-free guidance and the classifier's score form are denoisers for every sampler; the
        classifier's upstream form is the base model plus guided-diffusion's ``cond_fn``, for a sampler
        that takes one (``sampler_fn``'s signature says)."""
        if self.kind == "cfg":
            if not int(getattr(net, "label_dim", 0)):
                raise SamplerkitError("cfg needs a class-conditional model with a null label; this one is "
                                      "unconditional")
            return ClassifierFree(net, self.scale, self.form, self.interval), {}
        if self.network is None:
            raise SamplerkitError(f"the guidance network {self.name} is not loaded; call Guidance.load first")
        if self.kind == "guided":
            return Guided(net, self.network, self.scale, self.interval), {}
        guided = ClassifierGuided(net, self.network, self.scale, self.form)
        if self.form == "score":
            return guided, {}
        if sampler_fn is None or "cond_fn" not in inspect.signature(sampler_fn).parameters:
            raise SamplerkitError(_UPSTREAM_ONLY)
        base, cond_fn = guided.split_guidance()
        return base, {"cond_fn": cond_fn}

    @property
    def label_dim(self) -> int | None:
        """The classes the guided denoiser asks labels for: the classifier's; None (the model's) otherwise."""
        return int(self.network.num_classes) if self.kind == "classifier" else None

    def settings(self, sha256: str | None = None) -> dict:
        """What a manifest (and a sweep row) records of this guidance; ``sha256``: the guiding network's."""
        interval = list(self.interval) if self.interval is not None else None
        sha256 = sha256 or self.sha256
        if self.kind == "guided":
            return {"guide_model": self.name, "guide_model_sha256": sha256 or None,
                    "guidance_weight": float(self.scale), "guidance_interval": interval}
        if self.kind == "cfg":
            return {"cfg": float(self.scale), "cfg_form": self.form, "guidance_interval": interval}
        return {"classifier": self.name, "classifier_sha256": sha256 or None, "classifier_flags": dict(self.flags),
                "classifier_scale": float(self.scale), "guidance_form": self.form}

    def label(self) -> str:
        """How a table names it: 'NAME scale S' (+ ' upstream'); 'guided by NAME w W'; 'cfg W' (+ form);
        an interval as ' in (LO, HI]'."""
        where = f" in ({self.interval[0]:g}, {self.interval[1]:g}]" if self.interval is not None else ""
        if self.kind == "guided":
            return f"guided by {self.name} w {self.scale:g}{where}"
        if self.kind == "cfg":
            return f"cfg {self.scale:g}" + (" upstream" if self.form == "upstream" else "") + where
        return f"{self.name} scale {self.scale:g}" + (" upstream" if self.form == "upstream" else "")


def _unused(owner: str, given, **options) -> None:
    """Options of a guidance kind that is not chosen are an error naming what they need."""
    if given is not None:
        return
    named = [n for n, v in options.items() if v is not None and v != {}]
    if named:
        what = {"classifier": "a classifier to guide with", "guide_model": "a guide_model",
                "cfg": "cfg", "interval": "cfg or guide_model"}[owner]
        raise SamplerkitError(f"{', '.join(named)} need(s) {what}")


def _interval_option(value) -> tuple[float, float]:
    """'LO,HI' or a pair -> (sigma_lo, sigma_hi) with 0 <= sigma_lo < sigma_hi."""
    parts = [v for v in value.split(",")] if isinstance(value, str) else value
    try:
        lo, hi = (float(v) for v in parts)
    except (TypeError, ValueError):
        raise SamplerkitError(f"bad guidance_interval {value!r}; use LO,HI like 0.28,2.9") from None
    if not (lo >= 0 and hi > lo):
        raise SamplerkitError(f"guidance_interval (LO, HI] must have 0 <= LO < HI, got ({lo:g}, {hi:g}]")
    return lo, hi


def _scales(text, name: str = "classifier_scale") -> list[float]:
    """'0.5,1,4' -> [0.5, 1.0, 4.0] (default [1.0]); each must be a finite number >= 0."""
    if text is None:
        return [1.0]
    if isinstance(text, int | float):
        text = repr(float(text))
    try:
        scales = list(dict.fromkeys(float(v) for v in str(text).split(",") if v.strip()))
    except ValueError:
        raise SamplerkitError(f"bad {name} {text!r}; use a number like 1.0 (sweep: 0.5,1,4)") from None
    if not scales or any(not (v >= 0 and v != float("inf")) for v in scales):
        raise SamplerkitError(f"{name} must be >= 0 and finite, got {text}" if scales and min(scales) >= 0
                              else f"{name} must be >= 0, got {text}")
    return scales


# ---------------------------------------------------------------------------------------------
# guidance by a second network: autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a
# Bad Version of Itself"), classifier-free guidance with a separate unconditional network (Ho &
# Salimans 2022; EDM2's guided presets), and the guidance interval (Kynkäänniemi et al. 2024)


class Guided(DenoiserWrapper):
    """D_w(x; sigma) = D_g(x; sigma) + w (D(x; sigma) - D_g(x; sigma)), computed as EDM2's
    ``generate_images.py`` does, ``D_g.lerp(D, w)`` in float64 (Karras et al. 2024 (autoguidance), Eq. 1).

    ``net`` is the main model, ``gnet`` the guiding one: a smaller and/or shorter-trained version
    (autoguidance) or an unconditional model (classifier-free guidance). gnet gets the class labels
    only when it is conditional. w = 1 returns net's output untouched and never calls gnet.

    ``interval=(sigma_lo, sigma_hi)``: guide only the evaluations whose sigma lies in (sigma_lo, sigma_hi]
    (Kynkäänniemi et al. 2024, Eq. 6); the others return D alone and skip gnet. The rule is per
    denoiser evaluation, as the paper defines it. The reference code (kynkaat/guidance-interval,
    ``--guidance_interval="[i0, i1]"``) decides per Heun *step index* instead: step i guides both its
    evaluations (at sigma_i and at sigma_{i+1}) when i0 <= i <= i1. With sigma_hi = sigma_{i0} and
    sigma_lo in [sigma_{i1+1}, sigma_{i1}), the two rules differ exactly at the edges: the 2nd-order
    evaluation of step i0 - 1 (at sigma_{i0}) is guided here and not there, that of step i1 (at
    sigma_{i1+1}) there and not here.

    Attributes: ``gnet``, ``weight``, ``interval`` and :meth:`describe` for manifests;
    ``evaluations`` counts the calls of each network (``{"net": n, "gnet": m}``).
    """

    def __init__(self, net, gnet, weight: float, interval=None):
        super().__init__(net)
        self.weight = _guidance_weight(weight)
        self.interval = _guidance_interval(interval)
        _check_guiding_network(net, gnet)
        self.gnet = gnet
        self.evaluations = {"net": 0, "gnet": 0}

    def guides(self, sigma, x: torch.Tensor) -> torch.Tensor:
        """bool [B] (or [1]): which evaluations at ``sigma`` are guided."""
        return in_interval(torch.as_tensor(sigma, dtype=torch.float64, device=x.device).flatten(), self.interval)

    def denoise_with_variance(self, x, sigma, class_labels=None):
        D, v = super().denoise_with_variance(x, sigma, class_labels)
        self.evaluations["net"] += 1
        if self.weight == 1:
            return D, v
        mask = self.guides(sigma, x)
        if not bool(mask.any()):
            return D, v
        g_labels = class_labels if int(getattr(self.gnet, "label_dim", 0)) else None
        D_g = self.gnet(x, sigma, g_labels)
        self.evaluations["gnet"] += 1
        guided = D_g.to(torch.float64).lerp(D.to(torch.float64), self.weight)
        if bool(mask.all()):
            return guided, v
        return torch.where(mask.reshape(-1, *[1] * (x.ndim - 1)), guided, D.to(torch.float64)), v

    def describe(self) -> dict:
        """What a manifest records: the weight, the interval and both networks."""
        return {"weight": self.weight, "interval": list(self.interval) if self.interval else None,
                "net": network_identity(self.inner), "gnet": network_identity(self.gnet)}


def guided(net, gnet, weight: float, interval=None) -> Guided:
    """``net`` guided by ``gnet`` at weight w >= 0: D_gnet + w (D_net - D_gnet), EDM2's lerp form
    (see :class:`Guided`); ``interval=(sigma_lo, sigma_hi)`` limits it to sigma in (sigma_lo, sigma_hi].
    A denoiser: runs on every sampler and composes with Epsilon Scaling and classifier guidance."""
    return Guided(net, gnet, weight, interval)


def network_identity(net) -> dict:
    """The names a network carries (class, and ``name``/``source``/``sha256``/``path`` where set)."""
    out = {"class": type(net).__name__}
    for key in ("name", "source", "sha256", "path"):
        value = getattr(net, key, None)
        if isinstance(value, (str, int, float)):
            out[key] = value
    return out


def _guidance_weight(weight) -> float:
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        raise SamplerkitError(f"the guidance weight must be a number >= 0, got {weight!r}") from None
    if not (weight >= 0 and weight != float("inf")):
        raise SamplerkitError(f"the guidance weight must be a finite number >= 0, got {weight}")
    return weight


def _guidance_interval(interval) -> tuple[float, float] | None:
    """``interval`` as (sigma_lo, sigma_hi) with 0 <= sigma_lo < sigma_hi, or None (guide everywhere)."""
    if interval is None:
        return None
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise SamplerkitError(f"the guidance interval must be a pair (sigma_lo, sigma_hi), got {interval!r}") from None
    if not (lo >= 0 and hi > lo):
        raise SamplerkitError(f"the guidance interval (sigma_lo, sigma_hi] must have 0 <= sigma_lo < sigma_hi, "
                              f"got ({lo}, {hi}]")
    return lo, hi


def in_interval(sigma: torch.Tensor, interval) -> torch.Tensor:
    """Which sigmas lie in (sigma_lo, sigma_hi] (Kynkäänniemi et al. 2024); all when ``interval`` is None."""
    if interval is None:
        return torch.ones_like(sigma, dtype=torch.bool)
    lo, hi = interval
    return (sigma > lo) & (sigma <= hi)


def _check_guiding_network(net, gnet) -> None:
    for key in ("img_resolution", "img_channels"):
        a, b = int(getattr(net, key, 0)), int(getattr(gnet, key, 0))
        if a and b and a != b:
            raise SamplerkitError(f"the guiding network has {key} {b} but the model has {a}; "
                                  "guide with a network of the same resolution and channels")
    a, b = int(getattr(net, "label_dim", 0)), int(getattr(gnet, "label_dim", 0))
    if b not in (0, a):
        raise SamplerkitError(f"the guiding network has label_dim {b} but the model has {a}; "
                              "guide with a network of the same classes or an unconditional one")


# ---------------------------------------------------------------------------------------------
# classifier-free guidance (Ho & Salimans 2022) with an optional guidance interval


CFG_FORMS = ("score", "upstream")
UPSTREAM_CFG_CHANNELS = 3  # DiT's / SiT's forward_with_cfg guide channels 0-2 only ("for exact reproducibility")


def null_label(net) -> int | None:
    """The label that runs ``net`` unconditionally (DiT/SiT: ``num_classes``), looked up through its
    wrappers (remedies, precision); None when the model has none."""
    while net is not None:
        label = getattr(net, "null_label", None)
        if label is not None:
            return int(label)
        net = net.inner if isinstance(net, DenoiserWrapper) else None
    return None


class ClassifierFree(DenoiserWrapper):
    """D_w(x; sigma) = D(x; sigma, null) + w (D(x; sigma, y) - D(x; sigma, null)) (Ho & Salimans 2022,
    Eq. 6 in eps; the same in D, since D = c_skip x + c_out F is affine in the network output with the
    same x in both passes). Both passes run as one doubled batch [x, x] with labels [y, null], as DiT does.

    ``form="score"`` guides every channel; ``form="upstream"`` only channels 0-2, the rest taken from
    the conditional pass (DiT's / SiT's ``forward_with_cfg``, on eps / velocity, which is the same rule
    on D). A learned variance v (Nichol & Dhariwal 2021, Eq. 15) always comes from the conditional pass
    (DiT's forward_with_cfg keeps the conditional half's variance channels). Only evaluations whose sigma
    lies in ``interval`` = (sigma_lo, sigma_hi] are guided (Kynkäänniemi et al. 2024); the others, and
    every evaluation when w = 1, are one conditional pass, bit for bit the unguided model.
    """

    def __init__(self, net, weight: float, form: str = "score", interval=None):
        super().__init__(net)
        if form not in CFG_FORMS:
            raise SamplerkitError(f"unknown guidance form {form!r}; use score or upstream")
        weight = _guidance_weight(weight)
        if not int(getattr(net, "label_dim", 0)):
            raise SamplerkitError("classifier-free guidance needs a class-conditional model; this one is unconditional")
        null = null_label(net)
        if null is None:
            raise SamplerkitError("this model has no null label (it was not trained with label dropout), so "
                                  "classifier-free guidance cannot run it unconditionally")
        self.weight, self.form, self.interval = weight, form, _guidance_interval(interval)
        self.null_label = null

    def denoise_with_variance(self, x, sigma, class_labels=None):
        inner = self.inner
        sigma = _per_sample(sigma, x).flatten()
        guide = in_interval(sigma, self.interval)
        if self.weight == 1 or not bool(guide.any()):
            return inner.denoise_with_variance(x, sigma, class_labels)
        B = x.shape[0]
        y = self.prepare_labels(class_labels, B, x.device).argmax(dim=1)  # [0, num_classes): never the null label
        both, v = inner.denoise_with_variance(torch.cat([x, x]), torch.cat([sigma, sigma]),
                                              torch.cat([y, torch.full_like(y, self.null_label)]))
        cond, uncond = both[:B].to(torch.float64), both[B:].to(torch.float64)
        channels = UPSTREAM_CFG_CHANNELS if self.form == "upstream" else cond.shape[1]
        guided = cond.clone()
        guided[:, :channels] = uncond[:, :channels] + self.weight * (cond[:, :channels] - uncond[:, :channels])
        mask = guide.reshape(-1, *([1] * (x.ndim - 1)))
        return torch.where(mask, guided, cond), (v[:B] if v is not None else None)


def cfg(net, weight: float, form: str = "score", interval=None) -> ClassifierFree:
    """Classifier-free guidance of ``net`` (a model with a null label: DiT, SiT) at weight w >= 0:
    a denoiser for every sampler (see :class:`ClassifierFree`); w = 1 is the conditional model.
    ``form``: "score" (every channel) or "upstream" (DiT's / SiT's forward_with_cfg: channels 0-2);
    ``interval``: (sigma_lo, sigma_hi], guide only there (Kynkäänniemi et al. 2024)."""
    return ClassifierFree(net, weight, form, interval)
