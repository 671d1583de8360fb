"""``pf.tl.annotate``: label transfer from a labelled reference in the PanFoMa embedding."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ..models import DEFAULT_MODEL, PretrainedModel
from ._embedding_job import EmbeddingJob
from ._model_arg import resolve_model

logger = logging.getLogger(__name__)

__all__ = ["annotate"]

UNKNOWN = "Unknown"


def _reference_labels(reference: AnnData, labels_key: str) -> pd.Series:
    if labels_key not in reference.obs.columns:
        msg = f"labels_key={labels_key!r} is not a column of reference.obs (columns: {list(reference.obs.columns)})."
        raise KeyError(msg)
    labels = reference.obs[labels_key]
    if labels.isna().all():
        msg = f"reference.obs[{labels_key!r}] has no labels (all missing)."
        raise ValueError(msg)
    classes = labels.dropna().astype(str).unique()
    if len(classes) < 2:
        msg = (
            f"reference.obs[{labels_key!r}] has a single class ({classes[0]!r}): label transfer needs at least two. "
            "Use a reference with several cell types."
        )
        raise ValueError(msg)
    return labels


#: From this many reference cells on, neighbours come from pynndescent's approximate index instead of an exact
#: search (whose cost grows with query x reference; the index costs a one-off numba compilation).
APPROXIMATE_FROM = 50_000


def _nearest_reference_cells(
    reference: np.ndarray, query: np.ndarray, k: int, *, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and Euclidean distances of each query cell's ``k`` nearest reference cells."""
    if reference.shape[0] >= APPROXIMATE_FROM:
        from pynndescent import NNDescent

        index = NNDescent(reference, n_neighbors=max(k, 2), random_state=seed)
        return index.query(query, k=k)
    from sklearn.neighbors import NearestNeighbors

    distances, neighbors = NearestNeighbors(n_neighbors=k).fit(reference).kneighbors(query)
    return neighbors, distances


def _weighted_vote(
    neighbor_labels: np.ndarray, distances: np.ndarray, classes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distance-weighted majority vote; returns the winning class index and its share of the weight."""
    weights = 1.0 / (distances + 1e-6)
    votes = np.zeros((neighbor_labels.shape[0], classes.size))
    np.add.at(votes, (np.arange(neighbor_labels.shape[0])[:, None], neighbor_labels), weights)
    winner = votes.argmax(1)
    confidence = votes[np.arange(votes.shape[0]), winner] / votes.sum(1)
    return winner, confidence


def annotate(
    adata: AnnData,
    reference: AnnData,
    *,
    labels_key: str,
    model: str | Path | PretrainedModel = DEFAULT_MODEL,
    method: Literal["knn"] = "knn",
    n_neighbors: int = 15,
    unknown_threshold: float = 0.5,
    layer: str | None = None,
    reference_layer: str | None = None,
    gene_symbols: str | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    n_genes: int | None = None,
    key_added: str = "panfoma_label",
    copy: bool = False,
    progress: bool = True,
    seed: int = 0,
) -> AnnData | None:
    """Transfer cell labels from a labelled reference to ``adata``.

    Both datasets are embedded with the same model; each query cell takes the distance-weighted majority label
    of its ``n_neighbors`` nearest reference cells (exact search, or pynndescent for references of
    50,000 cells and more). Cells whose winning label holds less than
    ``unknown_threshold`` of the vote weight are called ``"Unknown"``.

    Parameters
    ----------
    adata
        Query cells (raw counts or log1p-normalized).
    reference
        Labelled reference cells; it is not modified.
    labels_key
        Column of ``reference.obs`` with the labels (cells with missing labels are ignored).
    model
        Registry name, checkpoint path or loaded model.
    method
        ``"knn"`` (nearest neighbours in the embedding).
    n_neighbors
        Reference neighbours per query cell.
    unknown_threshold
        Minimum vote share to assign a label; ``0`` never calls ``"Unknown"``.
    layer, reference_layer
        Layers holding expression in ``adata`` and ``reference`` (``None``: ``X``).
    gene_symbols
        ``var`` column with gene symbols (both datasets).
    batch_size
        Cells per forward pass.
    device
        Torch device (default: auto).
    n_genes
        Genes per cell given to the model.
    key_added
        Names of the written ``obs`` columns.
    copy
        Return a new AnnData instead of writing into ``adata``.
    progress
        Show progress bars.
    seed
        Gene-sampling and index seed.

    Returns
    -------
    ``None``, or a new AnnData when ``copy=True``. Sets

    ``adata.obs[key_added]`` : :class:`pandas.Categorical`
        Predicted label (or ``"Unknown"``).
    ``adata.obs[key_added + "_confidence"]`` : :class:`numpy.ndarray`
        Share of the neighbours' vote weight won by the predicted label.
    ``adata.uns[key_added]`` : :class:`dict`
        Method, parameters and the model's provenance.

    Examples
    --------
    >>> import panfoma_sc as pf
    >>> pf.tl.annotate(query, reference, labels_key="cell_type")  # doctest: +SKIP
    >>> query.obs[["panfoma_label", "panfoma_label_confidence"]].head()  # doctest: +SKIP
    """
    if method != "knn":
        msg = f"method={method!r} is not available; use method='knn'."
        raise ValueError(msg)
    if not 0 <= unknown_threshold <= 1:
        msg = f"unknown_threshold must lie in [0, 1], got {unknown_threshold}."
        raise ValueError(msg)
    if n_neighbors < 1:
        msg = f"n_neighbors must be a positive integer, got {n_neighbors}."
        raise ValueError(msg)
    if copy:
        adata = adata.to_memory() if adata.isbacked else adata.copy()
    labels = _reference_labels(reference, labels_key)
    labelled = labels.notna().to_numpy()
    pretrained = resolve_model(model)
    options = {"gene_symbols": gene_symbols, "batch_size": batch_size, "n_genes": n_genes, "seed": seed}
    reference_cells = reference if labelled.all() else reference[labelled]
    reference_job = EmbeddingJob.prepare(reference_cells, pretrained, layer=reference_layer, **options)
    query_job = EmbeddingJob.prepare(adata, pretrained, layer=layer, **options)

    reference_embedding = reference_job.run(device=device, progress=progress)
    query_embedding = query_job.run(device=device, progress=progress)
    codes = pd.Categorical(labels[labelled].astype(str))
    k = min(n_neighbors, reference_embedding.shape[0])
    neighbors, distances = _nearest_reference_cells(reference_embedding, query_embedding, k, seed=seed)
    winner, confidence = _weighted_vote(codes.codes[neighbors], distances, np.asarray(codes.categories))
    predicted = np.asarray(codes.categories)[winner].astype(object)
    predicted[confidence < unknown_threshold] = UNKNOWN

    categories = list(dict.fromkeys([*codes.categories, UNKNOWN]))
    adata.obs[key_added] = pd.Categorical(predicted, categories=categories)
    adata.obs[f"{key_added}_confidence"] = confidence.astype(np.float32)
    adata.uns[key_added] = {
        **query_job.provenance(
            method=method, n_neighbors=k, unknown_threshold=unknown_threshold, labels_key=labels_key
        ),
        "reference_n_cells": int(reference_embedding.shape[0]),
    }
    return adata if copy else None
