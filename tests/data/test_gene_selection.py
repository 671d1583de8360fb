from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from panfoma_sc.data import Tokenizer


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
