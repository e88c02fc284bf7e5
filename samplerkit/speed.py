"""How a network executes: attention arithmetic, memory format, autocast dtype, ``torch.compile``.

A :class:`Policy` changes how the network computes, never what: every variant evaluates the same
function and differs from upstream only by floating-point rounding. Two named policies:

* ``exact`` -- the upstream arithmetic (einsum attention with a float32 softmax, contiguous
  tensors, float32, eager), which reproduces guided-diffusion / improved-diffusion / EDM bit for bit;
* ``fast`` -- the fastest variant *measured on this machine* at first use (:func:`autotune`: a few
  forward passes per variant, interleaved, at the run's batch size) among those whose outputs stay
  within :data:`TOLERANCE` of ``exact``; the choice is cached on disk per network + batch + device,
  so later runs start at once and make the same choice.

``fast`` is the default of ``samplerkit sample``, ``sweep``, ``exposure-bias`` and ``fid``: a variant
within the tolerance moves a sample by far less than one 8-bit level (:data:`SAMPLE_TOLERANCE`), so
the images and metrics are those of ``exact`` while the run takes less time. ``retrain`` defaults to
``exact`` (training numerics are the experiment there). The environment variable
``SAMPLERKIT_SPEED`` changes the default of every command; the manifest records the policy used.

An explicit policy is written ``attention=sdpa,memory_format=channels_last,autocast=bfloat16,compile=on``
(any subset; the rest stay exact). ``fast`` adds ``compile`` only when the run is long enough to pay for
it (:func:`consider_compile`): told how many network calls the run makes, it predicts the run's eager
seconds and, when compiling (:data:`COMPILE_GUESS_SECONDS` until measured) would cost at most
:data:`COMPILE_SHARE` of them, compiles the eager choice at the run's batch and keeps it if it beats the
eager choice by :data:`MIN_GAIN` per call. Measured on a 2-core CPU at one thread
(``benchmarks/bench_compile.py``, figures in ``benchmarks/README.md``) compilation gains 7 % over the best
eager variant on DiT, 2 % on the ADM UNet and nothing on the EDM/EDM2 UNets, for 20–75 CPU seconds,
so there it is kept for long DiT runs only. Kernels are cached under the samplerkit cache dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from .denoisers import Denoiser
from .download import default_cache_dir
from .errors import SamplerkitError
from .generate import WithPrecision
from .output import atomic_json

ENV_SPEED = "SAMPLERKIT_SPEED"
MODES = ("exact", "fast")
ATTENTION = ("einsum", "sdpa")
MEMORY_FORMATS = ("contiguous", "channels_last")
AUTOCAST = ("none", "bfloat16", "float16")

TOLERANCE = 1e-3
"""Largest |D_variant(x; sigma) - D_exact(x; sigma)| a ``fast`` variant may show on the autotune inputs,
scaled by max(1, sigma): data units ([-1, 1] images) at sigma <= 1, noise (epsilon) units above.
One eighth of an 8-bit level (2/255); float32 reorderings (sdpa, channels_last) stay near 1e-6,
bfloat16/float16 autocast is near 1e-2 and is refused."""

SAMPLE_TOLERANCE = 2 / 255
"""What the tolerance means for images: a fixed seed's sample under ``fast`` lies within one 8-bit
level of its ``exact`` sample at every pixel (``tests/test_speed.py`` checks it on ADM, iDDPM and EDM
networks)."""

MIN_GAIN = 1.05  # a variant must beat exact by 5 % on the autotune passes, else exact (timing noise)
CPU_TUNE_BATCH = 8  # the autotune batch on a CPU is min(batch, 8), to keep it to a few seconds per variant

COMPILE_SHARE = 0.05
"""``fast`` tries ``torch.compile`` in a run only when compiling is expected to cost at most this share of
the run's predicted eager seconds: a trial that loses slows the run by about 5 % at most."""

COMPILE_GUESS_SECONDS = 75.0
"""The compile seconds expected before the first trial on a network (the largest of
``bench_compile.py``'s UNet/DiT figures on one CPU thread); later runs use the trial's measurement."""


