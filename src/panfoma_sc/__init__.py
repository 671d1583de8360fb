"""panfoma-sc: the PanFoMa single-cell foundation model for scanpy, anndata and muon users.

``import panfoma_sc as pf`` gives ``pf.pp`` (input checks, gene matching), ``pf.tl`` (embed, annotate,
integrate), ``pf.pl`` (plots), ``pf.models`` (checkpoint registry), ``pf.datasets``, ``pf.bench`` and
``pf.train`` (pretraining, imported on first access). Importing the package does not import torch; that happens
on first use.
"""

from __future__ import annotations

from . import bench, datasets, models, pl, pp, tl
from ._settings import settings
from ._version import __version__

__all__ = ["__version__", "bench", "datasets", "models", "pl", "pp", "settings", "tl", "train"]


def __getattr__(name: str) -> object:
    """``pf.train`` on first access: it imports torch, which ``import panfoma_sc`` does not."""
    if name == "train":
        import importlib

        return importlib.import_module(f"{__name__}.train")
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
