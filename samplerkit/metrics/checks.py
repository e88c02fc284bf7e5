"""Checks that keep a metric from being silently wrong: an existing statistics file is not
replaced unless asked."""

from __future__ import annotations

from pathlib import Path

from ..errors import SamplerkitError
from .stats import load_statistics


def check_new_statistics_file(path: str | Path, overwrite: bool = False) -> None:
    """Refuse to write statistics to ``path`` when a file is there, unless ``overwrite``."""
    path = Path(path)
    if overwrite or not path.exists():
        return
    try:
        held = load_statistics(path) if path.is_file() else None
    except SamplerkitError:
        held = None
    what = f"statistics of {held.n} images ({held.pipeline()})" if held is not None and held.n else "a file"
    raise SamplerkitError(f"{path} already holds {what}; pass overwrite=True (CLI: --overwrite) to replace it, "
                          "or write to another file")
