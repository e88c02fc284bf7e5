"""``samplerkit exposure-bias``: the exposure-bias report of Ning et al. 2023 (Sec. 4, 5.3, App. A.1, A.5). The
command parses its flags into :class:`samplerkit.exposure.experiment.ExposureSettings` and calls
:func:`samplerkit.exposure.experiment.run`."""

from __future__ import annotations

import click

from .. import exposure
from ..builtin import DEFAULT_MODEL
from ..errors import SamplerkitError
from ..exposure.experiment import ExposureSettings
from ..exposure.experiment import run as run_experiment
from ..samplers import VARIANCES
from ._options import SamplerCommand, device_option, hidden_alias, model_options, parse_flags, speed_option


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise SamplerkitError(f"bad {what} {text!r}; use comma-separated integers like 100,300,600,1000") from None
    if not values:
        raise SamplerkitError(f"{what} is empty; use e.g. 100,300,600,1000")
    return values


def _modes(values: tuple[str, ...]) -> tuple[str, ...]:
    modes = tuple(dict.fromkeys(m.strip() for v in values for m in v.split(",") if m.strip()))
    return modes or ("delta",)


@click.command(name="exposure-bias", cls=SamplerCommand, sampler_knobs=False, guidance=False,
               knobs_after="quiet",
               context_settings={"max_content_width": 100},
               short_help="Exposure bias as Ning et al. 2023 measure it: delta_t, FID of x0_hat, nu_t, normality.")
@model_options(DEFAULT_MODEL, several="Zoo name or local checkpoint; repeat to compare models (e.g. ADM and "
                                      "ADM-IP) in one table.", families=("adm", "iddpm", "edm"))
@click.option("--data", default="builtin:shapes32", show_default=True,
              help="Real images: folder, .zip, .npz or builtin:shapes32.")
@click.option("--t", "t_values", default="100,300,600,1000", show_default=True,
              help="Chain lengths t for delta and fid.")
@click.option("--num-images", type=int, default=100, show_default=True,
              help="Real images x0 (the first N of --data).")
@click.option("--batch", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every eps and sampler noise.")
@click.option("--mode", "modes", multiple=True, default=("delta",), show_default=True,
              help="delta | fid | nu | normality | eps-norm; repeatable or comma-separated.")
@click.option("--respacing", default=None,
              help="Measure on a respaced chain (Nichol & Dhariwal 2021, Sec. 4): 'K', 'ddimK' or '10,15,20'; "
                   "--t then counts its steps, and rows say so (--respacing 100 --t 60: 't = 596 of T = 1000 "
                   "via 60 respaced steps')  [default: the full chain].")
@click.option("--ddpm-schedule", "reference", default="linear:1000", show_default=True,
              help="DDPM schedule NAME[:T] of the chain for models without one of their own (EDM/VP/VE, analytic).")
@hidden_alias("--ref", "old_reference")
@click.option("--stride", type=int, default=10, show_default=True,
              help="t grid of nu and normality: stride, 2 stride, ..., T.")
@click.option("--clip/--no-clip", "clip_denoised", default=True, show_default=True,
              help="Clip x0_hat to [-1, 1] at every chain step (delta, fid; guided-diffusion's default, which "
                   "the authors' measurements use) and before e_t = x0_hat - x0 (nu, normality). Every row "
                   "records the setting.")
@hidden_alias("--clip-denoised/--no-clip-denoised", "old_clip_denoised")
@click.option("--variance", type=click.Choice(list(VARIANCES)), default=None,
              help="Variance of the fid mode's ancestral steps "
                   "[default: learned if the model has it, else fixedsmall].")
@click.option("--fid-ref", default=None, type=click.Path(dir_okay=False),
              help="npz with Inception 'mu' and 'sigma' to compare against instead of the x0 set.")
@click.option("--csv", "csv_path", default=None, type=click.Path(dir_okay=False),
              help="CSV of all rows; resumes from it.")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False),
              help="PNG of the first --mode (delta_t vs t by default); other modes go beside it as "
                   "<stem>-<mode>.png.")
@click.option("--pairs", "pairs_dir", default=None, type=click.Path(file_okay=False),
              help="Directory for (x0, x0_hat) PNGs.")
@click.option("--no-resize", is_flag=True, help="Do not centre-crop/resize the data to the model's resolution.")
@device_option()
@speed_option()
@click.option("--quiet", is_flag=True, help="No progress bar and no cost summary.")
def command(models, family, flags, preset, data, t_values, num_images, batch, seed, modes, respacing, reference,
            old_reference, stride, clip_denoised, old_clip_denoised, variance, fid_ref, csv_path, plot_path,
            pairs_dir, no_resize, device, speed, quiet, **remedies):
    """Measure exposure bias as Ning et al. 2023 do: delta_t of Alg. 4 / Tab. 6, the FID variant of
    Tab. 1, the prediction error nu_t of Sec. 5.3 / Fig. 2 and the Shapiro-Wilk check of App. A.5.

    --mode eps-norm: ||eps_hat||_2 along a sampling chain vs along the forward chain at the same t
    (Ning et al. 2024, Fig. 6), with the eps_scaler their ratio suggests (a suggestion). With
    --eps-scaler / --time-shift every model is also measured with Epsilon Scaling / the time shift
    (rows '<model>+ES<b>', '<model>+TS<w>/<c>'), paired with the first model.

    Discrete eps-models run on their own full T-step chain; other models on the reference schedule
    (--ddpm-schedule) through D(x; sigma_t), sigma_t = sqrt((1 - abar_t) / abar_t). x0_hat is clipped to
    [-1, 1] unless --no-clip. With several --model, every model sees the same images and
    noise, and the delta table adds each model's paired difference to the first (95% t interval).

    \b
    Examples:
      samplerkit exposure-bias --num-images 64 --t 10,50,100,300 --csv eb.csv --plot eb.png
      samplerkit exposure-bias --model adm.pt --model adm-ip.pt --family adm --preset adm-cifar10 \\
          --data cifar10-train.zip --t 100,300,600,1000 --csv eb.csv --plot eb.png --pairs pairs/
      samplerkit exposure-bias --mode nu,normality --stride 10 --num-images 256 --plot nu.png
      samplerkit exposure-bias --mode delta --respacing 100 --t 20,60,100 --eps-scaler 1.005 --time-shift \\
          --ts-window 40 --ts-cutoff 200 --csv eb.csv --plot eb.png
      samplerkit exposure-bias --mode eps-norm --respacing 50 --stride 5 --csv eps.csv --plot eps.png
    """
    log = (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))
    measure = exposure.Settings(modes=_modes(modes), t_values=_int_list(t_values, "--t"), batch=batch, seed=seed,
                                respacing=respacing, reference=old_reference or reference,  # --ref: hidden alias
                                stride=stride, variance=variance,
                                clip_denoised=clip_denoised if old_clip_denoised is None else old_clip_denoised)
    settings = ExposureSettings(models, family, parse_flags(flags), preset, data, num_images, measure, remedies,
                                fid_ref, csv_path, plot_path, pairs_dir, no_resize, device, speed, quiet)
    report = run_experiment(settings, log)
    for mode in measure.modes:
        text = exposure.table(report.current, mode, report.per_image)
        if text:
            click.echo(text)
    for name, summary in report.nu.items():
        click.echo(exposure.nu_text(name, summary))
    for name, summary in report.eps_norm.items():
        click.echo(exposure.eps_norm_text(name, summary))
