"""Training ADM with input perturbation (ADM-IP) and its alternatives (Ning et al. 2023), and EDM-preconditioned
denoisers with or without it (Karras et al. 2022).

* :mod:`.objective` -- L_simple / L_hybrid / L_vlb (Nichol & Dhariwal 2021) and the ip / y / gp /
  wd regularizers, plus the importance sampler of Nichol & Dhariwal 2021, Eq. 18;
* :mod:`.edm` -- EDM's training loss for ``--precond edm|vp|ve`` (Karras et al. 2022, Table 1), with
  input perturbation carried to sigma-space, and EDM's half-life EMA;
* :mod:`.loop` -- the training loop (AdamW, EMA with optional warm-up, mixed precision,
  checkpoints, resume, DDP);
* :mod:`.presets` -- Tab. 9 of the IP paper and the CPU-sized ``tiny`` / ``tiny-edm`` recipes of the built-in models;
* :mod:`.recommend` -- the sampler a checkpoint should use, from how it was trained.
"""

from .loop import TrainConfig, Trainer, train
from .objective import ImportanceSampler, Objective, network_input
from .presets import PRESETS, preset
from .recommend import read_recommended, recommended_sampler

__all__ = ["PRESETS", "ImportanceSampler", "Objective", "TrainConfig", "Trainer", "network_input", "preset",
           "read_recommended", "recommended_sampler", "train"]
