"""``samplerkit nll``: bits/dim of a data set under one or more models -- the variational bound of a
discrete chain (Nichol & Dhariwal 2021) or the probability-flow ODE likelihood (Song et al. 2021)."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import torch

from ..builtin import DEFAULT_MODEL
from ..data import open_source, to_model_space
from ..errors import SamplerkitError
from ..likelihood import run as nll
from ..results import check_experiment
from ..runs import model_sha256
from ..samplers import VARIANCES
from ._options import device_option, load_model, model_options


def _load_images(data: str, n: int, resolution: int, log):
    """The first n images of the source as [-1, 1] NCHW float64, their labels (or None) and indices."""
    src = open_source(data)
    if n > len(src):
        log(f"note: {data} holds {len(src)} images; using all of them instead of {n}")
        n = len(src)
    if resolution and src.resolution != resolution:
        raise SamplerkitError(f"{data} has {src.resolution}x{src.resolution} images but the model expects "
                              f"{resolution}x{resolution}; likelihoods are of the data as it is, so give data "
                              f"at the model's resolution")
    chunks, labels = [], []
    for images, lab in src.batches(256, limit=n):
        chunks.append(to_model_space(images).double())
        labels.append(lab)
    lab = np.concatenate(labels) if labels and all(v is not None for v in labels) else None
    return torch.cat(chunks), lab, list(range(n))


@click.command(name="nll", context_settings={"max_content_width": 100})
@model_options(DEFAULT_MODEL, several="Zoo name or checkpoint path; repeat to compare models on the same images "
                                      "(paired).", families=("adm", "iddpm", "edm"))
@click.option("--data", default="builtin:shapes32", show_default=True,
              help="Images: a folder, .zip, .npz or builtin:shapes32 (8-bit RGB at the model's resolution).")
@click.option("--num-images", type=int, default=64, show_default=True, help="Use the first N images of --data.")
@click.option("--method", type=click.Choice(nll.METHODS), default="vlb", show_default=True,
              help="vlb: the full T-step variational bound (discrete-time models); ode: the probability-flow "
                   "ODE likelihood (any model).")
@click.option("--csv", "csv_path", required=True, type=click.Path(dir_okay=False),
              help="One row per image (VLB rows with the per-t terms L_0 .. L_{T-1}); images already in it are "
                   "not recomputed.")
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
@device_option()
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(models, family, flags, preset, data, num_images, method, csv_path, batch, seed, clip, variance, atol,
            rtol, probes, probe, dequantize, sigma_min, sigma_max, device, quiet):
    """Bits/dim of data under a model: the variational bound or the probability-flow ODE likelihood.

    VLB (--method vlb, discrete-time models: ADM, iDDPM, ADM-IP, the built-ins): prior + L_t for
    every t + the discretized Gaussian decoder L_0, as improved-diffusion's image_nll.py; T network
    calls per image. ODE (--method ode, any model): the exact likelihood of the probability-flow
    ODE with a Hutchinson trace estimate and an adaptive Dormand-Prince solver; bits/dim of the
    8-bit data = -log p(x) / (D ln 2) + log2(127.5). Several --model: the same images and noise
    for each, with the paired difference to the first model in the table.

    \b
    Examples:
      samplerkit nll --model shapes32-adm --model shapes32-adm-ip --data "builtin:shapes32?seed=1" \\
          --num-images 32 --method vlb --csv nll-vlb.csv
      samplerkit nll --model shapes32-adm --method ode --atol 1e-3 --rtol 1e-3 --num-images 32 --csv nll-ode.csv
      samplerkit nll --model iddpm-cifar10-vlb --method vlb --data cifar10-test/ --num-images 1000 \\
          --batch 50 --csv cifar.csv
    """
    log = (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))
    if num_images < 1:
        raise SamplerkitError(f"--num-images must be >= 1, got {num_images}")
    if batch < 1:
        raise SamplerkitError(f"--batch must be >= 1, got {batch}")
    settings = nll.Settings(method=method, clip_denoised=clip, variance=variance, atol=atol, rtol=rtol,
                            probes=probes, probe=probe, dequantize=dequantize, sigma_min=sigma_min,
                            sigma_max=sigma_max, seed=seed)
    settings.check()
    csv_file = Path(csv_path)
    nll.results_csv(csv_file).read()  # an unreadable CSV fails before any work
    names = list(dict.fromkeys(models))
    rows_by_model, images = {}, None
    for name in names:
        net = load_model(name, family, flags, preset, device=device).eval()
        if images is None:
            images = _load_images(data, num_images, int(getattr(net, "img_resolution", 0) or 0), log)
            check_experiment(csv_file, "likelihood rows", {"model": names, "method": {method}, "data": {data},
                                                           "settings": {settings.for_csv()}, "image": images[2]})
        x0, labels, indices = images
        lab = None
        if getattr(net, "label_dim", 0):
            if labels is None:
                raise SamplerkitError(f"{name} is class-conditional but {data} has no class labels")
            lab = torch.as_tensor(labels, dtype=torch.int64, device=device)
        rows_by_model[name] = nll.run(net, x0.to(device), indices, lab, settings, csv_path=csv_file, model=name,
                                      sha256=model_sha256(name), data=data, batch_size=batch, log=log,
                                      show_progress=not quiet)
    log(f"wrote {csv_file}")
    click.echo(nll.table(nll.summary(rows_by_model)))
