"""Real datasets from a local folder (``PANFOMA_DATA_DIR``), for tutorials, tests and benchmarks.

The folder holds ``.h5ad`` / ``.h5mu`` files and a README describing them; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad

from ._settings import settings

if TYPE_CHECKING:
    from mudata import MuData

__all__ = ["available", "data_dir", "load", "path"]

#: File types that hold a dataset.
DATASET_SUFFIXES = (".h5ad", ".h5mu")


def data_dir() -> Path:
    """The dataset folder (``pf.settings.data_dir`` / env ``PANFOMA_DATA_DIR``).

    Raises
    ------
    FileNotFoundError
        When it is not set, does not exist or is a file.
    """
    folder = settings.data_dir
    if folder is None:
        msg = "No dataset folder configured: set PANFOMA_DATA_DIR=/path/to/data or pf.settings.data_dir."
        raise FileNotFoundError(msg)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        msg = (
            f"Dataset folder {str(folder)!r} (pf.settings.data_dir, from PANFOMA_DATA_DIR) is a file, not a "
            f"folder. Set it to the folder that holds the .h5ad files, e.g. {str(folder.parent)!r}."
        )
        raise FileNotFoundError(msg)
    if not folder.is_dir():
        msg = f"Dataset folder {str(folder)!r} (pf.settings.data_dir, from PANFOMA_DATA_DIR) does not exist."
        raise FileNotFoundError(msg)
    return folder


def available() -> list[str]:
    """Names of the datasets in the folder: file names without extension, with it where a name has both kinds."""
    files = [p for p in data_dir().iterdir() if p.suffix in DATASET_SUFFIXES and p.is_file()]
    stems = [p.stem for p in files]
    return sorted(p.stem if stems.count(p.stem) == 1 else p.name for p in files)


def path(name: str) -> Path:
    """Path of a dataset file.

    Parameters
    ----------
    name
        File name in the dataset folder, with or without its ``.h5ad`` / ``.h5mu`` extension.

    Returns
    -------
    The existing file.

    Raises
    ------
    ValueError
        ``name`` is a path (it holds a separator or is ``..``), or names a file that is not a dataset.
    FileNotFoundError
        No such dataset.
    """
    folder = data_dir()
    _check_plain_name(name)
    names = [name] if Path(name).suffix in DATASET_SUFFIXES else [name + suffix for suffix in DATASET_SUFFIXES]
    found = [candidate for candidate in (folder / n for n in names) if candidate.is_file()]
    if len(found) > 1:
        msg = f"Dataset name {name!r} is ambiguous: {[p.name for p in found]} both exist. Pass the file name."
        raise ValueError(msg)
    if found:
        return found[0]
    if (folder / name).is_file():
        msg = (
            f"{name!r} is a file of the dataset folder but not a dataset (those are {' or '.join(DATASET_SUFFIXES)} "
            f"files). Available: {available()}."
        )
        raise ValueError(msg)
    msg = f"Dataset {name!r} not found in {str(folder)!r}. Available: {available()}."
    raise FileNotFoundError(msg)


def _check_plain_name(name: str) -> None:
    """Refuse names that would reach outside the dataset folder (``"../x"``, ``"/etc/x"``, ``"sub/x"``)."""
    if "/" in name or "\\" in name or name in ("", ".", ".."):
        msg = (
            f"Dataset name {name!r} is not a file name in the dataset folder: pass a name from "
            f"pf.datasets.available() (no folders, no '..'); read other files with anndata.read_h5ad(path)."
        )
        raise ValueError(msg)


def load(name: str, *, backed: bool = False) -> ad.AnnData | MuData:
    """Read a dataset: an AnnData, or a MuData for an ``.h5mu`` file.

    Parameters
    ----------
    name
        File name, with or without extension (see :func:`available`).
    backed
        Open read-only on disk instead of loading into memory.

    Returns
    -------
    The dataset.

    Raises
    ------
    ImportError
        An ``.h5mu`` dataset without ``mudata`` installed (the ``multiomics`` extra).
    """
    file = path(name)
    if file.suffix == ".h5mu":
        try:
            import mudata
        except ImportError as err:
            msg = f"{file.name} is a MuData file: reading it needs mudata: pip install 'panfoma-sc[multiomics]'."
            raise ImportError(msg) from err
    try:
        if file.suffix == ".h5mu":
            return mudata.read_h5mu(file, backed="r" if backed else False)
        return ad.read_h5ad(file, backed="r" if backed else None)
    except OSError as err:  # h5py's "file signature not found" names neither the file nor what to do
        msg = f"Dataset file {str(file)!r} cannot be read ({err}): it is damaged or incomplete; copy it again."
        raise OSError(msg) from err
