"""Read AnnData rows in bounded blocks, from memory or from a backed file."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from anndata import AnnData
from scipy import sparse

__all__ = ["expression_matrix", "iter_row_blocks"]


def expression_matrix(adata: AnnData, layer: str | None = None):
    """The matrix holding expression: ``adata.X`` or ``adata.layers[layer]`` (may be a backed dataset)."""
    if layer is None:
        if adata.X is None:
            msg = "adata.X is empty. Pass the layer holding expression, e.g. layer='counts'."
            raise ValueError(msg)
        return adata.X
    if layer not in adata.layers:
        msg = f"Layer {layer!r} not found in adata.layers (available: {sorted(adata.layers)})."
        raise KeyError(msg)
    return adata.layers[layer]


def iter_row_blocks(
    matrix, block_size: int, columns: np.ndarray | None = None, rows: np.ndarray | None = None
) -> Iterator[tuple[np.ndarray, sparse.csr_matrix]]:
    """Yield ``(row_indices, csr_block)`` over the rows of ``matrix``, ``block_size`` rows at a time.

    Works for numpy arrays, scipy sparse matrices (CSR, CSC, COO) and anndata's backed datasets; only one
    block is in memory at a time.

    Parameters
    ----------
    matrix
        ``(cells, genes)`` matrix-like.
    block_size
        Rows per block.
    columns
        Keep only these columns (in this order).
    rows
        Visit only these rows (sorted ascending), default all.
    """
    n_rows = matrix.shape[0]
    if sparse.issparse(matrix) and not sparse.isspmatrix_csr(matrix) and not isinstance(matrix, sparse.csr_array):
        matrix = sparse.csr_matrix(matrix)  # CSC/COO: one conversion, row slicing is then cheap
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
        if getattr(block, "dtype", None) == np.float16:
            block = block.astype(np.float32)  # scipy.sparse has no float16
        block = sparse.csr_matrix(block)
        if not block.has_canonical_format:  # a gene stored twice in a row counts once, summed, as in scipy
            block = block.copy()
            block.sum_duplicates()
        if columns is not None:
            block = block[:, columns]
        yield selected, block
