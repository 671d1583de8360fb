"""Checkpoint registry: list, load, register and describe PanFoMa checkpoints."""

from ._checkpoint import Checkpoint, read_checkpoint, sha256sum, write_checkpoint
from ._pretrained import PretrainedModel
from ._registry import DEFAULT_MODEL, RegistryEntry, available, describe, load, register

__all__ = [
    "DEFAULT_MODEL",
    "Checkpoint",
    "PretrainedModel",
    "RegistryEntry",
    "available",
    "describe",
    "load",
    "read_checkpoint",
    "register",
    "sha256sum",
    "write_checkpoint",
]
