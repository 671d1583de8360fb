"""Train/validation/test splits by donor (patient, sample, study): no group in two splits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = [
    "BATCH_COLUMNS",
    "DONOR_COLUMNS",
    "MISSING_VALUES",
    "group_column",
    "known_values",
    "split_cells",
    "split_groups",
]

#: obs columns naming the donor/patient, in order of preference.
DONOR_COLUMNS: tuple[str, ...] = (
    "donor",
    "donor_id",
    "patient",
    "patient_id",
    "individual",
    "subject",
    "donor_or_sample",
)
#: obs columns naming a sample, batch or study: the split unit when no donor is known.
BATCH_COLUMNS: tuple[str, ...] = (
    "sample",
    "sample_id",
    "batch",
    "study",
    "dataset",
    "library",
    "donor_lane",
    "sample_lane",
    "library_suffix",
)
#: Values that mean "not known".
MISSING_VALUES = frozenset({"", "nan", "none", "na", "unknown", "n/a"})

SPLITS = ("train", "val", "test")


def known_values(values: pd.Series) -> pd.Series:
    """``values`` as stripped strings, NaN where missing (NaN, empty, or a word such as ``unknown`` or ``n/a``)."""
    text = values.astype(str).str.strip()
    return text.where(~text.str.lower().isin(MISSING_VALUES) & values.notna())


def group_column(
    obs: pd.DataFrame, *, donor_key: str | None = None, batch_key: str | None = None, min_groups: int = 2
) -> tuple[str | None, str]:
    """Pick the column whose values are the split unit.

    A donor column is preferred, then a sample/batch/study column; a column counts when every cell has a
    known value and it has at least ``min_groups`` of them.

    Parameters
    ----------
    obs
        Cell metadata.
    donor_key, batch_key
        Columns to try first (donor before batch); the defaults :data:`DONOR_COLUMNS` and
        :data:`BATCH_COLUMNS` follow.
    min_groups
        Distinct values a column needs.

    Returns
    -------
    The column (``None`` when none qualifies) and the unit: ``"donor"``, ``"batch"`` or ``"cells"``.
    """
    donors = [donor_key] if donor_key else []
    batches = [batch_key] if batch_key else []
    for unit, candidates in (("donor", [*donors, *DONOR_COLUMNS]), ("batch", [*batches, *BATCH_COLUMNS])):
        for column in candidates:
            if column in obs.columns:
                known = known_values(obs[column])
                if known.notna().all() and known.nunique() >= min_groups:
                    return column, unit
    return None, "cells"


def split_groups(
    groups: Sequence[str] | np.ndarray,
    *,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    test_groups: Sequence[str] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Assign whole groups (donors) to train, val and test.

    Groups are shuffled with ``seed``; test, then train, then (with three groups or more) val each get one
    group, and the rest go one by one to the split furthest below its target share of cells. With two
    groups there is no validation split.

    Parameters
    ----------
    groups
        Group of each cell.
    fractions
        Target shares of cells in train, val and test.
    test_groups
        Groups to put in test, overriding the draw (the rest are shared between train and val).
    seed
        Shuffling seed.

    Returns
    -------
    ``"train"``, ``"val"`` or ``"test"`` per cell; a group never appears in two splits.
    """
    groups = np.asarray(groups).astype(str)
    sizes = pd.Series(groups).value_counts()
    names = sizes.index.to_numpy()
    if len(names) < 2:
        msg = f"Splitting by group needs at least two groups, got {list(names)}; split by cells instead."
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(np.sort(names)))
    target = np.asarray(fractions, dtype=float) / np.sum(fractions) * len(groups)
    assigned: dict[str, str] = {}
    if test_groups is not None:
        missing = sorted(set(map(str, test_groups)) - set(names))
        if missing:
            msg = f"test_groups {missing} are not among the groups {sorted(names)}."
            raise ValueError(msg)
        assigned = dict.fromkeys(map(str, test_groups), "test")
        order = [g for g in order if g not in assigned]
        if not order:
            msg = "test_groups holds every group: nothing is left to train on."
            raise ValueError(msg)
        seeds = ["train", "val"] if len(order) >= 2 and fractions[1] > 0 else ["train"]
    else:
        seeds = ["test", "train", "val"] if len(names) >= 3 and fractions[1] > 0 else ["test", "train"]
    for split in seeds:
        assigned[order.pop(0)] = split
    filled = np.zeros(3)
    for group, split in assigned.items():
        filled[SPLITS.index(split)] += sizes[group]
    allowed = [i for i, s in enumerate(SPLITS) if s in seeds or (s == "test" and test_groups is None)]
    for group in order:
        deficit = target - filled
        best = max(allowed, key=lambda i: deficit[i])
        assigned[group] = SPLITS[best]
        filled[best] += sizes[group]
    return np.asarray([assigned[g] for g in groups])


def split_cells(
    n_cells: int,
    *,
    labels: Sequence[str] | np.ndarray | None = None,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> np.ndarray:
    """Random train/val/test split of cells (stratified by ``labels`` when given), for data without donors.

    Parameters
    ----------
    n_cells
        Number of cells.
    labels
        Optional label of each cell; each label is split in the same proportions.
    fractions
        Shares of train, val and test.
    seed
        Random seed.

    Returns
    -------
    ``"train"``, ``"val"`` or ``"test"`` per cell.
    """
    rng = np.random.default_rng(seed)
    shares = np.asarray(fractions, dtype=float) / np.sum(fractions)
    strata = np.zeros(n_cells, dtype=int) if labels is None else pd.factorize(np.asarray(labels).astype(str))[0]
    out = np.empty(n_cells, dtype=object)
    for stratum in np.unique(strata):
        cells = rng.permutation(np.flatnonzero(strata == stratum))
        cut = np.round(np.cumsum(shares) * cells.size).astype(int)
        out[cells[: cut[0]]] = "train"
        out[cells[cut[0] : cut[1]]] = "val"
        out[cells[cut[1] :]] = "test"
    return out.astype(str)
