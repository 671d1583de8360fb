"""Quality control of one study: cell and gene filters with every removal counted."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from numbers import Real

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

logger = logging.getLogger(__name__)

__all__ = ["QCThresholds", "expression_kind", "quality_control"]


@dataclass(frozen=True)
class QCThresholds:
    """Thresholds of :func:`quality_control` (``None`` turns a filter off).

    Attributes
    ----------
    min_genes
        Cells with fewer detected genes are removed (empty droplets, broken cells). Lower it for files that
        hold a pre-selected gene panel of a few hundred genes.
    max_counts_mads
        Doublet-like cells: total counts above ``median + max_counts_mads * MAD`` of ``log1p(total counts)``
        are removed (counts only).
    max_mito_fraction
        Cells whose share of counts on ``MT-`` genes is above this are removed (counts only; skipped when the
        file has no ``MT-`` gene, or fewer than ``mito_min_file_genes`` genes).
    mito_min_file_genes
        Files with fewer genes hold a pre-selected panel, in which the ``MT-`` share of counts is not the
        transcriptome's (e.g. a metabolism panel where ``MT-CO1`` takes a large share); the mitochondrial
        filter is skipped for them.
    min_cells
        Genes detected in fewer cells (after the cell filters) are removed.
    """

    min_genes: int | None = 200  # typical 10x floor; panels need less
    max_counts_mads: float | None = 5.0  # generous: only clear outliers look like doublets
    max_mito_fraction: float | None = 0.2  # 20% is the usual PBMC/tumour ceiling
    mito_min_file_genes: int = 10_000  # whole-transcriptome files have 20-60k genes
    min_cells: int | None = 3  # genes seen in fewer cells carry no signal for any method

    def __post_init__(self) -> None:
        for name in ("min_genes", "max_counts_mads", "min_cells"):
            if getattr(self, name) is not None and not _is_number(getattr(self, name), minimum=0):
                msg = f"QCThresholds({name}={getattr(self, name)!r}): use a number >= 0, or None to turn it off."
                raise ValueError(msg)
        if not _is_number(self.mito_min_file_genes, minimum=0):
            msg = f"QCThresholds(mito_min_file_genes={self.mito_min_file_genes!r}): use a number of genes >= 0."
            raise ValueError(msg)
        fraction = self.max_mito_fraction
        if fraction is not None and not (_is_number(fraction, minimum=0) and fraction <= 1):
            msg = (
                f"QCThresholds(max_mito_fraction={fraction!r}): use a fraction in [0, 1] (e.g. 0.2 for 20%), "
                "or None to turn the filter off."
            )
            raise ValueError(msg)


def _is_number(value: object, *, minimum: float) -> bool:
    """``value`` is a real number (not a bool) at least ``minimum``."""
    return isinstance(value, Real) and not isinstance(value, bool) and value >= minimum


def expression_kind(adata: AnnData) -> tuple[str, str]:
    """Whether ``X`` holds raw counts: ``("counts" | "log" | "linear", how it was decided)``.

    ``uns["source"]["x_is_integer"]`` (the shared data's README convention) decides when present; otherwise
    integer values mean counts, non-integers with a maximum below 30 log-scale values, larger ones linear
    normalized values (TPM, RPKM).
    """
    source = adata.uns.get("source", {}) if isinstance(adata.uns.get("source", {}), dict) else {}
    x = adata.X
    values = x.data if sp.issparse(x) else np.asarray(x).ravel()
    values = values[:2_000_000]
    integer = bool(np.all(np.isclose(values, np.round(values)))) if values.size else True
    flag = str(source.get("x_is_integer", "")).strip().lower()
    how = "uns['source']['x_is_integer']" if flag in {"true", "false"} else "values"
    if flag == "false" or (how == "values" and not integer):
        maximum = float(values.max()) if values.size else 0.0
        return ("log" if maximum < 30 else "linear"), how
    return "counts", how


def _totals(x) -> tuple[np.ndarray, np.ndarray]:
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        return np.asarray(x.sum(1)).ravel(), np.diff(x.indptr)
    x = np.asarray(x)
    return x.sum(1), (x != 0).sum(1)


def quality_control(
    adata: AnnData, thresholds: QCThresholds = QCThresholds(), *, counts: bool = True
) -> tuple[AnnData, dict[str, object]]:
    """Filter cells and genes of one study and count every removal.

    Cell filters run in a fixed order (min genes, doublet-like counts, mitochondrial share), each counting
    the cells it removes among those still there, so ``n_cells_in = n_cells_out + sum(removed)``. Then
    genes seen in fewer than ``min_cells`` of the kept cells are removed. Count-based filters are skipped,
    with the reason recorded, when ``X`` is not raw counts.

    Parameters
    ----------
    adata
        Cells x genes with harmonized (upper-case) symbols; not modified.
    thresholds
        The filters' thresholds.
    counts
        ``X`` holds raw counts.

    Returns
    -------
    The filtered copy and the report (thresholds, cells and genes in and out, removals per filter, filters
    skipped and why).
    """
    report: dict[str, object] = {"thresholds": asdict(thresholds), "n_cells_in": int(adata.n_obs)}
    report["n_genes_in"] = int(adata.n_vars)
    removed: dict[str, int] = {}
    skipped: dict[str, str] = {}
    keep = np.ones(adata.n_obs, dtype=bool)
    total, detected = _totals(adata.X)

    if thresholds.min_genes is not None:
        fail = keep & (detected < thresholds.min_genes)
        removed["min_genes"] = int(fail.sum())
        keep &= ~fail
    if thresholds.max_counts_mads is not None:
        if not counts:
            skipped["max_counts_mads"] = "X is not raw counts"
        elif keep.any():
            log_total = np.log1p(total[keep])
            median = float(np.median(log_total))
            mad = float(np.median(np.abs(log_total - median)))
            ceiling = median + thresholds.max_counts_mads * mad
            fail = keep & (np.log1p(total) > ceiling)
            report["max_counts"] = float(np.expm1(ceiling))
            removed["max_counts_mads"] = int(fail.sum())
            keep &= ~fail
    if thresholds.max_mito_fraction is not None:
        mito = np.asarray(adata.var_names.str.upper().str.startswith("MT-"))
        if not counts:
            skipped["max_mito_fraction"] = "X is not raw counts"
        elif not mito.any():
            skipped["max_mito_fraction"] = "no MT- genes in the file"
        elif adata.n_vars < thresholds.mito_min_file_genes:
            skipped["max_mito_fraction"] = f"gene panel of {adata.n_vars} genes: MT- share not comparable"
        else:
            mito_total = np.asarray(adata.X[:, mito].sum(1)).ravel()
            fraction = np.divide(mito_total, total, out=np.zeros_like(total, dtype=float), where=total > 0)
            fail = keep & (fraction > thresholds.max_mito_fraction)
            removed["max_mito_fraction"] = int(fail.sum())
            keep &= ~fail
    out = adata[keep].copy()
    if thresholds.min_cells is not None:
        _, cells_per_gene = _totals(out.X.T.tocsr() if sp.issparse(out.X) else np.asarray(out.X).T)
        genes = cells_per_gene >= thresholds.min_cells
        report["genes_removed_min_cells"] = int((~genes).sum())
        out = out[:, genes].copy()
    report["cells_removed"] = removed
    report["filters_skipped"] = skipped
    report["n_cells_out"] = int(out.n_obs)
    report["n_genes_out"] = int(out.n_vars)
    logger.info("QC kept %d of %d cells and %d of %d genes.", out.n_obs, adata.n_obs, out.n_vars, adata.n_vars)
    return out, report
