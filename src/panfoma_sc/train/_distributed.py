"""``torchrun`` support: start and stop the process group."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["finish_distributed", "init_distributed"]


def init_distributed() -> tuple[int, int]:
    """Join the process group when launched by ``torchrun`` (NCCL on CUDA, else gloo); returns (rank, world)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def finish_distributed() -> None:
    """Leave the process group, if any."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
