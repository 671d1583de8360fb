"""Resolve the ``model`` argument of the tools."""

from __future__ import annotations

from pathlib import Path

from ..models import PretrainedModel, load

__all__ = ["resolve_model"]


def resolve_model(model: str | Path | PretrainedModel) -> PretrainedModel:
    """A registry name, a checkpoint path or an already loaded model, as a loaded model."""
    if isinstance(model, PretrainedModel):
        return model
    return load(model)
