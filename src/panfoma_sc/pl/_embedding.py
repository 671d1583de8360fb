"""``pf.pl.embedding``: scanpy's embedding plot with PanFoMa's annotation confidence."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..tl._annotate import UNKNOWN, UNKNOWN_COLOR

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
    if adata.n_obs == 0:
        msg = "adata has no cells to plot (0 observations). Check the selection that produced it."
        raise ValueError(msg)
    colors = [label_key] if color is None else ([color] if isinstance(color, str) else list(color))
    if not colors:
        msg = f"color=[] names nothing to colour by: pass obs columns or genes, or leave it out for {label_key!r}."
        raise ValueError(msg)
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
    # "Unknown" grey: through each such column's own uns colours, which scanpy reads, so other columns keep theirs
    greyed = {} if kwargs.get("palette") is not None else _colors_with_grey_unknown(adata, colors)
    # one value per drawn panel: scanpy draws every colour for each of several components ("1,2", "2,3")
    components = kwargs.get("components")
    per_panel = len(components) if isinstance(components, list | tuple) and len(components) > 1 else 1
    kwargs.setdefault("vmin", [0.0 if p.endswith("_confidence") else None for p in panels for _ in range(per_panel)])
    kwargs.setdefault("vmax", [1.0 if p.endswith("_confidence") else None for p in panels for _ in range(per_panel)])
    before = {key: adata.uns[key] for key in greyed if key in adata.uns}
    adata.uns.update(greyed)
    try:
        # ``basis`` as given, not ``key``: scanpy names saved files after it (``umap_walk.png``, not ``X_umap_...``)
        return sc.pl.embedding(adata, basis=basis, color=panels, **kwargs)
    except BaseException:
        for key in greyed:  # a failed plot leaves adata as it was
            if key in before:
                adata.uns[key] = before[key]
            else:
                del adata.uns[key]
        raise


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


def _colors_with_grey_unknown(adata: AnnData, columns: list[str]) -> dict[str, list[str]]:
    """``uns`` colours for each column among ``columns`` with an ``"Unknown"`` category, that one light grey.

    A column's valid colours in ``adata.uns`` are kept; otherwise it gets scanpy's default colours for its number
    of categories (matplotlib's colour cycle, then scanpy's 20, 28 and 102-colour palettes).
    """
    from matplotlib.colors import is_color_like

    greyed: dict[str, list[str]] = {}
    for column in dict.fromkeys(columns):
        categories = _categories(adata, column)
        if UNKNOWN not in categories:
            continue
        existing = adata.uns.get(f"{column}_colors")
        valid = existing is not None and len(existing) == len(categories) and all(map(is_color_like, existing))
        colors = [str(c) for c in existing] if valid else _default_colors(len(categories))
        colors[categories.index(UNKNOWN)] = UNKNOWN_COLOR
        greyed[f"{column}_colors"] = colors
    return greyed


def _default_colors(n: int) -> list[str]:
    """The colours scanpy gives ``n`` categories by default."""
    from matplotlib import rcParams
    from matplotlib.colors import to_hex
    from scanpy.plotting import palettes

    cycle = [to_hex(c) for c in rcParams["axes.prop_cycle"].by_key().get("color", [])]
    for palette in (cycle, palettes.default_20, palettes.default_28, palettes.default_102):
        if n <= len(palette):
            return [to_hex(c) for c in palette[:n]]
    return ["#808080"] * n  # scanpy, too, draws more than 102 categories in grey
