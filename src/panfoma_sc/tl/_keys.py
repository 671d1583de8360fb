"""Where results are written: scanpy's ``key_added`` rule in one place."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["EmbeddingKeys", "embedding_keys"]


class EmbeddingKeys(NamedTuple):
    """Keys of one result."""

    obsm: str
    uns: str


def embedding_keys(
    key_added: str | None, *, default_obsm: str = "X_panfoma", default_uns: str = "panfoma"
) -> EmbeddingKeys:
    """``key_added=None`` gives the defaults; a name is used for both ``obsm`` and ``uns`` (as ``sc.pp.pca``)."""
    if key_added is None:
        return EmbeddingKeys(default_obsm, default_uns)
    if not isinstance(key_added, str) or not key_added:
        msg = f"key_added must be a non-empty string or None, got {key_added!r}."
        raise ValueError(msg)
    return EmbeddingKeys(key_added, key_added)
