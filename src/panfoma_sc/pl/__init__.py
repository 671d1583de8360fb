"""Plotting: thin wrappers over scanpy where they add something (no torch here)."""

from ._training import training_curve

__all__ = ["training_curve"]
