"""MuData plumbing of the tools: find modalities, align their cells with ``mdata.obs``, write results."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

logger = logging.getLogger(__name__)

__all__ = ["find_modality", "is_mudata", "modality_rows", "obs_column", "require_muon"]

#: modality names recognized when ``protein`` / ``atac`` are not given (muon's and 10x's usual names)
PROTEIN_NAMES = ("prot", "protein", "adt", "antibody capture")
ATAC_NAMES = ("atac", "peaks", "chromatin")


def is_mudata(data: Any) -> bool:
    """Whether ``data`` is a :class:`mudata.MuData` (without importing mudata when it is not installed)."""
    return any(cls.__module__.startswith("mudata") and cls.__name__ == "MuData" for cls in type(data).__mro__)


def require_muon():
    """Import muon, or say which extra installs it."""
    try:
        import muon
    except ImportError as error:
        msg = "This needs muon: pip install 'panfoma-sc[multiomics]' (installs mudata and muon)."
        raise ImportError(msg) from error
    return muon


#: what each ``role`` of :func:`find_modality` holds, for messages
ROLE_CONTENT = {"modality": "RNA", "protein": "protein (ADT)", "atac": "ATAC"}


def find_modality(mdata: MuData, name: str | None, *, role: str, candidates: tuple[str, ...] = ()) -> str | None:
    """The modality called ``name``, or (``name=None``) the first of ``candidates`` present, or ``None``.

    The error for an unknown ``name`` suggests the first of ``candidates`` present, if any.

    Raises
    ------
    KeyError
        ``name`` is given and is not a modality of ``mdata``.
    """
    available = list(mdata.mod)
    lowered = {m.lower(): m for m in available}
    usual = next((lowered[c] for c in candidates if c in lowered), None)
    if name is not None:
        if name not in mdata.mod:
            content = ROLE_CONTENT.get(role, role)
            example = f", e.g. {role}={usual!r}" if usual is not None else ""
            msg = (
                f"mdata has no modality {name!r} (its modalities: {available}). Pass {role}= the name of the "
                f"{content} modality{example}."
            )
            raise KeyError(msg)
        return name
    return usual


def modality_rows(mdata: MuData, names: list[str], *, require_all: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Align the modalities' cells with ``mdata.obs``.

    Parameters
    ----------
    mdata
        The MuData.
    names
        Modalities to align.
    require_all
        Every cell of ``mdata`` must be in every modality (else a clear error); otherwise cells missing from a
        modality are reported.

    Returns
    -------
    The positions in ``mdata.obs`` of the cells present in every modality, and for each modality the rows of its
    AnnData holding those cells (same order).
    """
    if not mdata.obs_names.is_unique:
        repeated = mdata.obs_names[mdata.obs_names.duplicated()].unique()[:5].tolist()
        msg = (
            f"mdata.obs_names are not unique (e.g. {repeated}). Make each modality's obs_names unique, giving a "
            "cell the same new name in every modality (e.g. prefix the sample: mod.obs_names = sample + '_' + "
            "mod.obs_names), then call mdata.update()."
        )
        raise ValueError(msg)
    present = np.ones(mdata.n_obs, dtype=bool)
    positions = {}
    for name in names:
        mod = mdata.mod[name]
        if not mod.obs_names.is_unique:
            msg = f"mdata.mod[{name!r}].obs_names are not unique. Make them unique, then call mdata.update()."
            raise ValueError(msg)
        index = mod.obs_names.get_indexer(mdata.obs_names)  # -1: cell not in this modality
        if (mdata.obs_names.get_indexer(mod.obs_names) < 0).any():
            msg = f"mdata.mod[{name!r}] has cells that mdata.obs does not list: call mdata.update() first."
            raise ValueError(msg)
        positions[name] = index
        present &= index >= 0
    shared = np.flatnonzero(present)
    if shared.size == 0:
        msg = (
            f"The modalities {names} share no cells (no obs name is in all of them). Check that they describe the "
            "same cells with the same barcodes (obs_names)."
        )
        raise ValueError(msg)
    if require_all and shared.size < mdata.n_obs:
        missing = {n: int((positions[n] < 0).sum()) for n in names if (positions[n] < 0).any()}
        msg = (
            f"{mdata.n_obs - shared.size} of {mdata.n_obs} cells are not in every modality (missing per modality: "
            f"{missing}). Keep the paired cells first: mu.pp.intersect_obs(mdata)."
        )
        raise ValueError(msg)
    return shared, {name: positions[name][shared] for name in names}


def obs_column(mdata: MuData, column: str, modality: str) -> tuple[Any, str]:
    """A column of ``mdata.obs``, else of ``mdata.mod[modality].obs`` aligned with ``mdata.obs``.

    Returns
    -------
    The values (a Series indexed like ``mdata.obs``) and where they were found.

    Raises
    ------
    KeyError
        In neither place.
    """
    if column in mdata.obs.columns:
        return mdata.obs[column], f"mdata.obs[{column!r}]"
    mod: AnnData = mdata.mod[modality]
    if column in mod.obs.columns:
        return mod.obs[column].reindex(mdata.obs_names), f"mdata.mod[{modality!r}].obs[{column!r}]"
    msg = (
        f"batch_key={column!r} is not a column of mdata.obs nor of mdata.mod[{modality!r}].obs "
        f"(mdata.obs columns: {list(mdata.obs.columns)})."
    )
    raise KeyError(msg)
