"""The ``samplerkit`` command line.

Each subcommand lives in its own module of this package and exposes a click command named
``command``; modules are discovered at start-up. Errors become one line on stderr and a
non-zero exit: ``SamplerkitError`` and usage errors exit 2, anything unexpected exits 1 (set
``SAMPLERKIT_DEBUG=1`` to see the traceback).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import click

from .. import terminal
from ..errors import Interrupted, SamplerkitError
from ._options import TableChoice, with_argument_flags

# shown in this order in --help; modules not listed come after, alphabetically
_ORDER = ["sample", "sweep", "exposure", "nll", "retrain", "fid", "models"]


class _Formatter(click.HelpFormatter):
    """click's help formatter, folding the lines of a ``\\b`` block (examples) that do not fit."""

    def write_text(self, text: str) -> None:
        start = len(self.buffer)
        super().write_text(text)
        produced = "".join(self.buffer[start:])
        del self.buffer[start:]
        self.write(terminal.fit_text(produced, self.width or terminal.WIDTH))


class _Context(click.Context):
    formatter_class = _Formatter


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": terminal.WIDTH})
@click.version_option(package_name="samplerkit")
def cli() -> None:
    """Samplers, NFE-vs-FID sweeps, exposure-bias reports and IP retraining for diffusion models.

    \b
    Examples:
      samplerkit sample                                   # the built-in model -> out/
      samplerkit sample --sampler heun --steps 18 --clip --out out-heun18/   # x0 clipped as ADM does
      samplerkit models list
    """


# the one-line summaries of `samplerkit --help` and `samplerkit models --help` (click would cut a
# docstring's first sentence at its width, mid-phrase); a command not named here gets its first sentence
SHORT_HELP = {
    "sample": "Sample images from a model; rerun the same command to resume",
    "sweep": "NFE vs FID: samplers x step counts on the same seeds, one CSV row per cell",
    "nll": "Bits/dim of data: the variational bound or the probability-flow ODE likelihood",
    "retrain": "Train ADM or EDM networks with input perturbation (ADM-IP) or another regularizer",
    "fid": "FID, sFID, precision/recall, KID, IS, FD_DINOv2 of images against a reference",
    "fid-ref": "Reference statistics of a data set (an npz as clean-fid and EDM, or EDM2's .pkl)",
    "models": "Published checkpoints: list, inspect, download and verify the cache",
    "samplers": "List every sampler: order, NFE for N steps, source and its knobs",
    "list": "Every named model: family, resolution, cached, recommended sampler",
    "info": "Everything the zoo knows about NAME: flags, size, sha256, cache path",
    "download": "Download NAMES into the cache (resumes a partial file; verifies sha256)",
    "verify": "Re-hash cached files: OK, MISMATCH, MISSING or PENDING",
}
_LONG_CHOICES = 40  # a choice list longer than this is shown as a metavar, its values in the help


def first_sentence(text: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line, without its full stop."""
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    for end in range(len(paragraph)):
        if paragraph.startswith(". ", end) and not paragraph[:end].endswith(("et al", "e.g", "i.e", "Eq", "Alg")):
            return paragraph[:end]
    return paragraph.rstrip(".")


def _fit_help(cmd: click.Command) -> None:
    """``cmd`` (and its subcommands) set up to print help that fits :data:`terminal.WIDTH`."""
    cmd.context_class = _Context
    if cmd.short_help is None and cmd.help:
        cmd.short_help = SHORT_HELP.get(cmd.name) or first_sentence(cmd.help)
    for param in cmd.params:
        if not isinstance(param, click.Option) or not isinstance(param.type, click.Choice) or param.metavar:
            continue
        if isinstance(param.type, TableChoice):  # the sampler table: its names are in `samplerkit samplers`
            param.metavar = "SAMPLER"
        elif len("|".join(map(str, param.type.choices))) > _LONG_CHOICES:
            param.metavar = param.name.upper().replace("_", "-")
            param.help = f"{param.help or ''} One of: {', '.join(map(str, param.type.choices))}.".strip()
    for sub in getattr(cmd, "commands", {}).values():
        _fit_help(sub)


def _register() -> None:
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    names.sort(key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    for name in names:
        module = importlib.import_module(f"{__name__}.{name}")
        for cmd in getattr(module, "COMMANDS", [getattr(module, "command", None)]):
            if cmd is not None:
                _fit_help(cmd)
                cli.add_command(cmd)
    cli.context_class = _Context


_register()


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI, turning every error into one line and an exit code."""
    try:
        cli.main(args=argv, prog_name="samplerkit", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"error: {_one_line(e.format_message())}", err=True)
        sys.exit(2)
    except Interrupted as e:
        click.echo(_one_line(e), err=True)
        sys.exit(130)
    except SamplerkitError as e:
        click.echo(f"error: {with_argument_flags(_one_line(e))}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # an unexpected failure: still one line, traceback on request
        if os.environ.get("SAMPLERKIT_DEBUG"):
            raise
        click.echo(f"error: {type(e).__name__}: {_one_line(e)} (set SAMPLERKIT_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)
