"""The masked-value objective's masking: what is hidden, how much, and reproducibly."""

import torch

from panfoma_sc.train._masking import mask_values


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    value_bins = torch.randint(1, 51, (6, 4, 32), generator=generator)
    lengths = torch.tensor([128, 100, 64, 33, 1, 0])
    positions = torch.arange(4 * 32).reshape(1, 4, 32)
    padding_mask = positions >= lengths.reshape(-1, 1, 1)
    return value_bins, padding_mask


def test_padding_is_never_hidden_and_hidden_values_carry_the_mask_bin():
    value_bins, padding_mask = _batch()
    masked, hidden = mask_values(
        value_bins, padding_mask, mask_bin=51, ratio_range=(0.9, 1.0), generator=torch.Generator().manual_seed(1)
    )
    assert hidden.dtype == torch.bool
    assert hidden.shape == value_bins.shape
    assert not (hidden & padding_mask).any()
    assert (masked[hidden] == 51).all()
    assert torch.equal(masked[~hidden], value_bins[~hidden])
    assert hidden[0].sum() > 0.8 * 128  # a full cell at ratio >= 0.9
    assert hidden[5].sum() == 0  # an all-padding row


def test_hidden_share_follows_the_ratio_range():
    value_bins, padding_mask = _batch()
    value_bins = value_bins.repeat(50, 1, 1)
    padding_mask = torch.zeros_like(padding_mask[:1]).repeat(300, 1, 1)
    _, hidden = mask_values(
        value_bins, padding_mask, mask_bin=51, ratio_range=(0.1, 0.3), generator=torch.Generator().manual_seed(2)
    )
    share = hidden.float().mean(dim=(1, 2))
    assert share.min() > 0.02
    assert share.max() < 0.4
    assert abs(share.mean().item() - 0.2) < 0.02


def test_same_generator_seed_draws_the_same_masks():
    value_bins, padding_mask = _batch()
    draws = [
        mask_values(
            value_bins, padding_mask, mask_bin=51, ratio_range=(0.15, 0.5), generator=torch.Generator().manual_seed(7)
        )[1]
        for _ in range(2)
    ]
    assert torch.equal(draws[0], draws[1])
    other = mask_values(
        value_bins, padding_mask, mask_bin=51, ratio_range=(0.15, 0.5), generator=torch.Generator().manual_seed(8)
    )[1]
    assert not torch.equal(draws[0], other)
