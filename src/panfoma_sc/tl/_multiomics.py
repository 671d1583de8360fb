"""Protein (ADT) and chromatin (ATAC) features of paired cells: checks, normalization, late fusion.

Proteins: raw ADT counts, CLR-normalized per cell (muon's ``mu.prot.pp.clr``) over the proteins measured in every
batch: a protein with no count in any cell of a batch was not in that batch's panel (merged files fill the gap
with 0), and one present in some panels only would reveal the batch by its mere presence.

Chromatin: raw peak counts with peak coordinates, TF-IDF and LSI (muon's ``mu.atac.pp.tfidf`` /
``mu.atac.tl.lsi``), dropping the first component (sequencing depth).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ..data.rows import expression_matrix
from ..data.vocab import GeneVocabulary
from ._mudata import require_muon

logger = logging.getLogger(__name__)

__all__ = ["ModalityFeatures", "atac_features", "late_fusion", "peak_coordinates", "protein_features"]

#: more antibodies than any CITE-seq panel in use (a few hundred at most): such a modality is not ADTs
_MAX_PANEL = 1000
_PEAK_NAME = re.compile(r"^(?P<chrom>[^:\s]+)[:\-_](?P<start>\d+)[\-_](?P<end>\d+)$")


@dataclass
class ModalityFeatures:
    """Normalized features of one modality for the cells being embedded.

    Attributes
    ----------
    modality
        Modality name in the MuData.
    kind
        ``"protein"`` or ``"atac"``.
    names
        Feature names (proteins, or LSI components).
    values
        ``(cells, features)`` float32 normalized values (CLR levels, LSI coordinates).
    measured
        ``(cells, features)`` bool, False where a feature was not measured.
    gene_ids
        Vocabulary id of each feature's coding gene, -1 where none.
    summary
        JSON-able description for ``uns``.
    """

    modality: str
    kind: str
    names: list[str]
    values: np.ndarray
    measured: np.ndarray
    gene_ids: np.ndarray
    summary: dict[str, Any] = field(default_factory=dict)


def _dense(matrix) -> np.ndarray:
    return np.asarray(matrix.toarray() if sparse.issparse(matrix) else matrix, dtype=np.float64)


def _check_counts(values: np.ndarray, where: str, what: str) -> None:
    """Raise unless the (stored) values are finite nonnegative integers; 2-D ``values`` are ``cells x features``."""
    finite = np.isfinite(values)
    if not finite.all():
        msg = f"{where} contains NaN or infinite values"
        if values.ndim == 2:
            unmeasured = int((~finite.any(axis=1)).sum())
            msg += f" in {int((~finite.all(axis=1)).sum())} of {values.shape[0]} cells"
            if unmeasured:
                msg += f" ({unmeasured} of them have no value at all: their {what} was not measured)"
        msg += (
            f". Keep the cells with {what} data in every modality (subset them, then mu.pp.intersect_obs(mdata)), "
            f"or pass raw {what} counts with every entry filled."
        )
        raise ValueError(msg)
    if (values.size and values.min() < 0) or not np.all(values == np.round(values)):
        msg = (
            f"{where} does not hold raw {what} counts (negative or non-integer values: already normalized?). "
            f"PanFoMa normalizes {what} counts itself; put the raw counts in .X first and keep the normalized "
            "values in a layer, e.g. mod.layers['normalized'] = mod.X.copy(); mod.X = mod.layers['counts']."
        )
        raise ValueError(msg)


def protein_features(
    mod: AnnData,
    rows: np.ndarray,
    batches: np.ndarray | None,
    vocab: GeneVocabulary,
    *,
    name: str,
    rna_names: pd.Index | None = None,
) -> ModalityFeatures:
    """Check and CLR-normalize the ADT counts of ``mod[rows]``.

    Parameters
    ----------
    mod
        The protein modality (raw ADT counts in ``X``).
    rows
        Its rows holding the cells to embed, in order.
    batches
        Integer batch of each of those cells (a protein is measured in a batch when any of its cells has a count),
        or ``None`` (one batch).
    vocab
        The model's vocabulary: a protein whose name (up to a ``_`` suffix such as ``_TotalSeqB``) is a gene starts
        from that gene's embedding.
    name
        Modality name, for messages.
    rna_names
        Features of the RNA modality: a protein modality sharing most of them is RNA given by mistake.
    """
    muon = require_muon()
    where = f"mdata.mod[{name!r}].X"
    shared = 0.0 if rna_names is None else float(mod.var_names.isin(rna_names).mean())
    if mod.n_vars > _MAX_PANEL or shared > 0.5:
        msg = (
            f"mdata.mod[{name!r}] does not look like a protein (ADT) panel: {mod.n_vars} features, {shared:.0%} of "
            "them also RNA features; it looks like RNA. Pass the ADT modality as protein=... (and the RNA one as "
            "modality=...)."
        )
        raise ValueError(msg)
    counts = _dense(expression_matrix(mod)[rows])
    if counts.shape[1] == 0:
        msg = f"{where} has no features (0 proteins)."
        raise ValueError(msg)
    _check_counts(counts, where, "ADT")
    names = [str(v) for v in mod.var_names]
    gene_ids = vocab.lookup(n.split("_")[0] for n in names)
    batches = np.zeros(counts.shape[0], dtype=np.int64) if batches is None else np.asarray(batches)
    if not counts.any():
        msg = f"{where} has no counts at all: no protein was measured in these cells. Check the modality."
        raise ValueError(msg)
    # a protein in one batch's panel only would tell the batches apart by its mere presence: keep the shared panel
    in_panel = np.stack([counts[batches == batch].sum(0) > 0 for batch in np.unique(batches)])
    used = in_panel.all(0)
    if not used.any():
        msg = (
            f"{where}: no protein has counts in every batch (the panels share no antibody). Integrate the batches "
            "separately, or pass batch_key=None."
        )
        raise ValueError(msg)
    if not used.all():
        where_missing = "some batch's panel" if len(np.unique(batches)) > 1 else "these cells (no counts)"
        logger.info("Leaving out %d proteins missing from %s.", int((~used).sum()), where_missing)
    values = np.zeros((counts.shape[0], int(used.sum())), dtype=np.float32)
    for batch in np.unique(batches):
        cells = np.flatnonzero(batches == batch)
        part = AnnData(counts[np.ix_(cells, np.flatnonzero(used))].astype(np.float32))
        muon.prot.pp.clr(part, axis=1)  # per cell, over the shared panel
        values[cells] = np.asarray(part.X, dtype=np.float32)
    summary = {
        "modality": name,
        "kind": "protein",
        "n_features": int(used.sum()),
        "n_left_out_not_in_every_batch": int((~used).sum()),
        "n_coded_by_a_known_gene": int((gene_ids[used] >= 0).sum()),
        "normalization": "CLR per cell over the proteins measured in every batch (muon.prot.pp.clr, axis=1)",
    }
    return ModalityFeatures(
        modality=name,
        kind="protein",
        names=[n for n, keep in zip(names, used, strict=True) if keep],
        values=values,
        measured=np.ones(values.shape, dtype=bool),
        gene_ids=gene_ids[used],
        summary=summary,
    )


def peak_coordinates(mod: AnnData, *, name: str = "atac") -> pd.DataFrame:
    """Chromosome, start and end of every peak, from ``var`` columns or ``chr:start-end`` names.

    Accepted: ``var`` columns ``chrom``/``chr``/``seqnames`` with ``start`` and ``end``; an ``interval`` column
    (10x); or ``var_names`` such as ``chr1:9976-10401`` or ``chr1-9976-10401``.

    Raises
    ------
    ValueError
        When peaks have no coordinates (the modality then probably holds genes or anonymous features).
    """
    var = mod.var
    chrom = next((c for c in ("chrom", "chr", "seqnames", "chromosome") if c in var.columns), None)
    if chrom is not None and {"start", "end"} <= set(var.columns):
        return pd.DataFrame({"chrom": var[chrom].astype(str), "start": var["start"], "end": var["end"]})
    names = var["interval"] if "interval" in var.columns else pd.Series(mod.var_names, index=mod.var_names)
    source = names.astype(str)
    parsed = source.str.extract(_PEAK_NAME)
    bad = parsed["chrom"].isna()
    if bad.any():
        examples = list(map(str, np.asarray(source)[bad.to_numpy()][:3]))
        msg = (
            f"mdata.mod[{name!r}] peaks have no coordinates ({int(bad.sum())} of {mod.n_vars} features, e.g. "
            f"{examples}). Name peaks 'chr1:9976-10401' or add var columns 'chrom', 'start', 'end' (or 10x's "
            "'interval'); a gene-level matrix belongs in the RNA modality or a gene-activity modality."
        )
        raise ValueError(msg)
    return pd.DataFrame(
        {"chrom": parsed["chrom"].to_numpy(), "start": parsed["start"].astype(int), "end": parsed["end"].astype(int)},
        index=mod.var_names,
    )


def atac_features(mod: AnnData, rows: np.ndarray, *, name: str, n_comps: int = 30) -> ModalityFeatures:
    """Check the peak counts of ``mod[rows]`` and reduce them to LSI components (TF-IDF, then truncated SVD).

    Parameters
    ----------
    mod
        The ATAC modality (raw peak counts in ``X``, peaks with coordinates).
    rows
        Its rows holding the cells to embed, in order.
    name
        Modality name, for messages.
    n_comps
        LSI components computed; the first (sequencing depth) is dropped.
    """
    muon = require_muon()
    where = f"mdata.mod[{name!r}].X"
    coordinates = peak_coordinates(mod, name=name)
    matrix = sparse.csr_matrix(expression_matrix(mod)[rows], dtype=np.float32)
    _check_counts(matrix.data, where, "peak")
    if (np.diff(matrix.indptr) == 0).any():
        msg = f"{where}: {int((np.diff(matrix.indptr) == 0).sum())} cells have no peak counts. Remove them first."
        raise ValueError(msg)
    n_comps = int(min(n_comps, matrix.shape[1] - 1, matrix.shape[0] - 1))
    if n_comps < 2:
        msg = f"{where} has too few peaks or cells ({matrix.shape}) for an LSI with at least 2 components."
        raise ValueError(msg)
    work = AnnData(matrix)
    muon.atac.pp.tfidf(work, scale_factor=1e4)
    muon.atac.tl.lsi(work, n_comps=n_comps)
    lsi = np.asarray(work.obsm["X_lsi"], dtype=np.float32)[:, 1:]  # component 1 follows sequencing depth
    summary = {
        "modality": name,
        "kind": "atac",
        "n_peaks": int(mod.n_vars),
        "n_chromosomes": int(coordinates["chrom"].nunique()),
        "n_features": int(lsi.shape[1]),
        "normalization": "TF-IDF and LSI (muon.atac.pp.tfidf, muon.atac.tl.lsi), first component dropped",
    }
    return ModalityFeatures(
        modality=name,
        kind="atac",
        names=[f"{name}_LSI_{i + 2}" for i in range(lsi.shape[1])],
        values=lsi,
        measured=np.ones(lsi.shape, dtype=bool),
        gene_ids=np.full(lsi.shape[1], -1, dtype=np.int64),
        summary=summary,
    )


def _unit_block(values: np.ndarray) -> np.ndarray:
    centered = values - values.mean(0, keepdims=True)
    scale = np.sqrt((centered**2).sum(1).mean())
    return (centered / max(scale, 1e-12)).astype(np.float32)


def late_fusion(rna_embedding: np.ndarray, features: list[ModalityFeatures], *, n_comps: int = 20) -> np.ndarray:
    """Concatenate the RNA embedding with a PCA of each other modality, every block scaled to unit total variance.

    Proteins enter with the ones measured in every cell (a panel gap would otherwise separate batches); ATAC with
    its LSI components.
    """
    blocks = [_unit_block(rna_embedding)]
    for feature in features:
        values = feature.values[:, feature.measured.all(0)]
        if values.shape[1] == 0:
            msg = (
                f"Late fusion needs features of mdata.mod[{feature.modality!r}] measured in every cell; none is. "
                "Use method='joint', which handles per-batch panels."
            )
            raise ValueError(msg)
        k = min(n_comps, values.shape[1], values.shape[0] - 1)
        centered = values - values.mean(0, keepdims=True)
        u, s, _ = np.linalg.svd(centered, full_matrices=False)
        blocks.append(_unit_block(u[:, :k] * s[:k]))
    return np.concatenate(blocks, axis=1)
