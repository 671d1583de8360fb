from __future__ import annotations

import logging
import re

import anndata as ad
import numpy as np
import pandas as pd
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
    assert (predicted != "Unknown").all()
    # categories: the labels given, in the reference's order (an empty one breaks scanpy's group-wise tools)
    given = set(predicted.astype(str))
    assert list(predicted.cat.categories) == [c for c in reference.obs["cell_type"].cat.categories if c in given]
    assert query.uns["panfoma_label"]["classes"] == list(reference.obs["cell_type"].cat.categories)
    confidence = query.obs["panfoma_label_confidence"].to_numpy()
    assert ((confidence > 0) & (confidence <= 1)).all()
    assert query.uns["panfoma_label"]["params"]["n_neighbors"] == 15
    assert "reference_layer" not in query.uns["panfoma_label"]["params"]  # X: nothing to record


def test_the_reference_layer_is_recorded_and_read(split, tiny_checkpoint):
    reference, query = split
    options = {"labels_key": "cell_type", "model": tiny_checkpoint, "progress": False, "copy": True}
    expected = pf.tl.annotate(query, reference, **options)
    reference.layers["counts"] = reference.X.copy()
    reference.X = reference.X * 0  # only the layer holds the expression
    result = pf.tl.annotate(query, reference, reference_layer="counts", **options)
    assert result.uns["panfoma_label"]["params"]["reference_layer"] == "counts"
    assert result.obs["panfoma_label"].tolist() == expected.obs["panfoma_label"].tolist()


def test_logreg_annotation_is_a_linear_probe_on_the_embeddings(split, tiny_checkpoint):
    """Labels and confidences are a logistic regression's on the two embeddings, written as knn's are."""
    from panfoma_sc.tl._linear_probe import LinearProbe

    reference, query = split
    options = {"model": tiny_checkpoint, "progress": False}
    pf.tl.annotate(query, reference, labels_key="cell_type", method="logreg", unknown_threshold=0, **options)
    reference_embedding = pf.tl.embed(reference, copy=True, **options).obsm["X_panfoma"]
    query_embedding = pf.tl.embed(query, copy=True, **options).obsm["X_panfoma"]
    probe = LinearProbe.fit(reference_embedding, reference.obs["cell_type"].astype(str).to_numpy())
    probabilities = probe.probabilities(query_embedding)
    expected = probe.classes[probabilities.argmax(1)]
    np.testing.assert_array_equal(query.obs["panfoma_label"].astype(str).to_numpy(), expected)
    np.testing.assert_allclose(query.obs["panfoma_label_confidence"], probabilities.max(1), rtol=1e-6)
    params = query.uns["panfoma_label"]["params"]
    assert params["method"] == "logreg"
    assert "n_neighbors" not in params
    assert set(query.obs["panfoma_label"].cat.categories) == set(query.obs["panfoma_label"].astype(str))
    assert set(query.uns["panfoma_label"]["classes"]) == set(reference.obs["cell_type"].unique())


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


def test_classes_no_cell_got_are_not_categories_so_scanpy_group_tools_work(split, tiny_checkpoint):
    import scanpy as sc

    reference, _ = split
    two = list(reference.obs["cell_type"].cat.categories[:2])
    query = reference[reference.obs["cell_type"].isin(two)].copy()
    del query.obs["cell_type"]
    pf.tl.annotate(query, reference, labels_key="cell_type", model=tiny_checkpoint, progress=False, n_neighbors=1)
    assert list(query.obs["panfoma_label"].cat.categories) == two  # neither the other classes nor "Unknown"
    assert query.uns["panfoma_label"]["classes"] == list(reference.obs["cell_type"].cat.categories)
    sc.pp.log1p(query)
    sc.tl.rank_genes_groups(query, "panfoma_label")  # failed on an empty category
    assert set(query.uns["rank_genes_groups"]["names"].dtype.names) == set(two)


