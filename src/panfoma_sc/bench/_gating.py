"""Cell labels from protein markers (gating), for CITE-seq data without author annotations.

The labels come from the proteins alone, through fixed marker rules, never from an embedding being evaluated.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from sklearn.mixture import GaussianMixture

__all__ = ["PBMC_CITESEQ_GATES", "gate_cells", "marker_positive"]

#: PBMC populations from the markers shared by the 10x TotalSeq-B panels (5k and 10k PBMC protein v3):
#: label -> {marker: positive (True) or negative (False)}. The rules are mutually exclusive.
PBMC_CITESEQ_GATES: dict[str, dict[str, bool]] = {
    "CD4 T": {"CD3": True, "CD4": True, "CD8a": False},
    "CD8 T": {"CD3": True, "CD8a": True, "CD4": False},
    "B": {"CD3": False, "CD19": True},
    "CD14 monocyte": {"CD3": False, "CD19": False, "CD14": True},
    "NK": {"CD3": False, "CD19": False, "CD14": False, "CD56": True},
    "CD16 monocyte": {"CD3": False, "CD19": False, "CD14": False, "CD56": False, "CD16": True},
}


def _marker_columns(var_names: pd.Index, markers: list[str]) -> dict[str, int]:
    """Column of each marker; a name matches up to a ``_`` suffix (``CD3_TotalSeqB``), in any case."""
    keys = [str(name).split("_")[0].upper() for name in var_names]
    columns, missing = {}, []
    for marker in markers:
        hits = [i for i, key in enumerate(keys) if key == marker.upper()]
        if hits:
            columns[marker] = hits[0]
        else:
            missing.append(marker)
    if missing:
        msg = f"No protein for markers {missing} (proteins: {list(var_names)[:10]}...). Pass gates for your panel."
        raise KeyError(msg)
    return columns


def marker_positive(values: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Positive/negative call of one marker: a two-component Gaussian mixture on its (CLR) levels.

    A cell is positive when the higher-mean component is the more probable one.

    Parameters
    ----------
    values
        ``(cells,)`` normalized levels of the marker.
    seed
        Seed of the mixture fit.

    Returns
    -------
    ``(cells,)`` bool.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    if values.shape[0] < 2 or np.ptp(values) == 0:
        return np.zeros(values.shape[0], dtype=bool)
    mixture = GaussianMixture(2, random_state=seed).fit(values)
    return mixture.predict(values) == int(np.argmax(mixture.means_.ravel()))


def gate_cells(
    protein: AnnData,
    gates: dict[str, dict[str, bool]] | None = None,
    *,
    batch_key: str | None = None,
    unassigned: str = "ungated",
) -> pd.Series:
    """Label cells by marker gates on their protein levels.

    Each marker is called positive or negative by :func:`marker_positive` (within each batch when
    ``batch_key`` is given, since ADT levels shift between runs). A cell takes the label whose rule it fits;
    cells fitting no rule (or several) are ``unassigned``.

    Parameters
    ----------
    protein
        Cells x proteins with normalized levels in ``X`` (e.g. after ``mu.prot.pp.clr``).
    gates
        ``label -> {marker: positive}``; default :data:`PBMC_CITESEQ_GATES`.
    batch_key
        Column of ``protein.obs``: call markers separately in each batch.
    unassigned
        Label of cells that fit no rule.

    Returns
    -------
    Categorical labels indexed like ``protein.obs``.

    Examples
    --------
    >>> import muon as mu
    >>> mu.prot.pp.clr(prot, axis=1)  # doctest: +SKIP
    >>> labels = pf.bench.gate_cells(prot, batch_key="batch")  # doctest: +SKIP
    """
    gates = PBMC_CITESEQ_GATES if gates is None else gates
    markers = sorted({marker for rule in gates.values() for marker in rule})
    columns = _marker_columns(protein.var_names, markers)
    x = protein.X.toarray() if sparse.issparse(protein.X) else np.asarray(protein.X)
    groups = np.zeros(protein.n_obs, dtype=int)
    if batch_key is not None:
        groups = pd.Categorical(protein.obs[batch_key].astype(str)).codes
    positive = {}
    for marker, column in columns.items():
        calls = np.zeros(protein.n_obs, dtype=bool)
        for group in np.unique(groups):
            cells = groups == group
            calls[cells] = marker_positive(x[cells, column])
        positive[marker] = calls
    fits = np.stack(
        [np.all([positive[m] == sign for m, sign in rule.items()], axis=0) for rule in gates.values()], axis=1
    )
    labels = np.full(protein.n_obs, unassigned, dtype=object)
    single = fits.sum(1) == 1
    labels[single] = np.asarray(list(gates))[fits[single].argmax(1)]
    return pd.Series(pd.Categorical(labels), index=protein.obs_names, name="gated_label")
