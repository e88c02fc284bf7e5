"""``samplerkit retrain``: train or retrain ADM with input perturbation (ADM-IP) or an alternative."""

from __future__ import annotations

import shlex

import click
from click.core import ParameterSource

from ..errors import SamplerkitError
from ..speed import default_mode as default_speed
from ..train import TrainConfig, train
from ..train import preset as get_preset
from ._options import device_option, parse_flags, speed_option

EXAMPLES = """
\b
Examples:
  samplerkit retrain --data builtin:shapes32 --out runs/ip --preset tiny --iterations 2000
  samplerkit retrain --data cifar10-train.zip --out runs/cifar-ip --preset cifar10 --regularizer ip --gamma 0.1
  samplerkit retrain --data cifar10-train.zip --out runs/cifar-ip --preset cifar10 --resume --iterations 600000
  samplerkit retrain --data builtin:shapes32 --out runs/y --preset tiny --regularizer y     # DDPM-y (Eq. 8)
  samplerkit retrain --data builtin:shapes32 --out runs/gp --regularizer gp --lambda-gp 1e-6 --loss simple
  samplerkit retrain --data builtin:shapes32 --out runs/edm --preset tiny-edm --regularizer none   # EDM
  samplerkit retrain --data builtin:shapes32 --out runs/edm-ip --preset tiny-edm --regularizer ip --gamma 0.1
  torchrun --nproc_per_node 4 -m samplerkit retrain --data celeba64.zip --out runs/celeba --preset celeba64
  samplerkit sample --model runs/ip/ema_0.999_002000.pt --out samples-ip   # flags.json + recommended.json
"""


@click.command("retrain", epilog=EXAMPLES)
@click.option("--data", required=True, help="Training images: folder, .zip, .npz or builtin:shapes32.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder (checkpoints, log.csv).")
@click.option("--preset", default=None,
              help="cifar10, imagenet32, lsun-tower64, celeba64, ffhq128 (Ning et al. 2023, Tab. 9), tiny "
                   "(CPU; the recipe of the built-in ADMs) or tiny-edm (CPU, DDPM++ for --precond edm|vp|ve) "
                   "[tiny, or tiny-edm with --precond edm|vp|ve].")
@click.option("--precond", type=click.Choice(["adm", "edm", "vp", "ve"]), default=None,
              help="adm: eps-prediction on a discrete chain (iDDPM losses); edm, vp, ve: a denoiser with the "
                   "preconditioning, sigma distribution and loss weight of Karras et al. 2022, Table 1 [preset's].")
@click.option("--flag", "flags", multiple=True, metavar="KEY=VALUE",
              help="Network flag override (guided-diffusion flags for adm, SongUNet/DhariwalUNet arguments for "
                   "edm/vp/ve); repeatable.")
@click.option("--regularizer", type=click.Choice(["ip", "y", "gp", "wd", "none"]), default="ip", show_default=True)
@click.option("--gamma", type=float, default=0.1, show_default=True, help="IP / DDPM-y perturbation strength.")
@click.option("--lambda-gp", type=float, default=1e-6, show_default=True)
@click.option("--lambda-wd", type=float, default=0.03, show_default=True, help="Weight decay of --regularizer wd.")
@click.option("--wd-form", type=click.Choice(["decoupled", "loss"]), default="decoupled", show_default=True,
              help="--regularizer wd: AdamW's decoupled weight_decay = lambda_WD (as guided-diffusion), or "
                   "lambda_WD ||theta||^2 added to the loss (Eq. 11 literally; dominates Adam's updates).")
@click.option("--loss", type=click.Choice(["simple", "hybrid", "vlb"]), default=None,
              help="ADM loss (Nichol & Dhariwal 2021) [hybrid; --precond edm|vp|ve: EDM's weighted denoising loss].")
@click.option("--schedule-sampler", type=click.Choice(["auto", "uniform", "loss-second-moment"]), default=None,
              help="Timestep sampler: uniform, or iDDPM Eq. 18 importance sampling [preset; auto = "
                   "importance sampling for --loss vlb only].")
@click.option("--iterations", type=int, default=None, help="Train up to this global step [preset].")
@click.option("--batch-size", type=int, default=None, help="Global batch size [preset].")
@click.option("--microbatch", type=int, default=0, help="Per-process microbatch for gradient accumulation (0 = off).")
@click.option("--lr", type=float, default=None, help="AdamW learning rate [preset].")
@click.option("--weight-decay", type=float, default=0.0, show_default=True,
              help="AdamW's decoupled weight decay with any regularizer (the paper's WD baseline is --regularizer wd).")
@click.option("--grad-clip", type=float, default=None, help="Clip the global gradient norm to this value (0 = off) "
              "[preset, else 0].")
@click.option("--warmup", type=int, default=None, help="Linear learning-rate warm-up steps [preset, else 0].")
@click.option("--ema-rate", default=None, help="EMA rate(s), comma-separated [preset, else 0.9999].")
@click.option("--ema-warmup/--no-ema-warmup", default=None,
              help="EMA rate min(rate, (1 + s) / (10 + s)) at step s, so short runs get a usable EMA "
                   "[preset, else off].")
@click.option("--ema-halflife-kimg", type=float, default=None,
              help="EDM's EMA instead of --ema-rate: half-life in thousands of images, capped at "
                   "--ema-rampup-ratio times the images seen [preset, else off].")
