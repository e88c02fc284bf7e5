"""Exposure-bias remedies at sampling time, without retraining.

* Epsilon Scaling -- Ning et al. 2024 (ES), "Elucidating the Exposure Bias in Diffusion
  Models": the predicted noise is divided by lambda_t >= 1 at every network call,
  lambda_t = b (uniform) or k t + b (linear). :func:`eps_scaling` makes it a property of the
  denoiser, D'(x; sigma) = x - (x - D(x; sigma)) / lambda, so every sampler uses it (in
  sigma-space eps = (x - D) / sigma; in x_t-space x0 = (x_t - sqrt(1 - abar) eps / lambda) /
  sqrt(abar), which is ADM-ES's ``_predict_xstart_from_eps``).
* Time-Shift sampler -- Li et al. 2024 (TS), "Alleviating Exposure Bias in Diffusion Models
  through Sampling with Shifted Time Steps": :class:`TimeShift`, an option of
  :func:`samplerkit.samplers.ddim` and :func:`samplerkit.samplers.ancestral`.

The time argument t of lambda_t. ADM-ES indexes its scalers by the step index of the
(respaced) chain the sampler runs on: t = 0 at the last step (the least noisy level) up to
t = K - 1 at the first, whatever training timesteps the K steps were respaced from. samplerkit
uses the same t for every sampler: pass the grid the sampler runs on as ``steps`` (the timesteps
or N of ``ddim``/``ancestral``, or the sigma grid of ``euler``/``heun``/...), and t of a noise
level is its position on that grid counted from the clean end (sigma_{N-1} -> 0, sigma_0 -> N - 1).
A level between two grid levels (Heun's intermediate point is always on the grid; EDM's churned
sigma_hat and a time-shifted level are not) gets t interpolated linearly in log sigma, and a
level outside the grid the nearest end's t. With k = 0 (ADM-ES's and EDM-ES's default, the
values their READMEs give) t is not used and ``steps`` is not needed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from .denoisers import DenoiserWrapper, training_alpha_bar
from .diffusion import per_sample, sigma_from_alpha_bar
from .errors import SamplerkitError
from .knobs import Knob
from .samplers import chain_alpha_bar

# ---------------------------------------------------------------------------------------------
# Epsilon Scaling (Ning et al. 2024 (ES))


class EpsScaling(DenoiserWrapper):
    """D'(x; sigma) = x - (x - D(x; sigma)) / lambda(sigma), lambda = b + k t (Ning et al. 2024 (ES)).

    ``levels``: the ascending sigma levels of the chain (t = 0 .. K-1), needed when k != 0.
    The learned variance v passes through unchanged (ADM-ES scales eps only). With b = 1, k = 0
    the inner denoiser's output is returned as it is (bit for bit the plain sampler).
    """

    def __init__(self, net, b: float, k: float = 0.0, levels: torch.Tensor | None = None):
        super().__init__(net)
        self.b, self.k = float(b), float(k)
        self.levels = None if levels is None else torch.as_tensor(levels, dtype=torch.float64).flatten().cpu()

    @property
    def identity(self) -> bool:
        return self.b == 1.0 and self.k == 0.0

    def t_of(self, sigma) -> torch.Tensor:
        """t of each noise level: its index on the chain (0 = least noisy), log-sigma interpolated
        between levels and clamped to [0, K - 1]; float64 on the CPU."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64).flatten().cpu()
        if self.levels is None or self.levels.numel() == 1:
            return torch.zeros_like(sigma)
        log_levels, log_sigma = self.levels.log(), sigma.clamp(min=1e-300).log()
        idx = torch.arange(self.levels.numel(), dtype=torch.float64)
        j = torch.searchsorted(log_levels, log_sigma).clamp(1, len(idx) - 1)
        lo, hi = log_levels[j - 1], log_levels[j]
        t = (j - 1) + (log_sigma - lo) / (hi - lo)
        on_level = (log_sigma.reshape(-1, 1) - log_levels.reshape(1, -1)).abs() < 1e-12
        t = torch.where(on_level.any(1), on_level.to(torch.float64).argmax(1).to(torch.float64), t)
        return t.clamp(0, len(idx) - 1)

    def scale(self, sigma) -> torch.Tensor:
        """lambda for each noise level of ``sigma`` (float64, flat)."""
        return self.b + self.k * self.t_of(sigma)

    def denoise_with_variance(self, x, sigma, class_labels=None):
        D, v = super().denoise_with_variance(x, sigma, class_labels)
        if self.identity:
            return D, v
        w = 1 / self.scale(sigma).to(x.device)
        w = w.reshape(-1, *([1] * (x.ndim - 1))) if w.numel() > 1 else w.reshape(())
        return torch.lerp(x.to(torch.float64), D.to(torch.float64), w), v  # x + (D - x) / lambda in one pass


