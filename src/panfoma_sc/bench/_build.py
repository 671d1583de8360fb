"""``pf.bench.build``: h5ad files -> one harmonized, quality-controlled, donor-split benchmark dataset."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from numbers import Integral, Real
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData

from ._harmonize import default_gene_table, harmonize_genes, read_gene_table
from ._qc import QCThresholds, expression_kind, quality_control
from ._splits import BATCH_COLUMNS, DONOR_COLUMNS, MISSING_VALUES, group_column, split_cells, split_groups

logger = logging.getLogger(__name__)

__all__ = ["build", "read_manifest", "write_manifest"]

MANIFEST_KEY = "bench_manifest"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Refuse split fractions that are not 3 shares in [0, 1] summing to 1; returns them as a tuple."""
    values = list(fractions) if isinstance(fractions, Sequence | np.ndarray) and not isinstance(fractions, str) else []
    numeric = all(isinstance(v, Real) and not isinstance(v, bool) for v in values)
    if len(values) != 3 or not numeric or not all(0 <= v <= 1 for v in values) or not np.isclose(sum(values), 1):
        msg = (
            f"fractions={fractions!r}: give 3 shares of cells (train, val, test), each in [0, 1] and summing to 1, "
            "e.g. (0.6, 0.2, 0.2)."
        )
        raise ValueError(msg)
    return (float(values[0]), float(values[1]), float(values[2]))


def check_max_cells(max_cells: object) -> None:
    """Refuse a ``max_cells`` that is neither ``None`` nor an integer >= 1."""
    if max_cells is not None and (not isinstance(max_cells, Integral) or isinstance(max_cells, bool) or max_cells < 1):
        msg = f"max_cells={max_cells!r}: use an integer >= 1 (cells kept per file), or None to keep every cell."
        raise ValueError(msg)


def _input_files(files: str | Path | Sequence[str | Path]) -> list[Path]:
    """The input files as paths (one path given alone is one file); refuse repeats and ``.h5mu`` files."""
    paths = [Path(files)] if isinstance(files, str | Path) else [Path(f) for f in files]
    if not paths:
        msg = "build() needs at least one .h5ad file."
        raise ValueError(msg)
    resolved = [p.resolve() for p in paths]
    repeated = sorted({p.name for p, r in zip(paths, resolved, strict=True) if resolved.count(r) > 1})
    if repeated:
        msg = f"files lists {repeated} more than once: list each file once."
        raise ValueError(msg)
    paired = [p.name for p in paths if p.suffix == ".h5mu"]
    if paired:
        msg = (
            f"{paired} is a paired multi-omics file: build() reads .h5ad files. Pass its RNA modality saved as "
            ".h5ad (mdata.mod['rna'].write_h5ad(...)), or use pf.bench.build_paired for the paired data."
        )
        raise ValueError(msg)
    return paths


def _keep_cells(adata: AnnData, keep: Mapping[str, Sequence[str]] | None) -> tuple[AnnData, dict[str, int]]:
    """Keep cells whose ``obs[column]`` is one of the listed values; count the rest per column."""
    removed = {}
    for column, values in (keep or {}).items():
        if column not in adata.obs.columns:
            continue
        mask = adata.obs[column].astype(str).isin([str(v) for v in values]).to_numpy()
        removed[column] = int((~mask).sum())
        adata = adata[mask].copy()
    return adata, removed


def _check_inputs(
    files: Sequence[Path],
    label_key: str | None,
    donor_key: str | None,
    batch_key: str | None,
    keep: Mapping[str, Sequence[str]] | None,
    test_groups: Sequence[str] | None = None,
) -> None:
    """Refuse missing files, obs columns and test groups before any file is processed (reads only each obs).

    ``label_key`` must be a column of every file; ``donor_key``, ``batch_key`` and the ``keep`` columns of at
    least one (files without them fall back to other columns), so that a misspelt name is an error, not a
    silent fallback. Each of ``test_groups`` must be ``"<file stem>:<value>"`` with a value of a donor or batch
    column of that file, or a file stem alone (a file without such a column is one group).
    """
    missing = [str(file) for file in files if not file.is_file()]
    if missing:
        msg = f"Benchmark inputs {missing} do not exist: check the file names and folder."
        raise FileNotFoundError(msg)
    columns: dict[str, list[str]] = {}
    groups: dict[str, set[str]] = {}
    for file in files:
        backed = ad.read_h5ad(file, backed="r")
        columns[file.name] = list(backed.obs.columns)
        candidates = [c for c in (donor_key, batch_key, *DONOR_COLUMNS, *BATCH_COLUMNS) if c in backed.obs.columns]
        # a file without donor or batch column is one group, named by its stem
        groups[file.stem] = {file.stem} | {
            f"{file.stem}:{v}" for c in candidates for v in backed.obs[c].astype(str).unique()
        }
        backed.file.close()
    unknown = sorted(set(map(str, test_groups or ())) - set().union(*groups.values()))
    if unknown:
        shown = sorted(set().union(*groups.values()))
        shown = shown if len(shown) <= 20 else [*shown[:20], "..."]
        msg = (
            f"test_groups {unknown} are not groups of the inputs: name them '<file stem>:<donor or batch value>', "
            f"one of {shown}."
        )
        raise ValueError(msg)
    if label_key is not None:
        for name, present in columns.items():
            if label_key not in present:
                msg = f"label_key={label_key!r} is not a column of {name}'s obs: {present}."
                raise KeyError(msg)
    optional = [("donor_key", donor_key), ("batch_key", batch_key), *(("keep", column) for column in keep or {})]
    for what, column in optional:
        if column is not None and not any(column in present for present in columns.values()):
            seen = sorted({c for present in columns.values() for c in present})
            msg = f"{what} names {column!r}, which is not an obs column of any input file (columns: {seen})."
            raise KeyError(msg)


