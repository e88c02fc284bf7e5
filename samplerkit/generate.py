"""From a model, a sampler name and its settings to images: the one code path behind
``samplerkit sample`` and ``samplerkit sweep``.

:func:`make_sampler` resolves a sampler name, a step count and the user's options into a
ready function ``run(latents, class_labels, randn_like) -> x`` plus its NFE and the complete
settings (for manifests and CSV rows). :func:`generate` draws per-seed latents and labels the
way EDM's ``generate.py`` does (one generator per seed: latents first, then labels, then the
sampler's noise), so an image depends only on its seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from . import samplers, schedules
from .denoisers import CallCounter, DenoiserWrapper, training_alpha_bar
from .errors import SamplerkitError
from .guidance import Guidance
from .knobs import Knob
from .remedies import REMEDY_KNOBS, Remedies
from .seeds import StackedRandomGenerator

DISCRETIZATIONS = ("edm", "vp", "ve", "iddpm")

# options of the noise-level grid, with defaults (None = derived from the model); a discrete chain
# also takes a respacing of the model's training timesteps
GRID_OPTIONS: dict[str, object] = {"disc": "edm", "sigma_min": None, "sigma_max": None, "rho": 7.0}
CHAIN_OPTIONS: dict[str, object] = {"respacing": None}
GRID_KNOBS: dict[str, Knob] = {
    "respacing": Knob("Timestep respacing of a discrete model (Nichol & Dhariwal 2021, Sec. 4): 'K', 'ddimK' or "
                      "'10,15,20'.", type=str),
    "disc": Knob("Step discretization (Karras et al. 2022 (EDM), Table 1).", DISCRETIZATIONS),
    "sigma_min": Knob("Lowest noise level of the grid.", type=float),
    "sigma_max": Knob("Highest noise level of the grid.", type=float),
    "rho": Knob("EDM grid exponent rho (Eq. 5), default 7.", type=float),
}


def sampler_options(sampler: str) -> dict[str, object]:
    """Every option ``sampler`` takes, with its default: the grid's, then the sampler's own knobs
    (read from its signature, see :func:`samplerkit.samplers.knobs`)."""
    row = samplers.info(sampler)
    return {**(CHAIN_OPTIONS if row.grid == "chain" else {}), **GRID_OPTIONS, **row.knobs}


# defaults of EDM's ablation sampler per discretization
_DEFAULT_RANGE = {"edm": (0.002, 80.0), "iddpm": (0.002, 81.0), "ve": (0.02, 100.0), "vp": (None, None)}


@dataclass
class PreparedSampler:
    name: str
    steps: int
    nfe: int
    settings: dict
    run: Callable = field(repr=False)
    net: object = field(default=None, repr=False)  # the denoiser it runs (guided, with its remedies)
    grid: torch.Tensor | None = field(default=None, repr=False)  # sigmas, or a chain's timesteps
    requested_sigma_min: float | None = None  # the grid's lowest level as asked, before the model's range
    outside: int = 0  # output values outside [-1, 1] so far (counted by :func:`generate`)
    values: int = 0  # output values so far
    counter: CallCounter | None = field(default=None, repr=False)  # an adaptive solver's network calls
    calls: int = 0  # network calls of the batches :func:`generate` has run (counted for adaptive solvers)
    batches: int = 0

    @property
    def measured_nfe(self) -> float | None:
        """Network evaluations per image, counted, for a solver whose step count error control sets
        (each call evaluates a whole batch, so this is the mean over the batches); None otherwise."""
        return self.calls / self.batches if self.counter is not None and self.batches else None


def sigma_grid(net, steps: int, disc: str = "edm", sigma_min=None, sigma_max=None, rho: float = 7.0) -> torch.Tensor:
    """The sigma grid of a discretization, its range clamped to what the model supports (as EDM)."""
    if disc not in DISCRETIZATIONS:
        raise SamplerkitError(f"unknown discretization {disc!r}; use one of {', '.join(DISCRETIZATIONS)}")
    lo, hi = _DEFAULT_RANGE[disc]
    lo = sigma_min if sigma_min is not None else lo
    hi = sigma_max if sigma_max is not None else hi
    if lo is not None and hi is not None and lo >= hi:
        raise SamplerkitError(f"need sigma_min < sigma_max, got {lo} >= {hi}")
    if (lo is not None and lo <= 0) or (hi is not None and hi <= 0):
        raise SamplerkitError("sigma_min and sigma_max must be positive")
    if disc == "edm":  # the grid an integer step count means everywhere
        return schedules.for_model(steps, net, lo, hi, rho)
    if lo is not None:
        lo = max(lo, float(net.sigma_min))
    if hi is not None:
        hi = min(hi, float(net.sigma_max))
    if disc == "ve":
        return schedules.ve(steps, lo, hi)
    if disc == "vp":
        return schedules.vp(steps, lo, hi)
    return schedules.iddpm(steps, net=net, sigma_min=lo, sigma_max=hi)


def make_sampler(net, sampler: str, steps: int, *, remedies: Remedies | None = None,
                 guidance: Guidance | None = None, **knobs) -> PreparedSampler:
    """Resolve ``sampler`` with ``steps`` and its knobs into a runnable :class:`PreparedSampler`.

    Unknown knobs for the chosen sampler are an error. For ``ddim``/``ancestral`` on a
    discrete-time model the chain is ``respace(T, respacing or str(steps))``; on a continuous
    model it is the sigma grid of ``disc``.

    ``remedies``: the exposure-bias remedies (:class:`samplerkit.remedies.Remedies`: Epsilon Scaling,
    lambda = b + k t with t the step index on this run's grid, Ning et al. 2024 (ES); the Time-Shift
    sampler of ddim/ancestral, Li et al. 2024 (TS)); their option names (``eps_scaler``,
    ``eps_scaler_slope``, ``time_shift``, ``ts_window``, ``ts_cutoff``, ``ts_mode``) are accepted as
    knobs too. The settings record them when given. ``guidance``: a loaded
    :class:`samplerkit.guidance.Guidance`, applied to ``net`` (the settings do not record it: a run
    records it beside them).
    """
    remedies = _remedies(remedies, {k: knobs.pop(k) for k in REMEDY_KNOBS if k in knobs})
    row = samplers.info(sampler)
    schedules._check_steps(steps)
    opts = _options(net, sampler, knobs)
    grid, steps, opts = _grid(net, sampler, steps, opts, knobs)
    kwargs = {k: v for k, v in opts.items() if k in row.knobs}
    if guidance is not None:
        net, extra = guidance.apply(net, row.fn)
        kwargs.update(extra)
    net, extra = remedies.apply(net, grid, sampler, chain=row.grid == "chain")
    kwargs.update(extra)
    counter = CallCounter(net) if row.adaptive else None
    net = counter if counter is not None else net
    fn = row.fn
    if row.stochastic:
        run = lambda lat, labels, randn_like: fn(net, lat, grid, labels, randn_like=randn_like, **kwargs)  # noqa: E731
    else:
        run = lambda lat, labels, randn_like: fn(net, lat, grid, labels, **kwargs)  # noqa: E731
    settings = {"sampler": sampler, "steps": steps, **opts, **remedies.settings()}
    asked = knobs.get("sigma_min") if knobs.get("sigma_min") is not None else _DEFAULT_RANGE.get(opts.get("disc"),
                                                                                                 (None,))[0]
    return PreparedSampler(sampler, steps, row.nfe(steps), settings, run, net, grid, asked, counter=counter)


def _remedies(remedies: Remedies | None, options: dict) -> Remedies:
    """The run's remedies: the object, or one made from its option names (not both)."""
    if any(v is not None for v in options.values()):
        if remedies is not None:
            raise SamplerkitError("give remedies or their options (eps_scaler, time_shift, ...), not both")
        return Remedies.from_options(**options)
    return remedies or Remedies()


