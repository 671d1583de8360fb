"""Where results are written: scanpy's ``key_added`` rule in one place."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

logger = logging.getLogger(__name__)

__all__ = [
    "EmbeddingKeys",
    "check_result_target",
    "check_storable_key",
    "embedding_keys",
    "warn_if_replacing",
    "written_by",
    "written_by_panfoma",
]


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
    check_storable_key(key_added)
    return EmbeddingKeys(key_added, key_added)


def check_storable_key(key_added: str) -> None:
    """Refuse a key with ``/``: h5ad files read it as a path of groups, so a saved result could not be read back."""
    if "/" in key_added:
        msg = (
            f"key_added={key_added!r} contains '/', which an .h5ad file reads as a path of groups: the saved result "
            f"could not be read back. Name it without '/', e.g. key_added={key_added.replace('/', '_')!r}."
        )
        raise ValueError(msg)


def check_result_target(adata: AnnData, *, copy: bool) -> None:
    """Refuse to write results into a view of a backed AnnData, which anndata cannot turn into an actual object.

    Called before any work, so that the error does not come after the model ran.
    """
    if not copy and adata.isbacked and adata.is_view:
        msg = (
            "adata is a view of a backed AnnData (e.g. backed[:1000]): results cannot be written into it. Pass "
            "copy=True to get a new in-memory AnnData with the results, or load the rows first with "
            "adata.to_memory() (both read the view's rows into memory); to keep the data on disk, run the tool on "
            "the whole backed AnnData and take the rows of the result."
        )
        raise ValueError(msg)


def read_backed_copy(adata: AnnData, *, copy: bool) -> AnnData | None:
    """For ``copy=True`` on a backed AnnData, its in-memory copy, read now; else ``None``.

    Called after every check and before the work: reading a backed file into memory is the step most likely to
    run out of memory, and it must fail before the model runs, not after.
    """
    return adata.to_memory() if copy and adata.isbacked else None


def result_target(adata: AnnData, *, copy: bool, backed_copy: AnnData | None) -> AnnData:
    """Where the results go, once computed: ``adata``, the copy :func:`read_backed_copy` read, or a new copy.

    An in-memory ``adata`` is copied only now, after the work, so that the copy does not add to its memory peak.
    """
    if not copy:
        return adata
    return backed_copy if backed_copy is not None else adata.copy()


def written_by_panfoma(params: Mapping) -> bool:
    """Whether an ``uns`` record's parameters come from a panfoma tool (every tool records its version)."""
    return "panfoma_sc_version" in params


def written_by(params: Mapping, tool: str) -> bool:
    """Whether an ``uns`` record's parameters come from an earlier call of ``tool`` (e.g. ``"pf.tl.embed"``).

    Records name their tool (``params["tool"]``); a panfoma record from before that counts as any tool's.
    """
    return written_by_panfoma(params) and params.get("tool", tool) == tool


def warn_if_replacing(
    data: AnnData | MuData,
    *,
    tool: str,
    uns_key: str,
    obsm_keys: Sequence[str] = (),
    obs_keys: Sequence[str] = (),
    is_rerun: Callable[[Mapping], bool] | None = None,
    owner: str = "no panfoma tool",
    name: str = "adata",
) -> None:
    """Warn before replacing ``obsm``/``obs``/``uns`` entries that an earlier run of the tool did not write.

    ``uns[uns_key]`` holds a tool's record; when its ``params`` pass ``is_rerun`` (default: :func:`written_by`
    ``tool``), replacing the entries is what a rerun means and passes silently, as in scanpy. The message names
    the panfoma tool that wrote them when another one did, else ``owner`` (``"no panfoma tool"``, ``"no earlier
    pf.tl.annotate call"``); ``name`` names the object (``"mdata"``).
    """
    record = data.uns.get(uns_key)
    params = record.get("params") if isinstance(record, Mapping) else None
    if isinstance(params, Mapping):
        if is_rerun(params) if is_rerun is not None else written_by(params, tool):
            return
        if written_by_panfoma(params) and isinstance(params.get("tool"), str):
            owner = f"an earlier {params['tool']} call"
    taken = [f"obsm[{key!r}]" for key in obsm_keys if key in data.obsm]
    taken += [f"obs[{key!r}]" for key in obs_keys if key in data.obs.columns]
    taken += [f"uns[{uns_key!r}]"] if uns_key in data.uns else []
    if taken:
        logger.warning(
            "%s replaces %s, which %s wrote. Pass key_added='<another name>' to keep %s.",
            tool,
            " and ".join(f"{name}.{where}" for where in taken),
            owner,
            "them" if len(taken) > 1 else "it",
        )
