from __future__ import annotations

import numpy as np

import panfoma_sc as pf


def _two_labels_two_batches(shift_batches: bool):
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b"], 100)
    batches = np.tile(["x", "y"], 100)
    data = rng.normal(size=(200, 8)) + 8.0 * (labels == "b")[:, None]
    if shift_batches:
        data[:, 1] += 8.0 * (batches == "y")
    return data.astype(np.float32), labels, batches


def test_batch_correction_rewards_mixed_batches():
    mixed = pf.bench.batch_correction(*_reordered(_two_labels_two_batches(False)))
    separated = pf.bench.batch_correction(*_reordered(_two_labels_two_batches(True)))
    for metric in ("asw_batch", "ilisi", "avg_batch"):
        assert mixed[metric] > separated[metric] + 0.1, metric
    assert set(mixed) == {"asw_batch", "ilisi", "graph_connectivity", "avg_batch"}


def test_bio_conservation_rewards_separated_labels():
    data, labels, _ = _two_labels_two_batches(False)
    good = pf.bench.bio_conservation(data, labels)
    shuffled = pf.bench.bio_conservation(data, np.random.default_rng(1).permutation(labels))
    assert good["avg_bio"] > shuffled["avg_bio"] + 0.3


def _reordered(triple):
    data, labels, batches = triple
    return data, batches, labels


def test_knn_transfer_from_a_reference_scores_the_query_only():
    embedding = np.array([[0.0], [1.0], [10.0], [11.0], [0.4], [10.4], [10.6]])
    labels = np.array(["a", "a", "b", "b", "a", "a", "b"])  # the query's second cell sits among the b's
    query = np.array([False] * 4 + [True] * 3)
    result = pf.bench.knn_transfer(embedding, labels, query=query, k=1)
    assert result["accuracy"] == 2 / 3  # predicted a, b, b
    assert np.isclose(result["macro_f1"], 2 / 3)  # F1 of a: 2/3, of b: 2/3
    with np.testing.assert_raises_regex(ValueError, "query must mark some but not all"):
        pf.bench.knn_transfer(embedding, labels, query=np.ones(7, dtype=bool))


def test_knn_transfer_folds_never_put_a_group_in_reference_and_query():
    embedding = np.array([[0.0], [0.1], [5.0], [5.1]])
    labels = np.array(["a", "b", "a", "b"])
    # within a group the nearest cell has the right label; from the other group one cell of two is wrong
    groups = np.array(["x", "x", "y", "y"])
    assert pf.bench.knn_transfer(embedding, labels, groups=groups, k=1)["accuracy"] == 0.5
