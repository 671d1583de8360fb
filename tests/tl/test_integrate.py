from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
from anndata.tests.helpers import assert_equal

import panfoma_sc as pf


@pytest.fixture
def two_batches(pbmc_sorted):
    adata = pbmc_sorted.copy()
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    return adata


def test_integrate_writes_embedding_and_scanpy_runs_on_it(two_batches, tiny_checkpoint, tmp_path):
    path = tmp_path / "integrated.safetensors"
    # n_genes is not the base model's default (64): the saved model must embed with it
    options = {"max_steps": 3, "n_genes": 32, "save_model": path, "progress": False}
    pf.tl.integrate(two_batches, "batch", model=tiny_checkpoint, **options)
    embedding = two_batches.obsm["X_panfoma_integrated"]
    assert embedding.shape == (two_batches.n_obs, 32)
    assert embedding.dtype == np.float32
    assert np.isfinite(embedding).all()
    params = two_batches.uns["X_panfoma_integrated"]["params"]
    assert params["batch_key"] == "batch"
    assert params["n_batches"] == 2
    assert params["steps"] == 3
    assert params["fine_tuning"]["max_steps"] == 3
    assert not {"validation_fraction", "patience", "probe_steps"} & set(params["fine_tuning"])  # classifier only
    sc.pp.neighbors(two_batches, use_rep="X_panfoma_integrated")
    # the saved model reproduces the embedding
    again = pf.tl.embed(two_batches, path, progress=False, copy=True)
    np.testing.assert_allclose(again.obsm["X_panfoma"], embedding, atol=1e-5)


def test_integrate_differs_from_zero_shot_and_is_seeded(two_batches, tiny_checkpoint):
    zero_shot = pf.tl.embed(two_batches, tiny_checkpoint, progress=False, copy=True).obsm["X_panfoma"]
    first = pf.tl.integrate(two_batches, "batch", model=tiny_checkpoint, max_steps=3, progress=False, copy=True)
    second = pf.tl.integrate(two_batches, "batch", model=tiny_checkpoint, max_steps=3, progress=False, copy=True)
    assert "X_panfoma_integrated" not in two_batches.obsm
    np.testing.assert_allclose(first.obsm["X_panfoma_integrated"], second.obsm["X_panfoma_integrated"], atol=1e-6)
    assert not np.allclose(first.obsm["X_panfoma_integrated"], zero_shot, atol=1e-3)


def test_fine_tuning_reads_no_loss_back_from_the_device_in_its_steps(two_batches, tiny_checkpoint, value_reads):
    """The losses of every step stay on the device and are read together at the end (one read per run)."""
    options = {"model": tiny_checkpoint, "progress": False, "copy": True}
    pf.tl.integrate(two_batches, "batch", max_steps=2, **options)
    reads_in_two_steps = list(value_reads)
    value_reads.clear()
    result = pf.tl.integrate(two_batches, "batch", max_steps=6, **options)
    assert value_reads == reads_in_two_steps
    params = result.uns["X_panfoma_integrated"]["params"]
    assert params["steps"] == 6
    assert np.isfinite([params["final_loss_mvc"], params["final_loss_batch"]]).all()


def test_the_default_learning_rate_is_1e_4_and_recorded(two_batches, tiny_checkpoint):
    # 1e-3 over-corrected islet batches of different cell-type mixes (see the docstring and integration-lr-1e-4.md)
    result = pf.tl.integrate(two_batches[:60], "batch", model=tiny_checkpoint, max_steps=1, progress=False, copy=True)
    params = result.uns["X_panfoma_integrated"]["params"]
    assert params["learning_rate"] == 1e-4
    assert params["fine_tuning"]["learning_rate"] == 1e-4


def test_fine_tuning_leaves_the_callers_torch_generator_as_it_was(two_batches, tiny_checkpoint):
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    pf.tl.integrate(two_batches, "batch", model=tiny_checkpoint, max_steps=1, progress=False, copy=True)
    torch.testing.assert_close(torch.rand(3), expected)


def test_a_seed_beyond_the_generators_range_is_refused_before_any_work(two_batches, tiny_checkpoint):
    before = two_batches.copy()
    for tool in (pf.tl.embed, lambda adata, *args, **kwargs: pf.tl.integrate(adata, "batch", *args, **kwargs)):
        with pytest.raises(ValueError, match=r"seed must be an integer from 0 to 4294967295, got 4294967296"):
            tool(two_batches, model=tiny_checkpoint, seed=2**32, progress=False)
    assert_equal(two_batches, before)


def test_integrate_accepts_csc_int_and_layers(two_batches, tiny_checkpoint):
    adata = two_batches.copy()
    adata.layers["counts"] = adata.X.tocsc().astype(np.int32)
    adata.X = None
    before = adata.copy()
    result = pf.tl.integrate(
        adata, "batch", model=tiny_checkpoint, layer="counts", max_steps=1, progress=False, copy=True
    )
    assert result.obsm["X_panfoma_integrated"].shape[0] == adata.n_obs
    assert_equal(adata, before)


