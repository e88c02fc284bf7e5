"""Options shared by several commands: model selection and ``--flag KEY=VALUE`` parsing."""

from __future__ import annotations

import functools
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


def model_options(default_model: str | None) -> Callable:
    """``--model``, ``--family``, ``--flag`` and ``--preset``, added to a click command."""

    def decorate(fn):
        @click.option("--preset", default=None,
                      help="Zoo entry whose flags a local .pt file uses (overridden by --flag).")
        @click.option("--flag", "flags", multiple=True, metavar="KEY=VALUE",
                      help="Upstream architecture/diffusion flag for a local .pt file; repeatable.")
        @click.option("--family", type=click.Choice(["adm", "iddpm", "edm"]), default=None,
                      help="Network family of a local checkpoint file (EDM .pkl files are detected).")
        @click.option("--model", "model", default=default_model, show_default=True,
                      help="Zoo name (see `samplerkit models list`) or path to a checkpoint file.")
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return fn(*args, **kwargs)

        return wrapper

    return decorate


def load_model(model: str, family: str | None, flags: tuple[str, ...], preset: str | None, device="cpu"):
    """Load the model the user named, with its flags; returns the denoiser."""
    from ..loading import load

    kwargs = parse_flags(flags)
    if preset is not None:
        kwargs["preset"] = preset
    return load(model, family=family, device=device, **kwargs)
