"""File paths: checked before any work starts, and written so that a failed write never leaves half a file."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["check_h5ad_input", "check_input_file", "check_writable", "give_usual_permissions", "write_h5ad_atomically"]


def give_usual_permissions(path: Path) -> None:
    """Give ``path`` the permissions of a file created normally: ``0666`` less the umask.

    Temporary files (``tempfile``'s, pooch's) and the files the safetensors library writes are ``0600``: others
    could not read a checkpoint on a shared cache folder or in a shared project.
    """
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):  # not our file (another user wrote it at the same time): leave it be
        path.chmod(0o666 & ~umask)


def check_input_file(path: str | Path) -> None:
    """Raise ``FileNotFoundError`` naming ``path`` unless it is an existing file."""
    if not Path(path).is_file():
        msg = f"input file {str(path)!r} does not exist (or is not a file)."
        raise FileNotFoundError(msg)


def check_h5ad_input(path: str | Path) -> None:
    """Refuse, before any work, an input that is missing or that ``anndata.read_h5ad`` cannot read.

    Raises
    ------
    FileNotFoundError
        ``path`` is not an existing file.
    ValueError
        ``path`` is not an HDF5 file (a text file, an empty or truncated download), it is an HDF5 file
        without AnnData's layout (a 10x Genomics ``.h5``, for example), or a MuData ``.h5mu``.
    """
    import h5py

    check_input_file(path)
    name = str(path)
    if not h5py.is_hdf5(path):
        msg = (
            f"input file {name!r} is not an .h5ad (HDF5) file: it is empty, truncated or in another format. "
            "Read it with scanpy (e.g. sc.read_csv, sc.read_mtx, sc.read_10x_mtx) and save it with "
            "adata.write_h5ad(...), or download it again."
        )
        raise ValueError(msg)
    with h5py.File(path, "r") as file:
        groups = set(file)
        modalities = sorted(file["mod"]) if isinstance(file.get("mod"), h5py.Group) else None
    if modalities is not None:
        first = "rna" if "rna" in modalities or not modalities else modalities[0]
        msg = (
            f"input file {name!r} is a MuData .h5mu file (modalities {modalities}); the command line reads AnnData "
            f".h5ad files. Use Python (pf.tl.embed or pf.tl.integrate on mudata.read_h5mu(path)), or write one "
            f"modality to an .h5ad: mudata.read_h5mu(path)[{first!r}].write_h5ad('{first}.h5ad')."
        )
        raise ValueError(msg)
    if "obs" not in groups or "var" not in groups:
        hint = (
            " It looks like a 10x Genomics .h5: read it with sc.read_10x_h5 and save it with adata.write_h5ad(...)."
            if "matrix" in groups
            else " Convert it with scanpy/anndata and save it with adata.write_h5ad(...)."
        )
        msg = f"input file {name!r} is an HDF5 file but not an AnnData .h5ad (no obs/var groups).{hint}"
        raise ValueError(msg)


def check_writable(path: str | Path, what: str = "output", suffix: str | None = None) -> None:
    """Refuse a path that a file cannot be written to: a folder, a missing folder, a read-only folder.

    Parameters
    ----------
    path
        The file to be written.
    what
        What the file is, for the message (``"output"``, ``"save_model"``).
    suffix
        The file name must end with this (``".h5ad"``), when given.

    Raises
    ------
    FileNotFoundError
        The file's folder does not exist.
    ValueError
        ``path`` is a folder, its folder is not writable, or its name does not end with ``suffix``.
    """
    target = Path(path)
    folder = target.resolve().parent
    if target.is_dir():
        example = target / f"out{suffix or '.h5ad'}"
        msg = f"{what} {str(path)!r} is a folder: give a file name inside it, e.g. {str(example)!r}."
        raise ValueError(msg)
    if suffix is not None and target.suffix.lower() != suffix:
        msg = f"{what} {str(path)!r} must be a {suffix} file: name it e.g. {str(target.with_suffix(suffix))!r}."
        raise ValueError(msg)
    if not folder.is_dir():
        msg = f"cannot write {what} {str(path)!r}: its folder {str(folder)!r} does not exist. Create it first."
        raise FileNotFoundError(msg)
    if not os.access(folder, os.W_OK):
        msg = f"cannot write {what} {str(path)!r}: its folder {str(folder)!r} is not writable."
        raise ValueError(msg)


def write_h5ad_atomically(
    adata: AnnData, path: str | Path, *, results: Sequence[str] = (), source: str | Path | None = None
) -> None:
    """Write ``adata`` to ``path`` through a file beside it that replaces ``path`` only once it is complete.

    A write that fails (disk full, interrupted) leaves an existing ``path`` as it was, and ``path`` may be the file
    ``adata`` was read from, even while other processes still have that file open (``torchrun``): they keep
    reading the old file.

    Parameters
    ----------
    adata
        In memory, or backed on its input file.
    path
        The ``.h5ad`` file to write.
    results
        With ``source`` (or a backed ``adata``): the elements a tool added, as ``"obs"`` (the whole table),
        ``"obsm/<key>"`` or ``"uns/<key>"``. The new file is ``source`` with these written from ``adata``;
        everything else is copied by HDF5 as stored (compression included), so ``X`` is never read into memory.
    source
        The file ``adata`` was read from; default: its own file when it is backed. Without one, all of ``adata``
        is written.
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    source = adata.filename if source is None and adata.isbacked else source
    try:
        if source is not None:
            _write_file_with_results(adata, Path(source), partial, results)
        else:
            adata.write_h5ad(partial)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)


def _write_file_with_results(adata: AnnData, source: Path, destination: Path, results: Sequence[str]) -> None:
    """Copy the h5ad ``source`` to ``destination`` object by object, with ``results`` written from ``adata``.

    What ``results`` replaces is not copied, so a tool rerun on its own output does not leave the old result's
    bytes behind in the file (HDF5 does not reclaim the space of deleted objects).
    """
    import h5py

    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem

    whole = {name for name in results if "/" not in name}
    keys: dict[str, set[str]] = {}
    for name in results:
        if "/" in name:
            group_name, key = name.split("/", 1)
            keys.setdefault(group_name, set()).add(key)
    with h5py.File(source, "r") as original, h5py.File(destination, "w") as target:
        target.attrs.update(original.attrs)
        for name, item in original.items():
            if name in whole or (name in keys and not isinstance(item, h5py.Group)):
                continue  # written below (a non-group one is anndata < 0.8's layout: written whole)
            if name not in keys:
                original.copy(item, target, name=name)
                continue
            group = target.create_group(name)
            group.attrs.update(item.attrs)
            for key in item:
                if key not in keys[name]:
                    original.copy(item[key], group, name=key)
        for name in sorted(whole):
            write_elem(target, name, getattr(adata, name))
        for group_name, names in keys.items():
            elements = getattr(adata, group_name)
            if group_name not in target:  # absent from the input, or in anndata < 0.8's layout
                write_elem(target, group_name, dict(elements))
                continue
            for key in sorted(names):
                write_elem(target[group_name], key, elements[key])
