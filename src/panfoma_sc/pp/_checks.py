"""Input checks run before any work starts: nothing is computed on data that would fail half-way."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from anndata import AnnData
from scipy import sparse

from .._arguments import require_flag, require_integer
from .._progress import progress_bar
from ..data.rows import GeneColumns, expression_matrix, iter_row_blocks, raw_values

logger = logging.getLogger(__name__)

__all__ = ["ExpressionReport", "check_expression"]

#: log1p of any plausible normalized count stays below this; larger non-integers are TPM-like scales.
_LOG_SCALE_MAX = 30.0


#: Gene variances at or below this count as constant genes.
_NO_VARIANCE = 1e-12


def _gene_variances(sums: np.ndarray | float, sums_of_squares: np.ndarray | float, n_cells: int) -> np.ndarray | None:
    """Per-gene variance across cells from the per-gene sums (``None`` when there are no per-gene sums)."""
    if np.ndim(sums) == 0:
        return None
    mean = sums / n_cells
    return np.maximum(sums_of_squares / n_cells - mean**2, 0.0)


def _unit_variance_genes(variance: np.ndarray | None, n_cells: int) -> bool:
    """Whether most varying genes have standard deviation 1 across cells: the mark of per-gene scaling.

    Natural expression (counts, log values, TPM) has gene standard deviations spread over orders of magnitude (at
    most 7% of genes within 5% of 1 in the shared datasets); after ``sc.pp.scale`` (with or without centring)
    every gene that varies has 1, and still 62% of pbmc3k's after clipping at ``max_value=10``.
    """
    if n_cells < 10 or variance is None:
        return False
    std = np.sqrt(variance[variance > _NO_VARIANCE])
    if std.size < 10:
        return False
    near_one = (std > 0.95 * np.sqrt((n_cells - 1) / n_cells)) & (std < 1.05)
    return bool(near_one.mean() > 0.5)


def _clipped_at_one_maximum(gene_maxima: np.ndarray | float, variance: np.ndarray | None) -> bool:
    """Whether most varying genes reach exactly the same maximum: per-gene scaling clipped at ``max_value``.

    In every shared dataset (counts, log values, TPM) one gene holds the overall maximum; after
    ``sc.pp.scale(zero_center=False, max_value=...)`` 79% (``max_value=10``) to all (5 and below) of pbmc3k's
    varying genes do.
    """
    if np.ndim(gene_maxima) == 0 or variance is None:
        return False
    maxima = gene_maxima[variance > _NO_VARIANCE]
    if maxima.size < 10:
        return False
    at_maximum = maxima == maxima.max()
    return bool(at_maximum.sum() >= 10 and at_maximum.mean() > 0.5)


@dataclass
class ExpressionReport:
    """What :func:`check_expression` found.

    Attributes
    ----------
    kind
        ``"counts"`` (integers), ``"binary"`` (0 and 1 only), ``"log-normalized"`` (as after
        ``sc.pp.normalize_total`` and ``sc.pp.log1p``) or ``"nonnegative"`` (another per-cell scale, e.g. TPM).
    n_cells
        Cells checked.
    n_genes
        Genes (``var`` columns) of the checked matrix.
    max_value
        Largest value.
    max_expressed
        Most expressed genes (among the checked columns) in any one cell.
    """

    kind: str
    n_cells: int
    n_genes: int
    max_value: float
    max_expressed: int = 0

    def summary(self) -> dict[str, object]:
        """JSON-able report."""
        return {"input_kind": self.kind, "n_cells": self.n_cells, "max_value": self.max_value}


def _where_in_block(
    adata: AnnData,
    block: sparse.csr_matrix,
    selected: np.ndarray,
    bad: np.ndarray,
    columns: np.ndarray | None,
) -> str:
    """Count the flagged stored values of a CSR block of ``selected`` rows; name a few of their cells and genes."""
    rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))[bad]
    genes = block.indices[bad] if columns is None else np.asarray(columns)[block.indices[bad]]
    cells = adata.obs_names[np.asarray(selected)[np.unique(rows)[:3]]].tolist()
    gene_names = adata.var_names[np.unique(genes)[:3]].tolist()
    scope = "" if len(selected) == adata.n_obs else f" in the block of {len(selected)} cells where they were found"
    count = int(bad.sum())
    return f"{count} value{'s' if count != 1 else ''}{scope}, e.g. in cells {cells} and genes {gene_names}"


def _checked_rows(rows: object, n_cells: int) -> np.ndarray:
    """``rows`` as integer positions, or a ``ValueError`` when they are not ascending positions of the cells."""
    positions = np.asarray(rows)
    if positions.dtype == bool:
        msg = "rows must be integer row positions, not a boolean mask: pass np.flatnonzero(mask)."
        raise ValueError(msg)
    if positions.ndim != 1 or (positions.size and not np.issubdtype(positions.dtype, np.integer)):
        msg = f"rows must be a 1-d array of integer row positions, got {positions.dtype} of shape {positions.shape}."
        raise ValueError(msg)
    positions = positions.astype(np.int64)  # signed: differences of unsigned positions would wrap around
    if positions.size and (positions.min() < 0 or positions.max() >= n_cells):
        msg = f"rows must be positions between 0 and {n_cells - 1} (adata has {n_cells} cells)."
        raise ValueError(msg)
    if np.any(np.diff(positions) <= 0):
        msg = "rows must be ascending and without repeats: pass np.unique(rows)."
        raise ValueError(msg)
    return positions


def _unscaled_sources(adata: AnnData, layer: str | None, use_raw: bool) -> str:
    """Where unscaled values may be: the layers not read, or ``.raw`` (the genes before scaling) when not read."""
    read = None if use_raw else layer  # with use_raw, adata.raw.X is read: every layer of adata is an option
    options = [f"layer={name!r}" for name in adata.layers if name != read][:3]
    if not use_raw and adata.raw is not None:
        options.append("use_raw=True (adata.raw)")
    if not options:
        return " (the counts of a layer, of adata.raw, or of the file before scaling)"
    return ", e.g. " + " or ".join(options)


def check_expression(
    adata: AnnData,
    *,
    layer: str | None = None,
    columns: np.ndarray | GeneColumns | None = None,
    block_size: int = 2048,
    allow_empty_cells: bool = False,
    rows: np.ndarray | None = None,
    use_raw: bool = False,
    progress: bool = False,
) -> ExpressionReport:
    """Check that expression values can be tokenized and say what they are.

    Raw counts, log1p-normalized values and other nonnegative per-cell scales (TPM) tokenize alike, since
    values are binned by their rank within each cell. Streams over rows, so backed data are fine.

    The tools (:func:`panfoma_sc.tl.embed`, ...) check only the genes the model knows: a cell expressing none of
    them is refused there, a NaN in a gene the model never reads is not. For their verdict, match the genes first
    and pass ``columns`` (see the example).

    Parameters
    ----------
    adata
        The data.
    layer
        Layer holding expression; ``None`` for ``adata.X``.
    columns
        Only these genes count (the genes matched to the vocabulary, :attr:`GeneMatch.read_columns`); default all.
    block_size
        Rows read at a time.
    allow_empty_cells
        Accept cells with no expressed gene (for callers that filter them out later, like
        :func:`panfoma_sc.bench.build`'s QC); by default they are refused.
    rows
        Check only these cells (integer row positions, ascending, without repeats), read from ``adata`` without
        subsetting it; default all.
    use_raw
        Check ``adata.raw.X`` (all of ``adata.raw``'s genes) instead of ``adata.X``.
    progress
        Show a progress bar when the check takes more than two seconds (large or backed data).

    Returns
    -------
    The kind of values found.

    Raises
    ------
    ValueError
        No cells or genes; NaN or infinite values; negative values (scaled / z-scored data); genes scaled to unit
        variance (``sc.pp.scale(zero_center=False)``), also when clipped (``max_value``); cells with no expressed
        gene among ``columns`` (unless ``allow_empty_cells``); ``use_raw`` without ``adata.raw``, or with
        ``layer``; ``rows`` that are not ascending positions of ``adata``'s cells.
    KeyError
        ``layer`` is not a layer of ``adata``.

    Examples
    --------
    >>> import panfoma_sc as pf
    >>> match = pf.pp.match_genes(adata, "panfoma-tiny")  # doctest: +SKIP
    >>> pf.pp.check_expression(adata, columns=match.read_columns).kind  # doctest: +SKIP
    'counts'
    """
    require_integer("block_size", block_size, 1)
    require_flag("use_raw", use_raw)
    if rows is not None:
        rows = _checked_rows(rows, adata.n_obs)
    # where unscaled values may be, in the caller's object (its layers, its .raw)
    unscaled = f"Pass raw counts or log1p-normalized data instead{_unscaled_sources(adata, layer, use_raw)}."
    if use_raw:
        adata, where = raw_values(adata, layer=layer), "adata.raw.X"
    else:
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    n_cells = adata.n_obs if rows is None else len(rows)
    if n_cells == 0:
        msg = "adata has no cells (0 observations). Check the filtering that produced it."
        raise ValueError(msg)
    if adata.n_vars == 0:
        msg = "adata has no genes (0 variables)."
        raise ValueError(msg)
    matrix = expression_matrix(adata, layer)
    # every stored value is checked as stored (a bad value in either copy of a gene kept in two columns is found,
    # and named by its own column); the statistics below see the genes as the model does
    read, merge = columns.as_stored() if isinstance(columns, GeneColumns) else (columns, None)
    all_integer = True
    max_value = 0.0
    empty_cells: list[int] = []
    max_expressed = 0
    sums = sums_of_squares = gene_maxima = 0.0  # per gene, for the scaling tests below
    # a bar only when the check is slow (large or backed data), gone once it is done
    with progress_bar(
        total=n_cells, enabled=progress, desc="checking values", unit="cells", delay=2.0, leave=False
    ) as bar:
        for selected, block in iter_row_blocks(matrix, block_size, columns=read, rows=rows):
            values = block.data
            if values.size and not np.all(np.isfinite(values)):
                found = _where_in_block(adata, block, selected, ~np.isfinite(values), read)
                msg = (
                    f"{where} contains NaN or infinite values ({found})."
                    " Fix or remove those entries first. NaN often comes from concatenating objects with different "
                    "genes (anndata.concat(..., join='outer') fills the genes one object lacks with NaN): pass "
                    "fill_value=0 there, or join='inner'."
                )
                raise ValueError(msg)
            if values.size and values.min() < 0:
                found = _where_in_block(adata, block, selected, values < 0, read)
                msg = (
                    f"{where} has negative values ({found}; smallest {values.min():.4g}): expression must be >= 0. "
                    f"Scaled or z-scored data (e.g. by sc.pp.scale) look like this. {unscaled}"
                )
                raise ValueError(msg)
            if merge is not None:
                block = merge.take(block)
                values = block.data
            if values.size:
                max_value = max(max_value, float(values.max()))
                all_integer = all_integer and bool(np.all(values == np.round(values)))
            sums = sums + np.asarray(block.sum(axis=0), dtype=np.float64).ravel()
            sums_of_squares = sums_of_squares + np.asarray(block.multiply(block).sum(axis=0), dtype=np.float64).ravel()
            gene_maxima = np.maximum(gene_maxima, block.max(axis=0).toarray().ravel())
            row_of_value = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
            nonzero = np.bincount(row_of_value[values > 0], minlength=block.shape[0])
            empty_cells.extend(selected[nonzero == 0].tolist())
            max_expressed = max(max_expressed, int(nonzero.max(initial=0)))
            bar.update(block.shape[0])
    if empty_cells and not allow_empty_cells:
        names = adata.obs_names[empty_cells[:5]].tolist()
        scope = "among the genes known to the model " if columns is not None else ""
        cells = "1 cell has" if len(empty_cells) == 1 else f"{len(empty_cells)} cells have"
        msg = (
            f"{cells} no expressed gene {scope}(e.g. {names}). Remove them first, "
            "e.g. sc.pp.filter_cells(adata, min_genes=1) on the model's genes, or subset adata."
        )
        raise ValueError(msg)
    variance = _gene_variances(sums, sums_of_squares, n_cells)
    if not all_integer and _unit_variance_genes(variance, n_cells):
        msg = (
            f"{where} looks scaled per gene (as by sc.pp.scale(zero_center=False)): most genes have standard "
            f"deviation 1 across cells, which changes the order of genes within a cell that PanFoMa reads. {unscaled}"
        )
        raise ValueError(msg)
    if not all_integer and _clipped_at_one_maximum(gene_maxima, variance):
        msg = (
            f"{where} looks scaled per gene and clipped (as by sc.pp.scale(zero_center=False, max_value=...)): most "
            f"genes reach exactly the same maximum, {max_value:.4g}, which changes the order of genes within a cell "
            f"that PanFoMa reads. {unscaled}"
        )
        raise ValueError(msg)
    if all_integer and max_value == 1:
        kind = "binary"
        logger.warning(
            "%s holds only 0 and 1 (a binary or boolean matrix, e.g. detection calls): the expressed genes of a cell "
            "all tie, so where a cell has more of them than the model reads (n_genes), those it reads are an "
            "arbitrary subset. Pass counts or log1p-normalized values if you have them.",
            where,
        )
    elif all_integer:
        kind = "counts"
    elif max_value <= _LOG_SCALE_MAX:
        kind = "log-normalized"
    else:
        kind = "nonnegative"
    logger.info("%s holds %s (max %.3g).", where, kind, max_value)
    return ExpressionReport(
        kind=kind, n_cells=n_cells, n_genes=adata.n_vars, max_value=max_value, max_expressed=max_expressed
    )
