"""Tokens of non-RNA features (proteins, chromatin components) next to a cell's gene tokens (numpy only).

A feature's value token is its quantile bin across the cells where it was measured: bin 1 for the lowest
values up to ``n_bins - 1`` for the highest. Binning per feature (not per cell, as for genes) keeps what a
protein level means: a CD4 count is high or low relative to the other cells, not to the cell's other proteins.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from .tokenizer import TokenBatch

__all__ = ["append_feature_tokens", "feature_bins"]


def feature_bins(values: np.ndarray, measured: np.ndarray | None = None, *, n_bins: int = 51) -> np.ndarray:
    """Per-feature quantile bins ``1..n_bins-1`` of ``(cells, features)`` values; 0 where not measured.

    Parameters
    ----------
    values
        ``(cells, features)`` normalized values (e.g. CLR protein levels or LSI coordinates).
    measured
        ``(cells, features)`` bool, False where a feature was not measured for a cell; default all True.
    n_bins
        Bins including bin 0.

    Returns
    -------
    ``(cells, features)`` int64 bins; ties share a bin.
    """
    values = np.asarray(values, dtype=np.float64)
    measured = np.ones(values.shape, dtype=bool) if measured is None else np.asarray(measured, dtype=bool)
    bins = np.zeros(values.shape, dtype=np.int64)
    for j in range(values.shape[1]):
        rows = np.flatnonzero(measured[:, j])
        if rows.size == 0:
            continue
        below = rankdata(values[rows, j], method="min") - 1  # cells with a strictly smaller value
        bins[rows, j] = 1 + (below * (n_bins - 1)) // rows.size
    return bins


def append_feature_tokens(
    tokens: TokenBatch, feature_ids: np.ndarray, bins: np.ndarray, *, pad_id: int = 0
) -> TokenBatch:
    """Add feature tokens to chunked gene tokens and deal them all into the same number of chunks again.

    Parameters
    ----------
    tokens
        Gene tokens ``(cells, n_chunks, chunk_length)``.
    feature_ids
        ``(features,)`` token id of each feature (ids after the gene vocabulary).
    bins
        ``(cells, features)`` feature bins; 0 marks a feature not measured in that cell (left out as padding).
    pad_id
        Id of the padding token.

    Returns
    -------
    Tokens ``(cells, n_chunks, new_chunk_length)``: every cell's genes then features, dealt round-robin so each
    chunk (the local encoder's attention window) holds genes and features.
    """
    n_cells, n_chunks, length = tokens.gene_ids.shape

    def flat(a: np.ndarray) -> np.ndarray:  # undo the round-robin deal: token j sits at (j % C, j // C)
        return a.transpose(0, 2, 1).reshape(n_cells, n_chunks * length)

    bins = np.asarray(bins, dtype=np.int64)
    ids = np.concatenate([flat(tokens.gene_ids), np.broadcast_to(np.asarray(feature_ids), bins.shape)], axis=1)
    values = np.concatenate([flat(tokens.value_bins), bins], axis=1)
    padding = np.concatenate([flat(tokens.padding_mask), bins == 0], axis=1)
    order = np.argsort(padding, axis=1, kind="stable")  # real tokens first, in their order
    n_valid = int((~padding).sum(1).max()) if padding.size else 0
    chunk_length = max(-(-n_valid // n_chunks), 1)
    total = chunk_length * n_chunks
    keep = order[:, :total] if order.shape[1] >= total else order
    ids, values, padding = (np.take_along_axis(a, keep, 1) for a in (ids, values, padding))
    if ids.shape[1] < total:  # fewer tokens than chunk slots: pad
        extra = total - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, extra)), constant_values=pad_id)
        values = np.pad(values, ((0, 0), (0, extra)))
        padding = np.pad(padding, ((0, 0), (0, extra)), constant_values=True)
    ids = np.where(padding, pad_id, ids)
    values = np.where(padding, 0, values)

    def deal(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a.reshape(n_cells, chunk_length, n_chunks).transpose(0, 2, 1))

    return TokenBatch(gene_ids=deal(ids), value_bins=deal(values), padding_mask=deal(padding))
