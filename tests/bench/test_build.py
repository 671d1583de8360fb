from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import panfoma_sc as pf


def _data_file(name: str) -> Path:
    folder = os.environ.get("PANFOMA_DATA_DIR")
    if not folder:
        pytest.skip("PANFOMA_DATA_DIR is not set: the builder tests need the shared data folder")
    path = Path(folder) / name
    if not path.is_file():
        pytest.skip(f"{name} not found in PANFOMA_DATA_DIR={folder}")
    return path


def test_build_splits_by_donor_and_writes_a_manifest(tmp_path):
    path = _data_file("pancreas_3batches_beta_ductal.h5ad")
    bench = pf.bench.build(
        [path],
        label_key="cell_type",
        donor_key="donor_or_sample",
        qc=pf.bench.QCThresholds(min_genes=50),
        max_cells=150,
        seed=1,
        out=tmp_path,
    )
    assert bench.n_obs == 150
    assert {"dataset", "split_group", "split", "x_kind"} <= set(bench.obs.columns)
    # no donor in two splits
    table = pd.crosstab(bench.obs["split_group"], bench.obs["split"])
    assert ((table > 0).sum(axis=1) == 1).all()
    manifest = pf.bench.read_manifest(tmp_path / "manifest.json")
    assert manifest == pf.bench.read_manifest(bench)
    assert pf.bench.read_manifest(ad.read_h5ad(tmp_path / "benchmark.h5ad")) == manifest
    entry = manifest["inputs"][0]
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert entry["split_unit"] == "donor column 'donor_or_sample'"
    assert entry["x_kind"] != "counts"  # the README marks this file as mixed scales
    assert any("not raw counts" in flag for flag in manifest["flags"])
    qc = entry["qc"]
    assert qc["n_cells_in"] == qc["n_cells_out"] + sum(qc["cells_removed"].values())
    assert manifest["seed"] == 1
    assert manifest["parameters"]["max_cells"] == 150
    assert sum(s["n_cells"] for s in manifest["splits"].values()) == bench.n_obs
    json.dumps(manifest)  # JSON-able


def test_build_without_donors_splits_by_cells_and_flags_it():
    path = _data_file("pbmc_sorted_9types_mudan_2115cells.h5ad")
    bench = pf.bench.build([path], label_key="cell_type", max_cells=90)
    manifest = pf.bench.read_manifest(bench)
    assert manifest["split_unit"] == "cells"
    assert any("split by CELLS" in flag for flag in manifest["flags"])
    assert set(bench.obs["split"]) == {"train", "val", "test"}


def test_build_flags_splits_left_without_cells(caplog):
    path = _data_file("pbmc_sorted_9types_mudan_2115cells.h5ad")
    with caplog.at_level("WARNING", logger="panfoma_sc.bench"):
        bench = pf.bench.build([path], label_key="cell_type", max_cells=2)
    assert "test" not in set(bench.obs["split"])  # one cell per type goes to train; two of one type: train + val
    flag = next(flag for flag in pf.bench.read_manifest(bench)["flags"] if "hold no cell" in flag)
    assert "'test'" in flag
    assert "Raise max_cells" in flag
    assert flag in caplog.text
    two_groups = pf.bench.build(  # one protocol trains, one is held out: no validation cells, and no flag
        [_data_file("lung_celllines_3cl_celseq2_dropseq.h5ad")],
        label_key="cell_line",
        batch_key="batch",
        test_groups=["lung_celllines_3cl_celseq2_dropseq:Drop-seq"],
        max_cells=60,
    )
    assert "val" not in set(two_groups.obs["split"])
    assert not any("hold no cell" in flag for flag in pf.bench.read_manifest(two_groups)["flags"])


