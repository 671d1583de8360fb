"""Check file paths before any work starts, so that a long run never fails at its last step."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_input_file", "check_writable"]


def check_input_file(path: str | Path) -> None:
    """Raise ``FileNotFoundError`` naming ``path`` unless it is an existing file."""
    if not Path(path).is_file():
        msg = f"input file {str(path)!r} does not exist (or is not a file)."
        raise FileNotFoundError(msg)


def check_writable(path: str | Path, what: str = "output") -> None:
    """Refuse a path that a file cannot be written to: a folder, a missing folder, a read-only folder.

    Parameters
    ----------
    path
        The file to be written.
    what
        What the file is, for the message (``"output"``, ``"save_model"``).

    Raises
    ------
    FileNotFoundError
        The file's folder does not exist.
    ValueError
        ``path`` is a folder, or its folder is not writable.
    """
    target = Path(path)
    folder = target.resolve().parent
    if target.is_dir():
        msg = f"{what} {str(path)!r} is a folder: give a file name inside it, e.g. {str(target / 'out.h5ad')!r}."
        raise ValueError(msg)
    if not folder.is_dir():
        msg = f"cannot write {what} {str(path)!r}: its folder {str(folder)!r} does not exist. Create it first."
        raise FileNotFoundError(msg)
    if not os.access(folder, os.W_OK):
        msg = f"cannot write {what} {str(path)!r}: its folder {str(folder)!r} is not writable."
        raise ValueError(msg)
