"""``samplerkit sweep``: NFE vs FID over samplers and step counts (Karras et al. 2022 (EDM), Fig. 2). The
command parses its flags into :class:`samplerkit.sweep.SweepSettings` and calls :func:`samplerkit.sweep.run`."""

from __future__ import annotations

import click

from .. import distributed
from .. import sweep as sweep_lib
from ..builtin import DEFAULT_MODEL
from ._options import SamplerCommand, chosen_options, device_option, model_options, parse_flags, speed_option
from .fid import dinov2_options, evaluation_options


@click.command(name="sweep", cls=SamplerCommand, context_settings={"max_content_width": 100})
@model_options(DEFAULT_MODEL)
@click.option("--sampler", "samplers", default=None,
              help="Comma list of samplers (see `samplerkit samplers`). "
                   "[default: the model's recommended sampler with its settings, as `sample` uses]")
@click.option("--steps", default="5,10,18,32,64", show_default=True, help="Comma list of step counts.")
@click.option("--num-images", type=int, default=None, help="Images per cell [default: 1000, or the --seeds count].")
@click.option("--seeds", default=None, help="Seeds, e.g. 0-49999 [default: 0 .. num-images - 1].")
@click.option("--ref", required=True,
              help="Reference: stats .npz (mu, sigma), an EDM2 statistics .pkl (fid and fd_dinov2) or an image "
                   "folder / .zip / .npz / builtin:shapes32 (its statistics are cached beside the CSV).")
@click.option("--ref-images", type=int, default=None, help="Use the first N images of a data-source --ref.")
@click.option("--csv", "csv_path", required=True, type=click.Path(dir_okay=False),
              help="CSV of all cells; a cell already in it is not recomputed.")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False), help="FID-vs-NFE PNG.")
@click.option("--metrics", default="fid", show_default=True, help="Comma list of fid, sfid, pr, kid, is, fd_dinov2.")
@evaluation_options
@click.option("--eval-seed", type=int, default=0, show_default=True,
              help="Seed of KID's subsets and the bootstrap (the images' seeds are --seeds).")
@click.option("--table", "show_table", is_flag=True, help="Print the sweep as a table.")
@click.option("--batch", type=int, default=64, show_default=True, help="Images per sampler batch.")
@click.option("--inception", default=None, type=click.Path(), help="Inception network file or its folder.")
@dinov2_options
@device_option()
@speed_option()
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(model, family, flags, preset, samplers, steps, num_images, seeds, ref, ref_images, csv_path, plot_path,
            metrics, fid_mode, kid_subsets, kid_subset_size, bootstrap_rounds, force_pipeline, eval_seed, show_table,
            batch, inception, dinov2_weights, dinov2_resize, device, speed, classifier, classifier_flags,
            classifier_scale, guidance_form, guide_model, guidance_weight, guidance_interval, cfg, cfg_form, quiet,
            **knobs):
    """NFE vs FID: every sampler x step count generates the same seeds, one CSV row per cell.

    Images come from the same code path as `samplerkit sample` and are measured straight from
    the tensors (clean-fid features, --fid-mode clean or legacy-tensorflow). Rerunning skips cells
    already in the CSV; the plot shows FID against NFE on a log axis, one line per sampler (EDM
    Fig. 2). --bootstrap N adds FID/KID intervals and the paired difference of every sampler to the
    first one at the same step count (same seeds). Under torchrun the seeds are split across processes.

    \b
    Examples:
      samplerkit sweep --sampler heun,euler --clip --steps 4,8,16 --num-images 256 \\
          --ref builtin:shapes32 --ref-images 2048 --csv sweep.csv --plot sweep.png --table
      samplerkit sweep --model edm-cifar10-cond-vp --sampler heun,euler,ddim --steps 5,10,18,32,64 \\
          --num-images 50000 --ref cifar10-32x32.npz --csv cifar.csv --plot cifar.png
      samplerkit sweep --sampler ancestral --steps 20,100 --eps-scaler 1.0,1.002,1.005,1.01 \\
          --num-images 1000 --ref builtin:shapes32 --csv es.csv --plot es.png   # Epsilon Scaling axis
      samplerkit sweep --sampler ancestral,ddim --steps 20,50 --num-images 200 --metrics fid,kid \\
          --bootstrap 1000 --ref builtin:shapes32 --ref-images 2000 --csv ci.csv --table
      samplerkit sweep --model adm-imagenet256-uncond --classifier adm-imagenet256-classifier \\
          --classifier-scale 1,4,10 --sampler ancestral,ddim --steps 25,50,100 --num-images 5000 \\
          --ref imagenet256.npz --csv guided.csv --plot guided.png     # guidance scale axis (ADM-G)
      samplerkit sweep --model shapes32-edm --guide-model shapes32-edm-ip --guidance-weight 1,1.5,2 \\
          --sampler heun --steps 18 --num-images 64 --ref builtin:shapes32 --ref-images 512 --csv w.csv
    """
    log = (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))
    settings = sweep_lib.SweepSettings(
        ref, csv_path, model, family, parse_flags(flags), preset, samplers, steps, seeds, num_images,
        chosen_options(knobs), ref_images, plot_path, metrics, fid_mode, kid_subsets, kid_subset_size,
        bootstrap_rounds, force_pipeline, eval_seed, batch, inception, dinov2_weights, dinov2_resize, device, speed,
        guidance={"classifier": classifier, "classifier_flags": parse_flags(classifier_flags),
                  "classifier_scale": classifier_scale, "guidance_form": guidance_form, "guide_model": guide_model,
                  "guidance_weight": guidance_weight, "guidance_interval": guidance_interval, "cfg": cfg,
                  "cfg_form": cfg_form},
        quiet=quiet)
    rows = sweep_lib.run(settings, log=log)
    if show_table and distributed.is_main():
        click.echo(sweep_lib.table(rows, sweep_lib.sweep_metrics(metrics)[2]))