def test_build_harmonizes_several_studies_onto_common_genes():
    files = [
        _data_file("tumour_thyroid_atc2_numbat_173cells.h5ad"),
        _data_file("tumour_pdac_moncada_card_1926cells.h5ad"),
    ]
    bench = pf.bench.build(files, label_key="malignant", qc=pf.bench.QCThresholds(min_genes=20), max_cells=40)
    manifest = pf.bench.read_manifest(bench)
    assert bench.n_obs == 80
    assert bench.var_names.is_unique
    assert (bench.var_names == bench.var_names.str.upper()).all()
    assert bench.n_vars <= min(entry["n_genes_out"] for entry in manifest["inputs"])
    assert manifest["split_unit"] == "groups"
    assert sorted(bench.obs["split_group"].unique()) == [
        "tumour_pdac_moncada_card_1926cells:PDAC-A",
        "tumour_thyroid_atc2_numbat_173cells:ATC2",
    ]
    assert np.isin(bench.obs["split"], ["train", "test"]).all()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"label_key": "celltype"}, "label_key='celltype' is not a column of"),
        ({"donor_key": "Donor"}, "donor_key names 'Donor', which is not an obs column of any input file"),
        ({"batch_key": "btch"}, "batch_key names 'btch'"),
        ({"keep": {"demuxlet": ["SNG"]}}, "keep names 'demuxlet'"),
    ],
)
def test_misspelt_columns_are_refused_before_any_file_is_processed(tmp_path, monkeypatch, option, message):
    files = [_data_file("pbmc_sorted_9types_mudan_2115cells.h5ad"), _data_file("pbmc3k_allgenes_celltypes.h5ad")]

    def no_work(*args, **kwargs):
        raise AssertionError("a file was processed before the columns were checked")

    monkeypatch.setattr("panfoma_sc.bench._build.harmonize_genes", no_work)
    options = {"label_key": "cell_type", **option}
    with pytest.raises(KeyError, match=message):
        pf.bench.build(files, out=tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


def test_a_column_present_in_some_files_only_is_used_where_present(tmp_path):
    sorted_pbmc = ad.read_h5ad(_data_file("pbmc_sorted_9types_mudan_2115cells.h5ad"))[:120].copy()
    sorted_pbmc.obs["donor"] = np.where(np.arange(sorted_pbmc.n_obs) % 3 == 0, "d1", "d2")
    with_donor = tmp_path / "with_donor.h5ad"
    sorted_pbmc.write_h5ad(with_donor)
    files = [with_donor, _data_file("pbmc3k_allgenes_celltypes.h5ad")]
    bench = pf.bench.build(files, label_key="cell_type", donor_key="donor", max_cells=100)
    units = {entry["name"]: entry["split_unit"] for entry in pf.bench.read_manifest(bench)["inputs"]}
    assert units["with_donor"] == "donor column 'donor'"
    assert units["pbmc3k_allgenes_celltypes"].startswith("file")


def _toy_file(
    folder: Path,
    name: str = "toy",
    *,
    rate: float = 1.0,
    status: str = "SNG",
    donors: bool | int = False,
    batches: bool = False,
) -> Path:
    """40 cells x 30 genes of Poisson(``rate``) counts with two labels (2 or ``donors`` donors, 4 batches if asked)."""
    rng = np.random.default_rng(0)
    adata = ad.AnnData(rng.poisson(rate, (40, 30)).astype(np.float32))
    adata.var_names = [f"GENE{i}" for i in range(30)]
    adata.obs["cell_type"] = np.repeat(["a", "b"], 20)
    adata.obs["status"] = status
    if batches:
        adata.obs["batch"] = np.tile(["b1", "b2", "b3", "b4"], 10)
    if donors:
        adata.obs["donor"] = np.resize([f"d{i + 1}" for i in range(2 if donors is True else donors)], 40)
    path = folder / f"{name}.h5ad"
    adata.write_h5ad(path)
    return path


PANEL_QC = pf.bench.QCThresholds(min_genes=1, min_cells=1)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"fractions": (0.6, 0.2)}, r"give 3 shares"),
        ({"fractions": (0.6, 0.6, 0.2)}, r"summing to 1"),
        ({"fractions": (1.2, -0.2, 0.0)}, r"each in \[0, 1\]"),
        ({"max_cells": 0}, r"max_cells=0: use an integer >= 1"),
        ({"max_cells": -1}, r"max_cells=-1"),
        ({"max_cells": 2.5}, r"max_cells=2.5"),
        ({"test_groups": ["toy:d3"]}, r"test_groups \['toy:d3'\] are not groups of the inputs.*'toy:d1'"),
        ({"test_groups": "toy:d1"}, r"is a single string: pass a list"),
        ({"test_groups": 3}, r"test_groups=3: pass a list of groups"),
        ({"label_key": ["cell_type"]}, r"label_key=\['cell_type'\]: name one obs column as a string"),
        ({"donor_key": ["donor"]}, r"donor_key=\['donor'\]: name one obs column as a string"),
        ({"keep": {"status": "SNG"}}, r"keep=\{'status': 'SNG'\}: give \{obs column: \[values to keep\]\}"),
        ({"keep": ["status"]}, r"keep=\['status'\]: give \{obs column"),
        ({"aliases": ["SEPT7"]}, r"aliases=\['SEPT7'\]: give \{alias: official symbol\}"),
        ({"qc": {"min_genes": 1}}, r"qc=\{'min_genes': 1\}: pass pf.bench.QCThresholds\(min_genes=1\)"),
        ({"seed": "0"}, r"seed='0': use an integer >= 0"),
        ({"seed": -1}, r"seed=-1: use an integer >= 0"),
        ({"out": 5}, r"out=5: pass the folder"),
        ({"layer": ["counts"]}, r"layer=\['counts'\]: name one layer as a string"),
        ({"layer": ""}, r"layer='': name one layer"),
    ],
)
def test_build_parameters_are_refused_before_any_work(tmp_path, monkeypatch, option, message):
    path = _toy_file(tmp_path, donors=True)

    def no_work(*args, **kwargs):
        raise AssertionError("a file was processed before the parameters were checked")

    monkeypatch.setattr("panfoma_sc.bench._build.harmonize_genes", no_work)
    with pytest.raises(ValueError, match=message):
        pf.bench.build([path], **{"label_key": "cell_type", "qc": PANEL_QC, **option})


