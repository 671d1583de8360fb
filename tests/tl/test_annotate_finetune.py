from __future__ import annotations

import numpy as np
import pytest
from anndata.tests.helpers import assert_equal

import panfoma_sc as pf
from panfoma_sc.tl._embedding_job import EmbeddingJob
from panfoma_sc.train import FineTuneConfig, finetune_classifier


@pytest.fixture
def split(pbmc_sorted):
    order = np.arange(pbmc_sorted.n_obs)
    return pbmc_sorted[order % 3 != 0].copy(), pbmc_sorted[order % 3 == 0].copy()


def test_finetune_annotation_writes_labels_and_provenance(split, tiny_checkpoint):
    reference, query = split
    reference_before = reference.copy()
    pf.tl.annotate(
        query,
        reference,
        labels_key="cell_type",
        model=tiny_checkpoint,
        method="finetune",
        max_epochs=2,
        unknown_threshold=0,
        progress=False,
    )
    assert_equal(reference, reference_before)
    predicted = query.obs["panfoma_label"]
    assert set(predicted.cat.categories) == set(reference.obs["cell_type"].unique()) | {"Unknown"}
    confidence = query.obs["panfoma_label_confidence"].to_numpy()
    assert ((confidence > 0) & (confidence <= 1)).all()
    params = query.uns["panfoma_label"]["params"]
    assert params["method"] == "finetune"
    assert params["epochs"] <= 2
    assert params["fine_tuned_from"] == pf.models.load(tiny_checkpoint).sha256


def test_saved_classifier_predicts_the_same_and_registers(split, tiny_checkpoint, tmp_path):
    reference, query = split
    path = tmp_path / "classifier.safetensors"
    first = pf.tl.annotate(
        query,
        reference,
        labels_key="cell_type",
        model=tiny_checkpoint,
        method="finetune",
        max_epochs=1,
        save_model=path,
        progress=False,
        copy=True,
    )
    pf.models.register("my-classifier", path)
    loaded = pf.models.load("my-classifier")
    assert loaded.classes == sorted(reference.obs["cell_type"].astype(str).unique())
    again = pf.tl.annotate(query, None, model="my-classifier", method="finetune", progress=False, copy=True)
    np.testing.assert_array_equal(again.obs["panfoma_label"], first.obs["panfoma_label"])
    np.testing.assert_allclose(again.obs["panfoma_label_confidence"], first.obs["panfoma_label_confidence"], atol=1e-6)


def test_finetuning_fits_the_reference_labels(pbmc_sorted, tiny_checkpoint):
    model = pf.models.load(tiny_checkpoint)
    job = EmbeddingJob.prepare(pbmc_sorted, model)
    codes = pbmc_sorted.obs["cell_type"].astype("category").cat.codes.to_numpy()
    classes = list(pbmc_sorted.obs["cell_type"].astype("category").cat.categories)
    config = FineTuneConfig(
        max_epochs=8, learning_rate=1e-3, head_learning_rate=3e-3, validation_fraction=0, probe_steps=0
    )
    tuned, history = finetune_classifier(model, job.cell_rows(), codes, classes, config=config, progress=False)
    assert (history["epoch"] >= 0).all()  # no linear probe asked for
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    job.model = tuned
    accuracy = (job.predict(progress=False).argmax(1) == codes).mean()
    assert accuracy > 0.25  # 9 balanced classes (several similar T-cell subsets): chance is 0.11
    assert pf.models.load(tiny_checkpoint).classes is None  # the starting model is untouched


def test_linear_probe_comes_first_and_fine_tuning_is_kept_only_where_it_beats_it(pbmc_sorted, tiny_checkpoint):
    model = pf.models.load(tiny_checkpoint)
    job = EmbeddingJob.prepare(pbmc_sorted, model)
    codes = pbmc_sorted.obs["cell_type"].astype("category").cat.codes.to_numpy()
    classes = list(pbmc_sorted.obs["cell_type"].astype("category").cat.categories)
    config = FineTuneConfig(max_epochs=2, learning_rate=1e-3, probe_steps=200)
    tuned, history = finetune_classifier(model, job.cell_rows(), codes, classes, config=config, progress=False)
    probe = history.iloc[0]
    assert probe["epoch"] == -1
    assert probe["step"] == 0
    assert list(history["epoch"].iloc[1:]) == [0, 1]
    best_epoch = tuned.info["classifier"]["best_epoch"]
    best = history.loc[history["epoch"] == best_epoch].iloc[0]
    assert best["validation_loss"] == history["validation_loss"].min()
    assert best["validation_loss"] <= probe["validation_loss"]
    # even on this random-weight test checkpoint the probe beats chance (9 classes: 0.11) on sorted populations
    assert probe["validation_accuracy"] > 0.25
    with pytest.raises(ValueError, match="probe_steps"):
        FineTuneConfig(probe_steps=-1)


def test_reference_none_needs_a_classifier(split, tiny_checkpoint):
    _, query = split
    before = query.copy()
    with pytest.raises(ValueError, match="fine-tuned classifier"):
        pf.tl.annotate(query, None, model=tiny_checkpoint, method="finetune", progress=False)
    with pytest.raises(ValueError, match="labels_key is required"):
        pf.tl.annotate(query, query, model=tiny_checkpoint, progress=False)
    assert_equal(query, before)
