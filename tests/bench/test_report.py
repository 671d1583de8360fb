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


def test_summary_means_are_over_the_datasets_every_method_ran():
    """A method that failed on a hard dataset must not rank above one that ran it (review of 2026-11-29)."""
    from panfoma_sc.bench._figures import summary_table

    rows = [
        ("easy", "panfoma", 0.9),
        ("easy", "logreg", 0.8),
        ("hard", "logreg", 0.4),  # panfoma failed here: no ok row
    ]
    results = pd.DataFrame(
        [{"dataset": d, "task": "annotation", "method": m, "status": "ok", "macro_f1": f} for d, m, f in rows]
        + [{"dataset": "hard", "task": "annotation", "method": "panfoma", "status": "failed", "macro_f1": np.nan}]
    )
    table, columns, title = summary_table(results, "annotation")
    assert table.loc["panfoma", "mean"] == pytest.approx(0.9)
    assert table.loc["logreg", "mean"] == pytest.approx(0.8)  # not 0.6: "hard" is left out of every mean
    assert columns[-1][1] == "Mean of 1 shared"
    assert title.endswith("; mean over the 1 of 2 datasets every method ran")
    integration = results.assign(task="integration", total=results["macro_f1"])
    table, _, title = summary_table(integration, "integration")
    assert table.loc["logreg", "total"] == pytest.approx(0.8)
    assert title == "Integration (mean over the 1 of 2 datasets every method ran)"
    everywhere = results[results["dataset"] == "easy"]
    assert summary_table(everywhere, "annotation")[2] == "Annotation: macro-F1 on test cells"


def test_notes_of_scored_rows_are_shown_once_per_dataset(tmp_path):
    """A score whose test cells include classes never trained on is read differently: the report says so."""
    note = "test: test classes absent from training ['nk']"
    rows = [ROW | {"reason": note}, ROW | {"method": "panfoma_knn", "reason": note}, ROW | {"dataset": "clean"}]
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    report = pf.bench.render_report(tmp_path)
    assert "## Notes on scored results" in report
    assert report.count("test classes absent from training") == 1
    assert "| clean |" not in report.split("## Notes on scored results")[1]
