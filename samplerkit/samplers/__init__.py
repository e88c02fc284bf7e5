"""Samplers: plain functions over (denoiser, latents, noise levels), one per method.

* :mod:`.ode` -- ``euler``, ``heun`` (Karras et al. 2022 (EDM), Alg. 1, with the general
  sigma(t), s(t) of Sec. 3) and ``stochastic`` (EDM Alg. 2, churn);
* :mod:`.discrete` -- ``ddim`` (Song et al. 2021) and ``ancestral`` (Ho et al. 2020, Alg. 2 on
  the respaced chain of Nichol & Dhariwal 2021, Eq. 19, learned variance from Eq. 15).

Conventions: latents are standard normal; the sigma-space samplers start at
``latents * sigma_0`` (EDM), the discrete-chain ones at ``x_T = latents`` in x_t-space
(guided-diffusion). Arithmetic is float64; the network runs in its own dtype. Stochastic samplers
draw their noise only through ``randn_like``, once per step, in step order. Every sampler
returns the final images in [-1, 1] data space.

:data:`SAMPLERS` is the one table of samplers: name -> function, order, NFE for N steps, kind
of grid, source. A sampler's knobs and their defaults are read from its signature
(:func:`knobs`), so they are defined once, where the sampler is.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import SamplerkitError
from .discrete import ancestral, chain_alpha_bar, check_eta, ddim, resolve_variance
from .ode import TimeSchedule, euler, heun, stochastic

# arguments every sampler has that are not knobs a user sets
_NOT_KNOBS = ("net", "latents", "sigmas", "steps_or_sigmas", "class_labels", "randn_like", "callback")


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

    @property
    def knobs(self) -> dict[str, object]:
        return knobs(self.fn)

    @property
    def stochastic(self) -> bool:
        return "randn_like" in inspect.signature(self.fn).parameters


def knobs(fn: Callable) -> dict[str, object]:
    """The keyword options of sampler ``fn`` with their defaults, from its signature."""
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if name not in _NOT_KNOBS and p.default is not inspect.Parameter.empty}


def _resolve_ddim(net, options: dict) -> dict:
    check_eta(options["eta"])
    return options


def _resolve_ancestral(net, options: dict) -> dict:
    return {**options, "variance": resolve_variance(net, options["variance"])}


SAMPLERS: dict[str, SamplerInfo] = {
    "euler": SamplerInfo(euler, "1", lambda n: n, "sigmas", "Karras et al. 2022 (EDM), Alg. 1 without lines 6-8"),
    "heun": SamplerInfo(heun, "2", lambda n: 2 * n - 1, "sigmas", "Karras et al. 2022 (EDM), Alg. 1"),
    "stochastic": SamplerInfo(stochastic, "2 (SDE)", lambda n: 2 * n - 1, "sigmas",
                              "Karras et al. 2022 (EDM), Alg. 2"),
    "ddim": SamplerInfo(ddim, "1", lambda n: n, "chain", "Song et al. 2021 (DDIM), Eq. 12",
                        _resolve_ddim),
    "ancestral": SamplerInfo(ancestral, "1 (SDE)", lambda n: n, "chain",
                             "Ho et al. 2020, Alg. 2; Nichol & Dhariwal 2021, Sec. 4, Eq. 15, 19", _resolve_ancestral),
}


def info(name: str) -> SamplerInfo:
    """The table row of sampler ``name``; an unknown name is an error that lists the choices."""
    if name not in SAMPLERS:
        raise SamplerkitError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def nfe(name: str, num_steps: int) -> int:
    """Network evaluations per image of sampler ``name`` with ``num_steps`` steps."""
    return info(name).nfe(num_steps)


__all__ = [
    "SAMPLERS", "SamplerInfo", "TimeSchedule", "ancestral", "chain_alpha_bar", "ddim", "euler", "heun", "info",
    "knobs", "nfe", "stochastic",
]