def check_settings(sampler: str, steps: int, knobs: dict, remedies: Remedies | None = None) -> Remedies:
    """What :func:`make_sampler` checks without a network, checked before any model loads: the sampler
    name, the step count, each knob (does the sampler take it, is it one of its choices) and the remedies
    (returned). The checks that need the network (a discrete chain, a variance the model has) stay in
    :func:`make_sampler`."""
    remedies = _remedies(remedies, {k: knobs[k] for k in REMEDY_KNOBS if k in knobs})
    samplers.info(sampler)
    schedules._check_steps(steps)
    _checked_options(sampler, {k: v for k, v in knobs.items() if k not in REMEDY_KNOBS})
    return remedies


def _checked_options(sampler: str, knobs: dict) -> dict:
    """The user's options over the sampler's defaults, each checked once (no network needed)."""
    row = samplers.info(sampler)
    defaults = sampler_options(sampler)
    unknown = sorted(k for k, v in knobs.items() if k not in defaults and v is not None)
    if unknown:
        raise SamplerkitError(f"option(s) {', '.join(unknown)} do not apply to the {sampler} sampler "
                              f"(it takes: {', '.join(defaults)})", names=(*unknown, *defaults))
    opts = {k: (knobs[k] if knobs.get(k) is not None else v) for k, v in defaults.items()}
    if opts["rho"] <= 0:
        raise SamplerkitError(f"rho must be > 0, got {opts['rho']}")
    samplers.check_choices(sampler, {k: v for k, v in opts.items() if k in row.knobs})
    return opts


