from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from anndata.tests.helpers import assert_equal

import panfoma_sc as pf


@pytest.fixture
def labelled(pbmc68k):
    adata = pbmc68k[:60].copy()
    rng = np.random.default_rng(0)
    adata.obsm["X_umap"] = rng.normal(size=(adata.n_obs, 2)).astype(np.float32)
    labels = rng.choice(["B", "T", "Unknown"], adata.n_obs)
    adata.obs["panfoma_label"] = pd.Categorical(labels, categories=["B", "T", "Unknown"])
    adata.obs["panfoma_label_confidence"] = rng.uniform(size=adata.n_obs).astype(np.float32)
    return adata


def test_embedding_adds_a_confidence_panel_and_greys_unknown(labelled):
    axes = pf.pl.embedding(labelled, show=False)
    assert len(axes) == 2  # the label and its confidence
    assert axes[1].get_title() == "panfoma_label_confidence"
    colors = list(labelled.uns["panfoma_label_colors"])
    assert colors[2].startswith("#d9d9d9")  # "Unknown"
    assert len(set(colors)) == 3


def test_unknown_is_grey_in_a_string_column_and_adata_changes_only_as_scanpy_changes_it(labelled):
    labelled.obs["panfoma_label"] = labelled.obs["panfoma_label"].astype(str)  # object dtype, not categorical
    ours, scanpys = labelled.copy(), labelled.copy()
    pf.pl.embedding(ours, show=False)
    sc.pl.embedding(scanpys, basis="umap", color=["panfoma_label", "panfoma_label_confidence"], show=False)
    assert dict(ours.obs.dtypes) == dict(scanpys.obs.dtypes)
    assert set(ours.uns) == set(scanpys.uns)
    colors = dict(zip(ours.obs["panfoma_label"].cat.categories, ours.uns["panfoma_label_colors"], strict=True))
    assert colors["Unknown"].startswith("#d9d9d9")
    assert len(set(colors.values())) == 3


@pytest.fixture
def figdir(tmp_path):
    """scanpy's figure folder, pointed at tmp_path for one test (its settings are class properties)."""
    before = sc.settings.figdir
    sc.settings.figdir = tmp_path
    yield tmp_path
    sc.settings.figdir = before


def test_saved_files_are_named_as_scanpy_names_them(labelled, figdir):
    pf.pl.embedding(labelled, save="_walk.png", show=False)
    sc.pl.umap(labelled, color="panfoma_label", save="_scanpy.png", show=False)
    history = pd.DataFrame({"step": [1, 2], "loss_value": [2.0, 1.0]})
    pf.pl.training_curve(history, save="_run1.png", show=False)
    pf.pl.training_curve(history, save=True, show=False)
    names = sorted(p.name for p in figdir.iterdir())
    suffix = sc.settings.file_format_figs
    assert names == sorted(["umap_walk.png", "umap_scanpy.png", "training_curve_run1.png", f"training_curve.{suffix}"])


def test_training_curve_without_loss_columns_says_which_columns_it_has():
    history = pd.DataFrame({"step": [1, 2], "accuracy": [0.5, 0.6]})
    with pytest.raises(ValueError, match=r"no loss_\* column to draw; it has \['step', 'accuracy'\].*columns="):
        pf.pl.training_curve(history, show=False)


def test_bad_basis_or_color_raise_and_leave_adata_untouched(labelled):
    before = labelled.copy()
    with pytest.raises(KeyError, match="not found"):
        pf.pl.embedding(labelled, color="nope", show=False)
    del labelled.obsm["X_umap"]
    del before.obsm["X_umap"]
    with pytest.raises(KeyError, match=r"sc\.tl\.umap"):
        pf.pl.embedding(labelled, show=False)
    assert_equal(labelled, before)


def test_ax_genes_in_raw_and_a_missing_label_column(labelled):
    import matplotlib.pyplot as plt

    _, ax = plt.subplots()
    with pytest.raises(ValueError, match=r"ax= takes one panel, and this plot has 2: .* confidence=False"):
        pf.pl.embedding(labelled, ax=ax, show=False)
    assert pf.pl.embedding(labelled, ax=ax, confidence=False, show=False) is ax
    full = labelled.copy()
    labelled = labelled[:, labelled.var_names[:5]].copy()
    labelled.raw = full
    gene = full.var_names[10]
    assert gene not in labelled.var_names
    pf.pl.embedding(labelled, color=gene, show=False)  # scanpy reads it from .raw
    with pytest.raises(KeyError, match=r"not found in adata.obs columns or adata.var_names"):
        pf.pl.embedding(labelled, color=gene, use_raw=False, show=False)
    del labelled.obs["panfoma_label"]
    with pytest.raises(KeyError, match=r"no 'panfoma_label' column to colour by: run pf.tl.annotate"):
        pf.pl.embedding(labelled, show=False)
    plt.close("all")


def test_training_curve_draws_every_loss_column():
    history = pd.DataFrame({"step": [1, 2, 3], "loss_value": [3.0, 2.0, 1.0], "loss_batch": [0.7, 0.7, 0.6]})
    ax = pf.pl.training_curve(history, smooth=1, show=False)
    assert [line.get_label() for line in ax.get_lines()] == ["loss_value", "loss_batch"]
    with pytest.raises(KeyError, match="loss_mvc"):
        pf.pl.training_curve(history, columns=("loss_mvc",), show=False)


def test_training_curve_reads_a_run_folder_or_its_csv_and_names_a_missing_one(tmp_path):
    pd.DataFrame({"step": [1, 2], "loss_value": [2.0, 1.0]}).to_csv(tmp_path / "history.csv", index=False)
    for source in (tmp_path, tmp_path / "history.csv", str(tmp_path)):
        ax = pf.pl.training_curve(source, smooth=1, show=False)
        assert [line.get_label() for line in ax.get_lines()] == ["loss_value"]
    with pytest.raises(FileNotFoundError, match=r"No training history at .*pass a pretraining output folder"):
        pf.pl.training_curve(tmp_path / "elsewhere", show=False)


def test_scanpy_can_plot_after_embed(pbmc68k, tiny_checkpoint):
    adata = pbmc68k[:40].copy()
    pf.tl.embed(adata, tiny_checkpoint, progress=False)
    sc.pp.neighbors(adata, use_rep="X_panfoma", n_neighbors=5)
    sc.tl.umap(adata, random_state=0)
    assert pf.pl.embedding(adata, color="bulk_labels", show=False) is not None