def _check_survivors(adata: AnnData, name: str, report: Mapping[str, object]) -> None:
    """Refuse a file that QC emptied, naming the filter that removed its cells or genes."""
    thresholds = report["thresholds"]
    if adata.n_obs == 0:
        removed = {k: v for k, v in report["cells_removed"].items() if v}
        shown = {k: thresholds[k] for k in removed}
        msg = (
            f"{name}: QC removed every cell ({report['n_cells_in']} cells; removed by {removed}, thresholds "
            f"{shown}). Relax these thresholds for this dataset, e.g. qc = {{ min_genes = 20 }}."
        )
        raise ValueError(msg)
    if adata.n_vars == 0:
        msg = (
            f"{name}: QC removed every gene (min_cells={thresholds['min_cells']}: no gene is detected in that "
            f"many of the {adata.n_obs} cells kept). Lower min_cells or keep more cells."
        )
        raise ValueError(msg)


def _file_groups(obs: pd.DataFrame, name: str, donor_key: str | None, batch_key: str | None) -> tuple[pd.Series, str]:
    """Split group of each cell of one file: its donor, else its batch/sample, else the file itself."""
    for min_groups in (2, 1):
        column, unit = group_column(obs, donor_key=donor_key, batch_key=batch_key, min_groups=min_groups)
        if column is not None:
            return name + ":" + obs[column].astype(str), f"{unit} column {column!r}"
    return pd.Series(name, index=obs.index), "file (no donor or batch column)"


