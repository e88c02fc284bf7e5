"""Measuring images against a reference: the library behind ``samplerkit fid``, ``samplerkit fid-ref`` and the
evaluation of ``samplerkit sweep``.

Every check of the images and the reference that needs no network runs first (so a bad input fails
before any feature pass); then one read of each image feeds every network asked for (Inception, DINOv2).
:class:`FidSettings` and :func:`measure` are the ``fid`` run, :class:`ReferenceSettings` and
:func:`reference_statistics` the ``fid-ref`` run.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import distributed
from . import metrics as metrics_lib
from . import speed as speed_lib
from .errors import SamplerkitError
from .metrics import dinov2 as dinov2_lib
from .metrics import refs_edm2
from .metrics.checks import check_new_statistics_file, check_same_resolution, reference_resolution
from .metrics.stats import _npz_has_images


def _progress(total: int | None, quiet: bool, what: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc=what, disable=quiet, dynamic_ncols=True, leave=False)


def _check_dim(stats: metrics_lib.Statistics, where: str) -> None:
    if stats.mu.shape[0] != metrics_lib.POOL_DIM:
        raise SamplerkitError(f"{where} holds {stats.mu.shape[0]}-d statistics; Inception pool_3 features are "
                              f"{metrics_lib.POOL_DIM}-d (rebuild it with samplerkit fid-ref)")
    if stats.mu_s is not None and stats.mu_s.shape[0] != metrics_lib.SPATIAL_DIM:
        raise SamplerkitError(f"{where} holds {stats.mu_s.shape[0]}-d spatial statistics; sFID features are "
                              f"{metrics_lib.SPATIAL_DIM}-d (rebuild it with samplerkit fid-ref)")


def check_reference(ref: str, metrics, num_images: int | None = None, recompute: bool = False, mode: str = "",
                    network: str = ""):
    """Every check of a reference that needs no network, so it fails before any feature pass.

    Returns the stored statistics when ``ref`` has what ``metrics`` need (in feature pipeline
    ``mode`` with the network of sha256 ``network``; '' = any), else (source, n): the images to
    compute them from, already checked (readable, one size, enough of them)."""
    path = Path(ref)
    if not ref.startswith("builtin:") and not path.exists():
        raise SamplerkitError(f"reference not found: {ref} (give a stats .npz or an image folder/zip/npz)")
    wanted = metrics_lib.reference_metrics(metrics)
    stats = metrics_lib.stored_reference(ref, wanted, num_images, recompute, mode, network)
    partial = metrics_lib.load_statistics(path) if stats is None and path.suffix == ".npz" and path.is_file() else None
    for held in (stats, None if recompute else partial):
        if held is not None:
            _check_dim(held, ref)
    if stats is not None:
        if "kid" in wanted and "pr" not in wanted and len(stats.feats) < 2:
            raise SamplerkitError(f"KID needs at least 2 reference features, {ref} holds {len(stats.feats)}")
        if "pr" in wanted and len(stats.feats) <= metrics_lib.PR_K:
            raise SamplerkitError(f"precision/recall (k = {metrics_lib.PR_K}) need more than {metrics_lib.PR_K} "
                                  f"reference features, {ref} holds {len(stats.feats)}")
        return stats
    source, n = metrics_lib.open_images(ref, num_images)
    if "pr" in wanted and n <= metrics_lib.PR_K:
        raise SamplerkitError(f"precision/recall (k = {metrics_lib.PR_K}) need more than {metrics_lib.PR_K} "
                              f"reference images, {ref} gives {n}")
    return source, n


def load_reference(ref: str, metrics, features, num_images=None, batch=64, recompute=False, quiet=False,
                   checked=None) -> metrics_lib.Statistics:
    """Reference statistics for the CLI (``checked``: what :func:`check_reference` returned); computing
    them shows a progress bar with the number of images and an ETA."""
    checked = check_reference(ref, metrics, num_images, recompute) if checked is None else checked
    if isinstance(checked, metrics_lib.Statistics):
        return checked
    source, n = checked
    with _progress(n, quiet or not distributed.is_main(), f"reference statistics of {ref}") as bar:
        stats = metrics_lib.computed_reference(ref, source, n, features, metrics, batch, recompute, bar.update)
    _check_dim(stats, ref)
    return stats


def warn_small_sample(n_images: int, metrics) -> None:
    """One line on stderr when a Fréchet distance is computed from too few images to compare with published numbers."""
    text = metrics_lib.small_sample_warning(n_images, metrics)
    if text is not None:
        print(f"warning: {text}", file=sys.stderr, flush=True)


DINO = metrics_lib.multi.DINOV2_METRIC  # 'fd_dinov2'


def dinov2_extractor(weights, resize: str, device, batch: int, speed: str = "exact") -> dinov2_lib.DINOv2:
    """The FD_DINOv2 feature extractor; ``speed`` 'fast' runs its fast variant, anything else the exact one."""
    return dinov2_lib.extractor(weights, device, batch_size=min(batch, 32), resize_mode=resize,
                                speed="fast" if speed == "fast" else "exact")


def check_pkl_reference(ref: str, wanted, want_dino: bool):
    """(Inception statistics or None, DINOv2 statistics or None) of an EDM2-layout ``.pkl`` reference,
    read through the restricted unpickler; what ``wanted`` and ``want_dino`` need must be in it."""
    refs = metrics_lib.read_reference(ref)
    inc = refs_edm2.reference_for("fid", refs, ref) if wanted else None
    if inc is not None:
        _check_dim(inc, ref)
        missing = [m for m in metrics_lib.reference_metrics(wanted) if m not in inc.metrics()]
        if missing:
            raise SamplerkitError(f"{ref} has no Inception statistics for {', '.join(missing)}; rebuild it with "
                                  f"samplerkit fid-ref and metrics {','.join(metrics_lib.reference_metrics(wanted))}")
    return inc, refs_edm2.reference_for(DINO, refs, ref) if want_dino else None


def check_dinov2_reference(ref: str, num_images: int | None = None):
    """The fd_dinov2 reference before any network: stored DINOv2 statistics, else (source, n) of the
    images to compute them from; a statistics file without DINOv2 statistics is a one-line error."""
    path = Path(ref)
    suffix = path.suffix.lower()
    if suffix == ".pkl" or (suffix == ".npz" and path.is_file() and not _npz_has_images(path)):  # statistics only
        return refs_edm2.reference_for(DINO, metrics_lib.read_reference(ref), ref)
    if not ref.startswith("builtin:") and not path.exists():
        raise SamplerkitError(f"reference not found: {ref} (give a statistics .pkl/.npz or an image folder/zip/npz)")
    return metrics_lib.open_images(ref, num_images)


def check_dinov2_pipeline(dino: dinov2_lib.DINOv2, checked, force: bool) -> None:
    """Stored fd_dinov2 reference statistics of another resize mode or weights: an error before the feature pass."""
    if isinstance(checked, metrics_lib.Statistics):
        probe = metrics_lib.Statistics(np.zeros_like(checked.mu), checked.sigma, mode=dino.mode, network=dino.sha256)
        refs_edm2.check_pipeline(DINO, probe, checked, force)


def multi_statistics(source, n: int, metrics, inception, dino, batch: int, quiet: bool, what: str,
                     keep: bool = False) -> dict:
    """``{'fid': ..., 'fd_dinov2': ...}`` (as ``metrics`` asks) of ``n`` images of ``source``, each image read
    once for both networks, with a progress bar; gathered under ``torchrun``."""
    builder = metrics_lib.MultiStatsBuilder.for_metrics(metrics, inception=inception, dinov2=dino, keep_feats=keep)
    with _progress(n, quiet or not distributed.is_main(), what) as bar:
        stats = metrics_lib.statistics_of_source_multi(source, n, builder, batch, bar.update)
    for s in stats.values():
        s.resolution = int(getattr(source, "resolution", 0) or 0)
    return stats


def dinov2_intervals(sample, ref, rounds: int, seed: int, other=None) -> dict:
    """Bootstrap (and with ``other`` paired) intervals of FD_DINOv2: FID's, on the DINOv2 features."""
    got = metrics_lib.intervals(sample, ref, ["fid"], rounds, seed, other=other)
    return {DINO + k[len("fid"):]: v for k, v in got.items()}


