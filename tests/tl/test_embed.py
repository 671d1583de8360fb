from __future__ import annotations

import re
import threading

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from anndata.tests.helpers import assert_equal
from scipy import sparse

import panfoma_sc as pf
from panfoma_sc.data.prefetch import THREAD_NAME


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


def test_a_key_with_a_slash_is_refused_before_any_work(pbmc68k, tiny_checkpoint):
    """``a/b`` would be saved as a group path that anndata cannot read back as one key."""
    before = pbmc68k.copy()
    fix = r"Name it without '/', e\.g\. key_added='X_a_b'\."
    with pytest.raises(ValueError, match=rf"key_added='X_a/b' contains '/'.*{fix}"):
        pf.tl.embed(pbmc68k, tiny_checkpoint, key_added="X_a/b", progress=False)
    with pytest.raises(ValueError, match=r"key_added='labels/fine' contains '/'"):
        pf.tl.annotate(pbmc68k, pbmc68k, labels_key="louvain", model=tiny_checkpoint, key_added="labels/fine")
    assert_equal(pbmc68k, before)


@pytest.mark.parametrize("tool", ["embed", "integrate", "annotate"])
def test_switches_must_be_true_or_false(pbmc68k, tiny_checkpoint, tool):
    """``progress="no"`` would show a progress bar and ``copy="no"`` return a copy: both are refused."""
    before = pbmc68k.copy()
    run = {
        "embed": lambda **kw: pf.tl.embed(pbmc68k, tiny_checkpoint, **kw),
        "integrate": lambda **kw: pf.tl.integrate(pbmc68k, "louvain", model=tiny_checkpoint, **kw),
        "annotate": lambda **kw: pf.tl.annotate(pbmc68k, pbmc68k, labels_key="louvain", model=tiny_checkpoint, **kw),
    }[tool]
    with pytest.raises(ValueError, match=r"^progress must be True or False, got 'no'\.$"):
        run(progress="no")
    with pytest.raises(ValueError, match=r"^copy must be True or False, got None\.$"):
        run(copy=None, progress=False)
    assert_equal(pbmc68k, before)


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


def _non_canonical_csr(x: np.ndarray) -> sparse.csr_matrix:
    """``x`` with every stored count split over two entries of the same gene, in reversed order per row."""
    canonical = sparse.csr_matrix(x)
    indptr = canonical.indptr * 2
    indices = np.empty(2 * canonical.nnz, dtype=canonical.indices.dtype)
    data = np.empty(2 * canonical.nnz, dtype=np.float32)
    for row in range(canonical.shape[0]):
        start, stop = canonical.indptr[row], canonical.indptr[row + 1]
        genes, values = canonical.indices[start:stop][::-1], canonical.data[start:stop][::-1]
        indices[2 * start : 2 * stop] = np.repeat(genes, 2)
        data[2 * start : 2 * stop : 2] = np.floor(values / 2)
        data[2 * start + 1 : 2 * stop : 2] = values - np.floor(values / 2)
    matrix = sparse.csr_matrix((data, indices, indptr), shape=x.shape)
    assert not matrix.has_canonical_format
    return matrix