def test_the_references_plot_colours_follow_the_labels_given(split, tiny_checkpoint):
    reference, _ = split
    classes = list(reference.obs["cell_type"].cat.categories)
    palette = [f"#{i:02x}{i:02x}{i:02x}" for i in range(10, 10 + 20 * len(classes), 20)]
    reference.uns["cell_type_colors"] = palette
    two = classes[1:3]
    query = reference[reference.obs["cell_type"].isin(two)].copy()
    del query.uns["cell_type_colors"]
    query.uns["panfoma_label_colors"] = ["#000000"] * 9  # an earlier run's colours
    options = {"labels_key": "cell_type", "model": tiny_checkpoint, "progress": False, "n_neighbors": 1}
    pf.tl.annotate(query, reference, **options)
    assert list(query.uns["panfoma_label_colors"]) == palette[1:3]  # each label keeps the reference's colour
    from panfoma_sc.tl._annotate import _reference_colors

    assert _reference_colors(reference, "cell_type", [classes[2], "Unknown"]) == [palette[2], "#d9d9d9"]
    del reference.uns["cell_type_colors"]  # no colours to follow: stale ones are removed, scanpy picks its own
    pf.tl.annotate(query, reference, **options)
    assert "panfoma_label_colors" not in query.uns


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


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("key_added", None, "a non-empty string"),
        ("key_added", "", "a non-empty string"),
        ("n_neighbors", 2.5, "an integer >= 1"),
        ("n_neighbors", True, "an integer >= 1"),
        ("max_epochs", 1.5, "an integer >= 1"),
        ("unknown_threshold", "0.5", "a number in [0, 1]"),
        ("seed", None, "an integer from 0 to 4294967295"),
        ("seed", -1, "an integer from 0 to 4294967295"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(split, tiny_checkpoint, option, value, expected, monkeypatch):
    reference, query = split
    before = query.copy()
    monkeypatch.setattr("panfoma_sc.tl._annotate.EmbeddingJob.run", lambda *a, **k: pytest.fail("embedded"))
    with pytest.raises(ValueError, match=re.escape(f"{option} must be {expected}, got {value!r}")):
        pf.tl.annotate(query, reference, labels_key="cell_type", model=tiny_checkpoint, **{option: value})
    assert_equal(query, before)


def test_a_mudata_is_refused_with_the_modality_to_pass(split, tiny_checkpoint):
    import mudata as md

    reference, query = split
    with pytest.raises(TypeError, match=r"adata is a MuData; .* e\.g\. adata\.mod\['rna'\]"):
        pf.tl.annotate(md.MuData({"rna": query}), reference, labels_key="cell_type", model=tiny_checkpoint)


def test_reference_problems_are_named_as_the_reference(split, tiny_checkpoint):
    reference, query = split
    with pytest.raises(KeyError, match=r"not found in reference\.layers"):
        pf.tl.annotate(query, reference, labels_key="cell_type", model=tiny_checkpoint, reference_layer="counts")
    query.var["symbol"] = query.var_names
    both = r"gene_symbols='symbol' names a column of both the query's and the reference's"
    with pytest.raises(KeyError, match=rf"column of reference\.var .* {both}"):
        pf.tl.annotate(query, reference, labels_key="cell_type", model=tiny_checkpoint, gene_symbols="symbol")
    reference.X = reference.X.toarray()
    reference.X[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"reference\.X contains NaN"):
        pf.tl.annotate(query, reference, labels_key="cell_type", model=tiny_checkpoint)
    reference.X[3, 0] = -1.0
    reference.layers["counts"] = np.abs(reference.X)
    with pytest.raises(ValueError, match=r"e\.g\. reference_layer='counts'\.$"):
        pf.tl.annotate(query, reference, labels_key="cell_type", model=tiny_checkpoint)
    reference.raw = reference  # a .raw to read: the fix names the reference's argument
    with pytest.raises(
        ValueError, match=r"e\.g\. reference_layer='counts' or reference_use_raw=True \(reference\.raw\)"
    ):
        pf.tl.annotate(query, reference, labels_key="cell_type", model=tiny_checkpoint)
    with pytest.raises(ValueError, match=r"reference has no cells \(0 observations\)"):
        pf.tl.annotate(query, reference[:0], labels_key="cell_type", model=tiny_checkpoint)


def test_empty_labels_are_missing_and_labels_come_back_as_strings(split, tiny_checkpoint):
    reference, query = split
    labels = reference.obs["cell_type"].astype(str)
    first_class = labels.iloc[0]
    reference.obs["with_blanks"] = labels.where(labels != first_class, "")  # a whole class unlabelled
    reference.obs["codes"] = reference.obs["cell_type"].cat.codes.astype(int)  # integer labels
    kwargs = {"model": tiny_checkpoint, "progress": False, "unknown_threshold": 0, "copy": True}
    blanks = pf.tl.annotate(query, reference, labels_key="with_blanks", **kwargs).obs["panfoma_label"]
    assert "" not in set(blanks.cat.categories)
    assert first_class not in set(blanks.cat.categories)
    codes = pf.tl.annotate(query, reference, labels_key="codes", **kwargs).obs["panfoma_label"]
    assert set(codes.cat.categories) <= {str(c) for c in range(9)} | {"Unknown"}
    reference.obs["codes_with_nan"] = reference.obs["codes"].where(reference.obs["codes"] != 0)  # floats now
    with_nan = pf.tl.annotate(query, reference, labels_key="codes_with_nan", **kwargs).obs["panfoma_label"]
    assert set(with_nan.cat.categories) <= {str(c) for c in range(1, 9)} | {"Unknown"}


def test_missing_labels_turned_into_text_are_missing(split, tiny_checkpoint, caplog):
    reference, query = split
    labels = reference.obs["cell_type"].astype(str)
    first_class = labels.iloc[0]
    reference.obs["as_text"] = labels.where(labels != first_class).astype(str)  # NaN -> "nan", as users do
    with caplog.at_level(logging.WARNING, logger="panfoma_sc"):
        kwargs = {"model": tiny_checkpoint, "progress": False, "unknown_threshold": 0, "copy": True}
        result = pf.tl.annotate(query, reference, labels_key="as_text", **kwargs)
    assert "nan" not in set(result.obs["panfoma_label"].cat.categories)
    n_missing = int((labels == first_class).sum())
    assert f"{n_missing} cells of reference.obs['as_text'] have the label ['nan']" in caplog.text


def test_the_query_as_its_own_reference_is_warned_about(split, tiny_checkpoint, caplog):
    reference, _ = split
    with caplog.at_level(logging.WARNING, logger="panfoma_sc"):
        pf.tl.annotate(reference, reference, labels_key="cell_type", model=tiny_checkpoint, progress=False)
    assert "each cell is its own nearest neighbour" in caplog.text
    assert (reference.obs["panfoma_label"].astype(str) == reference.obs["cell_type"].astype(str)).all()


@pytest.mark.parametrize("method", ["knn", "logreg", "finetune"])
def test_unlabelled_cells_of_a_backed_reference_are_skipped_in_place(split, tiny_checkpoint, tmp_path, method):
    """The labelled rows are streamed from the file: subsetting a backed AnnData would read them all into memory."""
    reference, query = split
    reference.obs["partial"] = reference.obs["cell_type"].astype(object)
    reference.obs.loc[reference.obs_names[::4], "partial"] = np.nan
    path = tmp_path / "reference.h5ad"
    reference.write_h5ad(path)
    kwargs = {"model": tiny_checkpoint, "progress": False, "copy": True, "method": method, "max_epochs": 1}
    labelled = reference[reference.obs["partial"].notna()].copy()
    expected = pf.tl.annotate(query, labelled, labels_key="partial", **kwargs)
    backed = ad.read_h5ad(path, backed="r")
    subset_reads = []
    original_getitem = ad.AnnData.__getitem__

    def no_subset_of_the_reference(adata, index):
        if adata is backed:
            subset_reads.append(index)
        return original_getitem(adata, index)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ad.AnnData, "__getitem__", no_subset_of_the_reference)
        result = pf.tl.annotate(query, backed, labels_key="partial", **kwargs)
    assert subset_reads == []
    pd.testing.assert_series_equal(result.obs["panfoma_label"], expected.obs["panfoma_label"])
    np.testing.assert_allclose(result.obs["panfoma_label_confidence"], expected.obs["panfoma_label_confidence"])
    assert result.uns["panfoma_label"]["params"]["reference_n_cells"] == labelled.n_obs
    backed.file.close()