def _options(net, sampler: str, knobs: dict) -> dict:
    """The sampler's options as the run uses them: the user's over the defaults, each checked once."""
    row = samplers.info(sampler)
    opts = _checked_options(sampler, knobs)
    return row.resolve(net, opts) if row.resolve is not None else opts  # so that a run fails before it starts


def _grid(net, sampler: str, steps: int, opts: dict, knobs: dict):
    """(the grid the sampler runs on, its step count, the options as recorded)."""
    alpha_bar = training_alpha_bar(net)
    if samplers.info(sampler).grid == "chain" and alpha_bar is not None:
        given = [k for k in GRID_OPTIONS if knobs.get(k) is not None]
        if given:  # the chain is the model's own training timesteps: a sigma grid knob would be ignored
            raise SamplerkitError(f"{', '.join(given)} do(es) not apply to {sampler} on a discrete-time model, "
                                  "whose chain is its own respaced training timesteps; use steps or respacing")
        grid = schedules.respace(alpha_bar.numel(), opts["respacing"] or str(steps))
        steps = grid.numel()
        for k in GRID_OPTIONS:
            opts.pop(k)
        opts["respacing"] = opts["respacing"] or str(steps)
        return grid, steps, opts
    if opts.get("respacing"):
        raise SamplerkitError("respacing needs a discrete-time model (ADM/iDDPM); use disc for this model")
    opts.pop("respacing", None)
    grid = sigma_grid(net, steps, opts["disc"], opts["sigma_min"], opts["sigma_max"], opts["rho"])
    opts["sigma_min"], opts["sigma_max"] = float(grid[-2]), float(grid[0])  # as used, after clamping
    return grid, steps, opts


def resolve_labels(net, class_labels, n: int) -> str | int | list[int] | None:
    """Check a label request against the model: None / 'random' / an int / a list of n ints."""
    if class_labels is None or class_labels == "random":
        if class_labels == "random" and net.label_dim == 0:
            raise SamplerkitError("class_labels given but the model is unconditional")
        return "random" if net.label_dim else None
    if net.label_dim == 0:
        raise SamplerkitError("class_labels given but the model is unconditional")
    labels = [class_labels] if isinstance(class_labels, int) else list(class_labels)
    if any(not 0 <= c < net.label_dim for c in labels):
        raise SamplerkitError(f"class labels must lie in [0, {net.label_dim - 1}]")
    if len(labels) not in (1, n):
        raise SamplerkitError(f"give one class label or one per seed ({n}), got {len(labels)}")
    return labels[0] if len(labels) == 1 else labels


def draw(net, seeds: list[int], labels, device) -> tuple[torch.Tensor, torch.Tensor | None, StackedRandomGenerator]:
    """Per-seed latents [B, C, R, R] and integer labels (EDM's order: latents, then labels)."""
    rnd = StackedRandomGenerator(device, seeds)
    latents = rnd.randn([len(seeds), net.img_channels, net.img_resolution, net.img_resolution])
    if net.label_dim == 0:
        return latents, None, rnd
    if labels == "random":
        y = rnd.randint(net.label_dim, size=[len(seeds)])
    elif isinstance(labels, int):
        y = torch.full((len(seeds),), labels, dtype=torch.int64, device=device)
    else:
        y = torch.as_tensor(labels, dtype=torch.int64, device=device)
    return latents, y, rnd


def generate(
    net, prepared: PreparedSampler, seeds: list[int], batch_size: int = 64, class_labels=None, device="cpu",
    label_of_seed: dict | None = None,
) -> Iterator[tuple[list[int], torch.Tensor, np.ndarray | None]]:
    """Yield (seeds, images in [-1, 1] float64 [B, C, R, R], labels or None) batch by batch.

    ``class_labels``: None/'random' (random per seed), an int, or ``label_of_seed`` mapping each
    seed to its label (a list given per seed).
    """
    if batch_size < 1:
        raise SamplerkitError(f"batch size must be >= 1, got {batch_size}")
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start : start + batch_size]
        labels = [label_of_seed[s] for s in chunk] if label_of_seed is not None else class_labels
        latents, y, rnd = draw(net, chunk, labels, device)
        calls = prepared.counter.calls if prepared.counter is not None else 0
        with torch.no_grad():
            x = prepared.run(latents, y, rnd.randn_like)
        if prepared.counter is not None:
            prepared.calls, prepared.batches = prepared.calls + prepared.counter.calls - calls, prepared.batches + 1
        if not torch.isfinite(x).all():
            bad = [chunk[i] for i in range(len(chunk)) if not torch.isfinite(x[i]).all()]
            raise SamplerkitError(f"non-finite values in the sampler output for seed(s) {bad[:5]}")
        prepared.outside += int((x.abs() > 1).sum())
        prepared.values += x.numel()
        yield chunk, x, (y.cpu().numpy() if y is not None else None)


