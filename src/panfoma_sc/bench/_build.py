"""``pf.bench.build``: h5ad files -> one harmonized, quality-controlled, donor-split benchmark dataset."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from numbers import Integral, Real
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData

from .._arguments import is_integer
from .._paths import check_h5ad_input
from ..pp import check_expression
from ._harmonize import default_gene_table, harmonize_genes, read_gene_table
from ._qc import QCThresholds, expression_kind, quality_control
from ._splits import MISSING_VALUES, group_column, known_values, split_cells, split_groups

logger = logging.getLogger(__name__)

__all__ = ["build", "read_manifest", "write_manifest"]

MANIFEST_KEY = "bench_manifest"


def _sha256(path: Path) -> str:
    """The file's SHA-256, computed once per file version (the inputs are checked, then recorded)."""
    stat = path.stat()
    return _sha256_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
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
    if isinstance(files, str | os.PathLike):
        items: list | None = [files]
    elif isinstance(files, Iterable) and not isinstance(files, Mapping | bytes):
        items = list(files)
    else:
        items = None
    if items is None or not all(isinstance(f, str | os.PathLike) for f in items):
        msg = f"files={files!r}: pass an .h5ad file's path or a list of paths, e.g. ['study1.h5ad', 'study2.h5ad']."
        raise ValueError(msg)
    paths = [Path(f) for f in items]
    if not paths:
        msg = "build() needs at least one .h5ad file."
        raise ValueError(msg)
    resolved = [p.resolve() for p in paths]
    repeated = sorted({p.name for p, r in zip(paths, resolved, strict=True) if resolved.count(r) > 1})
    if repeated:
        msg = f"files lists {repeated} more than once: list each file once."
        raise ValueError(msg)
    stems = [p.stem for p in paths]
    shared = sorted({str(p) for p in paths if stems.count(p.stem) > 1})
    if shared:
        msg = (
            f"files {shared} have the same name: a file's name (without .h5ad) names its dataset and split groups. "
            "Rename or copy one of them under another name."
        )
        raise ValueError(msg)
    paired = [p.name for p in paths if p.suffix == ".h5mu"]
    if paired:
        msg = (
            f"{paired} is a paired multi-omics file: build() reads .h5ad files. Pass its RNA modality saved as "
            ".h5ad (mdata.mod['rna'].write_h5ad(...)), or use pf.bench.build_paired for the paired data."
        )
        raise ValueError(msg)
    return paths


def _check_arguments(
    label_key: object,
    donor_key: object,
    batch_key: object,
    keep: object,
    layer: object,
    aliases: object,
    qc: object,
    seed: object,
    out: object,
) -> None:
    """Refuse arguments of the wrong type before any file is read, naming the argument and an example."""
    examples = {"label_key": "cell_type", "donor_key": "donor", "batch_key": "batch"}
    for name, value in (("label_key", label_key), ("donor_key", donor_key), ("batch_key", batch_key)):
        if value is not None and (not isinstance(value, str) or not value):
            msg = f"{name}={value!r}: name one obs column as a string, e.g. {name}={examples[name]!r}, or pass None."
            raise ValueError(msg)
    if layer is not None and (not isinstance(layer, str) or not layer):
        msg = f"layer={layer!r}: name one layer as a string, e.g. layer='counts', or pass None to read X."
        raise ValueError(msg)
    listed = (list, tuple, set, frozenset, np.ndarray, pd.Index, pd.Series)
    if keep is not None and (
        not isinstance(keep, Mapping) or not all(isinstance(v, listed) and len(v) for v in keep.values())
    ):
        msg = (
            f"keep={keep!r}: give {{obs column: [values to keep]}} with a non-empty list per column, e.g. "
            "keep={'demuxlet_cls': ['SNG']}."
        )
        raise ValueError(msg)
    if aliases is not None and not isinstance(aliases, Mapping):
        msg = f"aliases={aliases!r}: give {{alias: official symbol}}, e.g. aliases={{'CD8': 'CD8A'}}."
        raise ValueError(msg)
    if qc is not None and not isinstance(qc, QCThresholds):
        example = ", ".join(f"{k}={v!r}" for k, v in qc.items()) if isinstance(qc, Mapping) else "min_genes=50"
        msg = f"qc={qc!r}: pass pf.bench.QCThresholds({example}), or None for the default thresholds."
        raise ValueError(msg)
    if not is_integer(seed) or seed < 0:
        msg = f"seed={seed!r}: use an integer >= 0."
        raise ValueError(msg)
    if out is not None and not isinstance(out, str | os.PathLike):
        msg = f"out={out!r}: pass the folder to write benchmark.h5ad and manifest.json into (a str or Path), or None."
        raise ValueError(msg)
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        msg = f"out={str(out)!r} is an existing file: pass a folder to write benchmark.h5ad and manifest.json into."
        raise ValueError(msg)


