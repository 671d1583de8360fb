"""Benchmark tasks: annotation, integration, pan-cancer classification; a registry other tasks plug into.

A task is a function ``(ctx, spec, methods) -> TaskResult``: ``ctx`` is the dataset's
:class:`~panfoma_sc.bench._baselines.MethodContext`, ``spec`` the dataset's configuration (label and batch
columns, options), ``methods`` the method names to run. :func:`register_task` adds a task (the multi-omics
task registers itself this way), so ``panfoma bench run`` picks it up from the config by name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ._baselines import CLASSIFIERS, EMBEDDERS, MethodContext, MethodSkipped
from ._embedding_eval import batch_correction, bio_conservation
from ._metrics import bootstrap_ci, classification_metrics, per_class_f1
from ._timing import measure

logger = logging.getLogger(__name__)

__all__ = ["TASKS", "TASK_METHODS", "TaskResult", "annotation", "integration", "pan_cancer", "register_task"]

#: scib-metrics' weighting of the overall score: 0.6 bio conservation + 0.4 batch correction.
SCIB_BIO_WEIGHT = 0.6


@dataclass
class TaskResult:
    """What a task produced on one dataset.

    Attributes
    ----------
    rows
        One dict per method: ``task``, ``method``, ``status`` (``ok``, ``skipped``, ``failed``), ``reason``,
        the metrics, ``seconds``, ``peak_memory_mb`` and the cell counts.
    per_class
        F1 per class and method (classification tasks): columns ``method``, ``class``, ``f1``, ``n_cells``.
    embeddings
        Embedding per method (integration), for UMAPs.
    """

    rows: list[dict] = field(default_factory=list)
    per_class: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["method", "class", "f1"]))
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)


TaskFunction = Callable[[MethodContext, Mapping, Sequence[str]], TaskResult]
TASKS: dict[str, TaskFunction] = {}
#: Method names each task accepts, checked when a config is loaded (tasks registered without them accept any).
TASK_METHODS: dict[str, Collection[str]] = {}


def register_task(name: str, function: TaskFunction | None = None, *, methods: Collection[str] | None = None):
    """Register a benchmark task under ``name`` (usable as a decorator).

    Parameters
    ----------
    name
        The name configs use (``tasks = ["annotation", ...]``).
    function
        ``(ctx, spec, methods) -> TaskResult``.
    methods
        The method names the task accepts, so that :func:`~panfoma_sc.bench.load_config` refuses a misspelt
        one before anything runs; ``None`` accepts any name (the task then reports unknown ones itself).

    Returns
    -------
    The function (or a decorator when ``function`` is omitted).

    Examples
    --------
    >>> @register_task("multiomics")  # doctest: +SKIP
    ... def multiomics(ctx, spec, methods): ...
    """

    def decorate(task: TaskFunction) -> TaskFunction:
        TASKS[name] = task
        if methods is not None:
            TASK_METHODS[name] = methods
        else:
            TASK_METHODS.pop(name, None)
        return task

    return decorate(function) if function is not None else decorate


def _run_method(method: str, function: Callable[[], np.ndarray], ctx: MethodContext):
    """Run one method; returns (result or None, row fields: status, reason, seconds, peak memory).

    A method that reuses embeddings computed earlier for the dataset (PanFoMa zero-shot, PCA) is charged
    their time and memory too, so every row holds the full cost of the method on its own.
    """
    reused = [key for key in CACHE_KEYS.get(method, ()) if key in ctx.cache]
    try:
        with measure() as cost:
            result = function()
    except MethodSkipped as err:
        return None, {"status": "skipped", "reason": str(err)}
    except Exception as err:  # one method failing must not stop the benchmark; the reason goes in the table
        logger.warning("Method %s failed: %s: %s", method, type(err).__name__, err)
        return None, {"status": "failed", "reason": f"{type(err).__name__}: {err}"}
    seconds, memory = cost["seconds"], cost["peak_memory_mb"]
    logger.info("%s: %.1f s, peak memory +%.0f MB.", method, seconds, memory)
    for key in reused:
        seconds += ctx.cache[key][1]["seconds"]
        memory = max(memory, ctx.cache[key][1]["peak_memory_mb"])
    return result, {"status": "ok", "reason": "", "seconds": seconds, "peak_memory_mb": memory}


def _used_settings(ctx: MethodContext) -> dict[str, object]:
    """The settings the methods applied since ``ctx.used`` was emptied: one value, or ``"low-high"`` (folds)."""
    row: dict[str, object] = {}
    for name, values in ctx.used.items():
        values = sorted(values)
        row[name] = values[0] if len(values) == 1 else f"{values[0]}-{values[-1]}"
    return row


def _run_and_score(
    task: str,
    ctx: MethodContext,
    methods: Sequence[str],
    registry: Mapping[str, Callable[[MethodContext, str], object]],
    batch_key: str,
    score: Callable[[object], dict[str, object]],
    counts: Mapping[str, int],
) -> TaskResult:
    """Run every method of ``registry`` named in ``methods`` and score its output.

    A method that fails or is skipped keeps its row with the reason; so does one whose scoring fails.
    ``counts`` (cells, batches) are added to the row of every method that produced an output; a dense output
    scored without error is kept for the figures.
    """
    result = TaskResult()
    for method in methods:
        if method not in registry:
            msg = f"Unknown {task} method {method!r}; available: {sorted(registry)}."
            raise ValueError(msg)
        row: dict[str, object] = {"task": task, "method": method}
        ctx.used.clear()
        output, fields = _run_method(method, lambda m=method: registry[m](ctx, batch_key), ctx)
        row |= fields | _used_settings(ctx)
        if output is not None:
            try:
                row |= score(output)
            except MethodSkipped as err:
                row |= {"status": "skipped", "reason": str(err)}
            except Exception as err:  # a scoring failure is recorded like a method failure
                logger.warning("Scoring %s failed: %s: %s", method, type(err).__name__, err)
                row |= {"status": "failed", "reason": f"scoring: {type(err).__name__}: {err}"}
            row |= counts
            if row["status"] == "ok" and isinstance(output, np.ndarray):
                result.embeddings[method] = np.asarray(output, dtype=np.float32)
        result.rows.append(row)
    return result


#: Methods that use embeddings cached per dataset, and their keys.
CACHE_KEYS: dict[str, tuple[str, ...]] = {
    "panfoma_knn": ("panfoma",),
    "panfoma_logreg": ("panfoma",),
    "panfoma": ("panfoma",),
    "pca": ("pca",),
    "harmony": ("pca",),
    # multi-omics: RNA PCA and protein PCA are shared by the PCA baselines
    "rna_pca": ("rna_pca",),
    "pca_concat": ("rna_pca", "protein_pca"),
    "wnn": ("rna_pca", "protein_pca"),
}


def _folds(obs: pd.DataFrame, cv: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(fold name, training cells, test cells): the build's split, or leave one split group out."""
    if cv == "split":
        split = obs["split"].astype(str).to_numpy()
        return [("test", np.flatnonzero(np.isin(split, ["train", "val"])), np.flatnonzero(split == "test"))]
    if cv == "leave_one_group_out":
        groups = obs["split_group"].astype(str).to_numpy()
        return [(g, np.flatnonzero(groups != g), np.flatnonzero(groups == g)) for g in np.unique(groups)]
    msg = f"cv must be 'split' or 'leave_one_group_out', got {cv!r}."
    raise ValueError(msg)


