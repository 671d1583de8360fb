from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pytest
from scipy import sparse

from panfoma_sc._paths import check_input_file, check_writable, write_h5ad_atomically


def test_an_existing_file_and_a_new_file_in_an_existing_folder_pass(tmp_path):
    existing = tmp_path / "a.h5ad"
    existing.write_bytes(b"")
    check_input_file(existing)
    check_writable(existing)
    check_writable(tmp_path / "new.h5ad")


def test_missing_input_and_folder_outputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.h5ad' does not exist"):
        check_input_file(tmp_path / "missing.h5ad")
    with pytest.raises(FileNotFoundError, match="is not a file"):
        check_input_file(tmp_path)
    with pytest.raises(ValueError, match="is a folder: give a file name"):
        check_writable(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"its folder .*sub' does not exist"):
        check_writable(tmp_path / "sub" / "out.h5ad", "save_model")


def test_a_read_only_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("panfoma_sc._paths.os.access", lambda path, mode: False)
    with pytest.raises(ValueError, match="is not writable"):
        check_writable(tmp_path / "out.h5ad")


def test_a_backed_object_is_written_as_a_copy_of_its_file_plus_its_results(tmp_path):
    source, target = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    adata = ad.AnnData(sparse.random(30, 8, density=0.3, format="csr", dtype=np.float32, random_state=0))
    adata.obs["group"] = ["a", "b", "c"] * 10
    adata.uns["kept"] = {"value": 1}
    adata.write_h5ad(source)
    with h5py.File(source, "r+") as file:
        del file["obsm"]  # a writer that left the empty group out
    backed = ad.read_h5ad(source, backed="r")
    backed.obsm["X_new"] = np.ones((30, 2), dtype=np.float32)
    backed.uns["new"] = {"n": 2}
    backed.obs["label"] = backed.obs["group"].astype(str) + "!"
    backed.uns["not_listed"] = 3  # only the elements named are written
    write_h5ad_atomically(backed, target, results=["obsm/X_new", "uns/new", "obs"])
    backed.file.close()
    result = ad.read_h5ad(target)
    np.testing.assert_array_equal(result.obsm["X_new"], np.ones((30, 2)))
    assert result.uns["new"] == {"n": 2}
    assert result.uns["kept"] == {"value": 1}
    assert "not_listed" not in result.uns
    assert result.obs["label"].tolist() == [f"{g}!" for g in adata.obs["group"]]
    assert (result.X != adata.X).nnz == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.h5ad", "out.h5ad"]


def test_rewriting_a_result_into_its_own_file_does_not_grow_it(tmp_path):
    """HDF5 keeps the bytes of deleted objects: the old result is left out of the copy, not deleted from it."""
    path = tmp_path / "data.h5ad"
    adata = ad.AnnData(sparse.random(500, 50, density=0.2, format="csr", dtype=np.float32, random_state=0))
    adata.write_h5ad(path)
    sizes = []
    for round_ in range(3):
        backed = ad.read_h5ad(path, backed="r")
        backed.obsm["X_result"] = np.full((500, 128), round_, dtype=np.float32)  # 250 kB, not compressible away
        backed.obsm["X_result"][:, 0] = np.arange(500)
        write_h5ad_atomically(backed, path, results=["obsm/X_result"])
        backed.file.close()
        sizes.append(path.stat().st_size)
    assert sizes[2] == sizes[1]
    np.testing.assert_array_equal(ad.read_h5ad(path).obsm["X_result"][:, 1], np.full(500, 2))
