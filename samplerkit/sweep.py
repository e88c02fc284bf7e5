"""NFE-vs-FID sweeps: samplers x step counts -> one CSV row per cell and a plot like Karras et al. 2022 (EDM), Fig. 2.

Each cell (sampler, steps) generates the same seeds through :func:`samplerkit.generate.generate`
(the code path of ``samplerkit sample``) and measures the images straight from the tensors
(:mod:`samplerkit.metrics`). A cell is identified by (model, sha256, sampler, steps, settings,
n_images, seeds, reference); a row with that identity and the asked metrics already in the CSV
is not recomputed, so a killed sweep resumes where it stopped. The CSV
(:class:`samplerkit.results.ResultsCSV`) is rewritten atomically after every cell.

With ``bootstrap`` rounds every row carries percentile intervals of FID and KID and, for every
cell but the first sampler's, the paired difference to the first sampler at the same step count
(same seeds, resampled jointly); the cells' pool features are then kept beside the CSV
(``<csv>.feats/``) so that a resumed sweep can still pair with a finished cell. Under ``torchrun``
each process generates and measures its block of the seeds; the statistics are gathered exactly
and rank 0 writes the CSV.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import distributed, evaluation, plots
from . import metrics as metrics_lib
from . import samplers as samplers_table
from . import speed as speed_lib
from .autoencoders import RGBIdentity, autoencoder_of
from .builtin import DEFAULT_MODEL
from .errors import SamplerkitError
from .evaluation import (
    DINO,
    check_dinov2_pipeline,
    check_dinov2_reference,
    check_evaluation,
    check_pkl_reference,
    check_stored_mode,
    dinov2_extractor,
    note_reference,
    warn_small_sample,
)
from .generate import check_settings, clip_note, generate, make_sampler, outside_note, sampler_options
from .guidance import Guidance, Guided
from .lookup import ModelRef, guidance_loader, model_sha256, resolve_sampler
from .metrics import KID_SUBSETS, PR_K, MultiStatsBuilder, Statistics, evaluate, intervals, refs_edm2, split_metrics
from .metrics import block as metrics_block
from .output import atomic_write
from .remedies import REMEDY_KNOBS, Remedies
from .results import ResultsCSV, check_experiment
from .seeds import parse_seeds

# Interval columns (fid_lo, fid_hi, kid_lo, kid_hi; baseline, fid_diff, fid_diff_lo, ...; bootstrap_rounds)
# and the feature mode follow these, sorted, in the rows that have them.
CSV_COLUMNS = (
    "model", "sha256", "sampler", "steps", "nfe", "fid", "sfid", "precision", "recall", "kid", "kid_std", "is",
    "is_std", "n_images", "seeds", "seconds", "images_per_s", "eval_seconds", "ref", "settings", "evaluation", "speed",
)
KEY_COLUMNS = ("model", "sha256", "sampler", "steps", "settings", "n_images", "seeds", "ref")
_METRIC_COLUMNS = {"fid": ("fid",), "sfid": ("sfid",), "pr": ("precision", "recall"), "kid": ("kid", "kid_std"),
                   "is": ("is", "is_std"), "fd_dinov2": ("fd_dinov2",)}
INTERVAL_METRICS = ("fid", "kid", DINO)  # the metrics with bootstrap intervals


def sweep_metrics(metrics) -> tuple[tuple[str, ...], bool, tuple[str, ...]]:
    """(Inception metrics, whether fd_dinov2 is asked, all of them in column order) of a metrics list."""
    wanted, want_dino = split_metrics(metrics)
    every = (wanted[:1] + ((DINO,) if want_dino else ()) + wanted[1:]) if wanted[:1] == ("fid",) else (
        wanted + ((DINO,) if want_dino else ()))
    return wanted, want_dino, every


def seeds_text(seeds: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (the seed column of the CSV)."""
    parts, start = [], None
    for i, s in enumerate(seeds):
        if start is None:
            start = s
        if i + 1 == len(seeds) or seeds[i + 1] != s + 1:
            parts.append(str(start) if start == s else f"{start}-{s}")
            start = None
    return ",".join(parts)


def options_for(sampler: str, options: dict | None) -> dict:
    """The user-set options that apply to ``sampler`` (the others belong to other samplers)."""
    return {k: v for k, v in (options or {}).items() if v is not None and k in sampler_options(sampler)}


def check_options(samplers: Sequence[str], options: dict | None) -> None:
    """Every user-set option must apply to at least one of the chosen samplers."""
    for name in samplers:
        samplers_table.info(name)  # an unknown name is an error that lists the choices
    for key, value in (options or {}).items():
        if value is not None and not any(key in sampler_options(s) for s in samplers):
            raise SamplerkitError(f"option {key} applies to none of the chosen samplers ({', '.join(samplers)})")


