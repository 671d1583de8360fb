"""Building blocks of PanFoMa: token embedding, shared local encoder, dynamic sorting, bidirectional decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import PanFoMaConfig
from .precision import float32_region
from .ssd import Mamba2

__all__ = [
    "BidirectionalMambaLayer",
    "EncoderBlock",
    "LocalEncoder",
    "TokenEmbedding",
    "reverse_valid_prefix",
    "sort_by_global_score",
    "take_tokens",
]


class TokenEmbedding(nn.Module):
    """``gene_embedding[gene_id] + value_embedding[bin]``.

    The value table has ``n_bins + 1`` rows: bins ``0..n_bins-1`` and a ``<mask>`` row (index ``n_bins``)
    used for the masked-value objective.
    """

    def __init__(self, config: PanFoMaConfig, *, padding_idx: int = 0, device=None, dtype=None) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.gene = nn.Embedding(config.vocab_size, config.d_model, padding_idx=padding_idx, **factory_kwargs)
        self.value = nn.Embedding(config.n_bins + 1, config.d_model, **factory_kwargs)
        self.norm = nn.LayerNorm(config.d_model, **factory_kwargs)
        self.mask_bin = config.n_bins
        nn.init.normal_(self.gene.weight, std=0.02)
        nn.init.normal_(self.value.weight, std=0.02)
        with torch.no_grad():
            self.gene.weight[padding_idx].zero_()

    def token_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """Identity part of each token (before the value and the norm): ``(...,)`` ids to ``(..., d_model)``."""
        return self.gene(ids)

    def forward(self, gene_ids: torch.Tensor, value_bins: torch.Tensor) -> torch.Tensor:
        """Embed tokens: ``(...,)`` ids and bins to ``(..., d_model)``."""
        return self.norm(self.gene(gene_ids) + self.value(value_bins))


class EncoderBlock(nn.Module):
    """Pre-norm Transformer block: multi-head attention (SDPA) and a GELU feed-forward network."""

    def __init__(self, config: PanFoMaConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        d = config.d_model
        self.n_heads = config.n_heads
        self.dropout = config.dropout
        self.norm_attn = nn.LayerNorm(d, **factory_kwargs)
        self.qkv = nn.Linear(d, 3 * d, **factory_kwargs)
        self.attn_out = nn.Linear(d, d, **factory_kwargs)
        self.norm_ffn = nn.LayerNorm(d, **factory_kwargs)
        self.ffn = nn.Sequential(
            nn.Linear(d, config.ffn_mult * d, **factory_kwargs),
            nn.GELU(),
            nn.Linear(config.ffn_mult * d, d, **factory_kwargs),
        )

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Parameters
        ----------
        x
            ``(S, T, D)`` sequences.
        keep
            ``(S, T)`` bool, False for padding keys. Every sequence must keep at least one key.
        """
        seqs, steps, width = x.shape
        q, k, v = self.qkv(self.norm_attn(x)).view(seqs, steps, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keep[:, None, None, :], dropout_p=self.dropout if self.training else 0.0
        )  # (S, H, T, D/H)
        x = x + self.attn_out(attn.transpose(1, 2).reshape(seqs, steps, width))
        expand, _, contract = self.ffn  # Linear, GELU, Linear: GELU and the second Linear run as one function
        hidden = expand(self.norm_ffn(x))
        return x + F.dropout(_GeluLinear.apply(hidden, contract.weight, contract.bias), self.dropout, self.training)


class _GeluLinear(torch.autograd.Function):
    """``F.linear(F.gelu(hidden), weight, bias)`` keeping only ``hidden`` for the backward pass.

    Left to autograd, both the GELU's input and its output (the second Linear's input) are kept: two tensors of
    ``ffn_mult * d_model`` per token and encoder repeat, the largest activations of the encoder. The GELU is
    recomputed in the backward pass instead (elementwise, cheap). Under autocast the product runs in the dtype
    autocast gave the forward pass, and the weight gradient comes back in the weight's dtype.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias):
        out = F.linear(F.gelu(hidden), weight, bias)
        ctx.save_for_backward(hidden, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        hidden, weight = ctx.saved_tensors
        dtype = grad_out.dtype  # the forward product's dtype (bf16 under autocast)
        grad_hidden = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_hidden = torch.ops.aten.gelu_backward(grad_out @ weight.to(dtype), hidden.to(dtype)).to(hidden.dtype)
        if ctx.needs_input_grad[1]:
            activated = F.gelu(hidden.to(dtype))
            grad_weight = grad_out.reshape(-1, grad_out.shape[-1]).t() @ activated.reshape(-1, activated.shape[-1])
            grad_weight = grad_weight.to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0).to(ctx.bias_dtype)
        return grad_hidden, grad_weight, grad_bias


class LocalEncoder(nn.Module):
    """Chunked local encoder: one shared :class:`EncoderBlock` applied ``encoder_repeats`` times.

    Each chunk gets its own learnable CLS token (one per chunk position); all chunks of all cells run as one
    batch of ``B * C`` short sequences, so attention costs ``O(C * M^2)`` per cell instead of ``O((C M)^2)``.
    """

    def __init__(self, config: PanFoMaConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        self.repeats = config.encoder_repeats
        self.cls = nn.Parameter(torch.randn(config.n_chunks, config.d_model, device=device, dtype=dtype) * 0.02)
        self.block = EncoderBlock(config, device=device, dtype=dtype)
        self.norm = nn.LayerNorm(config.d_model, device=device, dtype=dtype)
        #: recompute each repeat's activations in the backward pass instead of keeping them (see PanFoMa)
        self.activation_checkpointing = False

    def forward(self, tokens: torch.Tensor, padding_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode chunks.

        Parameters
        ----------
        tokens
            ``(B, C, M, D)`` embedded gene tokens.
        padding_mask
            ``(B, C, M)``, True at padding.

        Returns
        -------
        CLS outputs ``(B, C, D)`` and gene outputs ``(B, C, M, D)``.
        """
        batch, chunks, length, width = tokens.shape
        cls = self.cls[:chunks].expand(batch, chunks, width).unsqueeze(2)  # (B, C, 1, D)
        x = torch.cat([cls, tokens], dim=2).reshape(batch * chunks, length + 1, width)
        keep = torch.cat([padding_mask.new_zeros(batch, chunks, 1), padding_mask], dim=2)
        keep = ~keep.reshape(batch * chunks, length + 1)
        for _ in range(self.repeats):
            x = checkpointed(self.block, x, keep, enabled=self.activation_checkpointing)
        x = self.norm(x).view(batch, chunks, length + 1, width)
        return x[:, :, 0], x[:, :, 1:]


