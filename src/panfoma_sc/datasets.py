"""Real datasets from a local folder (``PANFOMA_DATA_DIR``), for tutorials, tests and benchmarks.

The folder holds ``.h5ad`` / ``.h5mu`` files and a README describing them; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad

from ._settings import settings

__all__ = ["available", "data_dir", "load", "path"]


def data_dir() -> Path:
    """The dataset folder (``pf.settings.data_dir`` / env ``PANFOMA_DATA_DIR``).

    Raises
    ------
    FileNotFoundError
        When it is not set or does not exist.
    """
    folder = settings.data_dir
    if folder is None:
        msg = "No dataset folder configured: set PANFOMA_DATA_DIR=/path/to/data or pf.settings.data_dir."
        raise FileNotFoundError(msg)
    folder = Path(folder)
    if not folder.is_dir():
        msg = f"Dataset folder {str(folder)!r} (PANFOMA_DATA_DIR) does not exist."
        raise FileNotFoundError(msg)
    return folder


def available() -> list[str]:
    """Names of the datasets in the folder (file names without extension)."""
    folder = data_dir()
    return sorted(p.stem for p in folder.iterdir() if p.suffix in {".h5ad", ".h5mu"})


def path(name: str) -> Path:
    """Path of a dataset file.

    Parameters
    ----------
    name
        File name, with or without extension.

    Returns
    -------
    The existing file.
    """
    folder = data_dir()
    for candidate in (folder / name, folder / f"{name}.h5ad", folder / f"{name}.h5mu"):
        if candidate.is_file():
            return candidate
    msg = f"Dataset {name!r} not found in {str(folder)!r}. Available: {available()}."
    raise FileNotFoundError(msg)


def load(name: str, *, backed: bool = False) -> ad.AnnData:
    """Read a dataset as AnnData.

    Parameters
    ----------
    name
        File name, with or without extension (see :func:`available`).
    backed
        Open read-only on disk instead of loading into memory.

    Returns
    -------
    The dataset.
    """
    file = path(name)
    if file.suffix == ".h5mu":
        msg = f"{file.name} is a MuData file: read it with mudata.read_h5mu."
        raise ValueError(msg)
    return ad.read_h5ad(file, backed="r" if backed else None)
