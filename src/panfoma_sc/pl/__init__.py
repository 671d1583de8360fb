"""Plotting: thin wrappers over scanpy where they add something (no torch here)."""

from ._embedding import embedding
from ._training import training_curve

__all__ = ["embedding", "training_curve"]
