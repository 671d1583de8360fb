"""Fixtures of the tools' tests: bad AnnData inputs, each with the words its error must contain."""

from __future__ import annotations

import numpy as np
import pytest
from anndata import AnnData


def _with_x(adata: AnnData, x: np.ndarray) -> AnnData:
    out = adata.copy()
    out.X = x
    return out


@pytest.fixture
def bad_inputs(pbmc_sorted: AnnData) -> dict[str, tuple[AnnData, dict, str]]:
    """``case -> (adata, extra kwargs, message pattern)`` on 20 real PBMCs (with a two-batch column)."""
    base = pbmc_sorted[:20].copy()
    base.obs["batch"] = np.where(np.arange(base.n_obs) % 2, "a", "b")
    x = base.X.toarray().astype(np.float32)
    nan = x.copy()
    nan[0, np.flatnonzero(nan[0])[0]] = np.nan
    inf = x.copy()
    inf[3, np.flatnonzero(inf[3])[0]] = np.inf
    negative = x.copy()
    negative[1, 0] = -1.0
    empty = x.copy()
    empty[2] = 0
    renamed = base.copy()
    renamed.var_names = [f"gene{i}" for i in range(base.n_vars)]
    return {
        "nan": (_with_x(base, nan), {}, "NaN"),
        "inf": (_with_x(base, inf), {}, "infinite"),
        "z-scored": (_with_x(base, negative), {}, "z-scored"),
        "empty cell": (_with_x(base, empty), {}, "no expressed gene"),
        "no overlap": (renamed, {}, "vocabulary"),
        "missing layer": (base.copy(), {"layer": "counts"}, "counts"),
        "missing gene_symbols": (base.copy(), {"gene_symbols": "symbol"}, "not a column"),
        "zero cells": (base[:0].copy(), {}, "no cells"),
    }