def check_eps_scaler(b: float, k: float = 0.0, num_levels: int | None = None) -> None:
    """lambda = b + k t must be finite and > 0 at every t = 0 .. num_levels - 1 of the chain."""
    if not (math.isfinite(b) and math.isfinite(k)):
        raise SamplerkitError(f"eps_scaler and eps_scaler_slope must be finite, got {b} and {k}")
    if b <= 0:
        raise SamplerkitError(f"eps_scaler must be > 0 (1 = no scaling; Ning et al. 2024 use 1.0005-1.02), got {b}")
    if k != 0 and num_levels is None:
        raise SamplerkitError("an eps_scaler_slope needs the chain it runs on: pass steps= (the sampler's grid)")
    if k != 0:
        end = b + k * (num_levels - 1)
        if end <= 0:
            raise SamplerkitError(f"eps_scaler_slope {k} makes lambda = {end:.6g} <= 0 at t = {num_levels - 1} of the "
                                  f"{num_levels}-step chain; use a smaller slope or a larger eps_scaler")


def chain_levels(net, steps) -> torch.Tensor:
    """The ascending sigma levels (t = 0 .. K-1) of a sampler's grid: timesteps or an int N as
    ``ddim``/``ancestral`` take them, or a descending sigma grid ending in 0."""
    return sigma_from_alpha_bar(chain_alpha_bar(net, steps))


def eps_scaling(net, b: float, k: float = 0.0, steps=None) -> EpsScaling:
    """``net`` with Epsilon Scaling (Ning et al. 2024 (ES)): lambda = b + k t, t the step index on
    the chain ``steps`` (see the module docstring; needed only when k != 0). b = 1.017 with 100
    respaced steps is ADM-ES's CIFAR-10 value. Raises when lambda <= 0 anywhere on the chain."""
    levels = chain_levels(net, steps) if steps is not None else None
    check_eps_scaler(float(b), float(k), None if levels is None else levels.numel())
    return EpsScaling(net, b, k, levels)


# ---------------------------------------------------------------------------------------------
# Time-Shift sampler (Li et al. 2024 (TS))

TS_MODES = ("paper", "reference")


