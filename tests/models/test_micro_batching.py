"""CPU inference runs each batch in passes of about a thousand tokens; the result does not change."""

from __future__ import annotations

import numpy as np

from panfoma_sc.data import Tokenizer
from panfoma_sc.models._pretrained import CPU_TOKENS_PER_FORWARD, _split, cells_per_forward


def test_cells_per_forward():
    assert cells_per_forward("cpu", 256, 64) == CPU_TOKENS_PER_FORWARD // 256
    assert cells_per_forward("cpu", 4 * CPU_TOKENS_PER_FORWARD, 64) == 1
    assert cells_per_forward("cpu", 8, 3) == 3
    assert cells_per_forward("cuda", 256, 64) == 64


def test_split_covers_the_batch_in_order():
    rng = np.random.default_rng(0)
    tokens = Tokenizer(n_genes=8, n_chunks=2)(rng.poisson(1.0, (7, 20)), np.arange(2, 22), np.arange(7))
    parts = _split(tokens, 3)
    assert [len(p) for p in parts] == [3, 3, 1]
    for field in ("gene_ids", "value_bins", "padding_mask"):
        np.testing.assert_array_equal(np.concatenate([getattr(p, field) for p in parts]), getattr(tokens, field))
