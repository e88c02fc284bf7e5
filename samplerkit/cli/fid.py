"""``samplerkit fid`` and ``samplerkit fid-ref``: FID, sFID, precision/recall, KID and the Inception
Score through clean-fid's features (clean or legacy-tensorflow mode), with bootstrap intervals. The
commands parse their flags into :class:`samplerkit.evaluation.FidSettings` /
:class:`~samplerkit.evaluation.ReferenceSettings` and call the library."""

from __future__ import annotations

import functools
import json

import click

from .. import metrics as metrics_lib
from ..evaluation import FidResult, FidSettings, ReferenceSettings, measure, reference_statistics
from ..metrics import dinov2 as dinov2_lib
from ._options import ParsedCommand, device_option, hidden_alias, speed_option


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



def _format(values: dict, key: str) -> str:
    v = values[key]
    text = f"{v:.6g}"
    if f"{key}_std" in values:
        text += f" ± {values[f'{key}_std']:.3g}"
    if f"{key}_lo" in values:
        text += f"  [{values[f'{key}_lo']:.6g}, {values[f'{key}_hi']:.6g}]"
    return text


@click.command(name="fid", cls=ParsedCommand, context_settings={"max_content_width": 100})
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
    settings = FidSettings(images, ref, paired_with, metrics, fid_mode, kid_subsets, kid_subset_size,
                           bootstrap_rounds, force_pipeline, seed if old_seed is None else old_seed,  # --seed: hidden
                           inception, dinov2_weights, dinov2_resize, num_images, ref_images, recompute_ref, batch,
                           device, speed, quiet, allow_resolution_mismatch)
    result = measure(settings, log=(lambda text: None) if as_json else (lambda text: click.echo(text, err=True)))
    if result is not None:  # rank 0
        _report(result, settings, as_json)


def _report(result: FidResult, s: FidSettings, as_json: bool) -> None:
    """The values of each image set: one JSON object, or a table with the pipeline it was measured in."""
    values, names, reference, dino, dino_ref = result.values, result.names, result.reference, result.dino, \
        result.dino_ref
    if as_json:
        common = {"n_images": result.n, "ref": s.ref, "speed": result.speed}
        if reference is not None:
            common.update(n_ref=reference.n, mode=s.fid_mode, network=result.network, reference_mode=reference.mode,
                          reference_origin=reference.origin or None)
        if dino is not None:
            common.update(dinov2_mode=dino.mode, dinov2_network=dino.sha256, n_ref_dinov2=dino_ref.n,
                          dinov2_reference_origin=dino_ref.origin or None)
        if s.bootstrap_rounds:
            common.update(bootstrap_rounds=s.bootstrap_rounds, seed=s.seed)
        if len(values) == 1:
            click.echo(json.dumps({**values[0], **common, "images": names[0]}))
        else:
            rows = [dict(r, images=name) for r, name in zip(values, names, strict=True)]
            click.echo(json.dumps({**common, "images": names[0], "paired_with": names[1], "results": rows}))
        return
    for row, name in zip(values, names, strict=True):
        _table(row, name, names[0], len(values) > 1, result.n)
    extra = f"; intervals: {s.bootstrap_rounds} bootstrap rounds, 95 %, seed {s.seed}" if s.bootstrap_rounds else ""
    if reference is not None:
        click.echo(f"{'pipeline':10s} {s.fid_mode} mode, network sha256 {result.network[:12]}…{extra}")
        extra = ""
    if dino is not None:
        click.echo(f"{'dinov2':10s} {dino.mode} (DINOv2 ViT-L/14), weights sha256 {dino.sha256[:12]}…{extra}")
    if result.speed:
        used = ", ".join(f"{k} {v}" for k, v in result.speed.items() if k != "mode" and v)
        click.echo(f"{'speed':10s} {result.speed['mode']}" + (f" ({used})" if used else ""))


def _table(values: dict, name: str, first: str, several: bool, n: int) -> None:
    """One image set's values, one per line (a paired difference says what it subtracts)."""
    if several:
        click.echo(f"# {name}")
    shown = [k for k in values if not k.endswith(("_std", "_lo", "_hi")) and "_diff" not in k]
    for key in shown:
        click.echo(f"{key:10s} {_format(values, key)}")
    for key in [k for k in values if k.endswith("_diff")]:
        m = key[: -len("_diff")]
        click.echo(f"{m + ' diff':10s} {values[key]:+.6g}  [{values[key + '_lo']:+.6g}, {values[key + '_hi']:+.6g}]"
                   f"  ({name} - {first}, paired over the same seeds)")
    click.echo(f"{'n_images':10s} {n}")


@click.command(name="fid-ref", cls=ParsedCommand, context_settings={"max_content_width": 100})
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
    settings = ReferenceSettings(data, out, num_images, metrics, fid_mode, inception, dinov2_weights, dinov2_resize,
                                 batch, device, quiet, overwrite)
    stats = reference_statistics(settings)
    if stats is not None:  # rank 0 wrote them
        held = "; ".join(f"{m}: {', '.join(st.metrics()) if m == 'fid' else 'mu, sigma'}, {st.pipeline()}"
                         for m, st in stats.items())
        click.echo(f"wrote {out} ({next(iter(stats.values())).n} images; {held})", err=True)


COMMANDS = [fid, fid_ref]
