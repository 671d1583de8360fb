"""The multi-omics task: paired CITE-seq build, every method end to end through the command line, the report."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import panfoma_sc as pf
from panfoma_sc.bench._baselines import MethodContext
from panfoma_sc.cli import EXIT_OK, main

H5MU = "pbmc_citeseq_10x_5k_10k_400cells.h5mu"
METHODS = [
    "rna_pca",
    "pca_concat",
    "wnn",
    "totalvi",
    "multivi",
    "panfoma",
    "panfoma_integrated",
    "panfoma_joint",
    "panfoma_late_fusion",
]
#: methods that may be skipped here, and the package whose absence is the only accepted reason
OPTIONAL = {"totalvi": "scvi-tools", "multivi": "scvi-tools"}
#: muon's WNN spends about a minute compiling numba code on its first call, whatever the data size: tested apart
FAST_METHODS = [m for m in METHODS if m != "wnn"]
EMBEDDING_METRICS = ["avg_bio", "nmi", "ari", "asw_label", "avg_batch", "avg_bio_graph"]


@pytest.fixture
def citeseq_file() -> Path:
    folder = os.environ.get("PANFOMA_DATA_DIR")
    if not folder or not (Path(folder) / H5MU).is_file():
        pytest.skip(f"{H5MU} not found: set PANFOMA_DATA_DIR to the shared data folder for the multi-omics task")
    pytest.importorskip("mudata", reason="the multi-omics task needs mudata: pip install 'panfoma-sc[multiomics]'")
    pytest.importorskip("muon", reason="the multi-omics task needs muon: pip install 'panfoma-sc[multiomics]'")
    return Path(folder) / H5MU


def test_build_paired_labels_do_not_depend_on_the_subsample(citeseq_file):
    full = pf.bench.build_paired(citeseq_file)
    small = pf.bench.build_paired(citeseq_file, max_cells=60, seed=1)
    assert set(small.mod) == {"rna", "prot"}
    assert small.n_obs == 60
    assert small.mod["prot"].var["in_every_batch"].sum() == 14  # the antibodies of both 10x panels
    labels = full.obs["gated_label"].astype(str)
    assert (labels.loc[small.obs_names] == small.obs["gated_label"].astype(str)).all()
    assert set(pf.bench.PBMC_CITESEQ_GATES) <= set(labels)
    assert small.obs["batch"].nunique() == 2
    manifest = pf.bench.read_manifest(small)
    assert manifest["split_unit"] == "none"
    assert manifest["inputs"][0]["sha256"]
    assert sum(manifest["labels"].values()) == 60
    assert any("gating" in flag for flag in manifest["flags"])


def test_build_paired_gates_from_a_table_and_names_bad_input(citeseq_file):
    mdata = pf.bench.build_paired(citeseq_file, gates={"T": {"CD3": True}}, max_cells=30)
    assert set(mdata.obs["gated_label"]) <= {"T", "ungated"}
    with pytest.raises(ValueError, match="pbmc_citeseq"):
        pf.bench.build_paired(citeseq_file, gates="no_such_gates")
    with pytest.raises(KeyError, match="donor"):
        pf.bench.build_paired(citeseq_file, batch_key="donor")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"gates": 5}, r"gates=5: name a gate set \(\['pbmc_citeseq'\]\) or give rules"),
        ({"label_key": ["label"]}, r"label_key=\['label'\]: pass a name as a string"),
        ({"qc": {"min_genes": 5}}, r"qc=\{'min_genes': 5\}: pass pf.bench.QCThresholds"),
        ({"max_cells": 0}, r"max_cells=0: use an integer >= 1"),
        ({"seed": "1"}, r"seed='1': use an integer >= 0"),
        ({"layer": ["counts"]}, r"layer=\['counts'\]: name one layer of the RNA modality"),
    ],
)
def test_build_paired_refuses_bad_arguments_before_reading_the_file(citeseq_file, monkeypatch, option, message):
    def no_read(*args, **kwargs):
        raise AssertionError("the file was read before the arguments were checked")

    monkeypatch.setattr("mudata.read_h5mu", no_read)
    with pytest.raises(ValueError, match=message):
        pf.bench.build_paired(citeseq_file, **option)


def test_build_paired_reads_counts_from_a_layer(citeseq_file, tmp_path):
    """An RNA modality with log-normalized X and raw counts in a layer: layer='counts' benchmarks the counts."""
    import mudata as md
    import scanpy as sc

    plain = pf.bench.build_paired(citeseq_file, max_cells=40)
    source = md.read_h5mu(citeseq_file)
    rna = source.mod["rna"]
    rna.layers["counts"] = rna.X.copy()
    sc.pp.normalize_total(rna, target_sum=1e4)
    sc.pp.log1p(rna)
    rna.uns["source"] = {**rna.uns.get("source", {}), "x_is_integer": "False"}  # describes X, as the data README does
    logged = tmp_path / "logged.h5mu"
    source.write(logged)

    from_layer = pf.bench.build_paired(logged, layer="counts", max_cells=40)
    assert (from_layer.obs_names == plain.obs_names).all()
    assert (from_layer.obs["gated_label"] == plain.obs["gated_label"]).all()
    assert abs(from_layer.mod["rna"].X - plain.mod["rna"].X).max() == 0
    assert not from_layer.mod["rna"].layers
    assert set(from_layer.obs["x_kind"]) == {"counts"}
    assert pf.bench.read_manifest(from_layer)["parameters"]["layer"] == "counts"
    from_x = pf.bench.build_paired(logged, max_cells=40)
    assert set(from_x.obs["x_kind"]) == {"log"}  # count-based QC and models skipped
    with pytest.raises(
        KeyError, match=r"layer='raw' is not a layer of logged.h5mu mod\['rna'\] \(its layers: \['counts'\]\)"
    ):
        pf.bench.build_paired(logged, layer="raw")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"layer": "counts"},
            r"Dataset 'citeseq': layer='counts' is not a layer of .*h5mu mod\['rna'\] \(its layers: \[\]\)",
        ),
        (
            {"batch_key": "donor"},
            r"Dataset 'citeseq': batch_key='donor' is neither a column of .*mod\['rna'\].obs \(\['batch'",
        ),
    ],
)
def test_a_paired_dataset_mistake_stops_the_run_before_any_work(
    citeseq_file, monkeypatch, refused_run, change, message
):
    """A paired dataset's layer and batch column are checked from the file's layout before any dataset is built."""

    def no_work(*args, **kwargs):
        raise AssertionError("a dataset was built or a model loaded before every dataset was checked")

    monkeypatch.setattr("panfoma_sc.bench._harness.build_paired", no_work)
    monkeypatch.setattr("panfoma_sc.bench._harness._load_model", no_work)
    monkeypatch.setattr("mudata.read_h5mu", no_work)
    dataset = {"name": "citeseq", "files": [H5MU], "tasks": ["multiomics"], "methods": {"multiomics": ["rna_pca"]}}
    config = {"run": {"data_dir": str(citeseq_file.parent)}, "datasets": [dataset | change]}
    assert re.search(message, refused_run(config))


def test_build_paired_names_the_qc_filter_that_removed_every_cell(citeseq_file):
    with pytest.raises(ValueError, match=r"mod\['rna'\]: QC removed every cell \(\d+ cells; removed by .*min_genes"):
        pf.bench.build_paired(citeseq_file, qc=pf.bench.QCThresholds(min_genes=10**6))


def test_check_paired_input_accepts_what_build_paired_reads(citeseq_file):
    from panfoma_sc.bench._paired import check_paired_input

    for batch_key in ("batch", "tissue", "rna:batch", "prot:batch"):  # modality columns, plain or as mudata pulls them
        check_paired_input(citeseq_file, batch_key=batch_key)
    check_paired_input(citeseq_file, protein="prot")
    with pytest.raises(KeyError, match=r"No protein modality adt in the file \(modalities: \['prot', 'rna'\]\)"):
        check_paired_input(citeseq_file, protein="adt")
    with pytest.raises(KeyError, match=r"No RNA modality RNA"):
        check_paired_input(citeseq_file, rna="RNA")


def test_build_paired_refuses_an_h5ad_naming_build(citeseq_file):
    rna_adt = citeseq_file.with_name(citeseq_file.stem + "_rna_adt.h5ad")
    if not rna_adt.is_file():
        pytest.skip(f"{rna_adt.name} not found in PANFOMA_DATA_DIR")
    with pytest.raises(ValueError, match=r"is not a paired .h5mu file: .* use pf.bench.build for .h5ad"):
        pf.bench.build_paired(rna_adt)


def test_multiomics_task_end_to_end(citeseq_file, tiny_checkpoint, tmp_path, capsys):
    config = {
        "run": {"seed": 0, "model": str(tiny_checkpoint), "data_dir": str(citeseq_file.parent)},
        # a budget small enough for a test: 1 fine-tuning step, 2 scVI epochs, few genes
        "methods": {
            "joint_max_epochs": 1,
            "joint_max_steps": 1,
            "integrate_max_steps": 1,
            "scvi_max_epochs": 2,
            "n_top_genes": 300,
        },
        "tasks": {"multiomics": {"methods": FAST_METHODS}},
        "datasets": [
            {
                "name": "citeseq",
                "files": [H5MU],
                "tasks": ["multiomics"],
                "label_key": "gated_label",
                "batch_key": "batch",
                "gates": "pbmc_citeseq",
                "max_cells": 60,
            }
        ],
    }
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "out"
    assert main(["bench", "run", str(path), "--out", str(out)]) == EXIT_OK

    results = pd.read_csv(out / "results.csv")
    rows = results[results["task"] == "multiomics"].set_index("method")
    # no method drops out: one row each, and only an optional one may be skipped, for its package
    assert sorted(rows.index) == sorted(FAST_METHODS)
    for method, row in rows.iterrows():
        if method in OPTIONAL and row["status"] == "skipped":
            assert OPTIONAL[method] in row["reason"]
        else:
            assert row["status"] == "ok", f"{method}: {row['status']}: {row['reason']}"
    ok = rows[rows["status"] == "ok"]
    assert ok[EMBEDDING_METRICS].notna().all().all()
    assert ok[EMBEDDING_METRICS].apply(lambda c: c.between(-1, 1)).all().all()
    assert (ok["seconds"] > 0).all()
    assert (ok["peak_memory_mb"] >= 0).all()
    assert (ok["n_cells_embedded"] == 60).all()
    assert (ok["n_cells"] <= 60).all()
    assert (ok["n_batches"] == 2).all()

    run = json.loads((out / "run.json").read_text())
    assert run["method_options"]["joint_max_steps"] == 1
    assert run["datasets"][0]["labels"]["CD4 T"] > 0
    report = (out / "report.md").read_text()
    assert "## Multi-omics" in report
    for label in ("PanFoMa joint RNA+protein", "PanFoMa late fusion (+ protein PCA)", "PCA concat. (RNA + protein)"):
        assert label in report
    assert "60 (no split)" in report
    assert (out / "figures" / "results_table_multiomics.png").stat().st_size > 1000
    capsys.readouterr()


@pytest.mark.slow
def test_wnn_is_scored_on_its_graph(citeseq_file):
    ctx = MethodContext(pf.bench.build_paired(citeseq_file, max_cells=60), options={"seed": 0})
    result = pf.bench.TASKS["multiomics"](ctx, {"label_key": "gated_label", "batch_key": "batch"}, ["wnn", "rna_pca"])
    wnn, rna_pca = result.rows
    assert wnn["status"] == "ok", wnn["reason"]
    assert "avg_bio" not in wnn  # a graph has no embedding scores
    assert 0 <= wnn["avg_bio_graph"] <= 1
    assert wnn["seconds"] >= rna_pca["seconds"]  # charged the RNA PCA it reuses
    assert list(result.embeddings) == ["rna_pca"]


def test_every_method_is_in_the_default_run():
    from panfoma_sc.bench._harness import DEFAULT_METHODS

    assert sorted(DEFAULT_METHODS["multiomics"]) == sorted(pf.bench.MULTIOMICS_METHODS) == sorted(METHODS)


def test_joint_budget_comes_from_the_method_settings(monkeypatch):
    seen = {}

    def fake_integrate(data, batch_key, **kwargs):
        seen.update(kwargs, batch_key=batch_key)
        return SimpleNamespace(obsm={"X_panfoma_integrated": np.zeros((2, 4), dtype=np.float32)})

    monkeypatch.setattr("panfoma_sc.tl.integrate", fake_integrate)
    ctx = MethodContext(object(), model="m", options={"joint_max_epochs": 3, "joint_max_steps": 7, "seed": 2})
    assert pf.bench.MULTIOMICS_METHODS["panfoma_joint"](ctx, "batch").shape == (2, 4)
    assert seen["max_epochs"] == 3
    assert seen["max_steps"] == 7
    assert seen["method"] == "joint"
    assert seen["seed"] == 2
    assert seen["batch_key"] == "batch"


def test_paired_file_runs_only_the_paired_tasks(tmp_path):
    config = {"datasets": [{"name": "x", "files": [H5MU], "tasks": ["integration"]}]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="paired"):
        pf.bench.load_config(path)
    config = {"datasets": [{"name": "x", "files": ["a.h5ad"], "tasks": ["multiomics"]}]}
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="h5mu"):
        pf.bench.load_config(path)


@pytest.mark.parametrize("method", ["totalvi", "multivi"])
def test_scvi_baselines_are_seeded_by_the_run(citeseq_file, method):
    """scVI-family baselines draw from the run's seed: the same seed gives the same latent space."""
    pytest.importorskip("scvi", reason="scvi-tools (the bench extra) is not installed")
    from panfoma_sc.bench._multiomics import MULTIOMICS_METHODS

    paired = pf.bench.build_paired(citeseq_file, max_cells=60)

    def latent(seed: int) -> np.ndarray:
        ctx = MethodContext(paired, options={"seed": seed, "scvi_max_epochs": 2})
        return MULTIOMICS_METHODS[method](ctx, "batch")

    first, again, other = latent(0), latent(0), latent(1)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
