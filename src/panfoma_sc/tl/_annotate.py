"""``pf.tl.annotate``: label transfer from a labelled reference in the PanFoMa embedding."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from .._arguments import require_flag, require_integer, require_number
from .._paths import check_writable
from ..models import DEFAULT_MODEL, PretrainedModel
from ._embedding_job import EmbeddingJob
from ._keys import (
    check_result_target,
    check_storable_key,
    read_backed_copy,
    result_target,
    warn_if_replacing,
    written_by,
)
from ._linear_probe import LinearProbe
from ._model_arg import resolve_model
from ._mudata import is_mudata

logger = logging.getLogger(__name__)

__all__ = ["annotate"]

UNKNOWN = "Unknown"
#: plot colour of ``UNKNOWN`` cells (light grey)
UNKNOWN_COLOR = "#d9d9d9"
METHODS = ("knn", "logreg", "finetune")


#: text that stands for a missing label (what ``str()`` makes of NaN, None and pandas' NA)
MISSING_AS_TEXT = frozenset({"nan", "NaN", "None", "<NA>"})


def _reference_labels(reference: AnnData, labels_key: str) -> pd.Series:
    """The reference's labels as strings, missing (NaN, None, empty or blank) as NaN, in a categorical.

    The classes come in the reference's own order: a categorical column's category order, numbers by value,
    other labels sorted.
    """
    if labels_key not in reference.obs.columns:
        msg = f"labels_key={labels_key!r} is not a column of reference.obs (columns: {list(reference.obs.columns)})."
        raise KeyError(msg)
    if reference.n_obs == 0:
        msg = "reference has no cells (0 observations): pass a labelled reference with cells of each type."
        raise ValueError(msg)
    column = reference.obs[labels_key]
    if pd.api.types.is_float_dtype(column) and bool(np.all(column.dropna() % 1 == 0)):
        column = column.astype("Int64")  # integer labels that NaN made float: "3", not "3.0"
    labels = column.astype(object).astype(str)
    # "nan" / "None" are missing labels turned into text (column.astype(str)), never a cell type
    as_text = labels.str.strip().isin(MISSING_AS_TEXT).to_numpy() & column.notna().to_numpy()
    if as_text.any():
        logger.warning(
            "%d cells of reference.obs[%r] have the label %s: taken as missing labels turned into text (e.g. by "
            ".astype(str)) and left out.",
            int(as_text.sum()),
            labels_key,
            sorted(set(labels[as_text].str.strip())),
        )
    labels = labels.where(column.notna().to_numpy() & (labels.str.strip() != "").to_numpy() & ~as_text)
    if labels.isna().all():
        msg = f"reference.obs[{labels_key!r}] has no labels (all missing)."
        raise ValueError(msg)
    classes = labels.dropna().astype(str).unique()
    if len(classes) < 2:
        msg = (
            f"reference.obs[{labels_key!r}] has a single class ({classes[0]!r}): label transfer needs at least two. "
            "Use a reference with several cell types."
        )
        raise ValueError(msg)
    if UNKNOWN in classes:
        logger.warning(
            "reference.obs[%r] has a class named %r, the name of the low-confidence call: the two cannot be told "
            "apart in the result. Rename that class, or set those cells' labels to NaN to leave them out.",
            labels_key,
            UNKNOWN,
        )
    return pd.Series(pd.Categorical(labels, categories=_class_order(column, labels)), index=labels.index)


def _class_order(column: pd.Series, labels: pd.Series) -> list[str]:
    """The classes present in ``labels`` (strings of ``column``'s values) in ``column``'s natural order."""
    present = set(labels.dropna())
    if isinstance(column.dtype, pd.CategoricalDtype):
        ordered = [str(c) for c in column.cat.categories]
    elif pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        ordered = [str(v) for v in np.unique(column.dropna().to_numpy())]
    else:
        ordered = sorted(present)
    return [c for c in dict.fromkeys(ordered) if c in present]


#: the tool name :func:`annotate` records in ``uns[key_added]["params"]["tool"]``
TOOL = "pf.tl.annotate"


def _reference_colors(reference: AnnData | None, labels_key: str | None, categories: list[str]) -> list[str] | None:
    """The reference's colours (scanpy's ``uns[f"{labels_key}_colors"]``) of ``categories``, Unknown grey.

    ``None`` when the reference has no valid colours for its labels or lacks a colour for one of ``categories``.
    """
    if reference is None or labels_key not in reference.obs:
        return None
    column, colors = reference.obs[labels_key], reference.uns.get(f"{labels_key}_colors")
    categorical = isinstance(column.dtype, pd.CategoricalDtype)
    if colors is None or not categorical or len(colors) != len(column.cat.categories):
        return None
    own = dict(zip(map(str, column.cat.categories), map(str, colors), strict=True))
    by_class = {UNKNOWN: UNKNOWN_COLOR} | own
    if any(category not in by_class for category in categories):
        return None
    return [by_class[category] for category in categories]


def _is_annotation(params: Mapping) -> bool:
    """Whether an ``uns`` record comes from an earlier :func:`annotate` call (older records name no tool)."""
    return written_by(params, TOOL) and ("tool" in params or params.get("method") in METHODS)


def _check_arguments(
    adata: AnnData, reference: AnnData | None, method: str, n_neighbors: int, max_epochs: int, threshold: float
) -> None:
    """Refuse wrong types and ranges before any work."""
    for name, value in (("adata", adata), ("reference", reference)):
        if is_mudata(value):
            msg = (
                f"{name} is a MuData; pf.tl.annotate takes AnnData. Pass its RNA modality, e.g. "
                f"{name}.mod['rna'], and copy the labels to the MuData afterwards if you need them there."
            )
            raise TypeError(msg)
    if method not in METHODS:
        msg = f"method={method!r} is not available; use method='knn', 'logreg' or 'finetune'."
        raise ValueError(msg)
    require_number("unknown_threshold", threshold, 0, 1)
    require_integer("n_neighbors", n_neighbors, 1)
    require_integer("max_epochs", max_epochs, 1)


def _prepare_reference(reference: AnnData, pretrained: PretrainedModel, **options) -> EmbeddingJob:
    """:meth:`EmbeddingJob.prepare` on the reference, its errors and warnings worded as the reference's."""
    try:
        return EmbeddingJob.prepare(reference, pretrained, adata_name="reference", **options)
    except (KeyError, ValueError) as error:
        text = re.sub(r"\badata\b", "reference", str(error.args[0]) if error.args else str(error))
        text = re.sub(r"\blayer=", "reference_layer=", text)  # the reference's layer argument
        text = re.sub(r"\buse_raw\b", "reference_use_raw", text)
        if "gene_symbols=" in text:
            symbols = options.get("gene_symbols")
            text += f" gene_symbols={symbols!r} names a column of both the query's and the reference's var."
        raise type(error)(text) from error


