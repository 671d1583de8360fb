"""Opening an .h5ad file with X, every layer and .raw's X left on disk."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from panfoma_sc.data.lazy_h5ad import read_h5ad_lazily
from panfoma_sc.data.rows import iter_row_blocks


@pytest.fixture
def stored(pbmc68k, tmp_path):
    """pbmc68k cells with a CSR X, a dense and a CSC layer, .raw, dense and DataFrame obsm, uns, obsp and varm."""
    data = pbmc68k[:40].copy()
    data.raw = data.copy()
    data = data[:, :300].copy()
    data.layers["dense"] = data.X.toarray()
    data.layers["by_column"] = sparse.csc_matrix(data.X)
    data.obsm["X_pca"] = np.arange(data.n_obs * 3, dtype=np.float32).reshape(-1, 3)
    data.obsm["table"] = pd.DataFrame({"a": np.arange(data.n_obs)}, index=data.obs_names)
    data.obsp["distances"] = sparse.identity(data.n_obs, format="csr")
    data.varm["loadings"] = np.ones((data.n_vars, 2))
    data.uns["mine"] = {"kept": 1}
    path = tmp_path / "data.h5ad"
    data.write_h5ad(path)
    return data, path


def test_matrices_stay_on_disk_and_read_back_equal(stored):
    data, path = stored
    lazy = read_h5ad_lazily(path)
    assert lazy.shape == data.shape
    assert not lazy.isbacked
    assert type(lazy.X).__name__ == "_CSRDataset"
    assert type(lazy.layers["by_column"]).__name__ == "_CSCDataset"
    assert isinstance(lazy.layers["dense"], h5py.Dataset)
    assert type(lazy.raw.X).__name__ == "_CSRDataset"
    assert isinstance(lazy.obsm["X_pca"], h5py.Dataset)
    for matrix, expected in [
        (lazy.X, data.X),
        (lazy.layers["dense"], data.layers["dense"]),
        (lazy.raw.X, data.raw.X),
    ]:
        rows = np.concatenate([block.toarray() for _, block in iter_row_blocks(matrix, 16)])
        np.testing.assert_array_equal(rows, sparse.csr_matrix(expected).toarray())
    pd.testing.assert_frame_equal(lazy.obs, data.obs)
    pd.testing.assert_frame_equal(lazy.var, data.var)
    pd.testing.assert_frame_equal(lazy.raw.var, data.raw.var)
    pd.testing.assert_frame_equal(lazy.obsm["table"], data.obsm["table"])
    assert lazy.uns["mine"] == {"kept": 1}
    assert list(lazy.obsp) == []  # left in the file: the tools do not read them
    assert list(lazy.varm) == []


def test_a_file_without_x_opens(pbmc68k, tmp_path):
    data = ad.AnnData(obs=pbmc68k.obs[:10], var=pbmc68k.var, layers={"counts": pbmc68k.X[:10]})
    path = tmp_path / "no_x.h5ad"
    data.write_h5ad(path)
    lazy = read_h5ad_lazily(path)
    assert lazy.X is None
    assert type(lazy.layers["counts"]).__name__ == "_CSRDataset"


def test_a_file_without_encoding_attributes_opens_backed(stored):
    """Files older than anndata 0.7 carry no encoding attributes: anndata's backed mode reads them."""
    data, path = stored
    with h5py.File(path, "r+") as file:
        for name in ("encoding-type", "encoding-version"):
            del file.attrs[name]
    lazy = read_h5ad_lazily(path)
    assert lazy.isbacked
    assert lazy.shape == data.shape
