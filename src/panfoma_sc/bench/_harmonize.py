"""Gene symbol harmonization across studies: case, Ensembl IDs (version suffixes), known aliases."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ..data.vocab import is_ensembl_id, normalize_gene_name

logger = logging.getLogger(__name__)

__all__ = ["default_gene_table", "harmonize_genes", "read_gene_table"]

#: Where the GENCODE table lives inside the dataset folder (``PANFOMA_DATA_DIR``).
GENE_TABLE_NAME = "genes/GENCODEv44_gene_id_to_name.csv"


def default_gene_table() -> Path | None:
    """The GENCODE Ensembl-to-symbol table of the dataset folder, or ``None`` when there is none."""
    from ..datasets import data_dir

    try:
        path = data_dir() / GENE_TABLE_NAME
    except FileNotFoundError:
        return None
    return path if path.is_file() else None


def read_gene_table(path: str | Path) -> dict[str, str]:
    """Read a headerless ``ensembl_id,symbol`` CSV into ``{ENSEMBL_ID (no version, upper case): symbol}``.

    Parameters
    ----------
    path
        The table, e.g. GENCODE v44's ``GENCODEv44_gene_id_to_name.csv``.

    Returns
    -------
    The mapping (the first symbol wins where an ID occurs twice).

    Raises
    ------
    ValueError
        The first column holds no Ensembl gene ID (not such a table).
    """
    table = pd.read_csv(path, header=None, names=["ensembl_id", "symbol"], dtype=str).dropna()
    if not table["ensembl_id"].str.strip().map(is_ensembl_id).any():
        first = table.iloc[0].tolist() if len(table) else []
        msg = (
            f"gene_table {Path(path).name!r} holds no Ensembl gene ID in its first column (first row: {first}): "
            "pass a headerless CSV of ensembl_id,symbol rows, e.g. ENSG00000141510,TP53."
        )
        raise ValueError(msg)
    keys = table["ensembl_id"].map(normalize_gene_name)
    table = table.assign(key=keys).drop_duplicates("key")
    return dict(zip(table["key"], table["symbol"].str.strip(), strict=True))


def _sum_duplicate_columns(adata: AnnData, names: pd.Index) -> AnnData:
    """Merge columns with the same new name by summing them (a gene split across IDs or aliases)."""
    codes, uniques = pd.factorize(names)
    n_new = len(uniques)
    if n_new == adata.n_vars:
        out = adata.copy()
        out.var_names = pd.Index(uniques).astype(str)
        return out
    merge = sp.csr_matrix((np.ones(adata.n_vars, dtype=np.float32), (np.arange(adata.n_vars), codes)))
    x = adata.X @ merge if sp.issparse(adata.X) else np.asarray(adata.X) @ merge.toarray()
    first = pd.Series(np.arange(adata.n_vars)).groupby(codes).first().to_numpy()
    var = adata.var.iloc[first].copy()
    var.index = pd.Index(uniques).astype(str)
    return AnnData(sp.csr_matrix(x) if sp.issparse(adata.X) else x, obs=adata.obs.copy(), var=var, uns=adata.uns)


def harmonize_genes(
    adata: AnnData,
    *,
    gene_table: Mapping[str, str] | None = None,
    aliases: Mapping[str, str] | None = None,
    gene_symbols: str | None = None,
) -> tuple[AnnData, dict[str, object]]:
    """Rename genes to canonical upper-case symbols so that studies share one gene space.

    Per gene, in this order: take ``var_names`` (or ``var[gene_symbols]``), strip it; an Ensembl ID (any
    case, version suffix such as ``.12`` dropped) becomes its symbol from ``gene_table``; a name listed in
    ``aliases`` becomes the official symbol; everything is upper-cased (human HGNC style). Columns that end up
    with the same symbol are summed into one. Ensembl IDs missing from the table keep their (versionless) ID
    and are counted, never dropped silently.

    Parameters
    ----------
    adata
        Cells x genes (not modified).
    gene_table
        ``{ENSEMBL_ID: symbol}`` (see :func:`read_gene_table`); ``None`` leaves Ensembl IDs as they are.
    aliases
        ``{alias: official symbol}``, e.g. previous HGNC symbols; matched ignoring case.
    gene_symbols
        ``var`` column with the names to use instead of ``var_names``.

    Returns
    -------
    A new AnnData with harmonized ``var_names`` (the original names in ``var["original_name"]``) and a
    JSON-able report: genes in and out, Ensembl IDs mapped and unmapped, version suffixes stripped, names
    upper-cased, aliases renamed, duplicate columns merged.
    """
    if gene_symbols is not None:
        if gene_symbols not in adata.var.columns:
            msg = f"gene_symbols={gene_symbols!r} is not a column of adata.var (columns: {list(adata.var.columns)})."
            raise KeyError(msg)
        original = pd.Index(adata.var[gene_symbols].astype(str))
    else:
        original = pd.Index(adata.var_names).astype(str)
    alias_map = {normalize_gene_name(k): str(v).strip().upper() for k, v in (aliases or {}).items()}
    counts = dict.fromkeys(("ensembl_mapped", "ensembl_unmapped", "version_stripped", "upper_cased", "alias"), 0)
    new_names = []
    for name in original:
        stripped = name.strip()
        key = normalize_gene_name(stripped)
        if is_ensembl_id(stripped):
            if key != stripped.upper():
                counts["version_stripped"] += 1
            symbol = (gene_table or {}).get(key)
            if symbol is None:
                counts["ensembl_unmapped"] += 1
                new_names.append(key)
                continue
            counts["ensembl_mapped"] += 1
            key = symbol.upper()
        elif stripped != stripped.upper():
            counts["upper_cased"] += 1
        if key in alias_map:
            counts["alias"] += 1
            key = alias_map[key]
        new_names.append(key)
    names = pd.Index(new_names)
    work = adata.copy()
    work.var["original_name"] = original.to_numpy()
    out = _sum_duplicate_columns(work, names)
    report: dict[str, object] = {
        "n_genes_in": int(adata.n_vars),
        "n_genes_out": int(out.n_vars),
        "n_ensembl_mapped": counts["ensembl_mapped"],
        "n_ensembl_unmapped": counts["ensembl_unmapped"],
        "n_version_suffix_stripped": counts["version_stripped"],
        "n_upper_cased": counts["upper_cased"],
        "n_alias_renamed": counts["alias"],
        "n_duplicate_columns_merged": int(adata.n_vars - out.n_vars),
    }
    if counts["ensembl_unmapped"] and gene_table is None:
        logger.warning(
            "%d genes are Ensembl IDs and no gene table was given: they stay IDs, so they match no gene symbol of "
            "other files. Pass a headerless ensembl_id,symbol CSV (GENCODE's) as gene_table (in a benchmark config: "
            "gene_table = 'path/relative/to/data_dir.csv'), or place it in the data folder as %s.",
            counts["ensembl_unmapped"],
            GENE_TABLE_NAME,
        )
    elif counts["ensembl_unmapped"]:
        logger.warning(
            "%d Ensembl IDs are not in the gene table (kept as IDs: retired IDs, or another species).",
            counts["ensembl_unmapped"],
        )
    return out, report