def _gene_table_path(gene_table: object) -> Path | None:
    """The gene table to read: ``"auto"`` is the dataset folder's GENCODE table (or none); refuse a missing file."""
    if isinstance(gene_table, str) and gene_table == "auto":
        return default_gene_table()
    if gene_table is None:
        return None
    if not isinstance(gene_table, str | os.PathLike):
        msg = (
            f"gene_table={gene_table!r}: pass the path of a headerless ensembl_id,symbol CSV, 'auto' (the dataset "
            "folder's GENCODE table) or None."
        )
        raise ValueError(msg)
    if not Path(gene_table).is_file():
        msg = (
            f"gene_table {str(gene_table)!r} does not exist: pass a headerless ensembl_id,symbol CSV, 'auto' (the "
            "dataset folder's GENCODE table) or None to leave Ensembl IDs as they are."
        )
        raise FileNotFoundError(msg)
    return Path(gene_table)


def _keep_mask(obs: pd.DataFrame, keep: Mapping[str, Sequence[str]] | None) -> tuple[np.ndarray, dict[str, int]]:
    """Cells whose ``obs[column]`` is one of the listed values (a column the file lacks keeps all); removals."""
    mask = np.ones(len(obs), dtype=bool)
    removed = {}
    for column, values in (keep or {}).items():
        if column not in obs.columns:
            continue
        kept = obs[column].astype(str).isin([str(v) for v in values]).to_numpy()
        removed[column] = int((mask & ~kept).sum())
        mask &= kept
    return mask, removed


def _keep_cells(adata: AnnData, keep: Mapping[str, Sequence[str]] | None) -> tuple[AnnData, dict[str, int]]:
    """Keep cells whose ``obs[column]`` is one of the listed values; count the rest per column."""
    mask, removed = _keep_mask(adata.obs, keep)
    return (adata if mask.all() else adata[mask].copy()), removed


def _labelled(obs: pd.DataFrame, label_key: str) -> np.ndarray:
    """Cells with a label in ``obs[label_key]``: not NaN, empty or a word for missing (``unknown``, ``n/a``...)."""
    labels = obs[label_key].astype(str).str.strip()
    return (obs[label_key].notna() & ~labels.str.lower().isin(MISSING_VALUES)).to_numpy()


def _split_column(obs: pd.DataFrame, donor_key: str | None, batch_key: str | None) -> tuple[str | None, str]:
    """The column whose values are one file's split groups (``None``: the file is one group), and its description."""
    for min_groups in (2, 1):
        column, unit = group_column(obs, donor_key=donor_key, batch_key=batch_key, min_groups=min_groups)
        if column is not None:
            return column, f"{unit} column {column!r}"
    return None, "file (no donor or batch column)"


def _file_groups(obs: pd.DataFrame, name: str, column: str | None) -> pd.Series:
    """Split group of each cell of one file: ``"<name>:<value of column>"``, or the file's name for every cell."""
    if column is None:
        return pd.Series(name, index=obs.index)
    return name + ":" + obs[column].astype(str)