def check_evaluation(wanted, kid_subsets: int, kid_subset_size, bootstrap_rounds: int, n_images: int) -> None:
    """Checks of the KID / bootstrap settings that need no feature pass."""
    if "kid" in wanted:
        if kid_subsets < 1:
            raise SamplerkitError(f"kid_subsets must be >= 1, got {kid_subsets}")
        if kid_subset_size is not None:
            metrics_lib.check_subset_size(n_images, n_images, kid_subset_size)
    if bootstrap_rounds < 0 or bootstrap_rounds == 1:
        raise SamplerkitError(f"bootstrap_rounds must be 0 (no intervals) or >= 2, got {bootstrap_rounds}")
    if bootstrap_rounds and not any(m in wanted for m in ("fid", "kid", DINO)):
        raise SamplerkitError("bootstrap_rounds gives intervals of fid, kid and fd_dinov2; ask for one of them in "
                              "metrics", names=("metrics",))
    if bootstrap_rounds and n_images < 3:
        raise SamplerkitError(f"a bootstrap needs at least 3 images, got {n_images}")


def check_stored_mode(checked, mode: str, force: bool) -> None:
    """Stored reference statistics of another feature mode: an error before any work (unless ``force``)."""
    if isinstance(checked, metrics_lib.Statistics):
        metrics_lib.check_same_pipeline(metrics_lib.Statistics(checked.mu[:1], checked.sigma[:1, :1], mode=mode),
                                        checked, force)


