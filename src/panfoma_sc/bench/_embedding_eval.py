"""Score a cell embedding: kNN label transfer, scib-metrics bio conservation and batch correction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import GroupKFold, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier

__all__ = ["batch_correction", "bio_conservation", "knn_transfer", "pca_embedding"]


def pca_embedding(adata: AnnData, *, n_comps: int = 50, n_top_genes: int = 2000, counts: bool = True) -> np.ndarray:
    """The standard baseline: PCA on log-normalized highly variable genes.

    Parameters
    ----------
    adata
        Cells x genes (not modified).
    n_comps
        Principal components.
    n_top_genes
        Highly variable genes (all genes when there are fewer).
    counts
        ``X`` holds counts (normalize and log1p first); otherwise ``X`` is used as it is.

    Returns
    -------
    ``(n_obs, n_comps)`` float32.
    """
    work = AnnData(adata.X.copy(), obs=pd.DataFrame(index=adata.obs_names), var=pd.DataFrame(index=adata.var_names))
    if counts:
        sc.pp.normalize_total(work, target_sum=1e4)
        sc.pp.log1p(work)
    if work.n_vars > n_top_genes:
        sc.pp.highly_variable_genes(work, n_top_genes=n_top_genes, subset=True)
    n_comps = min(n_comps, work.n_vars - 1, work.n_obs - 1)
    sc.pp.pca(work, n_comps=n_comps, random_state=0)
    return work.obsm["X_pca"].astype(np.float32)


def knn_transfer(
    embedding: np.ndarray, labels: np.ndarray, *, groups: np.ndarray | None = None, k: int = 15, n_splits: int = 5
) -> dict[str, float]:
    """Cross-validated kNN label transfer.

    Parameters
    ----------
    embedding
        ``(n_cells, d)``.
    labels
        Cell labels.
    groups
        Donor/batch of each cell: folds never split a group (query cells come from unseen groups).
        Without it, stratified folds.
    k
        Neighbours.
    n_splits
        Folds (at most the number of groups).

    Returns
    -------
    ``accuracy`` and ``macro_f1`` over all held-out predictions.
    """
    labels = np.asarray(labels).astype(str)
    predicted = np.empty_like(labels)
    if groups is not None:
        groups = np.asarray(groups).astype(str)
        folds = GroupKFold(n_splits=min(n_splits, len(np.unique(groups)))).split(embedding, labels, groups)
    else:
        folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=0).split(embedding, labels)
    for train, test in folds:
        classifier = KNeighborsClassifier(n_neighbors=min(k, len(train)), weights="distance")
        classifier.fit(embedding[train], labels[train])
        predicted[test] = classifier.predict(embedding[test])
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, average="macro")),
    }


def bio_conservation(embedding: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """scib-metrics bio conservation: NMI and ARI of k-means clusters, label silhouette, and their mean (AvgBIO).

    Parameters
    ----------
    embedding
        ``(n_cells, d)``.
    labels
        Cell labels.

    Returns
    -------
    ``nmi``, ``ari``, ``asw_label`` and ``avg_bio``.
    """
    from scib_metrics import nmi_ari_cluster_labels_kmeans, silhouette_label

    labels = pd.Categorical(np.asarray(labels).astype(str)).codes
    scores = nmi_ari_cluster_labels_kmeans(np.asarray(embedding, dtype=np.float32), labels)
    asw = float(silhouette_label(np.asarray(embedding, dtype=np.float32), labels))
    result = {"nmi": float(scores["nmi"]), "ari": float(scores["ari"]), "asw_label": asw}
    result["avg_bio"] = float(np.mean(list(result.values())))
    return result


def batch_correction(
    embedding: np.ndarray, batches: np.ndarray, labels: np.ndarray, *, n_neighbors: int = 50
) -> dict[str, float]:
    """scib-metrics batch correction: batch silhouette, iLISI, graph connectivity, and AvgBATCH.

    AvgBATCH is the mean of the batch silhouette and graph connectivity, as in the PanFoMa paper and
    ``DESIGN.md``; iLISI is reported beside it.

    Parameters
    ----------
    embedding
        ``(n_cells, d)``.
    batches
        Batch of each cell.
    labels
        Cell labels (batch mixing is judged within each label).
    n_neighbors
        Neighbours of the kNN graph behind iLISI and graph connectivity (exact search).

    Returns
    -------
    ``asw_batch``, ``ilisi``, ``graph_connectivity`` and ``avg_batch`` (higher is better for all).
    """
    from scib_metrics import graph_connectivity, ilisi_knn, silhouette_batch
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    data = np.asarray(embedding, dtype=np.float32)
    batch_codes = pd.Categorical(np.asarray(batches).astype(str)).codes
    label_codes = pd.Categorical(np.asarray(labels).astype(str)).codes
    k = min(n_neighbors, data.shape[0] - 1)
    distances, indices = NearestNeighbors(n_neighbors=k + 1).fit(data).kneighbors(data)
    graph = NeighborsResults(indices=indices, distances=distances)
    result = {
        "asw_batch": float(silhouette_batch(data, label_codes, batch_codes)),
        "ilisi": float(ilisi_knn(graph, batch_codes)),
        "graph_connectivity": float(graph_connectivity(graph, label_codes)),
    }
    result["avg_batch"] = float(np.mean([result["asw_batch"], result["graph_connectivity"]]))
    return result
