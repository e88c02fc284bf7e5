"""``samplerkit sample``: images for a list of seeds, resumable and shardable across processes.

Seed s gives the same image whatever the batch size or number of processes (per-seed
generators, as EDM's ``generate.py``). Each image is written atomically as soon as it is made;
rerunning the same command skips the seeds whose files exist, so an interrupted run resumes.
"""

from __future__ import annotations

import click

from ..builtin import DEFAULT_MODEL
from ..errors import SamplerkitError
from ..runs import DTYPES, FORMATS, SampleSettings, sample_folder, two_stage
from ._options import (
    SamplerCommand,
    TableChoice,
    chosen_options,
    model_options,
    parse_flags,
    speed_option,
)

EXAMPLES = """
\b
Examples:
  samplerkit sample                                    # built-in model, its recommended sampler, seeds 0-63 -> out/
  samplerkit sample --model adm-imagenet64 --sampler ancestral --respacing 250 --class-labels random
  samplerkit sample --model edm-imagenet64-cond --sampler stochastic --steps 256 \\
      --S-churn 40 --S-min 0.05 --S-max 50 --S-noise 1.003 --seeds 0-49999 --format npz
  samplerkit sample --model edm-cifar10-cond-vp --disc vp --schedule vp --scaling vp   # EDM Fig. 2 ablation
  samplerkit sample --model 64x64_diffusion.pt --family adm --preset adm-imagenet64 --sampler ddim --steps 50
  torchrun --standalone --nproc_per_node 8 -m samplerkit sample --model edm-cifar10-cond-vp --seeds 0-49999
  samplerkit sample --model adm-imagenet256-uncond --classifier adm-imagenet256-classifier \\
      --classifier-scale 10 --class-labels random                     # classifier guidance (ADM-G)
  samplerkit sample --model adm-imagenet64to256-upsampler --low-res samples_100x64x64x3.npz   # ADM-U
  samplerkit sample --model adm-imagenet64 --classifier adm-imagenet64-classifier \\
      --then-upsample adm-imagenet64to256-upsampler --out two_stage    # -> two_stage/base, two_stage/upsampled
  samplerkit sample --model shapes32-edm --guide-model shapes32-edm-ip --guidance-weight 1.5 \\
      --guidance-interval 0.3,5 --steps 18 --seeds 0-15     # guidance by a second network (autoguidance form)
  samplerkit sample --model edm2-img64-s-autog-fid --seeds 0-49999 --format npz   # EDM2's preset: net + gnet + w
  samplerkit sample --model dit-xl-2-256 --class-labels random --cfg 4 --cfg-form upstream   # classifier-free
\b
Rerun the same command to resume; a folder holding images made with other settings is refused
unless --overwrite. Outputs: 000000/000123.png (folders of 1000), samples_NxHxWxC.npz (arr_0
uint8 NHWC, arr_1 labels), grid.png, manifest.json.
"""


@click.command("sample", cls=SamplerCommand, epilog=EXAMPLES)
@model_options(DEFAULT_MODEL)
@click.option("--sampler", type=TableChoice(), default=None,
              help="Any of `samplerkit samplers` (heun, ancestral, ddim, dpmpp_2m, unipc, ...). "
                   "[default: the model's recommended sampler (`samplerkit models info`), else heun]")
@click.option("--steps", type=int, default=None,
              help="Number of steps N (Heun: NFE = 2N - 1). [default: the recommended count, else 18]")
@click.option("--seeds", default="0-63", show_default=True, help="Seeds: ranges and lists, e.g. 0-49999 or 0,5,9-12.")
@click.option("--batch", type=int, default=64, show_default=True, help="Images per network batch.")
@click.option("--class-labels", default=None,
              help="Conditional models: random (default), a class N, or one per seed (e.g. 0,1,2,3).")
@click.option("--out", default="out", show_default=True, help="Output folder (created if needed).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="png", show_default=True,
              help="Per-seed PNGs, the evaluator's npz, or both.")
@click.option("--grid/--no-grid", default=True, show_default=True, help="Write grid.png of the first 64 images.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True,
              help="Precision of the network (autocast); the sampler arithmetic stays float64.")
@speed_option()
@click.option("--low-res", default=None, metavar="SRC",
              help="Super-resolution models: the low-resolution images (.npz arr_0 NHWC uint8 [+ arr_1 labels], a PNG "
                   "folder, or a samplerkit sample folder); seed s upsamples image s.")
@click.option("--then-upsample", default=None, metavar="MODEL",
              help="Two stages: sample into OUT/base, then upsample those images with MODEL into OUT/upsampled "
                   "(a zoo upsampler, or a .pt with its flags.json beside it); both resume per seed.")
@click.option("--upsample-sampler", type=TableChoice(), default=None,
              help="Sampler of the --then-upsample stage [default: the upsampler's recommended one].")
@click.option("--upsample-steps", type=int, default=None, help="Steps of the --then-upsample stage.")
@click.option("--overwrite", is_flag=True, help="Replace the outputs of a run made with other settings in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar and no summary line.")
def command(model, family, flags, preset, sampler, steps, seeds, batch, class_labels, out, fmt, grid, device, dtype,
            speed, classifier, classifier_flags, classifier_scale, guidance_form, guide_model, guidance_weight,
            guidance_interval, cfg, cfg_form, low_res, then_upsample, upsample_sampler, upsample_steps, overwrite,
            quiet, **knobs):
    """Sample images from a model; rerun the same command to resume an interrupted run."""
    if then_upsample is None and (upsample_sampler is not None or upsample_steps is not None):
        raise SamplerkitError("--upsample-sampler / --upsample-steps need --then-upsample")
    settings = SampleSettings(model=model, family=family, flags=parse_flags(flags), preset=preset, sampler=sampler,
                              steps=steps, options=chosen_options(knobs), seeds=seeds, batch=batch,
                              class_labels=class_labels, out=out, fmt=fmt, grid=grid, device=device, dtype=dtype,
                              overwrite=overwrite, quiet=quiet, speed=speed, classifier=classifier,
                              classifier_flags=parse_flags(classifier_flags), classifier_scale=classifier_scale,
                              guidance_form=guidance_form, low_res=low_res,
                              guide_model=guide_model, guidance_weight=guidance_weight,
                              guidance_interval=guidance_interval, cfg=cfg, cfg_form=cfg_form)
    if then_upsample is None:
        sample_folder(settings)
        return
    base, upsampled = two_stage(settings, then_upsample, upsample_sampler, upsample_steps)
    sample_folder(base)
    sample_folder(upsampled)


