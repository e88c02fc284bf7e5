"""Options shared by several commands: model selection and ``--flag KEY=VALUE`` parsing."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import click

from ..errors import SamplerkitError


def parse_value(text: str):
    """'3' -> 3, '0.1' -> 0.1, 'True'/'False' -> bool, anything else stays a string ('32,16,8')."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_flags(items: tuple[str, ...] | list[str]) -> dict:
    """``("num_channels=192", "learn_sigma=True")`` -> {"num_channels": 192, "learn_sigma": True}."""
    flags = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise SamplerkitError(f"bad --flag {item!r}; use --flag KEY=VALUE with the upstream flag name")
        flags[key] = parse_value(value)
    return flags


SAMPLING_FAMILIES = ("adm", "iddpm", "edm", "adm-superres", "iddpm-superres")


def model_options(default_model: str | None, several: str | None = None,
                  families: tuple[str, ...] = SAMPLING_FAMILIES) -> Callable:
    """``--model``, ``--family``, ``--flag`` and ``--preset``, added to a click command. With ``several``
    (its help text), ``--model`` repeats and arrives as the tuple ``models`` (commands that compare
    models on the same images)."""
    if several:
        model = click.option("--model", "models", multiple=True, default=(default_model,), show_default=True,
                             help=several)
    else:
        model = click.option("--model", "model", default=default_model, show_default=True,
                             help="Zoo name (see `samplerkit models list`) or path to a checkpoint file.")

    def decorate(fn):
        @model
        @click.option("--family", type=click.Choice(list(families)), default=None,
                      help="Network family of a local checkpoint file (EDM .pkl files are detected).")
        @click.option("--flag", "flags", multiple=True, metavar="KEY=VALUE",
                      help="Upstream architecture/diffusion flag for a local .pt file; repeatable.")
        @click.option("--preset", default=None,
                      help="Zoo entry whose flags a local .pt file uses (overridden by --flag).")
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return fn(*args, **kwargs)

        return wrapper

    return decorate


def speed_option(default: str = "fast") -> Callable:
    """``--speed exact|fast|SETTINGS``: how the network executes (:mod:`samplerkit.speed`); the default is
    ``$SAMPLERKIT_SPEED`` when set, else ``default``."""
    return click.option(
        "--speed", "speed", default=None, metavar="exact|fast|SETTINGS",
        help="Network execution: exact (upstream arithmetic, bit for bit), fast (the fastest variant measured on "
             "this machine within 1e-3 of exact, autotuned once and cached) or settings like "
             "attention=sdpa,memory_format=channels_last,autocast=bfloat16,compile=on. "
             f"[default: $SAMPLERKIT_SPEED, else {default}]")


def guidance_options(scale_help: str) -> Callable:
    """``--classifier``, ``--classifier-flag``, ``--classifier-scale`` and ``--guidance-form``
    (classifier guidance, :mod:`samplerkit.guidance`), added to a click command."""

    def decorate(fn):
        for opt in reversed([
            click.option("--classifier", default=None,
                         help="Noisy-image classifier for classifier guidance (ADM-G): a zoo name such as "
                              "adm-imagenet256-classifier, or a .pt with --classifier-flag."),
            click.option("--classifier-flag", "classifier_flags", multiple=True, metavar="KEY=VALUE",
                         help="Upstream classifier_* / diffusion flag of a local classifier .pt; repeatable."),
            click.option("--classifier-scale", default=None, metavar="S", help=scale_help),
            click.option("--guidance-form", type=click.Choice(["score", "upstream"]), default=None,
                         help="score: D + s sigma^2 grad log p, every sampler (default); upstream: guided-diffusion's "
                              "condition_mean (ancestral) / condition_score (ddim)."),
        ]):
            fn = opt(fn)
        return fn

    return decorate


def guidance_settings(classifier: str | None, flags: tuple[str, ...], scale, form: str | None):
    """(classifier flags, scales, form) of the guidance options, checked: every other option needs
    --classifier; a scale list '0.5,1,4' -> [0.5, 1.0, 4.0] (default [1.0]), each >= 0."""
    if classifier is None:
        given = [name for name, v in (("--classifier-flag", flags), ("--classifier-scale", scale),
                                      ("--guidance-form", form)) if v]
        if given:
            raise SamplerkitError(f"{', '.join(given)} need(s) --classifier")
    return parse_flags(flags), classifier_scales(scale), form or "score"


