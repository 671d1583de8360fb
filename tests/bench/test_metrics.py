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
