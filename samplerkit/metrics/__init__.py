"""Sample-quality metrics on Inception-v3 features: FID, sFID and improved precision/recall.

Features follow clean-fid's "clean" mode; what each number matches (clean-fid, the guided-diffusion
evaluator) and where it differs is set out in docs/fid.md.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import SamplerkitError
from .fid import SMALL_SAMPLE, frechet_distance, frechet_distance_sqrtm, small_sample_warning, trace_sqrt_product
from .inception import (
    ENV_INCEPTION,
    INCEPTION_FILE,
    POOL_DIM,
    SPATIAL_DIM,
    Inception,
    as_uint8,
    clean_resize,
    inception,
    inception_path,
    prepare_inception_from_fid_helper,
)
from .pr import PR_K, knn_radii, precision_recall
from .stats import (
    METRICS,
    RunningStats,
    Statistics,
    StatsBuilder,
    computed_reference,
    count_images,
    load_statistics,
    open_images,
    parse_metrics,
    reference,
    statistics_of_images,
    statistics_of_source,
    stored_reference,
)

__all__ = [
    "ENV_INCEPTION", "INCEPTION_FILE", "METRICS", "POOL_DIM", "PR_K", "SMALL_SAMPLE", "SPATIAL_DIM", "Inception",
    "RunningStats", "Statistics", "StatsBuilder", "as_uint8", "clean_resize", "computed_reference", "count_images",
    "evaluate", "frechet_distance", "frechet_distance_sqrtm", "inception", "inception_path", "knn_radii",
    "load_statistics", "open_images", "parse_metrics", "precision_recall", "prepare_inception_from_fid_helper",
    "reference", "small_sample_warning", "statistics_of_images", "statistics_of_source", "stored_reference",
    "trace_sqrt_product",
]


def evaluate(sample: Statistics, ref: Statistics, metrics: Sequence[str] = ("fid",)) -> dict[str, float]:
    """{'fid', 'sfid', 'precision', 'recall'} (as asked) of sample statistics against a reference."""
    metrics = parse_metrics(metrics)
    if sample.mu.shape != ref.mu.shape:
        raise SamplerkitError(f"the reference statistics are {ref.mu.shape[0]}-d but the sample features are "
                              f"{sample.mu.shape[0]}-d; rebuild the reference with samplerkit fid-ref")
    out: dict[str, float] = {}
    if "fid" in metrics:
        out["fid"] = frechet_distance(sample.mu, sample.sigma, ref.mu, ref.sigma)
    if "sfid" in metrics:
        if sample.mu_s is None:
            raise SamplerkitError("sFID needs spatial features of the samples; this feature extractor has none")
        if ref.mu_s is None:
            raise SamplerkitError("the reference has no spatial statistics (mu_s, sigma_s) for sFID; rebuild it "
                                  "with samplerkit fid-ref --metrics fid,sfid")
        out["sfid"] = frechet_distance(sample.mu_s, sample.sigma_s, ref.mu_s, ref.sigma_s)
    if "pr" in metrics:
        if ref.feats is None:
            raise SamplerkitError("the reference has no pool features (feats) for precision/recall; rebuild it "
                                  "with samplerkit fid-ref --metrics fid,pr")
        if sample.feats is None:
            raise SamplerkitError("precision/recall need the samples' pool features (compute them with 'pr')")
        out["precision"], out["recall"] = precision_recall(ref.feats, sample.feats)
    return out
