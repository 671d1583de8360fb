"""Cells of a training file kept out of pretraining, named by the values of an ``obs`` column."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

__all__ = ["ExcludedCells", "check_excluded_cells", "training_rows"]

#: file name without ``.h5ad`` -> ``{obs column: values}``: the cells with one of the values are not training cells
ExcludedCells = Mapping[str, Mapping[str, Sequence[str]]]


def check_excluded_cells(exclude_cells: ExcludedCells) -> dict[str, dict[str, list[str]]]:
    """``exclude_cells`` as plain dicts and lists, or a ``ValueError`` that shows the expected shape.

    Parameters
    ----------
    exclude_cells
        ``{file name without .h5ad: {obs column: [values]}}``.

    Returns
    -------
    The same held-out cells as ``dict[str, dict[str, list[str]]]`` (JSON-able, as ``run.json`` stores it).
    """
    example = "{'lung_celllines': {'batch': ['Drop-seq']}}"
    if not isinstance(exclude_cells, Mapping):
        msg = f"exclude_cells must map file names to {{obs column: [values]}}, e.g. {example}; got {exclude_cells!r}."
        raise ValueError(msg)
    checked: dict[str, dict[str, list[str]]] = {}
    for stem, columns in exclude_cells.items():
        if not isinstance(stem, str) or not isinstance(columns, Mapping) or not columns:
            msg = (
                f"exclude_cells[{stem!r}] = {columns!r}: give each file name (without .h5ad) a non-empty "
                f"{{obs column: [values]}}, e.g. {example}."
            )
            raise ValueError(msg)
        checked[stem] = {}
        for column, values in columns.items():
            if isinstance(values, str) or not isinstance(values, Sequence) or not values:
                msg = (
                    f"exclude_cells[{stem!r}][{column!r}] = {values!r}: give a non-empty list of values, "
                    f"e.g. {example}."
                )
                raise ValueError(msg)
            checked[stem][str(column)] = [str(v) for v in values]
    return checked


def training_rows(adata: ad.AnnData, excluded: Mapping[str, Sequence[str]] | None, *, file: str | Path) -> np.ndarray:
    """Sorted rows of ``adata`` that are training cells: all but those ``excluded`` names.

    Parameters
    ----------
    adata
        A training file (backed or in memory).
    excluded
        ``{obs column: values}``: a cell whose value in one of the columns is among that column's values is not a
        training cell. ``None``: every cell is.
    file
        The file, for messages.

    Raises
    ------
    ValueError
        A column is not in ``adata.obs``, a value occurs in no cell (a misspelling would otherwise keep the cells
        in), or no training cell is left; the message names the file and the fix.
    """
    if not excluded:
        return np.arange(adata.n_obs)
    held_out = np.zeros(adata.n_obs, dtype=bool)
    for column, values in excluded.items():
        if column not in adata.obs:
            msg = (
                f"{Path(file).name}: cells to keep out of pretraining are named by obs[{column!r}], which the file "
                f"lacks; its obs columns are {list(adata.obs.columns)}. Name a column of the file."
            )
            raise ValueError(msg)
        labels = pd.Series(adata.obs[column]).astype(str)
        missing = sorted(set(values) - set(labels))
        if missing:
            msg = (
                f"{Path(file).name}: no cell has obs[{column!r}] in {missing}, so nothing would be kept out for "
                f"them; the column's values are {sorted(labels.unique())[:20]}. Check the spelling."
            )
            raise ValueError(msg)
        held_out |= labels.isin(values).to_numpy()
    if held_out.all():
        msg = f"{Path(file).name}: every cell is kept out of pretraining by {dict(excluded)}; leave the file out."
        raise ValueError(msg)
    return np.flatnonzero(~held_out)
