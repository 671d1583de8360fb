from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from anndata.tests.helpers import assert_equal
from scipy import sparse

import panfoma_sc as pf


def _embed(adata, checkpoint, **kwargs):
    return pf.tl.embed(adata, checkpoint, progress=False, copy=True, **kwargs)


def test_embed_writes_obsm_and_uns_and_scanpy_runs_on_it(pbmc68k, tiny_checkpoint):
    assert pf.tl.embed(pbmc68k, tiny_checkpoint, progress=False) is None
    emb = pbmc68k.obsm["X_panfoma"]
    assert emb.shape == (pbmc68k.n_obs, 32)
    assert emb.dtype == np.float32
    assert np.isfinite(emb).all()
    params = pbmc68k.uns["panfoma"]["params"]
    assert params["sha256"] == pf.models.sha256sum(tiny_checkpoint)
    assert params["panfoma_sc_version"] == pf.__version__
    assert pbmc68k.uns["panfoma"]["genes"]["n_matched"] == pbmc68k.n_vars
    assert pbmc68k.uns["panfoma"]["input"]["input_kind"] == "log-normalized"
    sc.pp.neighbors(pbmc68k, use_rep="X_panfoma")
    sc.tl.umap(pbmc68k)
    assert pbmc68k.obsm["X_umap"].shape == (pbmc68k.n_obs, 2)


def test_copy_and_key_added(pbmc68k, tiny_checkpoint):
    before = pbmc68k.copy()
    result = _embed(pbmc68k, tiny_checkpoint, key_added="X_pf")
    assert_equal(pbmc68k, before)  # copy=True leaves the input alone
    assert "X_pf" in result.obsm
    assert "X_pf" in result.uns
    assert "X_panfoma" not in result.obsm


def test_deterministic_and_independent_of_batch_size(pbmc68k, tiny_checkpoint):
    small = pbmc68k[:50].copy()
    a = _embed(small, tiny_checkpoint, batch_size=7).obsm["X_panfoma"]
    b = _embed(small, tiny_checkpoint, batch_size=64).obsm["X_panfoma"]
    c = _embed(small, tiny_checkpoint, batch_size=64).obsm["X_panfoma"]
    np.testing.assert_array_equal(b, c)
    np.testing.assert_allclose(a, b, atol=1e-5)
    subset = _embed(small[10:20].copy(), tiny_checkpoint).obsm["X_panfoma"]
    np.testing.assert_allclose(subset, b[10:20], atol=1e-5)


def test_seed_changes_gene_sampling(pbmc68k, tiny_checkpoint):
    small = pbmc68k[:20].copy()
    a = _embed(small, tiny_checkpoint, seed=0, n_genes=16).obsm["X_panfoma"]
    b = _embed(small, tiny_checkpoint, seed=1, n_genes=16).obsm["X_panfoma"]
    assert not np.allclose(a, b)


def test_counts_and_lognormalized_give_the_same_embedding(pbmc_sorted, tiny_checkpoint):
    counts = pbmc_sorted[:40].copy()
    lognorm = counts.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    a = _embed(counts, tiny_checkpoint)
    b = _embed(lognorm, tiny_checkpoint)
    assert a.uns["panfoma"]["input"]["input_kind"] == "counts"
    assert b.uns["panfoma"]["input"]["input_kind"] == "log-normalized"
    np.testing.assert_allclose(a.obsm["X_panfoma"], b.obsm["X_panfoma"], atol=1e-5)


@pytest.mark.parametrize("kind", ["dense_int", "dense_float32", "csc", "csr_int64"])
def test_matrix_formats_and_dtypes_agree(pbmc_sorted, tiny_checkpoint, kind):
    adata = pbmc_sorted[:30].copy()
    reference = _embed(adata, tiny_checkpoint).obsm["X_panfoma"]
    x = adata.X.toarray()
    adata.X = {
        "dense_int": x.astype(np.int32),
        "dense_float32": x.astype(np.float32),
        "csc": sparse.csc_matrix(x),
        "csr_int64": sparse.csr_matrix(x.astype(np.int64)),
    }[kind]
    np.testing.assert_allclose(_embed(adata, tiny_checkpoint).obsm["X_panfoma"], reference, atol=1e-5)


def test_layer_and_backed_input(pbmc_sorted, tiny_checkpoint, tmp_path):
    adata = pbmc_sorted[:30].copy()
    reference = _embed(adata, tiny_checkpoint).obsm["X_panfoma"]
    layered = adata.copy()
    layered.layers["counts"] = layered.X.copy()
    layered.X = sparse.csr_matrix(layered.shape, dtype=np.float32)
    np.testing.assert_allclose(_embed(layered, tiny_checkpoint, layer="counts").obsm["X_panfoma"], reference, atol=1e-5)
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    result = pf.tl.embed(backed, tiny_checkpoint, progress=False, batch_size=8, copy=True)
    np.testing.assert_allclose(result.obsm["X_panfoma"], reference, atol=1e-5)


def test_duplicate_gene_names_use_the_first_and_report(pbmc_sorted, tiny_checkpoint):
    adata = pbmc_sorted[:20].copy()
    names = adata.var_names.tolist()
    names[1] = names[0].lower()  # same gene, different case
    adata.var_names = names
    result = _embed(adata, tiny_checkpoint)
    assert result.uns["panfoma"]["genes"]["n_duplicated"] == 1


def test_duplicate_cell_names_work(pbmc_sorted, tiny_checkpoint):
    adata = pbmc_sorted[:10].copy()
    adata.obs_names = ["cell"] * 10
    result = _embed(adata, tiny_checkpoint)
    assert result.obsm["X_panfoma"].shape[0] == 10


def test_gene_selection_is_recorded_and_validated(pbmc68k, tiny_checkpoint):
    small = pbmc68k[:20].copy()
    top = _embed(small, tiny_checkpoint, n_genes=16, gene_selection="top")
    rand = _embed(small, tiny_checkpoint, n_genes=16, gene_selection="random")
    assert top.uns["panfoma"]["params"]["gene_selection"] == "top"
    assert not np.allclose(top.obsm["X_panfoma"], rand.obsm["X_panfoma"])
    before = small.copy()
    with pytest.raises(ValueError, match="gene_selection"):
        pf.tl.embed(small, tiny_checkpoint, gene_selection="best", progress=False)
    assert_equal(small, before)