def _check_inputs(
    files: Sequence[Path],
    label_key: str | None,
    donor_key: str | None,
    batch_key: str | None,
    keep: Mapping[str, Sequence[str]] | None,
    test_groups: Sequence[str] | None = None,
    layer: str | None = None,
    *,
    batch_required: bool = False,
) -> dict[str, tuple[str | None, str, set[str]]]:
    """Refuse missing or unreadable files, obs columns, cells and test groups before any file is processed.

    Reads only each file's obs. ``label_key`` must be a column of every file; ``donor_key``, ``batch_key`` and
    the ``keep`` columns of at least one (files without them fall back to other columns), so that a misspelt
    name is an error, not a silent fallback. Every file must keep cells with a label after ``keep``. Each of
    ``test_groups`` must be a split group of its file as the obs say before QC: ``"<file stem>:<value>"`` of the
    donor or batch column the file is split by, or the file stem for a file without one. ``layer``, when given,
    must be a layer of every file. A named ``donor_key`` must give every labelled, kept cell of a file that has
    it a donor (else those cells could share a donor with another split, and the file would silently be split
    by another column); a named ``batch_key`` likewise where it splits the file. ``batch_required`` (the
    integration task): ``batch_key`` is a column of every file, known for every cell, with two values or more.

    Returns
    -------
    Per file stem: the planned split column (``None``: the whole file is one group), its description and the
    file's split groups.
    """
    missing = [str(file) for file in files if not file.is_file()]
    if missing:
        msg = f"Benchmark inputs {missing} do not exist: check the file names and folder."
        raise FileNotFoundError(msg)
    by_content: dict[str, list[str]] = {}
    for file in files:
        by_content.setdefault(_sha256(file), []).append(file.name)
    copies = [names for names in by_content.values() if len(names) > 1]
    if copies:
        msg = (
            f"files {copies[0]} have the same content (same sha256): their cells would be counted twice and could "
            "land in both training and test splits. List each dataset once."
        )
        raise ValueError(msg)
    observations: dict[Path, pd.DataFrame] = {}
    for file in files:
        check_h5ad_input(file)
        backed = ad.read_h5ad(file, backed="r")
        shape = backed.shape
        observations[file] = backed.obs.copy()
        layers = sorted(backed.layers.keys())
        backed.file.close()
        if layer is not None and layer not in layers:
            msg = (
                f"layer={layer!r} is not a layer of {file.name} (its layers: {layers}). Name a layer every file has, "
                "or pass layer=None to read X."
            )
            raise KeyError(msg)
        if 0 in shape:
            msg = (
                f"{file.name} holds {shape[0]} cells x {shape[1]} genes: an input needs cells and genes; leave it out."
            )
            raise ValueError(msg)
    columns = {file.name: list(obs.columns) for file, obs in observations.items()}
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
    batch_required = batch_required and batch_key is not None  # the config check asks for it with integration
    if batch_required:
        _check_batch_column_everywhere(observations, batch_key)
    batches: set[str] = set()
    plan: dict[str, tuple[str | None, str, set[str]]] = {}
    emptied: set[str] = set()
    for file, obs in observations.items():
        kept, _ = _keep_mask(obs, keep)
        if not kept.any():
            msg = (
                f"{file.name}: the keep filter {dict(keep or {})} removed every cell. Check the values against "
                f"the file's obs, or drop the filter for this file."
            )
            raise ValueError(msg)
        if label_key is not None:
            labelled = _labelled(obs, label_key)
            if not (kept & labelled).any():
                values = sorted(obs.loc[kept, label_key].astype(str).unique())[:5]
                msg = (
                    f"{file.name}: none of its {int(kept.sum())} cells{' kept by keep' if keep else ''} has a label "
                    f"in {label_key!r} (values: {values}; NaN, empty and {sorted(MISSING_VALUES - {''})} mean "
                    "missing). Pass the obs column that holds the labels as label_key, or leave this file out."
                )
                raise ValueError(msg)
            kept &= labelled
        column, unit = _split_column(obs[kept], donor_key, batch_key)
        named = [("donor_key", donor_key)]
        if batch_required or not unit.startswith("donor"):  # integration needs it, or it splits this file
            named.append(("batch_key", batch_key))
        for what, key in named:
            if key is not None and key in obs.columns:
                _check_complete(obs.loc[kept, key], file.name, what, key)
        if batch_required:
            batches |= set(obs.loc[kept, batch_key].astype(str))
        plan[file.stem] = (column, unit, set(_file_groups(obs[kept], file.stem, column)))
        # groups of the file as it is, all of whose cells keep or the labels remove
        unfiltered = _file_groups(obs, file.stem, _split_column(obs, donor_key, batch_key)[0])
        emptied |= set(unfiltered) - set(unfiltered[kept])
    if batch_required and len(batches) < 2:
        msg = (
            f"batch_key={batch_key!r} holds a single batch ({sorted(batches)}) in the cells benchmarked: the "
            "integration task needs two batches or more. Name the column that holds the batches, or drop "
            "'integration' from this dataset's tasks."
        )
        raise ValueError(msg)
    _check_test_groups(test_groups, plan, emptied)
    return plan


