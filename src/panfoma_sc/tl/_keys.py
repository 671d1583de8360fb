"""Where results are written: scanpy's ``key_added`` rule in one place."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

__all__ = ["EmbeddingKeys", "check_result_target", "embedding_keys", "warn_if_replacing"]


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


def check_result_target(adata: AnnData, *, copy: bool) -> None:
    """Refuse to write results into a view of a backed AnnData, which anndata cannot turn into an actual object.

    Called before any work, so that the error does not come after the model ran.
    """
    if not copy and adata.isbacked and adata.is_view:
        msg = (
            "adata is a view of a backed AnnData (e.g. backed[:1000]): results cannot be written into it. Pass "
            "copy=True to get a new in-memory AnnData with the results, or load the rows first with "
            "adata.to_memory()."
        )
        raise ValueError(msg)


def warn_if_replacing(adata: AnnData, keys: EmbeddingKeys, *, tool: str) -> None:
    """Warn before replacing an ``obsm``/``uns`` entry that no panfoma tool wrote (e.g. ``key_added="X_pca"``).

    Replacing an earlier PanFoMa result under the same keys is what a rerun means and passes silently, as in scanpy.
    """
    record = adata.uns.get(keys.uns)
    params = record.get("params") if isinstance(record, Mapping) else None
    if isinstance(params, Mapping) and "panfoma_sc_version" in params:
        return
    taken = [f"obsm[{keys.obsm!r}]"] if keys.obsm in adata.obsm else []
    taken += [f"uns[{keys.uns!r}]"] if keys.uns in adata.uns else []
    if taken:
        logger.warning(
            "%s replaces adata.%s, which no panfoma tool wrote. Pass another key_added to keep %s.",
            tool,
            " and adata.".join(taken),
            "them" if len(taken) > 1 else "it",
        )
