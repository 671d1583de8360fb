"""The PanFoMa network: chunked local Transformer, global-aware sorting, bidirectional Mamba2 decoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import PanFoMaConfig
from .layers import (
    BidirectionalMambaLayer,
    LocalEncoder,
    TokenEmbedding,
    checkpointed,
    reverse_valid_prefix,
    sort_by_global_score,
    take_tokens,
)

__all__ = ["BilinearMVCHead", "MVCHead", "PanFoMa", "PanFoMaOutput", "ValueHead"]


@dataclass
class PanFoMaOutput:
    """What :meth:`PanFoMa.forward` returns."""

    cell_embedding: torch.Tensor  # (B, D)
    gene_states: torch.Tensor  # (B, N, D), in the input token order (N = C * M)
    h_global: torch.Tensor  # (B, D)
    order: torch.Tensor  # (B, N), the dynamic gene order used by the decoder


class ValueHead(nn.Module):
    """Predicts each gene's expression bin from its decoder state (masked-value objective)."""

    def __init__(self, config: PanFoMaConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.net = nn.Sequential(
            nn.Linear(config.d_model, config.d_model, **factory_kwargs),
            nn.GELU(),
            nn.LayerNorm(config.d_model, **factory_kwargs),
            nn.Linear(config.d_model, config.n_bins, **factory_kwargs),
        )

    def forward(self, gene_states: torch.Tensor) -> torch.Tensor:
        """``(B, N, D)`` states to ``(B, N, n_bins)`` logits."""
        return self.net(gene_states)


class MVCHead(nn.Module):
    """Predicts a gene's bin from ``[cell_embedding, gene_embedding]`` alone (scGPT's MVC objective).

    It forces the cell embedding to carry the cell's expression profile.
    """

    def __init__(self, config: PanFoMaConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.net = nn.Sequential(
            nn.Linear(2 * config.d_model, config.d_model, **factory_kwargs),
            nn.GELU(),
            nn.LayerNorm(config.d_model, **factory_kwargs),
            nn.Linear(config.d_model, config.n_bins, **factory_kwargs),
        )

    def forward(self, cell_embedding: torch.Tensor, gene_embedding: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` cells and ``(B, N, D)`` gene embeddings to ``(B, N, n_bins)`` logits."""
        cells = cell_embedding.unsqueeze(1).expand_as(gene_embedding)
        return self.net(torch.cat([cells, gene_embedding], dim=-1))


class BilinearMVCHead(nn.Module):
    """MVC head whose logits are bilinear in the cell and gene embeddings, plus a gene-only prior.

    ``logits = W_out((A c) * (B g)) + W_prior g``: the gene-only term carries how often a gene is expressed in any
    cell, so the cell term has to carry what is specific to this cell. Unlike :class:`MVCHead` (an MLP on the
    concatenation, which can fit the gene prior and ignore the cell), every cell-specific prediction must pass
    through the cell embedding, like a linear decoder of an autoencoder.
    """

    def __init__(self, config: PanFoMaConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        d = config.d_model
        self.cell = nn.Linear(d, d, **factory_kwargs)
        self.gene = nn.Linear(d, d, **factory_kwargs)
        self.out = nn.Linear(d, config.n_bins, **factory_kwargs)
        self.prior = nn.Linear(d, config.n_bins, bias=False, **factory_kwargs)

    def forward(self, cell_embedding: torch.Tensor, gene_embedding: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` cells and ``(B, N, D)`` gene embeddings to ``(B, N, n_bins)`` logits."""
        interaction = self.cell(cell_embedding).unsqueeze(1) * self.gene(gene_embedding)
        return self.out(interaction) + self.prior(gene_embedding)


class PanFoMa(nn.Module):
    """PanFoMa single-cell foundation model.

    Parameters
    ----------
    config
        Network sizes.

    Notes
    -----
    Input is a batch of tokenized cells with a chunk structure, ``(B, C, M)``: gene ids, value bins and a
    padding mask (True at padding). Padding is excluded from attention, goes last in the dynamic order
    (so the causal scans never see it before a real gene), and is left out of pooling and losses.
    """

    def __init__(self, config: PanFoMaConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.config = config
        self.embedding = TokenEmbedding(config, **factory_kwargs)
        self.encoder = LocalEncoder(config, **factory_kwargs)
        self.decoder = nn.ModuleList(
            BidirectionalMambaLayer(config, **factory_kwargs) for _ in range(config.decoder_layers)
        )
        self.decoder_norm = nn.RMSNorm(config.d_model, eps=1e-5, **factory_kwargs)
        readout_parts = 2 if config.cell_readout == "decoder" else 3
        self.cell_projection = nn.Linear(readout_parts * config.d_model, config.d_model, **factory_kwargs)
        if config.cell_readout != "decoder":
            # the gene-embedding mean enters normalized, and the read-out starts as exactly that part: training
            # learns what the decoder adds to what the genes already say
            self.gene_mean_norm = nn.LayerNorm(config.d_model, **factory_kwargs)
            with torch.no_grad():
                self.cell_projection.weight.zero_()
                self.cell_projection.weight[:, 2 * config.d_model :].copy_(torch.eye(config.d_model))
                self.cell_projection.bias.zero_()
        self.cell_norm = nn.LayerNorm(config.d_model, **factory_kwargs)
        self.value_head = ValueHead(config, **factory_kwargs)
        mvc_class = BilinearMVCHead if config.mvc_head == "bilinear" else MVCHead
        self.mvc_head = mvc_class(config, **factory_kwargs)

    @property
    def activation_checkpointing(self) -> bool:
        """Recompute the encoder repeats' and decoder layers' activations in the backward pass (default False).

        Training then keeps only each layer's input instead of all its activations, for about one extra forward
        pass of time; the gradients are unchanged and inference is unaffected.
        """
        return self.encoder.activation_checkpointing

    @activation_checkpointing.setter
    def activation_checkpointing(self, enabled: bool) -> None:
        self.encoder.activation_checkpointing = bool(enabled)

    @property
    def mask_bin(self) -> int:
        """Value-bin index that marks a masked value."""
        return self.embedding.mask_bin

    def forward(self, gene_ids: torch.Tensor, value_bins: torch.Tensor, padding_mask: torch.Tensor) -> PanFoMaOutput:
        """Encode a batch of cells.

        Parameters
        ----------
        gene_ids
            ``(B, C, M)`` vocabulary ids.
        value_bins
            ``(B, C, M)`` expression bins (``mask_bin`` where masked).
        padding_mask
            ``(B, C, M)`` bool, True at padding.
        """
        batch, chunks, length = gene_ids.shape
        tokens = self.embedding(gene_ids, value_bins)  # (B, C, M, D)
        cls, genes = self.encoder(tokens, padding_mask)  # (B, C, D), (B, C, M, D)

        # h_global: mean CLS over chunks holding at least one gene (an empty chunk's CLS saw nothing)
        chunk_used = (~padding_mask).any(-1).to(cls.dtype)  # (B, C)
        h_global = (cls * chunk_used.unsqueeze(-1)).sum(1) / chunk_used.sum(1, keepdim=True).clamp(min=1.0)

        genes = genes.reshape(batch, chunks * length, -1)  # (B, N, D)
        flat_padding = padding_mask.reshape(batch, chunks * length)
        ordered, order = sort_by_global_score(genes, h_global, flat_padding)
        lengths = (~flat_padding).sum(1)  # (B,)
        reverse_index = reverse_valid_prefix(lengths, ordered.shape[1])
        for layer in self.decoder:
            ordered = checkpointed(layer, ordered, reverse_index, enabled=self.activation_checkpointing)
        ordered = self.decoder_norm(ordered)

        valid = (torch.arange(ordered.shape[1], device=ordered.device) < lengths[:, None]).to(ordered.dtype)
        pooled = (ordered * valid.unsqueeze(-1)).sum(1) / lengths.clamp(min=1).unsqueeze(-1).to(ordered.dtype)
        readout = [pooled, h_global]
        if self.config.cell_readout != "decoder":
            left_out = padding_mask
            if self.config.cell_readout == "decoder+expressed":
                left_out = padding_mask | (value_bins == 0)  # a masked value (mask_bin) counts as expressed
            gene_mean = _mean_over_valid(self.embedding.token_vectors(gene_ids), left_out)  # features too
            readout.append(self.gene_mean_norm(gene_mean))
        cell = self.cell_norm(self.cell_projection(torch.cat(readout, dim=-1)))

        inverse = torch.argsort(order, dim=1)
        gene_states = take_tokens(ordered, inverse)
        return PanFoMaOutput(cell_embedding=cell, gene_states=gene_states, h_global=h_global, order=order)

    def value_logits(self, output: PanFoMaOutput) -> torch.Tensor:
        """Masked-value head: ``(B, N, n_bins)`` logits from the per-gene states."""
        return self.value_head(output.gene_states)

    def mvc_logits(self, output: PanFoMaOutput, gene_ids: torch.Tensor) -> torch.Tensor:
        """Cell-embedding (MVC) head: ``(B, N, n_bins)`` logits from ``[cell_embedding, gene_embedding]``."""
        return self.mvc_head(output.cell_embedding, self.embedding.gene(gene_ids.reshape(gene_ids.shape[0], -1)))

    def n_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def _mean_over_valid(tokens: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``(B, C, M, D)`` token vectors over the non-padding positions: ``(B, D)``."""
    valid = (~padding_mask).to(tokens.dtype).unsqueeze(-1)
    return (tokens * valid).sum((1, 2)) / valid.sum((1, 2)).clamp(min=1.0)


def masked_bin_loss(logits: torch.Tensor, target_bins: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the positions in ``loss_mask`` (``(B, N)`` bool); 0 when there are none.

    Computed over every position and averaged over the masked ones, without selecting them: selecting by a mask
    (or testing whether it is empty) makes the host wait for the device in the middle of a training step.
    """
    keep = loss_mask.reshape(-1)
    safe_targets = torch.where(keep, target_bins.reshape(-1), 0)  # a valid class where the loss is not counted
    per_position = F.cross_entropy(logits.reshape(keep.numel(), -1).float(), safe_targets, reduction="none")
    weights = keep.to(per_position.dtype)
    return (per_position * weights).sum() / weights.sum().clamp(min=1.0)