def test_build_refuses_repeated_paired_and_misplaced_inputs(tmp_path):
    path = _toy_file(tmp_path)
    with pytest.raises(ValueError, match=r"lists \['toy.h5ad'\] more than once"):
        pf.bench.build([path, tmp_path / "." / "toy.h5ad"], qc=PANEL_QC)
    copy = tmp_path / "toy_copy.h5ad"
    copy.write_bytes(path.read_bytes())  # the same cells under another name: donors would cross splits
    with pytest.raises(ValueError, match=r"files \['toy.h5ad', 'toy_copy.h5ad'\] have the same content"):
        pf.bench.build([path, copy], qc=PANEL_QC)
    with pytest.raises(ValueError, match=r"Pass its RNA modality saved as .h5ad"):
        pf.bench.build([tmp_path / "cite.h5mu"], qc=PANEL_QC)
    with pytest.raises(ValueError, match="is an existing file: pass a folder"):
        pf.bench.build([path], qc=PANEL_QC, out=path)


def test_build_reads_a_single_path_as_one_file(tmp_path):
    path = _toy_file(tmp_path)
    bench = pf.bench.build(str(path), label_key="cell_type", qc=PANEL_QC)
    assert bench.n_obs == 40
    assert pf.bench.read_manifest(bench)["parameters"]["files"] == ["toy.h5ad"]


def test_test_groups_of_a_dataset_split_by_cells_are_an_error(tmp_path):
    path = _toy_file(tmp_path, donors=True)
    with pytest.raises(ValueError, match="cannot be held out"):
        pf.bench.build([path], label_key="cell_type", keep={"donor": ["d1"]}, qc=PANEL_QC, test_groups=["toy:d1"])


@pytest.mark.parametrize(
    ("toy", "option", "message"),
    [
        (
            {"status": "DBL"},
            {"keep": {"status": ["SNG"]}, "qc": PANEL_QC},
            r"toy.h5ad: the keep filter \{'status': \['SNG'\]\} removed every cell",
        ),
        (
            {"rate": 0.1},
            {"qc": pf.bench.QCThresholds(min_genes=10, min_cells=1)},
            r"toy.h5ad: QC removed every cell \(40 cells; removed by \{'min_genes': 40\}, thresholds \{'min_genes': 10",
        ),
        (
            {"rate": 0.02},
            {"qc": pf.bench.QCThresholds(min_genes=0, min_cells=5)},
            r"toy.h5ad: QC removed every gene \(min_cells=5",
        ),
    ],
)
def test_a_file_emptied_by_keep_or_qc_names_the_file_and_step(tmp_path, toy, option, message):
    files = [_toy_file(tmp_path, "other"), _toy_file(tmp_path, **toy)]
    with pytest.raises(ValueError, match=message) as error:
        pf.bench.build(files, label_key="cell_type", **option)
    assert "share no gene" not in str(error.value)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        # a value of a column other than the one the file is split by, or the file itself
        ({"test_groups": ["toy:b1"]}, r"test_groups \['toy:b1'\] are not groups.*\(toy: donor column 'donor'\)"),
        ({"test_groups": ["toy"]}, r"test_groups \['toy'\] are not groups of the inputs.*'toy:d1', 'toy:d2', 'toy:d3'"),
        (
            {"test_groups": ["toy:d3"], "keep": {"donor": ["d1", "d2"]}},
            r"\['toy:d3'\] lose every cell to the keep filter or to missing labels",
        ),
        ({"test_groups": ["toy:d1", "toy:d2", "toy:d3"]}, r"hold every group of the inputs: nothing is left to train"),
    ],
)
def test_test_groups_are_checked_against_the_split_groups_before_any_work(tmp_path, monkeypatch, option, message):
    path = _toy_file(tmp_path, donors=3, batches=True)

    def no_work(*args, **kwargs):
        raise AssertionError("a file was processed before the test groups were checked")

    monkeypatch.setattr("panfoma_sc.bench._build.harmonize_genes", no_work)
    with pytest.raises(ValueError, match=message):
        pf.bench.build([path], label_key="cell_type", qc=PANEL_QC, **option)


