"""Per-step losses kept on the device and read back together."""

from __future__ import annotations

import pytest
import torch

from panfoma_sc.train._history import StepLosses


def test_step_losses_are_read_back_as_one_record_per_step():
    losses = StepLosses()
    assert losses.records() == []
    assert losses.latest() == {}
    for step in range(3):
        tracked = torch.tensor(step + 0.5, requires_grad=True)  # kept detached
        losses.append(step, {"loss_a": tracked, "loss_b": torch.tensor(2.0 * step)})
    assert len(losses) == 3
    assert losses.latest() == {"loss_a": 2.5, "loss_b": 4.0}
    assert losses.records() == [
        {"step": 0, "loss_a": 0.5, "loss_b": 0.0},
        {"step": 1, "loss_a": 1.5, "loss_b": 2.0},
        {"step": 2, "loss_a": 2.5, "loss_b": 4.0},
    ]


def test_every_step_must_name_the_same_losses():
    losses = StepLosses()
    losses.append(0, {"loss_a": torch.tensor(1.0)})
    with pytest.raises(ValueError, match=r"step 1 has losses \('loss_b',\), earlier steps \('loss_a',\)"):
        losses.append(1, {"loss_b": torch.tensor(1.0)})
