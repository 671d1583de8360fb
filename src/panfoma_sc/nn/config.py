"""Configuration of the PanFoMa network."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["CONFIGS", "PanFoMaConfig"]


#: values of ``PanFoMaConfig.cell_readout``
CELL_READOUTS = ("decoder", "decoder+tokens", "decoder+expressed")


@dataclass(frozen=True)
class PanFoMaConfig:
    """Sizes of a PanFoMa network.

    Every field is a plain JSON value so the config travels inside checkpoint metadata.
    """

    vocab_size: int = 30_000  # gene tokens incl. special tokens; set from the vocabulary
    d_model: int = 128  # token and cell-embedding width
    n_heads: int = 4  # attention heads of the local encoder
    encoder_repeats: int = 6  # times the ONE shared local-encoder block is applied
    ffn_mult: int = 4  # feed-forward width = ffn_mult * d_model
    decoder_layers: int = 4  # bidirectional gated Mamba2 layers
    n_genes: int = 1024  # default genes sampled per cell (at inference it may be larger)
    n_chunks: int = 4  # chunks of the local encoder; genes attend within their chunk only
    gene_selection: str = "random"  # inference default: "random" nonzero subset or "top" (highest bins first)
    value_encoding: str = "rank"  # inference value tokens: "rank" bins or "presence" (every expressed gene bin 1)
    n_bins: int = 51  # expression bins incl. bin 0 = zero
    d_state: int = 32  # Mamba2 state size per head
    d_conv: int = 4  # Mamba2 causal conv width
    expand: int = 2  # Mamba2 inner width = expand * d_model
    headdim: int = 32  # Mamba2 channels per head
    ssd_chunk_size: int = 64  # chunk length of the SSD scan
    dropout: float = 0.0  # dropout in the encoder block
    # cell read-out: "decoder" = [pooled decoder states, h_global] (v1); "decoder+tokens" also feeds the (normalized)
    # mean gene embedding of the cell's genes, so what the tokens carry reaches the cell embedding without the deep
    # stack; the read-out then starts as that part alone. "decoder+expressed" averages the expressed genes only (value
    # bin > 0): a cell with fewer expressed genes than tokens is filled with unexpressed genes drawn at random, and
    # their vectors say nothing about the cell
    cell_readout: str = "decoder"
    # MVC head: "concat" = MLP on [cell, gene] (v1); "bilinear" = gene-wise product of cell and gene projections, so a
    # prediction cannot ignore the cell (see panfoma_sc.nn.model.BilinearMVCHead)
    mvc_head: str = "concat"

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            msg = f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})."
            raise ValueError(msg)
        if self.n_genes % self.n_chunks:
            msg = f"n_genes ({self.n_genes}) must be divisible by n_chunks ({self.n_chunks})."
            raise ValueError(msg)
        if self.cell_readout not in CELL_READOUTS:
            msg = f"cell_readout must be one of {', '.join(map(repr, CELL_READOUTS))}, not {self.cell_readout!r}."
            raise ValueError(msg)
        if self.mvc_head not in ("concat", "bilinear"):
            msg = f"mvc_head must be 'concat' or 'bilinear', not {self.mvc_head!r}."
            raise ValueError(msg)
        if (self.expand * self.d_model) % self.headdim:
            msg = f"expand * d_model ({self.expand * self.d_model}) must be divisible by headdim ({self.headdim})."
            raise ValueError(msg)

    def replace(self, **changes: Any) -> PanFoMaConfig:
        """Return a copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Config as a JSON-able dict."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Config as a JSON string."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PanFoMaConfig:
        """Build from a dict, refusing unknown fields (a newer, incompatible checkpoint)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            msg = (
                f"Checkpoint config has fields this version of panfoma-sc does not know: {unknown}. "
                "It was probably written by a newer release: upgrade with `pip install -U panfoma-sc`."
            )
            raise ValueError(msg)
        return cls(**values)


#: Named architectures (the registry's checkpoints refer to these).
CONFIGS: dict[str, PanFoMaConfig] = {
    "panfoma-tiny": PanFoMaConfig(
        d_model=128, n_heads=4, encoder_repeats=6, decoder_layers=4, n_genes=1024, n_chunks=4, d_state=32, headdim=32
    ),
    "panfoma-base": PanFoMaConfig(
        d_model=512, n_heads=8, encoder_repeats=6, decoder_layers=6, n_genes=3072, n_chunks=4, d_state=64, headdim=64
    ),
}