def remedy_axis(remedies: Sequence[Remedies] | dict | None = None,
                eps_scalers: Sequence[float] | None = None) -> list[Remedies]:
    """The sweep's remedies axis: a list of :class:`~samplerkit.remedies.Remedies` as given, or made from
    option names (``remedies`` a dict of ``eps_scaler_slope`` and the time-shift options, one cell set
    per Epsilon Scaling value of ``eps_scalers``). [Remedies()] when there are none."""
    if remedies is None or isinstance(remedies, dict):
        return Remedies.axis(list(eps_scalers) if eps_scalers else None, **(remedies or {}))
    if eps_scalers:
        raise SamplerkitError("give the eps_scaler values inside the remedies axis, not beside it")
    return list(remedies) or [Remedies()]


def results_csv(path: str | Path) -> ResultsCSV:
    """The sweep's CSV at ``path``: one row per (model, sampler, steps, settings, images, reference)."""
    return ResultsCSV(path, CSV_COLUMNS, KEY_COLUMNS, "a sweep")


def read_csv(path: str | Path) -> list[dict]:
    """Rows of an existing sweep CSV as dicts of strings ([] if there is none)."""
    return results_csv(path).read()


def evaluation_id(metrics: Sequence[str], evaluation: dict, bootstrap: int = 0) -> str:
    """The evaluation settings a row's random metric columns depend on (the "evaluation" column): KID's
    subset count, size and seed, and the bootstrap's seed; "" when no such column is asked for. Not
    part of a cell's identity (the images are the same), but a finished row counts as finished only
    when they match, so a rerun with other KID or bootstrap settings re-evaluates instead of keeping
    numbers of other settings."""
    if "kid" not in metrics and not bootstrap:
        return ""
    keys = ("kid_subsets", "kid_subset_size", "seed") if "kid" in metrics else ("seed",)
    return json.dumps({k: evaluation.get(k) for k in keys}, sort_keys=True)


def _complete(row: dict | None, metrics: Sequence[str], bootstrap: int = 0, evaluation: str = "") -> bool:
    if row is None:
        return False
    if evaluation and str(row.get("evaluation") or "") != evaluation:
        return False
    cols = [col for m in metrics for col in _METRIC_COLUMNS[m]]
    if bootstrap:
        cols += [f"{m}_{end}" for m in metrics if m in INTERVAL_METRICS for end in ("lo", "hi")]
        if str(row.get("bootstrap_rounds", "")) != str(bootstrap):
            return False
    return all(str(row.get(col, "")) != "" for col in cols)


def _feats_path(csv_path: Path, key: tuple) -> Path:
    """Where a cell's pool features are kept for paired bootstrap intervals (beside the CSV)."""
    import hashlib

    digest = hashlib.sha256("|".join(key).encode()).hexdigest()[:16]
    return csv_path.with_name(f"{csv_path.name}.feats") / f"{digest}.npy"


def _save_feats(path: Path, feats: np.ndarray) -> None:
    import io

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, np.asarray(feats, np.float32))
    atomic_write(path, buf.getvalue())