def _classification(task: str, ctx: MethodContext, spec: Mapping, methods: Sequence[str]) -> TaskResult:
    label_key = spec["label_key"]
    cv = spec.get("cv", "split")
    obs = ctx.adata.obs
    labels = obs[label_key].astype(str).to_numpy()
    groups = obs["split_group"].astype(str).to_numpy()
    folds = _folds(obs, cv)
    result = TaskResult()
    per_class = []
    unit = "cells" if obs["split_group"].nunique() < 2 or spec.get("split_unit") == "cells" else "groups"
    for method in methods:
        if method not in CLASSIFIERS:
            msg = f"Unknown classification method {method!r}; available: {sorted(CLASSIFIERS)}."
            raise ValueError(msg)
        truth, predicted, test_groups = [], [], []
        row: dict[str, object] = {"task": task, "method": method}
        totals = {"seconds": 0.0, "peak_memory_mb": 0.0}
        unseen = []
        ctx.used.clear()
        for fold, train, test in folds:
            if test.size == 0 or np.unique(labels[train]).size < 2:
                unseen.append(f"{fold}: too few training classes or no test cells")
                continue
            missing = sorted(set(labels[test]) - set(labels[train]))
            if missing:
                unseen.append(f"{fold}: test classes absent from training {missing}")
            fitted, fields = _run_method(
                method,
                lambda train=train, test=test, fit=CLASSIFIERS[method]: fit(ctx, train, test, labels[train]),
                ctx,
            )
            if fitted is None:
                row |= fields
                break
            totals["seconds"] += fields["seconds"]
            totals["peak_memory_mb"] = max(totals["peak_memory_mb"], fields["peak_memory_mb"])
            truth.append(labels[test])
            predicted.append(np.asarray(fitted).astype(str))
            test_groups.append(groups[test])
        else:
            if not truth:
                row |= {"status": "failed", "reason": "; ".join(unseen) or "no fold could run"}
            else:
                truth_all, predicted_all = np.concatenate(truth), np.concatenate(predicted)
                groups_all = np.concatenate(test_groups)
                row |= {"status": "ok", "reason": "; ".join(unseen)}
                row |= classification_metrics(truth_all, predicted_all)
                row |= bootstrap_ci(
                    truth_all,
                    predicted_all,
                    None if unit == "cells" else groups_all,
                    n_boot=int(spec.get("n_boot", 1000)),
                    seed=int(ctx.option("seed", 0)),
                )
                row |= totals | _used_settings(ctx)
                row["n_test_cells"] = int(truth_all.size)
                row["n_test_groups"] = int(np.unique(groups_all).size)
                row["n_folds"] = len(folds)
                scores = per_class_f1(truth_all, predicted_all)
                support = pd.Series(truth_all).value_counts()
                table = {"class": scores.index, "f1": scores.to_numpy(), "n_cells": support[scores.index].to_numpy()}
                per_class.append(pd.DataFrame({"method": method, **table}))
        row["n_train_cells"] = int(folds[0][1].size) if cv == "split" else None
        row["cv"] = cv
        result.rows.append(row)
    if per_class:
        result.per_class = pd.concat(per_class, ignore_index=True)
    return result


