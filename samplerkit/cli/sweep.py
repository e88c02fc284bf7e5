"""``samplerkit sweep``: NFE vs FID over samplers and step counts (Karras et al. 2022 (EDM), Fig. 2)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import click

from .. import distributed
from .. import metrics as metrics_lib
from .. import speed as speed_lib
from .. import sweep as sweep_lib
from ..autoencoders import RGBIdentity, autoencoder_of
from ..builtin import DEFAULT_MODEL
from ..errors import SamplerkitError
from ..guidance import Guidance, Guided
from ..lookup import guidance_loader, model_guidance
from ..remedies import REMEDY_KNOBS, Remedies
from ..results import check_experiment
from ..runs import model_sha256, resolve_sampler
from ..seeds import parse_seeds
from ._options import (
    SamplerCommand,
    chosen_options,
    device_option,
    load_model,
    model_options,
    parse_flags,
    speed_option,
)
from .fid import (
    DINO,
    _check_dim,
    check_dinov2_pipeline,
    check_dinov2_reference,
    check_evaluation,
    check_pkl_reference,
    check_reference,
    check_stored_mode,
    dinov2_extractor,
    dinov2_options,
    evaluation_options,
    note_reference,
    warn_small_sample,
)
from .fid import _references as computed


def _names(text: str, what: str) -> list[str]:
    names = list(dict.fromkeys(v.strip() for v in str(text).split(",") if v.strip()))
    if not names:
        raise SamplerkitError(f"{what} is empty")
    return names


def _steps(text: str) -> list[int]:
    try:
        steps = [int(v) for v in _names(text, "--steps")]
    except ValueError:
        raise SamplerkitError(f"bad --steps {text!r}; use comma-separated integers like 5,10,18,32,64") from None
    if any(s < 1 for s in steps):
        raise SamplerkitError(f"--steps must be >= 1, got {text}")
    return steps


def _seeds(spec: str | None, num_images: int | None) -> list[int]:
    if spec is None:
        n = 1000 if num_images is None else num_images
        if n < 2:
            raise SamplerkitError(f"--num-images must be >= 2, got {n}")
        return list(range(n))
    seeds = parse_seeds(spec)
    if num_images is not None and len(seeds) != num_images:
        raise SamplerkitError(f"--seeds {spec} gives {len(seeds)} seeds but --num-images is {num_images}; "
                              "give one of them or make them agree")
    return seeds


def _reference_cache(ref: str, ref_images, metrics, csv_path: Path, mode: str = "clean") -> Path:
    """Where the reference statistics computed for a sweep are kept: beside the CSV, named for the
    reference (path, size and mtime), the image count, the metrics and the feature mode."""
    path = Path(ref)
    stamp = f"{path.stat().st_size}:{path.stat().st_mtime_ns}" if path.exists() else ""
    tag = hashlib.sha256(f"{ref}|{stamp}|{ref_images}|{','.join(metrics)}|{mode}".encode()).hexdigest()[:12]
    return csv_path.with_name(f"{csv_path.stem}.ref-{tag}.npz")


def _check_reference(ref: str, ref_images, metrics, csv_path: Path, log, mode: str = "clean"):
    """Before any work: the statistics held by --ref or cached beside the CSV, else the checked
    images to compute them from (see :func:`samplerkit.cli.fid.check_reference`)."""
    metrics = metrics_lib.reference_metrics(metrics)
    cache = _reference_cache(ref, ref_images, metrics, csv_path, mode)
    stats = metrics_lib.load_statistics(cache) if cache.is_file() else None
    if stats is not None and set(metrics) <= set(stats.metrics()):
        _check_dim(stats, str(cache))
        log(f"reference statistics of {ref} from {cache}")
        return stats
    return check_reference(ref, metrics, ref_images, mode=mode)


def _check_references(ref: str, ref_images, wanted, want_dino: bool, csv_path: Path, log, mode: str,
                      resize: str, force: bool) -> tuple:
    """(Inception, DINOv2) reference as checked before any work: stored statistics (an EDM2 .pkl, a stats
    .npz, or those cached beside the CSV), the images to compute them from, or None when not asked."""
    if Path(ref).suffix.lower() == ".pkl":
        checked, dino_checked = check_pkl_reference(ref, wanted, want_dino)
    else:
        checked, dino_checked = _check_image_references(ref, ref_images, wanted, want_dino, csv_path, log, mode,
                                                        resize)
    if checked is not None:
        check_stored_mode(checked, mode, force)
    return checked, dino_checked


def _check_image_references(ref, ref_images, wanted, want_dino, csv_path, log, mode, resize) -> tuple:
    checked = _check_reference(ref, ref_images, wanted, csv_path, log, mode) if wanted else None
    dino_checked = None
    if want_dino:
        cache = _dinov2_cache(ref, ref_images, csv_path, resize)
        if cache.is_file():
            log(f"DINOv2 reference statistics of {ref} from {cache}")
            return checked, metrics_lib.read_reference(cache)[DINO]
        dino_checked = checked if isinstance(checked, tuple) else check_dinov2_reference(ref, ref_images)
    return checked, dino_checked


def _dinov2_cache(ref: str, ref_images, csv_path: Path, resize: str) -> Path:
    """Where the DINOv2 reference statistics computed for a sweep are kept: beside the CSV, an EDM2-layout .pkl."""
    return _reference_cache(ref, ref_images, [DINO], csv_path, f"dinov2-{resize}").with_suffix(".pkl")


def _references(ref: str, checked, dino_checked, ref_images, wanted, features, dino, csv_path: Path, batch: int,
                quiet: bool, log) -> tuple:
    """(Inception, DINOv2) reference statistics: as checked, or computed (one read of each reference image for
    both networks) and cached beside the CSV."""
    reference, dino_ref = computed(ref, wanted, checked, dino_checked, features, dino, ref_images, batch, False, quiet)
    if isinstance(checked, tuple) and not reference.origin:
        cache = _reference_cache(ref, ref_images, metrics_lib.reference_metrics(wanted), csv_path,
                                 getattr(features, "mode", "clean"))
        if distributed.is_main():
            reference.save(cache)
            log(f"wrote reference statistics of {ref} to {cache}")
    if isinstance(dino_checked, tuple) and distributed.is_main():
        cache = _dinov2_cache(ref, ref_images, csv_path, dino.resize_mode)
        metrics_lib.save_reference({DINO: dino_ref}, cache)
        log(f"wrote DINOv2 reference statistics of {ref} to {cache}")
    return reference, dino_ref


def _evaluators(wanted, want_dino, inception, dinov2, device, batch: int, speed: str, fid_mode: str, dino_checked,
                force: bool) -> tuple:
    """(Inception features or None, DINOv2 extractor or None) for the metrics asked; ``dinov2``: (weights, resize)."""
    features = dino = None
    if wanted:
        features = metrics_lib.inception(inception, device, mode=fid_mode)
        features, _ = speed_lib.for_inception(features, speed, device)
        if "is" in wanted:
            metrics_lib.require_logits(features)
    if want_dino:
        dino = dinov2_extractor(*dinov2, device, batch, speed)
        check_dinov2_pipeline(dino, dino_checked, force)
    return features, dino


def _experiment(model: str, n_images: int, reference, dino_ref, features, dino) -> dict:
    """What every row of the CSV must share: model, reference (and its pipeline), image count."""
    experiment = {"model": {model}, "ref": {(reference or dino_ref).fingerprint()},
                  "n_images": {n_images}}  # a guided cell's model column names the classifier after " + "
    if features is not None:
        experiment["mode"] = {getattr(features, "mode", "clean")}
    if dino is not None:
        experiment.update(ref_dinov2={dino_ref.fingerprint()}, dinov2_pipeline={sweep_lib.dinov2_pipeline(dino)})
    return experiment


def _check_inception_reference(reference, ref: str, wanted, mode: str, kid_subset_size, n_images: int, log) -> None:
    """KID's subset size against the reference's image count, and the note on which statistics stand for it."""
    if reference is None:
        return
    if "kid" in wanted and kid_subset_size is not None:
        metrics_lib.check_subset_size(n_images, reference.n or n_images, kid_subset_size)
    note = note_reference(reference, ref, mode)
    if note:
        log(note)


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
      samplerkit sweep --sampler heun,euler --steps 4,8,16 --num-images 256 \\
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
    wanted, want_dino, every = sweep_lib.sweep_metrics(metrics)
    options = chosen_options(knobs)
    if samplers is None:  # the model's recommended sampler and its settings, as `samplerkit sample` picks them
        rec_sampler, _, options = resolve_sampler(model, None, None, options)
        samplers = rec_sampler
    remedies = Remedies.axis(**{k: options.pop(k) for k in REMEDY_KNOBS if k in options})  # one more axis
    names = _names(samplers, "--sampler")
    step_list = _steps(steps)
    seed_list = _seeds(seeds, num_images)
    if len(seed_list) < 2:
        raise SamplerkitError("a sweep needs at least 2 images per cell")
    if batch < 1:
        raise SamplerkitError(f"--batch must be >= 1, got {batch}")
    sweep_lib.check_options(names, options)
    guidances = Guidance.from_options(classifier, parse_flags(classifier_flags), classifier_scale, guidance_form,
                                      **_second_network(guide_model, guidance_weight, guidance_interval, cfg, cfg_form),
                                      model_guidance=model_guidance(model))
    csv_file = Path(csv_path)
    sweep_lib.read_csv(csv_file)  # an unreadable CSV or a bad reference fails before any work
    checked, dino_checked = _check_references(ref, ref_images, wanted, want_dino, csv_file, log, fid_mode,
                                              dinov2_resize, force_pipeline)
    check_evaluation(every, kid_subsets, kid_subset_size, bootstrap_rounds, len(seed_list))
    warn_small_sample(len(seed_list), every)

    distributed.init(device)  # under torchrun: each process measures its block of the seeds
    device = distributed.local_device(device)
    if not distributed.is_main():
        log = lambda s: None  # noqa: E731
    net, preset_gnet, autoencoder = _load(model, family, flags, preset, device)
    speed = speed or speed_lib.default_mode()
    net, speed_record = speed_lib.for_denoiser(net, speed, min(batch, len(seed_list)), device)
    log(f"speed: {speed_record['mode']} -> {speed_record['policy']}")
    features, dino = _evaluators(wanted, want_dino, inception, (dinov2_weights, dinov2_resize), device, batch, speed,
                                 fid_mode, dino_checked, force_pipeline)
    reference, dino_ref = _references(ref, checked, dino_checked, ref_images, wanted, features, dino, csv_file, batch,
                                      quiet, log)
    check_experiment(csv_file, "sweep rows", _experiment(model, len(seed_list), reference, dino_ref, features, dino),
                     of_row={"model": lambda row: (row.get("model") or "").split(" + ")[0]})
    _check_inception_reference(reference, ref, wanted, fid_mode, kid_subset_size, len(seed_list), log)
    evaluation = {"kid_subsets": kid_subsets, "kid_subset_size": kid_subset_size, "seed": eval_seed,
                  "force": force_pipeline}

    cells = _guided_cells(model, model_sha256(model), guidances, preset_gnet, device)
    rows = []
    for guidance, cell_model, cell_sha in cells:
        label_dim = guidance.label_dim if guidance is not None and guidance.label_dim is not None else net.label_dim
        found = sweep_lib.run(net, names, step_list, seed_list, reference, features, csv_path=csv_file,
                              model=cell_model, sha256=cell_sha, metrics=every, evaluation=evaluation,
                              bootstrap=bootstrap_rounds, options=options, remedies=remedies, guidance=guidance,
                              batch_size=batch, device=device, class_labels="random" if label_dim else None,
                              log=log, show_progress=not quiet, speed=speed_record["policy"], autoencoder=autoencoder,
                              dinov2=dino, dinov2_reference=dino_ref)
        rows += found if guidance is None else [{**r, "sampler": f"{r['sampler']} {_axis(guidance)}"} for r in found]
    if not distributed.is_main():
        return
    log(f"wrote {csv_file}")
    if plot_path:
        shown = " and ".join(m for m, asked in (("FID", "fid" in every), ("FD_DINOv2", want_dino)) if asked) or "FID"
        sweep_lib.plot(rows, plot_path, title=f"{model}: {shown} vs NFE ({len(seed_list)} images)")
        log(f"wrote {plot_path}")
    if show_table:
        click.echo(sweep_lib.table(rows, every))


def _axis(guidance: Guidance) -> str:
    """How a table's sampler column names a guidance weight: 's=4' (classifier), 'w=2' (guide model), 'cfg=1.5'."""
    return f"{ {'classifier': 's', 'guided': 'w', 'cfg': 'cfg'}[guidance.kind]}={guidance.scale:g}"


