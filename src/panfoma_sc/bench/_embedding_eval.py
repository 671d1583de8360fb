"""Score a cell embedding (kNN label transfer, scib-metrics bio conservation and batch correction) or a cell graph."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import GroupKFold, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier

__all__ = [
    "LEIDEN_RESOLUTIONS",
    "batch_correction",
    "bio_conservation",
    "graph_bio_conservation",
    "knn_transfer",
    "neighbor_graph",
    "pca_embedding",
]

#: Leiden resolutions swept by :func:`graph_bio_conservation` (scib's protocol).
LEIDEN_RESOLUTIONS: tuple[float, ...] = tuple(float(r) for r in np.round(np.arange(0.1, 2.01, 0.1), 2))


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
    embedding: np.ndarray,
    labels: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    query: np.ndarray | None = None,
    k: int = 15,
    n_splits: int = 5,
) -> dict[str, float]:
    """Cross-validated kNN label transfer, or transfer from a reference to a query.

    Parameters
    ----------
    embedding
        ``(n_cells, d)``.
    labels
        Cell labels.
    groups
        Donor/batch of each cell: folds never split a group (query cells come from unseen groups).
        Without it, stratified folds.
    query
        Boolean mask of the query cells: one fold, the classifier fitted on the other cells (the reference) and
        scored on these (``groups`` and ``n_splits`` are then unused).
    k
        Neighbours.
    n_splits
        Folds (at most the number of groups).

    Returns
    -------
    ``accuracy`` and ``macro_f1`` over all held-out predictions (the query's, with ``query``).
    """
    labels = np.asarray(labels).astype(str)
    predicted = np.empty_like(labels)
    if query is not None:
        query = np.asarray(query, dtype=bool)
        if query.shape != labels.shape or query.all() or not query.any():
            msg = f"query must mark some but not all of the {labels.size} cells (a boolean mask); got {query.sum()}."
            raise ValueError(msg)
        folds = [(np.flatnonzero(~query), np.flatnonzero(query))]
    elif groups is not None:
        groups = np.asarray(groups).astype(str)
        folds = GroupKFold(n_splits=min(n_splits, len(np.unique(groups)))).split(embedding, labels, groups)
    else:
        folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=0).split(embedding, labels)
    for train, test in folds:
        classifier = KNeighborsClassifier(n_neighbors=min(k, len(train)), weights="distance")
        classifier.fit(embedding[train], labels[train])
        predicted[test] = classifier.predict(embedding[test])
    scored = np.flatnonzero(query) if query is not None else np.arange(labels.size)
    return {
        "accuracy": float(accuracy_score(labels[scored], predicted[scored])),
        "macro_f1": float(f1_score(labels[scored], predicted[scored], average="macro")),
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


def neighbor_graph(embedding: np.ndarray, *, n_neighbors: int = 15, seed: int = 0):
    """The UMAP-weighted kNN graph of an embedding (``sc.pp.neighbors``), as a sparse connectivity matrix.

    Parameters
    ----------
    embedding
        ``(n_cells, d)``.
    n_neighbors
        Neighbours per cell.
    seed
        Seed of the approximate neighbour search.

    Returns
    -------
    ``(n_cells, n_cells)`` CSR connectivities.
    """
    work = AnnData(obs=pd.DataFrame(index=[str(i) for i in range(embedding.shape[0])]))
    work.obsm["rep"] = np.asarray(embedding, dtype=np.float32)
    sc.pp.neighbors(work, use_rep="rep", n_neighbors=min(n_neighbors, embedding.shape[0] - 1), random_state=seed)
    return work.obsp["connectivities"]


def graph_bio_conservation(
    connectivities, labels: np.ndarray, *, resolutions: tuple[float, ...] = LEIDEN_RESOLUTIONS, seed: int = 0
) -> dict[str, float]:
    """Bio conservation of a cell graph: NMI and ARI of its Leiden clusters at the best-NMI resolution.

    scib's clustering protocol, for methods that give a graph and no embedding (e.g. weighted nearest
    neighbours); embeddings are scored the same way through their :func:`neighbor_graph`, so every method
    can be compared. Needs igraph (``pip install igraph``).

    Parameters
    ----------
    connectivities
        ``(n_cells, n_cells)`` sparse, symmetric graph weights.
    labels
        Cell labels.
    resolutions
        Leiden resolutions to sweep.
    seed
        Leiden seed.

    Returns
    -------
    ``nmi_graph``, ``ari_graph``, ``avg_bio_graph`` (their mean) and ``resolution`` (the one chosen).
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels = np.asarray(labels).astype(str)
    work = AnnData(obs=pd.DataFrame(index=[str(i) for i in range(labels.size)]))
    work.obsp["connectivities"] = connectivities
    work.uns["neighbors"] = {"connectivities_key": "connectivities", "params": {"method": "umap"}}
    best = {"nmi_graph": -1.0, "ari_graph": 0.0, "resolution": float("nan")}
    for resolution in resolutions:
        sc.tl.leiden(
            work, resolution=resolution, key_added="_leiden", flavor="igraph", n_iterations=2, random_state=seed
        )
        clusters = work.obs["_leiden"].to_numpy()
        nmi = float(normalized_mutual_info_score(labels, clusters))
        if nmi > best["nmi_graph"]:
            ari = float(adjusted_rand_score(labels, clusters))
            best = {"nmi_graph": nmi, "ari_graph": ari, "resolution": resolution}
    best["avg_bio_graph"] = (best["nmi_graph"] + best["ari_graph"]) / 2
    return best
