"""A cheap look at a checkpoint file before it is read: is it evidently truncated or corrupted?

A PyTorch ``.pt`` written by ``torch.save`` (since torch 1.6) is a zip archive: it begins with a
zip local-file header and ends with the zip's central directory, so a copy cut short has the
first and lacks the second. An EDM ``.pkl`` network pickle is one pickle, whose last byte is the
STOP opcode ``.``. Both tests read a few bytes at each end, never the whole file. A file that
passes may still be damaged inside; the loader reports that.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from . import zoo
from .errors import DamagedFileError

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = 0x80  # the PROTO opcode that starts a pickle of protocol >= 2
PICKLE_STOP = b"."


def size_text(n: int) -> str:
    """'1,234 bytes' or '12,345,678 bytes = 11.8 MiB'."""
    return f"{n:,d} bytes" + (f" = {n / 2**20:.1f} MiB" if n >= 2**20 else "")


def damage(path: Path) -> str | None:
    """Why ``path`` is evidently truncated or corrupted, or None when it looks whole."""
    size = path.stat().st_size
    if size == 0:
        return "it is empty"
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(-1, 2)
        last = f.read(1)
    if head == ZIP_MAGIC:
        if not zipfile.is_zipfile(path):
            return "it begins as a zip archive (PyTorch's format) but its zip directory at the end is missing"
        try:
            with zipfile.ZipFile(path) as z:
                ends = max((i.header_offset + i.compress_size for i in z.infolist()), default=0)
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            return f"its zip directory is unreadable ({err})"
        if ends > size:
            return "its zip directory lists data beyond the end of the file"
        return None
    if path.suffix == ".pkl" and head[0] == PICKLE_PROTO and last != PICKLE_STOP:
        return "the pickle does not end with its STOP opcode"
    return None


def zoo_name_of(path: Path) -> str | None:
    """The zoo entry whose cached file ``path`` is, if any."""
    resolved = path.resolve()
    for entry in zoo.entries():
        local = entry.local_path() if entry.family != "builtin" else None
        if local is not None and local.resolve() == resolved:
            return entry.name
    return None


def check_intact(path: str | Path) -> None:
    """Raise one line saying ``path`` is truncated or corrupted -- its size, and how to get it again
    (``samplerkit models download NAME`` after deleting it, for a zoo file) -- when it evidently is."""
    path = Path(path)
    why = damage(path)
    if why is None:
        return
    name = zoo_name_of(path)
    expected = zoo.get(name).size if name else None
    size = size_text(path.stat().st_size) + (f" of {size_text(expected)}" if expected else "")
    how = (f"delete it and download it again with `samplerkit models download {name}`" if name
           else "copy or download it again")
    raise DamagedFileError(f"{path} is truncated or corrupted ({size}; {why}): {how}")
