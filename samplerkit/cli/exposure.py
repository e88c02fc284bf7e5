"""``samplerkit exposure-bias``: the exposure-bias report of Ning et al. 2023 (Sec. 4, 5.3, App. A.1, A.5)."""

from __future__ import annotations

import re

import click
import numpy as np
import torch

from .. import exposure
from .. import metrics as metrics_lib
from .. import speed as speed_lib
from ..builtin import DEFAULT_MODEL
from ..data import open_source, to_model_space
from ..data import resize as resize_images
from ..errors import SamplerkitError
from ..remedies import Remedies
from ..results import check_experiment
from ..runs import model_sha256
from ..samplers import VARIANCES
from ._options import SamplerCommand, device_option, hidden_alias, load_model, model_options, speed_option


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise SamplerkitError(f"bad {what} {text!r}; use comma-separated integers like 100,300,600,1000") from None
    if not values:
        raise SamplerkitError(f"{what} is empty; use e.g. 100,300,600,1000")
    return values


def _load_models(names, family, flags, preset, device, speed="exact", batch: int = 64,
                 log=lambda s: None) -> list[exposure.ModelSpec]:
    """The models, each under the run's speed policy (:mod:`samplerkit.speed`), which is logged."""

    specs = []
    for name in names:
        net = load_model(name, family, flags, preset, device=device)
        net, record = speed_lib.for_denoiser(net.eval(), speed, batch, device)
        log(f"speed: {name}: {record['mode']} -> {record['policy']}")
        specs.append(exposure.ModelSpec(name, net, model_sha256(name)))
    return specs


def _load_images(data: str, n: int, specs, resize: bool, seed: int, log):
    """The first n images of the source as [-1, 1] NCHW float64 at the models' resolution, and labels."""
    resolutions = {int(getattr(s.net, "img_resolution", 0)) for s in specs} - {0}
    if len(resolutions) > 1:
        raise SamplerkitError(f"the models have different resolutions {sorted(resolutions)}; run them separately")
    for s in specs:
        if getattr(s.net, "img_channels", 3) != 3:
            raise SamplerkitError(f"{s.name} has {s.net.img_channels} channels; the data sources are RGB (3 channels)")
    src = open_source(data)
    if n > len(src):
        log(f"note: {data} holds {len(src)} images; using all of them instead of {n}")
        n = len(src)
    resolution = resolutions.pop() if resolutions else src.resolution
    if src.resolution != resolution and not resize:
        raise SamplerkitError(f"{data} has {src.resolution}x{src.resolution} images but the model expects "
                              f"{resolution}x{resolution}; drop --no-resize to centre-crop and resize them")
    chunks, labels = [], []
    for images, lab in src.batches(256, limit=n):
        chunks.append(to_model_space(resize_images(images, resolution) if resize else images).double())
        labels.append(lab)
    x0 = torch.cat(chunks)
    lab = np.concatenate(labels) if all(v is not None for v in labels) else None
    label_dim = max(int(getattr(s.net, "label_dim", 0)) for s in specs)
    if label_dim == 0:
        return x0, None
    if lab is None or int(lab.max()) >= label_dim:
        log(f"note: {data} has no usable class labels for a {label_dim}-class model; "
            f"drawing them at random (seed {seed})")
        lab = np.random.default_rng([seed, 1]).integers(label_dim, size=n)
    return x0, torch.as_tensor(lab, dtype=torch.int64)


def _with_remedies(specs, settings, remedies: Remedies) -> list[exposure.ModelSpec]:
    """Every model as given, each followed by its remedied variants: '<name>+ES<b>' (Epsilon
    Scaling, Ning et al. 2024) and '<name>+TS<w>/<c>' (time shift, Li et al. 2024), so that the
    delta table pairs them with the first model on the same images and noise."""
    out = []
    es = Remedies(remedies.eps_scaler, remedies.slope) if remedies.eps_scaler is not None else None
    ts = Remedies(time_shift=remedies.time_shift) if remedies.time_shift is not None else None
    for spec in specs:
        out.append(spec)
        chain = settings.chain(spec.net)
        if es is not None:
            net, _ = es.apply(spec.net, exposure.chain_sigmas(chain.alpha_bar))
            out.append(exposure.ModelSpec(spec.name + es.label(), net, spec.sha256))
        if ts is not None:
            ts.time_shift.bind(spec.net, chain.alpha_bar, "ancestral")  # a model without a discrete chain fails here
            out.append(exposure.ModelSpec(spec.name + ts.label(), spec.net, spec.sha256, time_shift=ts.time_shift))
    return out


