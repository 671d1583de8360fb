from __future__ import annotations

import numpy as np
from scipy import sparse

from panfoma_sc.data import Tokenizer
from panfoma_sc.data.features import append_feature_tokens, feature_bins


def test_feature_bins_are_per_feature_quantiles_and_zero_where_unmeasured():
    values = np.array([[0.0, 5.0], [1.0, 5.0], [2.0, 1.0], [3.0, 9.0]])
    measured = np.array([[True, True], [True, True], [True, False], [True, True]])
    bins = feature_bins(values, measured, n_bins=5)
    np.testing.assert_array_equal(bins[:, 0], [1, 2, 3, 4])  # ranks 0..3 of 4 cells over bins 1..4
    assert bins[2, 1] == 0  # not measured
    assert bins[0, 1] == bins[1, 1]  # ties share a bin
    assert bins[3, 1] > bins[0, 1]


def test_append_feature_tokens_keeps_every_gene_and_measured_feature():
    rng = np.random.default_rng(0)
    counts = sparse.csr_matrix(rng.poisson(0.5, size=(3, 20)).astype(np.float32))
    tokens = Tokenizer(n_genes=8, n_chunks=4, selection="top")(counts, np.arange(1, 21), np.arange(3, dtype=np.uint64))
    bins = np.array([[3, 0, 7], [1, 2, 3], [0, 0, 0]])
    joint = append_feature_tokens(tokens, np.array([100, 101, 102]), bins)
    assert joint.gene_ids.shape[1] == 4  # still 4 chunks
    for cell in range(3):
        before = tokens.gene_ids[cell][~tokens.padding_mask[cell]]
        after = joint.gene_ids[cell][~joint.padding_mask[cell]]
        genes = np.sort(after[after < 100])
        np.testing.assert_array_equal(genes, np.sort(before))
        values = joint.value_bins[cell][~joint.padding_mask[cell]]
        features = {int(i): int(b) for i, b in zip(after, values, strict=True) if i >= 100}
        assert features == {100 + j: int(b) for j, b in enumerate(bins[cell]) if b > 0}
    assert (joint.gene_ids[joint.padding_mask] == 0).all()