def checkpointed(module: nn.Module, *inputs: torch.Tensor, enabled: bool) -> torch.Tensor:
    """``module(*inputs)``, its activations recomputed in the backward pass instead of kept when ``enabled``.

    Only while autograd records; ``torch.utils.checkpoint`` preserves the random state, so the gradients are the
    same as without.
    """
    if enabled and torch.is_grad_enabled():
        return checkpoint(module, *inputs, use_reentrant=False)
    return module(*inputs)


def take_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Reorder each sequence's tokens: ``out[b, i] = x[b, index[b, i]]``.

    The same as ``x.gather(1, index.unsqueeze(-1).expand_as(x))`` for ``x`` of shape ``(B, N, D)`` and ``index`` of
    shape ``(B, N)``, as one row lookup in the flattened tokens (several times faster than ``gather`` on CPU).
    """
    batch, steps = index.shape
    offsets = torch.arange(batch, device=index.device).unsqueeze(1) * x.shape[1]
    rows = x.reshape(batch * x.shape[1], *x.shape[2:]).index_select(0, (index + offsets).reshape(-1))
    return rows.view(batch, steps, *x.shape[2:])


def sort_by_global_score(
    genes: torch.Tensor, h_global: torch.Tensor, padding_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global-aware dynamic sorting: order each cell's genes by ``dot(h_i, h_global)``, descending.

    Parameters
    ----------
    genes
        ``(B, N, D)`` gene states.
    h_global
        ``(B, D)`` global cell state.
    padding_mask
        ``(B, N)``, True at padding; padding always goes last.

    Returns
    -------
    Sorted genes ``(B, N, D)`` and the order ``(B, N)`` (``sorted[:, i] = genes[:, order[:, i]]``).
    """
    # float32 scores also under bf16 autocast: every gene of a cell shares a large part of its score (about 120
    # against a spread of about 9 per cell for panfoma-tiny), where bf16 steps are 0.5-1, so bf16 scores tied most
    # genes and the stable sort then kept them in input order
    with float32_region(genes.device):
        scores = torch.einsum("bnd,bd->bn", genes.float(), h_global.float())
    scores = scores.masked_fill(padding_mask, -torch.inf)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    return take_tokens(genes, order), order


def reverse_valid_prefix(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """Index that reverses each sequence's first ``lengths[b]`` steps and leaves the padding after them in place.

    Running a causal scan on ``take_tokens(x, idx)`` is a backward scan over the valid tokens that padding never
    reaches; the index is its own inverse.
    """
    positions = torch.arange(steps, device=lengths.device).expand(lengths.shape[0], steps)
    return torch.where(positions < lengths[:, None], lengths[:, None] - 1 - positions, positions)


class BidirectionalMambaLayer(nn.Module):
    """Forward and backward Mamba2 (separate weights) fused by a gate computed from the layer input.

    ``y = x + g * fwd(norm(x)) + (1 - g) * bwd(norm(x))`` with ``g = sigmoid(Linear(norm(x)))``.
    """

    def __init__(self, config: PanFoMaConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        mamba_kwargs = {
            "d_state": config.d_state,
            "d_conv": config.d_conv,
            "expand": config.expand,
            "headdim": config.headdim,
            "chunk_size": config.ssd_chunk_size,
            **factory_kwargs,
        }
        self.norm = nn.RMSNorm(config.d_model, eps=1e-5, **factory_kwargs)
        self.forward_mamba = Mamba2(config.d_model, **mamba_kwargs)
        self.backward_mamba = Mamba2(config.d_model, **mamba_kwargs)
        self.gate = nn.Linear(config.d_model, config.d_model, **factory_kwargs)

    def forward(self, x: torch.Tensor, reverse_index: torch.Tensor) -> torch.Tensor:
        """Apply the layer to ``x`` ``(B, N, D)``; ``reverse_index`` from :func:`reverse_valid_prefix`."""
        h = self.norm(x)
        fwd = self.forward_mamba(h)
        bwd = take_tokens(self.backward_mamba(take_tokens(h, reverse_index)), reverse_index)
        g = torch.sigmoid(self.gate(h))
        return x + g * fwd + (1.0 - g) * bwd