@dataclass(frozen=True)
class TimeShift:
    """The Time-Shift sampler (Li et al. 2024 (TS)) for ``ddim`` and ``ancestral``.

    ``window`` w and ``cutoff`` t_c count training timesteps of the model's full schedule
    (defaults: TS-DPM-ADM's README example, ``--window 80 --cutoff 300``). Both modes leave x_T
    and every state at or below the cutoff alone.

    ``mode="paper"`` (Li et al. 2024, Alg. 3; their code cites it as "Alg. 1-2"): the state x at
    chain timestep t > t_c, made by the previous step, is coupled with the timestep
    t_s = argmin |Var(x) - (1 - abar_tau)| over tau in [t - w/2, t + w/2] -- a window on both sides
    of t, cut only to the training range [0, T - 1] (Var over the pixels of each image, x in
    x_t-space); the network is called at t_s, x0 is predicted with abar_{t_s}, and the step lands
    on the chain's next level t'. w = 0 is the plain sampler. Where t_s falls at or below t' (on a
    chain whose stride is under w/2: a 50-step chain with w = 80, or the full chain), the step goes
    from abar_{t_s} to abar_{t'} at equal or higher noise:

    * ``ddim`` with eta = 0 takes the DDIM step as it is, x' = sqrt(abar_{t'}) x0 +
      sqrt(1 - abar_{t'}) eps, which is defined either way (t_s = t' gives x' = x);
    * ``ddim`` with eta > 0 takes that same eta = 0 step for those images: the noise variance
      eta^2 (1 - abar_{t'}) / (1 - abar_{t_s}) (1 - abar_{t_s} / abar_{t'}) is <= 0 there, so no
      noise is added (it tends to 0 as t_s comes down to t');
    * ``ancestral`` (samplerkit's reading: the paper gives no formula for a respaced DDPM chain)
      steps from abar_{t_s} with the posterior q(x_{t'} | x_{t_s}, x0) of Nichol & Dhariwal 2021,
      Eq. 19, while t_s > t', and takes the same eta = 0 DDIM step where t_s <= t' (the posterior's
      beta = 1 - abar_{t_s} / abar_{t'} is <= 0 there; at t_s -> t' both are x' = x).

    ``mode="reference"``: tingyu215/TS-DPM-ADM's ``ddim_sample`` / ``get_next_time_window``. Where
    it differs from the above: the network and x0 keep the chain's own t; the candidates of the
    window (around t, or [0, w] when t <= w/2) are compared with ``flip(abar)`` -- abar_{T-1-tau},
    which only approximates 1 - abar_tau on a schedule symmetric in time, as the cosine one
    nearly is -- and the argmin tau* moves the *landing* level of the step to
    ``alphas_cumprod_prev_all[tau* - T // (K - 1)]`` = abar_{tau* - T//(K-1) - 1}, a stride that is
    the chain's own on some chains only (respace(1000, "10"): 111 = 1000 // 9; ddim5: 250 against
    the real 200). Cutoff 0 switches the search off there (tau* = t) but keeps that landing rule, so
    w = 0 is *not* the plain sampler in this mode. Where the landing index is negative (it wraps to
    the noisiest levels there) or the landing level is noisier than the start (NaN there), this
    mode raises instead. DDIM only (the repository time-shifts no DDPM sampler).
    """

    window: int = 80
    cutoff: int = 300
    mode: str = "paper"

    def __post_init__(self):
        if int(self.window) != self.window or self.window < 0:
            raise SamplerkitError(f"the time-shift window must be an integer >= 0, got {self.window}")
        if int(self.cutoff) != self.cutoff or self.cutoff < 0:
            raise SamplerkitError(f"the time-shift cutoff must be an integer >= 0, got {self.cutoff}")
        if self.mode not in TS_MODES:
            raise SamplerkitError(f"unknown time-shift mode {self.mode!r}; use paper or reference")

    def settings(self) -> dict:
        """What a manifest or CSV row records."""
        return {"time_shift": True, "ts_window": int(self.window), "ts_cutoff": int(self.cutoff), "ts_mode": self.mode}

    def bind(self, net, alpha_bars: torch.Tensor, sampler: str = "ddim") -> BoundTimeShift:
        """The shift for one run of ``sampler`` on the chain ``alpha_bars`` (increasing t) of ``net``."""
        full = training_alpha_bar(net)
        if full is None:
            raise SamplerkitError("time_shift needs a discrete-time model (ADM/iDDPM): it searches the model's "
                                  "training timesteps, and this model has none")
        if self.mode == "reference" and sampler != "ddim":
            raise SamplerkitError("time-shift mode 'reference' reproduces TS-DPM-ADM's DDIM only; use mode 'paper' "
                                  f"with {sampler}")
        full = full.to(torch.float64).cpu()
        ab = torch.as_tensor(alpha_bars, dtype=torch.float64).flatten().cpu()
        timesteps = (ab.reshape(-1, 1) - full.reshape(1, -1)).abs().argmin(1)
        if not torch.allclose(full[timesteps], ab, rtol=1e-9, atol=0):
            raise SamplerkitError("time_shift needs a chain of the model's own training timesteps; pass timesteps "
                                  "(samplerkit.schedules.respace) or a step count")
        return BoundTimeShift(self, full, timesteps)


