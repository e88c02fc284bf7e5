"""Multi-process runs launched with ``torchrun``: gloo on CPU, NCCL on CUDA.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and the rendezvous address) in each
process's environment. Without them (or with ``WORLD_SIZE=1``) every function here is a no-op
and the same code runs as one process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def world_size() -> int:
    """Number of processes in the run (``WORLD_SIZE``, 1 without torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else max(_env_int("WORLD_SIZE", 1), 1)


def rank() -> int:
    """This process's global rank (``RANK``, 0 without torchrun)."""
    return dist.get_rank() if dist.is_initialized() else _env_int("RANK", 0)


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``): the index of its GPU."""
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    return rank() == 0


def is_initialized() -> bool:
    """Whether this process has joined a process group."""
    return dist.is_initialized()


def init(device: str | torch.device = "cpu") -> tuple[int, int]:
    """Join torchrun's process group (NCCL for CUDA, else gloo); returns (rank, world_size).

    On CUDA each process uses GPU ``LOCAL_RANK``; see :func:`local_device`.
    """
    size = max(_env_int("WORLD_SIZE", 1), 1)
    if size > 1 and not dist.is_initialized():
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return rank(), world_size()


def local_device(device: str | torch.device) -> torch.device:
    """``cuda`` -> ``cuda:LOCAL_RANK`` (this process's GPU); other devices unchanged."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank() if world_size() > 1 else torch.cuda.current_device())
    return device


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.is_initialized():
        dist.barrier()


def shard(items: Sequence) -> list:
    """This rank's share of ``items``: ``items[rank::world_size]`` (all of them in one process)."""
    return list(items[rank() :: world_size()])


def cleanup() -> None:
    """Leave the process group (if this process joined one)."""
    if dist.is_initialized():
        dist.destroy_process_group()
