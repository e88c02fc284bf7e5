"""``samplerkit fid`` and ``samplerkit fid-ref``: FID, sFID, precision/recall, KID and the Inception
Score through clean-fid's features (clean or legacy-tensorflow mode), with bootstrap intervals."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import click
import numpy as np

from .. import distributed
from .. import metrics as metrics_lib
from .. import speed as speed_lib
from ..errors import SamplerkitError
from ..metrics import dinov2 as dinov2_lib
from ..metrics import refs_edm2
from ..metrics.checks import check_new_statistics_file, check_same_resolution, reference_resolution
from ..metrics.stats import _npz_has_images
from ._options import device_option, hidden_alias, speed_option


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
        click.echo(f"warning: {text}", err=True)


def evaluation_options(fn):
    """The options of `fid` and `sweep` that choose the feature pipeline and the KID / bootstrap settings."""

    @click.option("--fid-mode", "fid_mode", type=click.Choice(["clean", "legacy-tensorflow"]), default="clean",
                  show_default=True,
                  help="Feature pipeline: clean-fid's clean (PIL bicubic) or legacy-tensorflow (the original "
                       "graph's bilinear resize, as EDM's fid.py and the ADM evaluator; compare with papers in it).")
    @click.option("--kid-subsets", type=int, default=metrics_lib.KID_SUBSETS, show_default=True,
                  help="KID: number of random subsets (clean-fid's compute_kid).")
    @click.option("--kid-subset-size", type=int, default=None,
                  help="KID: images per subset [default: min(1000, images, reference images)].")
    @click.option("--bootstrap", "bootstrap_rounds", type=int, default=0, show_default=True,
                  help="Bootstrap rounds for intervals of FID, KID and FD_DINOv2 (resampling the images; 0: none).")
    @click.option("--force-pipeline", is_flag=True,
                  help="Compare statistics of different modes or networks (Inception, DINOv2) anyway.")
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


DINO = metrics_lib.multi.DINOV2_METRIC  # 'fd_dinov2'


def dinov2_options(fn):
    """``--dinov2`` (the weights) and ``--dinov2-resize`` (EDM2's preprocessing) of `fid`, `fid-ref` and `sweep`."""

    @click.option("--dinov2", "dinov2_weights", default=None, type=click.Path(),
                  help=f"fd_dinov2: DINOv2 ViT-L/14 weights ({dinov2_lib.DINOV2_FILE}) or their folder "
                       f"[default: ${dinov2_lib.ENV_DINOV2}, else the cache / a download].")
    @click.option("--dinov2-resize", "dinov2_resize", type=click.Choice(dinov2_lib.RESIZE_MODES), default="torch",
                  show_default=True,
                  help="fd_dinov2 resize to 224 px: torch (EDM2's default, bicubic with antialias) or pil "
                       "(PIL bicubic, dgm-eval's).")
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


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
                                  f"samplerkit fid-ref --metrics {','.join(metrics_lib.reference_metrics(wanted))}")
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
            raise SamplerkitError(f"--kid-subsets must be >= 1, got {kid_subsets}")
        if kid_subset_size is not None:
            metrics_lib.check_subset_size(n_images, n_images, kid_subset_size)
    if bootstrap_rounds < 0 or bootstrap_rounds == 1:
        raise SamplerkitError(f"--bootstrap needs at least 2 rounds (0: no intervals), got {bootstrap_rounds}")
    if bootstrap_rounds and not any(m in wanted for m in ("fid", "kid", DINO)):
        raise SamplerkitError("--bootstrap gives intervals of fid, kid and fd_dinov2; ask for one of them in --metrics")
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


def _format(values: dict, key: str) -> str:
    v = values[key]
    text = f"{v:.6g}"
    if f"{key}_std" in values:
        text += f" ± {values[f'{key}_std']:.3g}"
    if f"{key}_lo" in values:
        text += f"  [{values[f'{key}_lo']:.6g}, {values[f'{key}_hi']:.6g}]"
    return text


@click.command(name="fid", context_settings={"max_content_width": 100})
@click.option("--images", required=True,
              help="Images to measure: a `samplerkit sample` output folder (its per-seed images), any folder, "
                   ".zip, .npz (arr_0) or builtin:shapes32.")
@click.option("--ref", required=True,
              help="Reference: stats .npz (mu, sigma; clean-fid, EDM fid-refs, fid-ref output, an ADM "
                   "evaluator reference batch), an EDM2 statistics .pkl (fid and fd_dinov2; EDM2's published "
                   "dataset-refs or fid-ref --out X.pkl) or an image folder / .zip / .npz.")
