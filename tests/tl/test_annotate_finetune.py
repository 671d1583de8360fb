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
    assert set(predicted.cat.categories) == set(predicted.astype(str))
    assert set(query.uns["panfoma_label"]["classes"]) == set(reference.obs["cell_type"].unique())
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
        n_genes=32,  # not the base model's default (64): the saved model must keep it
        save_model=path,
        progress=False,
        copy=True,
    )
    pf.models.register("my-classifier", path)
    loaded = pf.models.load("my-classifier")
    assert loaded.classes == sorted(reference.obs["cell_type"].astype(str).unique())
    assert loaded.config.n_genes == 32 != pf.models.load(tiny_checkpoint).config.n_genes
    again = pf.tl.annotate(query, None, model="my-classifier", method="finetune", progress=False, copy=True)
    with pytest.raises(
        ValueError, match=r"reference=None with a fine-tuned model needs method='finetune' \(got 'knn'\)"
    ):
        pf.tl.annotate(query, None, model="my-classifier", method="knn", progress=False, copy=True)
    # without a reference the method defaults to the fine-tuned classifier
    default = pf.tl.annotate(query, model="my-classifier", progress=False, copy=True)
    np.testing.assert_array_equal(default.obs["panfoma_label"], again.obs["panfoma_label"])
    np.testing.assert_array_equal(again.obs["panfoma_label"], first.obs["panfoma_label"])
    np.testing.assert_allclose(again.obs["panfoma_label_confidence"], first.obs["panfoma_label_confidence"], atol=1e-6)


def test_a_failed_prediction_leaves_no_saved_model_and_no_labels(split, tiny_checkpoint, tmp_path, monkeypatch):
    reference, query = split
    before = query.copy()
    path = tmp_path / "classifier.safetensors"

    def fail(self, **kwargs):
        raise RuntimeError("prediction failed")

    monkeypatch.setattr(EmbeddingJob, "predict", fail)
    options = {"labels_key": "cell_type", "model": tiny_checkpoint, "method": "finetune", "max_epochs": 1}
    with pytest.raises(RuntimeError, match="prediction failed"):
        pf.tl.annotate(query, reference, save_model=path, progress=False, **options)
    assert not path.exists()
    assert_equal(query, before)


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
    with pytest.raises(ValueError, match=r"fine-tuned model's classes, and model .* has none"):
        pf.tl.annotate(query, None, model=tiny_checkpoint, method="finetune", progress=False)
    with pytest.raises(ValueError, match=r"labels_key='cell_type' names a column of the reference, but reference=None"):
        pf.tl.annotate(query, None, labels_key="cell_type", model=tiny_checkpoint, method="finetune", progress=False)
    with pytest.raises(ValueError, match="labels_key is required"):
        pf.tl.annotate(query, query, model=tiny_checkpoint, progress=False)
    assert_equal(query, before)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        pytest.param("short", r"labels has shape \(107,\), but there are 108 cells", id="short"),
        pytest.param("missing", r"lie in 0\.\.8 \(len\(classes\) is 9\), got values from -1 .* missing", id="missing"),
        pytest.param("too large", r"lie in 0\.\.8 \(len\(classes\) is 9\), got values from 0 to 9", id="too-large"),
        pytest.param("strings", r"labels must be integer codes, got dtype .*pd\.Categorical", id="strings"),
    ],
)
def test_finetune_classifier_refuses_labels_that_do_not_fit_before_any_training(
    pbmc_sorted, tiny_checkpoint, monkeypatch, labels, expected
):
    import panfoma_sc.train._finetune as finetune

    model = pf.models.load(tiny_checkpoint)
    cells = EmbeddingJob.prepare(pbmc_sorted, model).cell_rows()
    categories = pbmc_sorted.obs["cell_type"].astype("category")
    codes = categories.cat.codes.to_numpy().astype(np.int64)
    classes = [str(c) for c in categories.cat.categories]
    bad = {
        "short": codes[1:],
        "missing": np.where(np.arange(codes.size) == 3, -1, codes),
        "too large": np.where(np.arange(codes.size) == 3, len(classes), codes),
        "strings": categories.astype(str).to_numpy(),
    }[labels]

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(finetune, "_fresh_network", no_training)
    with pytest.raises(ValueError, match=expected):
        finetune_classifier(model, cells, bad, classes, progress=False)
    with pytest.raises(ValueError, match=r"batches must lie in 0\.\.1 \(n_batches is 2\)"):
        finetune.finetune_integration(model, cells, codes, 2, progress=False)


def _versioned(tiny_checkpoint, version: str):
    """The tiny checkpoint, as a release carrying a version number in its provenance."""
    model = pf.models.load(tiny_checkpoint)
    model.checkpoint.info["version"] = version
    return model


def test_a_fine_tuned_model_records_its_base_model_and_settings(split, tiny_checkpoint, tmp_path):
    reference, query = split
    base = _versioned(tiny_checkpoint, "3.1")
    path = tmp_path / "classifier.safetensors"
    pf.tl.annotate(
        query,
        reference,
        labels_key="cell_type",
        model=base,
        method="finetune",
        max_epochs=1,
        save_model=path,
        progress=False,
        seed=2,
    )
    params = query.uns["panfoma_label"]["params"]
    assert params["fine_tuned_from"] == base.sha256
    assert params["fine_tuned_from_name"] == "tiny-random"
    assert params["fine_tuned_from_version"] == "3.1"
    assert params["fine_tuning"]["max_epochs"] == 1
    assert params["fine_tuning"]["seed"] == 2
    assert params["sha256"] == pf.models.sha256sum(path)
    query.write_h5ad(tmp_path / "annotated.h5ad")  # every recorded value can be stored
    described = pf.models.describe(path)
    assert described["fine_tuned_from"] == {"name": "tiny-random", "version": "3.1", "sha256": base.sha256}
    assert described["fine_tuning"]["max_epochs"] == 1
    assert described["fine_tuning"]["learning_rate"] == FineTuneConfig().learning_rate
    assert described["classifier"]["n_cells"] == reference.n_obs
    again = pf.tl.annotate(query, None, model=path, method="finetune", progress=False, copy=True)
    assert again.uns["panfoma_label"]["params"]["fine_tuned_from_version"] == "3.1"


def test_a_model_fine_tuned_before_the_base_version_was_recorded_still_loads(split, tiny_checkpoint, tmp_path):
    reference, query = split
    tuned, _ = finetune_classifier(
        pf.models.load(tiny_checkpoint),
        EmbeddingJob.prepare(reference, pf.models.load(tiny_checkpoint)).cell_rows(),
        reference.obs["cell_type"].astype("category").cat.codes.to_numpy(),
        [str(c) for c in reference.obs["cell_type"].astype("category").cat.categories],
        config=FineTuneConfig(max_epochs=1, probe_steps=10),
        progress=False,
    )
    old = {"name": "tiny-random-classifier", "fine_tuned_from": {"name": "tiny-random", "sha256": "ab" * 32}}
    tuned.checkpoint.info = old | {"classifier": tuned.info["classifier"]}  # as earlier releases wrote it
    path = tmp_path / "old-classifier.safetensors"
    tuned.save(path)
    pf.tl.annotate(query, None, model=path, method="finetune", progress=False)
    params = query.uns["panfoma_label"]["params"]
    assert params["fine_tuned_from"] == "ab" * 32
    assert params["fine_tuned_from_name"] == "tiny-random"
    assert "fine_tuned_from_version" not in params
    assert "fine_tuning" not in params
    assert pf.models.describe(path)["fine_tuned_from"] == old["fine_tuned_from"]
