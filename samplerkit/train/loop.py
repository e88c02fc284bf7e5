"""The training loop: ADM(-IP) on any image source, resumable, single- or multi-process.

With ``precond`` edm | vp | ve the same loop trains an EDM-preconditioned denoiser instead
(:mod:`.edm`: Karras et al. 2022, Table 1): the per-sample uniform that picks an ADM timestep
picks sigma through the column's distribution, the loss is :class:`.edm.EDMObjective`'s, the EMA
may be EDM's half-life in images (``ema_halflife_kimg``, files ``ema_{N}kimg_{step}.pt``), and
flags.json records ``family: edm``, the preconditioner's class and its constructor arguments, so
``samplerkit.load`` builds the same network the way it builds one from an EDM pickle.

Recipe (Ning et al. 2023, App. A.7): AdamW, EMA 0.9999, mixed precision with fp32 master
weights, EMA and optimizer state. EMA warm-up (``ema_warmup``, on in the ``tiny`` preset): at step
s the EMA rate is min(rate, (1 + s) / (10 + s)), the warm-up of Song et al. 2021 (score_sde's
``ExponentialMovingAverage``) and Rombach et al. 2022 (latent-diffusion's ``LitEma``). The EMA at
step S is then a polynomial average weighted towards the last ~10 % of the steps, holding
10! (S + 1)! / (S + 10)! of the random initial weights (7e-24 at S = 2000), where a fixed rate keeps
rate^S of them (0.9999^2000 = 82 %, 0.999^2000 = 14 %).

Determinism: the images, timesteps, eps, xi, flips and probes of global sample j at step s
come from generators seeded with (seed, s, j) and an epoch permutation seeded with (seed,
epoch), so a resumed run and a ``torchrun`` run with the same global batch reproduce a single
uninterrupted process (dropout, if any, is seeded per step and rank, so runs with dropout > 0
match only at the same world size).

Run folder (guided-diffusion's names)::

    model{step:06d}.pt  ema_{rate}_{step:06d}.pt  opt{step:06d}.pt   state dicts (torch.save)
    state{step:06d}.json   step, importance-sampler history, fp16 loss scale; written last
    settings.json  flags.json (kwargs for samplerkit.load)  log.csv
    recommended.json   the sampler that follows from the training (see ``train.recommend``)

Every file is written atomically; a checkpoint counts once all its files exist. ``log.csv`` gets
a row every ``log_interval`` steps, appended before any checkpoint of that step is written, and
``--resume`` cuts it back to the checkpoint's step, so it reads as one uninterrupted run.
Timesteps are uniform, or drawn from the importance sampler of Nichol & Dhariwal 2021, Eq. 18
(guided-diffusion's ``loss-second-moment``), which sees every sample's loss of a step after the step, so
the draw does not depend on how the batch is split into microbatches or processes.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from samplerkit.adapters.adm import create_unet

from .. import distributed, output, speed
from ..data import open_source, to_model_space
from ..diffusion import Chain, alpha_bar_from_betas, betas_for
from ..errors import Interrupted, SamplerkitError
from .edm import PRECONDS, EDMObjective, build_network, ema_beta, network_kwargs
from .objective import ImportanceSampler, Objective
from .recommend import RECOMMENDED_FILE, recommended_sampler

DIFFUSION_FLAGS = ("diffusion_steps", "noise_schedule")
SCHEDULE_SAMPLERS = ("auto", "uniform", "loss-second-moment")
LOG_COLUMNS = ("step", "loss", "mse", "vb", "gp", "loss_q0", "loss_q1", "loss_q2", "loss_q3", "grad_norm",
               "images_per_s", "lr")


@dataclass
class TrainConfig:
    data: str
    out: str
    flags: dict = field(default_factory=dict)  # guided-diffusion flags (adm); preconditioner arguments (edm, vp, ve)
    precond: str = "adm"  # adm: the eps-network of a discrete chain; edm | vp | ve: EDM Table 1 (see .edm)
    loss: str = "hybrid"
    regularizer: str = "ip"
    gamma: float = 0.1
    lambda_gp: float = 1e-6
    lambda_wd: float = 0.03
    wd_form: str = "decoupled"  # regularizer 'wd': AdamW weight_decay = lambda_wd, or the loss term of Eq. 11
    iterations: int = 1000
    batch_size: int = 16
    microbatch: int = 0  # 0 = the whole per-process batch at once
    lr: float = 1e-4
    weight_decay: float = 0.0  # AdamW's decoupled decay for any regularizer (regularizer 'wd' uses lambda_wd)
    grad_clip: float = 0.0  # max global gradient norm; 0 = no clipping
    warmup: int = 0
    ema_rates: tuple = (0.9999,)
    ema_warmup: bool = False  # EMA rate min(rate, (1 + s) / (10 + s)) at step s
    ema_halflife_kimg: float | None = None  # EDM's EMA: half-life in thousands of images (replaces ema_rates)
    ema_rampup_ratio: float | None = 0.05  # ... capped at this fraction of the images seen so far (None: no cap)
    schedule_sampler: str = "auto"  # uniform | loss-second-moment | auto (importance sampling for vlb only)
    save_interval: int = 1000
    log_interval: int = 10
    precision: str = "fp32"
    speed: str = "exact"  # network execution (samplerkit.speed): exact | fast | explicit settings; not autocast
    seed: int = 0
    flip: bool = True
    device: str = "cpu"

    def check(self) -> None:
        if self.iterations < 1 or self.batch_size < 1 or self.save_interval < 1 or self.log_interval < 1:
            raise SamplerkitError("iterations, batch size, save interval and log interval must be >= 1")
        if self.microbatch < 0:
            raise SamplerkitError(f"got microbatch={self.microbatch}; it must be >= 0")
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise SamplerkitError(f"unknown precision {self.precision!r}; use fp32, fp16 or bf16")
        if not self.ema_rates or any(not 0 < r < 1 for r in self.ema_rates):
            raise SamplerkitError("EMA rates must lie in (0, 1)")
        if self.lr <= 0:
            raise SamplerkitError(f"got lr={self.lr}; it must be > 0")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.lambda_wd < 0:
            raise SamplerkitError("weight_decay, lambda_wd and grad_clip must be >= 0")
        if self.regularizer == "wd" and self.wd_form == "decoupled" and self.weight_decay:
            raise SamplerkitError("with regularizer=wd, AdamW's weight decay is already lambda_wd; "
                                  "drop weight_decay (or use wd_form=loss)")
        if self.schedule_sampler not in SCHEDULE_SAMPLERS:
            raise SamplerkitError(f"unknown schedule sampler {self.schedule_sampler!r}; "
                                  f"use one of {', '.join(SCHEDULE_SAMPLERS)}")
        if self.ema_halflife_kimg is not None and not self.ema_halflife_kimg > 0:
            raise SamplerkitError("ema_halflife_kimg must be > 0")
        if self.ema_rampup_ratio is not None and not self.ema_rampup_ratio > 0:
            raise SamplerkitError("the EMA ramp-up ratio must be > 0 (or None for none)")
        if self.precond != "adm":
            if self.precond not in PRECONDS:
                raise SamplerkitError(f"unknown preconditioning {self.precond!r}; use adm, {', '.join(PRECONDS)}")
            if self.loss != "simple":
                raise SamplerkitError(f"training with loss={self.loss} is ADM-only (learned variance, L_vlb); precond="
                                      f"{self.precond} trains EDM's weighted denoising loss (leave loss=simple)")
            if self.schedule_sampler == "loss-second-moment":
                raise SamplerkitError(f"the loss-second-moment timestep sampler is ADM-only; precond={self.precond} "
                                      "draws sigma from EDM's training distribution")

    def ema_names(self) -> tuple:
        """The EMA keys of the checkpoint files ``ema_{key}_{step}.pt``: the rates, or ``{halflife}kimg``."""
        if self.ema_halflife_kimg is not None:
            return (f"{self.ema_halflife_kimg:g}kimg",)
        return tuple(self.ema_rates)

    def importance_sampling(self) -> bool:
        """Timesteps from Nichol & Dhariwal 2021, Eq. 18 (guided-diffusion's loss-second-moment) or uniform."""
        return self.schedule_sampler == "loss-second-moment" or (self.schedule_sampler == "auto" and self.loss == "vlb")


def split_flags(flags: dict) -> tuple[dict, str, int]:
    """(architecture flags, noise schedule, T) from guided-diffusion flags."""
    arch = {k: v for k, v in flags.items() if k not in DIFFUSION_FLAGS}
    return arch, str(flags.get("noise_schedule", "cosine")), int(flags.get("diffusion_steps", 1000))


def checkpoint_files(step: int, ema_rates) -> list[str]:
    """Names of the files of the checkpoint at ``step``; the state file is written last."""
    emas = [f"ema_{rate}_{step:06d}.pt" for rate in ema_rates]
    return [f"model{step:06d}.pt", *emas, f"opt{step:06d}.pt", f"state{step:06d}.json"]


def latest_checkpoint(run: Path, ema_rates=(0.9999,)) -> int | None:
    """The newest step whose checkpoint files are all present."""
    steps = [int(m.group(1)) for p in run.glob("state*.json") if (m := re.fullmatch(r"state(\d{6})\.json", p.name))]
    complete = [s for s in steps if all((run / name).is_file() for name in checkpoint_files(s, ema_rates))]
    return max(complete) if complete else None


def _save_tensor_dict(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    output.atomic_write(path, buf.getvalue())


def _read_log(path: Path, up_to: int) -> list[dict]:
    """Rows of log.csv up to step ``up_to``; stops at the first row that is later, out of order
    or incomplete (a run killed while appending leaves at most one partial last row)."""
    rows: list[dict] = []
    if not path.is_file():
        return rows
    with open(path, newline="") as f:
        try:
            for r in csv.DictReader(f):
                if None in r.values() or None in r:
                    break
                step = int(r["step"])
                if step > up_to or (rows and step <= int(rows[-1]["step"])):
                    break
                rows.append(r)
        except (ValueError, csv.Error):
            pass
    return rows


def _log_text(rows: list[dict], header: bool) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, extrasaction="ignore")
    if header:
        w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


class Trainer:
    """One training run; ``run()`` trains from the latest checkpoint (if resuming) to ``iterations``."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, resume_command: str | None = None):
        cfg.check()
        self.cfg, self.run_dir = cfg, Path(cfg.out)
        # how a user continues this run (the CLI passes its own command line); named on Ctrl-C
        self.resume_command = resume_command or "train(cfg, resume=True)"
        self.start_note = f"starting a new run in {self.run_dir}"  # what train() says before the first step
        self.device = torch.device(cfg.device)
        self.rank, self.world = distributed.init(self.device)
        if cfg.batch_size % self.world:
            raise SamplerkitError(f"batch size {cfg.batch_size} is not divisible by {self.world} processes")
        self.local_batch = cfg.batch_size // self.world
        self.micro = cfg.microbatch or self.local_batch
        if self.local_batch % self.micro:
            raise SamplerkitError(
                f"per-process batch {self.local_batch} is not divisible by microbatch={self.micro}")

        self.source = open_source(cfg.data)
        if cfg.precond != "adm":
            self._init_edm()
        else:
            self._init_adm()
        decay = cfg.weight_decay + self.objective.optimizer_weight_decay()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=decay)
        self.emas = {rate: [p.detach().clone() for p in self.model.parameters()] for rate in cfg.ema_names()}
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.step = 0
        self.log_rows: list[dict] = []
        self.log_path = self.run_dir / "log.csv"
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            output.sweep_temporaries(self.run_dir)
        distributed.barrier()
        self._settings(resume)
        if resume:
            self._resume()
        if self.rank == 0:  # the log restarts at the checkpoint, as if the run had never stopped
            output.atomic_write(self.log_path, _log_text(self.log_rows, header=True).encode())
        self.ddp = (torch.nn.parallel.DistributedDataParallel(self.model) if self.world > 1 else self.model)
        self.ddp, self.speed = speed.for_training(self.model, self.ddp, cfg.speed, self._speed_example, self.device)
        if self.rank == 0:
            output.atomic_json(self.run_dir / "speed.json", self.speed)

    def _speed_example(self) -> tuple:
        """Synthetic inputs of one microbatch for the speed autotune: (x, t, y) for ADM's eps-network,
        (x, sigma, labels) for an EDM-preconditioned one."""
        g = torch.Generator().manual_seed(0)
        n, res = self.micro, self.source.resolution
        x = torch.randn(n, 3, res, res, generator=g).to(self.device)
        classes = self.source.num_classes if (self.arch.get("class_cond") or self.arch.get("label_dim")) else 0
        labels = torch.randint(0, classes, (n,), generator=g).to(self.device) if classes else None
        if self.cfg.precond == "adm":
            return x, torch.randint(0, self.chain.alpha_bar.numel(), (n,), generator=g).to(self.device), labels
        sigma = torch.randn(n, generator=g).exp().to(self.device)
        return x, sigma, (torch.nn.functional.one_hot(labels, classes).float() if classes else None)

    def _init_adm(self) -> None:
        cfg = self.cfg
        arch, schedule, T = split_flags(cfg.flags)
        if int(arch.get("image_size", 64)) != self.source.resolution:
            raise SamplerkitError(f"the data is {self.source.resolution}px but image_size is "
                                  f"{arch.get('image_size', 64)}; set the architecture flag "
                                  f"image_size={self.source.resolution}")
        if arch.get("class_cond") and not self.source.num_classes:
            raise SamplerkitError("class_cond=True needs class labels in the data (dataset.json or class folders)")
        if arch.get("class_cond"):
            arch.setdefault("num_classes", self.source.num_classes)
        if arch.pop("use_fp16", False) not in (False, "False", "false", 0):
            raise SamplerkitError("use_fp16 would make the weights fp16; for mixed precision with fp32 master "
                                  "weights (Ning et al. 2023, App. A.7) pass precision=fp16 instead")
        self.arch = arch
        torch.manual_seed(cfg.seed)
        self.model = create_unet(**arch).to(self.device)
        self.chain = Chain.from_alpha_bar(alpha_bar_from_betas(betas_for(schedule, T)))
        self.objective = Objective(self.chain, cfg.loss, cfg.regularizer, cfg.gamma, cfg.lambda_gp, cfg.lambda_wd,
                                   learn_sigma=bool(arch.get("learn_sigma", False)), wd_form=cfg.wd_form)
        self.sampler = ImportanceSampler(T) if cfg.importance_sampling() else None

    def _init_edm(self) -> None:
        """An EDM-preconditioned network (adapters' EDMPrecond / VPPrecond / VEPrecond) and its loss."""
        cfg = self.cfg
        flags = {"img_channels": 3, **cfg.flags}
        res = int(flags.get("img_resolution", self.source.resolution))
        if res != self.source.resolution:
            raise SamplerkitError(f"the data is {self.source.resolution}px but img_resolution is {res}; "
                                  f"set the architecture flag img_resolution={self.source.resolution}")
        flags["img_resolution"] = res
        if int(flags.get("label_dim", 0)) and not self.source.num_classes:
            raise SamplerkitError("label_dim > 0 needs class labels in the data (dataset.json or class folders)")
        torch.manual_seed(cfg.seed)
        self.model = build_network(cfg.precond, flags).to(self.device)
        self.arch = {"family": "edm", "class_name": type(self.model).__name__, **network_kwargs(flags)}
        self.objective = EDMObjective(cfg.precond, cfg.regularizer, cfg.gamma,
                                      sigma_data=float(getattr(self.model, "sigma_data", 0.5)))
        self.sampler = None

    # -- bookkeeping ------------------------------------------------------------------------

    def _settings(self, resume: bool) -> None:
        settings = {**asdict(self.cfg), "ema_rates": list(self.cfg.ema_rates)}
        path = self.run_dir / "settings.json"
        keep = ("iterations", "save_interval", "log_interval", "device", "out", "speed")
        old = json.loads(path.read_text()) if path.is_file() else None
        distributed.barrier()  # every rank has looked before rank 0 writes
        if old is not None:
            defaults = {f.name: f.default for f in fields(TrainConfig)}  # a setting added later keeps its default
            if old.get("regularizer") == "wd":
                defaults["wd_form"] = "loss"  # the only form of 'wd' before wd_form existed
            same = lambda k: (json.dumps(old.get(k, defaults.get(k)), sort_keys=True)  # noqa: E731
                              == json.dumps(settings[k], sort_keys=True))
            diff = sorted(k for k in settings if k not in keep and not same(k))
            if not resume:
                raise SamplerkitError(
                    f"{self.run_dir} already holds a run; pass resume=True to continue it or use another out folder")
            if diff:
                key = diff[0]
                raise SamplerkitError(f"a run continued with resume=True has changed settings "
                                      f"({key}: {old.get(key, defaults.get(key))!r} -> "
                                      f"{settings[key]!r}); use the original settings or another out folder")
        if self.rank == 0:
            output.atomic_json(path, settings)
            if self.cfg.precond == "adm":
                _, schedule, T = split_flags(self.cfg.flags)
                load_flags = {**self.arch, "diffusion_steps": T, "noise_schedule": schedule}
            else:  # family edm: the preconditioner's class and constructor arguments, as an EDM pickle records them
                load_flags = dict(self.arch)
            output.atomic_json(self.run_dir / "flags.json", load_flags)
            output.atomic_json(self.run_dir / RECOMMENDED_FILE, recommended_sampler(load_flags))

    def _resume(self) -> None:
        step = latest_checkpoint(self.run_dir, self.cfg.ema_names())
        if step is None:
            self.start_note = f"resume: no complete checkpoint in {self.run_dir}; starting from scratch (step 0)"
            return
        self.start_note = f"resuming from step {step} (the latest complete checkpoint in {self.run_dir})"
        load = lambda name: torch.load(self.run_dir / name, map_location=self.device, weights_only=True)  # noqa: E731
        self.model.load_state_dict(load(f"model{step:06d}.pt"))
        self.opt.load_state_dict(load(f"opt{step:06d}.pt"))
        for rate in self.emas:
            state = load(f"ema_{rate}_{step:06d}.pt")
            self.emas[rate] = [state[name].clone() for name, _ in self.model.named_parameters()]
        state = json.loads((self.run_dir / f"state{step:06d}.json").read_text())
        if self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = step
        self.log_rows = _read_log(self.log_path, step)

    def save(self) -> None:
        if self.rank != 0:
            return
        s = self.step
        _save_tensor_dict(self.run_dir / f"model{s:06d}.pt", self.model.state_dict())
        for rate, params in self.emas.items():
            names = [n for n, _ in self.model.named_parameters()]
            ema = dict(zip(names, params, strict=True))
            if self.cfg.precond != "adm":  # a complete state dict (buffers too), which sk.load assigns strictly
                ema = {k: ema.get(k, v) for k, v in self.model.state_dict().items()}
            _save_tensor_dict(self.run_dir / f"ema_{rate}_{s:06d}.pt", ema)
        _save_tensor_dict(self.run_dir / f"opt{s:06d}.pt", self.opt.state_dict())
        state = {"step": s, "sampler": self.sampler.state_dict() if self.sampler else None,
                 "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None}
        output.atomic_json(self.run_dir / f"state{s:06d}.json", state)  # last: the checkpoint is complete

    def _append_log(self, row: dict) -> None:
        """Append one row to log.csv (before any checkpoint of that step is written)."""
        row = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
        self.log_rows.append(row)
        if self.rank == 0:
            with open(self.log_path, "a", newline="") as f:
                f.write(_log_text([row], header=False))

    # -- one step -------------------------------------------------------------------------

    def _indices(self, step: int) -> np.ndarray:
        """Data indices of the global batch of ``step`` (epoch permutations seeded by (seed, epoch))."""
        n, B = len(self.source), self.cfg.batch_size
        g = np.arange((step - 1) * B, step * B)
        out = np.empty(B, dtype=np.int64)
        for epoch in np.unique(g // n):
            perm = np.random.default_rng([self.cfg.seed, int(epoch)]).permutation(n)
            sel = g // n == epoch
            out[sel] = perm[g[sel] % n]
        return out

    def _batch(self, step: int, js: range):
        """Images, t, importance weights, eps, xi and probes of global samples js at ``step``."""
        idx = self._indices(step)[list(js)]
        images, labels = self.source.read(idx)
        x0 = to_model_space(images, self.device).to(torch.float32)
        shape = x0.shape[1:]
        eps, xi, probe, flips, u = [], [], [], [], []
        for j in js:
            seed = int(np.random.SeedSequence([self.cfg.seed, step, j]).generate_state(1)[0])
            g = torch.Generator().manual_seed(seed)
            u.append(float(torch.rand((), generator=g, dtype=torch.float64)))
            flips.append(bool(torch.rand((), generator=g) < 0.5))
            eps.append(torch.randn(shape, generator=g))
            xi.append(torch.randn(shape, generator=g))
            probe.append(torch.randn(shape, generator=g))
        if self.cfg.precond != "adm":  # the uniforms themselves: EDMObjective maps them to sigma
            t, w = np.array(u, dtype=np.float64), np.ones(len(u))
        elif self.sampler is not None:
            t, w = self.sampler.sample(np.array(u))
        else:
            t, w = np.minimum((np.array(u) * self.objective.T).astype(np.int64), self.objective.T - 1), np.ones(len(u))
        if self.cfg.flip:
            x0 = torch.where(torch.tensor(flips, device=self.device).reshape(-1, 1, 1, 1), x0.flip(3), x0)
        dev = self.device
        conditional = self.arch.get("class_cond") or int(self.arch.get("label_dim", 0) or 0)
        y = torch.as_tensor(labels, device=dev) if labels is not None and conditional else None
        return (x0, torch.as_tensor(t, device=dev), torch.as_tensor(w, dtype=torch.float32, device=dev),
                torch.stack(eps).to(dev), torch.stack(xi).to(dev), torch.stack(probe).to(dev), y)

    def _autocast(self):
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.cfg.precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def train_step(self) -> dict:
        step = self.step + 1
        cfg = self.cfg
        lr = cfg.lr * min(1.0, step / cfg.warmup) if cfg.warmup else cfg.lr
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        torch.manual_seed(int(np.random.SeedSequence([cfg.seed, step, self.rank, 1]).generate_state(1)[0]))  # dropout
        start = self.rank * self.local_batch
        records = []
        last = start + self.local_batch - self.micro
        for m0 in range(start, start + self.local_batch, self.micro):
            js = range(m0, m0 + self.micro)
            x0, t, w, eps, xi, probe, y = self._batch(step, js)
            # gradients are all-reduced once, after the last microbatch
            sync = self.ddp.no_sync() if self.world > 1 and m0 != last else contextlib.nullcontext()
            with sync:
                with self._autocast():
                    terms = self.objective.terms(lambda x, tt, yy: self.ddp(x, tt, yy), x0, t, eps, xi, probe, y)
                loss = (terms["loss"].float() * w).sum() / self.local_batch
                if m0 == start:
                    loss = loss + self.objective.weight_decay(self.model.parameters()).to(loss.device)
                self.scaler.scale(loss).backward()
            position = terms["position"] if "position" in terms else t  # EDM: the rank of sigma in [0, 1)
            parts = [position.float(), *(terms[k].detach().float() for k in ("loss", "mse", "vb", "gp"))]
            records.append(torch.stack(parts, 1))
        self.scaler.unscale_(self.opt)
        grad_norm = torch.linalg.vector_norm(
            torch.stack([p.grad.detach().norm() for p in self.model.parameters() if p.grad is not None]))
        if cfg.grad_clip > 0 and math.isfinite(float(grad_norm)):  # logged grad_norm is the norm before clipping
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        with torch.no_grad():
            for rate, params in self.emas.items():
                r = self.ema_rate(rate, step)
                for e, p in zip(params, self.model.parameters(), strict=True):
                    e.mul_(r).add_(p.detach(), alpha=1 - r)
        rec = torch.cat(records)
        if self.world > 1:
            gathered = [torch.zeros_like(rec) for _ in range(self.world)]
            torch.distributed.all_gather(gathered, rec.contiguous())
            rec = torch.cat(gathered)
        rec = rec.cpu().numpy()
        if self.sampler is not None:
            self.sampler.update(rec[:, 0].astype(np.int64), rec[:, 1])
        self.step = step
        T = self.objective.T
        row = {"step": step, "loss": float(rec[:, 1].mean()), "mse": float(rec[:, 2].mean()),
               "vb": float(rec[:, 3].mean()), "gp": float(rec[:, 4].mean()), "grad_norm": float(grad_norm), "lr": lr}
        quart = np.minimum((rec[:, 0] * 4 / T).astype(int), 3)
        for q in range(4):
            row[f"loss_q{q}"] = float(rec[quart == q, 1].mean()) if (quart == q).any() else float("nan")
        return row

    def run(self, progress: bool = True) -> list[dict]:
        from tqdm import tqdm

        cfg = self.cfg
        bar = tqdm(total=cfg.iterations, initial=self.step, unit="it", disable=not progress or self.rank != 0,
                   dynamic_ncols=True)
        t_last, n_last = time.perf_counter(), 0
        try:
            while self.step < cfg.iterations:
                row = self.train_step()
                n_last += cfg.batch_size
                if self.step % cfg.log_interval == 0 or self.step == cfg.iterations:
                    now = time.perf_counter()
                    row["images_per_s"] = n_last / (now - t_last)
                    t_last, n_last = now, 0
                    self._append_log(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}")
                if not math.isfinite(row["loss"]):
                    raise SamplerkitError(f"the loss became {row['loss']} at step {self.step}; "
                                          f"lower lr={cfg.lr} or use fp32")
                if self.step % cfg.save_interval == 0 or self.step == cfg.iterations:
                    self.save()
                    distributed.barrier()
                bar.update(1)
        except KeyboardInterrupt:
            raise Interrupted(self.interrupted_message()) from None
        finally:
            bar.close()
        return self.log_rows

    def interrupted_message(self) -> str:
        """What a stopped run has saved and how to continue it (one line)."""
        cfg, saved = self.cfg, latest_checkpoint(self.run_dir, self.cfg.ema_names())
        where = f"interrupted at step {self.step} of {cfg.iterations}"
        if saved is None:
            first = min(cfg.save_interval, cfg.iterations)
            return (f"{where}, before the first checkpoint (step {first}): nothing is saved in {self.run_dir}; "
                    f"start again with: {self.resume_command} (it starts from scratch)")
        return (f"{where}; the last checkpoint in {self.run_dir} holds step {saved} (the steps after it are "
                f"lost); resume with: {self.resume_command}")

    def ema_rate(self, rate: float | str, step: int) -> float:
        """The EMA rate used at ``step`` (1-based): ``rate``, or min(rate, (1 + s) / (10 + s)) with warm-up,
        or EDM's half-life rate (:func:`.edm.ema_beta`) with ``ema_halflife_kimg``."""
        cfg = self.cfg
        if cfg.ema_halflife_kimg is not None:
            return ema_beta(step, cfg.batch_size, cfg.ema_halflife_kimg, cfg.ema_rampup_ratio)
        return min(rate, (1 + step) / (10 + step)) if cfg.ema_warmup else rate

    def ema_model(self, rate: float | None = None) -> torch.nn.Module:
        """A copy of the network holding the EMA parameters of ``rate`` (default: the first)."""
        rate = self.cfg.ema_names()[0] if rate is None else rate
        model = copy.deepcopy(self.model)
        with torch.no_grad():
            for p, e in zip(model.parameters(), self.emas[rate], strict=True):
                p.copy_(e)
        return model


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, resume_command: str | None = None) -> Trainer:
    """Train (or resume) a run; returns the finished :class:`Trainer`. With ``progress`` it says on
    stderr whether it resumes (from which step) or starts from scratch. Ctrl-C raises
    :class:`~samplerkit.errors.Interrupted` naming the last checkpoint's step and ``resume_command``
    (default: ``train(cfg, resume=True)``)."""
    trainer = Trainer(cfg, resume=resume, resume_command=resume_command)
    if progress and trainer.rank == 0:
        print(trainer.start_note, file=sys.stderr, flush=True)
    try:
        trainer.run(progress=progress)
    finally:
        distributed.cleanup()
    return trainer