@click.option("--ema-rampup-ratio", type=float, default=None,
              help="Ramp-up of --ema-halflife-kimg (0 = none) [preset, else 0.05].")
@click.option("--save-interval", type=int, default=1000, show_default=True)
@click.option("--log-interval", type=int, default=10, show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
              help="Autocast dtype; weights, EMA and optimizer state stay fp32 [preset, else fp32].")
@click.option("--resume", is_flag=True, help="Continue from the latest complete checkpoint in --out.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--flip/--no-flip", default=True, show_default=True, help="Random horizontal flips.")
@device_option()
@speed_option("exact")
@click.option("--quiet", is_flag=True)
def command(data, out, preset, precond, flags, regularizer, gamma, lambda_gp, lambda_wd, wd_form, loss,
            schedule_sampler, iterations, batch_size, microbatch, lr, weight_decay, grad_clip, warmup, ema_rate,
            ema_warmup, ema_halflife_kimg, ema_rampup_ratio, save_interval, log_interval, precision, resume, seed,
            flip, device, speed, quiet):
    """Train ADM with input perturbation (ADM-IP, Alg. 3 of Ning et al. 2023) or another regularizer, or an
    EDM-preconditioned network (Karras et al. 2022, --precond edm|vp|ve) with or without input perturbation.

    Options marked [preset] take the preset's value unless given. At the end it prints the
    command that samples the run's EMA weights with the sampler its training implies (also
    written to OUT/recommended.json).
    """
    if preset is None:
        preset = "tiny" if precond in (None, "adm") else "tiny-edm"
    p = get_preset(preset)
    preset_family = p.get("precond", "adm")
    precond = precond or preset_family
    if (precond == "adm") != (preset_family == "adm"):
        kind = "an ADM" if preset_family == "adm" else "an EDM-family"
        raise SamplerkitError(f"preset {preset} is {kind} preset and cannot train --precond {precond}; use "
                              f"{'tiny-edm' if precond != 'adm' else 'tiny or a paper preset'}")
    if precond != "adm" and loss not in (None, "simple"):
        raise SamplerkitError(f"--loss {loss} is ADM-only (it needs a learned variance); --precond {precond} trains "
                              "EDM's weighted denoising loss")
    if ema_halflife_kimg is not None and ema_rate is not None:
        raise SamplerkitError("pass --ema-rate or --ema-halflife-kimg, not both")

    def pick(value, key):
        return value if value is not None else p.get(key, getattr(TrainConfig, key))

    try:
        rates = tuple(float(r) for r in ema_rate.split(",")) if ema_rate is not None else pick(None, "ema_rates")
    except ValueError:
        raise SamplerkitError(f"bad --ema-rate {ema_rate!r}; use e.g. 0.9999 or 0.9999,0.999") from None
    halflife = pick(ema_halflife_kimg, "ema_halflife_kimg") if ema_rate is None else None
    rampup = pick(ema_rampup_ratio, "ema_rampup_ratio")
    cfg = TrainConfig(
        data=data, out=out, flags={**p["flags"], **parse_flags(flags)}, precond=precond,
        loss=pick(loss, "loss") if precond == "adm" else "simple", regularizer=regularizer,
        gamma=gamma, lambda_gp=lambda_gp, lambda_wd=lambda_wd, wd_form=wd_form,
        schedule_sampler=pick(schedule_sampler, "schedule_sampler"), iterations=pick(iterations, "iterations"),
        batch_size=pick(batch_size, "batch_size"), microbatch=microbatch, lr=pick(lr, "lr"),
        weight_decay=weight_decay, grad_clip=pick(grad_clip, "grad_clip"), warmup=pick(warmup, "warmup"),
        ema_rates=tuple(rates), ema_warmup=pick(ema_warmup, "ema_warmup"), ema_halflife_kimg=halflife,
        ema_rampup_ratio=rampup or None, save_interval=save_interval,
        log_interval=log_interval, precision=pick(precision, "precision"), seed=seed, flip=flip, device=device,
        speed=speed or default_speed("exact"),
    )
    trainer = train(cfg, resume=resume, progress=not quiet, resume_command=resume_command(click.get_current_context()))
    if trainer.rank == 0 and not quiet:
        click.echo(f"trained to step {trainer.step}; checkpoints in {out}", err=True)
        click.echo(f"sample it: {sample_command(out, trainer.step, cfg)}", err=True)


def sample_command(out, step: int, cfg) -> str:
    """The `samplerkit sample` command for the run's EMA weights (first rate) at ``step``; it needs
    no flags: the architecture comes from the run's flags.json and the sampler its training implies
    from recommended.json."""
    from pathlib import Path

    return f"samplerkit sample --model {Path(out) / f'ema_{cfg.ema_names()[0]}_{step:06d}.pt'}"


def resume_command(ctx: click.Context) -> str:
    """The options the user typed, plus --resume: the command that continues this run."""
    words = ["samplerkit", "retrain"]
    for p in ctx.command.params:
        if p.name == "resume" or ctx.get_parameter_source(p.name) is not ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[p.name]
        if getattr(p, "is_flag", False):
            words += [p.opts[0]] if value else p.secondary_opts[:1]
        else:
            words += [w for v in (value if p.multiple else (value,)) for w in (p.opts[0], str(v))]
    return shlex.join([*words, "--resume"])
