"""PanFoMaBench: scoring embeddings on real data (kNN transfer, scib-metrics) and baselines."""

from ._embedding_eval import batch_correction, bio_conservation, knn_transfer, pca_embedding

__all__ = ["batch_correction", "bio_conservation", "knn_transfer", "pca_embedding"]