class BoundTimeShift:
    """A :class:`TimeShift` on one chain: ``levels(i, k, x, ab, ab_prev)`` gives the abar the
    network and x0 use and the abar the step lands on, for step i (chain index k) from state x."""

    def __init__(self, ts: TimeShift, full: torch.Tensor, timesteps: torch.Tensor):
        self.ts, self.full, self.timesteps = ts, full, timesteps  # timesteps: chain index -> training timestep

    def levels(self, i: int, k: int, x: torch.Tensor, ab, ab_prev):
        cur = int(self.timesteps[k])
        if i == 0:  # x_T is never shifted (both modes)
            return ab, ab_prev
        var = x.to(torch.float64).flatten(1).var(dim=1).cpu()  # unbiased, as torch.var in both codes
        if self.ts.mode == "paper":
            return self._paper(cur, var, ab, ab_prev, x)
        return self._reference(cur, var, ab, ab_prev, x)

    def _paper(self, cur, var, ab, ab_prev, x):
        half = self.ts.window // 2
        if half == 0 or cur <= self.ts.cutoff:
            return ab, ab_prev
        lo, hi = max(cur - half, 0), min(cur + half, self.full.numel() - 1)  # Alg. 3: both sides of t
        taus = torch.arange(lo, hi + 1)
        t_s = taus[((var.reshape(-1, 1) - (1 - self.full[taus]).reshape(1, -1)) ** 2).argmin(1)]
        if bool((t_s == cur).all()):
            return ab, ab_prev
        return per_sample(self.full[t_s], x), ab_prev

    def _reference(self, cur, var, ab, ab_prev, x):
        T, K, w = self.full.numel(), self.timesteps.numel(), self.ts.window
        if cur <= self.ts.cutoff:
            return ab, ab_prev
        flipped = self.full.flip(0)  # TS-DPM-ADM's all_timesteps
        start = cur - w // 2 if cur - w // 2 > 0 else 0
        stop = cur + w // 2 + 1 if cur - w // 2 > 0 else w + 1
        candidates = flipped[start:stop]
        n_t = ((var.reshape(-1, 1) - candidates.reshape(1, -1)) ** 2).argmin(1) + start
        if self.ts.cutoff == 0:
            n_t = torch.full_like(n_t, cur)
        prev_all = torch.cat([self.full.new_ones(1), self.full[:-1]])
        m = n_t - T // (K - 1)
        landing = prev_all[m.clamp(min=0)]
        if bool((m < 0).any()) or bool((landing < float(ab)).any()):
            raise SamplerkitError(
                f"time-shift mode 'reference' lands a step from timestep {cur} at a noisier level than it starts "
                f"from{' (below timestep 0, which wraps there)' if bool((m < 0).any()) else ''}; TS-DPM-ADM's code "
                f"gives NaN there. Use a window below {2 * (T // (K - 1))} and a larger cutoff, or mode 'paper'")
        return ab, per_sample(landing, x)


# ---------------------------------------------------------------------------------------------
# the remedies of a run, as one value


@dataclass(frozen=True)
class Remedies:
    """The exposure-bias remedies of a run: Epsilon Scaling lambda = ``eps_scaler`` + ``slope`` t (None:
    off) and the Time-Shift sampler ``time_shift`` (None: off). Checked when made; :meth:`apply` is
    the one place they act; :meth:`settings` is what a manifest or CSV row records. A sweep axis is
    a list of them."""

    eps_scaler: float | None = None
    slope: float = 0.0
    time_shift: TimeShift | None = None

    def __post_init__(self):
        if self.eps_scaler is not None:
            check_eps_scaler(float(self.eps_scaler), 0.0 if math.isfinite(self.slope) else self.slope)
        elif self.slope:
            raise SamplerkitError("eps_scaler_slope needs eps_scaler")

    @classmethod
    def from_options(cls, eps_scaler=None, eps_scaler_slope=None, time_shift=None, ts_window=None, ts_cutoff=None,
                     ts_mode=None) -> Remedies:
        """The remedies the options ask for: ``eps_scaler`` b (a number or its text; with only a slope,
        b = 1), ``time_shift`` (True or a :class:`TimeShift`) with its window, cutoff and mode."""
        es = eps_scaler is not None or eps_scaler_slope is not None
        return cls(_eps_scaler(eps_scaler) if es else None, float(eps_scaler_slope or 0.0),
                   _time_shift(time_shift, ts_window, ts_cutoff, ts_mode))

    @classmethod
    def axis(cls, eps_scaler=None, **options) -> list[Remedies]:
        """A sweep axis: one :class:`Remedies` per Epsilon Scaling value of the list ``eps_scaler``
        ('1.0,1.002,1.005'), each with the other options."""
        values = _eps_scaler_list(eps_scaler)
        return [cls.from_options(b, **options) for b in values or [None]]

    def __bool__(self) -> bool:
        return self.eps_scaler is not None or self.time_shift is not None

    def for_sampler(self, chain: bool) -> Remedies:
        """These remedies as a sampler takes them: the time shift only on a discrete chain (ddim, ancestral)."""
        return self if chain or self.time_shift is None else dataclasses.replace(self, time_shift=None)

    def apply(self, net, grid, sampler: str = "ddim", chain: bool = True) -> tuple[object, dict]:
        """(the denoiser with Epsilon Scaling, the sampler's ``time_shift`` keyword) for a run of
        ``sampler`` on ``grid``; a time shift off a discrete chain, or a bad lambda, fails here."""
        kwargs = {}
        if self.time_shift is not None:
            if not chain:
                raise SamplerkitError(f"time_shift applies to the samplers on a discrete chain (ddim, ancestral), "
                                      f"not {sampler}")
            self.time_shift.bind(net, chain_alpha_bar(net, grid), sampler)  # fails before the run
            kwargs["time_shift"] = self.time_shift
        if self.eps_scaler is not None:
            net = eps_scaling(net, self.eps_scaler, self.slope, steps=grid if self.slope else None)
        return net, kwargs

    def settings(self) -> dict:
        """What a manifest or CSV row records ({} for none)."""
        out = {"eps_scaler": float(self.eps_scaler), "eps_scaler_slope": float(self.slope)} \
            if self.eps_scaler is not None else {}
        return {**out, **(self.time_shift.settings() if self.time_shift is not None else {})}

    def label(self) -> str:
        """'+ES1.005', '+ES1.005+0.002t', '+TS80/300' (+ 'ref'), as the exposure-bias rows name them."""
        out = ""
        if self.eps_scaler is not None:
            out += f"+ES{self.eps_scaler:g}" + (f"{self.slope:+g}t" if self.slope else "")
        if self.time_shift is not None:
            ts = self.time_shift
            out += f"+TS{ts.window}/{ts.cutoff}" + ("ref" if ts.mode == "reference" else "")
        return out


