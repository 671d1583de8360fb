"""``PretrainingCorpus``: epoch plans (single rows or blocks), reads grouped per file, ranks and resume."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from safetensors.numpy import load_file

from panfoma_sc.data import GeneVocabulary
from panfoma_sc.train import PretrainingCorpus, TrainingConfig, build_vocabulary, check_resumable, pretrain


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory) -> list[Path]:
    """Two real files of different sizes (scanpy's pbmc68k_reduced), one gzip-compressed."""
    adata = sc.datasets.pbmc68k_reduced().raw.to_adata()
    folder = tmp_path_factory.mktemp("corpus")
    first, second = folder / "first.h5ad", folder / "second.h5ad"
    adata[:300].copy().write_h5ad(first)
    adata[300:473].copy().write_h5ad(second, compression="gzip")
    return [first, second]


@pytest.fixture(scope="module")
def vocab(corpus_files) -> GeneVocabulary:
    return build_vocabulary(corpus_files, min_cells=1)


def _plan_of_earlier_releases(n_cells: list[int], batch_size: int, seed: int, epoch: int) -> list[tuple[int, list]]:
    """The single-row plan as panfoma-tiny was trained with: rows shuffled per file, batches shuffled together."""
    rng = np.random.default_rng([seed, epoch])
    plan = []
    for index, n in enumerate(n_cells):
        rows = rng.permutation(n)
        plan.extend((index, sorted(rows[s : s + batch_size].tolist())) for s in range(0, n, batch_size))
    return [plan[i] for i in rng.permutation(len(plan))]


def _as_lists(plan) -> list[tuple[int, list]]:
    return [(index, rows.tolist()) for index, rows in plan]


def test_the_default_plan_is_the_plan_of_earlier_releases(corpus_files, vocab):
    corpus = PretrainingCorpus(corpus_files, vocab, batch_size=16, seed=3)
    for epoch in (0, 1):
        assert _as_lists(corpus.epoch_plan(epoch)) == _plan_of_earlier_releases([300, 173], 16, 3, epoch)
    corpus.close()


@pytest.mark.parametrize("block_rows", [1, 8])
def test_batches_hold_the_planned_cells_as_a_read_of_each_batch_alone_would(corpus_files, vocab, block_rows):
    corpus = PretrainingCorpus(corpus_files, vocab, batch_size=16, block_rows=block_rows, cells_per_read=64)
    plan = corpus.epoch_plan(0)
    batches = list(corpus.batches(0))
    assert len(batches) == len(plan)
    sources = [ad.read_h5ad(f) for f in corpus_files]
    for (file_index, rows), batch in zip(plan, batches, strict=True):
        assert batch.file_index == file_index
        match = corpus._matches[file_index]
        expected = sources[file_index].X[rows][:, match.columns]
        assert batch.matrix.shape == expected.shape
        assert (batch.matrix != expected).nnz == 0
        np.testing.assert_array_equal(batch.gene_ids, match.gene_ids)
        np.testing.assert_array_equal(batch.cell_keys, corpus._keys[file_index][rows])
    corpus.close()


def test_block_plans_cover_every_cell_once_in_reads_of_few_blocks(corpus_files, vocab, tmp_path):
    corpus = PretrainingCorpus(corpus_files, vocab, batch_size=16, block_rows=8, cells_per_read=64, seed=1)
    plan = corpus.epoch_plan(0)
    for file_index, n_cells in enumerate((300, 173)):
        rows = np.concatenate([r for i, r in plan if i == file_index])
        assert sorted(rows.tolist()) == list(range(n_cells))
    assert all(rows.size <= 16 and np.all(np.diff(rows) > 0) for _, rows in plan)
    # a pure function of (seed, epoch)
    assert _as_lists(plan) == _as_lists(corpus.epoch_plan(0))
    assert _as_lists(plan) != _as_lists(corpus.epoch_plan(1))
    corpus.close()

    # 256 cells: 4 whole reads of 4 batches, each drawn from 64 / 8 = 8 blocks of 8 rows
    ad.read_h5ad(corpus_files[0])[:256].copy().write_h5ad(tmp_path / "even.h5ad")
    even = PretrainingCorpus([tmp_path / "even.h5ad"], vocab, batch_size=16, block_rows=8, cells_per_read=64)
    plan = even.epoch_plan(0)  # the 4 reads' batches dealt in turn (interleave=4): read j is plan[j::4]
    reads = [np.concatenate([rows for _, rows in plan[j::4]]) for j in range(4)]
    assert [np.unique(read // 8).size for read in reads] == [8, 8, 8, 8]
    assert sorted(np.concatenate(reads).tolist()) == list(range(256))
    assert all(np.unique(rows // 8).size > 1 for _, rows in plan)  # cells of a read are shuffled among its batches
    in_turn = PretrainingCorpus(
        [tmp_path / "even.h5ad"], vocab, batch_size=16, block_rows=8, cells_per_read=64, interleave=1
    ).epoch_plan(0)  # one read after the other
    assert [np.unique(np.concatenate([r for _, r in in_turn[s : s + 4]]) // 8).size for s in range(0, 16, 4)] == [8] * 4
    # single-row shuffling spreads 64 cells over about 30 of the 8-row blocks
    single = PretrainingCorpus([tmp_path / "even.h5ad"], vocab, batch_size=16).epoch_plan(0)
    assert min(np.unique(np.concatenate([r for _, r in single[s : s + 4]]) // 8).size for s in range(0, 16, 4)) > 16
    even.close()


def test_consecutive_block_batches_switch_between_files(corpus_files, vocab):
    corpus = PretrainingCorpus(corpus_files, vocab, batch_size=16, block_rows=8, cells_per_read=64, interleave=4)
    files = [file_index for file_index, _ in corpus.epoch_plan(0)]
    one_read_at_a_time = PretrainingCorpus(
        corpus_files, vocab, batch_size=16, block_rows=8, cells_per_read=64, interleave=1
    )
    files_in_turn = [file_index for file_index, _ in one_read_at_a_time.epoch_plan(0)]
    corpus.close()
    one_read_at_a_time.close()
    switches = sum(a != b for a, b in itertools.pairwise(files))
    switches_in_turn = sum(a != b for a, b in itertools.pairwise(files_in_turn))
    assert switches_in_turn < 8  # 5 reads of the first file, 3 of the second, each read's batches in a row
    assert switches > 2 * switches_in_turn


@pytest.mark.parametrize("block_rows", [1, 8])
def test_ranks_get_equal_disjoint_shares_and_resume_mid_read(corpus_files, vocab, block_rows):
    corpus = PretrainingCorpus(corpus_files, vocab, batch_size=16, block_rows=block_rows, cells_per_read=64)
    whole = corpus.epoch_plan(2)
    shares = [corpus.epoch_plan(2, rank=rank, world=3) for rank in range(3)]
    assert len({len(share) for share in shares}) == 1
    assert len(shares[0]) == len(whole) // 3
    dealt = [batch for step in zip(*shares, strict=True) for batch in step]
    assert _as_lists(dealt) == _as_lists(whole[: len(dealt)])
    full = list(corpus.batches(2, rank=1, world=3))
    resumed = list(corpus.batches(2, start=5, rank=1, world=3))
    assert len(resumed) == len(full) - 5
    for a, b in zip(full[5:], resumed, strict=True):
        assert a.file_index == b.file_index
        assert (a.matrix != b.matrix).nnz == 0
        np.testing.assert_array_equal(a.cell_keys, b.cell_keys)
    corpus.close()


def test_consecutive_batches_of_a_file_are_read_together(corpus_files, vocab, monkeypatch):
    from panfoma_sc.train import _corpus

    reads = []
    original = _corpus.iter_row_blocks

    def counted(matrix, block_size, columns=None, rows=None):
        reads.append(len(rows))
        return original(matrix, block_size, columns=columns, rows=rows)

    monkeypatch.setattr(_corpus, "iter_row_blocks", counted)
    corpus = PretrainingCorpus(corpus_files, vocab, batch_size=16, block_rows=8, cells_per_read=64)
    n_batches = sum(1 for _ in corpus.batches(0))
    corpus.close()
    assert sum(reads) == 473
    assert max(reads) <= 64
    assert len(reads) <= -(-300 // 64) + -(-173 // 64) + 2  # one read per 64 cells of a file, give or take
    assert len(reads) < n_batches / 3


@pytest.mark.parametrize(
    ("setting", "value"),
    [("block_rows", 0), ("cells_per_read", 0), ("block_rows", 2.5), ("batch_size", 0), ("interleave", 0)],
)
def test_corpus_settings_that_cannot_read_are_refused(corpus_files, vocab, setting, value):
    options = {"batch_size": 16, setting: value}
    with pytest.raises(ValueError, match=rf"{setting}={value!r}: use an integer >= 1"):
        PretrainingCorpus(corpus_files, vocab, **options)
    with pytest.raises(ValueError, match=rf"TrainingConfig.{setting} must be an integer >= 1"):
        TrainingConfig(**{setting: value})


def test_a_training_file_stored_by_column_is_refused_naming_it(corpus_files, vocab, tmp_path):
    """Backed CSC would be read whole for every batch: the corpus and the file check refuse it up front."""
    from scipy import sparse

    from panfoma_sc.train import check_training_files

    adata = ad.read_h5ad(corpus_files[0])
    adata.X = sparse.csc_matrix(adata.X)
    column_major = tmp_path / "by_column.h5ad"
    adata.write_h5ad(column_major)
    message = r"X of training file .*by_column.h5ad' is a backed CSC .* Store it as CSR once: .*adata.X.tocsr\(\)"
    with pytest.raises(ValueError, match=message):
        PretrainingCorpus([corpus_files[1], column_major], vocab, batch_size=16)
    with pytest.raises(ValueError, match=message) as error:
        check_training_files([corpus_files[1], column_major])
    assert "raw counts" not in str(error.value)  # not the advice for values that are not counts


def test_block_shuffled_pretraining_resumes_bit_identically(corpus_files, vocab, tmp_path):
    tiny = {"d_model": 32, "n_heads": 4, "encoder_repeats": 1, "decoder_layers": 1, "n_genes": 32, "n_chunks": 4}
    tiny |= {"d_state": 8, "headdim": 16, "ssd_chunk_size": 16}
    options = {"model_overrides": tiny, "n_genes": 32, "batch_size": 16, "max_steps": 5, "warmup_steps": 1}
    options |= {"block_rows": 8, "cells_per_read": 64, "checkpoint_every": 100, "device": "cpu"}
    straight = pretrain(corpus_files, tmp_path / "a", vocab=vocab, config=TrainingConfig(**options), progress=False)
    pretrain(corpus_files, tmp_path / "b", vocab=vocab, config=TrainingConfig(**options, stop_after=2), progress=False)
    resumed = pretrain(corpus_files, tmp_path / "b", vocab=vocab, config=TrainingConfig(**options), progress=False)
    assert straight["steps"] == resumed["steps"] == 5
    weights_a = load_file(tmp_path / "a" / "model.safetensors")
    weights_b = load_file(tmp_path / "b" / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        np.testing.assert_array_equal(weights_a[key], weights_b[key], err_msg=key)
    saved = json.loads((tmp_path / "a" / "run.json").read_text())["config"]
    assert (saved["block_rows"], saved["cells_per_read"]) == (8, 64)
    with pytest.raises(ValueError, match=r"block_rows: 8 -> 1"):
        check_resumable(tmp_path / "b", TrainingConfig(**(options | {"block_rows": 1})), corpus_files)


def test_a_run_started_before_a_setting_existed_resumes_with_its_default(corpus_files, vocab, tmp_path):
    tiny = {"d_model": 32, "n_heads": 4, "encoder_repeats": 1, "decoder_layers": 1, "n_genes": 32, "n_chunks": 4}
    tiny |= {"d_state": 8, "headdim": 16, "ssd_chunk_size": 16}
    config = TrainingConfig(model_overrides=tiny, n_genes=32, batch_size=16, max_steps=3, device="cpu")
    pretrain(corpus_files, tmp_path, vocab=vocab, config=TrainingConfig(**(config.to_dict() | {"stop_after": 1})))
    run_file = tmp_path / "run.json"
    run = json.loads(run_file.read_text())
    for name in ("block_rows", "cells_per_read", "interleave"):  # as an older release wrote run.json
        del run["config"][name]
    run_file.write_text(json.dumps(run))
    check_resumable(tmp_path, config, corpus_files)  # does not raise
    with pytest.raises(ValueError, match=r"block_rows: 1 -> 16"):
        check_resumable(tmp_path, TrainingConfig(**(config.to_dict() | {"block_rows": 16})), corpus_files)


def test_resuming_with_another_number_of_processes_or_over_a_lone_model_is_refused(
    corpus_files, vocab, tmp_path, monkeypatch
):
    tiny = {"d_model": 32, "n_heads": 4, "encoder_repeats": 1, "decoder_layers": 1, "n_genes": 32, "n_chunks": 4}
    tiny |= {"d_state": 8, "headdim": 16, "ssd_chunk_size": 16}
    config = TrainingConfig(model_overrides=tiny, n_genes=32, batch_size=16, max_steps=3, device="cpu", stop_after=1)
    pretrain(corpus_files, tmp_path, vocab=vocab, config=config, progress=False)
    assert json.loads((tmp_path / "run.json").read_text())["world_size"] == 1
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun --nproc_per_node 2 sets it before the process group exists
    with pytest.raises(ValueError, match=r"processes \(torchrun --nproc_per_node\): 1 -> 2"):
        check_resumable(tmp_path, config, corpus_files)
    monkeypatch.delenv("WORLD_SIZE")
    check_resumable(tmp_path, config, corpus_files)  # the same count: resumable
    (tmp_path / "state.pt").unlink()  # a folder with a model and nothing to resume from
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match=r"holds a model.safetensors but no state.pt .*\(--restart"):
        pretrain(corpus_files, tmp_path, vocab=vocab, config=config, progress=False)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    pretrain(corpus_files, tmp_path, vocab=vocab, config=config, resume=False, progress=False)  # started over


def test_a_gene_stored_in_two_columns_of_a_training_file_reads_their_maximum(corpus_files, vocab, tmp_path):
    source = ad.read_h5ad(corpus_files[0])[:40].copy()
    known = [i for i, name in enumerate(source.var_names) if vocab.lookup(np.array([name]))[0] >= 0]
    first, second = known[:2]
    names = source.var_names.tolist()
    names[second] = names[first].lower()  # the same gene twice, as C2orf15 / C2ORF15 in hg19 files
    source.var_names = names
    source.write_h5ad(tmp_path / "twice.h5ad")
    corpus = PretrainingCorpus([tmp_path / "twice.h5ad"], vocab, batch_size=40)
    (batch,) = list(corpus.batches(0))
    rows = corpus.epoch_plan(0)[0][1]
    position = int(np.flatnonzero(batch.gene_ids == vocab.lookup(np.array([names[first]]))[0])[0])
    values = source.X[rows][:, [first, second]]
    values = values.toarray() if hasattr(values, "toarray") else np.asarray(values)
    assert (values[:, 1] > values[:, 0]).any()  # the second copy matters in some cell
    np.testing.assert_array_equal(batch.matrix.toarray()[:, position], values.max(axis=1))
    assert np.unique(batch.gene_ids).size == batch.gene_ids.size
    corpus.close()