def test_labels_keep_the_references_class_order(split, tiny_checkpoint):
    reference, query = split
    kwargs = {"model": tiny_checkpoint, "progress": False, "unknown_threshold": 0, "copy": True}
    reversed_types = list(reference.obs["cell_type"].cat.categories)[::-1]
    reference.obs["reordered"] = reference.obs["cell_type"].cat.set_categories(["unused", *reversed_types])
    result = pf.tl.annotate(query, reference, labels_key="reordered", **kwargs)
    assert result.uns["panfoma_label"]["classes"] == reversed_types
    labels = result.obs["panfoma_label"]
    assert list(labels.cat.categories) == [c for c in reversed_types if c in set(labels.astype(str))]
    reference.obs["numbers"] = reference.obs["cell_type"].cat.codes.astype(int) * 5  # 0, 5, 10, ..., 40
    result = pf.tl.annotate(query, reference, labels_key="numbers", **kwargs)
    assert result.uns["panfoma_label"]["classes"] == [str(5 * i) for i in range(len(reversed_types))]
    numbers = result.obs["panfoma_label"]
    assert list(numbers.cat.categories) == sorted(set(numbers.astype(str)), key=int)


def test_warnings_for_an_unknown_class_a_too_large_k_few_shared_genes_and_an_overwritten_column(
    split, tiny_checkpoint, caplog
):
    reference, query = split
    kwargs = {"model": tiny_checkpoint, "progress": False}
    reference.obs["named"] = reference.obs["cell_type"].astype(str)
    reference.obs.loc[reference.obs_names[:5], "named"] = "Unknown"
    with caplog.at_level(logging.WARNING, logger="panfoma_sc"):
        pf.tl.annotate(query, reference, labels_key="named", n_neighbors=500, key_added="cell_type", **kwargs)
    text = caplog.text
    assert "has a class named 'Unknown'" in text
    assert "n_neighbors=500, but the reference has 72 labelled cells" in text
    assert "pf.tl.annotate replaces adata.obs['cell_type'], which no earlier pf.tl.annotate call wrote" in text
    caplog.clear()
    query.obs["mine"] = "x"
    with caplog.at_level(logging.WARNING, logger="panfoma_sc"):  # copy=True replaces nothing of the user's
        pf.tl.annotate(query, reference, labels_key="named", key_added="mine", copy=True, **kwargs)
    assert "which no earlier pf.tl.annotate call wrote" not in caplog.text
    caplog.clear()
    query.obs["panfoma_label_confidence"] = 1.0  # a column of the user's, and embed's record under "panfoma"
    query.uns["panfoma"] = {"params": {"model": "panfoma-tiny"}}
    with caplog.at_level(logging.WARNING, logger="panfoma_sc"):
        pf.tl.annotate(query, reference, labels_key="named", **kwargs)
        pf.tl.annotate(query, reference, labels_key="named", key_added="panfoma", **kwargs)
        pf.tl.annotate(query, reference, labels_key="named", key_added="panfoma", **kwargs)  # a rerun: no warning
    assert caplog.text.count("which no earlier pf.tl.annotate call wrote") == 2
    assert "replaces adata.obs['panfoma_label_confidence'], which" in caplog.text
    assert "replaces adata.uns['panfoma'], which" in caplog.text
    caplog.clear()
    query.uns["mine"] = {"params": {"method": "knn"}}  # the user's own record, whose method happens to be knn
    pf.tl.embed(query, tiny_checkpoint, key_added="embedded", progress=False)
    with caplog.at_level(logging.WARNING, logger="panfoma_sc"):
        pf.tl.annotate(query, reference, labels_key="named", key_added="mine", **kwargs)
        pf.tl.annotate(query, reference, labels_key="named", key_added="embedded", **kwargs)
    assert "adata.uns['mine'], which no earlier pf.tl.annotate call wrote" in caplog.text
    assert "replaces adata.uns['embedded'], which an earlier pf.tl.embed call wrote" in caplog.text
    assert "share only" not in text
    caplog.clear()
    half = query.n_vars // 2
    query_part, reference_part = query[:, : half + 100].copy(), reference[:, half - 100 :].copy()
    with caplog.at_level(logging.WARNING, logger="panfoma_sc"):
        pf.tl.annotate(query_part, reference_part, labels_key="cell_type", **kwargs)
    shared = query_part.uns["panfoma_label"]["params"]["shared_genes"]
    assert 0 < shared <= 200
    assert f"The query and the reference share only {shared} of the" in caplog.text
    assert query_part.uns["panfoma_label"]["params"]["reference_genes"]["n_matched"] > 0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="panfoma_sc"):
        pf.tl.annotate(query_part, reference_part, labels_key="cell_type", **kwargs)  # rerun: our own column
    assert "which no earlier pf.tl.annotate call wrote" not in caplog.text