@click.option("--paired-with", "paired_with", default=None,
              help="Images of a second model or sampler from the same seeds, in the same order: both are "
                   "measured and, with --bootstrap, the interval of the paired difference (these - --images).")
@click.option("--metrics", default="fid", show_default=True, help="Comma list of fid, sfid, pr, kid, is, fd_dinov2.")
@evaluation_options
@click.option("--eval-seed", "seed", type=int, default=0, show_default=True,
              help="Seed of KID's subsets and the bootstrap.")
@hidden_alias("--seed", "old_seed", type=int)
@click.option("--inception", default=None, type=click.Path(),
              help="Inception network file (inception-2015-12-05.pt) or its folder [default: $SAMPLERKIT_INCEPTION, "
                   "else the cache / a download].")
@dinov2_options
@click.option("--num-images", type=int, default=None, help="Use the first N images of --images [default: all].")
@click.option("--ref-images", type=int, default=None, help="Use the first N images of a data-source --ref.")
@click.option("--recompute-ref", is_flag=True,
              help="Ignore statistics stored in --ref and compute them from its images (arr_0).")
@click.option("--batch", type=int, default=64, show_default=True, help="Images per feature batch.")
@device_option()
@speed_option()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--allow-resolution-mismatch", is_flag=True,
              help="Compare images whose resolution differs from the reference's (refused otherwise).")
def fid(images, ref, paired_with, metrics, fid_mode, kid_subsets, kid_subset_size, bootstrap_rounds, force_pipeline,
        seed, old_seed, inception, dinov2_weights, dinov2_resize, num_images, ref_images, recompute_ref, batch, device,
        speed, as_json, quiet, allow_resolution_mismatch):
    """FID (and sFID, precision/recall, KID, Inception Score, FD_DINOv2) of a set of images against a reference.

    Features are clean-fid's "clean" mode by default (PIL bicubic resize to 299x299) or, with
    --fid-mode legacy-tensorflow, the original graph's bilinear resize (the scale of EDM's and the
    ADM evaluator's published FIDs); the network is the TorchScript Inception-v3 of clean-fid / EDM.
    One feature pass serves every metric. sFID uses mixed_6/conv[:7] (2023-d) as the ADM evaluator;
    precision/recall are Kynkäänniemi et al. 2019 with k = 3; KID is clean-fid's compute_kid (± its
    std over subsets); IS uses the 1008 logits with 10 splits (± std over splits). fd_dinov2 is the
    Fréchet distance of DINOv2 ViT-L/14 features as EDM2 computes it (--dinov2-resize torch, its
    default, or pil), from the same read of each image; its reference is an EDM2-layout .pkl (EDM2's
    published ones, or fid-ref --out X.pkl) or images. Statistics files record the pipeline and the
    network's sha256, and mixing them is an error. Every input is checked before features are
    computed. Published FIDs use 50,000 images; with fewer than 2,000 the number is biased upward
    (a warning says so; KID is unbiased). Under torchrun the images are split across the processes
    and the statistics gathered exactly.

    \b
    Examples:
      samplerkit fid --images out/ --ref cifar10-32x32.npz
      samplerkit fid --images samples.npz --ref VIRTUAL_imagenet64_labeled.npz --fid-mode legacy-tensorflow \\
          --metrics fid,sfid,pr,is --json
      samplerkit fid --images adm/ --paired-with adm-ip/ --ref data/ --metrics fid,kid --bootstrap 1000
      samplerkit fid --images edm2-xs/ --ref img512.pkl --metrics fid,fd_dinov2 --fid-mode legacy-tensorflow
      torchrun --nproc_per_node 8 -m samplerkit fid --images out/ --ref ref.npz --metrics fid,pr,kid --device cuda
    """
    seed = seed if old_seed is None else old_seed  # --seed: the spelling before 0.x, hidden
    wanted, want_dino = metrics_lib.split_metrics(metrics)
    if batch < 1:
        raise SamplerkitError(f"--batch must be >= 1, got {batch}")
    sets = _image_sets(images, paired_with, num_images, wanted)
    n = sets[0][2]
    check_evaluation(wanted + ((DINO,) if want_dino else ()), kid_subsets, kid_subset_size, bootstrap_rounds, n)
    checked, dino_checked = _check_references(ref, wanted, want_dino, ref_images, recompute_ref, fid_mode,
                                              force_pipeline)
    _check_against_reference(sets, n, ref, (checked, dino_checked), allow_resolution_mismatch,
                             kid_subset_size if "kid" in wanted else None)
    joined_already = distributed.is_initialized()
    distributed.init(device)
    try:
        main = distributed.is_main()
        dev = distributed.local_device(device)
        speed = speed or speed_lib.default_mode()
        features = _inception_for(wanted, checked, inception, dev, batch, fid_mode, speed, force_pipeline)
        dino = dinov2_extractor(dinov2_weights, dinov2_resize, dev, batch, speed) if want_dino else None
        if dino is not None:
            check_dinov2_pipeline(dino, dino_checked, force_pipeline)
        if main:
            warn_small_sample(n, wanted + ((DINO,) if want_dino else ()))
        reference, dino_ref = _references(ref, wanted, checked, dino_checked, features, dino, ref_images, batch,
                                          recompute_ref, quiet)
        if features is not None:
            metrics_lib.check_same_pipeline(_pipeline_of(features), reference, force_pipeline)
        note = note_reference(reference, ref, fid_mode) if reference is not None else None
        if note and main and not as_json:
            click.echo(note, err=True)
        results, stats = _measure(sets, metrics, wanted, features, dino, reference, dino_ref, batch, quiet,
                                  bootstrap_rounds, dict(kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
                                                         seed=seed, force=force_pipeline))
        if main:
            n_done = next(iter(stats[0].values())).n
            _report(results, sets, n_done, reference, ref, fid_mode, getattr(features, "sha256", ""),
                    bootstrap_rounds, seed, note, as_json, dino, dino_ref)
    finally:
        if not joined_already:
            distributed.cleanup()


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
            raise SamplerkitError(f"--paired-with gives {n_other} images but --images gives {n}; a paired comparison "
                                  "needs the same seeds on both sides")
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
    """The Inception feature extractor the metrics need (None when only fd_dinov2 is asked)."""
    if not wanted:
        return None
    features = metrics_lib.inception(inception, dev, batch_size=min(batch, 64), mode=fid_mode)
    features, _ = speed_lib.for_inception(features, speed, dev)
    if "is" in wanted:
        metrics_lib.require_logits(features)
    if isinstance(checked, metrics_lib.Statistics):  # stored statistics of another network: fail before the work
        metrics_lib.check_same_pipeline(_pipeline_of(features), checked, force)
    return features


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


