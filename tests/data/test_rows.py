import numpy as np
from scipy import sparse

from panfoma_sc.data.rows import iter_row_blocks, row_major


def _mixed_index_types(matrix: sparse.csr_matrix) -> sparse.csr_matrix:
    """The same matrix with 64-bit indptr and 32-bit indices, as anndata reads such files."""
    mixed = matrix.copy()
    mixed.indptr = mixed.indptr.astype(np.int64)
    mixed.indices = mixed.indices.astype(np.int32)
    return mixed


def test_mixed_index_types_are_rewrapped_without_copying_the_data():
    matrix = _mixed_index_types(sparse.random(300, 50, density=0.2, format="csr", dtype=np.float32, random_state=0))
    rewrapped = row_major(matrix)
    assert rewrapped.indptr.dtype == rewrapped.indices.dtype
    assert np.shares_memory(rewrapped.data, matrix.data)
    assert np.shares_memory(rewrapped.indices, matrix.indices)
    assert matrix.indptr.dtype == np.int64  # the caller's matrix is left as it was
    np.testing.assert_array_equal(rewrapped.toarray(), matrix.toarray())


def test_row_blocks_of_a_mixed_index_matrix_match_the_rows():
    dense = sparse.random(130, 40, density=0.3, format="csr", dtype=np.float32, random_state=1)
    matrix = _mixed_index_types(dense)
    columns = np.array([5, 0, 17])
    rows = np.array([0, 1, 2, 7, 9, 64, 65, 129])
    seen = []
    for selected, block in iter_row_blocks(matrix, 3, columns=columns, rows=rows):
        np.testing.assert_array_equal(block.toarray(), dense.toarray()[np.ix_(selected, columns)])
        seen.extend(selected.tolist())
    assert seen == rows.tolist()
