"""Inference shared among the processes of a ``torchrun`` launch: each process embeds one slice of the cells.

Nothing here starts a process group: under ``torchrun`` the ``panfoma`` CLI does (``panfoma embed``), and a
script calls :func:`torch.distributed.init_process_group` itself. Without a process group every function here
describes a single process that does all the work.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["combine_shards", "inference_world", "rank_device", "shard_rows"]

#: Rows per collective call when the shards are combined: bounds the extra (GPU) memory of the exchange.
ROWS_PER_EXCHANGE = 65_536


def inference_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised :mod:`torch.distributed` process group, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_device(device: str, rank: int, world: int) -> str:
    """The device process ``rank`` of ``world`` works on.

    A bare ``"cuda"`` (what ``"auto"`` gives) means the current GPU, the same one in every process unless each
    called :func:`torch.cuda.set_device`; in a job of several processes it means the GPU of this process's local
    rank (``LOCAL_RANK``, set by ``torchrun``), one GPU per process, where this machine has a GPU of that index
    (a process that sees only its own GPU keeps ``"cuda"``). Any other device stays.
    """
    local = os.environ.get("LOCAL_RANK", "")
    if world > 1 and device == "cuda" and local.isdigit():
        import torch

        if int(local) < torch.cuda.device_count():
            return f"cuda:{int(local)}"
    return device


def shard_rows(n_rows: int, rank: int, world: int) -> np.ndarray:
    """The rows process ``rank`` of ``world`` embeds: a contiguous slice, slices differing by at most one row.

    Contiguous slices keep the reads of a backed file sequential.
    """
    return np.arange(n_rows * rank // world, n_rows * (rank + 1) // world)


def combine_shards(output: np.ndarray, device: str = "cuda") -> np.ndarray:
    """Give every process the whole result: each filled its own rows of ``output`` and left zeros elsewhere.

    The shards are summed across processes (exact: every entry is one value plus zeros), ``ROWS_PER_EXCHANGE``
    rows at a time, on the GPU under NCCL (``device``, where this process embedded, if it is a GPU) and in place on
    the host under gloo. A no-op in a single process.
    """
    import torch
    import torch.distributed as dist

    rank, world = inference_world()
    if world == 1:
        return output
    on_gpu = dist.get_backend() == "nccl"
    gpu = device if device.startswith("cuda") else rank_device("cuda", rank, world)
    for start in range(0, output.shape[0], ROWS_PER_EXCHANGE):
        part = torch.from_numpy(output[start : start + ROWS_PER_EXCHANGE])  # shares memory with output
        if on_gpu:
            exchanged = part.to(gpu)
            dist.all_reduce(exchanged)
            part.copy_(exchanged.cpu())
        else:
            dist.all_reduce(part)
    return output
