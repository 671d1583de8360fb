from __future__ import annotations

import numpy as np
import pytest

import panfoma_sc as pf


def test_accuracy_and_macro_f1_match_hand_computed_values():
    truth = np.array(["a", "a", "b", "b"])
    predicted = np.array(["a", "b", "b", "b"])
    # class a: precision 1/1, recall 1/2 -> F1 2/3; class b: precision 2/3, recall 2/2 -> F1 4/5
    scores = pf.bench.classification_metrics(truth, predicted)
    assert scores["accuracy"] == pytest.approx(0.75)
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    per_class = pf.bench.per_class_f1(truth, predicted)
    assert per_class.to_dict() == pytest.approx({"a": 2 / 3, "b": 0.8})


def test_macro_f1_counts_a_predicted_class_absent_from_truth():
    # a class that is only predicted (never true) has F1 0 and lowers the macro mean, as in sklearn
    scores = pf.bench.classification_metrics(np.array(["a", "a"]), np.array(["a", "c"]))
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)


def test_bootstrap_over_donors_resamples_whole_donors():
    truth = np.array(["a"] * 10 + ["b"] * 10)
    donors = np.repeat(["d1", "d2"], 10)
    perfect = pf.bench.bootstrap_ci(truth, truth, donors, n_boot=200)
    assert perfect["ci_unit"] == "donors"
    assert perfect["ci_n_units"] == 2
    assert perfect["accuracy_low"] == perfect["accuracy_high"] == 1.0
    # donor d2 entirely wrong: every replicate is either all d1 (1.0), all d2 (0.0) or both (0.5)
    predicted = np.array(["a"] * 10 + ["a"] * 10)
    ci = pf.bench.bootstrap_ci(truth, predicted, donors, n_boot=400, seed=1)
    assert ci["accuracy_low"] == pytest.approx(0.0)
    assert ci["accuracy_high"] == pytest.approx(1.0)
    again = pf.bench.bootstrap_ci(truth, predicted, donors, n_boot=400, seed=1)
    assert again == ci


def test_bootstrap_falls_back_to_cells_with_one_donor():
    rng = np.random.default_rng(0)
    truth = rng.choice(["a", "b"], 200)
    predicted = np.where(rng.random(200) < 0.8, truth, np.where(truth == "a", "b", "a"))
    ci = pf.bench.bootstrap_ci(truth, predicted, np.full(200, "only"), n_boot=300)
    assert ci["ci_unit"] == "cells"
    assert ci["ci_n_units"] == 200
    point = pf.bench.classification_metrics(truth, predicted)["accuracy"]
    assert ci["accuracy_low"] < point < ci["accuracy_high"]
    assert ci["accuracy_high"] - ci["accuracy_low"] < 0.2


def test_avg_batch_is_the_mean_of_batch_silhouette_and_graph_connectivity():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(120, 5)).astype(np.float32)
    labels = np.repeat(["a", "b", "c"], 40)
    data[:, 0] += 6 * (labels == "b") + 12 * (labels == "c")
    batches = np.tile(["x", "y"], 60)
    scores = pf.bench.batch_correction(data, batches, labels)
    assert scores["avg_batch"] == pytest.approx((scores["asw_batch"] + scores["graph_connectivity"]) / 2)
    bio = pf.bench.bio_conservation(data, labels)
    assert bio["avg_bio"] == pytest.approx((bio["nmi"] + bio["ari"] + bio["asw_label"]) / 3)
