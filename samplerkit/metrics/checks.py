"""Checks that keep a metric from being silently wrong: an existing statistics file is not
replaced unless asked, and images are compared only with a reference of their own resolution
unless the caller says a mismatch is meant."""

from __future__ import annotations

from pathlib import Path

from ..errors import SamplerkitError
from .stats import Statistics, load_statistics


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
    raise SamplerkitError(f"{path} already holds {what}; pass overwrite=True to replace it, "
                          "or write to another file")


def reference_resolution(checked) -> int:
    """The image side of a reference as the fid command checked it: stored :class:`Statistics`
    (0 when the file does not record it) or (source, n) of reference images."""
    if isinstance(checked, Statistics):
        return checked.resolution
    source = checked[0]
    return int(getattr(source, "resolution", 0) or 0)


def check_same_resolution(images: str, resolution: int, ref: str, ref_resolution: int,
                          allow_mismatch: bool = False) -> None:
    """Refuse to compare ``resolution`` x ``resolution`` images with a reference of other-sized
    images (the Fréchet distance then measures the resize as much as the model), unless
    ``allow_mismatch``. A reference that does not record its resolution (0) is not checked."""
    if allow_mismatch or not resolution or not ref_resolution or resolution == ref_resolution:
        return
    raise SamplerkitError(
        f"{images} holds {resolution}x{resolution} images but the reference {ref} is of {ref_resolution}x"
        f"{ref_resolution} images; compare images of the reference's resolution, or pass "
        "allow_resolution_mismatch=True if you mean it")