def test_a_test_group_that_qc_removes_is_named_with_the_filter(tmp_path):
    rng = np.random.default_rng(0)
    adata = ad.AnnData(rng.poisson(2.0, (60, 30)).astype(np.float32))
    adata.var_names = [f"GENE{i}" for i in range(30)]
    adata.obs["cell_type"] = np.tile(["a", "b"], 30)
    adata.obs["donor"] = np.repeat(["d1", "d2", "d3"], 20)
    adata.X[40:, 5:] = 0  # d3's cells detect at most 5 genes
    path = tmp_path / "toy.h5ad"
    adata.write_h5ad(path)
    qc = pf.bench.QCThresholds(min_genes=10, min_cells=1)
    with pytest.raises(ValueError, match=r"toy.h5ad: QC removed every cell of test_groups \['toy:d3'\].*min_genes"):
        pf.bench.build([path], label_key="cell_type", qc=qc, test_groups=["toy:d3"])
    bench = pf.bench.build([path], label_key="cell_type", qc=qc, test_groups=["toy:d2"])
    assert set(bench.obs.loc[bench.obs["split"] == "test", "split_group"]) == {"toy:d2"}


def test_bad_files_are_refused_before_any_work(tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("a file was processed before the inputs were checked")

    monkeypatch.setattr("panfoma_sc.bench._build.harmonize_genes", no_work)
    with pytest.raises(ValueError, match=r"files=123: pass an .h5ad file's path or a list of paths"):
        pf.bench.build(123)
    (tmp_path / "a").mkdir()
    first, second = _toy_file(tmp_path), _toy_file(tmp_path / "a")
    with pytest.raises(ValueError, match=r"have the same name: a file's name .* names its dataset and split groups"):
        pf.bench.build([first, second], qc=PANEL_QC)
    text = tmp_path / "counts.h5ad"
    text.write_text("gene,cell1\n")
    with pytest.raises(ValueError, match=r"is not an .h5ad \(HDF5\) file"):
        pf.bench.build([first, text], qc=PANEL_QC)
    empty = tmp_path / "empty.h5ad"
    ad.AnnData(np.zeros((0, 5), dtype=np.float32)).write_h5ad(empty)
    with pytest.raises(ValueError, match=r"empty.h5ad holds 0 cells x 5 genes"):
        pf.bench.build([first, empty], qc=PANEL_QC)
    unlabelled = ad.read_h5ad(first)
    unlabelled.obs["cell_type"] = np.nan
    unlabelled.write_h5ad(tmp_path / "unlabelled.h5ad")
    with pytest.raises(ValueError, match=r"unlabelled.h5ad: none of its 40 cells has a label in 'cell_type'"):
        pf.bench.build([first, tmp_path / "unlabelled.h5ad"], label_key="cell_type", qc=PANEL_QC)
    with pytest.raises(FileNotFoundError, match=r"gene_table 'nope.csv' does not exist"):
        pf.bench.build([first], gene_table="nope.csv", qc=PANEL_QC)
    with pytest.raises(ValueError, match=r"holds no Ensembl gene ID in its first column"):
        pf.bench.build([first], gene_table=text, qc=PANEL_QC)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1.5, r"scaled.h5ad: adata.X has negative values \(1 value, .*\): .*pass the layer holding raw counts"),
        (np.nan, r"scaled.h5ad: adata.X contains NaN or infinite values"),
    ],
)
def test_scaled_or_nan_expression_is_refused_naming_the_file(tmp_path, value, message):
    adata = ad.read_h5ad(_toy_file(tmp_path))
    adata.X[0, 0] = value
    adata.write_h5ad(tmp_path / "scaled.h5ad")
    with pytest.raises(ValueError, match=message):
        pf.bench.build([tmp_path / "scaled.h5ad"], label_key="cell_type", qc=PANEL_QC)


