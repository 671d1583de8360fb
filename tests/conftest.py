"""Shared fixtures: real data from PANFOMA_DATA_DIR, a tiny random-weight checkpoint, offline settings."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

import panfoma_sc as pf

DATA_DIR = os.environ.get("PANFOMA_DATA_DIR")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own registry/cache folder, so user registrations never leak between tests."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setattr(pf.settings, "cache_dir", cache)
    return cache


@pytest.fixture
def value_reads(monkeypatch) -> list[str]:
    """Names of the tensor-reading methods (``float()``, ``bool()``, ``.item()``, ...) the package calls.

    Each such read makes the host wait for the device; torch's own reads (e.g. of the optimizer's CPU step
    counter) are not counted.
    """
    import sys

    import torch

    reads: list[str] = []
    for method in ("__float__", "__bool__", "__int__", "item", "tolist"):
        original = getattr(torch.Tensor, method)

        def counted(self, *args, _original=original, _method=method, **kwargs):
            if "panfoma_sc" in sys._getframe(1).f_code.co_filename:
                reads.append(_method)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)
    return reads


def _real_data_path(name: str) -> Path:
    if not DATA_DIR:
        pytest.skip("PANFOMA_DATA_DIR is not set: real-data tests need the shared data folder")
    path = Path(DATA_DIR) / name
    if not path.is_file():
        pytest.skip(f"{name} not found in PANFOMA_DATA_DIR={DATA_DIR}")
    return path


@pytest.fixture(scope="session")
def pbmc_sorted_session() -> ad.AnnData:
    adata = ad.read_h5ad(_real_data_path("pbmc_sorted_9types_mudan_2115cells.h5ad"))
    # a stratified, fixed subset keeps the tests fast on 2 cores
    rng = np.random.default_rng(0)
    keep = np.sort(
        np.concatenate(
            [
                rng.choice(np.flatnonzero(adata.obs["cell_type"] == c), 12, replace=False)
                for c in adata.obs["cell_type"].unique()
            ]
        )
    )
    return adata[keep].copy()


@pytest.fixture
def pbmc_sorted(pbmc_sorted_session) -> ad.AnnData:
    """108 real FACS-sorted PBMCs (raw counts, 9 labelled types), a fresh copy per test."""
    return pbmc_sorted_session.copy()


@pytest.fixture
def lung_lines() -> ad.AnnData:
    """120 real cells of three lung cancer lines (raw counts) by two protocols (``obs["batch"]``)."""
    adata = ad.read_h5ad(_real_data_path("lung_celllines_3cl_celseq2_dropseq.h5ad"))
    return sc.pp.sample(adata, n=120, rng=0, copy=True)


@pytest.fixture
def pbmc68k() -> ad.AnnData:
    """scanpy's bundled pbmc68k_reduced (700 cells; log-normalized values in .raw)."""
    return sc.datasets.pbmc68k_reduced().raw.to_adata()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A small random-weight checkpoint whose vocabulary covers the test data's genes."""
    import torch

    from panfoma_sc.data import GeneVocabulary
    from panfoma_sc.models import write_checkpoint
    from panfoma_sc.nn import PanFoMa, PanFoMaConfig

    genes = list(sc.datasets.pbmc68k_reduced().raw.var_names)
    if DATA_DIR and (Path(DATA_DIR) / "pbmc_sorted_9types_mudan_2115cells.h5ad").is_file():
        extra = ad.read_h5ad(Path(DATA_DIR) / "pbmc_sorted_9types_mudan_2115cells.h5ad", backed="r").var_names
        genes = list(dict.fromkeys(g.upper() for g in [*genes, *extra]))
    vocab = GeneVocabulary(sorted(set(g.upper() for g in genes)))
    config = PanFoMaConfig(
        vocab_size=len(vocab),
        d_model=32,
        n_heads=4,
        encoder_repeats=2,
        decoder_layers=2,
        n_genes=64,
        n_chunks=4,
        d_state=8,
        headdim=16,
        ssd_chunk_size=16,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny-random.safetensors"
    write_checkpoint(path, PanFoMa(config), vocab, info={"name": "tiny-random"})
    return path