def build(
    files: str | Path | Sequence[str | Path],
    *,
    label_key: str | None = None,
    donor_key: str | None = None,
    batch_key: str | None = None,
    keep: Mapping[str, Sequence[str]] | None = None,
    gene_table: str | Path | None = "auto",
    aliases: Mapping[str, str] | None = None,
    qc: QCThresholds | None = None,
    join: str = "inner",
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    test_groups: Sequence[str] | None = None,
    max_cells: int | None = None,
    seed: int = 0,
    out: str | Path | None = None,
) -> AnnData:
    """Turn h5ad files (one per study) into one benchmark dataset with donor-level splits and a manifest.

    Per file: cells are filtered by ``keep``; genes are harmonized (:func:`harmonize_genes`: upper-case
    symbols, Ensembl IDs to symbols via the GENCODE table, version suffixes, ``aliases``, duplicates summed);
    quality control runs (:func:`quality_control`; the count-based filters only when ``X`` holds raw counts,
    decided by :func:`expression_kind`; non-count files are flagged); cells without a label are dropped; then
    at most ``max_cells`` cells are drawn at random. The files are concatenated on their common genes
    (``join="inner"``) or all genes, 0-filled (``"outer"``).

    Splits: each cell's group is ``file:donor`` (a donor column such as ``patient``), else ``file:batch``
    (``sample``, ``batch``, ``study``...), else the file; the groups are assigned whole to train/val/test
    (:func:`split_groups`). With a single group overall the split is by cells (stratified by label) and the
    manifest flags it.

    Parameters
    ----------
    files
        ``.h5ad`` files, each listed once (a single path is one file). For a paired ``.h5mu`` file use
        :func:`build_paired`.
    label_key
        obs column with the labels of the task (cells without one are dropped); ``None`` keeps every cell.
    donor_key, batch_key
        obs columns to try first for the split groups (see :data:`DONOR_COLUMNS`, :data:`BATCH_COLUMNS`).
    keep
        ``{obs column: values}``: keep only these cells, e.g. ``{"demuxlet_cls": ["SNG"]}``.
    gene_table
        Headerless ``ensembl_id,symbol`` CSV; ``"auto"`` uses the GENCODE table of the dataset folder when
        there is one; ``None`` leaves Ensembl IDs unmapped.
    aliases
        ``{alias: official symbol}`` applied to every file.
    qc
        QC thresholds (default :class:`QCThresholds`).
    join
        ``"inner"`` (genes present in every file) or ``"outer"`` (all genes; absent ones are 0).
    fractions
        Target shares of cells in train, val and test: 3 values in [0, 1] summing to 1.
    test_groups
        Groups (``"file:value"``, the file's stem and a donor or batch value) to put in test instead of drawing
        them; an error when the dataset ends up with a single group (split by cells).
    max_cells
        Cells kept per file at most (random, after QC): an integer >= 1, or ``None`` for all.
    seed
        Seed of the subsample and the split.
    out
        Folder to write ``benchmark.h5ad`` and ``manifest.json`` into.

    Returns
    -------
    The benchmark dataset. ``obs`` gains ``dataset`` (file stem), ``split_group`` and ``split``
    (``train``/``val``/``test``); ``uns["bench_manifest"]`` holds the manifest as JSON (inputs with sha256,
    parameters, seed, harmonization and QC reports, split unit per file, counts, flags).

    Raises
    ------
    FileNotFoundError
        An input file does not exist.
    KeyError
        ``label_key`` is missing from a file's obs, or ``donor_key``, ``batch_key`` or a ``keep`` column from
        every file's obs. Checked before any file is processed.
    ValueError
        Invalid parameters (``fractions``, ``max_cells``, a repeated or ``.h5mu`` file, ``out`` an existing
        file, ``test_groups`` that are not groups of the files), checked before any file is processed; or
        ``keep``, QC or the labels leave a file without cells or genes (the message names the file and step).

    Examples
    --------
    >>> bench = pf.bench.build(["study1.h5ad", "study2.h5ad"], label_key="cell_type")  # doctest: +SKIP
    >>> bench.obs["split"].value_counts()  # doctest: +SKIP
    """
    files = _input_files(files)
    if join not in {"inner", "outer"}:
        msg = f"join must be 'inner' or 'outer', got {join!r}."
        raise ValueError(msg)
    fractions = check_fractions(fractions)
    check_max_cells(max_cells)
    if isinstance(test_groups, str):
        msg = f"test_groups={test_groups!r} is a single string: pass a list, e.g. [{test_groups!r}]."
        raise ValueError(msg)
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        msg = f"out={str(out)!r} is an existing file: pass a folder to write benchmark.h5ad and manifest.json into."
        raise ValueError(msg)
    qc = qc or QCThresholds()
    if isinstance(gene_table, str) and gene_table == "auto":
        gene_table = default_gene_table()
    table = read_gene_table(gene_table) if gene_table is not None else None
    parameters = {
        "files": [Path(f).name for f in files],
        "label_key": label_key,
        "donor_key": donor_key,
        "batch_key": batch_key,
        "keep": {k: list(map(str, v)) for k, v in (keep or {}).items()},
        "gene_table": None if gene_table is None else Path(gene_table).name,
        "gene_table_sha256": None if gene_table is None else _sha256(Path(gene_table)),
        "aliases": dict(aliases or {}),
        "qc": asdict(qc),
        "join": join,
        "fractions": list(fractions),
        "test_groups": None if test_groups is None else list(test_groups),
        "max_cells": max_cells,
    }
    _check_inputs(files, label_key, donor_key, batch_key, keep, test_groups)
    rng = np.random.default_rng(seed)
    parts, inputs, flags = {}, [], []
    for file in files:
        name = file.stem
        adata = ad.read_h5ad(file)
        entry: dict[str, object] = {
            "name": name,
            "path": file.name,
            "sha256": _sha256(file),
            "n_cells": adata.n_obs,
            "n_genes": adata.n_vars,
        }
        adata, entry["cells_removed_by_keep"] = _keep_cells(adata, keep)
        if adata.n_obs == 0:
            msg = (
                f"{file.name}: the keep filter {dict(keep or {})} removed every cell. Check the values against "
                f"the file's obs, or drop the filter for this file."
            )
            raise ValueError(msg)
        adata, entry["harmonization"] = harmonize_genes(adata, gene_table=table, aliases=aliases)
        kind, how = expression_kind(adata)
        entry["x_kind"], entry["x_kind_source"] = kind, how
        if kind != "counts":
            flags.append(f"{name}: X holds {kind} values, not raw counts; count-based QC skipped")
        adata, entry["qc"] = quality_control(adata, qc, counts=kind == "counts")
        _check_survivors(adata, file.name, entry["qc"])
        if label_key is not None:
            labels = adata.obs[label_key].astype(str).str.strip()
            labelled = (adata.obs[label_key].notna() & ~labels.str.lower().isin(MISSING_VALUES)).to_numpy()
            entry["cells_without_label"] = int((~labelled).sum())
            adata = adata[labelled].copy()
            if adata.n_obs == 0:
                msg = f"{file.name}: no cell left after QC has a label in {label_key!r}; check label_key."
                raise ValueError(msg)
        if max_cells is not None and adata.n_obs > max_cells:
            adata = adata[np.sort(rng.choice(adata.n_obs, max_cells, replace=False))].copy()
            entry["subsampled_to"] = max_cells
        groups, unit = _file_groups(adata.obs, name, donor_key, batch_key)
        entry["split_unit"] = unit
        if unit.startswith("file"):
            flags.append(f"{name}: no donor or batch column; the whole file (study) is one split group")
        adata.obs["split_group"] = groups.to_numpy()
        adata.obs["x_kind"] = kind
        adata.uns = {}
        adata.var = adata.var[[]]
        entry["n_cells_out"], entry["n_genes_out"] = adata.n_obs, adata.n_vars
        parts[name] = adata
        inputs.append(entry)
    combined = ad.concat(parts, join=join, label="dataset", index_unique="-" if len(parts) > 1 else None, fill_value=0)
    if combined.n_vars == 0:
        msg = "The files share no gene after harmonization: use join='outer' or check the gene names."
        raise ValueError(msg)
    combined.obs["dataset"] = combined.obs["dataset"].astype("category")
    n_groups = combined.obs["split_group"].nunique()
    labels = combined.obs[label_key].astype(str).to_numpy() if label_key is not None else None
    if n_groups >= 2:
        combined.obs["split"] = split_groups(
            combined.obs["split_group"].to_numpy(), fractions=fractions, test_groups=test_groups, seed=seed
        )
        split_unit = "groups"
    elif test_groups:
        msg = (
            f"test_groups {list(test_groups)} cannot be held out: after QC and subsampling the dataset has a single "
            f"donor/batch group, {combined.obs['split_group'].iloc[0]!r}, so it is split by cells. Drop test_groups."
        )
        raise ValueError(msg)
    else:
        combined.obs["split"] = split_cells(combined.n_obs, labels=labels, fractions=fractions, seed=seed)
        split_unit = "cells"
        flags.append("a single donor/batch group overall: train/val/test are split by CELLS (same donor in all)")
    combined.obs["split"] = pd.Categorical(combined.obs["split"], categories=["train", "val", "test"])
    manifest = _manifest(combined, inputs, flags, split_unit, parameters, seed)
    combined.uns[MANIFEST_KEY] = json.dumps(manifest)
    for flag in flags:
        logger.warning(flag)
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        combined.write_h5ad(folder / "benchmark.h5ad", compression="gzip")
        write_manifest(manifest, folder / "manifest.json")
    return combined