def run_cells(
    net, samplers: Sequence[str], steps: Sequence[int], seeds: Sequence[int], reference: Statistics, features, *,
    csv_path: str | Path, model: str = "", sha256: str = "", metrics: Sequence[str] = ("fid",),
    evaluation: dict | None = None, bootstrap: int = 0, options: dict | None = None,
    eps_scalers: Sequence[float] | None = None, remedies: Sequence[Remedies] | dict | None = None,
    guidance: Guidance | None = None, batch_size: int = 64, class_labels=None, device="cpu",
    log: Callable[[str], None] = lambda s: None, show_progress: bool = False, speed: str = "",
    autoencoder=None, dinov2=None, dinov2_reference: Statistics | None = None, recommended: dict | None = None,
) -> list[dict]:
    """Run (or resume) the cells of a loaded network ``net``; return its rows (one per sampler x steps, in
    that order). :func:`run` with :class:`SweepSettings` loads the model and the references first.

    ``features``: an :class:`samplerkit.metrics.Inception` (or any object with ``extract(images,
    spatial)``, or a ``callable(uint8 NHWC) -> [n, d]``); ``reference``: the statistics to
    compare against. ``options``: sampler knobs the user set (each goes to the samplers that
    take it, see :func:`samplerkit.generate.sampler_options`). ``remedies``: a list of
    :class:`~samplerkit.remedies.Remedies`, one more axis of cells (each row records them; the time
    shift goes to ddim/ancestral only), or their options as :func:`remedy_axis` takes them with
    ``eps_scalers``. ``guidance``: a loaded :class:`~samplerkit.guidance.Guidance` every cell runs under.
    ``evaluation``: keyword arguments of :func:`samplerkit.metrics.evaluate` (``kid_subsets``,
    ``kid_subset_size``, ``seed``, ``force``); ``bootstrap``: rounds of the FID/KID intervals (0: none).
    ``speed``: the network-execution policy ``net`` runs under (:mod:`samplerkit.speed`), recorded in
    the rows this call computes (not part of a cell's identity: within its tolerance it moves no image
    by a level). ``autoencoder``: how samples become pixels (default: ``net``'s; latent models are decoded);
    ``dinov2``, ``dinov2_reference``: fd_dinov2's extractor and reference (:func:`reference_columns`).
    ``recommended``: the model's recommended settings; the notes of an unclipped sigma-space solver on a
    model whose own sampler clips (before) and of output mostly outside [-1, 1] (after a cell) use them.
    """
    wanted, want_dino, metrics = sweep_metrics(metrics)
    ref_columns = reference_columns(wanted, want_dino, reference, features, dinov2, dinov2_reference)
    axis = remedy_axis(remedies, eps_scalers)
    seeds = _checked(samplers, seeds, metrics, options, axis)
    evaluation = dict(evaluation or {})
    eval_id = evaluation_id(metrics, evaluation, bootstrap)
    cells = [(prepared, {"model": model, "sha256": sha256, **row, "n_images": len(seeds), "seeds": seeds_text(seeds),
                         **ref_columns, "evaluation": eval_id})
             for prepared, row in _cells(net, samplers, steps, axis, guidance, options)]
    table, rows, todo = _todo(csv_path, cells, metrics, bootstrap, eval_id)
    baseline_of = _baselines(table, cells)
    mine = [seeds[i] for i in metrics_block(len(seeds))]  # this process's block (all seeds in one process)
    main = distributed.is_main()
    log(f"sweep: {len(todo)} of {len(cells)} cells to run ({len(cells) - len(todo)} already in {csv_path}); "
        f"{sum(c[0].nfe for c in todo) * len(seeds):,d} NFE in total")
    cell = _Cell(mine, features, metrics, evaluation, bootstrap, reference, batch_size, class_labels, device, speed,
                 autoencoder if autoencoder is not None else autoencoder_of(net), dinov2, dinov2_reference)
    for note in dict.fromkeys(clip_note(net, prepared, recommended) for prepared, _ in todo) if main else ():
        if note:
            log(note)
    _run_todo(todo, cell, table, rows, baseline_of, Path(csv_path), show_progress and main, main)
    for prepared, row in todo if main else ():
        if note := outside_note(prepared):
            log(f"note: {row['sampler']}, {row['steps']} steps: {note.removeprefix('note: ')}")
    by_key = {table.key(r): r for r in rows}
    return [by_key[table.key(row)] for _, row in cells]