@dataclass(frozen=True)
class Policy:
    """One way of executing a network; the defaults are ``exact``."""

    attention: str = "einsum"
    memory_format: str = "contiguous"
    autocast: str = "none"
    compile: bool = False

    def __post_init__(self):
        for name, value, allowed in (("attention", self.attention, ATTENTION),
                                     ("memory_format", self.memory_format, MEMORY_FORMATS),
                                     ("autocast", self.autocast, AUTOCAST)):
            if value not in allowed:
                raise SamplerkitError(f"bad speed setting {name}={value!r}; use one of {', '.join(allowed)}")

    @property
    def exact(self) -> bool:
        return self == EXACT

    def describe(self) -> str:
        """'exact', or the settings that differ from it ('attention=sdpa,memory_format=channels_last')."""
        changed = [f"{k}={_text(v)}" for k, v in asdict(self).items() if v != getattr(EXACT, k)]
        return ",".join(changed) or "exact"


EXACT = Policy()


def _text(value) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def default_mode(command_default: str = "fast") -> str:
    """``$SAMPLERKIT_SPEED`` when set, else the command's own default."""
    return os.environ.get(ENV_SPEED) or command_default


def parse(text: str | None) -> str | Policy:
    """'exact' / 'fast' (returned as is) or an explicit ``key=value,...`` policy."""
    text = (text or "exact").strip()
    if text in MODES:
        return text
    keys = {"attention": "attention", "memory_format": "memory_format", "memory": "memory_format",
            "autocast": "autocast", "compile": "compile"}
    values: dict = {}
    for item in text.split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or key not in keys:
            raise SamplerkitError(f"bad speed {text!r}; use exact, fast or settings like "
                                  "attention=sdpa,memory_format=channels_last,autocast=bfloat16,compile=on")
        if keys[key] == "compile":
            if value.lower() not in ("on", "off", "true", "false", "1", "0"):
                raise SamplerkitError(f"bad speed compile={value!r}; use on or off")
            values["compile"] = value.lower() in ("on", "true", "1")
        else:
            values[keys[key]] = value
    return Policy(**values)


# ---------------------------------------------------------------------------------------------
# applying a policy to a network


class Network(nn.Module):
    """What a network family declares to this module: the network itself is the unit ``torch.compile``
    wraps, and :meth:`attention_blocks` are its modules whose ``backend`` attribute selects the
    attention arithmetic ("einsum", the upstream one, or "sdpa"). The ADM/iDDPM and EDM UNets derive
    from it (``samplerkit.adapters``)."""

    def attention_blocks(self) -> list[nn.Module]:
        return []


def _attention_modules(net: nn.Module) -> list[nn.Module]:
    """The attention blocks of every :class:`Network` inside ``net``."""
    return [block for m in net.modules() if isinstance(m, Network) for block in m.attention_blocks()]