def _eps_scaler(value) -> float:
    """One eps_scaler b from a number or its text (a comma list is a sweep axis, not one run)."""
    if value is None:
        return 1.0
    if isinstance(value, str) and "," in value:
        raise SamplerkitError(f"eps_scaler takes one value here, got {value!r}; a list is a sweep axis "
                              "(a sweep's eps_scaler 1.0,1.002,1.005)")
    try:
        return float(value)
    except ValueError:
        raise SamplerkitError(f"bad eps_scaler {value!r}; use a number like 1.005") from None


def _eps_scaler_list(text) -> list[float] | None:
    """'1.0,1.002,1.005' -> [1.0, 1.002, 1.005], the sweep's Epsilon Scaling axis (None: no ES)."""
    if text is None:
        return None
    values = text if isinstance(text, list | tuple) else str(text).split(",")
    try:
        out = list(dict.fromkeys(float(v) for v in values if str(v).strip()))
    except ValueError:
        raise SamplerkitError(f"bad eps_scaler list {text!r}; use numbers like 1.0,1.002,1.005") from None
    if not out:
        raise SamplerkitError("the eps_scaler list is empty; use numbers like 1.0,1.002,1.005")
    return out


def _time_shift(time_shift, window, cutoff, mode) -> TimeShift | None:
    """The TimeShift a run uses (None: off); window/cutoff/mode without time_shift are an error."""
    if isinstance(time_shift, TimeShift):
        return time_shift
    if not time_shift:
        given = [n for n, v in (("ts_window", window), ("ts_cutoff", cutoff), ("ts_mode", mode)) if v is not None]
        if given:
            raise SamplerkitError(f"{', '.join(given)} need(s) time_shift")
        return None
    defaults = TimeShift()
    return TimeShift(defaults.window if window is None else window, defaults.cutoff if cutoff is None else cutoff,
                     mode or defaults.mode)


# the remedies as a user sets them (the command line builds its options from this)
REMEDY_KNOBS: dict[str, Knob] = {
    "eps_scaler": Knob("Epsilon Scaling (Ning et al. 2024): divide the predicted noise by lambda = B + K t "
                       "(e.g. 1.017 for ADM CIFAR-10 at 100 steps); sweep takes a list 1.0,1.002,1.005.",
                       type=str, metavar="B"),
    "eps_scaler_slope": Knob("Slope K of lambda = B + K t, t = the step index on the run's grid (0 = last step).",
                             type=float, metavar="K"),
    "time_shift": Knob("Time-Shift sampler (Li et al. 2024) for ddim/ancestral on a discrete-time model.", type=bool,
                       flag="--time-shift"),
    "ts_window": Knob("Time-shift window in training timesteps (default 80).", type=int, metavar="W"),
    "ts_cutoff": Knob("No time shift at or below training timestep C (default 300).", type=int, metavar="C"),
    "ts_mode": Knob("paper (default) or reference = TS-DPM-ADM's DDIM code (see samplerkit.remedies).", TS_MODES),
}


def time_shift(window: int = 80, cutoff: int = 300, mode: str = "paper") -> TimeShift:
    """A :class:`TimeShift` (Li et al. 2024 (TS)); pass it as ``ddim(..., time_shift=ts)``."""
    return TimeShift(window, cutoff, mode)


__all__ = ["EpsScaling", "REMEDY_KNOBS", "Remedies", "TS_MODES", "TimeShift", "check_eps_scaler", "chain_levels",
           "eps_scaling", "time_shift"]
