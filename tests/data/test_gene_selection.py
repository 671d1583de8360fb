from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from panfoma_sc.data import Tokenizer
from panfoma_sc.data.tokenizer import cell_keys_from_content, cell_keys_from_names


def _cells():
    dense = np.zeros((2, 30))
    dense[0, :20] = np.arange(1, 21)  # 20 expressed genes with distinct values
    dense[1, 5:8] = [3, 1, 2]  # 3 expressed genes
    return sparse.csr_matrix(dense)


def test_top_selection_keeps_the_highest_expressed_genes():
    tokens = Tokenizer(n_genes=8, n_chunks=4, selection="top")(
        _cells(), np.arange(10, 40), np.arange(2, dtype=np.uint64)
    )
    kept = set(tokens.gene_ids[0].ravel().tolist())
    assert kept == set(range(10 + 12, 10 + 20))  # the 8 largest values
    second = tokens.gene_ids[1].ravel()
    assert {15, 16, 17} <= set(second.tolist())  # every expressed gene, then zero genes
    assert (tokens.value_bins[1] > 0).sum() == 3


def test_top_selection_does_not_depend_on_the_seed_when_values_are_distinct():
    tok = Tokenizer(n_genes=8, n_chunks=4, selection="top")
    a = tok(_cells(), np.arange(10, 40), np.arange(2, dtype=np.uint64), seed=0)
    b = tok(_cells(), np.arange(10, 40), np.arange(2, dtype=np.uint64), seed=5)
    assert set(a.gene_ids[0].ravel()) == set(b.gene_ids[0].ravel())


def test_unknown_selection_is_refused():
    with pytest.raises(ValueError, match="selection"):
        Tokenizer(n_genes=8, n_chunks=4, selection="best")(_cells(), np.arange(10, 40), np.arange(2, dtype=np.uint64))


def test_presence_encoding_marks_every_expressed_gene_bin_1():
    rank = Tokenizer(n_genes=8, n_chunks=4, selection="top")(_cells(), np.arange(10, 40), np.arange(2, dtype=np.uint64))
    presence = Tokenizer(n_genes=8, n_chunks=4, selection="top", value_encoding="presence")(
        _cells(), np.arange(10, 40), np.arange(2, dtype=np.uint64)
    )
    np.testing.assert_array_equal(presence.gene_ids, rank.gene_ids)
    np.testing.assert_array_equal(presence.value_bins, (rank.value_bins > 0).astype(np.int64))
    with pytest.raises(ValueError, match="value_encoding"):
        Tokenizer(n_genes=8, n_chunks=4, value_encoding="log")(
            _cells(), np.arange(10, 40), np.arange(2, dtype=np.uint64)
        )


def _tied_counts(n_cells: int, n_genes: int, seed: int) -> np.ndarray:
    """Small counts, as in real data: many genes of a cell share a value (and so a rank bin)."""
    rng = np.random.default_rng(seed)
    return (rng.poisson(0.8, size=(n_cells, n_genes)) * (rng.random((n_cells, n_genes)) < 0.5)).astype(np.float64)


def _assert_same_tokens(a, b) -> None:
    for name in ("gene_ids", "value_bins", "padding_mask"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_top_selection_does_not_depend_on_the_cell_names():
    counts = _tied_counts(12, 200, seed=1)
    expressed = (counts > 0).sum(1)
    assert (expressed > 16).all()  # n_genes=16: chosen from the sparse entries
    assert (expressed < 128).all()  # n_genes=128: chosen densely, zero genes fill up
    gene_ids = np.arange(200) * 3 + 5
    names = [f"cell{i}" for i in range(12)]
    renamed = [f"batch1-{name}" for name in names]  # e.g. a prefix added by concatenation
    for n_genes in (16, 128):
        tokenizer = Tokenizer(n_genes=n_genes, n_chunks=4, selection="top")
        original = tokenizer(counts, gene_ids, cell_keys_from_names(names), seed=3)
        _assert_same_tokens(tokenizer(counts, gene_ids, cell_keys_from_names(renamed), seed=3), original)
        _assert_same_tokens(tokenizer(counts, gene_ids, np.zeros(12, dtype=np.uint64), seed=3), original)


def test_top_selection_breaks_ties_by_content_and_seed_only():
    cell = _tied_counts(1, 200, seed=2)
    counts = np.vstack([cell, cell, _tied_counts(1, 200, seed=3)])
    gene_ids = np.arange(200) * 3 + 5
    keys = cell_keys_from_names(["a", "b", "c"])
    tokenizer = Tokenizer(n_genes=16, n_chunks=4, selection="top")
    tokens = tokenizer(counts, gene_ids, keys, seed=0)
    _assert_same_tokens(tokenizer(counts, gene_ids, keys, seed=0), tokens)  # deterministic
    np.testing.assert_array_equal(tokens.gene_ids[0], tokens.gene_ids[1])  # same content, same tokens
    assert not np.array_equal(tokens.gene_ids[0], tokens.gene_ids[2])
    # 10 genes at 5 and 20 tied at 1: the 16 genes kept are the 10 and 6 of the 20, which the seed picks
    tied = np.zeros((1, 200))
    tied[0, :10], tied[0, 10:30] = 5, 1
    picks = {frozenset(tokenizer(tied, gene_ids, keys[:1], seed=seed).gene_ids.ravel().tolist()) for seed in range(5)}
    assert len(picks) > 1
    assert all(set(gene_ids[:10].tolist()) <= pick for pick in picks)
    # raw counts and log1p-normalized values of the same cell give the same tokens
    lognorm = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    _assert_same_tokens(tokenizer(lognorm, gene_ids, keys, seed=0), tokens)


def test_cell_keys_from_content_ignore_column_order_and_scaling():
    counts = sparse.csr_matrix(_tied_counts(5, 50, seed=4))
    gene_ids = np.arange(50) * 3 + 5
    keys = cell_keys_from_content(counts, gene_ids, 51)
    assert keys.dtype == np.uint64
    assert np.unique(keys).size == 5
    order = np.random.default_rng(5).permutation(50)
    np.testing.assert_array_equal(cell_keys_from_content(counts[:, order].tocsr(), gene_ids[order], 51), keys)
    np.testing.assert_array_equal(cell_keys_from_content(counts * 2.5, gene_ids, 51), keys)