def _guided_cells(model: str, sha: str, guidances: list[Guidance], preset_gnet, device) -> list[tuple]:
    """(guidance, model column, sha256 column) of every cell set: one per guidance weight, its guiding
    network loaded once (a guided preset's own, already loaded, when the run names no other); the model
    and sha256 columns name the guiding network too."""
    if not guidances:
        return [(None, model, sha)]
    first = guidances[0]
    if first.kind == "cfg":
        return [(g, f"{model} + {g.label()}", sha) for g in guidances]
    network = preset_gnet if preset_gnet is not None and first.name == getattr(preset_gnet, "name", None) else None
    network = network if network is not None else guidance_loader(first.kind, device)(first.name, first.flags)
    g_sha = model_sha256(first.name)
    loaded = [g.load(lambda name, flags: network, g_sha or None) for g in guidances]
    return [(g, f"{model} + {g.label()}", f"{sha} + {g_sha}") for g in loaded]


def _second_network(guide_model, guidance_weight, guidance_interval, cfg, cfg_form) -> dict:
    """The guidance options beyond the classifier's, by their Python names."""
    return {"guide_model": guide_model, "guidance_weight": guidance_weight, "guidance_interval": guidance_interval,
            "cfg": cfg, "cfg_form": cfg_form}


def _load(model: str, family, flags, preset, device):
    """(the model's network, a guided preset's guiding network or None, its autoencoder), checked: FID
    needs RGB pixels, which a latent model gives through its autoencoder (whose optional extra must be
    installed: one line, before any work)."""
    net = load_model(model, family, flags, preset, device=device).eval()
    net, preset_gnet = (net.inner, net.gnet) if isinstance(net, Guided) else (net, None)
    autoencoder = autoencoder_of(net)
    autoencoder.check()
    if getattr(net, "img_channels", 3) != 3 and isinstance(autoencoder, RGBIdentity):
        raise SamplerkitError(f"{model} makes {net.img_channels}-channel images; FID needs RGB (3 channels)")
    return net, preset_gnet, autoencoder