def _networks(net: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, network) for each :class:`Network` inside ``net`` (the units ``torch.compile`` wraps)."""
    for parent in net.modules():
        for name, child in parent.named_children():
            inner = getattr(child, "_orig_mod", child)
            if isinstance(inner, Network):
                yield parent, name, child


def has_convolutions(net: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) or getattr(m, "weight", None) is not None and m.weight.ndim == 4
               for m in net.modules())


def apply(net: nn.Module, policy: Policy, device_type: str | None = None) -> nn.Module:
    """Run ``net`` (a denoiser, a UNet, any module holding ADM/iDDPM/EDM networks) under ``policy``.

    Attention backend, memory format and compilation change ``net``'s modules in place (applying
    :data:`EXACT` undoes them); autocast returns a wrapper (:class:`~samplerkit.generate.WithPrecision`
    for a denoiser, :class:`Autocast` for another module). Returns the module to call.
    """
    if policy.attention not in ATTENTION:
        raise SamplerkitError(f"attention backend must be one of {', '.join(ATTENTION)}, got {policy.attention!r}")
    for m in _attention_modules(net):
        m.backend = policy.attention
    fmt = torch.channels_last if policy.memory_format == "channels_last" else torch.contiguous_format
    net.to(memory_format=fmt)
    for parent, name, child in list(_networks(net)):
        compiled = hasattr(child, "_orig_mod")
        if policy.compile and not compiled:
            _inductor_cache()
            setattr(parent, name, torch.compile(child))
        elif compiled and not policy.compile:
            setattr(parent, name, child._orig_mod)
    if policy.autocast == "none":
        return net
    dtype = getattr(torch, policy.autocast)
    if device_type is None:
        device_type = next((p.device.type for p in net.parameters()), "cpu")
    return WithPrecision(net, dtype, device_type) if isinstance(net, Denoiser) else Autocast(net, dtype, device_type)


class Autocast(nn.Module):
    """``module`` called under ``torch.autocast(device_type, dtype)``."""

    def __init__(self, module: nn.Module, dtype: torch.dtype, device_type: str):
        super().__init__()
        self.module, self.dtype, self.device_type = module, dtype, device_type

    def forward(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.module(*args, **kwargs)


def _inductor_cache() -> None:
    """Keep torch.compile's kernel cache in the samplerkit cache dir (unless the user set one)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(default_cache_dir() / "inductor"))


# ---------------------------------------------------------------------------------------------
# the machine


