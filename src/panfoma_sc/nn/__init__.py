"""PyTorch implementation of the PanFoMa network (no AnnData in here)."""

from .config import CONFIGS, PanFoMaConfig
from .heads import BatchDiscriminator, CellClassifier
from .model import MVCHead, PanFoMa, PanFoMaOutput, ValueHead, masked_bin_loss
from .ssd import Mamba2, ssd_recurrence, ssd_scan

__all__ = [
    "CONFIGS",
    "BatchDiscriminator",
    "CellClassifier",
    "MVCHead",
    "Mamba2",
    "PanFoMa",
    "PanFoMaConfig",
    "PanFoMaOutput",
    "ValueHead",
    "masked_bin_loss",
    "ssd_recurrence",
    "ssd_scan",
]
