"""Package-wide defaults: device, batch size, cache and data folders."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Settings", "settings"]


def _default_cache_dir() -> Path:
    if "PANFOMA_CACHE_DIR" in os.environ:
        return Path(os.environ["PANFOMA_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(base) / "panfoma-sc"


@dataclass
class Settings:
    """Defaults used when a function's argument is left at ``None``.

    Attributes
    ----------
    device
        ``"auto"`` (CUDA, else Apple MPS, else CPU) or a torch device string.
    batch_size
        Cells per forward pass.
    cache_dir
        Where downloaded checkpoints and user registrations live (env ``PANFOMA_CACHE_DIR``).
    data_dir
        Folder of real datasets for :mod:`panfoma_sc.datasets` (env ``PANFOMA_DATA_DIR``).
    """

    device: str = "auto"
    batch_size: int = 64
    cache_dir: Path = field(default_factory=_default_cache_dir)
    data_dir: Path | None = field(
        default_factory=lambda: Path(os.environ["PANFOMA_DATA_DIR"]) if os.environ.get("PANFOMA_DATA_DIR") else None
    )

    def resolve_device(self, device: str | None = None) -> str:
        """Device name to run on: ``device`` if given, else :attr:`device`, with ``"auto"`` resolved."""
        choice = device or self.device
        if choice != "auto":
            return choice
        import torch

        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"


settings = Settings()