def _report(results, sets, n, reference, ref, mode, network, rounds, seed, note, as_json, dino=None,
            dino_ref=None) -> None:
    if as_json:
        common = {"n_images": n, "ref": ref}
        if reference is not None:
            common.update(n_ref=reference.n, mode=mode, network=network, reference_mode=reference.mode,
                          reference_origin=reference.origin or None)
        if dino is not None:
            common.update(dinov2_mode=dino.mode, dinov2_network=dino.sha256, n_ref_dinov2=dino_ref.n,
                          dinov2_reference_origin=dino_ref.origin or None)
        if rounds:
            common.update(bootstrap_rounds=rounds, seed=seed)
        if len(results) == 1:
            click.echo(json.dumps({**results[0], **common, "images": sets[0][0]}))
        else:
            rows = [dict(r, images=s[0]) for r, s in zip(results, sets, strict=True)]
            click.echo(json.dumps({**common, "images": sets[0][0], "paired_with": sets[1][0], "results": rows}))
        return
    for values, (name, *_) in zip(results, sets, strict=True):
        if len(results) > 1:
            click.echo(f"# {name}")
        shown = [k for k in values if not k.endswith(("_std", "_lo", "_hi")) and "_diff" not in k]
        for key in shown:
            click.echo(f"{key:10s} {_format(values, key)}")
        for key in [k for k in values if k.endswith("_diff")]:
            m = key[: -len("_diff")]
            click.echo(f"{m + ' diff':10s} {values[key]:+.6g}  [{values[key + '_lo']:+.6g}, {values[key + '_hi']:+.6g}]"
                       f"  ({name} - {sets[0][0]}, paired over the same seeds)")
        click.echo(f"{'n_images':10s} {n}")
    extra = f"; intervals: {rounds} bootstrap rounds, 95 %, seed {seed}" if rounds else ""
    if reference is not None:
        click.echo(f"{'pipeline':10s} {mode} mode, network sha256 {network[:12]}…{extra}")
        extra = ""
    if dino is not None:
        click.echo(f"{'dinov2':10s} {dino.mode} (DINOv2 ViT-L/14), weights sha256 {dino.sha256[:12]}…{extra}")


