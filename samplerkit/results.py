"""Result tables on disk: the resumable CSV that ``sweep`` and ``exposure-bias`` write.

One row per measured cell; the key columns say which cell a row is. The whole table is rewritten
atomically (:func:`samplerkit.output.atomic_csv`) after every cell, so a killed run leaves the
finished cells behind and a rerun skips them.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from .errors import SamplerkitError
from .output import atomic_csv


def cell_text(value) -> str:
    """How a value is written: floats as their shortest exact repr (a resumed row reads back the
    same number), None as an empty cell, everything else as ``str``."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


class ResultsCSV:
    """A CSV of result rows at ``path`` (None: nothing on disk) with the given ``columns``, of
    which ``key_columns`` identify a cell; ``what`` names the table in error messages."""

    def __init__(self, path: str | Path | None, columns: Sequence[str], key_columns: Sequence[str], what: str):
        self.path = Path(path) if path is not None else None
        self.columns = tuple(columns)
        self.key_columns = tuple(key_columns)
        self.what = what

    def key(self, row: dict) -> tuple[str, ...]:
        """The identity of a row's cell, as text (a row read back from disk has the same key)."""
        return tuple(cell_text(row.get(k, "")) for k in self.key_columns)

    def read(self) -> list[dict]:
        """The rows already on disk as dicts of strings; [] when there is no file."""
        if self.path is None or not self.path.is_file():
            return []
        try:
            with open(self.path, newline="") as f:
                rows = list(csv.DictReader(f))
        except (OSError, csv.Error, UnicodeDecodeError) as err:
            raise SamplerkitError(f"{self.path}: unreadable CSV ({err}); "
                                  "move it away or pick another csv_path") from None
        missing = sorted(set(self.key_columns) - set(rows[0])) if rows else []
        if missing:
            raise SamplerkitError(f"{self.path} is not {self.what} CSV (it lacks the column(s) {', '.join(missing)}); "
                                  f"move it away or pick another csv_path")
        return rows

    def write(self, rows: Sequence[dict]) -> None:
        """Write all rows at once, atomically; columns beyond ``columns`` follow them, sorted."""
        if self.path is None:
            return
        columns = list(self.columns) + sorted({k for r in rows for k in r} - set(self.columns))
        atomic_csv(self.path, columns, [{k: cell_text(row.get(k, "")) for k in columns} for row in rows])

    def put(self, rows: list[dict], row: dict) -> None:
        """Replace the row of ``row``'s cell in ``rows``, or append it."""
        key = self.key(row)
        for i, r in enumerate(rows):
            if self.key(r) == key:
                rows[i] = row
                return
        rows.append(row)


def check_experiment(path: str | Path | None, what: str, expected: Mapping[str, Iterable],
                     of_row: Mapping[str, Callable[[dict], object]] | None = None) -> None:
    """Refuse to add rows to the CSV at ``path`` when the rows already there belong to another
    experiment, so that a table and its plot never mix two.

    ``expected`` maps each setting that defines the experiment (the model set, the reference
    statistics and their pipeline, the number of images, the method, ...) to the values this run
    writes; every row in the file must hold one of them. A row reads a setting from the column of
    that name, or through ``of_row[name]``; a row without it (a file from before the column existed)
    is not checked on that setting. No file, or ``path`` None: nothing to check.
    """
    if path is None or not Path(path).is_file():
        return
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        raise SamplerkitError(f"{path}: unreadable CSV ({err}); move it away or pick another csv_path") from None
    of_row = dict(of_row or {})
    for name, values in expected.items():
        allowed = {cell_text(v) for v in values}
        read = of_row.get(name, lambda row, name=name: row.get(name))
        found = sorted({cell_text(v) for row in rows if (v := read(row)) not in (None, "")})
        if any(v not in allowed for v in found):
            raise SamplerkitError(
                f"{path} holds {what} of another experiment ({name} {_listed(found)} there, "
                f"{_listed(sorted(allowed))} now); start a new file with another csv_path, "
                f"or move {path} away")


def _listed(values: Sequence[str], most: int = 4) -> str:
    shown = ", ".join(values[:most])
    return shown + (f" and {len(values) - most} more" if len(values) > most else "")
