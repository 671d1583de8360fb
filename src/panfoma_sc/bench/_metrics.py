"""Classification metrics with bootstrap confidence intervals over donors (patients)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

__all__ = ["bootstrap_ci", "classification_metrics", "per_class_f1"]


def classification_metrics(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 (the mean F1 over the classes present in ``truth`` or ``predicted``).

    Parameters
    ----------
    truth, predicted
        Labels per cell.

    Returns
    -------
    ``accuracy`` and ``macro_f1``.
    """
    truth, predicted = np.asarray(truth).astype(str), np.asarray(predicted).astype(str)
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
    }


def per_class_f1(truth: np.ndarray, predicted: np.ndarray) -> pd.Series:
    """F1 of each true class (indexed by class, sorted).

    Parameters
    ----------
    truth, predicted
        Labels per cell.

    Returns
    -------
    F1 per class of ``truth``.
    """
    truth, predicted = np.asarray(truth).astype(str), np.asarray(predicted).astype(str)
    classes = np.unique(truth)
    scores = f1_score(truth, predicted, labels=classes, average=None, zero_division=0)
    return pd.Series(scores, index=classes, name="f1")


def bootstrap_ci(
    truth: np.ndarray,
    predicted: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, object]:
    """Percentile bootstrap intervals of accuracy and macro-F1, resampling whole donors.

    Each replicate draws as many donors as there are, with replacement, and scores the pooled cells of the
    drawn donors, so the interval reflects donor-to-donor variation. With fewer than two donors (or
    ``groups=None``) cells are resampled instead and the unit says so: such intervals ignore donor effects
    and are too narrow for new donors.

    Parameters
    ----------
    truth, predicted
        Labels per cell.
    groups
        Donor (patient) of each cell.
    n_boot
        Replicates.
    level
        Coverage of the interval.
    seed
        Random seed.

    Returns
    -------
    ``accuracy_low``, ``accuracy_high``, ``macro_f1_low``, ``macro_f1_high``, ``ci_unit`` (``"donors"`` or
    ``"cells"``) and ``ci_n_units``.
    """
    truth, predicted = np.asarray(truth).astype(str), np.asarray(predicted).astype(str)
    units = np.arange(truth.size) if groups is None else pd.factorize(np.asarray(groups).astype(str))[0]
    n_units = int(units.max()) + 1 if units.size else 0
    unit_name = "donors"
    if groups is None or n_units < 2:
        units, n_units, unit_name = np.arange(truth.size), truth.size, "cells"
    members = pd.Series(np.arange(truth.size)).groupby(units).apply(np.asarray).to_list()
    rng = np.random.default_rng(seed)
    scores = np.empty((n_boot, 2))
    for b in range(n_boot):
        drawn = rng.integers(0, n_units, n_units)
        cells = np.concatenate([members[u] for u in drawn]) if unit_name == "donors" else drawn
        metrics = classification_metrics(truth[cells], predicted[cells])
        scores[b] = metrics["accuracy"], metrics["macro_f1"]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(scores, [tail, 100 - tail], axis=0)
    return {
        "accuracy_low": float(low[0]),
        "accuracy_high": float(high[0]),
        "macro_f1_low": float(low[1]),
        "macro_f1_high": float(high[1]),
        "ci_unit": unit_name,
        "ci_n_units": int(n_units),
    }
