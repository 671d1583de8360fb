"""A dask-array ``X`` (anndata's lazy representation; dense or scipy-sparse chunks) gives the in-memory result."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

import panfoma_sc as pf

da = pytest.importorskip("dask.array", reason="dask is not installed (it comes with the test extra)")


def _small(pbmc68k):
    adata = pbmc68k[:96].copy()
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    return adata


def _with_dask_x(adata, chunks: str):
    lazy = adata.copy()
    dense = da.from_array(adata.X.toarray(), chunks=(40, -1))
    if chunks == "sparse":
        dense = dense.map_blocks(sp.csr_matrix, dtype=np.float32, meta=sp.csr_matrix((0, 0), dtype=np.float32))
    lazy.X = dense
    return lazy


@pytest.mark.parametrize("chunks", ["dense", "sparse"])
def test_embed_of_a_dask_x_equals_the_in_memory_result(pbmc68k, tiny_checkpoint, chunks):
    adata = _small(pbmc68k)
    lazy = _with_dask_x(adata, chunks)
    pf.tl.embed(adata, tiny_checkpoint, progress=False)
    pf.tl.embed(lazy, tiny_checkpoint, progress=False)
    np.testing.assert_allclose(lazy.obsm["X_panfoma"], adata.obsm["X_panfoma"], atol=1e-5)
    assert type(lazy.X).__module__.startswith("dask.")  # the user's X is left lazy


def test_embed_of_anndatas_lazy_reader_equals_the_in_memory_result(pbmc68k, tiny_checkpoint, tmp_path):
    from anndata.experimental import read_elem_lazy

    adata = _small(pbmc68k)
    adata.write_h5ad(tmp_path / "cells.h5ad")
    pf.tl.embed(adata, tiny_checkpoint, progress=False)
    with h5py.File(tmp_path / "cells.h5ad", "r") as handle:
        lazy = adata.copy()
        lazy.X = read_elem_lazy(handle["X"], chunks=(40, -1))  # CSR chunks read on demand
        pf.tl.embed(lazy, tiny_checkpoint, progress=False)
    np.testing.assert_allclose(lazy.obsm["X_panfoma"], adata.obsm["X_panfoma"], atol=1e-5)


def test_annotate_with_a_sparse_chunked_dask_query_gives_the_in_memory_labels(pbmc68k, tiny_checkpoint):
    reference = pbmc68k[:300].copy()
    reference.obs["cell_type"] = pbmc68k.obs["bulk_labels"].iloc[:300].to_numpy()
    query = _small(pbmc68k[400:])
    lazy = _with_dask_x(query, "sparse")
    pf.tl.annotate(query, reference, model=tiny_checkpoint, labels_key="cell_type", progress=False)
    pf.tl.annotate(lazy, reference, model=tiny_checkpoint, labels_key="cell_type", progress=False)
    assert (lazy.obs["panfoma_label"].to_numpy() == query.obs["panfoma_label"].to_numpy()).all()


def test_a_lazy_csc_matrix_is_refused_with_the_fix(pbmc68k, tiny_checkpoint, tmp_path):
    from anndata.experimental import read_elem_lazy

    adata = _small(pbmc68k)
    adata.X = adata.X.tocsc()
    adata.write_h5ad(tmp_path / "by_column.h5ad")
    with h5py.File(tmp_path / "by_column.h5ad", "r") as handle:
        lazy = adata.copy()
        lazy.X = read_elem_lazy(handle["X"])  # one chunk of every row: each batch would read the whole matrix
        with pytest.raises(ValueError, match=r"lazy \(dask\) CSC.*\.compute\(\).*tocsr"):
            pf.tl.embed(lazy, tiny_checkpoint, progress=False)
    assert "X_panfoma" not in lazy.obsm
