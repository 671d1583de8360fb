"""Losses of each training step, kept on the device and read back together."""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["POSTFIX_EVERY", "StepLosses"]

#: Steps between progress-bar loss readouts (each readout makes the host wait for the device).
POSTFIX_EVERY = 10


class StepLosses:
    """Per-step losses kept where they were computed; reading one back makes the host wait for the device.

    A training loop appends each step's losses without reading them, shows one now and then
    (:meth:`latest`), and reads them all at the end (:meth:`records`).
    """

    def __init__(self) -> None:
        self._steps: list[int] = []
        self._names: tuple[str, ...] | None = None
        self._values: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self._steps)

    def append(self, step: int, losses: Mapping[str, torch.Tensor]) -> None:
        """Keep the (detached) ``losses`` of ``step``; every step names the same losses."""
        names = tuple(losses)
        if self._names is None:
            self._names = names
        elif names != self._names:
            msg = f"step {step} has losses {names}, earlier steps {self._names}."
            raise ValueError(msg)
        self._steps.append(step)
        self._values.append(torch.stack([losses[name].detach().float() for name in names]))

    def latest(self) -> dict[str, float]:
        """The last step's losses (one read from the device)."""
        return dict(zip(self._names, self._values[-1].tolist(), strict=True)) if self._values else {}

    def records(self) -> list[dict[str, float]]:
        """``{"step": step, name: value, ...}`` for every step, read from the device at once."""
        if not self._values:
            return []
        table = torch.stack(self._values).tolist()
        rows = zip(self._steps, table, strict=True)
        return [{"step": step} | dict(zip(self._names, values, strict=True)) for step, values in rows]
