"""Open an ``.h5ad`` file with its matrices left on disk, for tools that read cells in row blocks."""

from __future__ import annotations

from pathlib import Path

import h5py
from anndata import AnnData

__all__ = ["read_h5ad_lazily"]

_SPARSE = ("csr_matrix", "csc_matrix")


def read_h5ad_lazily(path: str | Path) -> AnnData:
    """The file's AnnData with ``X``, every layer and ``.raw``'s ``X`` left on disk.

    ``anndata.read_h5ad(path, backed="r")`` leaves only ``X`` on disk and reads every layer into memory when it
    opens the file: a file with raw counts in ``layers["counts"]`` (scanpy's usual layout) would be read whole
    before the first cell is embedded. Here sparse matrices become anndata's backed datasets and dense ones h5py
    datasets, which :func:`~panfoma_sc.data.rows.iter_row_blocks` reads a block of rows at a time; dense ``obsm``
    entries stay on disk too. ``obs``, ``var``, ``uns`` and ``.raw``'s ``var`` are read into memory (the tools read
    and write them); ``obsp``, ``varm`` and ``varp`` are left out (the tools do not use them: a command's output is
    a copy of the input file with the results added, so they are kept there). Elements of other kinds (a
    DataFrame in ``obsm``, a sparse ``obsm`` entry) are read into memory.

    The file stays open for reading while the returned object (or a matrix of it) is alive. Files written by
    anndata before 0.7 (no encoding attributes), and any file where anndata is older than 0.11 (no
    ``anndata.io``, whose datasets AnnData holds), are opened with ``anndata.read_h5ad(path, backed="r")``.

    Parameters
    ----------
    path
        An ``.h5ad`` file.

    Returns
    -------
    An AnnData that is not ``isbacked`` but whose matrices are on disk.
    """
    import anndata as ad

    try:
        from anndata.io import read_elem
    except ImportError:  # anndata < 0.11
        return ad.read_h5ad(path, backed="r")
    file = h5py.File(path, "r")
    if "encoding-type" not in file.attrs:
        file.close()
        return ad.read_h5ad(path, backed="r")
    obs, var = read_elem(file["obs"]), read_elem(file["var"])
    adata = AnnData(
        X=_on_disk(file["X"]) if "X" in file else None,
        obs=obs,
        var=var,
        layers={name: _on_disk(element) for name, element in file.get("layers", {}).items()},
        obsm={name: _on_disk(element) for name, element in file.get("obsm", {}).items()},
        uns=read_elem(file["uns"]) if "uns" in file else None,
    )
    if "raw" in file:
        raw = file["raw"]
        adata.raw = AnnData(X=_on_disk(raw["X"]), obs=obs[[]], var=read_elem(raw["var"]))
    return adata


def _on_disk(element: h5py.Group | h5py.Dataset):
    """A sparse matrix as anndata's backed dataset, a dense numeric array as the h5py dataset, else in memory."""
    from anndata.io import read_elem, sparse_dataset

    encoding = element.attrs.get("encoding-type", "")
    if isinstance(element, h5py.Group) and encoding in _SPARSE:
        return sparse_dataset(element)
    if isinstance(element, h5py.Dataset) and encoding in ("array", "") and element.dtype.kind in "biuf":
        return element
    return read_elem(element)
