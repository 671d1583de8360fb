"""The benchmark end to end on small real data, through the command line (fast methods, tiny subsamples)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import panfoma_sc as pf
from panfoma_sc.bench import TASKS, TaskResult
from panfoma_sc.bench._harness import _check_packages
from panfoma_sc.cli import EXIT_OK, main


@pytest.fixture
def tiny_config(tmp_path, tiny_checkpoint) -> Path:
    folder = os.environ.get("PANFOMA_DATA_DIR")
    needed = ["pbmc_sorted_9types_mudan_2115cells.h5ad", "lung_celllines_3cl_celseq2_dropseq.h5ad"]
    if not folder or not all((Path(folder) / n).is_file() for n in needed):
        pytest.skip("PANFOMA_DATA_DIR with the sorted-PBMC and lung files is needed for the end-to-end benchmark")
    config = {
        "run": {"seed": 0, "model": str(tiny_checkpoint), "data_dir": folder, "n_boot": 50},
        "tasks": {
            "annotation": {"methods": ["pca_knn", "logreg_genes", "scanvi", "panfoma_knn"]},
            # one embedding width keeps scib-metrics to one jax compilation (PanFoMa is exercised by annotation)
            "integration": {"methods": ["pca", "harmony"]},
        },
        "datasets": [
            {
                "name": "sorted",
                "files": ["pbmc_sorted_9types_mudan_2115cells.h5ad"],
                "tasks": ["annotation"],
                "label_key": "cell_type",
                "max_cells": 60,
            },
            {
                "name": "lung",
                "files": ["lung_celllines_3cl_celseq2_dropseq.h5ad"],
                "tasks": ["integration", "pan_cancer"],
                "label_key": "cell_line",
                "batch_key": "batch",
                "keep": {"demuxlet_cls": ["SNG"]},
                "max_cells": 50,
                "methods": {"pan_cancer": ["pca_logreg"]},
            },
        ],
    }
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(config))
    return path


def test_bench_run_and_report(tiny_config, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bench", "run", str(tiny_config), "--out", str(out)]) == EXIT_OK
    results = pd.read_csv(out / "results.csv")
    ok = results[results["status"] == "ok"]
    assert set(ok["method"]) >= {"pca_knn", "logreg_genes", "panfoma_knn", "pca", "pca_logreg"}
    # optional baselines run when their package is installed, else they are recorded as skipped with the reason
    for method, package in (("harmony", "harmonypy"), ("scanvi", "scvi-tools")):
        row = results[results["method"] == method].iloc[0]
        assert row["status"] == "ok" or (row["status"] == "skipped" and package in row["reason"])
    annotation = ok[ok["task"] == "annotation"]
    assert annotation[["accuracy", "macro_f1"]].notna().all().all()
    assert (annotation["accuracy_low"] <= annotation["accuracy"]).all()
    assert (annotation["accuracy"] <= annotation["accuracy_high"]).all()
    assert (annotation["ci_unit"] == "cells").all()  # one donor: split by cells, said so
    integration = ok[ok["task"] == "integration"]
    assert integration[["avg_bio", "avg_batch", "total"]].notna().all().all()
    assert (ok["seconds"] > 0).all()
    assert (ok["peak_memory_mb"] >= 0).all()
    # pan-cancer: leave one group (here: protocol) out
    assert ok.loc[ok["task"] == "pan_cancer", "cv"].eq("leave_one_group_out").all()
    for name in ("report.md", "results.md", "per_class_f1.csv", "run.json", "manifests/sorted.json"):
        assert (out / name).is_file(), name
    for figure in (
        "results_table_annotation.png",
        "results_table_integration.png",
        "per_class_f1_annotation_sorted.png",
    ):
        assert (out / "figures" / figure).stat().st_size > 1000
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["sha256"]
    assert run["datasets"][0]["split_unit"] == "cells"
    capsys.readouterr()
    (out / "report.md").unlink()
    assert main(["bench", "report", str(out)]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "## Annotation" in printed
    assert "## Integration" in printed
    assert (out / "report.md").read_text().strip() == printed.strip()


def _toy_config(tmp_path, **dataset) -> dict:
    """A config of one small toy file run by the ``forgetful`` task (no model, no real method)."""
    rng = np.random.default_rng(0)
    adata = ad.AnnData(rng.poisson(1.0, (40, 30)).astype(np.float32))
    adata.obs["cell_type"] = np.repeat(["a", "b"], 20)
    adata.write_h5ad(tmp_path / "toy.h5ad")
    entry = {
        "name": "toy",
        "files": ["toy.h5ad"],
        "tasks": ["forgetful"],
        "label_key": "cell_type",
        "qc": {"min_genes": 1, "min_cells": 1},
        "methods": {"forgetful": ["kept", "dropped"]},
    }
    return {
        "run": {"model": str(tmp_path / "no_model.safetensors"), "data_dir": str(tmp_path)},
        "datasets": [entry | dataset],
    }


def _forgetful(ctx, spec, methods):  # a task that returns a row for its first method only
    return TaskResult(rows=[{"task": "forgetful", "method": methods[0], "status": "ok", "reason": ""}])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"files": ["toy.h5ad", "misspelt.h5ad"]}, r"Input files not found in .*\{'toy': \['misspelt.h5ad'\]\}"),
        ({"data_dir": "no-data"}, r"data_dir .*no-data' is not a folder"),
    ],
)
def test_missing_data_stops_the_run_before_any_work(tmp_path, monkeypatch, refused_run, change, message):
    monkeypatch.setitem(TASKS, "forgetful", _forgetful)
    config = _toy_config(tmp_path, **{k: v for k, v in change.items() if k != "data_dir"})
    if "data_dir" in change:
        config["run"]["data_dir"] = change["data_dir"]
    assert re.search(message, refused_run(config))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"label_key": "celltype"}, r"Dataset 'second': label_key='celltype' is not a column of toy.h5ad's obs"),
        ({"test_groups": ["toy:d1"]}, r"Dataset 'second': test_groups \['toy:d1'\] are not groups of the inputs"),
    ],
)
def test_a_mistake_in_a_later_dataset_stops_the_run_before_any_work(
    tmp_path, monkeypatch, refused_run, change, message
):
    def no_work(*args, **kwargs):
        raise AssertionError("a dataset was built before every dataset was checked")

    monkeypatch.setitem(TASKS, "forgetful", _forgetful)
    monkeypatch.setattr("panfoma_sc.bench._harness.build", no_work)
    monkeypatch.setattr("panfoma_sc.bench._harness._load_model", no_work)
    config = _toy_config(tmp_path)
    config["datasets"].append(config["datasets"][0] | {"name": "second"} | change)
    assert re.search(message, refused_run(config))


def test_a_run_removes_the_outputs_of_an_earlier_run_only(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "forgetful", _forgetful)
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "manifests").mkdir()
    for name in ("figures/umap_old.png", "figures/per_class_f1_annotation_old.png", "manifests/old.json"):
        (out / name).write_bytes(b"from an earlier run")
    (out / "per_class_f1.csv").write_text("method,class,f1,n_cells,dataset,task\nx,a,1.0,3,old,annotation\n")
    (out / "notes.txt").write_text("mine")
    (out / "figures" / "sketch.svg").write_text("mine")
    pf.bench.run(_toy_config(tmp_path, umap=True), out)
    assert not (out / "figures" / "umap_old.png").exists()
    assert not (out / "figures" / "per_class_f1_annotation_old.png").exists()
    assert not (out / "manifests" / "old.json").exists()
    assert (out / "manifests" / "toy.json").is_file()
    assert (out / "notes.txt").read_text() == "mine"  # not a run's file: left alone
    assert (out / "figures" / "sketch.svg").read_text() == "mine"
    report = (out / "report.md").read_text()
    assert "old" not in report


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("nope-model", r"\[run\] model = 'nope-model': Unknown model 'nope-model'\. Known models: .*Nothing was run"),
        ("missing.safetensors", r"\[run\] model = 'missing.safetensors': 'missing.safetensors' is not a checkpoint"),
    ],
)
def test_a_model_that_cannot_be_found_stops_the_run_before_any_work(tmp_path, monkeypatch, refused_run, model, message):
    monkeypatch.setitem(TASKS, "forgetful", _forgetful)
    config = _toy_config(tmp_path, methods={"forgetful": ["panfoma_kept"]})
    config["run"]["model"] = model
    assert re.search(message, refused_run(config))
    config["datasets"][0]["methods"] = {"forgetful": ["kept"]}  # no PanFoMa method: the model is not needed
    pf.bench.run(config, tmp_path / "out")


def test_a_run_that_stops_leaves_the_earlier_run_as_it_was(tmp_path, monkeypatch):
    """Outputs replace an earlier run's only when the run has finished; what a stopped run wrote is kept aside."""
    monkeypatch.setitem(TASKS, "forgetful", _forgetful)
    out = tmp_path / "out"
    pf.bench.run(_toy_config(tmp_path), out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert Path("report.md") in before

    def stops_on_the_second_dataset(ctx, spec, methods):
        if stops_on_the_second_dataset.calls:
            raise ValueError("QC removed every cell of the second dataset")
        stops_on_the_second_dataset.calls += 1
        return _forgetful(ctx, spec, methods)

    stops_on_the_second_dataset.calls = 0
    monkeypatch.setitem(TASKS, "forgetful", stops_on_the_second_dataset)
    config = _toy_config(tmp_path)
    config["datasets"].append(config["datasets"][0] | {"name": "second"})
    with pytest.raises(ValueError, match="QC removed every cell"):
        pf.bench.run(config, out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    staging = tmp_path / ".out.partial"
    assert (staging / "manifests" / "toy.json").is_file()  # the first dataset's outputs, kept aside
    assert pd.read_csv(staging / "results.csv")["dataset"].unique().tolist() == ["toy"]
    monkeypatch.setitem(TASKS, "forgetful", _forgetful)
    pf.bench.run(config, out)
    assert not staging.exists()
    assert (out / "manifests" / "second.json").is_file()


def test_out_pointing_to_a_file_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(TASKS, "forgetful", _forgetful)
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(_toy_config(tmp_path)))
    (tmp_path / "taken").write_text("a file")
    assert main(["bench", "run", str(path), "--out", str(tmp_path / "taken")]) == 2
    assert "is a file: pass a folder" in capsys.readouterr().err


def test_bench_report_without_results_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", "report", str(tmp_path)]) == 2
    assert "bench run" in capsys.readouterr().err


def test_a_method_the_task_drops_is_recorded_as_failed(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(TASKS, "forgetful", _forgetful)
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(_toy_config(tmp_path)))
    assert main(["bench", "run", str(path), "--out", str(tmp_path / "out")]) == EXIT_OK
    results = pd.read_csv(tmp_path / "out" / "results.csv").set_index("method")
    assert results.loc["kept", "status"] == "ok"
    assert results.loc["dropped", "status"] == "failed"
    assert "no result" in results.loc["dropped", "reason"]
    assert "1 rows failed (their reason is in results.csv): toy/forgetful/dropped" in capsys.readouterr().err
    # --strict: a failed method fails the command (the results are written all the same)
    assert main(["bench", "run", str(path), "--out", str(tmp_path / "strict"), "--strict"]) == 1
    assert (tmp_path / "strict" / "results.csv").is_file()


def test_a_task_whose_package_is_missing_stops_the_run_before_any_work(tmp_path, monkeypatch, refused_run):
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def without_scib(name, *args, **kwargs):
        return None if name == "scib_metrics" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", without_scib)
    config = _toy_config(tmp_path, tasks=["integration"], batch_key="cell_type", methods={"integration": ["pca"]})
    message = refused_run(config)
    assert "The integration task scores the embeddings with scib-metrics, which is not installed" in message
    assert "pip install 'panfoma-sc[bench]'" in message
    assert "Nothing was run" in message
    # WNN is scored on its graph alone: a multi-omics task of WNN only needs no scib-metrics
    paired = {"name": "paired", "files": ["paired.h5mu"], "tasks": ["multiomics"], "methods": {"multiomics": ["wnn"]}}
    _check_packages({"datasets": [paired]})
    paired["methods"]["multiomics"] = ["wnn", "rna_pca"]
    with pytest.raises(ModuleNotFoundError, match="The multiomics task scores the embeddings with scib-metrics"):
        _check_packages({"datasets": [paired]})


@pytest.mark.parametrize(
    ("batches", "message"),
    [
        (
            {"toy.h5ad": None, "other.h5ad": ["b1", "b2"]},
            r"Dataset 'toy': batch_key='batch' is not a column of \['toy.h5ad'\], and the integration task needs "
            r"every cell's batch\. Add the column",
        ),
        (
            {"toy.h5ad": ["b1"], "other.h5ad": ["b1"]},
            r"batch_key='batch' holds a single batch \(\['b1'\]\) .* drop 'integration' from this dataset's tasks",
        ),
    ],
)
def test_integration_without_two_known_batches_stops_the_run_before_any_work(
    tmp_path, monkeypatch, refused_run, batches, message
):
    def no_work(*args, **kwargs):
        raise AssertionError("a dataset was built before its batches were checked")

    monkeypatch.setattr("panfoma_sc.bench._harness.build", no_work)
    config = _toy_config(
        tmp_path,
        files=list(batches),
        tasks=["integration"],
        batch_key="batch",
        methods={"integration": ["pca"]},
    )
    rng = np.random.default_rng(1)
    for name, values in batches.items():  # written after the config, which writes a toy.h5ad of its own
        adata = ad.AnnData(rng.poisson(1.0, (40, 30)).astype(np.float32))
        adata.obs["cell_type"] = np.repeat(["a", "b"], 20)
        if values is not None:
            adata.obs["batch"] = np.resize(values, 40)
        adata.write_h5ad(tmp_path / name)
    assert re.search(message, refused_run(config))


def test_a_gene_table_named_in_the_config_maps_ensembl_ids(tmp_path, monkeypatch):
    """Files by symbol and by Ensembl ID share genes once the config names the table (not PANFOMA_DATA_DIR's)."""
    from panfoma_sc.bench._harness import _gene_table

    monkeypatch.setattr(pf.settings, "data_dir", None)
    rng = np.random.default_rng(2)
    symbols = [f"GENE{i}" for i in range(30)]
    ids = [f"ENSG{i:011d}" for i in range(30)]
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "ids.csv").write_text("".join(f"{e}.3,{s}\n" for e, s in zip(ids, symbols, strict=True)))
    for name, genes in (("by_symbol", symbols), ("by_id", ids)):
        adata = ad.AnnData(rng.poisson(1.0, (40, 30)).astype(np.float32))
        adata.var_names = genes
        adata.obs["cell_type"] = np.repeat(["a", "b"], 20)
        adata.write_h5ad(tmp_path / f"{name}.h5ad")
    dataset = {"name": "two", "files": ["by_symbol.h5ad", "by_id.h5ad"], "gene_table": "tables/ids.csv"}
    assert _gene_table(dataset, tmp_path) == tmp_path / "tables" / "ids.csv"
    files = [tmp_path / f for f in dataset["files"]]
    qc = pf.bench.QCThresholds(min_genes=1, min_cells=1)
    built = pf.bench.build(files, label_key="cell_type", gene_table=_gene_table(dataset, tmp_path), qc=qc)
    assert built.n_vars == 30
    with pytest.raises(ValueError, match=r"share no gene after harmonization.*give a gene table"):
        pf.bench.build(files, label_key="cell_type", gene_table=_gene_table({}, tmp_path), qc=qc)


def test_a_missing_gene_table_stops_the_run_before_any_work(tmp_path, monkeypatch, refused_run):
    monkeypatch.setitem(TASKS, "forgetful", _forgetful)
    config = _toy_config(tmp_path, gene_table="tables/absent.csv")
    assert re.search(r"Input files not found in .*\{'toy': \['tables/absent.csv'\]\}", refused_run(config))


def test_a_run_keeps_jax_from_reserving_the_gpu_unless_told_otherwise(tmp_path, monkeypatch):
    seen = []

    def records_the_setting(ctx, spec, methods):
        seen.append(os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"))
        return _forgetful(ctx, spec, methods)

    monkeypatch.setitem(TASKS, "forgetful", records_the_setting)
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    pf.bench.run(_toy_config(tmp_path), tmp_path / "out")
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "true")  # the user's own choice stays
    pf.bench.run(_toy_config(tmp_path), tmp_path / "out")
    assert seen == ["false", "true"]
