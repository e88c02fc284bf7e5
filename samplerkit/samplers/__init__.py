"""Samplers: plain functions over (denoiser, latents, noise levels), one per method.

* :mod:`.ode` -- ``euler``, ``heun`` (Karras et al. 2022 (EDM), Alg. 1, with the general
  sigma(t), s(t) of Sec. 3) and ``stochastic`` (EDM Alg. 2, churn);
* :mod:`.discrete` -- ``ddim`` (Song et al. 2021) and ``ancestral`` (Ho et al. 2020, Alg. 2 on
  the respaced chain of Nichol & Dhariwal 2021, Eq. 19, learned variance from Eq. 15);
* :mod:`.dpm` -- the k-diffusion family: ``euler_ancestral``, ``dpm_2``, ``dpm_2_ancestral``,
  ``dpmpp_2s_ancestral``, ``dpmpp_2m``, ``dpmpp_2m_sde``, ``dpmpp_3m_sde`` (Lu et al. 2022,
  DPM-Solver and DPM-Solver++; crowsonkb/k-diffusion);
* :mod:`.dpm_solver` -- ``dpm_fast``, ``dpm_adaptive`` (Lu et al. 2022, DPM-Solver with fixed and
  adaptive steps; k-diffusion's ``sample_dpm_fast`` / ``sample_dpm_adaptive``: only the grid's end
  points are used, and they stop at sigmas[-2] > 0);
* :mod:`.multistep` -- ``lms``, ``unipc`` (Zhao et al. 2023), ``ipndm`` (Zhang & Chen 2023);
* :mod:`.sit` -- ``sit_sde``, ``sit_ode`` (Ma et al. 2024 (SiT): its reverse-SDE and ODE samplers
  in t-space, for linear-interpolant flow models only; they use only the grid's step count).

Conventions: latents are standard normal; the sigma-space samplers start at
``latents * sigma_0`` (EDM), the discrete-chain ones at ``x_T = latents`` in x_t-space
(guided-diffusion). Arithmetic is float64; the network runs in its own dtype. Stochastic samplers
draw their noise only through ``randn_like``, once per step, in step order. Every sampler
returns the final images in data space ([-1, 1] for a good model), and takes
``callback(dict(i, x, sigma, sigma_hat, denoised))``, called once per step after the step's first
network call (k-diffusion's convention; x in the sampler's own space: sigma-space, or x_t-space
for ``ddim``/``ancestral``). A plain int N in place of the grid means N steps: EDM's grid over the
model's range (:func:`samplerkit.schedules.for_model`), or ``respace(T, str(N))`` for
``ddim``/``ancestral`` on a discrete-time model.

:data:`SAMPLERS` is the one table of samplers: name -> function, order, NFE for N steps, kind
of grid, source. A sampler's knobs and their defaults are read from its signature
(:func:`knobs`), so they are defined once, where the sampler is; what a user reads about a knob
(help text, choices, command-line flag) is its :class:`Knob` in :data:`KNOB_HELP` or in the row's
own ``knob_help``. The command line builds its sampler options from these two tables
(:func:`table_knobs`), so a new sampler is one function plus one row.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import SamplerkitError
from ..knobs import Knob
from .discrete import VARIANCES, ancestral, chain_alpha_bar, check_eta, ddim, resolve_variance
from .dpm import (
    SOLVER_TYPES,
    check_noise,
    dpm_2,
    dpm_2_ancestral,
    dpmpp_2m,
    dpmpp_2m_sde,
    dpmpp_2s_ancestral,
    dpmpp_3m_sde,
    euler_ancestral,
)
from .dpm_solver import check_adaptive, dpm_adaptive, dpm_fast
from .multistep import UNIPC_VARIANTS, check_order, ipndm, lms, unipc
from .ode import SCALINGS, SCHEDULES, TimeSchedule, check_churn, euler, heun, stochastic
from .sit import (
    DIFFUSION_FORMS,
    LAST_STEPS,
    ODE_METHODS,
    SDE_METHODS,
    check_flow,
    check_ode,
    check_sde,
    sit_ode,
    sit_sde,
)

# arguments every sampler has that are not knobs a user sets
_NOT_KNOBS = ("net", "latents", "sigmas", "steps_or_sigmas", "class_labels", "randn_like", "callback", "time_shift",
              "cond_fn")


# knobs that several samplers share; a row's own knob_help adds (or overrides) its own
KNOB_HELP: dict[str, Knob] = {
    "schedule": Knob("sigma(t) of EDM Alg. 1 (Karras et al. 2022, Table 1).", SCHEDULES),
    "scaling": Knob("s(t) of EDM Alg. 1 (Karras et al. 2022, Table 1).", SCALINGS),
    "epsilon_s": Knob("Lowest t of the VP sigma(t) (--schedule vp; EDM Table 1 epsilon_s)."),
    "S_churn": Knob("EDM Alg. 2 S_churn.", flag="--S-churn"),
    "S_min": Knob("EDM Alg. 2 S_tmin.", flag="--S-min"),
    "S_max": Knob("EDM Alg. 2 S_tmax.", flag="--S-max"),
    "S_noise": Knob("EDM Alg. 2 S_noise.", flag="--S-noise"),
    "eta": Knob("DDIM eta; amount of ancestral/SDE noise of the k-diffusion samplers (0 = deterministic)."),
    "s_noise": Knob("Noise scale s_noise of the ancestral/SDE samplers."),
    "solver_type": Knob("2nd-order correction of dpmpp_2m_sde.", SOLVER_TYPES),
    "order": Knob("Order of the multistep method (lms, ipndm: 1-4; unipc: 1-3) or of dpm_adaptive's pair (2, 3)."),
    "variant": Knob("UniPC B(h): bh1 = h, bh2 = e^h - 1.", UNIPC_VARIANTS),
    "variance": Knob("Ancestral variance (Nichol & Dhariwal 2021, Eq. 15 when learned; auto = learned if the "
                     "model has it).", ("auto", *VARIANCES)),
    "clip_denoised": Knob("Clamp the denoised estimate to [-1, 1] (default: on for ddim/ancestral, off otherwise).",
                          flag="--clip/--no-clip", param="clip"),
}


@dataclass(frozen=True)
class SamplerInfo:
    """One row of :data:`SAMPLERS`.

    ``grid``: 'sigmas' (a descending sigma grid ending in 0) or 'chain' (a discrete chain: the
    respaced training timesteps of a discrete-time model, or a sigma grid for any other model).
    ``nfe(N)``: network evaluations per image for N steps. ``resolve(net, options)``: the options
    as the run will use them ('auto' made concrete), checked so that bad ones fail before a run
    starts (the sampler repeats the check when called directly).
    """

    fn: Callable
    order: str
    nfe: Callable[[int], int]
    grid: str
    source: str
    resolve: Callable[[object, dict], dict] | None = None
    knob_help: dict[str, Knob] = field(default_factory=dict)

    @property
    def adaptive(self) -> bool:
        """Whether the step count is chosen by the solver (``nfe(N)`` is then nominal; runs count the calls)."""
        return self.fn in _ADAPTIVE

    @property
    def knobs(self) -> dict[str, object]:
        return knobs(self.fn)

    @property
    def stochastic(self) -> bool:
        return "randn_like" in inspect.signature(self.fn).parameters

    def knob(self, name: str) -> Knob:
        """The :class:`Knob` of option ``name``: the row's own, else the shared one, else a plain one
        (every knob gets a flag)."""
        return self.knob_help.get(name) or KNOB_HELP.get(name) or Knob(f"{name} (see the sampler's docstring).")


def knobs(fn: Callable) -> dict[str, object]:
    """The keyword options of sampler ``fn`` with their defaults, from its signature."""
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if name not in _NOT_KNOBS and p.default is not inspect.Parameter.empty}


def table_knobs() -> dict[str, tuple[Knob, object, list[str]]]:
    """Every knob of the current table: name -> (its Knob, a default, the samplers that take it), in
    table order. The command line generates its sampler flags from this."""
    out: dict[str, tuple[Knob, object, list[str]]] = {}
    for sampler, row in SAMPLERS.items():
        for name, default in row.knobs.items():
            if name not in out:
                out[name] = (row.knob(name), default, [])
            out[name][2].append(sampler)
    return out


def check_choices(sampler: str, options: dict) -> None:
    """Each option of ``sampler`` with a list of choices must be one of them."""
    row = info(sampler)
    for name, value in options.items():
        choices = row.knob(name).choices if name in row.knobs else None
        if choices is not None and value not in choices:
            raise SamplerkitError(f"unknown {name} {value!r} for {sampler}; use {' or '.join(map(str, choices))}")


def _resolve_ddim(net, options: dict) -> dict:
    check_eta(options["eta"])
    return options


def _resolve_ancestral(net, options: dict) -> dict:
    return {**options, "variance": resolve_variance(net, options["variance"])}


def _resolve_churn(net, options: dict) -> dict:
    check_churn(options["S_churn"], options["S_min"], options["S_max"], options["S_noise"])
    return options


def _resolve_noise(max_eta: float = float("inf")):
    def resolve(net, options: dict) -> dict:
        check_noise(options["eta"], options["s_noise"], max_eta)
        return options

    return resolve


def _resolve_order(name: str, highest: int):
    def resolve(net, options: dict) -> dict:
        check_order(name, options["order"], highest)
        return options

    return resolve


def _resolve_dpm_solver(net, options: dict) -> dict:
    check_noise(options["eta"], options["s_noise"])
    if "rtol" in options:
        check_adaptive(options["order"], options["rtol"], options["atol"], options["h_init"], options["accept_safety"])
    return options


_KD = "crowsonkb/k-diffusion"
# dpm_adaptive's step-size control (Lu et al. 2022, App. C; k-diffusion's PIDStepSizeController)
_DPM_ADAPTIVE_KNOBS = {
    "rtol": Knob("dpm_adaptive: relative error tolerance."),
    "atol": Knob("dpm_adaptive: absolute error tolerance."),
    "h_init": Knob("dpm_adaptive: first step size in lambda = -log sigma."),
    "pcoeff": Knob("dpm_adaptive: proportional coefficient of the PID step-size controller."),
    "icoeff": Knob("dpm_adaptive: integral coefficient of the PID step-size controller."),
    "dcoeff": Knob("dpm_adaptive: derivative coefficient of the PID step-size controller."),
    "accept_safety": Knob("dpm_adaptive: accept a step when its error ratio is at least this."),
}


def _resolve_sit(name: str):
    def resolve(net, options: dict) -> dict:
        check_flow(net, name)
        if name == "sit_sde":
            check_sde(options["sde_method"], options["diffusion_form"], options["diffusion_norm"],
                      options["last_step"], options["last_step_size"])
        else:
            check_ode(options["ode_method"], options["ode_atol"], options["ode_rtol"])
        return options

    return resolve


# SiT's samplers (Ma et al. 2024; willisma/SiT train_utils.py's SDE/ODE arguments, same defaults)
_SIT_KNOBS = {
    "sde_method": Knob("sit_sde: Euler (Euler-Maruyama) or Heun (SiT's --sampling-method).", SDE_METHODS),
    "diffusion_form": Knob("sit_sde: form of the diffusion coefficient w_t (SiT Table 2).", DIFFUSION_FORMS),
    "diffusion_norm": Knob("sit_sde: magnitude of w_t."),
    "last_step": Knob("sit_sde: last step at t = 1 - last_step_size: Mean (drift, no noise), Tweedie (D), "
                      "Euler (velocity) or None.", LAST_STEPS),
    "last_step_size": Knob("sit_sde: size of the last step."),
    "ode_method": Knob("sit_ode: dopri5 (adaptive) or fixed-step euler/heun2 (torchdiffeq's names).", ODE_METHODS),
    "ode_atol": Knob("sit_ode: absolute error tolerance of dopri5 (SiT's --atol)."),
    "ode_rtol": Knob("sit_ode: relative error tolerance of dopri5 (SiT's --rtol)."),
}
SAMPLERS: dict[str, SamplerInfo] = {
    "euler": SamplerInfo(euler, "1", lambda n: n, "sigmas", "Karras et al. 2022 (EDM), Alg. 1 without lines 6-8"),
    "heun": SamplerInfo(heun, "2", lambda n: 2 * n - 1, "sigmas", "Karras et al. 2022 (EDM), Alg. 1"),
    "stochastic": SamplerInfo(stochastic, "2 (SDE)", lambda n: 2 * n - 1, "sigmas",
                              "Karras et al. 2022 (EDM), Alg. 2", _resolve_churn),
    "ddim": SamplerInfo(ddim, "1", lambda n: n, "chain", "Song et al. 2021 (DDIM), Eq. 12",
                        _resolve_ddim),
    "ancestral": SamplerInfo(ancestral, "1 (SDE)", lambda n: n, "chain",
                             "Ho et al. 2020, Alg. 2; Nichol & Dhariwal 2021, Sec. 4, Eq. 15, 19", _resolve_ancestral),
    "euler_ancestral": SamplerInfo(euler_ancestral, "1 (SDE)", lambda n: n, "sigmas",
                                   f"{_KD} sample_euler_ancestral", _resolve_noise()),
    "dpm_2": SamplerInfo(dpm_2, "2", lambda n: 2 * n - 1, "sigmas",
                         f"Lu et al. 2022 (DPM-Solver), Alg. 1 (r1 = 1/2); {_KD} sample_dpm_2"),
    "dpm_2_ancestral": SamplerInfo(dpm_2_ancestral, "2 (SDE)", lambda n: 2 * n - 1, "sigmas",
                                   f"Lu et al. 2022 (DPM-Solver); {_KD} sample_dpm_2_ancestral", _resolve_noise(1.0)),
    "lms": SamplerInfo(lms, "= order knob (1-4, default 4)", lambda n: n, "sigmas", f"{_KD} sample_lms",
                       _resolve_order("lms", 4)),
    "dpmpp_2s_ancestral": SamplerInfo(dpmpp_2s_ancestral, "2 (SDE)", lambda n: 2 * n - 1, "sigmas",
                                      f"Lu et al. 2022 (DPM-Solver++), Alg. 1; {_KD} sample_dpmpp_2s_ancestral",
                                      _resolve_noise(1.0)),
    "dpmpp_2m": SamplerInfo(dpmpp_2m, "2", lambda n: n, "sigmas",
                            f"Lu et al. 2022 (DPM-Solver++), Alg. 2; {_KD} sample_dpmpp_2m"),
    "dpmpp_2m_sde": SamplerInfo(dpmpp_2m_sde, "2 (SDE; ODE at eta = 0)", lambda n: n, "sigmas",
                                f"Lu et al. 2022 (DPM-Solver++); {_KD} sample_dpmpp_2m_sde", _resolve_noise()),
    "dpmpp_3m_sde": SamplerInfo(dpmpp_3m_sde, "3 (SDE); about 2 measured as an ODE (eta = 0)", lambda n: n, "sigmas",
                                f"Lu et al. 2022 (DPM-Solver++); {_KD} sample_dpmpp_3m_sde", _resolve_noise()),
    "unipc": SamplerInfo(unipc, "order knob + 1 (order 1-3, default 2)", lambda n: n, "sigmas",
                         "Zhao et al. 2023 (UniPC), data prediction; diffusers UniPCMultistepScheduler",
                         _resolve_order("unipc", 3)),
    "ipndm": SamplerInfo(ipndm, "= order knob (1-4) on equal steps; 2 on EDM's grid", lambda n: n, "sigmas",
                         "Zhang & Chen 2023 (DEIS), iPNDM", _resolve_order("ipndm", 4)),
    # these two use only the grid's end points and stop at sigmas[-2] > 0 (see samplers.dpm_solver)
    "dpm_fast": SamplerInfo(dpm_fast, "3 (last step 1 or 2)", lambda n: n, "sigmas",
                            f"Lu et al. 2022 (DPM-Solver), Sec. 3.3; {_KD} sample_dpm_fast", _resolve_dpm_solver),
    "dpm_adaptive": SamplerInfo(dpm_adaptive, "2 or 3 (order knob); adaptive steps: NFE set by rtol/atol, "
                                "counted in runs (N is nominal)", lambda n: n, "sigmas",
                                f"Lu et al. 2022 (DPM-Solver), App. C; {_KD} sample_dpm_adaptive", _resolve_dpm_solver,
                                _DPM_ADAPTIVE_KNOBS),
    # these two run in SiT's t-space and use only the grid's step count N (see samplers.sit)
    "sit_sde": SamplerInfo(sit_sde, "1 (SDE; Euler-Maruyama, or sde_method Heun)", lambda n: n, "sigmas",
                           "Ma et al. 2024 (SiT), Sec. 2.4; willisma/SiT Sampler.sample_sde", _resolve_sit("sit_sde"),
                           _SIT_KNOBS),
    "sit_ode": SamplerInfo(sit_ode, "5(4) adaptive (dopri5; NFE set by ode_atol/ode_rtol, counted in runs), or 1/2 on "
                           "N - 1 fixed steps", lambda n: n, "sigmas",
                           "Ma et al. 2024 (SiT); willisma/SiT Sampler.sample_ode (torchdiffeq odeint)",
                           _resolve_sit("sit_ode"), _SIT_KNOBS),
}

_ADAPTIVE = (dpm_adaptive, sit_ode)  # step sizes set by error control (sit_ode: its dopri5 method)

# the samplers that run only on a linear-interpolant flow model (SiT; samplers.sit.check_flow)
FLOW_SAMPLERS = ("sit_sde", "sit_ode")


def info(name: str) -> SamplerInfo:
    """The table row of sampler ``name``; an unknown name is an error that lists the choices."""
    if name not in SAMPLERS:
        raise SamplerkitError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def nfe(name: str, num_steps: int) -> int:
    """Network evaluations per image of sampler ``name`` with ``num_steps`` steps."""
    return info(name).nfe(num_steps)


__all__ = [
    "KNOB_HELP", "SAMPLERS", "SCALINGS", "SCHEDULES", "SOLVER_TYPES", "UNIPC_VARIANTS", "VARIANCES", "Knob",
    "SamplerInfo", "TimeSchedule", "check_choices", "ancestral", "chain_alpha_bar", "ddim", "dpm_2", "dpm_2_ancestral",
    "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2s_ancestral", "dpmpp_3m_sde", "euler", "euler_ancestral", "heun", "info",
    "ipndm", "knobs", "lms", "nfe", "stochastic", "table_knobs", "unipc",
    "dpm_adaptive", "dpm_fast", "sit_ode", "sit_sde", "FLOW_SAMPLERS",
]
