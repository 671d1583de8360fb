"""Turn expression rows into PanFoMa token batches (numpy only, vectorized over CSR rows).

Per cell: values are binned by their rank among the cell's nonzero values (bin 0 = zero, bins
``1..n_bins-1`` = quantiles), ``n_genes`` genes are picked (nonzero genes first, a random subset if there
are more; random zero genes fill up), shuffled, and dealt into ``n_chunks`` chunks.

Randomness comes from a counter-based hash of ``(seed, cell key, gene id)`` rather than a stateful
generator, so a cell's tokens do not depend on the other cells in its batch, on the batch size, or on the
order of the genes in the input. With ``selection="random"`` the cell key is the caller's (a hash of the cell's
name); with ``selection="top"``, a deterministic rule meant for inference, it is a hash of the cell's expressed
genes and their bins, so that renaming cells leaves their tokens, and embeddings, unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

__all__ = [
    "TokenBatch",
    "Tokenizer",
    "bin_by_rank",
    "cell_keys_from_content",
    "cell_keys_from_names",
    "dense_bins",
    "hash_uniform",
    "sample_expression_targets",
]

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

#: cells x genes entries of one dense gene choice (each of its few arrays: 8 bytes per entry, so about 32 MB)
DENSE_CHOICE_ELEMENTS = 1 << 22


def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: a bijective mix of uint64 values (wraps modulo 2**64 by design)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


def hash_uniform(seed: int, cell_keys: np.ndarray, gene_ids: np.ndarray) -> np.ndarray:
    """Pseudo-random numbers in ``[0, 1)`` of shape ``(cells, genes)``, a pure function of the three inputs."""
    with np.errstate(over="ignore"):
        seed_part = _splitmix(np.asarray([seed], dtype=np.uint64) * _GOLDEN)
        cells = _splitmix(cell_keys.astype(np.uint64) ^ seed_part)  # (B,)
        genes = _splitmix(gene_ids.astype(np.uint64) * _GOLDEN + seed_part)  # (G,)
        mixed = _splitmix(cells[:, None] ^ genes[None, :])  # (B, G)
    return (mixed >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _hash_entries(seed: int, cell_keys: np.ndarray, gene_ids: np.ndarray) -> np.ndarray:
    """:func:`hash_uniform` at given ``(cell, gene)`` pairs only (equal 1-D arrays): the same numbers, no matrix."""
    with np.errstate(over="ignore"):
        seed_part = _splitmix(np.asarray([seed], dtype=np.uint64) * _GOLDEN)
        cells = _splitmix(cell_keys.astype(np.uint64) ^ seed_part)
        genes = _splitmix(gene_ids.astype(np.uint64) * _GOLDEN + seed_part)
        mixed = _splitmix(cells ^ genes)
    return (mixed >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def cell_keys_from_names(names: Sequence[str] | pd.Index) -> np.ndarray:
    """Stable 64-bit key per cell name (pandas' deterministic hash), the identity used for gene sampling."""
    return pd.util.hash_array(np.asarray(names, dtype=object)).astype(np.uint64)


def cell_keys_from_content(matrix: sparse.csr_matrix, gene_ids: np.ndarray, n_bins: int) -> np.ndarray:
    """64-bit key per row from its expressed genes and their rank bins alone (see :func:`bin_by_rank`).

    Equal rows get equal keys whatever the cells are called, the order of the columns, or a per-cell monotone
    transform of the values (raw counts and log1p give the same key).

    Parameters
    ----------
    matrix
        CSR matrix without explicit zeros.
    gene_ids
        Vocabulary id of each column.
    n_bins
        Number of bins including bin 0.

    Returns
    -------
    ``uint64`` keys, one per row.
    """
    return _content_keys(matrix.indptr, np.asarray(gene_ids)[matrix.indices], bin_by_rank(matrix, n_bins), n_bins)


def _content_keys(indptr: np.ndarray, genes: np.ndarray, bins: np.ndarray, n_bins: int) -> np.ndarray:
    """:func:`cell_keys_from_content` from CSR row pointers and each entry's vocabulary id and bin."""
    with np.errstate(over="ignore"):
        entries = _splitmix(genes.astype(np.uint64) * np.uint64(n_bins) + bins.astype(np.uint64))  # per (gene, bin)
        # a sum per row (modulo 2**64) does not depend on the order of the row's entries
        totals = np.concatenate([np.zeros(1, dtype=np.uint64), np.cumsum(entries, dtype=np.uint64)])
        return _splitmix(totals[indptr[1:]] - totals[indptr[:-1]])


def bin_by_rank(matrix: sparse.csr_matrix, n_bins: int) -> np.ndarray:
    """Bin each stored (nonzero) value by its rank among its row's nonzero values.

    ``bin = 1 + floor(n_smaller * (n_bins - 1) / n_nonzero)`` where ``n_smaller`` counts the row's values
    strictly below it, so ties share a bin and any per-cell monotone transform (library-size normalization,
    ``log1p``) gives identical bins: raw counts and log-normalized data tokenize the same.

    Parameters
    ----------
    matrix
        CSR matrix without explicit zeros.
    n_bins
        Number of bins including bin 0.

    Returns
    -------
    ``int64`` bins aligned with ``matrix.data``.
    """
    indptr = matrix.indptr
    nnz_per_row = np.diff(indptr)
    rows = np.repeat(np.arange(matrix.shape[0]), nnz_per_row)
    order = np.lexsort((matrix.data, rows))
    sorted_values = matrix.data[order]
    sorted_rows = rows[order]
    positions = np.arange(order.size)
    new_group = np.ones(order.size, dtype=bool)
    new_group[1:] = (sorted_rows[1:] != sorted_rows[:-1]) | (sorted_values[1:] != sorted_values[:-1])
    group_start = np.maximum.accumulate(np.where(new_group, positions, 0))
    n_smaller = group_start - indptr[sorted_rows]
    sorted_bins = 1 + (n_smaller * (n_bins - 1)) // nnz_per_row[sorted_rows]
    bins = np.empty(order.size, dtype=np.int64)
    bins[order] = sorted_bins
    return bins


def _clean_csr(matrix: sparse.spmatrix | np.ndarray) -> sparse.csr_matrix:
    """float64 CSR copy without explicit zeros, a gene stored twice in a row summed once, indices sorted."""
    csr = sparse.csr_matrix(matrix, dtype=np.float64, copy=True)
    csr.sum_duplicates()
    csr.eliminate_zeros()
    csr.sort_indices()
    return csr


def _scatter_bins(csr: sparse.csr_matrix, n_bins: int) -> np.ndarray:
    bins = np.zeros(csr.shape, dtype=np.int64)
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    bins[rows, csr.indices] = bin_by_rank(csr, n_bins)
    return bins


def dense_bins(matrix: sparse.spmatrix | np.ndarray, n_bins: int) -> np.ndarray:
    """``(cells, genes)`` int64 bins of a batch of rows (see :func:`bin_by_rank`); 0 where not expressed."""
    return _scatter_bins(_clean_csr(matrix), n_bins)


def sample_expression_targets(
    matrix: sparse.spmatrix | np.ndarray,
    gene_ids: np.ndarray,
    cell_keys: np.ndarray,
    *,
    n_genes: int,
    n_bins: int,
    seed: int,
    nonzero_share: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Genes whose bins the cell embedding must predict (the MVC objective), half expressed and half not.

    Zero genes are what tell cell types apart most (a marker is there or it is not), and the model's input,
    nonzero genes first, rarely shows them; asking the cell embedding for them makes it carry that profile.

    Parameters
    ----------
    matrix
        ``(cells, genes)`` expression, columns = ``gene_ids``.
    gene_ids
        Vocabulary id of each column.
    cell_keys
        Per-cell keys (see :func:`cell_keys_from_names`).
    n_genes
        Genes per cell (at most the number of columns).
    n_bins
        Expression bins including 0.
    seed
        Sampling seed.
    nonzero_share
        Share of expressed genes, when the cell has enough of both kinds.

    Returns
    -------
    ``(cells, n)`` vocabulary ids and their bins.
    """
    bins = dense_bins(matrix, n_bins)
    n_cells, n_columns = bins.shape
    n_take = min(n_genes, n_columns)
    expressed = bins > 0
    n_expressed = expressed.sum(1, keepdims=True)
    take_expressed = np.minimum(
        n_expressed, np.maximum(round(n_take * nonzero_share), n_take - (n_columns - n_expressed))
    )
    uniform = hash_uniform(seed, np.asarray(cell_keys), np.asarray(gene_ids))
    # rank of each gene by its random key within its own kind (expressed / not expressed)
    order = np.argsort(uniform + 2.0 * ~expressed, axis=1)  # expressed genes first, each kind in key order
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(n_columns)[None, :].repeat(n_cells, 0), axis=1)
    rank = np.where(expressed, rank, rank - n_expressed)
    keep = np.where(expressed, rank < take_expressed, rank < n_take - take_expressed)
    chosen = np.argsort(~keep, axis=1, kind="stable")[:, :n_take]
    return np.asarray(gene_ids)[chosen], np.take_along_axis(bins, chosen, 1)


@dataclass
class TokenBatch:
    """Tokens of a batch of cells, chunked: arrays of shape ``(cells, n_chunks, chunk_length)``."""

    gene_ids: np.ndarray  # int64 vocabulary ids, pad_id at padding
    value_bins: np.ndarray  # int64 bins, 0 at padding
    padding_mask: np.ndarray  # bool, True at padding

    def __len__(self) -> int:
        return self.gene_ids.shape[0]


@dataclass(frozen=True)
class Tokenizer:
    """Tokenize expression rows for a model.

    Parameters
    ----------
    n_genes
        Genes per cell. Cells are padded when the data hold fewer genes.
    n_chunks
        Chunks of the local encoder.
    n_bins
        Expression bins including bin 0.
    pad_id
        Vocabulary id of the padding token.
    selection
        Which expressed genes to keep when a cell has more than ``n_genes``: ``"random"`` (a seeded random
        subset; training re-draws it) or ``"top"`` (the highest bins first, ties broken by the seeded hash). With
        ``"top"`` the hash is keyed by the cell's content (:func:`cell_keys_from_content`), not by ``cell_keys``.
    value_encoding
        ``"rank"``: the value token is the gene's rank bin in the cell; ``"presence"``: every expressed gene gets
        bin 1 (genes are still chosen by rank), which hides sequencing depth from the model.
    """

    n_genes: int
    n_chunks: int
    n_bins: int = 51
    pad_id: int = 0
    selection: str = "random"
    value_encoding: str = "rank"

    def __call__(
        self, matrix: sparse.spmatrix | np.ndarray, gene_ids: np.ndarray, cell_keys: np.ndarray, *, seed: int = 0
    ) -> TokenBatch:
        """Tokenize cells.

        Parameters
        ----------
        matrix
            ``(cells, genes)`` nonnegative expression (raw counts or log-normalized), columns = ``gene_ids``.
        gene_ids
            Vocabulary id of each column (unique, no ``-1``).
        cell_keys
            ``uint64`` identity of each cell (see :func:`cell_keys_from_names`); used by ``selection="random"``
            only.
        seed
            Sampling seed; training passes a new one per epoch to re-draw the genes.
        """
        if self.value_encoding not in ("rank", "presence"):
            msg = f"value_encoding must be 'rank' or 'presence', got {self.value_encoding!r}."
            raise ValueError(msg)
        if self.selection not in ("random", "top"):
            msg = f"selection must be 'random' or 'top', got {self.selection!r}."
            raise ValueError(msg)
        csr = _clean_csr(matrix)
        gene_ids, cell_keys = np.asarray(gene_ids), np.asarray(cell_keys)
        # the values matter only through their bins, which are per row: bin once, then any row subset keeps them
        bins = bin_by_rank(csr, self.n_bins)
        if self.selection == "top":
            # ties and token order follow the cell's content, not its name: renaming cells (obs_names_make_unique,
            # a prefix added by concatenation) must not move a deterministic embedding
            cell_keys = _content_keys(csr.indptr, gene_ids[csr.indices], bins, self.n_bins)
        binned = sparse.csr_matrix((bins, csr.indices, csr.indptr), shape=csr.shape)  # each value -> its bin
        n_cells, n_columns = csr.shape
        n_take = min(self.n_genes, n_columns)
        chosen = np.empty((n_cells, n_take), dtype=np.int64)  # column indices, in token order
        chosen_bins = np.empty((n_cells, n_take), dtype=np.int64)
        # Cells with at least n_take expressed genes only ever keep expressed genes: choose them from the CSR
        # entries. The others also need their zero genes' random keys: choose densely, for those rows only.
        full = np.diff(csr.indptr) >= n_take
        if full.any():
            rows = np.flatnonzero(full)
            chosen[rows], chosen_bins[rows] = self._choose_sparse(binned[rows], gene_ids, cell_keys[rows], n_take, seed)
        if not full.all():
            sparse_rows = np.flatnonzero(~full)
            # a few rows at a time: the dense choice holds several (rows, genes) arrays, which for a large batch of
            # whole transcriptomes would take gigabytes (each cell's choice depends on that cell alone)
            step = max(DENSE_CHOICE_ELEMENTS // max(n_columns, 1), 1)
            for start in range(0, sparse_rows.size, step):
                rows = sparse_rows[start : start + step]
                chosen[rows], chosen_bins[rows] = self._choose_dense(
                    binned[rows], gene_ids, cell_keys[rows], n_take, seed
                )

        chunk_length = -(-n_take // self.n_chunks)
        total = chunk_length * self.n_chunks
        token_ids = np.full((n_cells, total), self.pad_id, dtype=np.int64)
        token_bins = np.zeros((n_cells, total), dtype=np.int64)
        padding = np.ones((n_cells, total), dtype=bool)
        token_ids[:, :n_take] = gene_ids[chosen]
        token_bins[:, :n_take] = chosen_bins
        if self.value_encoding == "presence":
            token_bins = (token_bins > 0).astype(np.int64)
        padding[:, :n_take] = False

        # token j goes to chunk j % n_chunks at position j // n_chunks: chunks stay evenly filled
        def deal(a: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(a.reshape(n_cells, chunk_length, self.n_chunks).transpose(0, 2, 1))

        return TokenBatch(gene_ids=deal(token_ids), value_bins=deal(token_bins), padding_mask=deal(padding))

    def _priority(self, uniform: np.ndarray, bins: np.ndarray) -> np.ndarray:
        """Lower is chosen first: expressed genes (``[-1, 0)`` or ``<= -0.5``) always before zero genes."""
        if self.selection == "top":
            return 0.5 * uniform - bins  # highest bin first; zero genes in [0, 0.5) after every nonzero one
        return uniform - (bins > 0)  # nonzero genes in [-1, 0), zero genes in [0, 1)

    def _choose_dense(
        self, binned: sparse.csr_matrix, gene_ids: np.ndarray, cell_keys: np.ndarray, n_take: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``n_take`` lowest-priority columns of every row, ordered by their random key; and their bins.

        ``binned`` holds the rows' bins (see :func:`bin_by_rank`) as its values.
        """
        bins = binned.toarray()  # (B, G): dense for these rows only
        n_cells, n_columns = bins.shape
        uniform = hash_uniform(seed, cell_keys, gene_ids)  # (B, G)
        if n_take < n_columns:
            chosen = np.argpartition(self._priority(uniform, bins), n_take - 1, axis=1)[:, :n_take]
        else:
            chosen = np.broadcast_to(np.arange(n_columns), (n_cells, n_columns))
        # shuffle the chosen genes so every chunk gets a mix of expressed and zero genes
        chosen = np.take_along_axis(chosen, np.argsort(np.take_along_axis(uniform, chosen, 1), axis=1), 1)
        return chosen, np.take_along_axis(bins, chosen, 1)

    def _choose_sparse(
        self, binned: sparse.csr_matrix, gene_ids: np.ndarray, cell_keys: np.ndarray, n_take: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_choose_dense` for rows with at least ``n_take`` stored values, on the CSR entries alone."""
        n_cells = binned.shape[0]
        rows = np.repeat(np.arange(n_cells), np.diff(binned.indptr))
        uniform = _hash_entries(seed, cell_keys[rows], gene_ids[binned.indices])  # (nnz,), as hash_uniform there
        bins = binned.data
        by_priority = np.lexsort((self._priority(uniform, bins), rows))
        kept = by_priority[(np.arange(rows.size) - binned.indptr[rows[by_priority]]) < n_take]  # n_take per row
        kept = kept[np.lexsort((uniform[kept], rows[kept]))]  # each row's chosen genes by random key
        return binned.indices[kept].reshape(n_cells, n_take).astype(np.int64), bins[kept].reshape(n_cells, n_take)
