"""Regions of a model that run in float32 also inside a bf16 autocast region."""

from __future__ import annotations

import contextlib

import torch

#: Device types with an autocast implementation on every supported torch version (MPS gained one in torch 2.5).
_AUTOCAST_DEVICE_TYPES = frozenset({"cpu", "cuda"})


def float32_region(device: torch.device) -> contextlib.AbstractContextManager:
    """Switch autocast off on ``device`` for the ``with`` block; cast the block's inputs with ``.float()``.

    For small computations whose result must keep float32 resolution under bf16 autocast (scores that are sorted,
    logits of a contrastive loss). Where the device has no autocast, nothing is switched.
    """
    if device.type in _AUTOCAST_DEVICE_TYPES:
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