def test_fine_tuning_rows_convert_column_major_input_once():
    from scipy import sparse

    from panfoma_sc.train import CellRows

    values = sparse.random(50, 20, density=0.3, format="csc", random_state=0)
    rows = CellRows(matrix=values, columns=np.arange(5, 15), gene_ids=np.arange(10), cell_keys=np.arange(50))
    assert rows.matrix.format == "csr"  # not once per block: each block would copy the whole matrix again
    picked = np.array([7, 2, 40])
    np.testing.assert_array_equal(rows.block(picked).toarray(), values.toarray()[picked][:, 5:15])
    assert values.format == "csc"  # the caller's matrix is not touched


def test_save_model_in_a_missing_folder_is_refused_before_any_work(two_batches, tiny_checkpoint, tmp_path):
    before = two_batches.copy()
    path = tmp_path / "no" / "integrated.safetensors"
    with pytest.raises(FileNotFoundError, match=r"save_model .* does not exist\. Create it first"):
        pf.tl.integrate(two_batches, "batch", model=tiny_checkpoint, max_steps=1, save_model=path, progress=False)
    assert_equal(two_batches, before)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"max_steps": 0}, "max_steps must be an integer >= 1 or None"),
        ({"learning_rate": -1e-3}, "learning_rate must be a finite number > 0"),
        ({"mmd_weight": float("nan")}, "mmd_weight must be a finite number >= 0, got nan"),
        ({"adversarial_weight": float("inf")}, "adversarial_weight must be a finite number >= 0, got inf"),
        ({"feature_weight": -1.0}, "feature_weight must be a finite number >= 0, got -1.0"),
        ({"mmd_weight": "1"}, "mmd_weight must be a finite number >= 0, got '1'"),
    ],
)
def test_settings_that_cannot_fine_tune_are_refused_before_any_work(two_batches, tiny_checkpoint, option, message):
    before = two_batches.copy()
    with pytest.raises(ValueError, match=message):
        pf.tl.integrate(two_batches, "batch", model=tiny_checkpoint, progress=False, **option)
    assert_equal(two_batches, before)


def test_a_per_cell_batch_column_is_warned_about(two_batches, tiny_checkpoint, caplog):
    two_batches.obs["barcode"] = two_batches.obs_names.astype(str)
    with caplog.at_level("WARNING", logger="panfoma_sc"):
        pf.tl.integrate(two_batches, "barcode", model=tiny_checkpoint, max_steps=1, progress=False, copy=True)
    assert "is it a per-cell column" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="panfoma_sc"):
        pf.tl.integrate(two_batches, "batch", model=tiny_checkpoint, max_steps=1, progress=False, copy=True)
    assert "per-cell column" not in caplog.text


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"protein": "prot"}, "protein applies"),
        ({"method": "late_fusion", "feature_weight": 2.0}, "method, feature_weight apply"),
    ],
)
def test_mudata_options_with_an_anndata_are_refused(two_batches, tiny_checkpoint, options, named):
    before = two_batches.copy()
    with pytest.raises(ValueError, match=f"{named} to a MuData only"):
        pf.tl.integrate(two_batches, "batch", model=tiny_checkpoint, max_steps=1, progress=False, **options)
    with pytest.raises(ValueError, match="method='xyz' is not available"):
        pf.tl.integrate(two_batches, "batch", model=tiny_checkpoint, method="xyz", progress=False)
    with pytest.raises(ValueError, match=r"max_steps must be an integer >= 1 or None, got 1\.5"):
        pf.tl.integrate(two_batches, "batch", model=tiny_checkpoint, max_steps=1.5, progress=False)
    assert_equal(two_batches, before)


def test_replacing_a_result_no_panfoma_tool_wrote_is_warned_about(two_batches, tiny_checkpoint, caplog):
    adata = two_batches[:60].copy()
    adata.uns["X_harmony"] = {"mine": 1}
    with caplog.at_level("WARNING", logger="panfoma_sc"):
        pf.tl.integrate(adata, "batch", model=tiny_checkpoint, max_steps=1, key_added="X_harmony", progress=False)
    assert "pf.tl.integrate replaces adata.uns['X_harmony'], which no panfoma tool wrote" in caplog.text
    assert "panfoma_sc_version" in adata.uns["X_harmony"]["params"]


def test_the_adversarial_term_alone_does_not_push_batches_apart(lung_lines):
    """With ``mmd_weight=0`` (the docstring's advice for batches of different cell populations) only the
    discriminator's term removes batch. A reversed cross-entropy let an untrained discriminator push the two
    protocols of the lung lines apart (batch ASW 0.87 to 0.79 in 6 steps); the bounded confusion loss must not.
    Run at 1e-3, the former default: Adam's steps scale with the learning rate, and the default 1e-4 would move
    the embedding too little in 6 steps for this test to see a push."""
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    adata = lung_lines
    lines, batches = adata.obs["cell_line"].to_numpy(), adata.obs["batch"].to_numpy()
    pf.tl.embed(adata, progress=False)
    pf.tl.integrate(adata, "batch", mmd_weight=0.0, max_steps=6, learning_rate=1e-3, progress=False)
    before, after = (
        pf.bench.batch_correction(adata.obsm[k], batches, lines) for k in ("X_panfoma", "X_panfoma_integrated")
    )
    assert after["asw_batch"] > before["asw_batch"] - 0.03, (before, after)
    knn = KNeighborsClassifier(15)
    assert cross_val_score(knn, adata.obsm["X_panfoma_integrated"], lines, cv=5).mean() > 0.95