def note_reference(reference: metrics_lib.Statistics, ref: str, mode: str) -> str | None:
    """One line that says which statistics stand for the reference, where that is not the obvious."""
    if reference.origin == metrics_lib.ADM_REFERENCE:
        return (f"reference: the stored TensorFlow mu/sigma of {ref} ({metrics_lib.ADM_REFERENCE}), "
                f"used as the evaluator does in {mode} mode")
    if not reference.mode:
        return f"reference: {ref} records no feature pipeline; assumed to be {mode} mode (not checked)"
    return None


def _check_against_reference(sets, n: int, ref: str, held: tuple, allow_mismatch: bool, kid_subset_size) -> None:
    """Each opened image set (name, source, n) against the resolution of the references it is compared with
    (Inception's, DINOv2's; None where not asked), and KID's subset size against both sides' image counts."""
    for name, src, _ in sets:
        for checked in held:
            if checked is not None:
                check_same_resolution(name, src.resolution, ref, reference_resolution(checked), allow_mismatch)
    if kid_subset_size is not None:
        checked = held[0]
        n_ref = len(checked.feats) if isinstance(checked, metrics_lib.Statistics) else checked[1]
        metrics_lib.check_subset_size(n, n_ref, kid_subset_size)


def _image_sets(images, paired_with, num_images, wanted) -> list[tuple]:
    """[(name, source, n)] of --images and --paired-with, checked before any network."""
    source, n = metrics_lib.open_images(images, num_images)
    sets = [(images, source, n)]
    if paired_with is not None:
        other, n_other = metrics_lib.open_images(paired_with, num_images)
        if n_other != n:
            raise SamplerkitError(f"the two image sets differ in size (images: {n}, paired_with: {n_other}); a paired "
                                  "comparison needs the same seeds on both sides", names=("images",))
        sets.append((paired_with, other, n))
    if "pr" in wanted and n <= metrics_lib.PR_K:
        raise SamplerkitError(f"precision/recall (k = {metrics_lib.PR_K}) need more than {metrics_lib.PR_K} images, "
                              f"{images} gives {n}")
    if "is" in wanted and n < metrics_lib.IS_SPLITS:
        raise SamplerkitError(f"the Inception Score with {metrics_lib.IS_SPLITS} splits needs at least "
                              f"{metrics_lib.IS_SPLITS} images, {images} gives {n}")
    return sets


