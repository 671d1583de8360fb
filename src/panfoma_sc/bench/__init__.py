"""PanFoMaBench: scoring embeddings on real data (kNN transfer, scib-metrics) and baselines."""

from ._embedding_eval import bio_conservation, knn_transfer, pca_embedding

__all__ = ["bio_conservation", "knn_transfer", "pca_embedding"]
