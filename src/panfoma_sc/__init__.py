"""panfoma-sc: the PanFoMa single-cell foundation model for scanpy, anndata and muon users.

``import panfoma_sc as pf`` gives ``pf.pp`` (input checks, gene matching), ``pf.tl`` (embed, annotate,
integrate), ``pf.pl`` (plots), ``pf.models`` (checkpoint registry), ``pf.datasets``, ``pf.bench`` and
``pf.train`` (pretraining). ``pf.bench`` and ``pf.train`` are imported on first access (the benchmark imports
scanpy, pretraining torch), so ``import panfoma_sc`` stays quick; torch is imported on first use.
"""

from __future__ import annotations

from . import datasets, models, pl, pp, tl
from ._settings import settings
from ._version import __version__

__all__ = ["__version__", "bench", "datasets", "models", "pl", "pp", "settings", "tl", "train"]

#: Subpackages imported on first access.
_LAZY = frozenset({"bench", "train"})


def __getattr__(name: str) -> object:
    """``pf.bench`` and ``pf.train`` on first access."""
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)