def classifier_scales(text) -> list[float]:
    """'0.5,1,4' -> [0.5, 1.0, 4.0] (default [1.0]); each must be >= 0."""
    if text is None:
        return [1.0]
    try:
        scales = list(dict.fromkeys(float(v) for v in str(text).split(",") if v.strip()))
    except ValueError:
        raise SamplerkitError(f"bad --classifier-scale {text!r}; use a number like 1.0 (sweep: 0.5,1,4)") from None
    if not scales or any(not v >= 0 for v in scales):
        raise SamplerkitError(f"--classifier-scale must be >= 0, got {text}")
    return scales


def load_model(model: str, family: str | None, flags: tuple[str, ...], preset: str | None, device="cpu"):
    """Load the model the user named, with its ``--flag KEY=VALUE`` flags; returns the denoiser."""
    from ..runs import load_model as load_with_flags

    return load_with_flags(model, family, parse_flags(flags), preset, device=device)



# click parameter name -> sampler option name (samplerkit.generate.sampler_options)
KNOBS = {
    "disc": "disc", "sigma_min": "sigma_min", "sigma_max": "sigma_max", "rho": "rho",
    "schedule": "schedule", "scaling": "scaling", "S_churn": "S_churn", "S_min": "S_min", "S_max": "S_max",
    "S_noise": "S_noise", "eta": "eta", "s_noise": "s_noise", "solver_type": "solver_type", "order": "order",
    "variant": "variant", "variance": "variance", "respacing": "respacing", "clip": "clip_denoised",
    "eps_scaler": "eps_scaler", "eps_scaler_slope": "eps_scaler_slope", "time_shift": "time_shift",
    "ts_window": "ts_window", "ts_cutoff": "ts_cutoff", "ts_mode": "ts_mode",
    "rtol": "rtol", "atol": "atol",
}

# sampler option name -> the flag a user types; error messages name the flag. Plain words that
# also occur in prose (variance, schedule, ...) are left alone.
FLAGS = {
    "sigma_min": "--sigma-min", "sigma_max": "--sigma-max", "rho": "--rho", "S_churn": "--S-churn",
    "S_min": "--S-min", "S_max": "--S-max", "S_noise": "--S-noise", "eta": "--eta", "s_noise": "--s-noise",
    "solver_type": "--solver-type", "order": "--order", "variant": "--variant", "clip_denoised": "--clip/--no-clip",
    "eps_scaler_slope": "--eps-scaler-slope", "eps_scaler": "--eps-scaler", "time_shift": "--time-shift",
    "ts_window": "--ts-window", "ts_cutoff": "--ts-cutoff", "ts_mode": "--ts-mode",
}
_FLAG_PATTERN = re.compile(r"(?<![-\w])(" + "|".join(sorted(FLAGS, key=len, reverse=True)) + r")\b")


def flag_of(option: str) -> str | None:
    """The command-line flag of sampler option ``option`` (None for an option the CLI does not set)."""
    if option in FLAGS:
        return FLAGS[option]
    return f"--{option.replace('_', '-')}" if option in KNOBS.values() else None


def with_flag_names(message: str) -> str:
    """``message`` with the sampler options' Python names replaced by their command-line flags."""
    return _FLAG_PATTERN.sub(lambda m: FLAGS[m.group(1)], message)


