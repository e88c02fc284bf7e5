"""``samplerkit fid`` and ``samplerkit fid-ref``: FID, sFID and precision/recall through clean-fid's features."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import metrics as metrics_lib
from ..errors import SamplerkitError


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


def check_reference(ref: str, metrics, num_images: int | None = None, recompute: bool = False):
    """Every check of a reference that needs no network, so it fails before any feature pass.

    Returns the stored statistics when ``ref`` has what ``metrics`` need, else (source, n): the
    images to compute them from, already checked (readable, one size, enough of them)."""
    path = Path(ref)
    if not ref.startswith("builtin:") and not path.exists():
        raise SamplerkitError(f"reference not found: {ref} (give a stats .npz or an image folder/zip/npz)")
    wanted = metrics_lib.parse_metrics(metrics)
    stats = metrics_lib.stored_reference(ref, wanted, num_images, recompute)
    partial = metrics_lib.load_statistics(path) if stats is None and path.suffix == ".npz" and path.is_file() else None
    for held in (stats, None if recompute else partial):
        if held is not None:
            _check_dim(held, ref)
    if stats is not None:
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
    with _progress(n, quiet, f"reference statistics of {ref}") as bar:
        stats = metrics_lib.computed_reference(ref, source, n, features, metrics, batch, recompute, bar.update)
    _check_dim(stats, ref)
    return stats


def warn_small_sample(n_images: int, metrics) -> None:
    """One line on stderr when a Fréchet distance is computed from too few images to compare with published numbers."""
    text = metrics_lib.small_sample_warning(n_images, metrics)
    if text is not None:
        click.echo(f"warning: {text}", err=True)


@click.command(name="fid", context_settings={"max_content_width": 100})
@click.option("--images", required=True,
              help="Images to measure: a `samplerkit sample` output folder (its per-seed images), any folder, "
                   ".zip, .npz (arr_0) or builtin:shapes32.")
@click.option("--ref", required=True,
              help="Reference: stats .npz (mu, sigma; clean-fid, EDM fid-refs, fid-ref output, an ADM "
                   "evaluator reference batch) or an image folder / .zip / .npz.")
@click.option("--metrics", default="fid", show_default=True, help="Comma list of fid, sfid, pr.")
@click.option("--inception", default=None, type=click.Path(),
              help="Inception network file (inception-2015-12-05.pt) or its folder [default: $SAMPLERKIT_INCEPTION, "
                   "else the cache / a download].")
@click.option("--num-images", type=int, default=None, help="Use the first N images of --images [default: all].")
@click.option("--ref-images", type=int, default=None, help="Use the first N images of a data-source --ref.")
@click.option("--recompute-ref", is_flag=True,
              help="Ignore statistics stored in --ref and compute them from its images (arr_0).")
@click.option("--batch", type=int, default=64, show_default=True, help="Images per feature batch.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def fid(images, ref, metrics, inception, num_images, ref_images, recompute_ref, batch, device, as_json, quiet):
    """FID (and sFID, precision/recall) of a set of images against reference statistics.

    Features are clean-fid's "clean" mode: PIL bicubic resize to 299x299 and the TorchScript
    Inception-v3 of clean-fid / EDM. sFID uses mixed_6/conv[:7] (2023-d) as the ADM evaluator;
    precision/recall are Kynkäänniemi et al. 2019 with k = 3. Every input is checked (sizes,
    counts, readable files, the reference) before features are computed. Published FIDs use
    50,000 images; with fewer than 2,000 the number is biased upward (a warning says so).

    \b
    Examples:
      samplerkit fid --images out/ --ref cifar10-32x32.npz
      samplerkit fid --images samples.npz --ref VIRTUAL_imagenet64_labeled.npz --metrics fid,sfid,pr --json
      samplerkit fid --images out/ --ref data/cifar10/ --ref-images 50000
    """
    wanted = metrics_lib.parse_metrics(metrics)
    if batch < 1:
        raise SamplerkitError(f"--batch must be >= 1, got {batch}")
    source, n = metrics_lib.open_images(images, num_images)
    if "pr" in wanted and n <= metrics_lib.PR_K:
        raise SamplerkitError(f"precision/recall (k = {metrics_lib.PR_K}) need more than {metrics_lib.PR_K} images, "
                              f"{images} gives {n}")
    checked = check_reference(ref, wanted, ref_images, recompute_ref)
    features = metrics_lib.inception(inception, device, batch_size=min(batch, 64))
    warn_small_sample(n, wanted)
    reference = load_reference(ref, wanted, features, ref_images, batch, recompute_ref, quiet, checked)
    with _progress(n, quiet, "images") as bar:
        batches = (x for x, _ in source.batches(batch, limit=n))
        sample = metrics_lib.statistics_of_images(batches, features, wanted, bar.update)
    values = metrics_lib.evaluate(sample, reference, wanted)
    if as_json:
        click.echo(json.dumps({**values, "n_images": sample.n, "n_ref": reference.n, "images": images, "ref": ref}))
    else:
        for key, value in values.items():
            click.echo(f"{key:10s} {value:.6g}")
        click.echo(f"{'n_images':10s} {sample.n}")


@click.command(name="fid-ref", context_settings={"max_content_width": 100})
@click.option("--data", required=True, help="Reference images: folder, .zip, .npz (arr_0) or builtin:shapes32.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .npz.")
@click.option("--num-images", type=int, default=None, help="Use the first N images [default: all].")
@click.option("--metrics", default="fid", show_default=True,
              help="Comma list of fid, sfid, pr: sfid adds mu_s/sigma_s, pr adds the pool features (feats).")
@click.option("--inception", default=None, type=click.Path(), help="Inception network file or its folder.")
@click.option("--batch", type=int, default=64, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def fid_ref(data, out, num_images, metrics, inception, batch, device, quiet):
    """Reference statistics of a data set, written as an npz with mu and sigma (the form clean-fid
    and EDM's fid-refs use) plus n, and mu_s/sigma_s and feats when asked.

    \b
    Examples:
      samplerkit fid-ref --data cifar10-32x32.zip --out cifar10-ref.npz
      samplerkit fid-ref --data imagenet64/ --out in64-ref.npz --num-images 50000 --metrics fid,sfid,pr
    """
    wanted = metrics_lib.parse_metrics(metrics)
    if not str(out).endswith(".npz"):
        raise SamplerkitError(f"--out must end in .npz, got {out}")
    if batch < 1:
        raise SamplerkitError(f"--batch must be >= 1, got {batch}")
    source, n = metrics_lib.open_images(data, num_images)
    features = metrics_lib.inception(inception, device, batch_size=min(batch, 64))
    with _progress(n, quiet, "reference") as bar:
        batches = (x for x, _ in source.batches(batch, limit=n))
        stats = metrics_lib.statistics_of_images(batches, features, wanted, bar.update)
    stats.save(out)
    click.echo(f"wrote {out} ({stats.n} images; {', '.join(stats.metrics())})", err=True)


COMMANDS = [fid, fid_ref]