def _modes(values: tuple[str, ...]) -> tuple[str, ...]:
    modes = tuple(dict.fromkeys(m.strip() for v in values for m in v.split(",") if m.strip()))
    return modes or ("delta",)


def _fid_features(device, speed="exact"):
    """features(uint8 NHWC) -> [n, 2048]: the Inception network of the FID."""
    return speed_lib.for_inception(metrics_lib.inception(device=device), speed, device)[0]


def _fid_reference(path: str | None):
    if path is None:
        return None
    try:
        with np.load(path) as f:
            return f["mu"], f["sigma"]
    except (OSError, KeyError, ValueError) as e:
        raise SamplerkitError(f"{path}: not an npz with 'mu' and 'sigma' ({type(e).__name__})") from None


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
    reference = old_reference or reference  # --ref and --clip-denoised: the spellings before 0.x, hidden
    clip_denoised = clip_denoised if old_clip_denoised is None else old_clip_denoised
    if num_images < 1:
        raise SamplerkitError(f"--num-images must be >= 1, got {num_images}")
    settings = exposure.Settings(modes=_modes(modes), t_values=_int_list(t_values, "--t"),
                                 batch=batch, seed=seed, respacing=respacing, reference=reference, stride=stride,
                                 clip_denoised=clip_denoised, variance=variance,
                                 data=data + (";noresize" if no_resize else ""))
    speed = speed or speed_lib.default_mode()
    specs = _load_models(models, family, flags, preset, device, speed, batch, log)
    specs = _with_remedies(specs, settings, Remedies.from_options(**remedies))
    exposure.plan(specs, num_images, settings)  # bad t values fail before any data is read
    x0, labels = _load_images(data, num_images, specs, not no_resize, seed, log)
    features = real = None
    if "fid" in settings.modes:
        features = _fid_features(device, speed)
        real = _fid_reference(fid_ref)
    _check_one_experiment(csv_path, specs, len(x0), settings.data)
    report = exposure.run(specs, x0, labels, settings, csv_path=csv_path, features=features, real_features=real,
                          device=device, log=log, show_progress=not quiet)
    for mode in settings.modes:
        text = exposure.table(report.current, mode)
        if text:
            click.echo(text)
    for name, summary in report.nu.items():
        click.echo(exposure.nu_text(name, summary))
    for name, summary in report.eps_norm.items():
        click.echo(exposure.eps_norm_text(name, summary))
    if plot_path:
        for mode in settings.modes:
            path = exposure.companion_path(plot_path, mode, settings.modes[0])
            if exposure.plot(report.current, mode, path) is not None:
                log(f"wrote {path}")
        hist = exposure.companion_path(plot_path, "histograms")
        if exposure.plot_histograms(report.histograms, hist) is not None:
            log(f"wrote {hist}")
    if pairs_dir and report.pairs:
        written = exposure.save_pairs(report.pairs, pairs_dir)
        log(f"wrote {len(written)} image-pair PNGs to {pairs_dir}")
    if csv_path:
        log(f"wrote {csv_path}")


def _settings_part(text: str, name: str) -> str | None:
    """The value of ``name=`` in an exposure-bias row's settings column (parts joined by ';' in the
    order chain, data, clip, ...; a data source may itself hold ';noresize')."""
    m = re.search(rf"(?:^|;){name}=(.*?)(?:;clip=|$)", text)
    return m.group(1) if m else None


def _check_one_experiment(csv_path, specs, n: int, data: str) -> None:
    """The CSV holds one experiment: the same models (remedy variants included), images and data."""
    check_experiment(csv_path, "exposure-bias rows", {"model": [s.name for s in specs], "n": {n}, "data": {data}},
                     of_row={"data": lambda row: _settings_part(row.get("settings", ""), "data")})
