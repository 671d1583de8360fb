"""``pf.pl.embedding``: scanpy's embedding plot with PanFoMa's annotation confidence."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["embedding"]


def embedding(
    adata: AnnData,
    *,
    basis: str = "umap",
    color: str | Sequence[str] | None = None,
    label_key: str = "panfoma_label",
    confidence: bool = True,
    **kwargs: Any,
):
    """Plot cells on an embedding, coloured by PanFoMa's labels and their confidence.

    A thin wrapper of :func:`scanpy.pl.embedding`: it adds, for every coloured label column written by
    :func:`panfoma_sc.tl.annotate`, a panel of its ``*_confidence`` on a fixed 0-1 scale, and draws
    ``"Unknown"`` cells in light grey, in categorical and plain-string columns alike. Everything else is
    scanpy's, including what it changes in ``adata``: string columns of ``adata.obs`` become categoricals
    and the colours of each coloured categorical go to ``adata.uns[f"{column}_colors"]``, as after
    :func:`scanpy.pl.embedding`; nothing else is written. Files saved with ``save=`` are named as scanpy names
    them for ``basis`` (``save="_walk.png"`` with ``basis="umap"`` writes ``umap_walk.png`` in
    ``sc.settings.figdir``, as :func:`scanpy.pl.umap` does).

    Parameters
    ----------
    adata
        Annotated data.
    basis
        ``obsm`` key (with or without ``X_``), e.g. ``"umap"`` after
        ``sc.pp.neighbors(adata, use_rep="X_panfoma"); sc.tl.umap(adata)``.
    color
        ``obs`` columns or genes to colour by; default: ``label_key``.
    label_key
        The ``key_added`` of :func:`panfoma_sc.tl.annotate`.
    confidence
        Add the confidence panel of each coloured annotation.
    **kwargs
        Passed to :func:`scanpy.pl.embedding`.

    Returns
    -------
    Whatever :func:`scanpy.pl.embedding` returns.
    """
    import scanpy as sc

    key = basis if basis in adata.obsm else f"X_{basis}"
    if key not in adata.obsm:
        msg = (
            f"adata.obsm has no {basis!r} embedding (keys: {list(adata.obsm)}). Compute one first, e.g. "
            "sc.pp.neighbors(adata, use_rep='X_panfoma'); sc.tl.umap(adata)."
        )
        raise KeyError(msg)
    if color is None and label_key not in adata.obs.columns:
        msg = (
            f"adata.obs has no {label_key!r} column to colour by: run pf.tl.annotate(adata, reference, "
            "labels_key=...) first, or pass color= (obs columns or genes)."
        )
        raise KeyError(msg)
    colors = [label_key] if color is None else ([color] if isinstance(color, str) else list(color))
    genes = _plottable_genes(adata, kwargs)
    missing = [c for c in colors if c not in adata.obs.columns and genes is not None and c not in genes]
    if missing:
        where = "adata.var_names or adata.raw.var_names" if adata.raw is not None else "adata.var_names"
        msg = f"color {missing} not found in adata.obs columns or {where}."
        raise KeyError(msg)
    panels: list[str] = []
    for name in colors:
        panels.append(name)
        if confidence and f"{name}_confidence" in adata.obs.columns:
            panels.append(f"{name}_confidence")
    if kwargs.get("ax") is not None and len(panels) > 1:
        msg = (
            f"ax= takes one panel, and this plot has {len(panels)}: {panels}. Pass one color and confidence=False "
            "to draw into ax, or leave ax out."
        )
        raise ValueError(msg)
    palette = kwargs.pop("palette", None)
    if palette is None and any("Unknown" in _categories(adata, c) for c in colors):
        palette = _palette_with_grey_unknown(adata, [c for c in colors if _categories(adata, c)])
    kwargs.setdefault("vmin", [0.0 if p.endswith("_confidence") else None for p in panels])
    kwargs.setdefault("vmax", [1.0 if p.endswith("_confidence") else None for p in panels])
    # ``basis`` as given, not ``key``: scanpy names saved files after it (``umap_walk.png``, not ``X_umap_walk.png``)
    return sc.pl.embedding(adata, basis=basis, color=panels, palette=palette, **kwargs)


def _plottable_genes(adata: AnnData, kwargs: dict[str, Any]):
    """Gene names scanpy can colour by: ``var_names``, and ``raw``'s unless ``use_raw=False``.

    ``None`` (not checked here) when ``gene_symbols=`` names a var column.
    """
    if kwargs.get("gene_symbols") is not None:
        return None
    genes = adata.var_names
    if adata.raw is not None and kwargs.get("use_raw") is not False:
        genes = genes.union(adata.raw.var_names)
    return genes


def _categories(adata: AnnData, column: str) -> list[str]:
    """Categories scanpy colours an ``obs`` column by: a categorical's own, or those it makes of a string column.

    scanpy turns string columns into categoricals (anndata's ``strings_to_categoricals``) before plotting;
    doing the same to a copy of the column gives the categories, and their order, without touching ``adata``.
    """
    import pandas as pd

    if column not in adata.obs.columns:
        return []
    frame = adata.obs[[column]].copy()
    adata.strings_to_categoricals(frame)  # with a frame given, only the frame changes
    values = frame[column]
    return list(values.cat.categories) if isinstance(values.dtype, pd.CategoricalDtype) else []


def _palette_with_grey_unknown(adata: AnnData, columns: list[str]) -> dict[str, str]:
    """Scanpy's default category colours, with ``"Unknown"`` light grey."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    palette: dict[str, str] = {}
    for column in columns:
        categories = [c for c in _categories(adata, column) if c != "Unknown"]
        cmap = colormaps["tab20"] if len(categories) > 10 else colormaps["tab10"]
        palette |= {c: to_hex(cmap(i % cmap.N)) for i, c in enumerate(categories)}
    palette["Unknown"] = "#d9d9d9"
    return palette
