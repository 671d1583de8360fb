from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

import panfoma_sc as pf


def _toy_counts() -> AnnData:
    """40 cells x 300 genes of known quality problems: 3 near-empty cells, 1 huge cell, 2 mitochondrial ones."""
    rng = np.random.default_rng(0)
    x = rng.poisson(1.0, size=(40, 300)).astype(np.float32)
    x[:3] = 0
    x[:3, :5] = 1  # 5 genes detected
    x[3] *= 60  # doublet-like total
    names = [f"GENE{i}" for i in range(297)] + ["MT-CO1", "MT-ND1", "MT-ATP6"]
    x[4:6] = rng.poisson(0.5, size=(2, 300))
    x[4:6, -3:] = 50  # half of the counts mitochondrial, total counts ordinary
    x[:, 10] = 0
    x[7, 10] = 1  # gene 10 seen in one cell only
    return AnnData(sp.csr_matrix(x), var=pd.DataFrame(index=names))


def test_qc_removals_add_up():
    adata = _toy_counts()
    thresholds = pf.bench.QCThresholds(min_genes=20, max_mito_fraction=0.2, min_cells=3, mito_min_file_genes=100)
    out, report = pf.bench.quality_control(adata, thresholds)
    removed = report["cells_removed"]
    assert removed == {"min_genes": 3, "max_counts_mads": 1, "max_mito_fraction": 2}
    assert report["n_cells_in"] == report["n_cells_out"] + sum(removed.values()) == 40
    assert report["n_genes_in"] == report["n_genes_out"] + report["genes_removed_min_cells"]
    assert "GENE10" not in out.var_names
    assert out.n_obs == 34
    assert adata.n_obs == 40  # input untouched


def test_count_filters_are_skipped_for_non_counts_and_panels():
    adata = _toy_counts()
    logged = adata.copy()
    logged.X = logged.X.log1p()
    _, report = pf.bench.quality_control(logged, pf.bench.QCThresholds(min_genes=20), counts=False)
    assert set(report["filters_skipped"]) == {"max_counts_mads", "max_mito_fraction"}
    assert report["cells_removed"] == {"min_genes": 3}
    # 300 genes is a panel: the MT- share is not comparable to a transcriptome's
    _, report = pf.bench.quality_control(adata, pf.bench.QCThresholds(min_genes=20))
    assert "gene panel" in report["filters_skipped"]["max_mito_fraction"]
    assert pf.bench.expression_kind(adata) == ("counts", "values")
    assert pf.bench.expression_kind(logged)[0] == "log"


def test_harmonize_maps_ensembl_ids_case_aliases_and_merges_duplicates():
    table = {"ENSG00000141510": "TP53", "ENSG00000111640": "GAPDH"}
    names = ["ENSG00000141510.17", "tp53", "ensg00000111640", "ENSG99999999999", "Sept7", "CD4"]
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    adata = AnnData(x, var=pd.DataFrame(index=names))
    out, report = pf.bench.harmonize_genes(adata, gene_table=table, aliases={"SEPT7": "SEPTIN7"})
    assert list(out.var_names) == ["TP53", "GAPDH", "ENSG99999999999", "SEPTIN7", "CD4"]
    np.testing.assert_allclose(out.X[:, 0], x[:, 0] + x[:, 1])  # TP53 from its ID and its lower-case symbol
    assert report["n_ensembl_mapped"] == 2
    assert report["n_ensembl_unmapped"] == 1
    assert report["n_version_suffix_stripped"] == 1
    assert report["n_upper_cased"] == 2
    assert report["n_alias_renamed"] == 1
    assert report["n_duplicate_columns_merged"] == 1
    assert report["n_genes_in"] - report["n_duplicate_columns_merged"] == report["n_genes_out"]


def test_read_gene_table(tmp_path):
    path = tmp_path / "genes.csv"
    path.write_text("ENSG00000141510.17,TP53\nENSG00000111640,GAPDH\n")
    assert pf.bench.read_gene_table(path) == {"ENSG00000141510": "TP53", "ENSG00000111640": "GAPDH"}


@pytest.mark.parametrize("bad", [{"join": "left"}])
def test_build_rejects_bad_arguments(tmp_path, bad):
    path = tmp_path / "a.h5ad"
    _toy_counts().write_h5ad(path)
    with pytest.raises(ValueError, match="join"):
        pf.bench.build([path], **bad)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"min_genes": -1}, r"min_genes=-1\): use a number >= 0"),
        ({"min_cells": -3}, r"min_cells=-3\)"),
        ({"max_counts_mads": -0.5}, r"max_counts_mads=-0.5\)"),
        ({"max_mito_fraction": 1.5}, r"max_mito_fraction=1.5\): use a fraction in \[0, 1\]"),
        ({"max_mito_fraction": -0.1}, r"max_mito_fraction=-0.1\)"),
    ],
)
def test_invalid_qc_thresholds_are_refused(option, message):
    with pytest.raises(ValueError, match=message):
        pf.bench.QCThresholds(**option)
