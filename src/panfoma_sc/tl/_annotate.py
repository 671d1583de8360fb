"""``pf.tl.annotate``: label transfer from a labelled reference in the PanFoMa embedding."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from .._paths import check_writable
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
    reference: AnnData | None,
    *,
    labels_key: str | None = None,
    model: str | Path | PretrainedModel = DEFAULT_MODEL,
    method: Literal["knn", "finetune"] = "knn",
    n_neighbors: int = 15,
    max_epochs: int = 15,
    save_model: str | Path | None = None,
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

    ``method="knn"``: both datasets are embedded with the same model; each query cell takes the
    distance-weighted majority label of its ``n_neighbors`` nearest reference cells (exact search, or
    pynndescent for references of 50,000 cells and more). The confidence is the winner's share of the vote.

    ``method="finetune"``: a classification head is first fitted on the frozen model's embeddings of the
    reference (a linear probe), then the whole model is fine-tuned with it (class-balanced loss, early stopping
    on a stratified validation split, which keeps the probed model when fine-tuning does not lower the
    validation loss), then predicts the query; the
    confidence is the predicted class probability. Pass ``save_model`` to keep the fine-tuned model (register
    it with :func:`panfoma_sc.models.register`), and later annotate with it directly:
    ``annotate(adata, None, model=path, method="finetune")``.

    Cells whose confidence is below ``unknown_threshold`` are called ``"Unknown"``.

    Parameters
    ----------
    adata
        Query cells (raw counts or log1p-normalized).
    reference
        Labelled reference cells; it is not modified. ``None`` only with ``method="finetune"`` and a model
        that already carries a classifier.
    labels_key
        Column of ``reference.obs`` with the labels (cells with missing labels are ignored).
    model
        Registry name, checkpoint path or loaded model.
    method
        ``"knn"`` (nearest neighbours in the embedding) or ``"finetune"`` (fine-tuned classifier).
    n_neighbors
        Reference neighbours per query cell (``"knn"``).
    max_epochs
        Upper bound on fine-tuning epochs (``"finetune"``; early stopping usually ends sooner).
    save_model
        Write the fine-tuned model to this ``.safetensors`` file (``"finetune"``).
    unknown_threshold
        Minimum confidence to assign a label; ``0`` never calls ``"Unknown"``.
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
        Share of the neighbours' vote weight won by the predicted label (``"knn"``), or the predicted class
        probability (``"finetune"``).
    ``adata.uns[key_added]`` : :class:`dict`
        Method, parameters and the model's provenance.

    Examples
    --------
    >>> import panfoma_sc as pf
    >>> pf.tl.annotate(query, reference, labels_key="cell_type")  # doctest: +SKIP
    >>> query.obs[["panfoma_label", "panfoma_label_confidence"]].head()  # doctest: +SKIP
    """
    if method not in ("knn", "finetune"):
        msg = f"method={method!r} is not available; use method='knn' or method='finetune'."
        raise ValueError(msg)
    if not 0 <= unknown_threshold <= 1:
        msg = f"unknown_threshold must lie in [0, 1], got {unknown_threshold}."
        raise ValueError(msg)
    if n_neighbors < 1:
        msg = f"n_neighbors must be a positive integer, got {n_neighbors}."
        raise ValueError(msg)
    if max_epochs < 1:
        msg = f"max_epochs must be a positive integer, got {max_epochs}."
        raise ValueError(msg)
    if save_model is not None:
        if method != "finetune":
            msg = "save_model keeps a fine-tuned model: pass method='finetune', or drop save_model for 'knn'."
            raise ValueError(msg)
        check_writable(save_model, "save_model", suffix=".safetensors")
    pretrained = resolve_model(model)
    options = {
        "gene_symbols": gene_symbols,
        "batch_size": batch_size,
        "n_genes": n_genes,
        "seed": seed,
        "device": device,
    }
    if reference is None:
        if method != "finetune" or pretrained.classes is None:
            msg = (
                "reference=None needs method='finetune' and a model with a fine-tuned classifier "
                f"(model {pretrained.name!r} has none). Pass a labelled reference and labels_key."
            )
            raise ValueError(msg)
        query_job = EmbeddingJob.prepare(adata, pretrained, layer=layer, **options)
        reference_job = None
    else:
        if labels_key is None:
            msg = "labels_key is required with a reference: the reference.obs column holding the labels."
            raise ValueError(msg)
        labels = _reference_labels(reference, labels_key)
        labelled = labels.notna().to_numpy()
        reference_cells = reference if labelled.all() else reference[labelled]
        reference_job = EmbeddingJob.prepare(reference_cells, pretrained, layer=reference_layer, **options)
        query_job = EmbeddingJob.prepare(adata, pretrained, layer=layer, **options)
        codes = pd.Categorical(labels[labelled].astype(str))

    # every check passed: compute, then write
    details: dict[str, object] = {"method": method, "unknown_threshold": unknown_threshold}
    if method == "knn":
        reference_embedding = reference_job.run(device=device, progress=progress)
        query_embedding = query_job.run(device=device, progress=progress)
        k = min(n_neighbors, reference_embedding.shape[0])
        neighbors, distances = _nearest_reference_cells(reference_embedding, query_embedding, k, seed=seed)
        winner, confidence = _weighted_vote(codes.codes[neighbors], distances, np.asarray(codes.categories))
        classes = np.asarray(codes.categories)
        details |= {"n_neighbors": k, "labels_key": labels_key, "reference_n_cells": int(reference_embedding.shape[0])}
    else:
        if reference_job is not None:
            from ..train import FineTuneConfig, finetune_classifier

            config = FineTuneConfig(n_genes=query_job.n_genes, max_epochs=max_epochs, seed=seed)
            pretrained, history = finetune_classifier(
                pretrained,
                reference_job.cell_rows(),
                codes.codes,
                [str(c) for c in codes.categories],
                config=config,
                device=device,
                progress=progress,
            )
            query_job.model = pretrained
            details |= {
                "labels_key": labels_key,
                "reference_n_cells": int(reference_job.adata.n_obs),
                "best_epoch": int(pretrained.info["classifier"]["best_epoch"]),  # -1: the linear probe
                "epochs": int((history["epoch"] >= 0).sum()),
            }
            if "validation_accuracy" in history:
                details["validation_accuracy"] = float(history["validation_accuracy"].max())
            if save_model is not None:
                pretrained.save(save_model)
                details["saved_model"] = str(save_model)
        probabilities = query_job.predict(device=device, progress=progress)
        winner = probabilities.argmax(1)
        confidence = probabilities[np.arange(winner.size), winner]
        classes = np.asarray(pretrained.classes, dtype=object)

    if copy:
        adata = adata.to_memory() if adata.isbacked else adata.copy()
    predicted = classes[winner].astype(object)
    predicted[confidence < unknown_threshold] = UNKNOWN
    categories = list(dict.fromkeys([*classes, UNKNOWN]))
    adata.obs[key_added] = pd.Categorical(predicted, categories=categories)
    adata.obs[f"{key_added}_confidence"] = confidence.astype(np.float32)
    adata.uns[key_added] = query_job.provenance(**details)
    return adata if copy else None
