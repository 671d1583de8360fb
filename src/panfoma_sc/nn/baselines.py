"""Equal-size baselines for performance comparisons, built from PanFoMa's own parts.

Both take the same ``(B, C, M)`` token batches as :class:`~panfoma_sc.nn.PanFoMa` and return a
:class:`~panfoma_sc.nn.PanFoMaOutput`, so a benchmark can swap them in. Width, heads, Mamba2 sizes and depth
come from the same :class:`~panfoma_sc.nn.PanFoMaConfig`; depth is ``encoder_repeats + decoder_layers``
blocks, the number of blocks a PanFoMa token passes through (counting a bidirectional layer as one).

- :class:`FullAttentionTransformer` (scGPT-like): one CLS token and **all** gene tokens in one sequence, full
  self-attention, ``O(N^2)`` per layer.
- :class:`UnidirectionalMamba` (GeneMamba-like): genes ordered by expression bin (highest first), one causal
  Mamba2 per layer, ``O(N)``.

They are untrained reference architectures for speed and memory, not models to embed data with.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import PanFoMaConfig
from .layers import EncoderBlock, TokenEmbedding, take_tokens
from .model import PanFoMaOutput
from .ssd import Mamba2

__all__ = ["BASELINES", "FullAttentionTransformer", "UnidirectionalMamba", "build_baseline"]


def _depth(config: PanFoMaConfig) -> int:
    return config.encoder_repeats + config.decoder_layers


class FullAttentionTransformer(nn.Module):
    """scGPT-like encoder: pre-norm Transformer blocks with full attention over a CLS token and all genes.

    Parameters
    ----------
    config
        Sizes; ``encoder_repeats + decoder_layers`` separate blocks are stacked.
    """

    def __init__(self, config: PanFoMaConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.config = config
        self.embedding = TokenEmbedding(config, **factory_kwargs)
        self.cls = nn.Parameter(torch.randn(config.d_model, **factory_kwargs) * 0.02)
        self.blocks = nn.ModuleList(EncoderBlock(config, **factory_kwargs) for _ in range(_depth(config)))
        self.norm = nn.LayerNorm(config.d_model, **factory_kwargs)

    def forward(self, gene_ids: torch.Tensor, value_bins: torch.Tensor, padding_mask: torch.Tensor) -> PanFoMaOutput:
        """Encode ``(B, C, M)`` tokens; the cell embedding is the CLS output."""
        batch = gene_ids.shape[0]
        tokens = self.embedding(gene_ids.reshape(batch, -1), value_bins.reshape(batch, -1))  # (B, N, D)
        x = torch.cat([self.cls.expand(batch, 1, -1), tokens], dim=1)  # (B, N+1, D)
        keep = torch.cat([padding_mask.new_ones(batch, 1), ~padding_mask.reshape(batch, -1)], dim=1)
        for block in self.blocks:
            x = block(x, keep)
        x = self.norm(x)
        order = torch.arange(tokens.shape[1], device=x.device).expand(batch, -1)
        return PanFoMaOutput(cell_embedding=x[:, 0], gene_states=x[:, 1:], h_global=x[:, 0], order=order)


class _ResidualMamba(nn.Module):
    """``x + Mamba2(RMSNorm(x))``."""

    def __init__(self, config: PanFoMaConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.norm = nn.RMSNorm(config.d_model, eps=1e-5, **factory_kwargs)
        self.mamba = Mamba2(
            config.d_model,
            d_state=config.d_state,
            d_conv=config.d_conv,
            expand=config.expand,
            headdim=config.headdim,
            chunk_size=config.ssd_chunk_size,
            **factory_kwargs,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mamba(self.norm(x))


class UnidirectionalMamba(nn.Module):
    """GeneMamba-like encoder: causal Mamba2 layers over the genes ranked by expression, mean-pooled.

    Parameters
    ----------
    config
        Sizes; ``encoder_repeats + decoder_layers`` residual Mamba2 layers are stacked.
    """

    def __init__(self, config: PanFoMaConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.config = config
        self.embedding = TokenEmbedding(config, **factory_kwargs)
        self.layers = nn.ModuleList(_ResidualMamba(config, **factory_kwargs) for _ in range(_depth(config)))
        self.norm = nn.RMSNorm(config.d_model, eps=1e-5, **factory_kwargs)

    def forward(self, gene_ids: torch.Tensor, value_bins: torch.Tensor, padding_mask: torch.Tensor) -> PanFoMaOutput:
        """Encode ``(B, C, M)`` tokens; the cell embedding is the mean over real genes."""
        batch = gene_ids.shape[0]
        padding = padding_mask.reshape(batch, -1)  # (B, N)
        # highest bin first, padding last; stable, so ties keep the tokenizer's (seeded) order
        rank_key = value_bins.reshape(batch, -1).masked_fill(padding, -1)
        order = torch.argsort(rank_key, dim=1, descending=True, stable=True)  # (B, N)
        x = self.embedding(gene_ids.reshape(batch, -1).gather(1, order), value_bins.reshape(batch, -1).gather(1, order))
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)  # (B, N, D), padding at the end where the causal scan never carries it forward
        valid = (~padding.gather(1, order)).to(x.dtype).unsqueeze(-1)
        cell = (x * valid).sum(1) / valid.sum(1).clamp(min=1.0)
        inverse = torch.argsort(order, dim=1)
        gene_states = take_tokens(x, inverse)
        return PanFoMaOutput(cell_embedding=cell, gene_states=gene_states, h_global=cell, order=order)


#: Baseline builders by name.
BASELINES = {"full-attention": FullAttentionTransformer, "unidirectional-mamba": UnidirectionalMamba}


def build_baseline(name: str, config: PanFoMaConfig, *, device=None, dtype=None) -> nn.Module:
    """Build a baseline by name (``"full-attention"`` or ``"unidirectional-mamba"``) with ``config``'s sizes."""
    if name not in BASELINES:
        msg = f"Unknown baseline {name!r}; choose one of {sorted(BASELINES)}."
        raise ValueError(msg)
    return BASELINES[name](config, device=device, dtype=dtype)
