"""Rank binning and the tokenizer: gene choice, padding, determinism and invariances."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from panfoma_sc.data.tokenizer import TokenBatch, Tokenizer, bin_by_rank, cell_keys_from_names

PAD = 0


def _counts(n_cells: int, n_genes: int, *, density: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.poisson(3.0, size=(n_cells, n_genes)) + 1
    return (values * (rng.random((n_cells, n_genes)) < density)).astype(np.float64)


def _keys(n_cells: int) -> np.ndarray:
    return cell_keys_from_names([f"cell{i}" for i in range(n_cells)])


def _gene_ids(n_genes: int) -> np.ndarray:
    return np.arange(n_genes, dtype=np.int64) * 3 + 5  # vocabulary ids, not column numbers


def _tokens_per_chunk(batch: TokenBatch, cell: int) -> list[set[tuple[int, int]]]:
    real = ~batch.padding_mask[cell]
    return [
        set(zip(batch.gene_ids[cell, c][real[c]].tolist(), batch.value_bins[cell, c][real[c]].tolist(), strict=True))
        for c in range(batch.gene_ids.shape[1])
    ]


def _real_genes(batch: TokenBatch, cell: int) -> np.ndarray:
    return batch.gene_ids[cell][~batch.padding_mask[cell]]


# bin_by_rank


def test_bin_by_rank_hand_computed():
    # row 0: nonzeros 3, 1, 1, 5 -> values below each: 2, 0, 0, 3 of 4 -> 1 + floor(k * 4 / 4)
    # row 1: nonzeros 2, 2 -> ties, nothing below: both bin 1
    # row 2: empty; row 3: a single value -> bin 1
    dense = np.array(
        [
            [0, 3, 1, 1, 5],
            [2, 0, 0, 2, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 7, 0, 0],
        ],
        dtype=np.float64,
    )
    matrix = sparse.csr_matrix(dense)
    bins = bin_by_rank(matrix, n_bins=5)
    assert bins.dtype == np.int64
    np.testing.assert_array_equal(bins, [3, 1, 1, 4, 1, 1, 1])


def test_bin_by_rank_hand_computed_many_bins():
    # 3 values, 11 bins: 1 + floor(k * 10 / 3) for k = 0, 1, 2 -> 1, 4, 7
    matrix = sparse.csr_matrix(np.array([[0.5, 9.0, 2.0]]))
    np.testing.assert_array_equal(bin_by_rank(matrix, n_bins=11), [1, 7, 4])


@pytest.mark.parametrize("n_bins", [2, 5, 51])
def test_bin_by_rank_range_and_ties(n_bins: int):
    dense = _counts(30, 200, density=0.4, seed=0)
    matrix = sparse.csr_matrix(dense)
    bins = bin_by_rank(matrix, n_bins)
    assert bins.min() >= 1  # bin 0 is reserved for zeros
    assert bins.max() <= n_bins - 1
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    for row in range(matrix.shape[0]):
        values, row_bins = matrix.data[rows == row], bins[rows == row]
        for value in np.unique(values):
            assert np.unique(row_bins[values == value]).size == 1  # ties share a bin
        order = np.argsort(values, kind="stable")
        assert np.all(np.diff(row_bins[order]) >= 0)  # monotone in the value
    if n_bins == 51:
        assert bins.max() == n_bins - 1  # the top bin is used


def test_bin_by_rank_counts_and_log_normalized_agree():
    counts = _counts(25, 300, density=0.3, seed=1)
    log_norm = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    raw_bins = bin_by_rank(sparse.csr_matrix(counts), 51)
    norm_bins = bin_by_rank(sparse.csr_matrix(log_norm), 51)
    np.testing.assert_array_equal(raw_bins, norm_bins)


def test_bin_by_rank_unsorted_indices():
    matrix = sparse.csr_matrix(
        (np.array([5.0, 1.0, 3.0]), np.array([2, 0, 1]), np.array([0, 3])),
        shape=(1, 3),
    )
    assert not matrix.has_sorted_indices
    np.testing.assert_array_equal(bin_by_rank(matrix, 4), [3, 1, 2])


# Tokenizer


def test_nonzero_genes_come_first():
    n_genes = 40
    dense = np.zeros((6, n_genes))
    rng = np.random.default_rng(2)
    for cell in range(6):
        dense[cell, rng.choice(n_genes, 5, replace=False)] = rng.integers(1, 10, 5)
    gene_ids = _gene_ids(n_genes)
    batch = Tokenizer(n_genes=16, n_chunks=4)(dense, gene_ids, _keys(6))
    for cell in range(6):
        chosen = set(_real_genes(batch, cell).tolist())
        assert len(chosen) == 16
        assert set(gene_ids[dense[cell] > 0].tolist()) <= chosen
    # zero genes carry bin 0, expressed ones a bin >= 1
    nonzero = batch.value_bins > 0
    expressed_ids = {int(g) for cell in range(6) for g in gene_ids[dense[cell] > 0]}
    assert nonzero.sum() == 6 * 5
    assert {int(g) for g in batch.gene_ids[nonzero]} <= expressed_ids


def test_only_nonzero_genes_when_more_than_n_genes():
    dense = _counts(5, 60, density=0.6, seed=3)
    assert ((dense > 0).sum(1) > 16).all()
    gene_ids = _gene_ids(60)
    batch = Tokenizer(n_genes=16, n_chunks=4)(dense, gene_ids, _keys(5))
    assert not batch.padding_mask.any()
    assert (batch.value_bins >= 1).all()
    for cell in range(5):
        expressed = set(gene_ids[dense[cell] > 0].tolist())
        assert set(_real_genes(batch, cell).tolist()) <= expressed


@pytest.mark.parametrize(("n_genes", "n_chunks"), [(16, 4), (12, 3), (8, 8)])
def test_shapes(n_genes: int, n_chunks: int):
    dense = _counts(7, 50, density=0.3, seed=4)
    batch = Tokenizer(n_genes=n_genes, n_chunks=n_chunks)(dense, _gene_ids(50), _keys(7))
    shape = (7, n_chunks, n_genes // n_chunks)
    assert len(batch) == 7
    for array, dtype in ((batch.gene_ids, np.int64), (batch.value_bins, np.int64), (batch.padding_mask, np.bool_)):
        assert array.shape == shape
        assert array.dtype == dtype


def test_padding_when_fewer_genes_than_n_genes():
    dense = _counts(4, 10, density=0.5, seed=5)
    dense[:, 0] = 1.0  # no empty cell
    gene_ids = _gene_ids(10)
    batch = Tokenizer(n_genes=16, n_chunks=4, pad_id=PAD)(dense, gene_ids, _keys(4))
    # every gene of the data is used; chunks stay evenly filled, so 10 genes need 4 chunks of 3
    assert batch.gene_ids.shape == (4, 4, 3)
    assert (~batch.padding_mask).sum(axis=(1, 2)).tolist() == [10] * 4
    assert (batch.gene_ids[batch.padding_mask] == PAD).all()
    assert (batch.value_bins[batch.padding_mask] == 0).all()
    for cell in range(4):
        assert sorted(_real_genes(batch, cell).tolist()) == sorted(gene_ids.tolist())
    # chunk sizes differ by at most one real gene
    per_chunk = (~batch.padding_mask).sum(2)
    assert (per_chunk.max(1) - per_chunk.min(1) <= 1).all()


def test_pad_id_is_used():
    dense = np.ones((2, 5))
    batch = Tokenizer(n_genes=8, n_chunks=2, pad_id=7)(dense, _gene_ids(5) + 100, _keys(2))
    assert batch.padding_mask.sum() == 2
    assert (batch.gene_ids[batch.padding_mask] == 7).all()


def test_deterministic_and_seeded():
    dense = _counts(8, 100, density=0.5, seed=6)
    gene_ids, keys = _gene_ids(100), _keys(8)
    tokenizer = Tokenizer(n_genes=16, n_chunks=4)
    first, again = tokenizer(dense, gene_ids, keys, seed=3), tokenizer(dense, gene_ids, keys, seed=3)
    for name in ("gene_ids", "value_bins", "padding_mask"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    other = tokenizer(dense, gene_ids, keys, seed=4)
    # about 50 expressed genes to choose 16 from: a new seed picks a different subset
    for cell in range(8):
        assert set(_real_genes(first, cell).tolist()) != set(_real_genes(other, cell).tolist())


def test_cell_key_drives_selection():
    dense = np.tile(_counts(1, 100, density=0.5, seed=7), (2, 1))
    batch = Tokenizer(n_genes=16, n_chunks=4)(dense, _gene_ids(100), _keys(2))
    assert set(_real_genes(batch, 0).tolist()) != set(_real_genes(batch, 1).tolist())


def test_batch_independence():
    dense = _counts(9, 80, density=0.3, seed=8)
    gene_ids, keys = _gene_ids(80), _keys(9)
    tokenizer = Tokenizer(n_genes=16, n_chunks=4)
    together = tokenizer(dense, gene_ids, keys, seed=1)
    for cell in (0, 4, 8):
        alone = tokenizer(dense[cell : cell + 1], gene_ids, keys[cell : cell + 1], seed=1)
        np.testing.assert_array_equal(alone.gene_ids[0], together.gene_ids[cell])
        np.testing.assert_array_equal(alone.value_bins[0], together.value_bins[cell])
        np.testing.assert_array_equal(alone.padding_mask[0], together.padding_mask[cell])
    subset = [7, 2, 5]
    some = tokenizer(dense[subset], gene_ids, keys[subset], seed=1)
    np.testing.assert_array_equal(some.gene_ids, together.gene_ids[subset])


@pytest.mark.parametrize("selection", ["top", "random"])
def test_dense_choice_in_row_groups_gives_the_same_tokens(selection: str, monkeypatch):
    """Cells expressing fewer than n_genes are chosen a few rows at a time (bounded memory): same tokens."""
    from panfoma_sc.data import tokenizer as module

    dense = _counts(23, 200, density=0.05, seed=3)  # about 10 genes per cell: all on the dense path
    dense[::5] = _counts(5, 200, density=0.8, seed=4)  # and some on the sparse path
    gene_ids, keys = _gene_ids(200), _keys(23)
    tokenizer = Tokenizer(n_genes=32, n_chunks=4, selection=selection)
    whole = tokenizer(dense, gene_ids, keys, seed=2)
    monkeypatch.setattr(module, "DENSE_CHOICE_ELEMENTS", 3 * 200)  # three rows per group
    grouped = tokenizer(dense, gene_ids, keys, seed=2)
    np.testing.assert_array_equal(grouped.gene_ids, whole.gene_ids)
    np.testing.assert_array_equal(grouped.value_bins, whole.value_bins)
    np.testing.assert_array_equal(grouped.padding_mask, whole.padding_mask)


def test_gene_order_does_not_matter():
    dense = _counts(6, 70, density=0.3, seed=9)
    gene_ids, keys = _gene_ids(70), _keys(6)
    perm = np.random.default_rng(10).permutation(70)
    tokenizer = Tokenizer(n_genes=24, n_chunks=4)
    original = tokenizer(dense, gene_ids, keys, seed=2)
    permuted = tokenizer(dense[:, perm], gene_ids[perm], keys, seed=2)
    for cell in range(6):
        assert _tokens_per_chunk(original, cell) == _tokens_per_chunk(permuted, cell)


@pytest.mark.parametrize("fmt", ["dense", "csc", "coo", "csr_array"])
def test_input_formats_agree(fmt: str):
    dense = _counts(7, 60, density=0.3, seed=11)
    gene_ids, keys = _gene_ids(60), _keys(7)
    tokenizer = Tokenizer(n_genes=16, n_chunks=4)
    expected = tokenizer(sparse.csr_matrix(dense), gene_ids, keys)
    converted = {
        "dense": dense,
        "csc": sparse.csc_matrix(dense),
        "coo": sparse.coo_matrix(dense),
        "csr_array": sparse.csr_array(dense),
    }[fmt]
    got = tokenizer(converted, gene_ids, keys)
    for name in ("gene_ids", "value_bins", "padding_mask"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))


def test_explicit_zeros_are_zeros():
    dense = _counts(3, 30, density=0.3, seed=12)
    matrix = sparse.csr_matrix(dense)
    with_zeros = matrix.copy()
    with_zeros.data[::3] = 0.0  # stored zeros
    tokenizer = Tokenizer(n_genes=8, n_chunks=2)
    got = tokenizer(with_zeros, _gene_ids(30), _keys(3))
    with_zeros.eliminate_zeros()
    expected = tokenizer(with_zeros, _gene_ids(30), _keys(3))
    np.testing.assert_array_equal(got.gene_ids, expected.gene_ids)
    np.testing.assert_array_equal(got.value_bins, expected.value_bins)


def test_input_is_left_untouched():
    matrix = sparse.csr_matrix(_counts(3, 30, density=0.3, seed=13))
    matrix.data[0] = 0.0
    before = (matrix.data.copy(), matrix.indices.copy(), matrix.indptr.copy())
    Tokenizer(n_genes=8, n_chunks=2)(matrix, _gene_ids(30), _keys(3))
    for array, saved in zip((matrix.data, matrix.indices, matrix.indptr), before, strict=True):
        np.testing.assert_array_equal(array, saved)


@pytest.mark.parametrize(("n_cols", "density"), [(12, 0.5), (100, 0.1), (100, 0.9)])
def test_no_gene_twice_in_a_cell(n_cols: int, density: float):
    dense = _counts(10, n_cols, density=density, seed=14)
    batch = Tokenizer(n_genes=16, n_chunks=4)(dense, _gene_ids(n_cols), _keys(10))
    for cell in range(10):
        real = _real_genes(batch, cell)
        assert real.size == min(16, n_cols)
        assert np.unique(real).size == real.size


def test_cell_keys_from_names_stable():
    keys = cell_keys_from_names(["AAAC-1", "AAAG-1", "AAAC-1"])
    assert keys.dtype == np.uint64
    assert keys[0] == keys[2] != keys[1]
    np.testing.assert_array_equal(keys, cell_keys_from_names(np.array(["AAAC-1", "AAAG-1", "AAAC-1"])))


def test_a_gene_stored_twice_in_a_csr_row_counts_once_summed():
    # row 0 stores column 1 twice (1 + 1): scipy reads it as 2, and so must the tokenizer
    twice = sparse.csr_matrix((np.array([1.0, 1, 3, 2]), np.array([1, 1, 2, 0]), np.array([0, 4])), shape=(1, 8))
    summed = twice.copy()
    summed.sum_duplicates()
    tokenizer = Tokenizer(n_genes=4, n_chunks=2, selection="top", value_encoding="rank")
    genes, keys = np.arange(2, 10), np.zeros(1, dtype=np.uint64)
    from_twice, from_summed = tokenizer(twice, genes, keys), tokenizer(summed, genes, keys)
    np.testing.assert_array_equal(from_twice.gene_ids, from_summed.gene_ids)
    np.testing.assert_array_equal(from_twice.value_bins, from_summed.value_bins)
    assert twice.nnz == 4  # the caller's matrix is left as it was
