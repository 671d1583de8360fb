"""Every tool refuses bad input with a clear message, before any work, and leaves every AnnData as it was."""

from __future__ import annotations

import numpy as np
import pytest
from anndata.tests.helpers import assert_equal

import panfoma_sc as pf

CASES = ["nan", "inf", "z-scored", "empty cell", "no overlap", "missing layer", "missing gene_symbols", "zero cells"]


def _run(tool: str, adata, reference, checkpoint, **kwargs):
    if tool == "embed":
        return pf.tl.embed(adata, checkpoint, progress=False, **kwargs)
    if tool.startswith("annotate"):
        method = tool.split("-")[1]
        return pf.tl.annotate(
            adata, reference, labels_key="cell_type", model=checkpoint, method=method, progress=False, **kwargs
        )
    return pf.tl.integrate(adata, "batch", model=checkpoint, max_steps=1, progress=False, **kwargs)


TOOLS = ["embed", "annotate-knn", "annotate-logreg", "annotate-finetune", "integrate"]


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("case", CASES)
def test_bad_query_raises_before_work_and_leaves_adata_untouched(pbmc_sorted, bad_inputs, tiny_checkpoint, tool, case):
    adata, kwargs, message = bad_inputs[case]
    reference = pbmc_sorted[20:].copy()
    before, reference_before = adata.copy(), reference.copy()
    with pytest.raises((ValueError, KeyError), match=message):
        _run(tool, adata, reference, tiny_checkpoint, **kwargs)
    assert_equal(adata, before)
    assert_equal(reference, reference_before)


@pytest.mark.parametrize("method", ["knn", "logreg", "finetune"])
@pytest.mark.parametrize("case", ["nan", "inf", "z-scored", "empty cell", "no overlap", "zero cells"])
def test_bad_reference_raises_and_leaves_both_untouched(pbmc_sorted, bad_inputs, tiny_checkpoint, method, case):
    reference, _, message = bad_inputs[case]
    query = pbmc_sorted[20:40].copy()
    if case == "zero cells":
        message = "no labels|no cells"
    before, reference_before = query.copy(), reference.copy()
    with pytest.raises((ValueError, KeyError), match=message):
        pf.tl.annotate(query, reference, labels_key="cell_type", model=tiny_checkpoint, method=method, progress=False)
    assert_equal(query, before)
    assert_equal(reference, reference_before)


@pytest.mark.parametrize(
    ("change", "message", "error"),
    [
        ("missing", "batch_key='batch' is not a column", KeyError),
        ("one batch", "single batch", ValueError),
        ("nan", "missing values", ValueError),
    ],
)
def test_bad_batch_key_raises_and_leaves_adata_untouched(pbmc_sorted, tiny_checkpoint, change, message, error):
    adata = pbmc_sorted[:20].copy()
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    if change == "missing":
        del adata.obs["batch"]
    elif change == "one batch":
        adata.obs["batch"] = "a"
    else:
        adata.obs.loc[adata.obs_names[0], "batch"] = np.nan
    before = adata.copy()
    with pytest.raises(error, match=message):
        pf.tl.integrate(adata, "batch", model=tiny_checkpoint, progress=False)
    assert_equal(adata, before)


def test_bad_key_added_raises(pbmc_sorted, tiny_checkpoint):
    adata = pbmc_sorted[:20].copy()
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    before = adata.copy()
    with pytest.raises(ValueError, match="key_added"):
        pf.tl.embed(adata, tiny_checkpoint, key_added="", progress=False)
    with pytest.raises(ValueError, match="key_added"):
        pf.tl.integrate(adata, "batch", model=tiny_checkpoint, key_added="", progress=False)
    assert_equal(adata, before)


def test_duplicate_gene_and_cell_names_work_in_every_tool(pbmc_sorted, tiny_checkpoint):
    adata = pbmc_sorted[:24].copy()
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    names = adata.var_names.tolist()
    names[1] = names[0].lower()  # the same gene twice (the first column is used)
    adata.var_names = names
    adata.obs_names = ["cell"] * adata.n_obs
    reference = pbmc_sorted[24:].copy()
    pf.tl.annotate(adata, reference, labels_key="cell_type", model=tiny_checkpoint, progress=False)
    assert adata.obs["panfoma_label"].notna().all()
    assert adata.uns["panfoma_label"]["genes"]["n_duplicated"] == 1
    pf.tl.integrate(adata, "batch", model=tiny_checkpoint, max_steps=1, progress=False)
    assert adata.obsm["X_panfoma_integrated"].shape[0] == adata.n_obs


@pytest.mark.parametrize("tool", TOOLS)
def test_bf16_setting_off_cuda_is_refused_before_any_work(pbmc_sorted, tiny_checkpoint, monkeypatch, tool):
    import panfoma_sc.train

    def no_work(*args, **kwargs):
        msg = "the tool fine-tuned before refusing precision='bf16'"
        raise AssertionError(msg)

    monkeypatch.setattr(panfoma_sc.train, "finetune_integration", no_work)
    monkeypatch.setattr(panfoma_sc.train, "finetune_classifier", no_work)
    monkeypatch.setattr(pf.settings, "precision", "bf16")
    adata = pbmc_sorted[:20].copy()
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    reference = pbmc_sorted[20:].copy()
    before, reference_before = adata.copy(), reference.copy()
    with pytest.raises(ValueError, match="runs on CUDA only"):
        _run(tool, adata, reference, tiny_checkpoint, device="cpu")
    assert_equal(adata, before)
    assert_equal(reference, reference_before)