@click.command(name="fid-ref", context_settings={"max_content_width": 100})
@click.option("--data", required=True, help="Reference images: folder, .zip, .npz (arr_0) or builtin:shapes32.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Output: .npz (Inception statistics) or .pkl (EDM2's layout, needed for fd_dinov2).")
@click.option("--num-images", type=int, default=None, help="Use the first N images [default: all].")
@click.option("--metrics", default="fid", show_default=True,
              help="Comma list of fid, sfid, pr, kid, fd_dinov2: sfid adds mu_s/sigma_s, pr and kid the pool features "
                   "(feats), fd_dinov2 the DINOv2 statistics (.pkl only).")
@click.option("--fid-mode", "fid_mode", type=click.Choice(["clean", "legacy-tensorflow"]), default="clean",
              show_default=True, help="Feature pipeline (recorded in the file with the network's sha256).")
@click.option("--inception", default=None, type=click.Path(), help="Inception network file or its folder.")
@dinov2_options
@click.option("--batch", type=int, default=64, show_default=True)
@device_option()
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file (refused otherwise).")
def fid_ref(data, out, num_images, metrics, fid_mode, inception, dinov2_weights, dinov2_resize, batch, device, quiet,
            overwrite):
    """Reference statistics of a data set, written as an npz with mu and sigma (the form clean-fid
    and EDM's fid-refs use) plus n, the feature mode and the network's sha256, and mu_s/sigma_s and
    feats when asked; or, with --out NAME.pkl, as EDM2's statistics pickle ({'num_images', 'fid':
    {mu, sigma}, 'fd_dinov2': {mu, sigma}}, which EDM2's calculate_metrics.py reads; each entry also
    records its pipeline). fd_dinov2 statistics are written to a .pkl only. Both networks read each
    image once.

    \b
    Examples:
      samplerkit fid-ref --data cifar10-32x32.zip --out cifar10-ref.npz
      samplerkit fid-ref --data imagenet64/ --out in64-ref.npz --num-images 50000 --metrics fid,sfid,pr,kid
      samplerkit fid-ref --data cifar10-train.zip --out cifar10-tf.npz --fid-mode legacy-tensorflow
      samplerkit fid-ref --data img512.zip --out img512.pkl --metrics fid,fd_dinov2 --fid-mode legacy-tensorflow
    """
    wanted, want_dino = metrics_lib.split_metrics(metrics)
    wanted = metrics_lib.reference_metrics(wanted) if wanted or not want_dino else ()
    suffix = Path(out).suffix.lower()
    if suffix not in (".npz", ".pkl"):
        raise SamplerkitError(f"--out must end in .npz or .pkl, got {out}")
    if want_dino and suffix != ".pkl":
        raise SamplerkitError(f"fd_dinov2 statistics are written in EDM2's .pkl layout; give --out a .pkl name, "
                              f"not {out}")
    check_new_statistics_file(out, overwrite)
    if batch < 1:
        raise SamplerkitError(f"--batch must be >= 1, got {batch}")
    source, n = metrics_lib.open_images(data, num_images)
    joined_already = distributed.is_initialized()
    distributed.init(device)
    try:
        dev = distributed.local_device(device)
        features = (metrics_lib.inception(inception, dev, batch_size=min(batch, 64), mode=fid_mode)
                    if wanted else None)
        dino = dinov2_extractor(dinov2_weights, dinov2_resize, dev, batch) if want_dino else None
        stats = multi_statistics(source, n, wanted + ((DINO,) if want_dino else ()), features, dino, batch, quiet,
                                 "reference")
        if distributed.is_main():
            _write_reference(stats, out, suffix)
    finally:
        if not joined_already:
            distributed.cleanup()


def _write_reference(stats: dict, out, suffix: str) -> None:
    if suffix == ".pkl":
        metrics_lib.save_reference(stats, out)
    else:
        stats["fid"].save(out)
    held = "; ".join(f"{m}: {', '.join(s.metrics()) if m == 'fid' else 'mu, sigma'}, {s.pipeline()}"
                     for m, s in stats.items())
    click.echo(f"wrote {out} ({next(iter(stats.values())).n} images; {held})", err=True)


COMMANDS = [fid, fid_ref]