def _manifest(
    combined: AnnData, inputs: list[dict], flags: list[str], split_unit: str, parameters: dict, seed: int
) -> dict[str, object]:
    from .. import __version__

    splits = {}
    for split in ("train", "val", "test"):
        cells = combined.obs["split"] == split
        splits[split] = {
            "n_cells": int(cells.sum()),
            "groups": sorted(combined.obs.loc[cells, "split_group"].astype(str).unique().tolist()),
        }
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "panfoma_sc_version": __version__,
        "seed": seed,
        "parameters": parameters,
        "inputs": inputs,
        "n_cells": int(combined.n_obs),
        "n_genes": int(combined.n_vars),
        "split_unit": split_unit,
        "splits": splits,
        "flags": flags,
    }


def write_manifest(manifest: Mapping[str, object], path: str | Path) -> Path:
    """Write a benchmark manifest as indented JSON.

    Parameters
    ----------
    manifest
        The manifest (``json.loads(bench.uns["bench_manifest"])``).
    path
        Output ``.json`` file.

    Returns
    -------
    The path written.
    """
    path = Path(path)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(source: str | Path | AnnData) -> dict[str, object]:
    """Read a benchmark manifest from a ``manifest.json`` file or a built dataset's ``uns``.

    Parameters
    ----------
    source
        The JSON file, or the AnnData returned by :func:`build` (the MuData of :func:`build_paired`).

    Returns
    -------
    The manifest.
    """
    if not isinstance(source, str | Path):
        if MANIFEST_KEY not in source.uns:
            msg = f"adata.uns has no {MANIFEST_KEY!r}: build the dataset with pf.bench.build first."
            raise KeyError(msg)
        return json.loads(source.uns[MANIFEST_KEY])
    return json.loads(Path(source).read_text())
