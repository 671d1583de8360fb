from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import panfoma_sc as pf


def _levels(pattern: dict[str, list[int]], n: int = 40) -> ad.AnnData:
    """Cells in blocks of ``n``; each marker high (1) or low (0) per block, with noise."""
    rng = np.random.default_rng(0)
    markers = list(pattern)
    x = np.concatenate(
        [np.array([[pattern[m][b] * 3.0 for m in markers]]) + rng.normal(0, 0.3, (n, len(markers))) for b in range(4)]
    )
    obs = pd.DataFrame({"batch": np.tile(["a", "b"], 2 * n)}, index=[f"c{i}" for i in range(4 * n)])
    return ad.AnnData(x.astype(np.float32), obs=obs, var=pd.DataFrame(index=[f"{m}_TotalSeqB" for m in markers]))


def test_gate_cells_follows_the_marker_rules():
    gates = {"T": {"CD3": True, "CD19": False}, "B": {"CD3": False, "CD19": True}}
    protein = _levels({"CD3": [1, 0, 0, 1], "CD19": [0, 1, 0, 1]})
    labels = pf.bench.gate_cells(protein, gates, batch_key="batch")
    assert list(labels.iloc[[0, 40, 80, 120]]) == ["T", "B", "ungated", "ungated"]
    assert (labels.iloc[:40] == "T").all()
    assert (labels.iloc[40:80] == "B").all()


def test_gate_cells_names_missing_markers():
    protein = _levels({"CD3": [1, 0, 0, 1]})
    with pytest.raises(KeyError, match="CD19"):
        pf.bench.gate_cells(protein, {"B": {"CD19": True}})


def test_pbmc_gates_on_real_citeseq():
    folder = os.environ.get("PANFOMA_DATA_DIR")
    name = "pbmc_citeseq_10x_5k_10k_400cells.h5mu"
    if not folder or not (Path(folder) / name).is_file():
        pytest.skip(f"{name} not found: set PANFOMA_DATA_DIR")
    md = pytest.importorskip("mudata")
    mu = pytest.importorskip("muon")
    prot = md.read_h5mu(Path(folder) / name).mod["prot"]
    shared = np.asarray(prot[prot.obs["batch"] == "10x 10k PBMC protein v3"].X.sum(0) > 0).ravel()
    prot = prot[:, shared].copy()  # the 14 antibodies of both panels
    mu.prot.pp.clr(prot, axis=1)
    labels = pf.bench.gate_cells(prot, batch_key="batch")
    counts = labels.value_counts()
    assert set(pf.bench.PBMC_CITESEQ_GATES) <= set(counts.index)
    assert counts["ungated"] < 0.1 * prot.n_obs
    assert counts["CD4 T"] > counts["B"]  # PBMC: CD4 T cells outnumber B cells
