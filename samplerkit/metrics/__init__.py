"""Sample-quality metrics on Inception-v3 features: FID, sFID, improved precision/recall, KID and the
Inception Score, all from one feature pass, with bootstrap intervals for FID and KID.

Features follow clean-fid's "clean" or "legacy_tensorflow" mode; what each number matches (clean-fid,
the guided-diffusion evaluator) and where it differs is set out in docs/fid.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import SamplerkitError
from . import dinov2, multi, refs_edm2  # FD_DINOv2: DINOv2 features, EDM2 reference files, one pass
from .bootstrap import BOOTSTRAP_ALPHA, Interval, bootstrap, paired_bootstrap, resampler
from .dinov2 import ENV_DINOV2, DINOv2, dinov2_features, dinov2_path
from .fid import SMALL_SAMPLE, frechet_distance, frechet_distance_sqrtm, small_sample_warning, trace_sqrt_product
from .inception import (
    ENV_INCEPTION,
    INCEPTION_FILE,
    LOGITS_DIM,
    MODES,
    POOL_DIM,
    SPATIAL_DIM,
    Features,
    Inception,
    as_uint8,
    check_mode,
    clean_resize,
    inception_path,
    legacy_tensorflow_resize,
    network_sha256,
    prepare_inception_from_fid_helper,
    require_logits,
)
from .is_ import IS_SPLITS, inception_score
from .kid import KID_SUBSET_SIZE, KID_SUBSETS, check_subset_size, kernel_inception_distance, polynomial_kernel
from .multi import MultiStatsBuilder, split_metrics, statistics_of_images_multi, statistics_of_source_multi
from .pr import PR_K, knn_radii, precision_recall
from .refs_edm2 import EDM2_REFERENCES, edm2_reference, read_reference, save_reference
from .stats import (
    ADM_REFERENCE,
    METRICS,
    RunningStats,
    Statistics,
    StatsBuilder,
    block,
    check_same_pipeline,
    computed_reference,
    count_images,
    load_statistics,
    open_images,
    parse_metrics,
    reference,
    reference_metrics,
    statistics_of_images,
    statistics_of_source,
    statistics_of_source_block,
    stored_reference,
)

__all__ = [
    "ADM_REFERENCE", "BOOTSTRAP_ALPHA", "ENV_INCEPTION", "INCEPTION_FILE", "IS_SPLITS", "KID_SUBSETS",
    "KID_SUBSET_SIZE", "LOGITS_DIM", "METRICS", "MODES", "POOL_DIM", "PR_K", "SMALL_SAMPLE", "SPATIAL_DIM",
    "Features", "Inception", "Interval", "RunningStats", "Statistics", "StatsBuilder", "as_uint8", "block",
    "bootstrap", "check_mode", "check_same_pipeline", "check_subset_size", "clean_resize", "computed_reference",
    "count_images", "evaluate", "frechet_distance", "frechet_distance_sqrtm", "inception", "inception_path",
    "inception_score", "intervals", "kernel_inception_distance", "knn_radii", "legacy_tensorflow_resize",
    "load_statistics", "network_sha256", "open_images", "paired_bootstrap", "parse_metrics", "polynomial_kernel",
    "precision_recall", "prepare_inception_from_fid_helper", "reference", "reference_metrics", "require_logits",
    "resampler", "small_sample_warning", "statistics_of_images", "statistics_of_source", "statistics_of_source_block",
    "stored_reference", "trace_sqrt_product",
    "DINOv2", "EDM2_REFERENCES", "ENV_DINOV2", "MultiStatsBuilder", "dinov2", "dinov2_features", "dinov2_path", "multi",
    "edm2_reference", "read_reference", "refs_edm2", "save_reference", "split_metrics",
    "statistics_of_images_multi", "statistics_of_source_multi",
]

BOOTSTRAP_METRICS = ("fid", "kid")


def evaluate(sample: Statistics, ref: Statistics, metrics: Sequence[str] = ("fid",), *,
             kid_subsets: int = KID_SUBSETS, kid_subset_size: int | None = None, is_splits: int = IS_SPLITS,
             seed: int = 0, force: bool = False) -> dict[str, float]:
    """{'fid', 'sfid', 'precision', 'recall', 'kid', 'kid_std', 'is', 'is_std'} (as asked) of sample
    statistics against a reference. Statistics of different pipelines are an error unless ``force``
    (:func:`check_same_pipeline`); ``seed`` draws KID's subsets."""
    metrics = parse_metrics(metrics)
    if sample.mu.shape != ref.mu.shape:
        raise SamplerkitError(f"the reference statistics are {ref.mu.shape[0]}-d but the sample features are "
                              f"{sample.mu.shape[0]}-d; rebuild the reference with samplerkit fid-ref")
    check_same_pipeline(sample, ref, force)
    out: dict[str, float] = {}
    if "fid" in metrics:
        out["fid"] = frechet_distance(sample.mu, sample.sigma, ref.mu, ref.sigma)
    if "sfid" in metrics:
        if sample.mu_s is None:
            raise SamplerkitError("sFID needs spatial features of the samples; this feature extractor has none")
        if ref.mu_s is None:
            raise SamplerkitError("the reference has no spatial statistics (mu_s, sigma_s) for sFID; rebuild it "
                                  "with metrics fid,sfid")
        out["sfid"] = frechet_distance(sample.mu_s, sample.sigma_s, ref.mu_s, ref.sigma_s)
    for metric in ("pr", "kid"):
        if metric not in metrics:
            continue
        if ref.feats is None:
            raise SamplerkitError(f"the reference has no pool features (feats) for {metric}; rebuild it "
                                  f"with metrics fid,{metric}")
        if sample.feats is None:
            raise SamplerkitError(f"{metric} needs the samples' pool features (compute them with '{metric}')")
        if metric == "pr":
            out["precision"], out["recall"] = precision_recall(ref.feats, sample.feats)
        else:  # reference first, as clean-fid's compute_kid against reference features
            out["kid"], out["kid_std"] = kernel_inception_distance(ref.feats, sample.feats, kid_subsets,
                                                                   kid_subset_size, seed)
    if "is" in metrics:
        if sample.logits is None:
            raise SamplerkitError("the Inception Score needs the samples' logits (compute them with 'is')")
        out["is"], out["is_std"] = inception_score(sample.logits, is_splits)
    return out


