"""Task heads for fine-tuning: a cell-type classifier and an adversarial batch discriminator."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BatchDiscriminator", "CellClassifier"]


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
    """Predicts a cell's batch from its embedding; its confusion loss teaches the encoder to hide the batch.

    :meth:`losses` gives two terms. The discriminator learns to predict the batch from the embedding (its loss
    does not reach the encoder), and the encoder learns to make the discriminator's prediction uniform over
    the batches (its loss does not reach the discriminator): the confusion objective of Tzeng et al. (2015).
    Unlike a reversed cross-entropy (Ganin & Lempitsky, 2015), the encoder's objective is bounded: it moves cells
    towards the discriminator's decision boundary and never past it, so a discriminator that has not yet learned
    the batches cannot push them apart.
    """

    def __init__(self, d_model: int, n_batches: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.n_batches = n_batches
        self.net = _mlp(d_model, d_model, n_batches, 0.0, {"device": device, "dtype": dtype})

    def forward(self, cell_embedding: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` to ``(B, n_batches)`` logits."""
        return self.net(cell_embedding)

    def losses(self, cell_embedding: torch.Tensor, batches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The discriminator's and the encoder's loss for cells of known ``batches``.

        Parameters
        ----------
        cell_embedding
            ``(B, D)`` cell embeddings.
        batches
            ``(B,)`` batch index of each cell.

        Returns
        -------
        The cross-entropy of the batch prediction (gradient to the discriminator only), and the confusion:
        the cross-entropy of the prediction against the uniform distribution minus its minimum ``log(n_batches)``,
        zero when the prediction is uniform (gradient to the embedding only).
        """
        discriminator = F.cross_entropy(self.net(cell_embedding.detach()).float(), batches)
        frozen = {name: parameter.detach() for name, parameter in self.net.named_parameters()}
        logits = torch.func.functional_call(self.net, frozen, (cell_embedding,)).float()
        confusion = -logits.log_softmax(dim=-1).mean(dim=-1).mean() - math.log(self.n_batches)
        return discriminator, confusion