def _check_references(ref, wanted, want_dino, ref_images, recompute_ref, fid_mode, force) -> tuple:
    """(what the Inception metrics compare against, what fd_dinov2 compares against), each stored statistics,
    (source, n) of images or None when not asked; an EDM2 ``.pkl`` is read once, through the restricted unpickler."""
    if Path(ref).suffix.lower() == ".pkl":
        checked, dino_checked = check_pkl_reference(ref, wanted, want_dino)
    else:
        checked = check_reference(ref, wanted, ref_images, recompute_ref, fid_mode) if wanted else None
        dino_checked = None
        if want_dino:  # reference images already opened and checked for Inception serve DINOv2 too
            dino_checked = checked if isinstance(checked, tuple) else check_dinov2_reference(ref, ref_images)
    if checked is not None:
        check_stored_mode(checked, fid_mode, force)
    return checked, dino_checked


def _inception_for(wanted, checked, inception, dev, batch, fid_mode, speed, force):
    """(The Inception feature extractor the metrics need, its speed record); (None, None) when only
    fd_dinov2 is asked."""
    if not wanted:
        return None, None
    features = metrics_lib.inception(inception, dev, batch_size=min(batch, 64), mode=fid_mode)
    features, record = speed_lib.for_inception(features, speed, dev)
    if "is" in wanted:
        metrics_lib.require_logits(features)
    if isinstance(checked, metrics_lib.Statistics):  # stored statistics of another network: fail before the work
        metrics_lib.check_same_pipeline(_pipeline_of(features), checked, force)
    return features, record


def _references(ref, wanted, checked, dino_checked, features, dino, ref_images, batch, recompute, quiet) -> tuple:
    """(Inception reference statistics or None, DINOv2 reference statistics or None); where both must be
    computed from the reference images, one pass reads each image once for both networks."""
    both = isinstance(checked, tuple) and isinstance(dino_checked, tuple)
    if both and not str(ref).startswith("builtin:"):
        source, n = checked
        metrics = metrics_lib.reference_metrics(wanted) + (DINO,)
        got = multi_statistics(source, n, metrics, features, dino, batch, quiet, f"reference statistics of {ref}")
        _check_dim(got["fid"], ref)
        return got["fid"], got[DINO]
    reference = load_reference(ref, wanted, features, ref_images, batch, recompute, quiet, checked) if wanted else None
    dino_ref = dino_checked
    if isinstance(dino_checked, tuple):
        dino_ref = multi_statistics(*dino_checked, (DINO,), None, dino, batch, quiet,
                                    f"DINOv2 reference statistics of {ref}")[DINO]
    return reference, dino_ref


def _measure(sets, metrics, wanted, features, dino, reference, dino_ref, batch, quiet, rounds, evaluation) -> tuple:
    """(values, statistics) of each image set: one read of each image for every network; intervals with ``rounds``."""
    seed = evaluation["seed"]
    results, stats = [], []
    for name, src, n in sets:
        sample = multi_statistics(src, n, metrics, features, dino, batch, quiet, f"images {name}", keep=bool(rounds))
        values = metrics_lib.evaluate(sample["fid"], reference, wanted, **evaluation) if wanted else {}
        if dino is not None:
            values[DINO] = refs_edm2.frechet(DINO, sample[DINO], dino_ref, evaluation["force"])
        stats.append(sample)
        results.append(values)
    if rounds:
        for values, sample in zip(results, stats, strict=True):
            if wanted:
                values.update(metrics_lib.intervals(sample["fid"], reference, wanted, rounds, seed))
            if dino is not None:
                values.update(dinov2_intervals(sample[DINO], dino_ref, rounds, seed))
        if len(stats) > 1:
            paired = {}
            if wanted:
                paired.update(metrics_lib.intervals(stats[0]["fid"], reference, wanted, rounds, seed,
                                                    other=stats[1]["fid"]))
            if dino is not None:
                paired.update(dinov2_intervals(stats[0][DINO], dino_ref, rounds, seed, other=stats[1][DINO]))
            results[1].update({k: v for k, v in paired.items() if "_diff" in k})
    return results, stats


def _pipeline_of(features) -> metrics_lib.Statistics:
    """An empty Statistics carrying the features' pipeline (for the check against the reference)."""
    return metrics_lib.Statistics(np.zeros(1), np.zeros((1, 1)), mode=getattr(features, "mode", ""),
                                  network=getattr(features, "sha256", ""))




# ---------------------------------------------------------------------------------------------
# the fid run


