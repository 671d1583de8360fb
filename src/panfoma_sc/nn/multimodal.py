"""Non-RNA tokens for PanFoMa: protein (ADT) or chromatin features with a learned modality embedding.

A feature token is ``feature_embedding[f] + modality_embedding[m] + value_embedding[bin]``; gene tokens keep
``gene_embedding[g] + value_embedding[bin]``. Feature tokens use ids ``vocab_size + f``, so they travel through
the unchanged PanFoMa network (chunked encoder, global sorting, decoder) next to the genes of the same cell.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import TokenEmbedding
from .model import PanFoMa

__all__ = ["MultimodalTokenEmbedding", "add_feature_tokens"]


class MultimodalTokenEmbedding(nn.Module):
    """Token embedding of genes and of other modalities' features.

    Parameters
    ----------
    base
        The pretrained token embedding; its gene, value and norm weights are shared, not copied.
    feature_modality
        ``(n_features,)`` modality index (0, 1, ...) of each feature.
    feature_init
        Optional ``(n_features, d_model)`` start of the feature table (e.g. the embedding of the gene that codes
        a protein); default small random vectors.
    """

    def __init__(
        self, base: TokenEmbedding, feature_modality: torch.Tensor, feature_init: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.gene, self.value, self.norm, self.mask_bin = base.gene, base.value, base.norm, base.mask_bin
        weight = base.gene.weight
        n_features, d_model = int(feature_modality.numel()), weight.shape[1]
        self.n_genes = weight.shape[0]  # ids >= n_genes are features
        self.feature = nn.Embedding(n_features, d_model, device=weight.device, dtype=weight.dtype)
        nn.init.normal_(self.feature.weight, std=0.02)
        if feature_init is not None:
            with torch.no_grad():
                self.feature.weight.copy_(feature_init.to(weight))
        n_modalities = int(feature_modality.max()) + 1 if n_features else 1
        self.modality = nn.Embedding(n_modalities, d_model, device=weight.device, dtype=weight.dtype)
        nn.init.normal_(self.modality.weight, std=0.02)
        self.register_buffer("feature_modality", feature_modality.to(weight.device, torch.long))

    def token_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """Identity part of each token (before the value and the norm): ``(...,)`` ids to ``(..., d_model)``."""
        is_feature = ids >= self.n_genes
        gene_part = self.gene(ids.masked_fill(is_feature, 0))
        feature_index = (ids - self.n_genes).clamp(min=0).masked_fill(~is_feature, 0)
        feature_part = self.feature(feature_index) + self.modality(self.feature_modality[feature_index])
        return torch.where(is_feature.unsqueeze(-1), feature_part, gene_part)

    def forward(self, gene_ids: torch.Tensor, value_bins: torch.Tensor) -> torch.Tensor:
        """Embed gene and feature tokens: ``(...,)`` ids and bins to ``(..., d_model)``."""
        return self.norm(self.token_vectors(gene_ids) + self.value(value_bins))


def add_feature_tokens(
    network: PanFoMa, feature_modality: torch.Tensor, feature_init: torch.Tensor | None = None
) -> PanFoMa:
    """Let ``network`` read feature tokens (ids ``vocab_size + f``): swaps in a :class:`MultimodalTokenEmbedding`.

    Parameters
    ----------
    network
        A PanFoMa network (modified in place and returned).
    feature_modality
        ``(n_features,)`` modality index of each feature.
    feature_init
        Optional ``(n_features, d_model)`` start of the feature embedding.

    Returns
    -------
    The same network, whose ``embedding`` now also embeds features.
    """
    network.embedding = MultimodalTokenEmbedding(network.embedding, feature_modality, feature_init)
    return network
