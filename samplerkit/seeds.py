"""Seeds: parsing seed specifications and per-seed random generators.

An image depends only on its seed, never on the batch it was drawn in (as EDM's
``StackedRandomGenerator``): every row of a batch has its own ``torch.Generator``.
"""

from __future__ import annotations

import torch

from .errors import SamplerkitError

MAX_SEEDS = 10_000_000  # 200x a 50k-image FID run; a larger list is almost surely a typo


def parse_seeds(spec: str | int) -> list[int]:
    """'0-63' -> [0..63]; '0,5,9-12' -> [0, 5, 9, 10, 11, 12]; duplicates are an error, and so is a
    specification of more than :data:`MAX_SEEDS` seeds (checked before any list is built)."""
    if isinstance(spec, int):
        return parse_seeds(str(spec))
    seeds: list[int] = []
    for part in str(spec).split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (None, None)
                lo, hi = int(lo), int(hi)
                if hi < lo:
                    raise ValueError
                if len(seeds) + hi - lo + 1 > MAX_SEEDS:
                    raise SamplerkitError(f"seed specification {spec!r} names more than {MAX_SEEDS:,} seeds")
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except (TypeError, ValueError):
            raise SamplerkitError(f"bad seed specification {spec!r}; use e.g. '0-63' or '0,5,9-12'") from None
    if any(s < 0 or s >= 2**63 for s in seeds):
        raise SamplerkitError(f"seeds must be non-negative integers < 2^63, got {spec!r}")
    if len(set(seeds)) != len(seeds):
        raise SamplerkitError(f"seed specification {spec!r} repeats a seed")
    return seeds


class StackedRandomGenerator:
    """One ``torch.Generator`` per seed (seeded with seed mod 2^32, as EDM); row i of every draw
    comes from generator i."""

    def __init__(self, device: str | torch.device, seeds: list[int]):
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(int(s) % (1 << 32)) for s in seeds]

    def randn(self, size, dtype=torch.float32, **kwargs) -> torch.Tensor:
        if size[0] != len(self.generators):
            raise SamplerkitError(f"batch of {size[0]} does not match {len(self.generators)} seeds")
        return torch.stack(
            [torch.randn(size[1:], generator=g, dtype=dtype, device=self.device, **kwargs) for g in self.generators]
        )

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(x.shape, dtype=x.dtype)

    def randint(self, high: int, size) -> torch.Tensor:
        return torch.stack(
            [torch.randint(high, size=size[1:], generator=g, device=self.device) for g in self.generators]
        )
