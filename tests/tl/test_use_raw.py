"""``use_raw=True``: the tools read ``.raw`` (scanpy's scaled-X object) and write their results to the object."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

import panfoma_sc as pf
from panfoma_sc.cli import EXIT_OK, main


@pytest.fixture
def scaled() -> ad.AnnData:
    """scanpy's pbmc68k_reduced as shipped: scaled X on 765 genes, log-normalized values in .raw."""
    adata = sc.datasets.pbmc68k_reduced()[:80].copy()
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    return adata


def test_embed_reads_raw_and_writes_to_the_object(scaled, tiny_checkpoint):
    expected = pf.tl.embed(scaled.raw.to_adata(), tiny_checkpoint, progress=False, copy=True).obsm["X_panfoma"]
    x_before = scaled.X.copy()
    pf.tl.embed(scaled, tiny_checkpoint, use_raw=True, progress=False)
    np.testing.assert_array_equal(scaled.obsm["X_panfoma"], expected)
    np.testing.assert_array_equal(scaled.X, x_before)
    assert scaled.uns["panfoma"]["params"]["use_raw"] is True
    assert scaled.uns["panfoma"]["genes"]["n_genes"] == scaled.raw.n_vars


def test_a_backed_raw_is_streamed_and_gives_the_same_embedding(scaled, tiny_checkpoint, tmp_path):
    scaled.write_h5ad(tmp_path / "scaled.h5ad")
    backed = ad.read_h5ad(tmp_path / "scaled.h5ad", backed="r")
    try:
        pf.tl.embed(backed, tiny_checkpoint, use_raw=True, progress=False, batch_size=16)
        expected = pf.tl.embed(scaled, tiny_checkpoint, use_raw=True, progress=False, copy=True)
        np.testing.assert_allclose(backed.obsm["X_panfoma"], expected.obsm["X_panfoma"], rtol=1e-5, atol=1e-6)
    finally:
        backed.file.close()


def test_annotate_and_integrate_read_raw(scaled, tiny_checkpoint):
    reference, query = scaled[:50].copy(), scaled[50:].copy()
    options = {"model": tiny_checkpoint, "progress": False}
    expected = pf.tl.annotate(
        query.raw.to_adata(), reference.raw.to_adata(), labels_key="bulk_labels", copy=True, **options
    )
    pf.tl.annotate(query, reference, labels_key="bulk_labels", use_raw=True, reference_use_raw=True, **options)
    assert query.obs["panfoma_label"].astype(str).tolist() == expected.obs["panfoma_label"].astype(str).tolist()
    np.testing.assert_allclose(query.obs["panfoma_label_confidence"], expected.obs["panfoma_label_confidence"])
    params = query.uns["panfoma_label"]["params"]
    assert params["use_raw"] is True
    assert params["reference_use_raw"] is True
    assert "reference_use_raw" not in expected.uns["panfoma_label"]["params"]
    pf.tl.integrate(scaled, "batch", use_raw=True, max_steps=1, **options)
    assert scaled.obsm["X_panfoma_integrated"].shape == (scaled.n_obs, 32)


def test_without_raw_the_message_names_the_argument_and_nothing_is_written(scaled, tiny_checkpoint):
    query, reference = scaled[:30].copy(), scaled[30:].copy()
    del reference.raw
    with pytest.raises(ValueError, match=r"reference_use_raw=True, but reference\.raw is empty"):
        pf.tl.annotate(
            query, reference, labels_key="bulk_labels", model=tiny_checkpoint, reference_use_raw=True, progress=False
        )
    query.layers["counts"] = query.X
    with pytest.raises(ValueError, match=r"pass layer='counts' or use_raw=True, not both"):
        pf.tl.embed(query, tiny_checkpoint, layer="counts", use_raw=True, progress=False)
    assert "X_panfoma" not in query.obsm
    assert "panfoma_label" not in query.obs


def test_the_command_line_reads_raw(scaled, tiny_checkpoint, tmp_path):
    source, target = tmp_path / "scaled.h5ad", tmp_path / "out.h5ad"
    scaled.write_h5ad(source)
    assert main(["embed", str(source), str(target), "--use-raw", "--model", str(tiny_checkpoint), "--quiet"]) == EXIT_OK
    result = ad.read_h5ad(target)
    assert result.obsm["X_panfoma"].shape == (scaled.n_obs, 32)
    assert result.raw.n_vars == scaled.raw.n_vars


def test_a_backed_column_major_raw_is_named_with_a_fix_for_raw(scaled, tiny_checkpoint, tmp_path):
    from scipy import sparse

    raw = scaled.raw.to_adata()
    raw.X = sparse.csc_matrix(raw.X)
    scaled.raw = raw
    scaled.write_h5ad(tmp_path / "raw_csc.h5ad")
    backed = ad.read_h5ad(tmp_path / "raw_csc.h5ad", backed="r")
    try:
        fix = r"raw = adata\.raw\.to_adata\(\); raw\.X = raw\.X\.tocsr\(\); adata\.raw = raw"
        with pytest.raises(ValueError, match=rf"adata\.raw\.X is a backed CSC .*{fix}"):
            pf.tl.embed(backed, tiny_checkpoint, use_raw=True, progress=False)
        assert "X_panfoma" not in backed.obsm
    finally:
        backed.file.close()


def test_the_argument_conflict_is_named_first_and_missing_x_offers_raw(scaled, tiny_checkpoint):
    no_raw = scaled.copy()
    del no_raw.raw
    no_raw.layers["counts"] = no_raw.X
    with pytest.raises(ValueError, match=r"pass layer='counts' or use_raw=True, not both"):
        pf.tl.embed(no_raw, tiny_checkpoint, layer="counts", use_raw=True, progress=False)
    with pytest.raises(ValueError, match=r"^use_raw must be True or False, got None\.$"):
        pf.tl.embed(scaled, tiny_checkpoint, use_raw=None, progress=False)  # not scanpy's "auto"
    with pytest.raises(ValueError, match=r"^reference_use_raw must be True or False, got 'yes'\.$"):
        pf.tl.annotate(scaled, scaled, labels_key="bulk_labels", model=tiny_checkpoint, reference_use_raw="yes")
    scaled.X = None
    with pytest.raises(ValueError, match=r"adata\.X is empty\. .* or use_raw=True \(adata\.raw\)\.$"):
        pf.tl.embed(scaled, tiny_checkpoint, progress=False)


def test_the_command_line_words_raw_messages_as_its_options(scaled, tiny_checkpoint, tmp_path, capsys):
    from panfoma_sc.cli import EXIT_BAD_INPUT

    no_raw = scaled.copy()
    del no_raw.raw
    no_raw.write_h5ad(tmp_path / "no_raw.h5ad")
    model = ["--model", str(tiny_checkpoint), "--quiet"]
    command = ["embed", str(tmp_path / "no_raw.h5ad"), str(tmp_path / "out.h5ad"), "--use-raw", *model]
    assert main(command) == EXIT_BAD_INPUT
    assert "--use-raw, but adata.raw is empty: pass no --use-raw to read adata.X" in capsys.readouterr().err
    scaled.write_h5ad(tmp_path / "query.h5ad")
    files = [str(tmp_path / name) for name in ("query.h5ad", "no_raw.h5ad", "out.h5ad")]
    labels = ["--labels-key", "bulk_labels", "--use-raw", "--reference-use-raw"]
    assert main(["annotate", *files, *labels, *model]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "--reference-use-raw, but reference.raw is empty: pass no --reference-use-raw to read reference.X" in err
    assert not (tmp_path / "out.h5ad").exists()
