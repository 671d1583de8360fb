from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import panfoma_sc as pf


@pytest.mark.parametrize("seed", range(40))
def test_group_splits_never_share_a_donor(seed):
    rng = np.random.default_rng(seed)
    n_groups = int(rng.integers(2, 25))
    sizes = rng.integers(1, 80, n_groups)
    groups = rng.permutation(np.repeat([f"donor{i}" for i in range(n_groups)], sizes))
    split = pf.bench.split_groups(groups, seed=seed)
    table = pd.crosstab(groups, split)
    assert ((table > 0).sum(axis=1) == 1).all(), "a donor appears in two splits"
    present = set(split)
    assert {"train", "test"} <= present
    if n_groups >= 3:
        assert present == {"train", "val", "test"}
    else:
        assert "val" not in present


def test_group_split_is_deterministic_and_follows_the_fractions():
    groups = np.repeat([f"d{i}" for i in range(50)], 20)
    first = pf.bench.split_groups(groups, seed=3)
    assert (first == pf.bench.split_groups(groups, seed=3)).all()
    shares = pd.Series(first).value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.6, abs=0.05)
    assert shares["val"] == pytest.approx(0.2, abs=0.05)
    assert shares["test"] == pytest.approx(0.2, abs=0.05)


def test_test_groups_are_honoured():
    groups = np.repeat(["a", "b", "c", "d"], 5)
    split = pf.bench.split_groups(groups, test_groups=["c"])
    assert set(split[groups == "c"]) == {"test"}
    assert "test" not in set(split[groups != "c"])
    with pytest.raises(ValueError, match="not among the groups"):
        pf.bench.split_groups(groups, test_groups=["z"])
    with pytest.raises(ValueError, match="at least two groups"):
        pf.bench.split_groups(np.repeat(["a"], 5))


def test_cell_split_is_stratified_by_label():
    labels = np.repeat(["a", "b"], [100, 50])
    split = pf.bench.split_cells(150, labels=labels, seed=0)
    table = pd.crosstab(labels, split)
    assert table.loc["a", "test"] == 20
    assert table.loc["b", "test"] == 10
    assert table.loc["b", "train"] == 30


def test_group_column_prefers_donors_and_ignores_unknown_values():
    obs = pd.DataFrame(
        {
            "patient": ["unknown"] * 4,
            "batch": ["x", "x", "y", "y"],
            "donor_or_sample": ["p1", "p2", "p3", "p3"],
        }
    )
    assert pf.bench.group_column(obs) == ("donor_or_sample", "donor")
    assert pf.bench.group_column(obs[["patient", "batch"]]) == ("batch", "batch")
    assert pf.bench.group_column(obs[["patient"]]) == (None, "cells")
