"""Cells of a training file kept out of pretraining (``exclude_cells``): never planned, read or counted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scanpy as sc

from panfoma_sc.cli import EXIT_BAD_INPUT, EXIT_OK, main
from panfoma_sc.train import (
    EVALUATION_HOLDOUT,
    EVALUATION_HOLDOUT_CELLS,
    PretrainingCorpus,
    TrainingConfig,
    build_vocabulary,
    check_resumable,
    default_excluded_cells,
    pretrain,
)


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory) -> list[Path]:
    """Two real files (scanpy's pbmc68k_reduced) with the cell-cycle phase in obs."""
    adata = sc.datasets.pbmc68k_reduced()
    adata = adata.raw.to_adata()
    folder = tmp_path_factory.mktemp("corpus")
    first, second = folder / "first.h5ad", folder / "second.h5ad"
    adata[:300].copy().write_h5ad(first)
    adata[300:460].copy().write_h5ad(second)
    return [first, second]


@pytest.fixture(scope="module")
def phases(corpus_files) -> np.ndarray:
    return sc.read_h5ad(corpus_files[0]).obs["phase"].astype(str).to_numpy()


@pytest.fixture(scope="module")
def vocab(corpus_files):
    return build_vocabulary(corpus_files, min_cells=1)


EXCLUDE = {"first": {"phase": ["S", "G2M"]}}


@pytest.mark.parametrize("block_rows", [1, 8])
def test_excluded_cells_are_never_planned_or_sampled(corpus_files, vocab, phases, block_rows):
    corpus = PretrainingCorpus(
        corpus_files, vocab, batch_size=16, block_rows=block_rows, cells_per_read=64, exclude_cells=EXCLUDE
    )
    training = np.flatnonzero(phases == "G1")
    planned = {0: [], 1: []}
    for file_index, rows in corpus.epoch_plan(0):
        planned[file_index].extend(rows.tolist())
    assert sorted(planned[0]) == training.tolist()  # every training cell once, no S or G2M cell
    assert sorted(planned[1]) == list(range(160))  # the other file whole
    sampled = np.concatenate([b.cell_keys for b in corpus.sample(1000) if b.file_index == 0])
    every_key = np.concatenate(
        [b.cell_keys for b in PretrainingCorpus(corpus_files, vocab, batch_size=16).sample(1000)]
    )
    assert set(sampled) == set(every_key[:300][training])
    assert corpus.n_cells == training.size + 160
    assert corpus.summary()[0]["n_cells_excluded"] == 300 - training.size
    read = [b for b in corpus.batches(0) if b.file_index == 0]
    assert sum(b.matrix.shape[0] for b in read) == training.size
    corpus.close()


def test_a_file_without_excluded_cells_keeps_the_plan_of_earlier_releases(corpus_files, vocab):
    plain = PretrainingCorpus(corpus_files[1:], vocab, batch_size=16, seed=2)
    named = PretrainingCorpus(corpus_files[1:], vocab, batch_size=16, seed=2, exclude_cells={})
    assert [r.tolist() for _, r in plain.epoch_plan(1)] == [r.tolist() for _, r in named.epoch_plan(1)]


def test_the_vocabulary_counts_training_cells_only(corpus_files, phases):
    first = sc.read_h5ad(corpus_files[0])
    cycling = first[phases != "G1"].X
    resting = first[phases == "G1"].X
    only_in_cycling = (np.asarray((cycling > 0).sum(0)).ravel() > 0) & (np.asarray((resting > 0).sum(0)).ravel() == 0)
    assert only_in_cycling.any(), "the fixture should hold genes seen only in S/G2M cells"
    everything = build_vocabulary(corpus_files[:1], min_cells=1)
    training = build_vocabulary(corpus_files[:1], min_cells=1, exclude_cells=EXCLUDE)
    left_out = set(first.var_names[only_in_cycling])
    assert left_out <= set(everything.symbols)
    assert not left_out & set(training.symbols)


@pytest.mark.parametrize(
    ("exclude", "message"),
    [
        ({"first": {"nope": ["S"]}}, r"obs\['nope'\], which the file lacks.*'phase'"),
        ({"first": {"phase": ["s"]}}, r"no cell has obs\['phase'\] in \['s'\].*Check the spelling"),
        ({"first": {"phase": ["G1", "S", "G2M"]}}, r"every cell is kept out"),
        ({"third": {"phase": ["S"]}}, r"names \['third'\], not among the training files"),
        ({"first": {"phase": "S"}}, r"give a non-empty list of values"),
        ({"first": {}}, r"non-empty \{obs column: \[values\]\}"),
    ],
)
def test_bad_exclusions_are_refused_with_the_fix(corpus_files, vocab, exclude, message):
    with pytest.raises(ValueError, match=message):
        PretrainingCorpus(corpus_files, vocab, batch_size=16, exclude_cells=exclude)


def test_the_training_config_checks_and_records_exclusions(corpus_files, vocab, tmp_path):
    with pytest.raises(ValueError, match=r"give a non-empty list of values"):
        TrainingConfig(exclude_cells={"first": {"phase": "S"}})
    overrides = {"d_model": 32, "n_heads": 4, "encoder_repeats": 1, "decoder_layers": 1, "d_state": 8, "headdim": 16}
    settings = {"model_overrides": overrides, "n_genes": 32, "batch_size": 8, "max_steps": 2, "warmup_steps": 0}
    config = TrainingConfig(**settings, exclude_cells={"first": {"phase": ("S", "G2M")}})
    pretrain(corpus_files, tmp_path, vocab=vocab, config=config, progress=False)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["config"]["exclude_cells"] == {"first": {"phase": ["S", "G2M"]}}
    with pytest.raises(ValueError, match=r"exclude_cells"):  # other held-out cells: another plan, no exact resume
        check_resumable(tmp_path, TrainingConfig(**settings), corpus_files)
    check_resumable(tmp_path, config, corpus_files)


def test_cli_excludes_cells_and_refuses_a_malformed_entry(corpus_files, tmp_path, capsys):
    out = tmp_path / "run"
    bad = ["pretrain", *map(str, corpus_files), "--out", str(out), "--exclude-cells", "first:phase"]
    assert main(bad) == EXIT_BAD_INPUT
    assert "FILE:COLUMN=VALUE" in capsys.readouterr().err
    assert not out.exists()
    args = ["pretrain", *map(str, corpus_files), "--out", str(out), "--steps", "1", "--warmup", "0", "--quiet"]
    args += ["--batch-size", "8", "--n-genes", "32", "--min-cells", "1", "--exclude-cells", "first.h5ad:phase=S,G2M"]
    assert main(args) == EXIT_OK
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["exclude_cells"] == {"first": {"phase": ["S", "G2M"]}}
    saved = json.loads((out / "vocab.json").read_text())
    assert saved == json.loads(build_vocabulary(corpus_files, min_cells=1, exclude_cells=EXCLUDE).to_json())


def test_default_exclusions_name_shared_files_that_are_pretraining_data():
    assert not set(EVALUATION_HOLDOUT_CELLS) & set(EVALUATION_HOLDOUT)  # split files are not held out whole
    files = [Path("data") / f"{stem}.h5ad" for stem in EVALUATION_HOLDOUT_CELLS] + [Path("data/other.h5ad")]
    assert default_excluded_cells(files) == EVALUATION_HOLDOUT_CELLS
    assert default_excluded_cells([Path("data/other.h5ad")]) == {}
