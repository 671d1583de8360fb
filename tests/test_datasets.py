"""``pf.datasets``: the local dataset folder, and names that stay inside it."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import panfoma_sc as pf


@pytest.fixture
def data_folder(tmp_path, monkeypatch):
    """A dataset folder with one small .h5ad, a README and a secret file beside it."""
    folder = tmp_path / "data"
    folder.mkdir()
    ad.AnnData(np.ones((3, 2), dtype=np.float32)).write_h5ad(folder / "tiny.h5ad")
    (folder / "README.md").write_text("# datasets\n")
    (tmp_path / "secret.h5ad").write_bytes(b"")
    monkeypatch.setattr(pf.settings, "data_dir", folder)
    return folder


def test_a_dataset_is_found_with_or_without_its_extension(data_folder):
    assert pf.datasets.available() == ["tiny"]
    assert pf.datasets.path("tiny") == pf.datasets.path("tiny.h5ad") == data_folder / "tiny.h5ad"
    assert pf.datasets.load("tiny").shape == (3, 2)


def test_an_h5mu_dataset_loads_as_mudata(data_folder):
    md = pytest.importorskip("mudata", reason="MuData datasets need the multiomics extra")
    rna = ad.AnnData(np.ones((3, 2), dtype=np.float32))
    md.MuData({"rna": rna, "prot": rna.copy()}).write(data_folder / "paired.h5mu")
    assert pf.datasets.available() == ["paired", "tiny"]
    loaded = pf.datasets.load("paired")
    assert isinstance(loaded, md.MuData)
    assert sorted(loaded.mod) == ["prot", "rna"]
    backed = pf.datasets.load("paired.h5mu", backed=True)
    assert backed.isbacked
    backed.file.close()


@pytest.mark.parametrize("name", ["../secret", "../secret.h5ad", "..", "sub/tiny", "sub\\tiny", "", "/etc/passwd"])
def test_names_that_leave_the_dataset_folder_are_refused(data_folder, name):
    with pytest.raises(ValueError, match=r"is not a file name in the dataset folder.*pf\.datasets\.available\(\)"):
        pf.datasets.path(name)


def test_a_file_that_is_not_a_dataset_is_refused_with_the_available_ones(data_folder):
    for call in (pf.datasets.path, pf.datasets.load):
        with pytest.raises(
            ValueError, match=r"'README\.md' is a file of the dataset folder but not a dataset.*\['tiny'\]"
        ):
            call("README.md")
    with pytest.raises(FileNotFoundError, match=r"Dataset 'absent' not found .*Available: \['tiny'\]"):
        pf.datasets.path("absent")


def test_a_data_dir_that_is_a_file_is_named_as_such(data_folder, monkeypatch):
    monkeypatch.setattr(pf.settings, "data_dir", data_folder / "tiny.h5ad")
    where = r"\(pf\.settings\.data_dir, from PANFOMA_DATA_DIR\)"
    with pytest.raises(FileNotFoundError, match=rf"tiny\.h5ad' {where} is a file, not a folder"):
        pf.datasets.available()
    monkeypatch.setattr(pf.settings, "data_dir", data_folder / "absent")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pf.datasets.data_dir()


def test_folders_are_not_datasets_and_a_name_of_both_kinds_needs_its_extension(data_folder):
    (data_folder / "folder.h5ad").mkdir()
    assert pf.datasets.available() == ["tiny"]
    with pytest.raises(FileNotFoundError, match=r"Dataset 'folder' not found"):
        pf.datasets.path("folder")
    md = pytest.importorskip("mudata", reason="MuData datasets need the multiomics extra")
    rna = ad.AnnData(np.ones((3, 2), dtype=np.float32))
    md.MuData({"rna": rna}).write(data_folder / "tiny.h5mu")
    assert pf.datasets.available() == ["tiny.h5ad", "tiny.h5mu"]
    with pytest.raises(ValueError, match=r"'tiny' is ambiguous: \['tiny\.h5ad', 'tiny\.h5mu'\].*Pass the file name"):
        pf.datasets.load("tiny")
    assert isinstance(pf.datasets.load("tiny.h5mu"), md.MuData)


def test_a_damaged_file_is_named(data_folder):
    (data_folder / "broken.h5ad").write_bytes(b"not an hdf5 file")
    with pytest.raises(OSError, match=r"Dataset file '.*broken\.h5ad' cannot be read .*damaged or incomplete"):
        pf.datasets.load("broken")