def intervals(sample: Statistics, ref: Statistics, metrics: Sequence[str], rounds: int, seed: int = 0,
              other: Statistics | None = None, alpha: float = BOOTSTRAP_ALPHA) -> dict[str, float]:
    """Bootstrap percentile intervals of FID and KID (those of ``metrics``) as ``{m}_lo``, ``{m}_hi``;
    with ``other`` (images from the same seeds, in the same order) also the paired difference
    other - sample: ``{m}_diff``, ``{m}_diff_lo``, ``{m}_diff_hi``. ``rounds`` resamples, ``seed`` draws them."""
    out: dict[str, float] = {}
    wanted = [m for m in parse_metrics(metrics) if m in BOOTSTRAP_METRICS]
    if other is not None and len(other.feats) != len(sample.feats):
        raise SamplerkitError(f"a paired comparison needs the same seeds on both sides, got {len(sample.feats)} "
                              f"and {len(other.feats)} images")
    for m in wanted:
        stat = resampler(m, sample, ref)
        ci = bootstrap(stat, len(sample.feats), rounds, seed, alpha)
        out[f"{m}_lo"], out[f"{m}_hi"] = ci.low, ci.high
        if other is not None:
            stat_b = resampler(m, other, ref)
            identity = np.arange(len(sample.feats))
            ci = paired_bootstrap(stat, stat_b, len(sample.feats), rounds, seed, alpha)
            out[f"{m}_diff"] = stat_b(identity) - stat(identity)
            out[f"{m}_diff_lo"], out[f"{m}_diff_hi"] = ci.low, ci.high
    return out
