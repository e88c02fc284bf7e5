"""Random weights of realistic scale, for the tests and benchmarks that build a published
architecture without its checkpoint: fan-in normal weights, biases 0.1 N(0, 1), 1-d gains
1 + 0.1 N(0, 1), drawn in sorted name order from one seed. (Upstream networks zero-initialize their
output layers, so untrained weights would make a network that outputs zeros.)"""

from __future__ import annotations

import math

import torch


def random_state_dict(template: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights for every key of ``template`` (only the shapes are read; a meta-device state dict
    will do), drawn in sorted key order."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(template):
        shape = tuple(template[key].shape)
        v = torch.randn(shape, generator=g)
        if key.endswith("bias"):
            v = 0.1 * v
        elif len(shape) == 1:  # normalization gains
            v = 1 + 0.1 * v
        else:
            v = v / math.sqrt(math.prod(shape[1:]))
        out[key] = v
    return out


def random_weights(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``module`` with every parameter replaced by :func:`random_state_dict`'s weights (buffers
    untouched); returns it."""
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in random_state_dict(params, seed).items():
            params[name].copy_(value)
    return module
