from __future__ import annotations

import numpy as np
from scipy import sparse

from panfoma_sc.data.tokenizer import dense_bins, sample_expression_targets


def _matrix():
    rng = np.random.default_rng(0)
    dense = rng.poisson(0.3, size=(6, 50)).astype(float)
    dense[5] = 0
    dense[5, :4] = [1, 2, 3, 4]  # a cell with only four expressed genes
    return sparse.csr_matrix(dense)


def test_half_expressed_half_not_when_possible():
    matrix = _matrix()
    ids = np.arange(100, 150)
    gene_ids, bins = sample_expression_targets(
        matrix, ids, np.arange(6, dtype=np.uint64), n_genes=10, n_bins=51, seed=0
    )
    assert gene_ids.shape == bins.shape == (6, 10)
    expressed = (bins > 0).sum(1)
    n_nonzero = np.diff(matrix.indptr)
    np.testing.assert_array_equal(expressed, np.minimum(5, n_nonzero))
    for row in gene_ids:
        assert len(set(row)) == 10


def test_targets_are_the_cells_bins():
    matrix = _matrix()
    ids = np.arange(100, 150)
    gene_ids, bins = sample_expression_targets(
        matrix, ids, np.arange(6, dtype=np.uint64), n_genes=12, n_bins=51, seed=3
    )
    full = dense_bins(matrix, 51)
    np.testing.assert_array_equal(bins, np.take_along_axis(full, gene_ids - 100, 1))


def test_seeded_and_order_free():
    matrix = _matrix()
    ids = np.arange(100, 150)
    keys = np.arange(6, dtype=np.uint64)
    a = sample_expression_targets(matrix, ids, keys, n_genes=8, n_bins=51, seed=1)
    b = sample_expression_targets(matrix, ids, keys, n_genes=8, n_bins=51, seed=1)
    np.testing.assert_array_equal(a[0], b[0])
    perm = np.random.default_rng(1).permutation(50)
    c = sample_expression_targets(matrix[:, perm], ids[perm], keys, n_genes=8, n_bins=51, seed=1)
    for row_a, row_c in zip(a[0], c[0], strict=True):
        assert set(row_a) == set(row_c)
