"""MuData: ``pf.tl.embed`` on the RNA modality, ``pf.tl.integrate`` joint RNA + protein / ATAC, bad input."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from anndata.tests.helpers import assert_equal

import panfoma_sc as pf
from panfoma_sc.tl._embedding_job import EmbeddingJob

md = pytest.importorskip("mudata")
mu = pytest.importorskip("muon")

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # mudata's own pull_on_update notice

CITESEQ = "pbmc_citeseq_10x_5k_10k_400cells.h5mu"


@pytest.fixture(scope="session")
def citeseq_session():
    folder = os.environ.get("PANFOMA_DATA_DIR")
    if not folder or not (Path(folder) / CITESEQ).is_file():
        pytest.skip(f"{CITESEQ} not found: set PANFOMA_DATA_DIR to the shared data folder")
    mdata = md.read_h5mu(Path(folder) / CITESEQ)
    return mdata[np.r_[0:16, 200:216]].copy()  # 16 cells of each 10x run (two protein panels)


@pytest.fixture
def citeseq(citeseq_session):
    """32 real CITE-seq PBMCs (RNA + 29 ADTs, two batches), a fresh copy per test."""
    return citeseq_session.copy()


@pytest.fixture
def multiome(pbmc_sorted):
    """Real RNA of 30 PBMCs with a generated peak matrix (mechanics only: no real multiome data here)."""
    rna = pbmc_sorted[:30].copy()
    rng = np.random.default_rng(0)
    peaks = rng.poisson(0.3, size=(rna.n_obs, 120)).astype(np.float32)
    peaks[:, :40] += rng.poisson(1.0, size=(rna.n_obs, 40)) * (rna.obs["cell_type"].cat.codes.to_numpy() % 2)[:, None]
    names = [f"chr{1 + i // 40}:{1000 * i + 1}-{1000 * i + 500}" for i in range(peaks.shape[1])]
    atac = ad.AnnData(peaks, obs=pd.DataFrame(index=rna.obs_names), var=pd.DataFrame(index=names))
    return md.MuData({"rna": rna, "atac": atac})


def assert_mudata_equal(a, b) -> None:
    assert list(a.mod) == list(b.mod)
    for name in a.mod:
        assert_equal(a.mod[name], b.mod[name])
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert sorted(a.obsm) == sorted(b.obsm)
    for key in a.obsm:
        np.testing.assert_array_equal(np.asarray(a.obsm[key]), np.asarray(b.obsm[key]))
    assert_equal(dict(a.uns), dict(b.uns))


def test_embed_mudata_writes_modality_and_joint_obsm(citeseq, tiny_checkpoint):
    before = citeseq.copy()
    result = pf.tl.embed(citeseq, tiny_checkpoint, progress=False, copy=True, key_added="X_pf")
    assert_mudata_equal(citeseq, before)  # copy=True leaves the input alone
    rna_only = pf.tl.embed(citeseq.mod["rna"], tiny_checkpoint, progress=False, copy=True).obsm["X_panfoma"]
    np.testing.assert_allclose(result.mod["rna"].obsm["X_pf"], rna_only, atol=1e-5)
    np.testing.assert_allclose(result.obsm["X_pf"], rna_only, atol=1e-5)
    assert result.uns["X_pf"]["params"]["modality"] == "rna"
    assert_equal(result.mod["rna"].uns["X_pf"], result.uns["X_pf"])
    result.uns["X_pf"]["params"]["note"] = "edited"  # two records: editing one leaves the other as it was
    assert "note" not in result.mod["rna"].uns["X_pf"]["params"]
    assert pf.tl.embed(citeseq, tiny_checkpoint, progress=False) is None
    assert citeseq.obsm["X_panfoma"].shape == (citeseq.n_obs, 32)


def test_embed_mudata_cells_missing_from_rna_get_nan_rows(citeseq, tiny_checkpoint, caplog):
    mdata = md.MuData({"rna": citeseq.mod["rna"][:30].copy(), "prot": citeseq.mod["prot"].copy()})
    with caplog.at_level(logging.WARNING):
        pf.tl.embed(mdata, tiny_checkpoint, progress=False)
    assert "mu.pp.intersect_obs" in caplog.text
    assert mdata.mod["rna"].obsm["X_panfoma"].shape == (30, 32)
    missing = ~mdata.obs_names.isin(mdata.mod["rna"].obs_names)
    assert missing.sum() == 2
    assert np.isnan(mdata.obsm["X_panfoma"][missing]).all()
    assert np.isfinite(mdata.obsm["X_panfoma"][~missing]).all()


def test_replacing_mudata_entries_no_panfoma_tool_wrote_is_warned_about(citeseq, tiny_checkpoint, caplog):
    citeseq.obsm["X_mine"] = np.zeros((citeseq.n_obs, 2))
    citeseq.mod["rna"].uns["X_mine"] = {"mine": 1}
    with caplog.at_level(logging.WARNING, logger="panfoma_sc"):
        pf.tl.embed(citeseq, tiny_checkpoint, key_added="X_mine", progress=False)
    assert "pf.tl.embed replaces mdata.obsm['X_mine'], which no panfoma tool wrote" in caplog.text
    assert "pf.tl.embed replaces mdata.mod['rna'].uns['X_mine'], which no panfoma tool wrote" in caplog.text
    citeseq.uns["X_joint"] = {"mine": 1}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="panfoma_sc"):
        pf.tl.embed(citeseq, tiny_checkpoint, key_added="X_mine", progress=False)  # a rerun: silent
        pf.tl.integrate(citeseq, None, model=tiny_checkpoint, method="late_fusion", key_added="X_joint", progress=False)
    assert caplog.text.count("which no panfoma tool wrote") == 1
    assert "pf.tl.integrate replaces mdata.uns['X_joint'], which no panfoma tool wrote" in caplog.text


def test_integrate_joint_protein_then_scanpy_graph_and_umap(citeseq, tiny_checkpoint, tmp_path):
    zero_shot = pf.tl.embed(citeseq.mod["rna"], tiny_checkpoint, progress=False, copy=True).obsm["X_panfoma"]
    result = pf.tl.integrate(
        citeseq, "batch", model=tiny_checkpoint, max_steps=2, batch_size=16, progress=False, copy=True
    )
    assert "X_panfoma_integrated" not in citeseq.obsm
    joint = result.obsm["X_panfoma_integrated"]
    assert joint.shape == (citeseq.n_obs, 32)
    assert joint.dtype == np.float32
    assert np.isfinite(joint).all()
    assert not np.allclose(joint, zero_shot, atol=1e-3)
    uns = result.uns["X_panfoma_integrated"]
    params = uns["params"]
    assert params["method"] == "joint"
    assert params["steps"] == 2
    base = pf.models.load(tiny_checkpoint)
    # the joint network exists only in this result: named after its starting point, with the settings that shaped it
    assert params["model"] == f"{base.name}-joint"
    assert "sha256" not in params
    assert (params["fine_tuned_from"], params["fine_tuned_from_name"]) == (base.sha256, base.name)
    assert params["fine_tuning"]["batch_size"] == 16
    assert params["fine_tuning"]["max_steps"] == 2
    assert not {"validation_fraction", "patience", "probe_steps"} & set(params["fine_tuning"])
    prot = uns["modalities"]["prot"]
    assert prot["n_features"] == 14  # the 10k panel has 14 of the 29 antibodies
    assert prot["n_left_out_not_in_every_batch"] == 15
    assert {"loss_feature", "loss_mvc", "loss_batch"} <= set(uns["losses"])
    result.write(tmp_path / "joint.h5mu")  # the provenance is storable
    assert "X_panfoma_integrated" in md.read_h5mu(tmp_path / "joint.h5mu").uns
    sc.pp.neighbors(result, use_rep="X_panfoma_integrated", n_neighbors=5)
    sc.tl.umap(result)
    assert result.obsm["X_umap"].shape == (citeseq.n_obs, 2)


def test_integrate_late_fusion(citeseq, tiny_checkpoint):
    pf.tl.integrate(
        citeseq, "batch", model=tiny_checkpoint, method="late_fusion", key_added="X_late", max_steps=1, progress=False
    )
    assert citeseq.obsm["X_late"].shape == (citeseq.n_obs, 32 + 14)  # RNA + PCA of the 14 shared proteins
    params = citeseq.uns["X_late"]["params"]
    assert params["method"] == "late_fusion"
    assert "learning_rate" in params  # the RNA part was fine-tuned
    assert "feature_weight" not in params  # late fusion reconstructs no features
    pf.tl.integrate(citeseq, None, model=tiny_checkpoint, method="late_fusion", key_added="X_plain", progress=False)
    params = citeseq.uns["X_plain"]["params"]
    assert not {"learning_rate", "max_epochs", "mmd_weight", "feature_weight"} & set(params)  # nothing fine-tuned


def test_integrate_joint_atac_on_generated_peaks(multiome, tiny_checkpoint):
    pf.tl.integrate(multiome, model=tiny_checkpoint, max_steps=1, progress=False)
    assert multiome.obsm["X_panfoma_integrated"].shape == (multiome.n_obs, 32)
    atac = multiome.uns["X_panfoma_integrated"]["modalities"]["atac"]
    assert atac["kind"] == "atac"
    assert atac["n_chromosomes"] == 3
    assert atac["n_features"] >= 2


def _renamed(mdata, name, names):
    mod = mdata.mod[name].copy()
    mod.obs_names = names
    mods = {k: (mod if k == name else v.copy()) for k, v in mdata.mod.items()}
    return md.MuData(mods)


def _bad_citeseq(citeseq, case):
    """``(mdata, kwargs, error, message)`` of one bad input."""
    if case == "missing modality":
        # no modality with a usual RNA name to suggest: the message does not suggest a wrong one
        expected = r"no modality 'gex' .*Pass modality= the name of the RNA modality\.\W*$"
        return citeseq, {"modality": "gex"}, KeyError, expected
    if case == "missing protein modality":
        return citeseq, {"protein": "adt"}, KeyError, "no modality 'adt' .* e.g. protein='prot'"
    if case == "protein is the RNA modality":
        return citeseq, {"protein": "rna"}, ValueError, r"protein='rna' is the RNA modality \(modality='rna'\)"
    if case == "ADT not measured in some cells":
        bad = citeseq.copy()
        prot = np.asarray(bad.mod["prot"].X.todense() if hasattr(bad.mod["prot"].X, "todense") else bad.mod["prot"].X)
        prot = prot.astype(np.float32)
        prot[:5] = np.nan
        bad.mod["prot"].X = prot
        return bad, {}, ValueError, r"NaN or infinite values in 5 of 32 cells \(5 of them have no value at all"
    if case == "no shared cells":
        bad = _renamed(citeseq, "prot", [f"other{i}" for i in range(citeseq.n_obs)])
        return bad, {}, ValueError, "share no cells"
    if case == "cells not in every modality":
        bad = md.MuData({"rna": citeseq.mod["rna"][:30].copy(), "prot": citeseq.mod["prot"].copy()})
        return bad, {}, ValueError, "intersect_obs"
    if case == "protein passed as RNA":
        return citeseq, {"modality": "prot", "protein": "rna"}, ValueError, "RNA modality"
    if case == "RNA passed as protein":
        bad = md.MuData({"rna": citeseq.mod["rna"].copy(), "prot": citeseq.mod["rna"].copy()})
        return bad, {}, ValueError, "looks like RNA"
    if case == "no protein counts":
        bad = citeseq.copy()
        bad.mod["prot"].X = bad.mod["prot"].X * 0
        return bad, {}, ValueError, "no counts"
    if case == "non-count ADT":
        bad = citeseq.copy()
        mu.prot.pp.clr(bad.mod["prot"], axis=1)
        return bad, {}, ValueError, "raw ADT counts"
    if case == "no other modality":
        bad = md.MuData({"rna": citeseq.mod["rna"].copy()})
        return bad, {}, ValueError, "No protein or ATAC"
    if case == "single batch":
        bad = citeseq.copy()
        bad.obs["run"] = "one"
        return bad, {"batch_key": "run"}, ValueError, "single batch"
    if case == "missing batch column":
        return citeseq, {"batch_key": "donor"}, KeyError, "batch_key='donor'"
    if case == "bad method":
        return citeseq, {"method": "wnn"}, ValueError, "method='wnn' is not available"
    if case == "bad fine-tuning settings for late fusion":
        return citeseq, {"method": "late_fusion", "max_epochs": -5}, ValueError, "max_epochs must be an integer >= 1"
    if case == "bad learning rate":
        return citeseq, {"method": "late_fusion", "learning_rate": -1.0}, ValueError, "learning_rate must be"
    if case == "key named like a modality":
        return citeseq, {"key_added": "prot"}, ValueError, r"key_added='prot' is the name of a modality"
    raise AssertionError(case)


CASES = [
    "missing modality",
    "missing protein modality",
    "protein is the RNA modality",
    "ADT not measured in some cells",
    "no shared cells",
    "cells not in every modality",
    "protein passed as RNA",
    "RNA passed as protein",
    "no protein counts",
    "non-count ADT",
    "no other modality",
    "single batch",
    "missing batch column",
    "bad method",
    "bad fine-tuning settings for late fusion",
    "bad learning rate",
    "key named like a modality",
]


@pytest.mark.parametrize("case", CASES)
def test_integrate_bad_mudata_raises_and_leaves_it_untouched(citeseq, tiny_checkpoint, case):
    mdata, kwargs, error, message = _bad_citeseq(citeseq, case)
    before = mdata.copy()
    with pytest.raises(error, match=message):
        pf.tl.integrate(mdata, model=tiny_checkpoint, max_steps=1, progress=False, **kwargs)
    assert_mudata_equal(mdata, before)


@pytest.mark.parametrize("case", ["missing modality", "protein passed as RNA", "key named like a modality"])
def test_embed_bad_mudata_raises_and_leaves_it_untouched(citeseq, tiny_checkpoint, case):
    mdata, kwargs, error, message = _bad_citeseq(citeseq, case)
    kwargs.pop("protein", None)
    before = mdata.copy()
    with pytest.raises(error, match=message):
        pf.tl.embed(mdata, tiny_checkpoint, progress=False, **kwargs)
    assert_mudata_equal(mdata, before)


def test_atac_without_peak_coordinates_raises_and_leaves_mudata_untouched(multiome, tiny_checkpoint):
    atac = multiome.mod["atac"].copy()
    atac.var_names = [f"peak{i}" for i in range(atac.n_vars)]
    mdata = md.MuData({"rna": multiome.mod["rna"].copy(), "atac": atac})
    before = mdata.copy()
    with pytest.raises(ValueError, match="no coordinates"):
        pf.tl.integrate(mdata, model=tiny_checkpoint, max_steps=1, progress=False)
    assert_mudata_equal(mdata, before)


@pytest.mark.parametrize("tool", ["embed", "integrate"])
def test_copy_of_a_backed_mudata_is_refused_before_any_work(citeseq, tiny_checkpoint, tmp_path, tool, monkeypatch):
    citeseq.write_h5mu(tmp_path / "cells.h5mu")
    backed = md.read_h5mu(tmp_path / "cells.h5mu", backed=True)
    monkeypatch.setattr(EmbeddingJob, "run", lambda *a, **k: pytest.fail("the model ran"))
    call = pf.tl.embed if tool == "embed" else pf.tl.integrate
    with pytest.raises(ValueError, match=r"mdata is backed .*copy=False to write the result into mdata"):
        call(backed, model=tiny_checkpoint, copy=True, progress=False)
    assert "X_panfoma" not in backed.obsm
    assert "X_panfoma_integrated" not in backed.obsm


def test_naming_only_atac_leaves_the_proteins_out(multiome, tiny_checkpoint):
    rna = multiome.mod["rna"]
    rng = np.random.default_rng(0)
    prot = ad.AnnData(
        rng.poisson(5.0, size=(rna.n_obs, 6)).astype(np.float32),
        obs=pd.DataFrame(index=rna.obs_names),
        var=pd.DataFrame(index=["CD3", "CD4", "CD8", "CD14", "CD19", "CD56"]),
    )
    mdata = md.MuData({"rna": rna.copy(), "prot": prot, "atac": multiome.mod["atac"].copy()})
    pf.tl.integrate(mdata, model=tiny_checkpoint, atac="atac", method="late_fusion", progress=False)
    assert list(mdata.uns["X_panfoma_integrated"]["modalities"]) == ["atac"]
    # neither named: both found by their usual names
    pf.tl.integrate(mdata, model=tiny_checkpoint, method="late_fusion", key_added="both", progress=False)
    assert set(mdata.uns["both"]["modalities"]) == {"prot", "atac"}


def test_duplicate_cell_names_get_a_fix_that_works(citeseq, tiny_checkpoint):
    renamed = {}
    for key, mod in citeseq.mod.items():
        renamed[key] = mod.copy()
        renamed[key].obs_names = ["same", "same", *mod.obs_names[2:]]
    mdata = md.MuData(renamed)
    with pytest.raises(ValueError, match=r"obs_names are not unique \(e.g. \['same'\]\).*then call mdata.update\(\)"):
        pf.tl.embed(mdata, tiny_checkpoint, progress=False)
    for mod in mdata.mod.values():
        assert "X_panfoma" not in mod.obsm
        mod.obs_names = ["first", "second", *mod.obs_names[2:]]  # the fix the message gives
    mdata.update()
    pf.tl.embed(mdata, tiny_checkpoint, progress=False)
    assert mdata.obsm["X_panfoma"].shape == (32, 32)