def _run_todo(todo, cell: _Cell, table: ResultsCSV, rows: list, baseline_of: dict, csv_path: Path, progress: bool,
              main: bool) -> None:
    """Measure each cell still to do, its row put into ``rows`` and the CSV rewritten (by rank 0) after each."""
    bootstrap = cell.bootstrap
    with tqdm(total=len(todo) * len(cell.seeds), unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for prepared, row in todo:
            bar.set_description(f"{row['sampler']} {row['steps']} steps")
            values = cell.measure(prepared, bar)
            if bootstrap:  # its time counts as evaluation
                t0 = time.perf_counter()
                values.update(_all_bootstrap_columns(values["_sample"], cell, table.key(row),
                                                     baseline_of[_baseline_key(row)], csv_path, main))
                values["eval_seconds"] = round(values["eval_seconds"] + time.perf_counter() - t0, 3)
            table.put(rows, dict(row, **{k: v for k, v in values.items() if k != "_sample"}))
            if main:
                table.write(rows)


def _todo(csv_path, cells, metrics, bootstrap: int, eval_id: str) -> tuple:
    """(the CSV, its rows, the cells not yet in it with these metrics and evaluation settings)."""
    table = results_csv(csv_path)
    rows = table.read()
    finished = {table.key(r): r for r in rows}
    todo = [c for c in cells if not _complete(finished.get(table.key(c[1])), metrics, bootstrap, eval_id)]
    return table, rows, todo


def run(settings: SweepSettings, log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Run (or resume) the sweep of ``settings``: the library call behind ``samplerkit sweep`` (the model
    and the references are loaded here, and the plot written when the settings name one). Returns its
    rows on rank 0 (and [] on the other ranks under ``torchrun``). The cells of an already loaded
    network: :func:`run_cells`."""
    if not isinstance(settings, SweepSettings):
        raise SamplerkitError("sweep.run takes a SweepSettings; for a loaded network call sweep.run_cells")
    rows = _run_settings(settings, log)
    if not distributed.is_main():
        return []
    _finish(settings, rows, log)
    return rows


def _baselines(table, cells) -> dict:
    """step count (and remedies) -> key of the first sampler's cell (the baseline of the paired differences)."""
    baseline_of = {}
    for _, row in cells:
        baseline_of.setdefault(_baseline_key(row), table.key(row))
    return baseline_of


def reference_columns(wanted, want_dino: bool, reference, features, dinov2, dinov2_reference) -> dict:
    """The columns that name the reference, after checking that the metrics asked have what they need: ``ref``
    (part of a cell's identity; the Inception statistics', else the DINOv2 ones') and, with fd_dinov2 (each
    generated batch then goes to both networks), ``ref_dinov2`` and ``dinov2_pipeline`` (resize mode, weights)."""
    if wanted and (reference is None or features is None):
        raise SamplerkitError(f"{', '.join(wanted)} need reference statistics and an Inception feature extractor")
    if want_dino and (dinov2 is None or dinov2_reference is None):
        raise SamplerkitError("fd_dinov2 needs a DINOv2 feature extractor (dinov2) and its reference statistics "
                              "(dinov2_reference)")
    out = {"ref": (reference if wanted else dinov2_reference).fingerprint()}
    if want_dino:
        out.update(ref_dinov2=dinov2_reference.fingerprint(), dinov2_pipeline=dinov2_pipeline(dinov2))
    return out


def dinov2_pipeline(dinov2) -> str:
    """'dinov2-torch 1a2b3c4d5e6f7a8b': the DINOv2 preprocessing and the weights' sha256 (16 hex digits)."""
    return f"{getattr(dinov2, 'mode', '')} {getattr(dinov2, 'sha256', '')[:16]}".strip()


def _checked(samplers, seeds, metrics, options, axis) -> list[int]:
    """The seeds as ints, after checking the sweep's samplers, options, remedies and image count."""
    check_options(samplers, options)
    if any(r.time_shift is not None for r in axis) and not any(
            samplers_table.info(name).grid == "chain" for name in samplers):
        raise SamplerkitError("time_shift applies to ddim and ancestral; none of the chosen samplers is one")
    seeds = [int(s) for s in seeds]
    if len(seeds) < 2:
        raise SamplerkitError(f"a sweep needs at least 2 images per cell, got {len(seeds)}")
    if "pr" in metrics and len(seeds) <= PR_K:
        raise SamplerkitError(f"precision/recall (k = {PR_K}) need more than {PR_K} images per cell")
    return seeds


def _cells(net, samplers, steps, axis, guidance, options) -> list[tuple]:
    """(prepared sampler, its row's identity columns) for every sampler x remedies x step count."""
    cells = []
    for name in samplers:
        chain = samplers_table.info(name).grid == "chain"
        for remedy in axis:
            for n_steps in steps:
                prepared = make_sampler(net, name, int(n_steps), remedies=remedy.for_sampler(chain),
                                        guidance=guidance, **options_for(name, options))
                settings = {k: v for k, v in prepared.settings.items() if k not in ("sampler", "steps")}
                cells.append((prepared, {
                    "sampler": name, "steps": int(n_steps), "nfe": prepared.nfe,
                    "settings": json.dumps(settings, sort_keys=True), "eps_scaler": settings.get("eps_scaler", ""),
                    "time_shift": int(bool(settings.get("time_shift"))), **_guidance_columns(guidance)}))
    return cells


def _baselines(table: ResultsCSV, cells) -> dict:
    """Step count (and remedy) -> key of the first sampler's cell: the baseline of the paired differences."""
    baseline_of = {}
    for _, row in cells:
        baseline_of.setdefault(_baseline_key(row), table.key(row))
    return baseline_of


def _guidance_columns(guidance) -> dict:
    """A guided or classifier-free cell's guidance columns (:meth:`~samplerkit.guidance.Guidance.settings`:
    the guiding network, its sha256, the weight, the interval); classifier guidance is named in the model column."""
    return guidance.settings() if guidance is not None and guidance.kind != "classifier" else {}


def _baseline_key(row: dict) -> tuple:
    return row["steps"], row["eps_scaler"], row["time_shift"]


@dataclass
class _Cell:
    """How every cell of a sweep is measured: its seeds (this process's block), the features and
    metrics, the evaluation settings and the reference."""

    seeds: list[int]
    features: object
    metrics: Sequence[str]
    evaluation: dict
    bootstrap: int
    reference: Statistics
    batch_size: int
    class_labels: object
    device: object
    speed: str
    autoencoder: object = None  # model space -> uint8 pixels
    dinov2: object = None
    dinov2_reference: Statistics | None = None

    def measure(self, prepared, bar) -> dict:
        """The metric and timing columns of one cell ("_sample": its statistics by metric, for the intervals)."""
        builder = MultiStatsBuilder.for_metrics(self.metrics, inception=self.features, dinov2=self.dinov2,
                                                keep_feats=bool(self.bootstrap))
        sample_seconds = eval_seconds = 0.0
        t0 = time.perf_counter()
        for _, x, _ in generate(prepared.net, prepared, self.seeds, self.batch_size, self.class_labels, self.device):
            t1 = time.perf_counter()
            builder.add(self.autoencoder.decode(x).permute(0, 2, 3, 1).cpu().numpy())  # uint8 NHWC
            t2 = time.perf_counter()
            sample_seconds += t1 - t0
            eval_seconds += t2 - t1
            bar.update(len(x))
            t0 = time.perf_counter()
        t1 = time.perf_counter()
        builder.gather()
        sample = builder.result()
        wanted = [m for m in self.metrics if m != DINO]
        values = evaluate(sample["fid"], self.reference, wanted, **self.evaluation) if wanted else {}
        if DINO in sample:
            values[DINO] = refs_edm2.frechet(DINO, sample[DINO], self.dinov2_reference,
                                             self.evaluation.get("force", False))
        eval_seconds += time.perf_counter() - t1
        if "fid" in sample:
            values["mode"] = sample["fid"].mode
        if prepared.measured_nfe is not None:  # an adaptive solver: the NFE it took, not the nominal N
            values["nfe"] = round(prepared.measured_nfe, 1)
        return dict(values, seconds=round(sample_seconds, 3), eval_seconds=round(eval_seconds, 3),
                    images_per_s=round(len(self.seeds) / sample_seconds, 3) if sample_seconds > 0 else "",
                    speed=self.speed, _sample=sample)


def _all_bootstrap_columns(sample: dict, cell: _Cell, key: tuple, baseline: tuple, csv_path: Path, main: bool) -> dict:
    """The interval columns of one cell for the Inception metrics and FD_DINOv2 (FID's intervals on the DINOv2
    features, their features kept beside the CSV under their own name)."""
    seed = cell.evaluation.get("seed", 0)
    out = {}
    wanted = [m for m in cell.metrics if m != DINO]
    if wanted:
        out.update(_bootstrap_columns(sample["fid"], cell.reference, wanted, cell.bootstrap, seed, key, baseline,
                                      csv_path, main))
    if DINO in sample:
        got = _bootstrap_columns(sample[DINO], cell.dinov2_reference, ["fid"], cell.bootstrap, seed, key + (DINO,),
                                 baseline + (DINO,), csv_path, main)
        out.update({(DINO + k[len("fid"):] if k.startswith("fid_") else k): v for k, v in got.items()})
    return out


def _bootstrap_columns(sample, reference, metrics, rounds: int, seed: int, key: tuple, baseline: tuple,
                       csv_path: Path, main: bool) -> dict:
    """The interval columns of one cell: its own FID/KID intervals and, unless it is its own
    baseline, the paired difference to the baseline cell (whose features are read from beside the CSV)."""
    if main:
        _save_feats(_feats_path(csv_path, key), sample.feats)
    out = dict(intervals(sample, reference, metrics, rounds, seed), bootstrap_rounds=rounds)
    base_file = _feats_path(csv_path, baseline)
    if baseline != key and base_file.is_file():
        base_feats = np.load(base_file)
        base = Statistics(base_feats.mean(0), np.cov(base_feats, rowvar=False), len(base_feats), feats=base_feats)
        paired = intervals(base, reference, metrics, rounds, seed, other=sample)
        out.update({k: v for k, v in paired.items() if "_diff" in k}, baseline=f"{baseline[2]} {baseline[3]} steps")
    return out


# ---------------------------------------------------------------------------------------------
# a sweep from its settings: the library call behind `samplerkit sweep`


@dataclass
class SweepSettings:
    """What ``samplerkit sweep`` runs; checked where it is made, before any network loads.

    ``samplers``: names (a comma list or sequence; None: the model's recommended sampler with its settings,
    as :func:`samplerkit.runs.sample_folder` picks them). ``steps``: step counts. ``seeds``: a spec ('0-999')
    or a list; ``num_images`` alone means seeds 0 .. num_images - 1 (1000 when neither is given).
    ``options``: sampler knobs by their Python names; the remedy options among them (``eps_scaler`` a comma
    list) become the remedies axis. ``ref``: reference statistics or images (statistics computed from images
    are cached beside ``csv_path``). Guidance: the options of :meth:`samplerkit.guidance.Guidance.from_options`
    (a list of weights is one more axis). ``eval_seed``: KID's subsets and the bootstrap.
    """

    ref: str
    csv_path: str | Path
    model: str = DEFAULT_MODEL
    family: str | None = None
    flags: dict = field(default_factory=dict)
    preset: str | None = None
    samplers: str | Sequence[str] | None = None
    steps: str | Sequence[int] = "5,10,18,32,64"
    seeds: str | Sequence[int] | None = None
    num_images: int | None = None
    options: dict = field(default_factory=dict)
    ref_images: int | None = None
    plot_path: str | Path | None = None
    metrics: str | Sequence[str] = "fid"
    fid_mode: str = "clean"
    kid_subsets: int = KID_SUBSETS
    kid_subset_size: int | None = None
    bootstrap_rounds: int = 0
    force_pipeline: bool = False
    eval_seed: int = 0
    batch: int = 64
    inception: str | None = None
    dinov2_weights: str | None = None
    dinov2_resize: str = "torch"
    device: str = "cpu"
    speed: str | None = None
    guidance: dict = field(default_factory=dict)  # classifier, classifier_flags, classifier_scale, guide_model, ...
    quiet: bool = False
    # made from the fields above when the settings are made
    sampler_names: list[str] = field(init=False)
    step_list: list[int] = field(init=False)
    seed_list: list[int] = field(init=False)
    remedies: list[Remedies] = field(init=False)
    guidances: list[Guidance] = field(init=False)
    knobs: dict = field(init=False)  # the sampler options but the remedies
    model_ref: ModelRef = field(init=False)

    def __post_init__(self):
        self.model_ref = ModelRef.of(self.model)  # the one lookup of the model's name in this run
        options = dict(self.options)
        if self.samplers is None:  # the model's recommended sampler and its settings
            self.samplers, _, options = resolve_sampler(self.model_ref, None, None, options)
        self.remedies = Remedies.axis(**{k: options.pop(k) for k in REMEDY_KNOBS if k in options})
        self.knobs, self.sampler_names = options, _names(self.samplers, "samplers")
        self.step_list, self.seed_list = _steps(self.steps), _seeds(self.seeds, self.num_images)
        if self.batch < 1:
            raise SamplerkitError(f"batch must be >= 1, got {self.batch}", names=("batch",))
        _checked(self.sampler_names, self.seed_list, sweep_metrics(self.metrics)[2], self.knobs, self.remedies)
        for name in self.sampler_names:  # what the samplers check without a network
            for n_steps in self.step_list:
                check_settings(name, n_steps, options_for(name, self.knobs))
        self.guidances = Guidance.from_options(**self.guidance, model_guidance=self.model_ref.guidance())
        check_evaluation(sweep_metrics(self.metrics)[2], self.kid_subsets, self.kid_subset_size,
                         self.bootstrap_rounds, len(self.seed_list))


def _names(text, what: str) -> list[str]:
    items = str(text).split(",") if isinstance(text, str) else list(text)
    names = list(dict.fromkeys(str(v).strip() for v in items if str(v).strip()))
    if not names:
        raise SamplerkitError(f"{what} is empty", names=(what,))
    return names


def _steps(text) -> list[int]:
    try:
        steps = [int(v) for v in _names(text, "steps")]
    except ValueError:
        raise SamplerkitError(f"bad steps {text!r}; use comma-separated integers like 5,10,18,32,64",
                              names=("steps",)) from None
    if any(s < 1 for s in steps):
        raise SamplerkitError(f"steps must be >= 1, got {text}", names=("steps",))
    return steps


def _seeds(spec, num_images: int | None) -> list[int]:
    """The seeds of every cell: ``spec`` (its count must equal ``num_images`` when both are given), else
    0 .. num_images - 1 (1000 images when neither is given)."""
    if spec is None:
        return list(range(1000 if num_images is None else num_images))
    seeds = parse_seeds(spec) if isinstance(spec, str) else [int(s) for s in spec]
    if num_images is not None and len(seeds) != num_images:
        raise SamplerkitError(f"seeds {spec} is {len(seeds)} images but num_images is {num_images}; "
                              "give one of them or make them agree", names=("seeds",))
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
    images to compute them from (see :func:`samplerkit.evaluation.check_reference`)."""
    metrics = metrics_lib.reference_metrics(metrics)
    cache = _reference_cache(ref, ref_images, metrics, csv_path, mode)
    stats = metrics_lib.load_statistics(cache) if cache.is_file() else None
    if stats is not None and set(metrics) <= set(stats.metrics()):
        evaluation._check_dim(stats, str(cache))
        log(f"reference statistics of {ref} from {cache}")
        return stats
    return evaluation.check_reference(ref, metrics, ref_images, mode=mode)


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
    reference, dino_ref = evaluation._references(ref, wanted, checked, dino_checked, features, dino, ref_images,
                                                 batch, False, quiet)
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
        experiment.update(ref_dinov2={dino_ref.fingerprint()}, dinov2_pipeline={dinov2_pipeline(dino)})
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


def _load(model: ModelRef, family, flags, preset, device):
    """(the model's network, a guided preset's guiding network or None, its autoencoder), checked: FID
    needs RGB pixels, which a latent model gives through its autoencoder (whose optional extra must be
    installed: one line, before any work)."""
    net = model.load(family, flags, preset, device).eval()
    net, preset_gnet = (net.inner, net.gnet) if isinstance(net, Guided) else (net, None)
    autoencoder = autoencoder_of(net)
    autoencoder.check()
    if getattr(net, "img_channels", 3) != 3 and isinstance(autoencoder, RGBIdentity):
        raise SamplerkitError(f"{model.name} makes {net.img_channels}-channel images; FID needs RGB (3 channels)")
    return net, preset_gnet, autoencoder


def reference_cost(ref: str, checked, dino_checked) -> str:
    """What the reference statistics cost before the first cell (part of the sweep's printed cost): a pass
    of the reference images through the feature networks when they must be computed, else nothing."""
    passes = [(name, got[1]) for name, got in (("Inception", checked), ("DINOv2", dino_checked))
              if isinstance(got, tuple)]
    if not passes:
        return f"reference: stored statistics of {ref} (no pass over reference images)"
    counts = {n for _, n in passes}
    images = f"{counts.pop():,d} images" if len(counts) == 1 else " / ".join(f"{n:,d}" for _, n in passes) + " images"
    return (f"reference: one pass over {images} of {ref} through {' and '.join(name for name, _ in passes)} "
            "before the first cell (cached beside the CSV for later runs)")


def _run_settings(s: SweepSettings, log: Callable[[str], None]) -> list[dict]:
    """The sweep of ``s``: references checked before any work, the model loaded and its samplers checked
    on it before the speed policy tunes it, then every guidance weight's cells."""
    wanted, want_dino, every = sweep_metrics(s.metrics)
    csv_file = Path(s.csv_path)
    read_csv(csv_file)  # an unreadable CSV or a bad reference fails before any work
    checked, dino_checked = _check_references(s.ref, s.ref_images, wanted, want_dino, csv_file, log, s.fid_mode,
                                              s.dinov2_resize, s.force_pipeline)
    warn_small_sample(len(s.seed_list), every)
    log(reference_cost(s.ref, checked, dino_checked))
    distributed.init(s.device)  # under torchrun: each process measures its block of the seeds
    device = distributed.local_device(s.device)
    log = log if distributed.is_main() else (lambda text: None)
    net, preset_gnet, autoencoder = _load(s.model_ref, s.family, s.flags, s.preset, device)
    cells = _cells(net, s.sampler_names, s.step_list, s.remedies, None, s.knobs)  # the checks that need the network
    speed = s.speed or speed_lib.default_mode()
    batch = min(s.batch, len(s.seed_list))
    calls = (sum(prepared.nfe for prepared, _ in cells) * max(1, len(s.guidances))
             * -(-len(metrics_block(len(s.seed_list))) // batch))
    net, speed_record = speed_lib.for_denoiser(net, speed, batch, device, calls)  # calls: at most (resumed cells)
    log(f"speed: {speed_record['mode']} -> {speed_record['policy']}")
    if compiled := speed_lib.compile_note(speed_record):
        log(compiled)
    features, dino = _evaluators(wanted, want_dino, s.inception, (s.dinov2_weights, s.dinov2_resize), device,
                                 s.batch, speed, s.fid_mode, dino_checked, s.force_pipeline)
    reference, dino_ref = _references(s.ref, checked, dino_checked, s.ref_images, wanted, features, dino, csv_file,
                                      s.batch, s.quiet, log)
    check_experiment(csv_file, "sweep rows", _experiment(s.model, len(s.seed_list), reference, dino_ref, features,
                                                         dino),
                     of_row={"model": lambda row: (row.get("model") or "").split(" + ")[0]})
    _check_inception_reference(reference, s.ref, wanted, s.fid_mode, s.kid_subset_size, len(s.seed_list), log)
    evaluation_kw = {"kid_subsets": s.kid_subsets, "kid_subset_size": s.kid_subset_size, "seed": s.eval_seed,
                     "force": s.force_pipeline}
    rows = []
    for guidance, cell_model, cell_sha in _guided_cells(s.model, s.model_ref.sha256(), s.guidances, preset_gnet,
                                                        device):
        label_dim = guidance.label_dim if guidance is not None and guidance.label_dim is not None else net.label_dim
        found = run_cells(net, s.sampler_names, s.step_list, s.seed_list, reference, features, csv_path=csv_file,
                          model=cell_model, sha256=cell_sha, metrics=every, evaluation=evaluation_kw,
                          bootstrap=s.bootstrap_rounds, options=s.knobs, remedies=s.remedies, guidance=guidance,
                          batch_size=s.batch, device=device, class_labels="random" if label_dim else None, log=log,
                          show_progress=not s.quiet, speed=speed_record["policy"], autoencoder=autoencoder,
                          dinov2=dino, dinov2_reference=dino_ref, recommended=s.model_ref.recommended())
        rows += found if guidance is None else [{**r, "sampler": f"{r['sampler']} {_axis(guidance)}"} for r in found]
    return rows


def _finish(s: SweepSettings, rows: list[dict], log) -> None:
    """Rank 0's last words: where the CSV is, and the plot of FID (and FD_DINOv2) vs NFE when asked."""
    log(f"wrote {s.csv_path}")
    if s.plot_path:
        _, want_dino, every = sweep_metrics(s.metrics)
        shown = " and ".join(m for m, asked in (("FID", "fid" in every), ("FD_DINOv2", want_dino)) if asked) or "FID"
        plot(rows, s.plot_path, title=f"{s.model}: {shown} vs NFE ({len(s.seed_list)} images)")
        log(f"wrote {s.plot_path}")


# ---------------------------------------------------------------------------------------------
# tables and figures


def frame(rows: Sequence[dict], metrics: Sequence[str] = ("fid",)):
    """The sweep's rows as a pandas DataFrame with numeric columns (sampler, steps, nfe, metrics, timing)."""
    import pandas as pd

    wanted = sweep_metrics(metrics)[2]
    intervals = [f"{m}_{end}" for m in INTERVAL_METRICS if m in wanted
                 for end in ("lo", "hi", "diff", "diff_lo", "diff_hi")]
    cols = ["sampler", "steps", "nfe", *[c for m in wanted for c in _METRIC_COLUMNS[m]],
            *[c for c in intervals if any(str(r.get(c, "")) != "" for r in rows)],
            "n_images", "seconds", "images_per_s"]
    if any(str(r.get("eps_scaler", "")) != "" or str(r.get("time_shift", "")) in ("1", "True") for r in rows):
        cols.insert(1, "remedy")
    df = pd.DataFrame([{c: (_line_label(r)[len(str(r["sampler"])):].strip() if c == "remedy" else r.get(c, ""))
                        for c in cols} for r in rows], columns=cols)
    for c in cols[1:]:
        if c == "remedy":
            continue
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return plots.with_clip_column(df, rows)  # a clipped and an unclipped sampler differ by more than the solver


def _line_label(row: dict) -> str:
    """One line per sampler, per Epsilon Scaling value and with/without time shift."""
    label = str(row["sampler"])
    if str(row.get("eps_scaler", "")) != "":
        label += f" ES {float(row['eps_scaler']):g}"
    if str(row.get("time_shift", "")) in ("1", "True"):
        label += " TS"
    return label


def table(rows: Sequence[dict], metrics: Sequence[str] = ("fid",)) -> str:
    """A plain-text table of the sweep (pandas)."""
    return frame(rows, metrics).to_string(index=False, float_format=lambda v: f"{v:.4g}")


def plot(rows: Sequence[dict], path: str | Path, title: str = ""):
    """FID vs NFE on a log-x axis, one line per sampler (Karras et al. 2022 (EDM), Fig. 2), ticks
    at the measured NFE values that fit without overlapping; FD_DINOv2 vs NFE in a panel beside it when
    the rows hold it (only that panel when they hold no FID). Returns the saved figure."""
    shown = [m for m in ("fid", DINO) if any(str(r.get(m, "")) != "" for r in rows)] or ["fid"]
    df = frame(rows, shown)
    df["line"] = [_line_label(r) + c for r, c in zip(rows, plots.clip_suffixes(rows), strict=True)]  # clip or not
    fig, axes = plots.figure(1, len(shown), figsize=(5.5 * len(shown), 4), squeeze=False)
    for ax, metric in zip(axes[0], shown, strict=True):
        _panel(ax, df, metric)
    if title:
        fig.suptitle(title) if len(shown) > 1 else axes[0][0].set_title(title)
    fig.tight_layout()
    for ax in axes[0]:
        plots.spaced_xticks(fig, ax, [int(v) for v in df["nfe"].dropna()])
    plots.save(fig, path)
    return fig


def _panel(ax, df, metric: str) -> None:
    for name, group in df.groupby("line", sort=False):
        group = group.sort_values("nfe")
        ax.plot(group["nfe"], group[metric], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel({"fid": "FID", DINO: "FD_DINOv2"}[metric])
    finite = df[metric][np.isfinite(df[metric])]
    if len(finite) and finite.min() > 0 and finite.max() / finite.min() > 20:
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