def device_name(device: torch.device | str) -> str:
    """The GPU's name, or the CPU model as ``lscpu`` names it ("Model name")."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine(device: torch.device | str = "cpu") -> dict:
    """What a timing depends on: device kind and name, torch threads, CPU count, torch version."""
    device = torch.device(device)
    return {"device": device.type, "device_name": device_name(device), "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__}


# ---------------------------------------------------------------------------------------------
# the autotune


@dataclass
class Tuning:
    """The outcome of :func:`autotune`: the policy chosen and the measurements behind it."""

    policy: Policy
    table: list[dict] = field(default_factory=list)  # per variant: policy, seconds, max_error, within
    key: str = ""
    cached: bool = False
    compile: dict | None = None  # what consider_compile found, when the run's length was known

    def record(self) -> dict:
        """Plain JSON for a manifest: the chosen policy, the variant table and the compile decision."""
        out = {"policy": self.policy.describe(), "settings": asdict(self.policy), "tolerance": TOLERANCE,
               "min_gain": MIN_GAIN, "table": self.table, "cached": self.cached, "key": self.key}
        return out if self.compile is None else {**out, "compile": self.compile}


def candidates(net: nn.Module, device: torch.device) -> list[Policy]:
    """The variants ``fast`` measures on ``net``: exact first, then those that change something here
    (none for a network without convolutions or attention, e.g. an analytic denoiser)."""
    attention = ("einsum", "sdpa") if _attention_modules(net) else ("einsum",)
    formats = ("contiguous", "channels_last") if has_convolutions(net) else ("contiguous",)
    out = [Policy(a, m) for m in formats for a in attention]
    if len(out) == 1:
        return out
    low = {"cuda": ("bfloat16", "float16")}.get(device.type, ())
    if device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        low = ("bfloat16",)
    best = out[-1]
    out += [replace(best, autocast=dtype) for dtype in low]
    return out


_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fingerprint(net: nn.Module) -> str:
    """A digest of the network's architecture (module types, parameter names, shapes, dtypes) and weights
    (per-tensor sums): the autotune cache key of a model. Remembered per module until a weight changes
    (tensor version counters), so a run that samples many batches computes it once."""
    versions = tuple((t.data_ptr(), t._version) for t in net.state_dict().values())
    memo = _FINGERPRINTS.get(net)
    if memo is not None and memo[0] == versions:
        return memo[1]
    digest = _fingerprint(net)
    _FINGERPRINTS[net] = (versions, digest)
    return digest


def _fingerprint(net: nn.Module) -> str:
    h = hashlib.sha256()
    for name, m in net.named_modules():
        h.update(f"{name}:{type(m).__name__};".encode())
    with torch.no_grad():
        for name, p in net.state_dict().items():
            s = float(p.double().sum()) if p.is_floating_point() else int(p.sum())
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype}:{s!r};".encode())
    return h.hexdigest()[:20]


def _cache_file() -> Path:
    return default_cache_dir() / "speed" / "autotune.json"


def _read_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, key: str, entry: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        cache = _read_cache(path)
        cache[key] = entry
        atomic_json(path, cache)
    except OSError:
        pass  # a read-only cache costs a new autotune next time, nothing else


def autotune_denoiser(net, batch: int, device: torch.device | str, class_labels: bool | None = None,
                      cache: bool = True, repeats: int = 2) -> Tuning:
    """``fast`` for a denoiser D(x; sigma): the variants of :func:`candidates` on inputs x = y + sigma n
    (y uniform in [-1, 1], seed 0) at sigma = sigma_max, 1 and sigma_min of the model (clamped to
    [0.02, 80]), labels random when the model is conditional. Leaves ``net`` exact; returns the choice.
    """
    device = torch.device(device)
    batch = _tune_batch(batch, device)
    call, sigmas = _denoiser_inputs(net, batch, device)
    return autotune(net, call, sigmas, batch, device, cache=cache, repeats=repeats)


def _tune_batch(batch: int, device: torch.device) -> int:
    """The batch the autotune measures at for a run at ``batch``: at most :data:`CPU_TUNE_BATCH` on a CPU."""
    return min(batch, CPU_TUNE_BATCH) if device.type == "cpu" else batch


def _denoiser_inputs(net, batch: int, device: torch.device) -> tuple[Callable, list[float]]:
    """(``call(module, sigma) -> (D(x; sigma), sigma)`` on the inputs of :func:`autotune_denoiser` at
    ``batch``, the sigmas to call it at)."""
    g = torch.Generator().manual_seed(0)
    shape = (batch, net.img_channels, net.img_resolution, net.img_resolution)
    y = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1).to(device)
    noise = torch.randn(shape, generator=g, dtype=torch.float64).to(device)
    labels = None
    if net.label_dim:
        labels = torch.randint(0, net.label_dim, (batch,), generator=g).to(device)
    sigmas = sorted({min(max(float(net.sigma_max), 0.02), 80.0), min(max(1.0, float(net.sigma_min)), 80.0),
                     min(max(float(net.sigma_min), 0.02), 80.0)}, reverse=True)

    def call(module, sigma: float) -> tuple[torch.Tensor, float]:
        s = float(torch.as_tensor(net.round_sigma(torch.tensor(sigma, dtype=torch.float64))).reshape(-1)[0])
        with torch.no_grad():
            return module(y + s * noise, torch.full((batch,), s, dtype=torch.float64, device=device), labels), s

    return call, sigmas


def autotune(net: nn.Module, call: Callable, points: list, batch: int, device: torch.device,
             cache: bool = True, repeats: int = 2, variants: list[Policy] | None = None) -> Tuning:
    """Measure :func:`candidates` on ``net``.

    ``call(module, point) -> (output, scale)`` evaluates the module a policy gives at one input point
    (under no_grad unless it times a backward pass too); the error of a variant is
    max |out - out_exact| / max(1, scale) over the points. Rounds run the variants in turn (one pass
    each per point: the first point warms up, the rest are timed; a variant's time is its fastest
    pass), so load on the machine spreads over all of them. The fastest variant within
    :data:`TOLERANCE` that beats exact by :data:`MIN_GAIN` wins, else exact. ``variants``: the
    policies to measure (default :func:`candidates`; exact first).
    """
    key = _tuning_key(net, batch, device)
    path = _cache_file()
    if cache:
        hit = _read_cache(path).get(key)
        if hit is not None:
            return Tuning(Policy(**hit["settings"]), hit["table"], key, cached=True)
    variants = variants or candidates(net, device)
    if len(variants) == 1:
        return Tuning(EXACT, [], key)
    errors, times = _measure(net, call, points, variants, repeats, device)
    best, table = _choose(variants, errors, times)
    tuning = Tuning(best, table, key)
    if cache:
        _write_cache(path, key, {"settings": asdict(best), "table": table, "batch": batch,
                                 **machine(device), "measured": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return tuning


def _tuning_key(net: nn.Module, batch: int, device: torch.device) -> str:
    """The cache key of a measurement: the network, batch, device, thread count and torch version."""
    key = "|".join([fingerprint(net), f"batch={batch}", device_name(device), f"threads={torch.get_num_threads()}",
                    f"torch={torch.__version__}"])
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def _measure(net: nn.Module, call: Callable, points: list, variants: list[Policy], repeats: int,
             device: torch.device) -> tuple[dict, dict]:
    """(max error, pass times) of each variant over ``1 + repeats`` rounds (see :func:`autotune`); a
    variant already beyond :data:`TOLERANCE` is not run again. The network is left exact."""
    reference: dict = {}
    errors = {v: 0.0 for v in variants}
    times: dict = {v: [] for v in variants}
    try:
        for r in range(1 + repeats):
            point = points[r % len(points)]
            for v in variants:
                if v != EXACT and errors[v] > TOLERANCE:
                    continue
                module = apply(net, v, device.type)
                _sync(device)
                t0 = time.perf_counter()
                out, scale = call(module, point)
                _sync(device)
                if r:
                    times[v].append(time.perf_counter() - t0)
                out = out.double()
                if v == EXACT:
                    reference[point] = out
                else:
                    err = float((out - reference[point]).abs().max()) / max(1.0, scale)
                    errors[v] = max(errors[v], err if err == err else float("inf"))
    finally:
        apply(net, EXACT)
    return errors, times


def _choose(variants: list[Policy], errors: dict, times: dict) -> tuple[Policy, list[dict]]:
    """(the fastest variant within tolerance that beats exact by :data:`MIN_GAIN`, else exact; the table
    of every variant's time, speed-up and error)."""
    base = min(times[EXACT])  # the least disturbed pass (other work on the machine only slows passes down)
    table, best, best_time = [], EXACT, base
    for v in variants:
        within = errors[v] <= TOLERANCE
        seconds = min(times[v]) if times[v] else None
        table.append({"policy": v.describe(), "seconds": seconds, "speedup": base / seconds if seconds else None,
                      "max_error": errors[v], "within": within})
        if within and seconds and seconds * MIN_GAIN < base and seconds < best_time:
            best, best_time = v, seconds
    return best, table


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def choose(net, mode: str | Policy, batch: int, device: torch.device | str, calls: int | None = None) -> Tuning:
    """The policy of a run: ``exact``, an explicit :class:`Policy`, or ``fast`` (autotuned, cached; with
    ``calls``, the network calls the run will make, compilation is considered too)."""
    if isinstance(mode, Policy):
        return Tuning(mode)
    if mode == "exact":
        return Tuning(EXACT)
    if mode != "fast":
        raise SamplerkitError(f"unknown speed {mode!r}; use exact, fast or explicit settings")
    tuning = autotune_denoiser(net, batch, device)
    return tuning if not calls else consider_compile(net, tuning, calls, batch, device)


def consider_compile(net, tuning: Tuning, calls: int, batch: int, device: torch.device | str,
                     cache: bool = True, repeats: int = 2) -> Tuning:
    """``fast``'s second stage for a run of ``calls`` calls at ``batch``: ``torch.compile`` of the eager
    choice, when it pays for itself in this run.

    The eager choice's seconds per call (its autotune time scaled from the autotune batch to ``batch``)
    times ``calls`` predict the run's eager seconds. Without a measurement for this network, batch and
    machine, a trial is made only when :data:`COMPILE_GUESS_SECONDS` is at most :data:`COMPILE_SHARE` of
    that: the eager choice is compiled at ``batch`` (the first call's wall seconds are the compile
    cost) and timed against it and exact, its error held to :data:`TOLERANCE`; the measurement is cached.
    The compiled variant wins when it is within tolerance and beats the eager choice by :data:`MIN_GAIN`
    per call, and, unless this process has just compiled it, when the run's saving
    calls x (eager - compiled seconds per call) exceeds the measured compile seconds.
    Returns ``tuning`` with the decision recorded (its ``compile`` entry) and, if compiled wins, its policy.
    """
    device = torch.device(device)
    eager = tuning.policy
    timed = {row["policy"]: row["seconds"] for row in tuning.table}
    info: dict = {"calls": int(calls), "batch": batch, "share": COMPILE_SHARE}
    if not list(_networks(net)) or not timed.get(eager.describe()):
        return replace(tuning, compile={**info, "decision": "not considered: nothing to compile or no eager timing"})
    per_call = timed[eager.describe()] * batch / _tune_batch(batch, device)
    info["predicted_eager_seconds"] = calls * per_call
    key = _tuning_key(net, batch, device) + ":compile:" + eager.describe()
    found = _read_cache(_cache_file()).get(key) if cache else None
    trial = found is None
    if trial:
        if COMPILE_GUESS_SECONDS > COMPILE_SHARE * info["predicted_eager_seconds"]:
            return replace(tuning, compile={**info, "decision": "not tried: the run is too short to pay for "
                                            f"~{COMPILE_GUESS_SECONDS:.0f} s of compilation"})
        found = _compile_trial(net, eager, batch, device, repeats)
        if cache:
            _write_cache(_cache_file(), key, {**found, **machine(device),
                                              "measured": time.strftime("%Y-%m-%dT%H:%M:%S")})
    t_eager, t_compiled = found["eager_seconds"], found["compiled_seconds"]
    saving = calls * (t_eager - t_compiled)
    wins = found["within"] and t_compiled * MIN_GAIN < t_eager and (trial or saving > found["compile_seconds"])
    info.update({k: found[k] for k in ("eager_seconds", "compiled_seconds", "compile_seconds", "max_error", "within")})
    info["decision"] = ("compiled" if wins else "eager") + (" (trial in this run)" if trial else " (cached trial)")
    return replace(tuning, policy=replace(eager, compile=True) if wins else eager, compile=info)


def compile_note(record: dict) -> str | None:
    """One line on the compile decision of a run's speed ``record`` when it measured something
    (:func:`consider_compile`), else None."""
    info = record.get("compile") or {}
    if "compile_seconds" not in info:
        return None
    gain = info["eager_seconds"] / info["compiled_seconds"] if info["compiled_seconds"] else float("nan")
    return (f"speed: torch.compile {info['decision']}: {gain:.3f}x the eager choice per call, "
            f"{info['compile_seconds']:.0f} s to compile, {info['calls']:,d} calls in the run")


def _compile_trial(net, eager: Policy, batch: int, device: torch.device, repeats: int) -> dict:
    """Compile ``eager`` at ``batch`` and time it: {compile_seconds, eager_seconds, compiled_seconds
    (per call, fastest pass), max_error (vs exact), within}. Leaves ``net`` exact; the compiled code
    stays in torch's caches, so applying the compiled policy next costs no second compilation."""
    call, points = _denoiser_inputs(net, batch, device)
    compiled = replace(eager, compile=True)
    try:
        module = apply(net, compiled, device.type)
        _sync(device)
        t0 = time.perf_counter()
        call(module, points[0])
        _sync(device)
        compile_seconds = time.perf_counter() - t0
    finally:
        apply(net, EXACT)
    variants = list(dict.fromkeys([EXACT, eager, compiled]))
    errors, times = _measure(net, call, points, variants, repeats, device)
    return {"compile_seconds": compile_seconds, "eager_seconds": min(times[eager]),
            "compiled_seconds": min(times[compiled]) if times[compiled] else float("inf"),
            "max_error": errors[compiled], "within": errors[compiled] <= TOLERANCE, "batch": batch}


def for_inception(features, speed: str | Policy | None, device) -> tuple[object, dict]:
    """(the Inception feature extractor to measure with, the record) for ``fid``/``sweep``'s ``--speed``.

    The variants are float32 only (contiguous / channels_last): autocast does not reach inside the
    TorchScript network. The error is measured on the pool_3 features of 4 random 299x299 inputs,
    max |f - f_exact| / max(1, max |f_exact|) <= :data:`TOLERANCE`. A non-exact choice runs on a copy
    of the network, so the process-wide loaded network stays exact.
    """
    import copy

    mode = parse(speed) if isinstance(speed, str) or speed is None else speed
    device = torch.device(device)
    layers = getattr(features, "layers", None)
    if layers is None:  # not the TorchScript Inception (e.g. a stand-in feature network): run it as it is
        return features, {"mode": "exact", "reason": "no tunable layers"}
    if isinstance(mode, Policy):
        tuning = Tuning(replace(mode, attention="einsum"))
    elif mode == "exact":
        tuning = Tuning(EXACT)
    else:
        g = torch.Generator().manual_seed(0)
        x = (torch.rand(4, 3, 299, 299, generator=g) * 255).to(device)

        def call(module, point):
            with torch.no_grad():
                out = features._forward(x, False)[0]
            return out, float(out.abs().max())

        variants = [EXACT, Policy(memory_format="channels_last")]
        tuning = autotune(layers, call, [0, 1, 2], 4, device, variants=variants)
    record = {"mode": mode if isinstance(mode, str) else "explicit", **tuning.record(), "machine": machine(device)}
    if tuning.policy.exact:
        return features, record
    fast = copy.copy(features)
    fast.layers = copy.deepcopy(layers)
    apply(fast.layers, replace(tuning.policy, autocast="none"), device.type)
    fast._children = list(fast.layers.named_children())
    return fast, record


def for_training(model: nn.Module, call: Callable, speed: str | Policy | None, example: Callable,
                 device) -> tuple[Callable, dict]:
    """(the training forward to use, the record) for ``retrain``'s ``--speed``.

    ``call(*inputs)`` is the training forward of ``model`` (the model, or its DDP wrapper);
    ``example()`` gives synthetic inputs for one microbatch. ``fast`` times forward + backward of each
    float32 variant (autotune at the microbatch; gradients are cleared afterwards) with the output
    tolerance of :data:`TOLERANCE`. Autocast is ``--precision``'s business here: an explicit
    ``autocast=`` is refused. ``compile=on`` compiles the training forward (the saved state dict keeps
    the upstream key names).
    """
    mode = parse(speed) if isinstance(speed, str) or speed is None else speed
    device = torch.device(device)
    if isinstance(mode, Policy) and mode.autocast != "none":
        raise SamplerkitError("training sets the autocast dtype with precision=fp16 or bf16, "
                              "not the speed setting autocast=")
    if isinstance(mode, Policy):
        tuning = Tuning(mode)
    elif mode == "exact":
        tuning = Tuning(EXACT)
    else:
        inputs = example()
        batch = inputs[0].shape[0]

        def step(module, point):
            out = module(*inputs)
            out.float().square().mean().backward()
            return out.detach(), float(out.detach().abs().max())

        variants = [v for v in candidates(model, device) if v.autocast == "none"]
        try:
            tuning = autotune(model, step, [0, 1, 2], batch, device, variants=variants)
        finally:
            model.zero_grad(set_to_none=True)
    apply(model, replace(tuning.policy, compile=False), device.type)
    if tuning.policy.compile:
        _inductor_cache()
        call = torch.compile(call)
    record = {"mode": mode if isinstance(mode, str) else "explicit", **tuning.record(), "machine": machine(device)}
    return call, record


def for_denoiser(net, speed: str | Policy | None, batch: int, device,
                 calls: int | None = None) -> tuple[nn.Module, dict]:
    """(the denoiser to sample with, the manifest record) for a run's ``--speed``; ``calls``: the network
    calls the run makes (images x NFE / batch), which lets ``fast`` weigh compilation."""
    mode = parse(speed) if isinstance(speed, str) or speed is None else speed
    tuning = choose(net, mode, batch, device, calls)
    record = {"mode": mode if isinstance(mode, str) else "explicit", **tuning.record(), "machine": machine(device)}
    return apply(net, tuning.policy, torch.device(device).type), record