@pytest.mark.parametrize(
    "kind", ["dense_int", "dense_float32", "dense_float16", "csc", "csr_int64", "csr_duplicates_unsorted"]
)
def test_matrix_formats_and_dtypes_agree(pbmc_sorted, tiny_checkpoint, kind):
    adata = pbmc_sorted[:30].copy()
    reference = _embed(adata, tiny_checkpoint).obsm["X_panfoma"]
    x = adata.X.toarray()
    adata.X = {
        "dense_int": x.astype(np.int32),
        "dense_float32": x.astype(np.float32),
        "dense_float16": x.astype(np.float16),  # scipy.sparse has no float16: read as float32
        "csc": sparse.csc_matrix(x),
        "csr_int64": sparse.csr_matrix(x.astype(np.int64)),
        # as scipy reads it: duplicate entries of a gene add up (some h5ad writers store them)
        "csr_duplicates_unsorted": _non_canonical_csr(x),
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
    view = backed[:10]
    np.testing.assert_allclose(_embed(view, tiny_checkpoint).obsm["X_panfoma"], reference[:10], atol=1e-5)


def test_copy_of_a_backed_anndata_is_read_before_the_model_runs(pbmc_sorted, tiny_checkpoint, tmp_path, monkeypatch):
    """Reading the file into memory is what may run out of memory: it must fail before the work, not after it."""
    from panfoma_sc.tl._embedding_job import EmbeddingJob

    pbmc_sorted[:20].copy().write_h5ad(tmp_path / "cells.h5ad")
    backed = ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    events = []

    def out_of_memory(self):
        events.append("to_memory")
        raise MemoryError

    monkeypatch.setattr(ad.AnnData, "to_memory", out_of_memory)
    monkeypatch.setattr(EmbeddingJob, "run", lambda *args, **kwargs: events.append("run"))
    with pytest.raises(MemoryError):
        pf.tl.embed(backed, tiny_checkpoint, progress=False, copy=True)
    assert events == ["to_memory"]
    assert "X_panfoma" not in backed.obsm


def test_backed_csc_and_backed_files_without_x_are_refused_with_the_fix(
    pbmc_sorted, tiny_checkpoint, tmp_path, monkeypatch
):
    """A backed CSC matrix would be read whole for every batch; a file without X names the layers it has."""
    adata = pbmc_sorted[:30].copy()
    csc = adata.copy()
    csc.X = sparse.csc_matrix(csc.X)
    np.testing.assert_allclose(  # in memory, CSC is converted once and embeds as CSR does
        _embed(csc, tiny_checkpoint).obsm["X_panfoma"], _embed(adata, tiny_checkpoint).obsm["X_panfoma"], atol=1e-6
    )
    csc.write_h5ad(tmp_path / "csc.h5ad")
    layered = ad.AnnData(obs=adata.obs, var=adata.var, layers={"counts": adata.X})
    layered.write_h5ad(tmp_path / "layered.h5ad")
    monkeypatch.setattr(pf.models.PretrainedModel, "embed_blocks", None)  # no model work may start
    backed = ad.read_h5ad(tmp_path / "csc.h5ad", backed="r")
    with pytest.raises(ValueError, match=r"adata.X is a backed CSC .* adata.to_memory\(\).* adata.X.tocsr\(\)"):
        pf.tl.embed(backed, tiny_checkpoint, progress=False)
    with pytest.raises(ValueError, match=r"adata.X is a backed CSC"):
        pf.pp.check_expression(backed)
    assert "X_panfoma" not in backed.obsm
    backed.file.close()
    backed = ad.read_h5ad(tmp_path / "layered.h5ad", backed="r")
    with pytest.raises(ValueError, match=r"adata.X is empty. Pass the layer .* \(available: \['counts'\]\)"):
        pf.tl.embed(backed, tiny_checkpoint, progress=False)
    backed.file.close()


def test_copy_of_a_backed_input_streams_it_and_loads_it_only_after_the_work(pbmc_sorted, tiny_checkpoint, tmp_path):
    path = tmp_path / "cells.h5ad"
    pbmc_sorted[:20].copy().write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    loads = []
    original = ad.AnnData.to_memory

    def counted(adata, *args, **kwargs):
        loads.append(adata.n_obs)
        return original(adata, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ad.AnnData, "to_memory", counted)
        with pytest.raises(ValueError, match="n_genes must be an integer >= 1"):
            pf.tl.embed(backed, tiny_checkpoint, progress=False, copy=True, n_genes=0)
        assert loads == []  # refused before the file was loaded
        result = pf.tl.embed(backed, tiny_checkpoint, progress=False, copy=True, n_genes=32)
    assert loads == [20]
    assert not result.isbacked
    assert result.obsm["X_panfoma"].shape == (20, 32)
    assert "X_panfoma" not in backed.obsm
    backed.file.close()


def test_a_view_of_backed_data_is_refused_before_any_work_unless_copied(pbmc_sorted, tiny_checkpoint, tmp_path):
    """anndata cannot write results into a backed view: say so (and how) before the model runs."""
    path = tmp_path / "cells.h5ad"
    pbmc_sorted[:30].copy().write_h5ad(path)
    view = ad.read_h5ad(path, backed="r")[:12]
    reference = pbmc_sorted[:30].copy()
    reference.obs["batch"] = np.repeat(["a", "b"], 15)

    def no_work(*args, **kwargs):
        raise AssertionError("the model ran before the result target was checked")

    message = r"adata is a view of a backed AnnData .* Pass copy=True .* adata.to_memory\(\)"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("panfoma_sc.tl._embedding_job.EmbeddingJob.prepare", no_work)
        with pytest.raises(ValueError, match=message):
            pf.tl.embed(view, tiny_checkpoint, progress=False)
        with pytest.raises(ValueError, match=message):
            pf.tl.annotate(view, reference, labels_key="cell_type", model=tiny_checkpoint, progress=False)
        with pytest.raises(ValueError, match=message):
            pf.tl.integrate(view, "batch", model=tiny_checkpoint, progress=False)
    assert "X_panfoma" not in view.obsm
    view.file.close()


def test_duplicate_gene_names_are_merged_and_reported(pbmc_sorted, tiny_checkpoint):
    adata = pbmc_sorted[:20].copy()
    names = adata.var_names.tolist()
    names[1] = names[0].lower()  # same gene, different case
    adata.var_names = names
    result = _embed(adata, tiny_checkpoint)
    assert result.uns["panfoma"]["genes"]["n_duplicated"] == 1


def test_a_gene_stored_in_two_columns_embeds_alike_in_any_column_order(pbmc_sorted, tiny_checkpoint):
    """As pbmc3k's C2orf15 / C2ORF15: column order and dropping an all-zero copy change nothing."""
    adata = pbmc_sorted[:40].copy()
    counts = adata.X.toarray()
    expressed = np.flatnonzero((counts > 0).sum(0) >= 10)
    a, b = expressed[:2]  # b becomes a second copy of a's gene, expressed in other cells
    names = adata.var_names.tolist()
    names[b] = names[a].lower()
    adata.var_names = names
    reference = _embed(adata, tiny_checkpoint).obsm["X_panfoma"]
    reversed_genes = _embed(adata[:, ::-1].copy(), tiny_checkpoint).obsm["X_panfoma"]
    np.testing.assert_allclose(reversed_genes, reference, atol=1e-5)
    zero_copy = adata.copy()
    zero_copy.X = sparse.csr_matrix(zero_copy.X)
    zero_copy.X[:, a] = 0  # a's column all zero: filter_genes would drop it, and b holds the gene alone
    zero_copy.X.eliminate_zeros()
    alone = zero_copy[:, [i for i in range(zero_copy.n_vars) if i != a]].copy()
    with_zero_copy = _embed(zero_copy, tiny_checkpoint).obsm["X_panfoma"]
    np.testing.assert_allclose(_embed(alone, tiny_checkpoint).obsm["X_panfoma"], with_zero_copy, atol=1e-5)


def test_duplicate_cell_names_work(pbmc_sorted, tiny_checkpoint):
    adata = pbmc_sorted[:10].copy()
    adata.obs_names = ["cell"] * 10
    result = _embed(adata, tiny_checkpoint)
    assert result.obsm["X_panfoma"].shape[0] == 10


def test_top_gene_selection_does_not_depend_on_cell_names(pbmc_sorted, tiny_checkpoint):
    adata = pbmc_sorted[:30].copy()  # raw counts: many genes of a cell tie
    reference = _embed(adata, tiny_checkpoint, gene_selection="top").obsm["X_panfoma"]
    adata.obs_names = [f"sample1-{name}" for name in adata.obs_names]  # as concatenation renames cells
    renamed = _embed(adata, tiny_checkpoint, gene_selection="top").obsm["X_panfoma"]
    np.testing.assert_array_equal(renamed, reference)


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


@pytest.mark.parametrize("depth", [1, 2])
def test_prefetch_gives_bit_identical_embeddings_in_memory_and_backed(
    pbmc_sorted, tiny_checkpoint, tmp_path, monkeypatch, depth
):
    path = tmp_path / "cells.h5ad"
    pbmc_sorted.write_h5ad(path)
    monkeypatch.setattr(pf.settings, "prefetch", 0)  # tokenize in the calling thread, as before the loader
    reference = _embed(pbmc_sorted, tiny_checkpoint, batch_size=16).obsm["X_panfoma"]  # 7 batches
    monkeypatch.setattr(pf.settings, "prefetch", depth)
    in_memory = _embed(pbmc_sorted, tiny_checkpoint, batch_size=16).obsm["X_panfoma"]
    backed = ad.read_h5ad(path, backed="r")
    assert pf.tl.embed(backed, tiny_checkpoint, batch_size=16, progress=False) is None  # rows read by the worker
    np.testing.assert_array_equal(in_memory, reference)
    np.testing.assert_array_equal(backed.obsm["X_panfoma"], reference)
    backed.file.close()
    assert not [t for t in threading.enumerate() if t.name == THREAD_NAME]


def test_precision_auto_is_fp32_on_cpu_and_recorded(pbmc_sorted, tiny_checkpoint):
    small = pbmc_sorted[:20].copy()
    auto = _embed(small, tiny_checkpoint, device="cpu")
    fp32 = _embed(small, tiny_checkpoint, device="cpu", precision="fp32")
    np.testing.assert_array_equal(auto.obsm["X_panfoma"], fp32.obsm["X_panfoma"])
    assert auto.uns["panfoma"]["params"]["precision"] == "fp32"
    assert fp32.uns["panfoma"]["params"]["precision"] == "fp32"


@pytest.mark.parametrize("how", ["argument", "setting"])
def test_bf16_is_refused_off_cuda_before_any_work(pbmc_sorted, tiny_checkpoint, monkeypatch, how):
    small = pbmc_sorted[:20].copy()
    before = small.copy()
    kwargs = {"precision": "bf16"}
    if how == "setting":
        monkeypatch.setattr(pf.settings, "precision", "bf16")
        kwargs = {}
    with pytest.raises(ValueError, match=r"precision='bf16' \(autocast\) runs on CUDA only.*precision='fp32'"):
        pf.tl.embed(small, tiny_checkpoint, device="cpu", progress=False, **kwargs)
    assert_equal(small, before)


def test_unknown_precision_is_refused(pbmc_sorted, tiny_checkpoint):
    small = pbmc_sorted[:5].copy()
    with pytest.raises(ValueError, match="precision must be one of"):
        pf.tl.embed(small, tiny_checkpoint, device="cpu", precision="fp16", progress=False)
    assert "X_panfoma" not in small.obsm


@pytest.mark.gpu
def test_bf16_autocast_agrees_with_fp32_on_cuda(pbmc_sorted):
    """bf16 stores 7 mantissa bits (rounding error up to 2**-8 ~ 4e-3 per value). Emulated on CPU
    (``benchmarks/precision_bf16.py``: the fp32 path under ``torch.autocast("cpu", bfloat16)``, shipped
    panfoma-tiny 2.0, 256 pbmc3k cells) the per-cell embedding moved by a relative error of at most 0.0028
    (0.0044 with 1.1; cosine >= 0.99999). CUDA's kernels accumulate in a different order and may take the fused
    Mamba path, so the bounds leave 10x room: relative error < 0.05 and cosine > 0.99 per cell. A broken cast
    (a layer in bf16 without fp32 accumulation, a dropped scale) moves embeddings by far more; random vectors
    give a cosine of ~0."""
    model = pf.models.load("panfoma-tiny")
    fp32 = _embed(pbmc_sorted, model, device="cuda", precision="fp32")
    auto = _embed(pbmc_sorted, model, device="cuda")  # auto = bf16 on CUDA
    assert fp32.uns["panfoma"]["params"]["precision"] == "fp32"
    assert auto.uns["panfoma"]["params"]["precision"] == "bf16"
    a, b = fp32.obsm["X_panfoma"], auto.obsm["X_panfoma"]
    assert a.dtype == b.dtype == np.float32
    assert np.isfinite(b).all()
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    relative = np.linalg.norm(b - a, axis=1) / np.linalg.norm(a, axis=1)
    assert cosine.min() > 0.99, f"lowest per-cell cosine {cosine.min():.4f}"
    assert relative.max() < 0.05, f"largest per-cell relative error {relative.max():.4f}"


def test_unavailable_device_is_refused_before_any_work(pbmc_sorted, tiny_checkpoint, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    small = pbmc_sorted[:5].copy()
    before = small.copy()
    with pytest.raises(ValueError, match=r"device='cuda' was requested"):
        pf.tl.embed(small, tiny_checkpoint, device="cuda", progress=False)
    assert_equal(small, before)


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("batch_size", 0, "an integer >= 1"),
        ("batch_size", "64", "an integer >= 1"),
        ("batch_size", True, "an integer >= 1"),
        ("n_genes", -1, "an integer >= 1 or None"),
        ("n_genes", 256.0, "an integer >= 1 or None"),
        ("seed", None, "an integer from 0 to 4294967295"),
        ("seed", -1, "an integer from 0 to 4294967295"),
    ],
)
def test_non_integer_or_out_of_range_settings_are_refused(pbmc_sorted, tiny_checkpoint, option, value, expected):
    adata = pbmc_sorted[:20].copy()
    before = adata.copy()
    with pytest.raises(ValueError, match=re.escape(f"{option} must be {expected}, got {value!r}")):
        pf.tl.embed(adata, tiny_checkpoint, progress=False, **{option: value})
    assert_equal(adata, before)