@register_task("annotation", methods=CLASSIFIERS)
def annotation(ctx: MethodContext, spec: Mapping, methods: Sequence[str]) -> TaskResult:
    """Cell-type annotation: fit on the train (and val) donors, predict the test donors.

    Accuracy and macro-F1 of the test cells, with bootstrap intervals over test donors (over cells when the
    split is by cells). ``spec``: ``label_key``, optional ``cv`` (``"split"`` or ``"leave_one_group_out"``)
    and ``n_boot``.
    """
    return _classification("annotation", ctx, spec, methods)


@register_task("pan_cancer", methods=CLASSIFIERS)
def pan_cancer(ctx: MethodContext, spec: Mapping, methods: Sequence[str]) -> TaskResult:
    """Pan-cancer classification of cells of held-out patients (leave one patient out by default).

    Every patient (split group) is predicted by a model fitted on the other patients, so each test patient,
    and with one patient per cancer type its cancer type too, is unseen. ``spec["label_key"]`` is what is
    classified, e.g. ``malignant`` (malignant vs normal) or ``cancer_type`` (only meaningful with several
    patients per type).
    """
    spec = {"cv": "leave_one_group_out", **spec}
    return _classification("pan_cancer", ctx, spec, methods)


@register_task("integration", methods=EMBEDDERS)
def integration(ctx: MethodContext, spec: Mapping, methods: Sequence[str]) -> TaskResult:
    """Batch integration scored with scib-metrics on every cell of the dataset.

    AvgBIO = mean(NMI, ARI, ASW_label), AvgBATCH = mean(ASW_batch, graph connectivity) (the PanFoMa paper's
    definitions; iLISI is reported beside them) and ``total = 0.6 AvgBIO + 0.4 AvgBATCH`` (scib's weighting).
    ``spec``: ``label_key`` and ``batch_key``.
    """
    label_key, batch_key = spec["label_key"], spec["batch_key"]
    labels = ctx.adata.obs[label_key].astype(str).to_numpy()
    batches = ctx.adata.obs[batch_key].astype(str).to_numpy()

    def score(embedding) -> dict[str, object]:
        bio = bio_conservation(embedding, labels)
        batch = batch_correction(embedding, batches, labels)
        total = SCIB_BIO_WEIGHT * bio["avg_bio"] + (1 - SCIB_BIO_WEIGHT) * batch["avg_batch"]
        return bio | batch | {"total": total}

    counts = {"n_cells": int(ctx.adata.n_obs), "n_batches": int(np.unique(batches).size)}
    return _run_and_score("integration", ctx, methods, EMBEDDERS, batch_key, score, counts)
