"""Task heads for fine-tuning: a cell-type classifier and an adversarial batch discriminator."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BatchDiscriminator", "CellClassifier", "reverse_gradient"]


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return inputs.view_as(inputs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.strength * grad, None


def reverse_gradient(inputs: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``-strength`` backward (Ganin & Lempitsky, 2015)."""
    return _GradientReversal.apply(inputs, strength)


def _mlp(d_in: int, d_hidden: int, d_out: int, dropout: float, factory_kwargs: dict) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, d_hidden, **factory_kwargs),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(d_hidden, d_out, **factory_kwargs),
    )


class CellClassifier(nn.Module):
    """Cell-embedding to class-logits MLP (the fine-tuned annotation head).

    Parameters
    ----------
    d_model
        Width of the cell embedding.
    n_classes
        Number of labels.
    dropout
        Dropout before the output layer.
    """

    def __init__(self, d_model: int, n_classes: int, *, dropout: float = 0.1, device=None, dtype=None) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.net = _mlp(d_model, d_model, n_classes, dropout, {"device": device, "dtype": dtype})

    def forward(self, cell_embedding: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` to ``(B, n_classes)`` logits."""
        return self.net(cell_embedding)


class BatchDiscriminator(nn.Module):
    """Predicts a cell's batch from its embedding through a gradient-reversal layer.

    Minimizing its loss trains the discriminator and, reversed, pushes the encoder to remove batch
    information from the embedding.
    """

    def __init__(self, d_model: int, n_batches: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.net = _mlp(d_model, d_model, n_batches, 0.0, {"device": device, "dtype": dtype})

    def forward(self, cell_embedding: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        """``(B, D)`` to ``(B, n_batches)`` logits, with the gradient to the embedding reversed."""
        return self.net(reverse_gradient(cell_embedding, strength))