def test_n_genes_far_above_every_cells_expressed_genes_is_warned_about(pbmc_sorted, tiny_checkpoint, caplog):
    most_expressed = np.argsort(-np.asarray((pbmc_sorted.X > 0).sum(0)).ravel())[:40]
    adata = pbmc_sorted[:10, np.sort(most_expressed)].copy()
    with caplog.at_level("WARNING", logger="panfoma_sc"):
        _embed(adata, tiny_checkpoint, n_genes=256)
    assert "most tokens will be unexpressed filler" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="panfoma_sc"):
        _embed(adata, tiny_checkpoint, n_genes=32)
    assert "filler" not in caplog.text


def test_replacing_a_result_no_panfoma_tool_wrote_is_warned_about(pbmc68k, tiny_checkpoint, caplog):
    adata = pbmc68k[:40].copy()
    adata.obsm["X_mine"] = np.zeros((adata.n_obs, 3))
    with caplog.at_level("WARNING", logger="panfoma_sc"):
        pf.tl.embed(adata, tiny_checkpoint, key_added="X_mine", progress=False, n_genes=32)
    assert "pf.tl.embed replaces adata.obsm['X_mine'], which no panfoma tool wrote" in caplog.text
    assert adata.obsm["X_mine"].shape[1] == 32
    caplog.clear()
    with caplog.at_level("WARNING", logger="panfoma_sc"):  # a rerun replaces its own result silently
        pf.tl.embed(adata, tiny_checkpoint, key_added="X_mine", progress=False, n_genes=32)
        pf.tl.embed(adata, tiny_checkpoint, key_added="X_pf", progress=False, n_genes=32, copy=True)
    assert "no panfoma tool wrote" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="panfoma_sc"), pytest.raises(ValueError, match="batch_size"):
        pf.tl.embed(adata, tiny_checkpoint, key_added="X_mine", batch_size=0, progress=False)  # refused: no warning
    assert "replaces" not in caplog.text