def test_a_query_and_reference_without_common_genes_are_refused_before_any_work(split, tiny_checkpoint):
    reference, query = split
    half = query.n_vars // 2
    query_part, reference_part = query[:, :half].copy(), reference[:, half:].copy()
    before = query_part.copy()
    for method in ("knn", "finetune"):
        with pytest.raises(ValueError, match=r"share none of their model genes.*disjoint genes"):
            pf.tl.annotate(query_part, reference_part, labels_key="cell_type", method=method, model=tiny_checkpoint)
    assert_equal(query_part, before)


def test_a_gene_subset_is_warned_about_once_per_dataset_each_by_its_own_name(split, tiny_checkpoint, caplog):
    reference, query = split
    genes = query.var_names[:3000]  # fewer than a whole transcriptome
    query_part, reference_part = query[:, genes].copy(), reference[:, genes].copy()
    reference_part.raw = reference
    with caplog.at_level(logging.WARNING, logger="panfoma_sc"):
        pf.tl.annotate(query_part, reference_part, labels_key="cell_type", model=tiny_checkpoint, progress=False)
    subset_warnings = [r.getMessage() for r in caplog.records if "holds only 3000 genes" in r.getMessage()]
    assert len(subset_warnings) == 2
    assert sum(m.startswith("adata holds only") for m in subset_warnings) == 1
    (about_reference,) = [m for m in subset_warnings if m.startswith("reference holds only")]
    assert f"reference.raw holds {reference.n_vars} genes: pass reference_use_raw=True" in about_reference
