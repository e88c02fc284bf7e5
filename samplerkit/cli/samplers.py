"""``samplerkit samplers``: the table of samplers with order, NFE, knobs and source."""

from __future__ import annotations

import json
import textwrap

import click

from .. import samplers, terminal
from ._options import flag_of


def nfe_formula(nfe) -> str:
    """'N', '2N - 1', ... for an NFE that is affine in the number of steps N."""
    a, b = nfe(2) - nfe(1), 2 * nfe(1) - nfe(2)
    head = "N" if a == 1 else f"{a}N"
    return head if b == 0 else f"{head} {'+' if b > 0 else '-'} {abs(b)}"


def rows() -> list[dict]:
    out = []
    for name, row in samplers.SAMPLERS.items():
        knobs = {(flag_of(k) or k): v for k, v in row.knobs.items()}
        knob_help = {(flag_of(k) or k): row.knob(k).help for k in row.knobs}
        out.append({"name": name, "order": row.order, "nfe": nfe_formula(row.nfe), "stochastic": row.stochastic,
                    "grid": row.grid, "knobs": knobs, "knob_help": knob_help, "source": row.source})
    return out


def _knob_text(flag: str, default) -> str:
    if flag == "--clip/--no-clip":
        return "--clip" if default else "--no-clip"
    return f"{flag} {default}" if flag.startswith("--") else f"{flag}={default} (Python API only)"


EPILOG = """\b
Examples:
  samplerkit samplers
  samplerkit samplers --json
  samplerkit sample --sampler dpmpp_2m --steps 10 --clip   # the built-in ADM needs x0 clipped
  samplerkit sample --sampler unipc --order 3 --variant bh2 --steps 8 --clip
"""


@click.command("samplers", epilog=EPILOG)
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def command(as_json: bool) -> None:
    """List every sampler: order, NFE for N steps, source, and its knobs with their defaults and help
    (the same text as the sampler options of `samplerkit sample --help`)."""
    table = rows()
    if as_json:
        click.echo(json.dumps(table, indent=2, default=str))
        return
    width = max(len(r["name"]) for r in table)
    for r in table:
        kind = "stochastic" if r["stochastic"] else "deterministic"
        click.echo(_wrapped(f"{r['name']:<{width}}  NFE {r['nfe']:<7}  {kind}, order {r['order']}", width + 15))
        click.echo(_wrapped(f"{'':<{width}}  source: {r['source']}", width + 10))
        for flag, default in r["knobs"].items():
            click.echo(_wrapped(f"{'':<{width}}    {_knob_text(flag, default)}: {r['knob_help'][flag]}", width + 6))


def _wrapped(line: str, indent: int) -> str:
    """``line`` wrapped to the terminal width, its continuation lines indented by ``indent``."""
    if len(line) <= terminal.WIDTH:
        return line
    return "\n".join(textwrap.wrap(line, terminal.WIDTH, subsequent_indent=" " * indent, break_long_words=False,
                                   break_on_hyphens=False))
