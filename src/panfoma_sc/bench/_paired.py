"""``pf.bench.build_paired``: a paired CITE-seq ``.h5mu`` file -> a benchmark MuData with labels from protein gating."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._arguments import is_integer
from ..tl._mudata import PROTEIN_NAMES
from ._build import MANIFEST_KEY, _check_survivors, _expression_in_x, _sha256, check_max_cells
from ._gating import PBMC_CITESEQ_GATES, gate_cells
from ._qc import QCThresholds, expression_kind, quality_control

if TYPE_CHECKING:
    from mudata import MuData

logger = logging.getLogger(__name__)

__all__ = ["GATE_SETS", "UNGATED", "build_paired", "shared_panel"]

#: Gate sets a config can name (``gates = "pbmc_citeseq"``); a config may also give the rules inline.
GATE_SETS: dict[str, dict[str, dict[str, bool]]] = {"pbmc_citeseq": PBMC_CITESEQ_GATES}
#: Label of cells that fit no gate: they are embedded with the others but not scored.
UNGATED = "ungated"
#: Modality names of the built dataset (muon's conventions), whatever the file calls them.
RNA, PROTEIN = "rna", "prot"


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)


def shared_panel(protein: AnnData, batches: np.ndarray) -> np.ndarray:
    """Proteins measured in every batch: those with counts in each batch's cells.

    Merged CITE-seq runs with different antibody panels hold 0 for a protein a run did not measure; such a
    protein would separate the batches by its mere absence.

    Parameters
    ----------
    protein
        Cells x proteins, raw ADT counts.
    batches
        Batch of each cell.

    Returns
    -------
    ``(n_proteins,)`` bool.
    """
    counts = _dense(protein.X)
    batches = np.asarray(batches).astype(str)
    return np.all([counts[batches == b].sum(0) > 0 for b in np.unique(batches)], axis=0)


def _gates(gates: str | Mapping) -> dict[str, dict[str, bool]]:
    if isinstance(gates, str):
        if gates not in GATE_SETS:
            msg = f"Unknown gate set {gates!r}; available: {sorted(GATE_SETS)}, or give the rules as a table."
            raise ValueError(msg)
        return GATE_SETS[gates]
    if not isinstance(gates, Mapping) or not gates or not all(isinstance(r, Mapping) and r for r in gates.values()):
        msg = (
            f"gates={gates!r}: name a gate set ({sorted(GATE_SETS)}) or give rules {{label: {{marker: True/False}}}}, "
            "e.g. {'B': {'CD19': True, 'CD3': False}}."
        )
        raise ValueError(msg)
    return {str(label): {str(m): bool(v) for m, v in rule.items()} for label, rule in gates.items()}


def _modality(modalities: list[str], name: str | None, candidates: tuple[str, ...], role: str) -> str:
    """The modality called ``name``, else (``name`` None) the first of ``candidates`` present, case-insensitive."""
    if name is not None and name in modalities:
        return name
    lowered = {m.lower(): m for m in modalities}
    found = None if name is not None else next((lowered[c] for c in candidates if c in lowered), None)
    if found is None:
        msg = f"No {role} modality {name or candidates} in the file (modalities: {modalities}); name it."
        raise KeyError(msg)
    return found


def _obs_columns(group) -> list[str]:
    """Column names of the ``obs`` dataframe stored in an HDF5 group (anndata's ``column-order`` attribute)."""
    if "obs" not in group:
        return []
    return [str(column) for column in np.atleast_1d(group["obs"].attrs.get("column-order", []))]


def check_paired_input(
    file: str | Path,
    *,
    batch_key: str = "batch",
    rna: str = "rna",
    protein: str | None = None,
    layer: str | None = None,
) -> None:
    """Refuse a paired ``.h5mu`` whose modalities, batch column or RNA layer are missing, reading only its layout.

    The checks of :func:`build_paired` that need no expression values, cheap enough to run on every dataset of a
    benchmark config before anything is built.

    Raises
    ------
    FileNotFoundError
        ``file`` does not exist.
    KeyError
        The RNA or protein modality, ``layer`` (in the RNA modality) or ``batch_key`` (in ``mdata.obs`` or the
        RNA modality's ``obs``) is not in the file.
    """
    import h5py

    file = Path(file)
    if not file.is_file():
        msg = f"Benchmark input {str(file)!r} does not exist."
        raise FileNotFoundError(msg)
    with h5py.File(file, "r") as handle:
        modalities = list(handle["mod"]) if "mod" in handle else []
        rna_name = _modality(modalities, rna, (), "RNA")
        _modality(modalities, protein, PROTEIN_NAMES, "protein")
        rna_group = handle["mod"][rna_name]
        layers = sorted(rna_group["layers"]) if "layers" in rna_group else []
        rna_columns, columns = _obs_columns(rna_group), _obs_columns(handle)
        prefixed = [f"{m}:{c}" for m in modalities for c in _obs_columns(handle["mod"][m])]  # mudata's pulled names
    if layer is not None and layer not in layers:
        msg = (
            f"layer={layer!r} is not a layer of {file.name} mod[{rna_name!r}] (its layers: {layers}). Name the layer "
            "that holds raw counts, or pass layer=None to read the modality's X."
        )
        raise KeyError(msg)
    if batch_key not in {*columns, *rna_columns, *prefixed}:
        msg = (
            f"batch_key={batch_key!r} is neither a column of {file.name}'s mdata.obs ({columns}) nor of "
            f"mod[{rna_name!r}].obs ({rna_columns}); name the column that holds each cell's batch."
        )
        raise KeyError(msg)


def _check_arguments(**names: object) -> None:
    """Refuse column and modality names that are not non-empty strings (``protein`` may be ``None``)."""
    examples = {"label_key": "gated_label", "batch_key": "batch", "rna": "rna", "protein": "prot"}
    for name, value in names.items():
        if (value is not None or name != "protein") and (not isinstance(value, str) or not value):
            msg = f"{name}={value!r}: pass a name as a string, e.g. {name}={examples[name]!r}."
            raise ValueError(msg)


def build_paired(
    file: str | Path,
    *,
    gates: str | Mapping[str, Mapping[str, bool]] = "pbmc_citeseq",
    label_key: str = "gated_label",
    batch_key: str = "batch",
    rna: str = "rna",
    protein: str | None = None,
    layer: str | None = None,
    qc: QCThresholds | None = None,
    max_cells: int | None = None,
    seed: int = 0,
) -> MuData:
    """Turn a paired RNA + protein file (CITE-seq ``.h5mu``) into a benchmark dataset with gated labels.

    Cells present in both modalities are kept; :func:`quality_control` filters them on their RNA (count-based
    filters only when the RNA holds counts) and the protein modality follows. Labels come from the proteins
    alone: CLR per cell over the proteins measured in every batch (:func:`shared_panel`), then
    :func:`gate_cells` with each marker called within each batch. Cells that fit no gate keep the label
    :data:`UNGATED`: they are embedded with the others but not scored. Finally at most ``max_cells`` cells are
    drawn at random (gating runs before, so a cell's label does not depend on the draw). There is no
    train/test split: the multi-omics task embeds and scores every cell.

    Parameters
    ----------
    file
        ``.h5mu`` with an RNA modality (counts or log-normalized) and a protein modality (raw ADT counts).
    gates
        A gate set of :data:`GATE_SETS` (``"pbmc_citeseq"``: :data:`PBMC_CITESEQ_GATES`) or the rules,
        ``label -> {marker: positive}``.
    label_key
        obs column to write the labels into.
    batch_key
        Column of the file's ``mdata.obs`` or of its RNA modality's ``obs`` with each cell's batch (run).
    rna
        The RNA modality.
    protein
        The protein modality; default the one named ``prot``, ``protein`` or ``adt``.
    layer
        Layer of the RNA modality to use as its expression (e.g. ``"counts"`` when its ``X`` holds log-normalized
        values), so that count-based QC and count models run; default the RNA's ``X``.
    qc
        QC thresholds (default :class:`QCThresholds`).
    max_cells
        Cells kept at most (random, after QC and gating).
    seed
        Seed of the subsample.

    Returns
    -------
    A MuData with modalities ``rna`` and ``prot`` (the protein modality's ``var["in_every_batch"]`` marks the
    shared panel) and ``obs`` columns ``batch_key``, ``label_key``, ``split_group`` (``file:batch``),
    ``x_kind`` (what the RNA holds) and ``dataset``; ``uns["bench_manifest"]`` holds the manifest as JSON
    (input with sha256, parameters, QC report, label counts, flags) in the layout of :func:`build`'s.

    Raises
    ------
    FileNotFoundError
        ``file`` does not exist.
    KeyError
        Checked from the file's layout before its data are read (:func:`check_paired_input`): ``batch_key``, a
        modality or ``layer`` is not in the file.
    ValueError
        Checked before the file is read: ``file`` is not an ``.h5mu``, or an argument has the wrong type or range
        (names, ``gates``, ``qc``, ``max_cells``, ``seed``). After: the RNA (or ``layer``) holds NaN, infinite or
        negative values, the protein modality does not hold counts, or the batches share no protein.

    Examples
    --------
    >>> mdata = pf.bench.build_paired("pbmc_citeseq_10x_5k_10k_400cells.h5mu")  # doctest: +SKIP
    >>> mdata.obs["gated_label"].value_counts()  # doctest: +SKIP
    """
    try:
        import mudata as md
    except ImportError as err:
        msg = "Paired datasets need mudata and muon: pip install 'panfoma-sc[multiomics]'."
        raise ImportError(msg) from err
    from ..tl._mudata import require_muon

    muon = require_muon()
    file = Path(file)
    if not file.is_file():
        msg = f"Benchmark input {str(file)!r} does not exist."
        raise FileNotFoundError(msg)
    if file.suffix != ".h5mu":
        msg = f"{file.name} is not a paired .h5mu file: build_paired reads MuData files; use pf.bench.build for .h5ad."
        raise ValueError(msg)
    _check_arguments(label_key=label_key, batch_key=batch_key, rna=rna, protein=protein)
    if layer is not None and (not isinstance(layer, str) or not layer):
        msg = f"layer={layer!r}: name one layer of the RNA modality as a string, e.g. layer='counts', or pass None."
        raise ValueError(msg)
    if qc is not None and not isinstance(qc, QCThresholds):
        msg = f"qc={qc!r}: pass pf.bench.QCThresholds(...), e.g. QCThresholds(min_genes=50), or None for the defaults."
        raise ValueError(msg)
    check_max_cells(max_cells)
    if not is_integer(seed) or seed < 0:
        msg = f"seed={seed!r}: use an integer >= 0."
        raise ValueError(msg)
    qc = qc or QCThresholds()
    rules = _gates(gates)
    check_paired_input(file, batch_key=batch_key, rna=rna, protein=protein, layer=layer)
    source = md.read_h5mu(file)
    rna_name = _modality(list(source.mod), rna, (), "RNA")
    protein_name = _modality(list(source.mod), protein, PROTEIN_NAMES, "protein")
    in_both = source.obs_names.isin(source.mod[rna_name].obs_names)
    paired = source.obs_names[in_both & source.obs_names.isin(source.mod[protein_name].obs_names)]
    rna_data = source.mod[rna_name][paired].copy()
    rna_data = _expression_in_x(rna_data, f"{file.name} mod[{rna_name!r}]", layer, tool="pf.bench.build_paired")
    if batch_key in source.obs.columns:
        batch_values = source.obs.loc[paired, batch_key]
    elif batch_key in rna_data.obs.columns:
        batch_values = rna_data.obs[batch_key]
    else:
        msg = f"batch_key={batch_key!r} is neither a column of mdata.obs nor of mdata.mod[{rna_name!r}].obs."
        raise KeyError(msg)
    if batch_values.isna().any():
        msg = f"{int(batch_values.isna().sum())} cells have no {batch_key!r}; give every cell a batch."
        raise ValueError(msg)
    batch_values = batch_values.astype(str)
    entry: dict[str, object] = {
        "name": file.stem,
        "path": file.name,
        "sha256": _sha256(file),
        "n_cells": int(source.n_obs),
        "n_paired_cells": int(paired.size),
        "n_genes": int(source.mod[rna_name].n_vars),
        "n_proteins": int(source.mod[protein_name].n_vars),
        "modalities": {"rna": rna_name, "protein": protein_name},
    }
    kind, how = expression_kind(rna_data)
    entry["x_kind"], entry["x_kind_source"] = kind, how
    rna_data, entry["qc"] = quality_control(rna_data, qc, counts=kind == "counts")
    _check_survivors(rna_data, f"{file.name} mod[{rna_name!r}]", entry["qc"])
    cells = rna_data.obs_names
    protein_data = source.mod[protein_name][cells].copy()
    batches = batch_values.loc[cells].to_numpy()
    _check_protein_counts(protein_data, protein_name)
    panel = shared_panel(protein_data, batches)
    if not panel.any():
        msg = f"No protein of mdata.mod[{protein_name!r}] has counts in every batch: the runs share no antibody."
        raise ValueError(msg)
    levels = AnnData(protein_data[:, panel].X.copy(), obs=pd.DataFrame({"batch": batches}, index=cells))
    levels.var_names = protein_data.var_names[panel]
    muon.prot.pp.clr(levels, axis=1)  # per cell, over the shared panel
    labels = gate_cells(levels, rules, batch_key="batch", unassigned=UNGATED).astype(str).to_numpy()
    if max_cells is not None and cells.size > max_cells:
        keep = np.sort(np.random.default_rng(seed).choice(cells.size, max_cells, replace=False))
        rna_data, protein_data = rna_data[keep].copy(), protein_data[keep].copy()
        batches, labels, cells = batches[keep], labels[keep], cells[keep]
        entry["subsampled_to"] = max_cells
    entry["split_unit"] = "none (every cell is embedded and scored)"
    rna_data.obs, rna_data.uns = pd.DataFrame(index=cells), {}
    rna_data.var = rna_data.var[[]]
    protein_data.obs, protein_data.uns = pd.DataFrame(index=cells), {}
    protein_data.var = pd.DataFrame({"in_every_batch": panel}, index=protein_data.var_names)
    mdata = md.MuData({RNA: rna_data, PROTEIN: protein_data})
    mdata.obs[batch_key] = pd.Categorical(batches)
    mdata.obs[label_key] = pd.Categorical(labels)
    mdata.obs["split_group"] = [f"{file.stem}:{b}" for b in batches]
    mdata.obs["x_kind"] = kind
    mdata.obs["dataset"] = file.stem
    counts = pd.Series(labels).value_counts()
    flags = [
        f"labels from protein gating on the {int(panel.sum())} proteins measured in every batch: methods that "
        "read the proteins are favoured by construction",
        f"{int(counts.get(UNGATED, 0))} cells fit no gate: embedded, not scored",
    ]
    if kind != "counts":
        flags.append(f"{file.stem}: the RNA holds {kind} values, not raw counts; count-based QC and models skipped")
    entry["n_cells_out"], entry["n_genes_out"] = int(mdata.n_obs), int(rna_data.n_vars)
    from .. import __version__

    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "panfoma_sc_version": __version__,
        "seed": seed,
        "parameters": {
            "files": [file.name],
            "label_key": label_key,
            "batch_key": batch_key,
            "gates": gates if isinstance(gates, str) else rules,
            "layer": layer,
            "qc": asdict(qc),
            "max_cells": max_cells,
        },
        "inputs": [entry],
        "n_cells": int(mdata.n_obs),
        "n_genes": int(rna_data.n_vars),
        "n_proteins": int(protein_data.n_vars),
        "n_proteins_in_every_batch": int(panel.sum()),
        "labels": {str(k): int(v) for k, v in counts.items()},
        "split_unit": "none",
        "splits": {},
        "flags": flags,
    }
    mdata.uns[MANIFEST_KEY] = json.dumps(manifest)
    for flag in flags:
        logger.info(flag)
    return mdata


def _check_protein_counts(protein: AnnData, name: str) -> None:
    values = protein.X.data if sp.issparse(protein.X) else np.asarray(protein.X).ravel()
    if values.size and (np.any(values < 0) or not np.allclose(values, np.round(values))):
        msg = f"mdata.mod[{name!r}].X must hold raw ADT counts (non-negative integers); the methods normalize them."
        raise ValueError(msg)
