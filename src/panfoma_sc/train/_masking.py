"""Masking for the masked-value objective."""

from __future__ import annotations

import torch

__all__ = ["mask_values"]


def mask_values(
    value_bins: torch.Tensor,
    padding_mask: torch.Tensor,
    *,
    mask_bin: int,
    ratio_range: tuple[float, float],
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hide a random share of each cell's values.

    Parameters
    ----------
    value_bins
        ``(B, C, M)`` bins.
    padding_mask
        ``(B, C, M)``, True at padding (never masked).
    mask_bin
        Bin index that means "hidden".
    ratio_range
        Each cell hides a share drawn uniformly from this range.
    generator
        CPU generator (seeded per step so a resumed run draws the same masks).

    Returns
    -------
    Masked bins and the ``(B, C, M)`` bool mask of hidden positions.
    """
    batch = value_bins.shape[0]
    low, high = ratio_range
    ratio = low + (high - low) * torch.rand(batch, 1, 1, generator=generator)
    # Drawn on the CPU generator (reproducible on every device) and combined with the padding mask where the batch
    # lives: reading the mask back to the host would wait for the GPU; on CUDA the draw travels from pinned memory
    # without a wait.
    drawn = torch.rand(value_bins.shape, generator=generator) < ratio
    if value_bins.is_cuda:
        drawn = drawn.pin_memory()
    hidden = drawn.to(value_bins.device, non_blocking=True) & ~padding_mask
    return value_bins.masked_fill(hidden, mask_bin), hidden