def _warn_if_few_shared_genes(query: EmbeddingJob, reference: EmbeddingJob) -> int:
    """Refuse datasets sharing no model gene, warn when they share few; returns how many they share."""
    query_genes, reference_genes = set(query.match.gene_ids.tolist()), set(reference.match.gene_ids.tolist())
    shared = len(query_genes & reference_genes)
    union = len(query_genes | reference_genes)
    if shared == 0:
        msg = (
            f"The query and the reference share none of their model genes (the query holds {len(query_genes)}, the "
            f"reference {len(reference_genes)}): their embeddings would come from disjoint genes, so no label can "
            "transfer. Check that both name genes the same way (symbols or Ensembl IDs; gene_symbols= names a var "
            "column of symbols) and that they measure overlapping genes."
        )
        raise ValueError(msg)
    if shared < SHARED_GENES_WARNING * union:
        logger.warning(
            "The query and the reference share only %d of the %d model genes either holds (%.0f%%): their cells "
            "are embedded from different genes, so labels transfer poorly. Subset both to their common genes "
            "first, e.g. genes = query.var_names.intersection(reference.var_names).",
            shared,
            union,
            100 * shared / max(union, 1),
        )
    return shared


#: warn when the query and the reference share fewer than this share of the model genes either of them holds
SHARED_GENES_WARNING = 0.5