@dataclass(frozen=True)
class FidSettings:
    """What ``samplerkit fid`` measures; every field has the command's default.

    ``images`` (and ``paired_with``, the same seeds of a second model): a sample folder, any image
    folder, .zip, .npz or ``builtin:shapes32``; ``ref``: stored statistics (.npz, EDM2 .pkl) or images.
    ``metrics``: a comma list or sequence of fid, sfid, pr, kid, is, fd_dinov2. ``seed``: of KID's subsets
    and the bootstrap. ``speed``: the feature networks' execution policy (None: the default mode).
    Checked when made (what needs no file); :func:`measure` checks the files before any network loads.
    """

    images: str
    ref: str
    paired_with: str | None = None
    metrics: str | tuple = "fid"
    fid_mode: str = "clean"
    kid_subsets: int = metrics_lib.KID_SUBSETS
    kid_subset_size: int | None = None
    bootstrap_rounds: int = 0
    force_pipeline: bool = False
    seed: int = 0
    inception: str | None = None
    dinov2_weights: str | None = None
    dinov2_resize: str = "torch"
    num_images: int | None = None
    ref_images: int | None = None
    recompute_ref: bool = False
    batch: int = 64
    device: str = "cpu"
    speed: str | None = None
    quiet: bool = False
    allow_resolution_mismatch: bool = False

    def __post_init__(self):
        if self.batch < 1:
            raise SamplerkitError(f"batch must be >= 1, got {self.batch}", names=("batch",))
        metrics_lib.split_metrics(self.metrics)  # an unknown metric fails here

    @property
    def wanted(self) -> tuple[tuple[str, ...], bool]:
        """(the Inception metrics asked, whether fd_dinov2 is asked)."""
        return metrics_lib.split_metrics(self.metrics)


@dataclass
class FidResult:
    """What a fid run measured: one dict of values per image set (``names``: --images, then --paired-with),
    the image count, and the references and pipelines they were measured against."""

    values: list[dict]
    names: list[str]
    n: int
    reference: object
    network: str
    dino: object
    dino_ref: object
    note: str | None
    speed: dict | None = None  # the execution policy of the feature networks (samplerkit.speed): mode, policy


def measure(settings: FidSettings, log=lambda text: None) -> FidResult | None:
    """The ``fid`` run: every input checked before any network loads, then one read of each image for every
    network; ``log``: where the one-line note on the reference goes. Returns the result on rank 0 (None on
    the other ranks under ``torchrun``)."""
    s = settings
    wanted, want_dino = s.wanted
    every = wanted + ((DINO,) if want_dino else ())
    sets = _image_sets(s.images, s.paired_with, s.num_images, wanted)
    n = sets[0][2]
    check_evaluation(every, s.kid_subsets, s.kid_subset_size, s.bootstrap_rounds, n)
    checked, dino_checked = _check_references(s.ref, wanted, want_dino, s.ref_images, s.recompute_ref, s.fid_mode,
                                              s.force_pipeline)
    _check_against_reference(sets, n, s.ref, (checked, dino_checked), s.allow_resolution_mismatch,
                             s.kid_subset_size if "kid" in wanted else None)
    joined_already = distributed.is_initialized()
    distributed.init(s.device)
    try:
        return _measure_run(s, sets, checked, dino_checked, log)
    finally:
        if not joined_already:
            distributed.cleanup()


