"""panfoma-sc: the PanFoMa single-cell foundation model for scanpy, anndata and muon users.

``import panfoma_sc as pf`` gives ``pf.pp`` (input checks, gene matching), ``pf.tl`` (embed, annotate,
integrate), ``pf.pl`` (plots), ``pf.models`` (checkpoint registry), ``pf.datasets`` and ``pf.bench``.
Importing the package does not import torch; that happens on first use.
"""

from __future__ import annotations

from . import bench, datasets, models, pl, pp, tl
from ._settings import settings
from ._version import __version__

__all__ = ["__version__", "bench", "datasets", "models", "pl", "pp", "settings", "tl"]