#: From this many reference cells on, neighbours come from pynndescent's approximate index instead of an exact
#: search (whose cost grows with query x reference; the index costs a one-off numba compilation).
APPROXIMATE_FROM = 50_000


def _nearest_reference_cells(
    reference: np.ndarray, query: np.ndarray, k: int, *, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and Euclidean distances of each query cell's ``k`` nearest reference cells."""
    if reference.shape[0] >= APPROXIMATE_FROM:
        from pynndescent import NNDescent

        index = NNDescent(reference, n_neighbors=max(k, 2), random_state=seed)
        return index.query(query, k=k)
    from sklearn.neighbors import NearestNeighbors

    distances, neighbors = NearestNeighbors(n_neighbors=k).fit(reference).kneighbors(query)
    return neighbors, distances


def _weighted_vote(
    neighbor_labels: np.ndarray, distances: np.ndarray, classes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distance-weighted majority vote; returns the winning class index and its share of the weight."""
    weights = 1.0 / (distances + 1e-6)
    votes = np.zeros((neighbor_labels.shape[0], classes.size))
    np.add.at(votes, (np.arange(neighbor_labels.shape[0])[:, None], neighbor_labels), weights)
    winner = votes.argmax(1)
    confidence = votes[np.arange(votes.shape[0]), winner] / votes.sum(1)
    return winner, confidence


def annotate(
    adata: AnnData,
    reference: AnnData | None = None,
    *,
    labels_key: str | None = None,
    model: str | Path | PretrainedModel = DEFAULT_MODEL,
    method: Literal["knn", "logreg", "finetune"] | None = None,
    n_neighbors: int = 15,
    max_epochs: int = 15,
    save_model: str | Path | None = None,
    unknown_threshold: float = 0.5,
    layer: str | None = None,
    reference_layer: str | None = None,
    use_raw: bool = False,
    reference_use_raw: bool = False,
    gene_symbols: str | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    n_genes: int | None = None,
    key_added: str = "panfoma_label",
    copy: bool = False,
    progress: bool = True,
    seed: int = 0,
) -> AnnData | None:
    """Transfer cell labels from a labelled reference to ``adata``.

    ``method="knn"``: both datasets are embedded with the same model; each query cell takes the
    distance-weighted majority label of its ``n_neighbors`` nearest reference cells (exact search, or
    pynndescent for references of 50,000 cells and more). The confidence is the winner's share of the vote.

    ``method="logreg"``: both datasets are embedded with the same model; a logistic regression (L2, each
    embedding dimension standardized on the reference) fitted on the reference's embedding predicts the query
    (a linear probe, as CellTypist on genes); the confidence is the predicted class probability. Against kNN
    it tends to win macro-F1 where classes are many and unbalanced (rare types), at times at some cost in
    accuracy: see the Benchmark page. Across studies it can hand a rare reference class to the query cells of a
    related type, confidently: with 600 pbmc3k cells as the reference (5 of them DC) and FACS-sorted PBMC as the
    query, it called 20 of 23 monocytes DC (mean probability 0.74), where kNN labelled 20 of them monocytes. kNN
    stays the default, as the label transfer of scanpy's ``ingest`` and scArches.

    ``method="finetune"``: a classification head is first fitted on the frozen model's embeddings of the
    reference (a linear probe), then the whole model is fine-tuned with it (class-balanced loss, early stopping
    on a stratified validation split, which keeps the probed model when fine-tuning does not lower the
    validation loss), then predicts the query; the
    confidence is the predicted class probability. Pass ``save_model`` to keep the fine-tuned model (register
    it with :func:`panfoma_sc.models.register`), and later annotate with it directly:
    ``annotate(adata, None, model=path, method="finetune")``.

    Cells whose confidence is below ``unknown_threshold`` are called ``"Unknown"``.

    Parameters
    ----------
    adata
        Query cells (raw counts or log1p-normalized).
    reference
        Labelled reference cells; it is not modified. ``None`` only with ``method="finetune"`` and a model
        that already carries a classifier.
    labels_key
        Column of ``reference.obs`` with the labels (cells with missing labels, NaN or empty strings, are
        ignored). Labels are transferred as strings: integer labels come back as ``"0"``, ``"1"``, ...
    model
        Registry name, checkpoint path or loaded model.
    method
        ``"knn"`` (nearest neighbours in the embedding), ``"logreg"`` (logistic regression on the embedding) or
        ``"finetune"`` (fine-tuned classifier). Default: ``"knn"`` with a reference, ``"finetune"`` without one
        (the classifier of a fine-tuned ``model``).
    n_neighbors
        Reference neighbours per query cell (``"knn"``).
    max_epochs
        Upper bound on fine-tuning epochs (``"finetune"``; early stopping usually ends sooner).
    save_model
        Write the fine-tuned model to this ``.safetensors`` file (``"finetune"``).
    unknown_threshold
        Minimum confidence to assign a label; ``0`` never calls ``"Unknown"``. The confidence measures agreement
        among the reference's classes, not novelty: cells of a type the reference lacks are called Unknown only in
        part (B cells left out of a pbmc3k reference, sorted PBMC as the query: 58% of them Unknown with kNN, 25%
        with ``"logreg"``, against 5% of the other cells with kNN).
    layer, reference_layer
        Layers holding expression in ``adata`` and ``reference`` (``None``: ``X``).
    use_raw, reference_use_raw
        Read expression and genes from ``adata.raw`` / ``reference.raw`` (as scanpy keeps them before scaling or
        gene selection) instead of ``X``; labels are still written to ``adata``. Not with the matching layer.
    gene_symbols
        ``var`` column with gene symbols (both datasets).
    batch_size
        Cells per forward pass, and per fine-tuning step with ``"finetune"`` (default there: 32).
    device
        Torch device (default: auto). Fine-tuning (``method="finetune"``) runs in float32; embedding and prediction
        follow ``pf.settings.precision``, as :func:`~panfoma_sc.tl.embed` (bf16 autocast on CUDA GPUs of compute
        capability 8.0 or later), so a cell whose confidence is within rounding of ``unknown_threshold`` may land on
        either side of it on another device.
    n_genes
        Genes per cell given to the model.
    key_added
        Names of the written ``obs`` columns.
    copy
        Return a new AnnData instead of writing into ``adata``. A backed AnnData is read into memory for
        it, before the model runs; with ``copy=False`` it stays on disk and the results go to the AnnData object
        (in memory; the file is not changed: save with ``adata.write_h5ad(new_path)``).
    progress
        Show progress bars.
    seed
        Gene-sampling and index seed.

    Returns
    -------
    ``None``, or a new AnnData when ``copy=True``. Sets

    ``adata.obs[key_added]`` : :class:`pandas.Categorical`
        Predicted label (or ``"Unknown"``), categories in the reference's class order; only labels that some
        cell got are categories (as scanpy's group-wise tools expect), all of the reference's classes are in
        ``adata.uns[key_added]["classes"]``.
    ``adata.uns[key_added + "_colors"]`` : :class:`list`
        The reference's plot colours of the labels given (``"Unknown"`` light grey), when the reference has them
        (``reference.uns[labels_key + "_colors"]``, as scanpy's plots leave them); otherwise removed, so that
        colours of an earlier column of this name do not stay.
    ``adata.obs[key_added + "_confidence"]`` : :class:`numpy.ndarray`
        Share of the neighbours' vote weight won by the predicted label (``"knn"``), or the predicted class
        probability (``"logreg"``, ``"finetune"``).
    ``adata.uns[key_added]`` : :class:`dict`
        Method, parameters and the model's provenance; with ``"finetune"``, the model it was fine-tuned from
        (``fine_tuned_from``: sha256, ``fine_tuned_from_name``, ``fine_tuned_from_version``) and the fine-tuning
        settings (``fine_tuning``), which a model saved with ``save_model`` also carries; ``"classes"``: every
        class the cells could get, in order.

    Examples
    --------
    >>> import panfoma_sc as pf
    >>> pf.tl.annotate(query, reference, labels_key="cell_type")  # doctest: +SKIP
    >>> query.obs[["panfoma_label", "panfoma_label_confidence"]].head()  # doctest: +SKIP
    """
    for name, flag in (("copy", copy), ("progress", progress)):
        require_flag(name, flag)
    if method is None:
        method = "knn" if reference is not None else "finetune"
    _check_arguments(adata, reference, method, n_neighbors, max_epochs, unknown_threshold)
    if reference is adata and method == "knn":
        logger.warning(
            "The query is the reference: with method='knn' each cell is its own nearest neighbour, so every cell "
            "keeps its label with confidence near 1. This does not check the reference's labels; to do that, "
            "annotate one half of it with the other."
        )
    check_result_target(adata, copy=copy)
    if not isinstance(key_added, str) or not key_added:
        msg = f"key_added must be a non-empty string, got {key_added!r} (it names the obs column of the labels)."
        raise ValueError(msg)
    check_storable_key(key_added)
    if save_model is not None:
        if method != "finetune":
            msg = f"save_model keeps a fine-tuned model: pass method='finetune', or drop save_model for {method!r}."
            raise ValueError(msg)
        check_writable(save_model, "save_model", suffix=".safetensors")
    pretrained = resolve_model(model)
    options = {
        "gene_symbols": gene_symbols,
        "batch_size": batch_size,
        "n_genes": n_genes,
        "seed": seed,
        "device": device,
        "progress": progress,
    }
    if reference is None:
        if labels_key is not None:
            msg = (
                f"labels_key={labels_key!r} names a column of the reference, but reference=None: pass the labelled "
                "reference (labels from its obs), or drop labels_key to label with a fine-tuned model's classes."
            )
            raise ValueError(msg)
        if pretrained.classes is None:
            msg = (
                f"reference=None labels cells with a fine-tuned model's classes, and model {pretrained.name!r} has "
                "none. Pass a labelled reference and labels_key, or a model saved by "
                "pf.tl.annotate(..., method='finetune', save_model=...)."
            )
            raise ValueError(msg)
        if method != "finetune":
            msg = (
                f"reference=None with a fine-tuned model needs method='finetune' (got {method!r}): the labels come "
                f"from the classifier of model {pretrained.name!r}, and method='knn' or 'logreg' needs a labelled "
                "reference."
            )
            raise ValueError(msg)
        query_job = EmbeddingJob.prepare(adata, pretrained, layer=layer, use_raw=use_raw, **options)
        reference_job = None
    else:
        if labels_key is None:
            msg = "labels_key is required with a reference: the reference.obs column holding the labels."
            raise ValueError(msg)
        labels = _reference_labels(reference, labels_key)
        labelled = labels.notna().to_numpy()
        rows = None if labelled.all() else np.flatnonzero(labelled)  # read in place: a backed subset loads
        reference_job = _prepare_reference(
            reference, pretrained, layer=reference_layer, use_raw=reference_use_raw, rows=rows, **options
        )
        query_job = EmbeddingJob.prepare(adata, pretrained, layer=layer, use_raw=use_raw, **options)
        codes = pd.Categorical(labels[labelled])
        shared_genes = _warn_if_few_shared_genes(query_job, reference_job)
        if method == "knn" and n_neighbors > reference_job.n_cells:
            logger.warning(
                "n_neighbors=%d, but the reference has %d labelled cells: every query cell will vote over all of "
                "them, so the labels follow class sizes. Use a smaller n_neighbors or a larger reference.",
                n_neighbors,
                reference_job.n_cells,
            )
    if not copy:
        warn_if_replacing(
            adata,
            tool=TOOL,
            uns_key=key_added,
            obs_keys=[key_added, f"{key_added}_confidence"],
            is_rerun=_is_annotation,
            owner="no earlier pf.tl.annotate call",
        )
    backed_copy = read_backed_copy(adata, copy=copy)

    # every check passed: compute, then write
    details: dict[str, object] = {"method": method, "unknown_threshold": unknown_threshold}
    if reference_job is not None:
        details |= {
            "labels_key": labels_key,
            "reference_n_cells": int(reference_job.n_cells),
            "reference_layer": reference_job.layer,  # None (X) is left out of the record
            "reference_use_raw": True if reference_job.use_raw else None,
            "reference_genes": reference_job.match.summary(),
            "shared_genes": shared_genes,
        }
    if method in ("knn", "logreg"):  # zero-shot: both embedded with the same model
        reference_embedding = reference_job.run(device=device, progress=progress)
        query_embedding = query_job.run(device=device, progress=progress)
        if method == "knn":
            k = min(n_neighbors, reference_embedding.shape[0])
            neighbors, distances = _nearest_reference_cells(reference_embedding, query_embedding, k, seed=seed)
            winner, confidence = _weighted_vote(codes.codes[neighbors], distances, np.asarray(codes.categories))
            classes = np.asarray(codes.categories)
            details["n_neighbors"] = k
        else:
            probe = LinearProbe.fit(reference_embedding, codes.codes)
            probabilities = probe.probabilities(query_embedding)
            winner = probabilities.argmax(1)
            confidence = probabilities[np.arange(winner.size), winner]
            classes = np.asarray(codes.categories)[probe.classes]
    else:
        if reference_job is not None:
            from ..train import FineTuneConfig, finetune_classifier

            steps = {} if batch_size is None else {"batch_size": batch_size}  # else fine-tuning's own default
            config = FineTuneConfig(n_genes=query_job.n_genes, max_epochs=max_epochs, seed=seed, **steps)
            pretrained, history = finetune_classifier(
                pretrained,
                reference_job.cell_rows(),
                codes.codes,
                [str(c) for c in codes.categories],
                config=config,
                device=device,
                progress=progress,
            )
            query_job.model = pretrained
            details |= {
                "best_epoch": int(pretrained.info["classifier"]["best_epoch"]),  # -1: the linear probe
                "epochs": int((history["epoch"] >= 0).sum()),
            }
            if "validation_accuracy" in history:  # of the kept model (best validation loss), not the best epoch's
                kept = history.loc[history["epoch"] == details["best_epoch"], "validation_accuracy"].dropna()
                if len(kept):
                    details["validation_accuracy"] = float(kept.iloc[-1])
        probabilities = query_job.predict(device=device, progress=progress)
        if save_model is not None and reference_job is not None:  # after the prediction: a failed call saves nothing
            pretrained.save(save_model)
            details["saved_model"] = str(save_model)
        winner = probabilities.argmax(1)
        confidence = probabilities[np.arange(winner.size), winner]
        classes = np.asarray(pretrained.classes, dtype=object)

    target = result_target(adata, copy=copy, backed_copy=backed_copy)
    predicted = classes[winner].astype(object)
    predicted[confidence < unknown_threshold] = UNKNOWN
    # the reference's class order, but only the labels given: an empty category breaks scanpy's group-wise tools
    # (rank_genes_groups, dendrogram); the classes the cells could get are recorded in uns
    categories = list(dict.fromkeys([*classes, UNKNOWN]))
    target.obs[key_added] = pd.Categorical(predicted, categories=categories).remove_unused_categories()
    target.obs[f"{key_added}_confidence"] = confidence.astype(np.float32)
    # the reference's plot colours where it has them (query and reference plots then agree); colours of an
    # earlier column of this name would no longer fit its categories
    colors = _reference_colors(reference, labels_key, list(target.obs[key_added].cat.categories))
    if colors is None:
        target.uns.pop(f"{key_added}_colors", None)
    else:
        target.uns[f"{key_added}_colors"] = colors
    target.uns[key_added] = query_job.provenance(TOOL, **details) | {"classes": [str(c) for c in classes]}
    return target if copy else None
