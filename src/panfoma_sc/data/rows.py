"""Read AnnData rows in bounded blocks, from memory or from a backed file."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

__all__ = [
    "ColumnMajorBackedError",
    "GeneColumns",
    "check_row_readable",
    "csr_conversion",
    "expression_matrix",
    "is_backed_column_major",
    "iter_row_blocks",
    "raw_values",
    "row_major",
]


class ColumnMajorBackedError(ValueError):
    """A backed matrix stored by column (CSC), which cannot be read cell by cell without reading all of it."""


@dataclass(frozen=True)
class GeneColumns:
    """The columns of a matrix a model reads, where a gene may be stored in several (e.g. ``C2orf15``, ``C2ORF15``).

    A gene's value is the maximum over its columns: the same whatever the order of the columns, when an all-zero
    copy is dropped (``sc.pp.filter_genes``), and on raw counts as on their log1p (a monotone transform).

    Attributes
    ----------
    first
        One column per gene, ascending: the block's columns in this order.
    others
        Further columns holding a gene of ``first``.
    targets
        For each of ``others``, the position in ``first`` of the gene it holds.
    """

    first: np.ndarray
    others: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    targets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def as_stored(self) -> tuple[np.ndarray, GeneColumns]:
        """Every column holding a gene (ascending), and the merge of a block read on those columns alone."""
        stored = np.union1d(self.first, self.others)
        position = functools.partial(np.searchsorted, stored)
        return stored, GeneColumns(position(self.first), position(self.others), self.targets)

    @functools.cached_property
    def _merge_plan(self) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
        """Worked out once per reader: the merged genes, the copies of each round with their slots, the rest."""
        merged = np.unique(self.targets)  # positions in ``first`` of the genes stored more than once
        slots = np.searchsorted(merged, self.targets)
        # the k-th further copy of each gene in round k: within a round every gene appears once, so the product
        # with the 0/1 placement matrix moves values without adding two copies together
        rounds = pd.Series(slots).groupby(slots).cumcount().to_numpy()
        copies = [(self.others[rounds == k], slots[rounds == k]) for k in range(int(rounds.max(initial=-1)) + 1)]
        return merged, copies, np.setdiff1d(np.arange(self.first.size), merged)

    def take(self, block: sparse.csr_matrix) -> sparse.csr_matrix:
        """``block`` (all columns, CSR) restricted to the genes, in the order of ``first``."""
        taken = block[:, self.first]
        if not self.others.size:
            return taken
        merged, copies, kept = self._merge_plan
        values = taken[:, merged]
        for columns, slots in copies:
            values = values.maximum(sparse.csr_matrix(block[:, columns] @ _placement(slots, merged.size, block.dtype)))
        # the other genes' columns as they are (negative or NaN values included), the merged ones beside them
        result = taken[:, kept] @ _placement(kept, self.first.size, block.dtype)
        result = sparse.csr_matrix(result + values @ _placement(merged, self.first.size, block.dtype))
        result.sort_indices()
        return result


def _placement(positions: np.ndarray, width: int, dtype: np.dtype) -> sparse.csr_matrix:
    """0/1 matrix that moves column ``i`` of a block to column ``positions[i]`` of a block ``width`` wide."""
    return sparse.csr_matrix(
        (np.ones(positions.size, dtype=dtype), (np.arange(positions.size), positions)), shape=(positions.size, width)
    )


def expression_matrix(adata: AnnData, layer: str | None = None):
    """The matrix holding expression: ``adata.X`` or ``adata.layers[layer]`` (may be a backed dataset).

    Raises
    ------
    ValueError
        ``X`` is empty (or absent from a backed file) and no layer is named, or ``X`` is a backed CSC matrix
        (:func:`check_row_readable`).
    KeyError
        ``layer`` is not in ``adata.layers``.
    """
    if layer is None:
        matrix = _backed_x(adata) if adata.isbacked else adata.X
        if matrix is None:
            layers = f" (available: {sorted(adata.layers)})" if len(adata.layers) else ""
            raw = " or use_raw=True (adata.raw)" if adata.raw is not None else ""
            msg = f"adata.X is empty. Pass the layer holding expression, e.g. layer='counts'{layers}{raw}."
            raise ValueError(msg)
        check_row_readable(matrix, "adata.X")
        return matrix
    if layer not in adata.layers:
        fix = (
            f"pass one of {sorted(adata.layers)} as the layer, or layer=None to read adata.X"
            if len(adata.layers)
            else "adata has no layers: pass layer=None to read adata.X"
        )
        msg = f"Layer {layer!r} not found in adata.layers: {fix}."
        raise KeyError(msg)
    return adata.layers[layer]


def raw_values(adata: AnnData, *, layer: str | None = None, name: str = "adata") -> AnnData:
    """``adata``'s cells with the genes and values of ``adata.raw`` (``use_raw=True``); nothing is copied.

    A backed ``adata``'s ``.raw`` stays on disk: the result's ``X`` is the backed matrix, read in row blocks.

    Raises
    ------
    ValueError
        ``adata.raw`` is empty, or ``layer`` is given too (``.raw`` has no layers), or ``.raw``'s matrix is a
        backed CSC matrix (:func:`check_row_readable`).
    """
    if layer is not None:
        msg = f"use_raw=True reads {name}.raw.X, which has no layers: pass layer={layer!r} or use_raw=True, not both."
        raise ValueError(msg)
    if adata.raw is None:
        msg = (
            f"use_raw=True, but {name}.raw is empty: pass use_raw=False to read {name}.X, or layer='counts' "
            "(the layer holding raw counts)."
        )
        raise ValueError(msg)
    raw = adata.raw
    check_row_readable(raw.X, f"{name}.raw.X")
    return AnnData(X=raw.X, obs=pd.DataFrame(index=adata.obs_names), var=raw.var)


def _backed_x(adata: AnnData):
    """``adata.X`` of a backed AnnData, or None where the file has none (anndata raises h5py's ``KeyError`` then)."""
    try:
        return adata.X
    except KeyError:
        return None


def check_row_readable(matrix, where: str, *, file_only: bool = False) -> None:
    """Refuse a backed CSC matrix: each block of rows would read the whole file (memory and time grow with it).

    In-memory CSC is fine (:func:`row_major` converts it once); on disk, cells must be stored row by row (CSR).
    ``file_only``: the reader opens the file itself, so loading it into memory is no fix to offer.
    """
    if is_backed_column_major(matrix):
        csr = f"it as CSR once: adata = anndata.read_h5ad(path); {csr_conversion(where)}; adata.write_h5ad(...)"
        lazy = is_dask_array(matrix)
        if lazy:
            load = "Compute it if it fits (e.g. adata.X = adata.X.compute()), or store"
        else:
            load = "Load it into memory if it fits (adata = adata.to_memory()), or store"
        fix = f"Store {csr}" if file_only else f"{load} {csr}"
        kind = "a lazy (dask) CSC" if lazy else "a backed CSC"
        msg = (
            f"{where} is {kind} (column-major) sparse matrix: reading it cell by cell would read the whole "
            f"file for every batch. {fix}."
        )
        raise ColumnMajorBackedError(msg)


def csr_conversion(where: str) -> str:
    """The statement that stores the matrix ``where`` (``"adata.X"``, ``"adata.raw.X"``, ...) as CSR, for messages."""
    if where.endswith(".raw.X"):  # .raw cannot be assigned to in place
        return "raw = adata.raw.to_adata(); raw.X = raw.X.tocsr(); adata.raw = raw"
    if where.startswith("adata.layers["):
        return f"{where} = {where}.tocsr()"
    return "adata.X = adata.X.tocsr()"  # X, also where ``where`` describes it in words ("X of training file ...")


def is_backed_column_major(matrix) -> bool:
    """Whether ``matrix`` is stored by column: a backed CSC dataset, or a dask array of CSC chunks.

    :func:`check_row_readable` refuses both.
    """
    if is_dask_array(matrix):  # anndata's lazy reader of a CSC file: one chunk of all rows
        meta = getattr(matrix, "_meta", None)
        return sparse.issparse(meta) and meta.format == "csc"
    return not sparse.issparse(matrix) and getattr(matrix, "format", None) == "csc"


def row_major(matrix):
    """``matrix`` with cheap row slicing: in-memory CSC/COO converted to CSR (a copy), anything else as it is.

    A CSR matrix whose ``indptr`` and ``indices`` have different integer types (anndata reads files written with
    64-bit ``indptr`` and 32-bit ``indices`` so) is rewrapped around the same data with one index type: scipy
    copies the whole ``indices`` array at every row slice of the mixed one, which made reading such a matrix
    block by block quadratic in its size.
    """
    if sparse.issparse(matrix) and matrix.format != "csr":
        return sparse.csr_matrix(matrix)
    if sparse.issparse(matrix) and matrix.indptr.dtype != matrix.indices.dtype:
        # the constructor picks one index type and converts only what differs (here: the small indptr)
        return sparse.csr_matrix((matrix.data, matrix.indices, matrix.indptr), shape=matrix.shape, copy=False)
    return matrix


def is_dask_array(matrix: object) -> bool:
    """Whether ``matrix`` is a dask array (anndata's lazy ``X``), without importing dask."""
    return type(matrix).__module__.startswith("dask.")


def iter_row_blocks(
    matrix, block_size: int, columns: np.ndarray | GeneColumns | None = None, rows: np.ndarray | None = None
) -> Iterator[tuple[np.ndarray, sparse.csr_matrix]]:
    """Yield ``(row_indices, csr_block)`` over the rows of ``matrix``, ``block_size`` rows at a time.

    Works for numpy arrays, scipy sparse matrices (CSR, CSC, COO), anndata's backed datasets and dask arrays
    (dense or scipy-sparse chunks); of a backed dataset or a dask array only one block is in memory at a time.
    A backed CSC matrix is refused (:func:`check_row_readable`).

    Parameters
    ----------
    matrix
        ``(cells, genes)`` matrix-like.
    block_size
        Rows per block.
    columns
        Keep only these columns (in this order); with :class:`GeneColumns`, genes stored in several columns take
        their maximum.
    rows
        Visit only these rows (sorted ascending), default all.
    """
    check_row_readable(matrix, "the expression matrix")
    n_rows = matrix.shape[0]
    matrix = row_major(matrix)  # CSC/COO: one conversion per call; callers reading often convert once themselves
    row_index = np.arange(n_rows) if rows is None else np.asarray(rows)
    for start in range(0, row_index.size, block_size):
        selected = row_index[start : start + block_size]
        if selected.size and selected[-1] - selected[0] + 1 == selected.size:
            block = matrix[int(selected[0]) : int(selected[-1]) + 1]
        elif selected.size > 1 and np.all(np.diff(selected) > 0):
            # a boolean mask makes anndata read a backed matrix run by run (integer rows: one row at a time)
            mask = np.zeros(n_rows, dtype=bool)
            mask[selected] = True
            block = matrix[mask]
        else:
            block = matrix[selected]
        if is_dask_array(block):  # one block computed at a time; its chunks may be dense or scipy sparse
            block = block.compute()
        if getattr(block, "dtype", None) == np.float16:
            block = block.astype(np.float32)  # scipy.sparse has no float16
        block = sparse.csr_matrix(block)
        if not block.has_canonical_format:  # a gene stored twice in a row counts once, summed, as in scipy
            block = block.copy()
            block.sum_duplicates()
        if isinstance(columns, GeneColumns):
            block = columns.take(block)
        elif columns is not None:
            block = block[:, columns]
        yield selected, block