def test_build_reads_the_expression_of_layer_and_runs_count_qc_on_it(tmp_path):
    counts_path = _toy_file(tmp_path, donors=True)
    adata = ad.read_h5ad(counts_path)
    adata.layers["counts"] = adata.X.copy()
    adata.X = np.log1p(adata.X / np.maximum(adata.X.sum(axis=1, keepdims=True), 1) * 1e4)
    adata.uns["source"] = {"x_is_integer": "False"}  # the shared data's flag describes X, not the layer
    adata.write_h5ad(tmp_path / "lognorm.h5ad")
    from_x = pf.bench.build([tmp_path / "lognorm.h5ad"], label_key="cell_type", qc=PANEL_QC)
    assert set(from_x.obs["x_kind"]) == {"log"}
    from_layer = pf.bench.build([tmp_path / "lognorm.h5ad"], label_key="cell_type", layer="counts", qc=PANEL_QC)
    assert set(from_layer.obs["x_kind"]) == {"counts"}
    assert not from_layer.layers
    expected = pf.bench.build([counts_path], label_key="cell_type", qc=PANEL_QC)
    np.testing.assert_array_equal(
        np.asarray(from_layer.X.todense() if hasattr(from_layer.X, "todense") else from_layer.X),
        np.asarray(expected.X.todense() if hasattr(expected.X, "todense") else expected.X),
    )
    manifest = pf.bench.read_manifest(from_layer)
    assert manifest["parameters"]["layer"] == "counts"
    assert not any("not raw counts" in flag for flag in manifest["flags"])


def test_a_layer_missing_from_a_file_is_refused_before_any_work(tmp_path, monkeypatch):
    first = _toy_file(tmp_path, "first")
    adata = ad.read_h5ad(first)
    adata.layers["counts"] = adata.X.copy()
    adata.write_h5ad(tmp_path / "with_layer.h5ad")

    def no_work(*args, **kwargs):
        raise AssertionError("a file was processed before the layer was checked")

    monkeypatch.setattr("panfoma_sc.bench._build.harmonize_genes", no_work)
    with pytest.raises(KeyError, match=r"layer='counts' is not a layer of first.h5ad \(its layers: \[\]\)"):
        pf.bench.build([tmp_path / "with_layer.h5ad", first], label_key="cell_type", layer="counts", qc=PANEL_QC)


def test_build_replaces_an_earlier_build_whole_or_not_at_all(tmp_path, monkeypatch, caplog):
    path = _data_file("pancreas_3batches_beta_ductal.h5ad")
    options = {"label_key": "cell_type", "qc": pf.bench.QCThresholds(min_genes=50), "max_cells": 40, "out": tmp_path}
    pf.bench.build([path], seed=1, **options)
    before = {name: (tmp_path / name).read_bytes() for name in ("benchmark.h5ad", "manifest.json")}

    def failing_manifest(*args, **kwargs):
        raise OSError("disk full")

    # the manifest's write fails after the new h5ad was written: the earlier build stays, both files of it
    monkeypatch.setattr("panfoma_sc.bench._build.write_manifest", failing_manifest)
    with pytest.raises(OSError, match="disk full"):
        pf.bench.build([path], seed=2, **options)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["benchmark.h5ad", "manifest.json"]

    monkeypatch.undo()
    with caplog.at_level("WARNING", logger="panfoma_sc.bench._build"):
        pf.bench.build([path], seed=2, **options)
    assert "Replacing the earlier benchmark build" in caplog.text
    assert pf.bench.read_manifest(tmp_path / "manifest.json")["seed"] == 2


@pytest.mark.parametrize("missing", [np.nan, "", "unknown"])
def test_a_named_donor_column_with_missing_values_is_refused_before_any_work(tmp_path, monkeypatch, missing):
    """Else the file was split by another column without a word, and donors landed in training and test."""
    path = _toy_file(tmp_path, donors=4, batches=True)
    adata = ad.read_h5ad(path)
    adata.obs["donor"] = adata.obs["donor"].astype(object)
    adata.obs.iloc[5, adata.obs.columns.get_loc("donor")] = missing
    adata.write_h5ad(path)

    def no_work(*args, **kwargs):
        raise AssertionError("a file was processed before the donors were checked")

    monkeypatch.setattr("panfoma_sc.bench._build.harmonize_genes", no_work)
    expected = r"toy\.h5ad: 1 of its 40 labelled cells have no value in donor_key='donor' .* Fill in their value"
    with pytest.raises(ValueError, match=expected):
        pf.bench.build([path], label_key="cell_type", donor_key="donor", batch_key="batch", qc=PANEL_QC)


def test_a_named_batch_column_that_splits_a_file_must_be_complete(tmp_path):
    path = _toy_file(tmp_path, batches=True)
    adata = ad.read_h5ad(path)
    adata.obs.iloc[0, adata.obs.columns.get_loc("batch")] = np.nan
    adata.write_h5ad(path)
    with pytest.raises(ValueError, match=r"1 of its 40 labelled cells have no value in batch_key='batch'"):
        pf.bench.build([path], label_key="cell_type", batch_key="batch", qc=PANEL_QC)
