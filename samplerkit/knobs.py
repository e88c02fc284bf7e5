"""What a user reads about one option of a run: :class:`Knob` (help, choices, flag).

The tables of knobs live beside what they control -- the samplers' in
:mod:`samplerkit.samplers` (``KNOB_HELP`` and each row's ``knob_help``), the noise-level grid's in
:mod:`samplerkit.generate`, the remedies' in :mod:`samplerkit.remedies` -- and the command line
builds its options from them, so an option is declared once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Knob:
    """One option: its help text, its choices (None: any value of ``type``, else of the default's
    type), its command-line flag (default ``--name`` with ``_`` as ``-``), the name the command line
    gives the value when it is not the Python name (``param``), the placeholder of its value, and
    whether it repeats (``multiple``: the values arrive as a tuple)."""

    help: str
    choices: tuple[str, ...] | None = None
    flag: str | None = None
    param: str | None = None
    type: type | None = None
    metavar: str | None = None
    multiple: bool = False

    def flag_of(self, name: str) -> str:
        """The flag a user types for option ``name``."""
        return self.flag or "--" + name.replace("_", "-")


__all__ = ["Knob"]
