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


def test_unknown_grey_keeps_each_panels_categories_distinct_and_other_columns_colours(labelled):
    # a second column sharing category names must not make two labels of the first column one colour
    labelled.obs["truth"] = pd.Categorical(np.resize(["T", "B", "NK", "Mono"], labelled.n_obs))
    labelled.uns["truth_colors"] = np.array(["#111111", "#222222", "#333333", "#444444"], dtype=object)
    pf.pl.embedding(labelled, color=["panfoma_label", "truth"], confidence=False, show=False)
    label_colors = list(labelled.uns["panfoma_label_colors"])
    assert len(set(label_colors)) == 3
    assert label_colors[2].startswith("#d9d9d9")
    assert list(labelled.uns["truth_colors"]) == ["#111111", "#222222", "#333333", "#444444"]  # the user's, kept


def test_unknown_grey_keeps_the_users_colours_of_the_label_column(labelled):
    labelled.uns["panfoma_label_colors"] = np.array(["#aa0000", "#00aa00", "#0000aa"], dtype=object)
    pf.pl.embedding(labelled, confidence=False, show=False)
    assert [c[:7] for c in labelled.uns["panfoma_label_colors"]] == ["#aa0000", "#00aa00", "#d9d9d9"]


def test_many_categories_with_unknown_get_as_many_colours_as_scanpy_gives(labelled):
    names = [f"type{i}" for i in range(30)]
    labelled.obs["panfoma_label"] = pd.Categorical(
        np.resize([*names, "Unknown"], labelled.n_obs), categories=[*names, "Unknown"]
    )
    reference = labelled.copy()
    pf.pl.embedding(labelled, confidence=False, show=False)
    sc.pl.embedding(reference, basis="umap", color="panfoma_label", show=False)
    ours, scanpys = list(labelled.uns["panfoma_label_colors"]), list(reference.uns["panfoma_label_colors"])
    assert len(set(ours)) == 31
    assert ours[:30] == scanpys[:30]  # scanpy's own choice of colours, "Unknown" aside


def test_a_failed_plot_leaves_the_colours_as_they_were(labelled):
    before = labelled.copy()
    with pytest.raises(Exception):  # noqa: B017, PT011 - scanpy's own error for a bad keyword
        pf.pl.embedding(labelled, show=False, not_a_scanpy_option=1)
    assert_equal(labelled, before)


def test_empty_selection_or_no_colour_is_refused(labelled):
    with pytest.raises(ValueError, match=r"no cells to plot"):
        pf.pl.embedding(labelled[labelled.obs["panfoma_label"] == "nope"], show=False)
    with pytest.raises(ValueError, match=r"color=\[\] names nothing"):
        pf.pl.embedding(labelled, color=[], show=False)


def test_training_curve_takes_one_column_name_and_checks_smooth():
    history = pd.DataFrame({"step": np.arange(30), "loss_value": np.linspace(2, 1, 30), "loss_mvc": 1.0})
    ax = pf.pl.training_curve(history, columns="loss_value", show=False)
    assert [line.get_label() for line in ax.get_lines()] == ["loss_value"]
    for smooth in (2.5, 0, -5):
        with pytest.raises(ValueError, match=r"smooth must be an integer >= 1"):
            pf.pl.training_curve(history, smooth=smooth, show=False)
    history["loss_text"] = "high"
    with pytest.raises(ValueError, match=r"\['loss_text'\] are not numeric"):
        pf.pl.training_curve(history, columns=["loss_text"], show=False)


def test_several_components_keep_the_confidence_scale_on_every_panel(labelled, caplog):
    labelled.obsm["X_umap"] = np.random.default_rng(1).normal(size=(labelled.n_obs, 3)).astype(np.float32)
    axes = pf.pl.embedding(labelled, components=["1,2", "2,3"], show=False)
    assert len(axes) == 4  # the label and its confidence, each on both pairs of components
    confidence_panels = [ax for ax in axes if ax.get_title() == "panfoma_label_confidence"]
    assert len(confidence_panels) == 2
    for ax in confidence_panels:
        assert ax.collections[0].get_clim() == (0.0, 1.0)
    assert "vmin" not in caplog.text


def test_training_curve_labels_the_axis_as_losses_and_refuses_an_empty_history():
    history = pd.DataFrame({"step": [0, 1, 2], "loss_mmd": [0.3, 0.2, 0.1]})
    ax = pf.pl.training_curve(history, smooth=1, show=False)
    assert ax.get_ylabel() == "loss"
    ax = pf.pl.training_curve(history, smooth=2, show=False)
    assert ax.get_ylabel() == "loss (mean of 2 logged steps)"
    with pytest.raises(ValueError, match="history has no rows"):
        pf.pl.training_curve(history.iloc[:0], show=False)
