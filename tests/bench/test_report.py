"""``render_report`` / ``panfoma bench report``: what a run's folder must hold, and the method labels."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import panfoma_sc as pf
from panfoma_sc.bench._baselines import MethodContext
from panfoma_sc.cli import EXIT_BAD_INPUT, EXIT_OK, main

ROW = {
    "dataset": "toy",
    "task": "annotation",
    "method": "pca_knn",
    "status": "ok",
    "reason": "",
    "accuracy": 0.9,
    "macro_f1": 0.8,
    "n_test_cells": 10,
    "seconds": 0.5,
    "peak_memory_mb": 1.0,
}


def test_a_folder_with_only_results_csv_renders(tmp_path, capsys):
    pd.DataFrame([ROW]).to_csv(tmp_path / "results.csv", index=False)
    assert main(["bench", "report", str(tmp_path)]) == EXIT_OK
    assert "## Annotation" in capsys.readouterr().out
    assert (tmp_path / "report.md").is_file()


@pytest.mark.parametrize("content", ["", "dataset,task,method,status\n"])
def test_an_empty_results_csv_is_a_clear_error(tmp_path, capsys, content):
    (tmp_path / "results.csv").write_text(content)
    assert main(["bench", "report", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "holds no benchmark results" in capsys.readouterr().err


def test_the_label_states_the_components_used(tmp_path):
    rows = [ROW | {"n_comps": 20}, ROW | {"dataset": "other", "method": "pca", "task": "integration", "n_comps": 7}]
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    report = pf.bench.render_report(tmp_path)
    assert "| toy | PCA(20) HVG + kNN |" in report
    assert "| other | PCA(7) HVG |" in report
    assert "PCA(50)" not in report


def test_method_label():
    from panfoma_sc.bench._baselines import method_label

    assert method_label("pca_logreg", [20]) == "PCA(20) HVG + LogReg"
    assert method_label("pca_logreg", ["19-20", np.nan]) == "PCA(19-20) HVG + LogReg"
    assert method_label("pca_logreg") == "PCA HVG + LogReg"  # unknown: no number claimed
    assert method_label("rna_pca", [30.0]) == "RNA PCA(30)"
    assert method_label("pca_concat", [40]) == "PCA concat. (RNA + protein)"
    assert method_label("panfoma_knn", [20]) == "PanFoMa zero-shot + kNN"


def test_pca_components_are_capped_by_the_training_cells_and_recorded():
    rng = np.random.default_rng(0)
    adata = ad.AnnData(rng.poisson(2.0, (24, 40)).astype(np.float32))
    adata.obs["cell_type"] = np.tile(["a", "b"], 12)
    adata.obs["split_group"] = "toy"
    adata.obs["x_kind"] = "counts"
    adata.obs["split"] = np.repeat(["train", "test"], [12, 12])
    ctx = MethodContext(adata, options={"n_comps": 20, "seed": 0})
    spec = {"label_key": "cell_type", "n_boot": 5, "split_unit": "cells"}
    (row,) = pf.bench.TASKS["annotation"](ctx, spec, ["pca_knn"]).rows
    assert row["status"] == "ok", row["reason"]
    assert row["n_comps"] == 11  # 12 training cells: at most 11 components, not the 20 asked for