def sampler_options(fn):
    """The sampler knobs, with the papers' names; none has a default here, so only what the
    user set reaches the sampler (an option the chosen sampler does not take is an error). Errors
    raised by the command name these flags as the user typed them (``--S-churn``, not ``S_churn``)."""
    opts = [
        click.option("--disc", type=click.Choice(["edm", "vp", "ve", "iddpm"]),
                     help="Step discretization (EDM Table 1)."),
        click.option("--sigma-min", type=float, help="Lowest noise level of the grid."),
        click.option("--sigma-max", type=float, help="Highest noise level of the grid."),
        click.option("--rho", type=float, help="EDM grid exponent rho (Eq. 5), default 7."),
        click.option("--schedule", type=click.Choice(["linear", "vp", "ve"]), help="sigma(t) of Alg. 1 (euler/heun)."),
        click.option("--scaling", type=click.Choice(["none", "vp"]), help="s(t) of Alg. 1 (euler/heun)."),
        click.option("--S-churn", "S_churn", type=float, help="EDM Alg. 2 S_churn (stochastic)."),
        click.option("--S-min", "S_min", type=float, help="EDM Alg. 2 S_tmin (stochastic)."),
        click.option("--S-max", "S_max", type=float, help="EDM Alg. 2 S_tmax (stochastic)."),
        click.option("--S-noise", "S_noise", type=float, help="EDM Alg. 2 S_noise (stochastic)."),
        click.option("--eta", type=float,
                     help="DDIM eta; amount of ancestral/SDE noise of the k-diffusion samplers (0 = deterministic)."),
        click.option("--s-noise", "s_noise", type=float,
                     help="Noise scale s_noise of the ancestral/SDE samplers (*_ancestral, *_sde)."),
        click.option("--solver-type", "solver_type", type=click.Choice(["midpoint", "heun"]),
                     help="2nd-order correction of dpmpp_2m_sde."),
        click.option("--order", type=int, help="Order of lms/ipndm (1-4) and unipc (1-3)."),
        click.option("--variant", type=click.Choice(["bh1", "bh2"]), help="UniPC B(h): bh1 = h, bh2 = e^h - 1."),
        click.option("--variance", type=click.Choice(["auto", "learned", "fixedsmall", "fixedlarge"]),
                     help="Ancestral variance (iDDPM Eq. 15 when learned)."),
        click.option("--respacing", help="Timestep respacing of a discrete model: 'K', 'ddimK' or '10,15,20'."),
        click.option("--clip/--no-clip", "clip", default=None,
                     help="Clamp the denoised estimate to [-1, 1] (default: on for ddim/ancestral, off otherwise)."),
        click.option("--rtol", type=float, help="dpm_adaptive: relative error tolerance (default 0.05)."),
        click.option("--atol", type=float, help="dpm_adaptive: absolute error tolerance (default 0.0078)."),
        *remedy_options(),
    ]

    @functools.wraps(fn)
    def named_flags(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SamplerkitError as e:  # same error (and type), with the flags the user typed
            e.args = (with_flag_names(str(e)),)
            raise

    for opt in reversed(opts):
        named_flags = opt(named_flags)
    return named_flags


def remedy_options() -> list:
    """The exposure-bias remedies (:mod:`samplerkit.remedies`) as click options."""
    return [
        click.option("--eps-scaler", "eps_scaler", metavar="B",
                     help="Epsilon Scaling (Ning et al. 2024): divide the predicted noise by lambda = B + K t "
                          "(e.g. 1.017 for ADM CIFAR-10 at 100 steps); sweep takes a list 1.0,1.002,1.005."),
        click.option("--eps-scaler-slope", "eps_scaler_slope", type=float, metavar="K",
                     help="Slope K of lambda = B + K t, t = the step index on the run's grid (0 = last step)."),
        click.option("--time-shift", "time_shift", is_flag=True, default=None,
                     help="Time-Shift sampler (Li et al. 2024) for ddim/ancestral on a discrete-time model."),
        click.option("--ts-window", "ts_window", type=int, metavar="W",
                     help="Time-shift window in training timesteps (default 80)."),
        click.option("--ts-cutoff", "ts_cutoff", type=int, metavar="C",
                     help="No time shift at or below training timestep C (default 300)."),
        click.option("--ts-mode", "ts_mode", type=click.Choice(["paper", "reference"]),
                     help="paper (default) or reference = TS-DPM-ADM's DDIM code (see samplerkit.remedies)."),
    ]


def chosen_options(kwargs: dict) -> dict:
    """The sampler options the user set (click parameter names -> sampler option names)."""
    return {KNOBS[k]: v for k, v in kwargs.items() if k in KNOBS and v is not None}