def _check_complete(values: pd.Series, file: str, what: str, key: str) -> None:
    """Refuse a named split column without a value for some of the cells that are benchmarked."""
    missing = int(known_values(values).isna().sum())
    if missing:
        msg = (
            f"{file}: {missing} of its {values.size} labelled cells have no value in {what}={key!r} (NaN, empty or "
            f"a word for missing: {sorted(MISSING_VALUES - {''})}). Cells without one could share a "
            f"{'donor' if what == 'donor_key' else 'batch'} with cells of another split. Fill in their value, drop "
            f"those cells (e.g. keep = {{{key!r} = [...]}}), or leave {what} out."
        )
        raise ValueError(msg)


def _check_batch_column_everywhere(observations: Mapping[Path, pd.DataFrame], batch_key: str) -> None:
    """The integration task needs every cell's batch: ``batch_key`` must be a column of every file."""
    lacking = [file.name for file, obs in observations.items() if batch_key not in obs.columns]
    if lacking:
        msg = (
            f"batch_key={batch_key!r} is not a column of {lacking}, and the integration task needs every cell's "
            "batch. Add the column to those files (e.g. the study or protocol name for all their cells), or leave "
            "them out of this dataset."
        )
        raise KeyError(msg)


def _check_test_groups(
    test_groups: Sequence[str] | None, plan: Mapping[str, tuple[str | None, str, set[str]]], emptied: set[str]
) -> None:
    """Refuse test groups that are no split group of the inputs, or that leave nothing to split or train on.

    ``emptied`` holds the groups of the unfiltered files that ``keep`` or the missing labels remove entirely.
    """
    if not test_groups:
        return
    requested = sorted(set(map(str, test_groups)))
    groups = sorted(set().union(*(planned for _, _, planned in plan.values())))
    unknown = [group for group in requested if group not in groups]
    if unknown:
        shown = groups if len(groups) <= 20 else [*groups[:20], "..."]
        units = "; ".join(f"{stem}: {unit}" for stem, (_, unit, _) in plan.items())
        filtered = [group for group in unknown if group in emptied]
        lost = f" {filtered} lose every cell to the keep filter or to missing labels." if filtered else ""
        msg = (
            f"test_groups {unknown} are not groups of the inputs.{lost} A group is '<file stem>:<value>' of the "
            f"column its file is split by ({units}), or the file stem where that is the whole file; the groups are "
            f"{shown}."
        )
        raise ValueError(msg)
    if len(groups) == 1:
        msg = (
            f"test_groups {requested} cannot be held out: the inputs have a single donor/batch group, {groups[0]!r}, "
            "so the dataset is split by cells. Drop test_groups."
        )
        raise ValueError(msg)
    if len(requested) == len(groups):
        msg = f"test_groups {requested} hold every group of the inputs: nothing is left to train on. Hold out fewer."
        raise ValueError(msg)


