from __future__ import annotations

import numpy as np
import pytest
from anndata.tests.helpers import assert_equal

import panfoma_sc as pf


@pytest.fixture
def split(pbmc_sorted):
    """Reference and query halves of the real FACS-sorted PBMC subset (each class in both)."""
    order = np.arange(pbmc_sorted.n_obs)
    query = pbmc_sorted[order % 3 == 0].copy()
    reference = pbmc_sorted[order % 3 != 0].copy()
    return reference, query


def test_knn_annotation_writes_labels_and_confidence(split, tiny_checkpoint):
    reference, query = split
    reference_before = reference.copy()
    pf.tl.annotate(query, reference, labels_key="cell_type", model=tiny_checkpoint, progress=False, unknown_threshold=0)
    assert_equal(reference, reference_before)
    predicted = query.obs["panfoma_label"]
    assert set(predicted.cat.categories) == set(reference.obs["cell_type"].unique()) | {"Unknown"}
    assert (predicted != "Unknown").all()
    confidence = query.obs["panfoma_label_confidence"].to_numpy()
    assert ((confidence > 0) & (confidence <= 1)).all()
    assert query.uns["panfoma_label"]["params"]["n_neighbors"] == 15


def test_unknown_threshold_calls_uncertain_cells_unknown(split, tiny_checkpoint):
    reference, query = split
    result = pf.tl.annotate(
        query,
        reference,
        labels_key="cell_type",
        model=tiny_checkpoint,
        progress=False,
        unknown_threshold=1.0,
        copy=True,
    )
    confidence = result.obs["panfoma_label_confidence"].to_numpy()
    labels = result.obs["panfoma_label"].to_numpy()
    np.testing.assert_array_equal(labels == "Unknown", confidence < 1.0)
    assert "panfoma_label" not in query.obs


def test_a_query_cell_found_in_the_reference_gets_its_label(split, tiny_checkpoint):
    reference, _ = split
    query = reference[:12].copy()
    pf.tl.annotate(query, reference, labels_key="cell_type", model=tiny_checkpoint, progress=False, n_neighbors=1)
    np.testing.assert_array_equal(query.obs["panfoma_label"].astype(str), reference.obs["cell_type"][:12].astype(str))


@pytest.mark.parametrize("case", ["missing key", "one class", "all missing"])
def test_bad_reference_raises_and_leaves_everything_untouched(split, tiny_checkpoint, case):
    reference, query = split
    key = "cell_type"
    if case == "missing key":
        key, message, error = "celltype", "not a column of reference.obs", KeyError
    elif case == "one class":
        reference.obs["cell_type"] = "T cell"
        message, error = "single class", ValueError
    else:
        reference.obs["cell_type"] = np.nan
        message, error = "no labels", ValueError
    before_query, before_reference = query.copy(), reference.copy()
    with pytest.raises(error, match=message):
        pf.tl.annotate(query, reference, labels_key=key, model=tiny_checkpoint, progress=False)
    assert_equal(query, before_query)
    assert_equal(reference, before_reference)


def test_csc_int_query_and_float_reference_give_the_same_labels(split, tiny_checkpoint):
    reference, query = split
    as_csr = pf.tl.annotate(query, reference, labels_key="cell_type", model=tiny_checkpoint, progress=False, copy=True)
    query.X = query.X.tocsc().astype(np.int64)
    reference.X = reference.X.astype(np.float32)
    as_csc = pf.tl.annotate(query, reference, labels_key="cell_type", model=tiny_checkpoint, progress=False, copy=True)
    np.testing.assert_array_equal(as_csc.obs["panfoma_label"], as_csr.obs["panfoma_label"])


@pytest.mark.parametrize("case", ["knn", "missing folder", "not .safetensors"])
def test_bad_save_model_is_refused_before_any_work(split, tiny_checkpoint, tmp_path, case):
    reference, query = split
    method, path = "knn", tmp_path / "tuned.safetensors"
    message, error = "pass method='finetune'", ValueError
    if case == "missing folder":
        method, path = "finetune", tmp_path / "no" / "tuned.safetensors"
        message, error = "does not exist. Create it first", FileNotFoundError
    if case == "not .safetensors":
        method, path = "finetune", tmp_path / "tuned.pt"
        message, error = r"must be a \.safetensors file", ValueError
    before = query.copy()
    with pytest.raises(error, match=message):
        pf.tl.annotate(query, reference, labels_key="cell_type", model=tiny_checkpoint, method=method, save_model=path)
    assert_equal(query, before)
    assert not path.exists()