def _measure_run(s: FidSettings, sets, checked, dino_checked, log) -> FidResult | None:
    """The networks, the reference statistics and the images' values of a checked fid run."""
    wanted, want_dino = s.wanted
    main, n = distributed.is_main(), sets[0][2]
    dev = distributed.local_device(s.device)
    speed = s.speed or speed_lib.default_mode()
    features, record = _inception_for(wanted, checked, s.inception, dev, s.batch, s.fid_mode, speed,
                                      s.force_pipeline)
    dino = dinov2_extractor(s.dinov2_weights, s.dinov2_resize, dev, s.batch, speed) if want_dino else None
    if dino is not None:
        check_dinov2_pipeline(dino, dino_checked, s.force_pipeline)
    if main:
        warn_small_sample(n, wanted + ((DINO,) if want_dino else ()))
    reference, dino_ref = _references(s.ref, wanted, checked, dino_checked, features, dino, s.ref_images, s.batch,
                                      s.recompute_ref, s.quiet)
    if features is not None:
        metrics_lib.check_same_pipeline(_pipeline_of(features), reference, s.force_pipeline)
    note = note_reference(reference, s.ref, s.fid_mode) if reference is not None else None
    if note and main:
        log(note)
    evaluation = dict(kid_subsets=s.kid_subsets, kid_subset_size=s.kid_subset_size, seed=s.seed,
                      force=s.force_pipeline)
    results, stats = _measure(sets, s.metrics, wanted, features, dino, reference, dino_ref, s.batch, s.quiet,
                              s.bootstrap_rounds, evaluation)
    if not main:
        return None
    policy = {"mode": speed if isinstance(speed, str) else "explicit",
              "inception": record.get("policy", record.get("mode")) if record else None,
              "dinov2": getattr(dino, "speed", None) if dino is not None else None}
    return FidResult(results, [name for name, *_ in sets], next(iter(stats[0].values())).n, reference,
                     getattr(features, "sha256", ""), dino, dino_ref, note, policy)


# ---------------------------------------------------------------------------------------------
# the fid-ref run


@dataclass(frozen=True)
class ReferenceSettings:
    """What ``samplerkit fid-ref`` writes: the statistics of ``data`` (its first ``num_images``) for ``metrics``
    into ``out`` (.npz: Inception statistics; .pkl: EDM2's layout, needed for fd_dinov2). An existing ``out``
    is refused unless ``overwrite``. Checked when made."""

    data: str
    out: str
    num_images: int | None = None
    metrics: str | tuple = "fid"
    fid_mode: str = "clean"
    inception: str | None = None
    dinov2_weights: str | None = None
    dinov2_resize: str = "torch"
    batch: int = 64
    device: str = "cpu"
    quiet: bool = False
    overwrite: bool = False

    def __post_init__(self):
        suffix = Path(self.out).suffix.lower()
        if suffix not in (".npz", ".pkl"):
            raise SamplerkitError(f"out must end in .npz or .pkl, got {self.out}", names=("out",))
        if self.wanted[1] and suffix != ".pkl":
            raise SamplerkitError(f"fd_dinov2 statistics are written in EDM2's .pkl layout; give out a .pkl name, "
                                  f"not {self.out}", names=("out",))
        check_new_statistics_file(self.out, self.overwrite)
        if self.batch < 1:
            raise SamplerkitError(f"batch must be >= 1, got {self.batch}", names=("batch",))

    @property
    def wanted(self) -> tuple[tuple[str, ...], bool]:
        """(the Inception metrics the file holds statistics for, whether it holds DINOv2's)."""
        wanted, want_dino = metrics_lib.split_metrics(self.metrics)
        return (metrics_lib.reference_metrics(wanted) if wanted or not want_dino else ()), want_dino


def reference_statistics(settings: ReferenceSettings) -> dict | None:
    """The ``fid-ref`` run: ``{'fid': Statistics, 'fd_dinov2': ...}`` of the data, written to ``settings.out``
    by rank 0 (which returns them; the other ranks return None). Both networks read each image once."""
    s = settings
    wanted, want_dino = s.wanted
    source, n = metrics_lib.open_images(s.data, s.num_images)
    joined_already = distributed.is_initialized()
    distributed.init(s.device)
    try:
        dev = distributed.local_device(s.device)
        features = (metrics_lib.inception(s.inception, dev, batch_size=min(s.batch, 64), mode=s.fid_mode)
                    if wanted else None)
        dino = dinov2_extractor(s.dinov2_weights, s.dinov2_resize, dev, s.batch) if want_dino else None
        stats = multi_statistics(source, n, wanted + ((DINO,) if want_dino else ()), features, dino, s.batch,
                                 s.quiet, "reference")
        if not distributed.is_main():
            return None
        if Path(s.out).suffix.lower() == ".pkl":
            metrics_lib.save_reference(stats, s.out)
        else:
            stats["fid"].save(s.out)
        return stats
    finally:
        if not joined_already:
            distributed.cleanup()
