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

from ..errors import Interrupted, SamplerkitError
from ._options import with_argument_flags

# shown in this order in --help; modules not listed come after, alphabetically
_ORDER = ["sample", "sweep", "exposure", "nll", "retrain", "fid", "models"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="samplerkit")
def cli() -> None:
    """Samplers, NFE-vs-FID sweeps, exposure-bias reports and IP retraining for diffusion models.

    \b
    Examples:
      samplerkit sample                                   # the built-in model -> out/
      samplerkit sample --sampler heun --steps 18 --out out-heun18/
      samplerkit models list
    """


def _register() -> None:
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    names.sort(key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    for name in names:
        module = importlib.import_module(f"{__name__}.{name}")
        for cmd in getattr(module, "COMMANDS", [getattr(module, "command", None)]):
            if cmd is not None:
                if cmd.short_help is None and cmd.help:  # click would cut the summary at "et al."
                    cmd.short_help = cmd.help.strip().splitlines()[0].rstrip(".")
                cli.add_command(cmd)


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
