"""Multi-process runs launched with ``torchrun``: gloo on CPU, NCCL on CUDA.

Without torchrun's environment (``WORLD_SIZE`` unset or 1) everything here is a no-op, so the
same code runs as one process.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device: str | torch.device = "cpu") -> tuple[int, int]:
    """Join the process group if launched by torchrun; returns (rank, world_size)."""
    size = world_size()
    if size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return rank(), size


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shard(items: list) -> list:
    """This rank's share: items[rank::world_size]."""
    return items[rank() :: max(world_size(), 1)] if dist.is_initialized() else list(items)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
