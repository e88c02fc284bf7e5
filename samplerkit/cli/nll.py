"""``samplerkit nll``: bits/dim of a data set under one or more models -- the variational bound of a
discrete chain (Nichol & Dhariwal 2021) or the probability-flow ODE likelihood (Song et al. 2021)."""

from __future__ import annotations

import click

from ..builtin import DEFAULT_MODEL
from ..likelihood import run as nll
from ..samplers import VARIANCES
from ._options import ParsedCommand, device_option, model_options, parse_flags


@click.command(name="nll", cls=ParsedCommand, flag_words=("batch", "respacing", "probes", "atol", "rtol"),
               context_settings={"max_content_width": 100})
@model_options(DEFAULT_MODEL, several="Zoo name or checkpoint path; repeat to compare models on the same images "
                                      "(paired).", families=("adm", "iddpm", "edm"))
@click.option("--data", default="builtin:shapes32", show_default=True,
              help="Images: a folder, .zip, .npz or builtin:shapes32 (8-bit RGB at the model's resolution).")
@click.option("--num-images", type=int, default=64, show_default=True, help="Use the first N images of --data.")
@click.option("--method", type=click.Choice(nll.METHODS), default="vlb", show_default=True,
              help="vlb: the full T-step variational bound (discrete-time models); ode: the probability-flow "
                   "ODE likelihood (any model).")
@click.option("--respacing", default=None,
              help="VLB: the bound of a respaced chain instead of all T steps -- 'K', 'ddimK' or '10,15,20' "
                   "(improved-diffusion's --timestep_respacing); K network calls per image, labelled vlb@K. "
                   "It bounds the K-step chain's NLL, not the T-step model's.")
@click.option("--csv", "csv_path", required=True, type=click.Path(dir_okay=False),
              help="One row per image (VLB rows with the per-t terms L_t of every t of the chain); images "
                   "already in it are not recomputed.")
@click.option("--batch", type=int, default=16, show_default=True, help="Images per batch (the unit of resuming).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Image i's noise (VLB) or probes (ODE) come from a generator seeded with seed + i.")
@click.option("--clip/--no-clip", "clip", default=True, show_default=True,
              help="VLB: clamp the x0 prediction to [-1, 1] (as improved-diffusion's image_nll.py).")
@click.option("--variance", type=click.Choice(["auto", *VARIANCES]), default="auto",
              show_default=True,
              help="VLB: the reverse variance (auto: learned when the model has it, else fixedlarge).")
@click.option("--atol", type=float, default=1e-5, show_default=True, help="ODE: absolute tolerance of the solver.")
@click.option("--rtol", type=float, default=1e-5, show_default=True, help="ODE: relative tolerance of the solver.")
@click.option("--probes", type=int, default=1, show_default=True, help="ODE: Hutchinson probe vectors per image.")
@click.option("--probe", type=click.Choice(["rademacher", "gaussian"]), default="rademacher", show_default=True,
              help="ODE: kind of probe vector.")
@click.option("--dequantize", type=click.Choice(["none", "uniform"]), default="none", show_default=True,
              help="ODE: density at the 8-bit grid point (none) or at a uniformly dequantized point (an upper "
                   "bound on the discrete NLL).")
@click.option("--sigma-min", "sigma_min", type=float, default=None,
              help="ODE: lower end of the integration (the density is that of the data convolved with N(0, "
                   "sigma_min^2)) [default: the model's].")
@click.option("--sigma-max", "sigma_max", type=float, default=None,
              help="ODE: upper end, where the prior N(0, sigma_max^2) is taken [default: the model's].")
@click.option("--timesteps", type=click.Choice(["trained", "continuous", "both"]), default="trained",
              show_default=True,
              help="ODE on a discrete eps-model (ADM, iDDPM): the network at the trained level nearest to sigma "
                   "(trained), or at the real timestep between levels (continuous: a deviation from the trained "
                   "levels, continuous in sigma, fewer NFE); both: a row per model for each.")
@device_option()
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(models, family, flags, preset, data, num_images, method, respacing, csv_path, batch, seed, clip,
            variance, atol, rtol, probes, probe, dequantize, sigma_min, sigma_max, timesteps, device, quiet):
    """Bits/dim of data under a model: the variational bound or the probability-flow ODE likelihood.

    VLB (--method vlb, discrete-time models: ADM, iDDPM, ADM-IP, the built-ins): prior + L_t for
    every t + the discretized Gaussian decoder L_0, as improved-diffusion's image_nll.py; T network
    calls per image (K with --respacing K: the bound of that respaced chain). ODE (--method ode,
    any model): the exact likelihood of the probability-flow ODE with a Hutchinson trace estimate
    and an adaptive Dormand-Prince solver; bits/dim of the 8-bit data = -log p(x) / (D ln 2) +
    log2(127.5). Several --model: the same images and noise for each, with the paired difference
    to the first model in the table.

    \b
    Examples:
      samplerkit nll --model shapes32-adm --model shapes32-adm-ip --data "builtin:shapes32?seed=1" \\
          --num-images 32 --method vlb --csv nll-vlb.csv
      samplerkit nll --model shapes32-adm --method ode --atol 1e-3 --rtol 1e-3 --num-images 32 \\
          --csv nll-ode.csv
      samplerkit nll --model shapes32-adm --respacing 100 --num-images 32 --csv nll-vlb100.csv
      samplerkit nll --model iddpm-cifar10-vlb --method vlb --data cifar10-test/ --num-images 1000 \\
          --batch 50 --csv cifar.csv
    """
    log = (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))
    modes = ("trained", "continuous") if timesteps == "both" else ()
    measure = nll.Settings(method=method, clip_denoised=clip, variance=variance, respacing=respacing, atol=atol,
                           rtol=rtol, probes=probes, probe=probe, dequantize=dequantize, sigma_min=sigma_min,
                           sigma_max=sigma_max, seed=seed, timesteps=modes[0] if modes else timesteps)
    settings = nll.NllSettings(csv_path, tuple(models), family, parse_flags(flags), preset, data, num_images, batch,
                               device, measure, quiet, timestep_modes=modes)
    rows_by_model = nll.evaluate(settings, log)
    log(f"wrote {csv_path}")
    click.echo(nll.table(nll.summary(rows_by_model)))
