"""Inception and DINOv2 statistics from one pass over the images: each image is read (a PNG decoded) once
and handed to both feature extractors, as EDM2's ``calculate_stats_for_iterable`` feeds every detector
from one batch.

Statistics come back by EDM2's metric names: ``'fid'`` holds the Inception statistics (with whatever
the Inception metrics asked -- spatial statistics for sFID, pool features for P/R and KID, logits
for IS), ``'fd_dinov2'`` the DINOv2 ones; :func:`samplerkit.metrics.refs_edm2.save_reference` writes them
as EDM2's ``.pkl``, :func:`samplerkit.metrics.refs_edm2.metrics_from_stats` compares them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..errors import SamplerkitError
from .dinov2 import as_nchw_uint8
from .stats import Statistics, StatsBuilder, feed_source_block, open_images, parse_metrics

DINOV2_METRIC = "fd_dinov2"


def split_metrics(metrics: str | Sequence[str]) -> tuple[tuple[str, ...], bool]:
    """'fid,kid,fd_dinov2' -> (('fid', 'kid'), True): the Inception metrics (canonical order; empty when
    only FD_DINOv2 is asked) and whether FD_DINOv2 is asked. Unknown names are an error."""
    items = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    names = [m.strip().lower() for m in items if m.strip()]
    dino = DINOV2_METRIC in names
    rest = [m for m in names if m != DINOV2_METRIC]
    if not rest and not dino:
        raise SamplerkitError("no metric asked; use a comma list of fid, sfid, pr, kid, is, fd_dinov2")
    return (parse_metrics(rest) if rest else ()), dino


class MultiStatsBuilder:
    """One :class:`~samplerkit.metrics.StatsBuilder` per feature extractor, fed the same images: ``add`` converts
    a batch to uint8 once and gives it to each. ``builders``: metric name ('fid', 'fd_dinov2') -> builder."""

    def __init__(self, builders: Mapping[str, StatsBuilder]):
        if not builders:
            raise SamplerkitError("statistics need at least one feature extractor")
        self.builders = dict(builders)

    @classmethod
    def for_metrics(cls, metrics: str | Sequence[str], inception=None, dinov2=None,
                    keep_feats: bool = False) -> MultiStatsBuilder:
        """The builders ``metrics`` (as :func:`split_metrics` reads them) need: the Inception one with
        ``inception`` (an :class:`~samplerkit.metrics.Inception` or feature callable), the DINOv2 one with
        ``dinov2`` (a :class:`~samplerkit.metrics.dinov2.DINOv2`); ``keep_feats`` keeps the features of
        each (bootstrap intervals)."""
        wanted, dino = split_metrics(metrics)
        builders: dict[str, StatsBuilder] = {}
        if wanted:
            if inception is None:
                raise SamplerkitError(f"{', '.join(wanted)} need an Inception feature extractor")
            builders["fid"] = StatsBuilder(inception, wanted, keep_feats)
        if dino:
            if dinov2 is None:
                raise SamplerkitError("fd_dinov2 needs a DINOv2 feature extractor "
                                      "(samplerkit.metrics.dinov2.extractor())")
            builders[DINOV2_METRIC] = StatsBuilder(dinov2, ("fid",), keep_feats)
        return cls(builders)

    def add(self, images) -> None:
        """Add uint8 images ([N, H, W, 3], or an [N, 3, H, W] tensor as ``sk.decode`` returns) or [-1, 1] NCHW
        float images, converted once to the uint8 NHWC array both extractors take."""
        images = as_nchw_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
        for builder in self.builders.values():
            builder.add(images)

    @property
    def n(self) -> int:
        return next(iter(self.builders.values())).n

    def gather(self) -> None:
        """Under ``torchrun``: every builder gathers every process's share (see ``StatsBuilder.gather``)."""
        for builder in self.builders.values():
            builder.gather()

    def result(self) -> dict[str, Statistics]:
        return {name: builder.result() for name, builder in self.builders.items()}


def statistics_of_source_multi(source, n: int, builder: MultiStatsBuilder, batch_size: int = 64,
                               progress: Callable[[int], None] | None = None) -> dict[str, Statistics]:
    """Statistics of the first ``n`` images of an opened source, each image read once for every extractor
    of ``builder``; under ``torchrun`` each process reads its block and the statistics are gathered."""
    feed_source_block(source, n, builder, batch_size, progress)
    return builder.result()


def statistics_of_images_multi(src: str | Path, metrics: str | Sequence[str] = ("fid", DINOV2_METRIC), *,
                               inception=None, dinov2=None, num_images: int | None = None, batch_size: int = 64,
                               keep_feats: bool = False,
                               progress: Callable[[int], None] | None = None) -> dict[str, Statistics]:
    """``{'fid': ..., 'fd_dinov2': ...}`` (as ``metrics`` asks) of the first ``num_images`` (default all) images of a
    data source (folder, zip, npz, builtin:...), from one pass over its images."""
    builder = MultiStatsBuilder.for_metrics(metrics, inception, dinov2, keep_feats)
    source, n = open_images(src, num_images)
    return statistics_of_source_multi(source, n, builder, batch_size, progress)