class WithPrecision(DenoiserWrapper):
    """A denoiser whose network runs under ``torch.autocast`` in a lower precision (float16 /
    bfloat16); the sampler's arithmetic is untouched (float64)."""

    def __init__(self, net, dtype: torch.dtype, device_type: str):
        super().__init__(net)
        self.dtype, self.device_type = dtype, device_type

    def denoise_with_variance(self, x, sigma, class_labels=None):
        with torch.autocast(self.device_type, dtype=self.dtype):
            D, v = super().denoise_with_variance(x, sigma, class_labels)
        return D.to(torch.float64), (v.to(torch.float64) if v is not None else None)


def with_precision(net, dtype: str, device: torch.device):
    """``net`` unchanged for float32, else wrapped to run its network in float16/bfloat16."""
    dtypes = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise SamplerkitError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
    return net if dtypes[dtype] is None else WithPrecision(net, dtypes[dtype], torch.device(device).type)


# ---------------------------------------------------------------------------------------------
# notes for the person running a sampler: legal settings whose result is rarely what they meant

OUTSIDE_LIMIT = 0.01  # a note when more than 1 % of the output values lie outside [-1, 1]
SNAP_TOLERANCE = 0.01  # a note when the trained levels move a grid level by more than 1 % (relative)


def clip_note(net, prepared: PreparedSampler, recommended: dict | None = None) -> str | None:
    """One line when a sigma-space solver runs unclipped on a discrete-time model whose own
    sampler clips x0 to [-1, 1] (guided-/improved-diffusion's ddim and ancestral do, so their
    models are trained for it; ``recommended``: the model's recommended settings, whose
    ``clip_denoised=False`` (DiT) says the model does not need it); else None."""
    row, recommended = samplers.info(prepared.name), recommended or {}
    if row.grid == "chain" or prepared.settings.get("clip_denoised", True) or training_alpha_bar(net) is None:
        return None
    own = recommended.get("sampler")
    if recommended.get("clip_denoised") is False or (own and samplers.info(own).grid != "chain"):
        return None
    return (f"note: {prepared.name} runs unclipped (the default off ddim/ancestral), but this model's own sampler "
            "clips x0 to [-1, 1] and its images may come out as noise; add --clip (clip_denoised=True)")


def outside_note(prepared: PreparedSampler, limit: float = OUTSIDE_LIMIT) -> str | None:
    """One line when more than ``limit`` of the values :func:`generate` has produced with ``prepared``
    lie outside [-1, 1] (they are clamped when written); else None."""
    if not prepared.values or prepared.outside / prepared.values <= limit:
        return None
    share = 100 * prepared.outside / prepared.values
    clip = "" if prepared.settings.get("clip_denoised", True) else "; try --clip (clip_denoised=True)"
    return (f"note: {share:.1f} % of the output values lie outside [-1, 1] (more than {100 * limit:g} %) and are "
            f"clamped when saved: the images may be saturated or noise{clip}")


def snap_note(net, prepared: PreparedSampler, tolerance: float = SNAP_TOLERANCE) -> str | None:
    """One line when the sigma grid a solver runs on moves by more than ``tolerance`` (relative)
    on the model's trained levels: the lowest level asked for below the model's range, or a level
    rounded to the nearest trained one (``net.round_sigma``); else None. A chain of trained
    timesteps (ddim/ancestral on a discrete model) is not snapped."""
    grid = prepared.grid
    if grid is None or (samplers.info(prepared.name).grid == "chain" and training_alpha_bar(net) is not None):
        return None
    head = grid[:-1].to(torch.float64)
    snapped = torch.as_tensor(net.round_sigma(head), dtype=torch.float64).reshape(-1).cpu()
    asked = prepared.requested_sigma_min
    lowest = float(head[-1]) if asked is None or asked >= float(head[-1]) * (1 - tolerance) else asked
    change = (snapped - head.cpu()).abs() / head.cpu()
    if abs(float(snapped[-1]) - lowest) <= tolerance * lowest and float(change.max()) <= tolerance:
        return None
    i = int(change.argmax())
    worst = f", e.g. {float(head[i]):.4g} -> {float(snapped[i]):.4g}" if float(change.max()) > tolerance else ""
    return (f"note: the sigma grid is snapped to the model's trained levels: sigma_min {lowest:.4g} -> "
            f"{float(snapped[-1]):.4g}{worst} (the model is evaluated only at its trained noise levels)")


def run_notes(net, prepared: PreparedSampler, recommended: dict | None = None) -> list[str]:
    """The notes a run prints before it starts (:func:`clip_note`, :func:`snap_note`)."""
    return [n for n in (clip_note(net, prepared, recommended), snap_note(net, prepared)) if n]
