"""``samplerkit fid`` and ``samplerkit fid-ref``: FID, sFID and precision/recall through clean-fid's features."""

from __future__ import annotations

import json

import click

from .. import fid as metrics_lib
from ..errors import SamplerkitError


def _progress(total: int | None, quiet: bool, what: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc=what, disable=quiet, dynamic_ncols=True, leave=False)


def _check_dim(stats: metrics_lib.Statistics, where: str, dim: int = metrics_lib.POOL_DIM) -> None:
    if stats.mu.shape[0] != dim:
        raise SamplerkitError(f"{where} holds {stats.mu.shape[0]}-d statistics; Inception pool_3 features are "
                              f"{dim}-d (rebuild it with samplerkit fid-ref)")
    if stats.mu_s is not None and stats.mu_s.shape[0] != metrics_lib.SPATIAL_DIM:
        raise SamplerkitError(f"{where} holds {stats.mu_s.shape[0]}-d spatial statistics; sFID features are "
                              f"{metrics_lib.SPATIAL_DIM}-d (rebuild it with samplerkit fid-ref)")


def check_reference(ref: str, recompute: bool = False) -> None:
    """Fail early (before any network runs) on a missing reference or stats of the wrong size."""
    from pathlib import Path

    path = Path(ref)
    if path.suffix == ".npz" and path.is_file():
        stored = metrics_lib.load_statistics(path)
        if stored is not None and not recompute:
            _check_dim(stored, ref)
    elif not ref.startswith("builtin:") and not path.exists():
        raise SamplerkitError(f"reference not found: {ref} (give a stats .npz or an image folder/zip/npz)")


def load_reference(ref: str, metrics, features, num_images=None, batch=64, recompute=False, quiet=False):
    """Reference statistics for the CLI: a stats npz, an evaluator batch or a data source."""
    check_reference(ref, recompute)
    with _progress(num_images, quiet, "reference") as bar:
        stats = metrics_lib.reference(ref, features, metrics, num_images, batch, recompute, bar.update)
    _check_dim(stats, ref)
    return stats


@click.command(name="fid", context_settings={"max_content_width": 100})
@click.option("--images", required=True, help="Images to measure: folder, .zip, .npz (arr_0) or builtin:shapes32.")
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
    precision/recall are Kynkaanniemi et al. 2019 with k = 3.

    \b
    Examples:
      samplerkit fid --images out/ --ref cifar10-32x32.npz
      samplerkit fid --images samples.npz --ref VIRTUAL_imagenet64_labeled.npz --metrics fid,sfid,pr --json
      samplerkit fid --images out/ --ref data/cifar10/ --ref-images 50000
    """
    from ..data import open_source

    wanted = metrics_lib.parse_metrics(metrics)
    if batch < 1:
        raise SamplerkitError(f"--batch must be >= 1, got {batch}")
    source = open_source(images)
    n = metrics_lib.count_images(source, num_images)
    if "pr" in wanted and n <= metrics_lib.PR_K:
        raise SamplerkitError(f"precision/recall (k = {metrics_lib.PR_K}) need more than {metrics_lib.PR_K} images, "
                              f"{images} gives {n}")
    check_reference(ref, recompute_ref)
    features = metrics_lib.inception(inception, device, batch_size=min(batch, 64))
    reference = load_reference(ref, wanted, features, ref_images, batch, recompute_ref, quiet)
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
    from ..data import open_source

    wanted = metrics_lib.parse_metrics(metrics)
    if not str(out).endswith(".npz"):
        raise SamplerkitError(f"--out must end in .npz, got {out}")
    if batch < 1:
        raise SamplerkitError(f"--batch must be >= 1, got {batch}")
    source = open_source(data)
    n = metrics_lib.count_images(source, num_images)
    if n < 2:
        raise SamplerkitError(f"{data} holds {n} image; statistics need at least 2")
    features = metrics_lib.inception(inception, device, batch_size=min(batch, 64))
    with _progress(n, quiet, "reference") as bar:
        batches = (x for x, _ in source.batches(batch, limit=n))
        stats = metrics_lib.statistics_of_images(batches, features, wanted, bar.update)
    stats.save(out)
    click.echo(f"wrote {out} ({stats.n} images; {', '.join(stats.metrics())})", err=True)


COMMANDS = [fid, fid_ref]
