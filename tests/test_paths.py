from __future__ import annotations

import pytest

from panfoma_sc._paths import check_input_file, check_writable


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