def test_replacing_another_panfoma_tools_result_names_that_tool(pbmc68k, tiny_checkpoint, caplog):
    adata = pbmc68k[:40].copy()
    adata.obs["batch"] = np.repeat(["a", "b"], 20)
    pf.tl.integrate(adata, "batch", model=tiny_checkpoint, max_steps=1, n_genes=32, progress=False)
    with caplog.at_level("WARNING", logger="panfoma_sc"):
        pf.tl.embed(adata, tiny_checkpoint, key_added="X_panfoma_integrated", progress=False, n_genes=32)
    expected = "pf.tl.embed replaces adata.obsm['X_panfoma_integrated'] and adata.uns['X_panfoma_integrated'], which "
    assert expected + "an earlier pf.tl.integrate call wrote" in caplog.text
    assert adata.uns["X_panfoma_integrated"]["params"]["tool"] == "pf.tl.embed"
    caplog.clear()
    with caplog.at_level("WARNING", logger="panfoma_sc"):  # now embed's own result: a rerun
        pf.tl.embed(adata, tiny_checkpoint, key_added="X_panfoma_integrated", progress=False, n_genes=32)
    assert "replaces" not in caplog.text
    del adata.uns["X_panfoma_integrated"]["params"]["tool"]  # a record from before records named their tool
    with caplog.at_level("WARNING", logger="panfoma_sc"):
        pf.tl.embed(adata, tiny_checkpoint, key_added="X_panfoma_integrated", progress=False, n_genes=32)
    assert "replaces" not in caplog.text
