"""Training ADM with input perturbation (ADM-IP) and its alternatives (ddpm-ip-icml2023.txt).

* :mod:`.objective` -- L_simple / L_hybrid / L_vlb (iddpm.txt) and the ip / y / gp / wd
  regularizers, plus the importance sampler of iddpm.txt Eq. 18;
* :mod:`.loop` -- the training loop (AdamW, EMA, mixed precision, checkpoints, resume, DDP);
* :mod:`.presets` -- Tab. 9 of the IP paper and a CPU-sized ``tiny`` preset.
"""

from .loop import TrainConfig, Trainer, train
from .objective import ImportanceSampler, Objective, network_input
from .presets import PRESETS, preset

__all__ = ["PRESETS", "ImportanceSampler", "Objective", "TrainConfig", "Trainer", "network_input", "preset", "train"]