def _expression_in_x(adata: AnnData, name: str, layer: str | None, *, tool: str = "pf.bench.build") -> AnnData:
    """Refuse expression that cannot be benchmarked (see :func:`check_expression`); put ``layer`` in ``X``.

    Cells without an expressed gene are accepted: QC removes them. With ``layer``, that layer becomes ``X`` and
    the file's layers are dropped, so the benchmark dataset holds the chosen expression once. ``tool`` names the
    caller in the message.
    """
    try:
        check_expression(adata, layer=layer, allow_empty_cells=True)
    except (KeyError, ValueError) as err:
        message = err.args[0] if err.args else str(err)
        msg = (
            f"{name}: {message} {tool} reads X, or the layer given as layer=: pass the layer holding raw "
            "counts (e.g. layer='counts'), or save raw counts or log1p-normalized values in X."
        )
        raise ValueError(msg) from err
    if layer is not None:
        adata.X = adata.layers[layer]
        for key in list(adata.layers):
            del adata.layers[key]
        source = adata.uns.get("source")
        if isinstance(source, dict):  # its x_is_integer describes the file's X, not this layer: the values decide
            adata.uns["source"] = {key: value for key, value in source.items() if key != "x_is_integer"}
    return adata


def _lost_groups(held_out: Sequence[str], obs: pd.DataFrame, name: str, column: str | None) -> list[str]:
    """The test groups of file ``name`` that have no cell left in ``obs`` when split by ``column``."""
    return sorted(set(held_out) - set(_file_groups(obs, name, column)))


def _removals(report: Mapping[str, object]) -> str:
    """The QC filters that removed cells, with their counts and thresholds, as a phrase for messages."""
    removed = {k: v for k, v in report["cells_removed"].items() if v}
    shown = {k: report["thresholds"][k] for k in removed}
    return f"{removed}, thresholds {shown}"


def _check_survivors(adata: AnnData, name: str, report: Mapping[str, object]) -> None:
    """Refuse a file that QC emptied, naming the filter that removed its cells or genes."""
    thresholds = report["thresholds"]
    if adata.n_obs == 0:
        msg = (
            f"{name}: QC removed every cell ({report['n_cells_in']} cells; removed by {_removals(report)}). Relax "
            "these thresholds for this dataset, e.g. qc = { min_genes = 20 }."
        )
        raise ValueError(msg)
    if adata.n_vars == 0:
        msg = (
            f"{name}: QC removed every gene (min_cells={thresholds['min_cells']}: no gene is detected in that "
            f"many of the {adata.n_obs} cells kept). Lower min_cells or keep more cells."
        )
        raise ValueError(msg)


