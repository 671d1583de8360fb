from __future__ import annotations

import shutil

import anndata as ad
import numpy as np
import pytest

import panfoma_sc as pf
from panfoma_sc.models._registry import _builtin_entries


def test_default_model_is_bundled_and_loads_offline():
    entry = _builtin_entries()["panfoma-tiny"]
    assert entry.source == "bundled"
    model = pf.models.load("panfoma-tiny")
    assert model.sha256 == entry.sha256
    assert model.info["trained_on"]["steps"] > 0
    assert model.config.d_model == 128
    table = pf.models.available().set_index("name")
    assert bool(table.loc["panfoma-tiny", "available_offline"])


def test_corrupted_copy_of_the_default_model_fails_its_checksum(tmp_path):
    entry = _builtin_entries()["panfoma-tiny"]
    model = pf.models.load("panfoma-tiny")
    copy = tmp_path / "tiny.safetensors"
    shutil.copy(model.path, copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    pf.models.register("tiny-copy", copy, overwrite=True)
    registered = pf.models.available().set_index("name").loc["tiny-copy"]
    assert registered["source"] == "local"
    # the file changes after registration: the next load must notice
    data[len(data) // 3] ^= 0x01
    copy.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="Checksum mismatch"):
        pf.models.load("tiny-copy")
    assert entry.sha256 != pf.models.sha256sum(copy)


def test_pretraining_beats_random_weights_on_held_out_cells(pbmc_sorted_session, tmp_path):
    """On FACS-sorted PBMCs that pretraining never saw, kNN label transfer must beat the same random network."""
    import torch

    from panfoma_sc.nn import PanFoMa

    adata: ad.AnnData = pbmc_sorted_session.copy()
    trained = pf.models.load("panfoma-tiny")
    torch.manual_seed(0)
    random_path = tmp_path / "random.safetensors"
    pf.models.write_checkpoint(random_path, PanFoMa(trained.config), trained.vocab)
    labels = adata.obs["cell_type"].to_numpy()
    scores = {}
    for name, model in {"trained": trained, "random": random_path}.items():
        emb = pf.tl.embed(adata, model, n_genes=256, copy=True, progress=False).obsm["X_panfoma"]
        scores[name] = pf.bench.knn_transfer(emb, labels, k=5)["accuracy"]
    assert scores["trained"] > scores["random"] + 0.05, scores
    assert np.isfinite(list(scores.values())).all()