def build(
    files: str | Path | Sequence[str | Path],
    *,
    label_key: str | None = None,
    donor_key: str | None = None,
    batch_key: str | None = None,
    keep: Mapping[str, Sequence[str]] | None = None,
    layer: str | None = None,
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
    layer
        Layer holding the expression to benchmark, in every file (e.g. ``"counts"`` when ``X`` is
        log-normalized, so that the count-based QC runs); ``None`` reads ``X``. The dataset's ``X`` holds it.
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
        Groups to put in test instead of drawing them: ``"<file stem>:<value>"`` of the donor or batch column the
        file is split by (see above), or the file stem for a file without one. Checked against the files' obs
        before any work; an error when QC removes every cell of one, or leaves a single group (split by cells).
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
        An input file or ``gene_table`` does not exist.
    KeyError
        ``label_key`` is missing from a file's obs, ``layer`` from a file's layers, or ``donor_key``,
        ``batch_key`` or a ``keep`` column from every file's obs. Checked before any file is processed.
    ValueError
        Checked before any file is processed: invalid parameters (wrong types, ``fractions``, ``max_cells``,
        ``seed``, a repeated or ``.h5mu`` file, two files of the same name, ``out`` an existing file), a file
        that is not an ``.h5ad`` or has no cells, ``keep`` or missing labels leaving a file without cells,
        ``test_groups`` that are not split groups of the files (the message lists them) or that leave nothing
        to split. While processing a file: ``X`` (or ``layer``) with NaN, infinite or negative values; QC leaving
        the file without cells, genes, labelled cells or cells of a test group (the message names file and step).

    Examples
    --------
    >>> bench = pf.bench.build(["study1.h5ad", "study2.h5ad"], label_key="cell_type")  # doctest: +SKIP
    >>> bench.obs["split"].value_counts()  # doctest: +SKIP
    """
    files = _input_files(files)
    _check_arguments(label_key, donor_key, batch_key, keep, layer, aliases, qc, seed, out)
    if join not in {"inner", "outer"}:
        msg = f"join must be 'inner' or 'outer', got {join!r}."
        raise ValueError(msg)
    fractions = check_fractions(fractions)
    check_max_cells(max_cells)
    if isinstance(test_groups, str):
        msg = f"test_groups={test_groups!r} is a single string: pass a list, e.g. [{test_groups!r}]."
        raise ValueError(msg)
    if test_groups is not None and (not isinstance(test_groups, Iterable) or isinstance(test_groups, Mapping)):
        msg = f"test_groups={test_groups!r}: pass a list of groups, e.g. ['study1:donor3'], or None to draw them."
        raise ValueError(msg)
    test_groups = None if test_groups is None else [str(group) for group in test_groups]
    qc = qc or QCThresholds()
    gene_table = _gene_table_path(gene_table)
    table = read_gene_table(gene_table) if gene_table is not None else None
    parameters = {
        "files": [Path(f).name for f in files],
        "label_key": label_key,
        "donor_key": donor_key,
        "batch_key": batch_key,
        "keep": {k: list(map(str, v)) for k, v in (keep or {}).items()},
        "layer": layer,
        "gene_table": None if gene_table is None else gene_table.name,
        "gene_table_sha256": None if gene_table is None else _sha256(gene_table),
        "aliases": dict(aliases or {}),
        "qc": asdict(qc),
        "join": join,
        "fractions": list(fractions),
        "test_groups": test_groups,
        "max_cells": max_cells,
    }
    plan = _check_inputs(files, label_key, donor_key, batch_key, keep, test_groups, layer)
    rng = np.random.default_rng(seed)
    parts, inputs, flags = {}, [], []
    for file in files:
        name = file.stem
        planned_column, planned_unit, planned_groups = plan[name]
        held_out = sorted(set(test_groups or ()) & planned_groups)
        adata = _expression_in_x(ad.read_h5ad(file), file.name, layer)
        entry: dict[str, object] = {
            "name": name,
            "path": file.name,
            "sha256": _sha256(file),
            "n_cells": adata.n_obs,
            "n_genes": adata.n_vars,
        }
        adata, entry["cells_removed_by_keep"] = _keep_cells(adata, keep)
        adata, entry["harmonization"] = harmonize_genes(adata, gene_table=table, aliases=aliases)
        kind, how = expression_kind(adata)
        entry["x_kind"], entry["x_kind_source"] = kind, how
        if kind != "counts":
            flags.append(f"{name}: X holds {kind} values, not raw counts; count-based QC skipped")
        adata, entry["qc"] = quality_control(adata, qc, counts=kind == "counts")
        _check_survivors(adata, file.name, entry["qc"])
        if label_key is not None:
            labelled = _labelled(adata.obs, label_key)
            entry["cells_without_label"] = int((~labelled).sum())
            adata = adata[labelled].copy()
            if adata.n_obs == 0:
                msg = (
                    f"{file.name}: QC removed every cell with a label in {label_key!r} (removed by "
                    f"{_removals(entry['qc'])}). Relax these thresholds for this dataset."
                )
                raise ValueError(msg)
        lost = _lost_groups(held_out, adata.obs, name, planned_column)
        if lost:
            msg = (
                f"{file.name}: QC removed every cell of test_groups {lost} (removed by {_removals(entry['qc'])}). "
                "Relax these thresholds for this dataset, or hold out other groups."
            )
            raise ValueError(msg)
        if max_cells is not None and adata.n_obs > max_cells:
            adata = adata[np.sort(rng.choice(adata.n_obs, max_cells, replace=False))].copy()
            entry["subsampled_to"] = max_cells
            lost = _lost_groups(held_out, adata.obs, name, planned_column)
            if lost:
                msg = (
                    f"{file.name}: max_cells={max_cells} drew no cell of test_groups {lost}. Raise max_cells, or "
                    "hold out other groups."
                )
                raise ValueError(msg)
        column, unit = _split_column(adata.obs, donor_key, batch_key)
        groups = _file_groups(adata.obs, name, column)
        lost = sorted(set(held_out) - set(groups))
        if lost:
            msg = (
                f"{file.name}: after QC its cells are split by {unit}, not by {planned_unit}, so test_groups {lost} "
                f"are not groups of it any more. Hold out groups of {unit}: {sorted(set(groups))[:20]}."
            )
            raise ValueError(msg)
        entry["split_unit"] = unit
        if column is None:
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
        msg = (
            "The files share no gene after harmonization. Check the gene names: where one file names genes by "
            "Ensembl ID and another by symbol, give a gene table (gene_table=...) so that both become symbols. "
            "join='outer' keeps every gene, filling each file's missing genes with zeros."
        )
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
            f"test_groups {test_groups} cannot be held out: after QC and subsampling the dataset has a single "
            f"donor/batch group, {combined.obs['split_group'].iloc[0]!r}, so it is split by cells. Drop test_groups."
        )
        raise ValueError(msg)
    else:
        combined.obs["split"] = split_cells(combined.n_obs, labels=labels, fractions=fractions, seed=seed)
        split_unit = "cells"
        flags.append("a single donor/batch group overall: train/val/test are split by CELLS (same donor in all)")
    combined.obs["split"] = pd.Categorical(combined.obs["split"], categories=["train", "val", "test"])
    # an empty validation split is harmless (two groups: one trains, one is held out; fitting uses train + val)
    empty = [split for split in ("train", "test") if not (combined.obs["split"] == split).any()]
    if empty:
        flags.append(
            f"splits {empty} hold no cell ({combined.n_obs} cells in {n_groups} split group(s)): tasks scored on "
            "held-out cells cannot be scored. Raise max_cells, or give data with more donors."
        )
    manifest = _manifest(combined, inputs, flags, split_unit, parameters, seed)
    combined.uns[MANIFEST_KEY] = json.dumps(manifest)
    for flag in flags:
        logger.warning(flag)
    if out is not None:
        _write_build(combined, manifest, Path(out))
    return combined


def _write_build(combined: AnnData, manifest: dict, folder: Path) -> None:
    """Write ``benchmark.h5ad`` and ``manifest.json`` into ``folder``, both or neither.

    Each is written beside its final name first and moved into place only when both are complete, so a failed write
    leaves an earlier build in ``folder`` as it was; replacing one is logged.
    """
    folder.mkdir(parents=True, exist_ok=True)
    targets = {"benchmark.h5ad": folder / "benchmark.h5ad", "manifest.json": folder / "manifest.json"}
    staged = {name: folder / f".{name}.partial" for name in targets}
    try:
        combined.write_h5ad(staged["benchmark.h5ad"], compression="gzip")
        write_manifest(manifest, staged["manifest.json"])
    except BaseException:
        for path in staged.values():
            path.unlink(missing_ok=True)
        raise
    if any(path.exists() for path in targets.values()):
        logger.warning("Replacing the earlier benchmark build in %s.", folder)
    for name, target in targets.items():
        os.replace(staged[name], target)


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
