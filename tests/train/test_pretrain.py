from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch
from safetensors.numpy import load_file
from scipy import sparse

from panfoma_sc.data import GeneVocabulary
from panfoma_sc.train import TrainingConfig, build_vocabulary, check_training_files, pretrain

TINY = {
    "d_model": 32,
    "n_heads": 4,
    "encoder_repeats": 2,
    "decoder_layers": 2,
    "n_genes": 32,
    "n_chunks": 4,
    "d_state": 8,
    "headdim": 16,
    "ssd_chunk_size": 16,
}


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory) -> list[Path]:
    """Two real shards (scanpy's pbmc68k_reduced, log-normalized) of 96 cells each."""
    adata = sc.datasets.pbmc68k_reduced().raw.to_adata()
    folder = tmp_path_factory.mktemp("corpus")
    files = []
    for i in range(2):
        path = folder / f"shard{i}.h5ad"
        adata[i * 96 : (i + 1) * 96].copy().write_h5ad(path)
        files.append(path)
    return files


@pytest.fixture(scope="module")
def vocab(corpus_files) -> GeneVocabulary:
    return build_vocabulary(corpus_files, min_cells=1)


def _write_changed(source: Path, path: Path, change) -> Path:
    """``source`` with ``change`` applied to its (dense) X, written to ``path``."""
    adata = ad.read_h5ad(source)
    adata.X = change(adata.X.toarray())
    adata.write_h5ad(path)
    return path


def _config(**changes) -> TrainingConfig:
    values = {
        "model_overrides": TINY,
        "n_genes": 32,
        "batch_size": 16,
        "max_steps": 6,
        "warmup_steps": 2,
        "learning_rate": 3e-3,
        "log_every": 1,
        "checkpoint_every": 100,
        "device": "cpu",
    }
    values.update(changes)
    return TrainingConfig(**values)


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("max_steps", 0, "an integer >= 1"),
        ("batch_size", 0, "an integer >= 1"),
        ("n_genes", 32.0, "an integer >= 1"),
        ("warmup_steps", -1, "an integer >= 0"),
        ("learning_rate", -1e-3, ">= 0"),
        ("learning_rate", float("inf"), "a finite number"),
        ("contrastive_weight", float("nan"), "a finite number"),
        ("weight_decay", "0.1", "a finite number"),
        ("mask_ratio", (0.5, 0.2), "(low, high) with 0 < low <= high < 1"),
        ("mvc_genes", 0, "None or an integer >= 1"),
        ("value_encoding", "ranks", "'rank' or 'presence'"),
        ("max_minutes", 0, "None or > 0"),
        ("seed", -1, "an integer from 0 to 4294967295"),
        ("seed", 2**32, "an integer from 0 to 4294967295"),
    ],
)
def test_settings_that_cannot_train_are_refused(setting, value, expected):
    with pytest.raises(ValueError, match=f"TrainingConfig.{setting} must be {re.escape(expected)}"):
        _config(**{setting: value})


def test_cli_refuses_bad_settings_and_missing_files_before_writing_anything(corpus_files, tmp_path, capsys):
    from panfoma_sc.cli import EXIT_BAD_INPUT, main

    out = tmp_path / "run"
    assert main(["pretrain", str(corpus_files[0]), "--out", str(out), "--batch-size", "0"]) == EXIT_BAD_INPUT
    assert "--batch-size must be an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["pretrain", str(corpus_files[0]), "--out", str(out), "--steps", "0"]) == EXIT_BAD_INPUT
    assert "--steps must be an integer >= 1, got 0" in capsys.readouterr().err  # the flag, not the field
    assert main(["pretrain", str(corpus_files[0]), "--out", str(out), "--lr", "-1"]) == EXIT_BAD_INPUT
    assert "--lr must be >= 0, got -1.0" in capsys.readouterr().err
    assert main(["pretrain", str(corpus_files[0]), "--out", str(out), "--architecture", "nope"]) == EXIT_BAD_INPUT
    assert "--architecture must be one of 'panfoma-tiny'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["pretrain", str(corpus_files[0]), "--out", str(out), "--device", "cuda"]) == EXIT_BAD_INPUT
        assert "--device cuda was requested, but this torch was built without CUDA. Use --device cpu" in (
            capsys.readouterr().err
        )
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["pretrain", str(corpus_files[0]), "--out", str(afile)]) == EXIT_BAD_INPUT
    assert "is a file: give a folder" in capsys.readouterr().err
    assert main(["pretrain", str(tmp_path / "missing.h5ad"), "--out", str(out)]) == EXIT_BAD_INPUT
    assert "missing.h5ad' does not exist" in capsys.readouterr().err
    assert main(["pretrain", "--data-dir", str(tmp_path / "nowhere"), "--out", str(out)]) == EXIT_BAD_INPUT
    assert "is not a folder" in capsys.readouterr().err
    assert main(["pretrain", str(corpus_files[0]), "--out", str(out), "--gene-table", "nope.csv"]) == EXIT_BAD_INPUT
    assert "--gene-table 'nope.csv' is not a file: give a headerless ensembl_id,symbol CSV" in capsys.readouterr().err
    assert not out.exists()


def test_the_api_and_the_command_build_the_same_vocabulary_by_default():
    import inspect

    from panfoma_sc import cli
    from panfoma_sc.data.vocab import DEFAULT_MIN_CELLS

    assert inspect.signature(build_vocabulary).parameters["min_cells"].default == DEFAULT_MIN_CELLS == 20
    assert cli.DEFAULT_MIN_CELLS is DEFAULT_MIN_CELLS  # what --min-cells falls back to


def test_build_vocabulary_keeps_expressed_symbols(corpus_files, vocab):
    assert len(vocab) > 100
    assert "CD3E" in vocab.symbols
    strict = build_vocabulary(corpus_files, min_cells=150)
    assert len(strict) < len(vocab)


@pytest.mark.parametrize(
    ("problem", "change", "expected"),
    [
        ("scaled", lambda x: (x - x.mean(0)) / (x.std(0) + 1e-6), "negative values"),
        ("nan", lambda x: np.where(np.arange(x.shape[0])[:, None] == 50, np.nan, x), "NaN"),
        ("all-negative", lambda x: -1.0 - x, "negative values"),
    ],
)
def test_files_that_cannot_be_tokenized_are_refused_before_anything_is_written(
    corpus_files, vocab, tmp_path, capsys, problem, change, expected
):
    from panfoma_sc.cli import EXIT_BAD_INPUT, main

    files = [corpus_files[0], _write_changed(corpus_files[1], tmp_path / f"{problem}.h5ad", change)]
    pattern = rf"Training file '[^']*{problem}\.h5ad': .*{expected}.* Pretraining reads X of every file: write the file"
    with pytest.raises(ValueError, match=pattern):
        pretrain(files, tmp_path / "api", vocab=vocab, config=_config(), progress=False)
    assert not (tmp_path / "api").exists()
    out = tmp_path / "cli"
    assert main(["pretrain", *map(str, files), "--out", str(out), "--min-cells", "1", "--quiet"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert re.search(pattern, err), err
    assert "vocabulary" not in err  # an all-negative file is named for its values, not for an empty vocabulary
    assert not out.exists()


def test_check_training_files_reads_a_bounded_sample_from_each_file(corpus_files, tmp_path):
    reports = check_training_files(corpus_files, max_cells_per_file=40)
    assert [r.n_cells for r in reports] == [40, 40]
    assert [r.kind for r in reports] == ["log-normalized", "log-normalized"]
    assert [r.n_cells for r in check_training_files(corpus_files)] == [96, 96]  # small files: every cell
    last_cell_scaled = _write_changed(
        corpus_files[0], tmp_path / "late.h5ad", lambda x: np.where(np.arange(x.shape[0])[:, None] == 95, -x, x)
    )
    with pytest.raises(ValueError, match=r"late\.h5ad': adata\.X has negative values"):  # the last rows are read
        check_training_files([last_cell_scaled], max_cells_per_file=40)


def test_build_vocabulary_leaves_out_ercc_spike_ins(tmp_path):
    names = ["ERCC-00002", "ERCC1", "CD3E", "ENSG00000141510", "ercc_00171", "ERCC6L"]
    path = tmp_path / "spiked.h5ad"
    ad.AnnData(X=sparse.csr_matrix(np.ones((4, len(names)), dtype=np.float32)), var=pd.DataFrame(index=names)).write(
        path
    )
    assert build_vocabulary([path], min_cells=1).symbols == ["CD3E", "ERCC1", "ERCC6L"]


def test_build_vocabulary_leaves_out_the_spike_ins_of_real_cells():
    data_dir = os.environ.get("PANFOMA_DATA_DIR")
    path = Path(data_dir or ".") / "tumour_neuroblastoma_ngp_cellline_83cells.h5ad"
    if not path.is_file():
        pytest.skip("needs tumour_neuroblastoma_ngp_cellline_83cells.h5ad in PANFOMA_DATA_DIR")
    vocab = build_vocabulary([path], min_cells=1)
    assert len(vocab.symbols) > 800
    # ERCC-00002 is measured in all 83 cells, ERCC-00112 in 10: neither is a gene
    assert vocab.lookup(["ERCC-00002", "ERCC-00112", "ERCC-00079"]).tolist() == [-1, -1, -1]


def test_an_empty_vocabulary_is_refused_with_the_reason(corpus_files, tmp_path, capsys):
    from panfoma_sc.cli import EXIT_BAD_INPUT, main

    with pytest.raises(ValueError, match=r"min_cells=100000 .* is in \d+ of the 192 cells\. Lower min_cells"):
        build_vocabulary(corpus_files, min_cells=100_000)
    ensembl = tmp_path / "ensembl.h5ad"
    ad.AnnData(
        X=sparse.csr_matrix(np.ones((3, 2), dtype=np.float32)),
        var=pd.DataFrame(index=["ENSG00000141510", "ERCC-00002"]),
    ).write(ensembl)
    with pytest.raises(ValueError, match="No gene symbols among the 2 var_names"):
        build_vocabulary([ensembl], min_cells=1)
    out = tmp_path / "run"
    assert main(["pretrain", *map(str, corpus_files), "--out", str(out), "--min-cells", "100000"]) == EXIT_BAD_INPUT
    assert "Lower min_cells (--min-cells) to at most" in capsys.readouterr().err
    assert not out.exists()  # no empty vocab.json for the next run to reuse
    with pytest.raises(ValueError, match="vocab holds no genes"):
        pretrain(corpus_files, out, vocab=GeneVocabulary.from_genes([]), config=_config(), progress=False)
    assert not out.exists()


def test_restart_rebuilds_the_vocabulary_and_resume_keeps_it(corpus_files, tmp_path, caplog):
    from panfoma_sc.cli import EXIT_OK, main
    from panfoma_sc.models import read_checkpoint

    out = tmp_path / "run"
    args = ["pretrain", *map(str, corpus_files), "--out", str(out), "--batch-size", "8", "--n-genes", "16"]
    args += ["--warmup", "1", "--device", "cpu", "--quiet"]

    def symbols() -> tuple[list[str], list[str]]:
        saved = json.loads((out / "vocab.json").read_text())["symbols"]
        return saved, read_checkpoint(out / "model.safetensors").vocab.symbols

    assert main([*args, "--steps", "1", "--min-cells", "1"]) == EXIT_OK
    loose, _ = symbols()
    assert main([*args, "--steps", "1", "--min-cells", "150", "--restart"]) == EXIT_OK
    strict, trained = symbols()
    assert 0 < len(strict) < len(loose)
    assert trained == strict
    assert json.loads((out / "vocab_options.json").read_text()) == {"min_cells": 150, "gene_table": None}
    # resuming keeps the run's vocabulary (the model's gene table), whatever --min-cells says now, and says so
    with caplog.at_level(logging.WARNING, logger="panfoma_sc.cli"):
        assert main([*args, "--steps", "2", "--min-cells", "1"]) == EXIT_OK
    assert symbols() == (strict, strict)
    assert pd.read_csv(out / "history.csv")["step"].tolist() == [1, 2]
    assert "--min-cells 1 (the run's: 150) has no effect. Pass --restart" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="panfoma_sc.cli"):
        assert main([*args, "--steps", "3"]) == EXIT_OK  # not given: nothing to say
    assert "has no effect" not in caplog.text


def test_resume_is_bit_identical(corpus_files, vocab, tmp_path):
    straight = pretrain(corpus_files, tmp_path / "a", vocab=vocab, config=_config(), progress=False)
    assert straight["finished"]

    first = pretrain(corpus_files, tmp_path / "b", vocab=vocab, config=_config(stop_after=3), progress=False)
    assert first["steps"] == 3
    assert not first["finished"]
    second = pretrain(corpus_files, tmp_path / "b", vocab=vocab, config=_config(), progress=False)
    assert second["steps"] == 6
    assert second["finished"]

    weights_a = load_file(tmp_path / "a" / "model.safetensors")
    weights_b = load_file(tmp_path / "b" / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        np.testing.assert_array_equal(weights_a[key], weights_b[key], err_msg=key)
    history_a = pd.read_csv(tmp_path / "a" / "history.csv")
    history_b = pd.read_csv(tmp_path / "b" / "history.csv")
    np.testing.assert_array_equal(history_a["loss"], history_b["loss"])


def test_logged_losses_are_means_over_the_steps_they_cover(corpus_files, vocab, tmp_path):
    every_step = pretrain(corpus_files, tmp_path / "a", vocab=vocab, config=_config(), progress=False)
    assert every_step["finished"]
    per_step = pd.read_csv(tmp_path / "a" / "history.csv")
    pretrain(corpus_files, tmp_path / "b", vocab=vocab, config=_config(log_every=4), progress=False)
    rows = pd.read_csv(tmp_path / "b" / "history.csv")
    assert rows["step"].tolist() == [4, 6]  # the last row covers steps 5 and 6 only
    for name in ("loss_value", "loss_mvc"):
        np.testing.assert_allclose(rows[name], [per_step[name][:4].mean(), per_step[name][4:].mean()], rtol=1e-6)


def test_losses_are_read_back_from_the_device_only_when_a_row_is_logged(corpus_files, vocab, tmp_path, value_reads):
    # the training loop reads one row of values per logged row, not one per step and loss
    pretrain(corpus_files, tmp_path, vocab=vocab, config=_config(log_every=6), progress=False)
    # one row logged (step 6): its mean losses and its gradient norm
    assert sorted(value_reads) == ["__float__", "tolist"]


def test_a_run_stopped_before_its_first_log_resumes(corpus_files, vocab, tmp_path):
    first = pretrain(corpus_files, tmp_path, vocab=vocab, config=_config(log_every=5, stop_after=2), progress=False)
    assert first["steps"] == 2
    second = pretrain(corpus_files, tmp_path, vocab=vocab, config=_config(log_every=5), progress=False)
    assert second["finished"]
    assert pd.read_csv(tmp_path / "history.csv")["step"].tolist() == [5, 6]


def test_history_records_the_learning_rate_each_step_trained_with(corpus_files, vocab, tmp_path):
    config = _config(max_steps=4, warmup_steps=2, learning_rate=3e-3)
    pretrain(corpus_files, tmp_path, vocab=vocab, config=config, progress=False)
    history = pd.read_csv(tmp_path / "history.csv")
    # warm-up: half the peak on step 1, the peak on step 2; cosine decay starts at the peak on step 3 and
    # is half-way to the floor (0.1 of the peak) on step 4
    np.testing.assert_allclose(history["lr"], [1.5e-3, 3e-3, 3e-3, 3e-3 * 0.55], rtol=1e-12)


def test_elapsed_time_adds_up_over_resumed_sessions(corpus_files, vocab, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from panfoma_sc.train import _pretrain

    ticks = iter(range(1_000_000))  # a clock that advances one second at every reading
    monkeypatch.setattr(_pretrain, "time", SimpleNamespace(monotonic=lambda: float(next(ticks))))
    pretrain(corpus_files, tmp_path, vocab=vocab, config=_config(stop_after=3), progress=False)
    first = pd.read_csv(tmp_path / "history.csv")["elapsed_s"]
    pretrain(corpus_files, tmp_path, vocab=vocab, config=_config(), progress=False)
    elapsed = pd.read_csv(tmp_path / "history.csv")["elapsed_s"]
    assert len(elapsed) == 6
    np.testing.assert_array_equal(elapsed[:3], first)
    assert (np.diff(elapsed) > 0).all()  # the resumed session continues the count instead of starting at 0


def test_a_warmup_longer_than_the_run_is_warned_about(corpus_files, vocab, tmp_path, caplog):
    def warmup_warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "warm-up" in r.getMessage()]

    with caplog.at_level(logging.WARNING):
        config = _config(max_steps=2, warmup_steps=5)
        pretrain(corpus_files, tmp_path / "long", vocab=vocab, config=config, progress=False)
        (warning,) = warmup_warnings()
        assert "warmup_steps=5" in warning
        assert "max_steps=2" in warning
        caplog.clear()
        pretrain(
            corpus_files, tmp_path / "fits", vocab=vocab, config=_config(max_steps=2, warmup_steps=2), progress=False
        )
        assert not warmup_warnings()


def test_resuming_with_other_settings_or_files_is_refused(corpus_files, vocab, tmp_path):
    pretrain(corpus_files, tmp_path, vocab=vocab, config=_config(stop_after=2), progress=False)
    run = (tmp_path / "run.json").read_text()
    with pytest.raises(ValueError, match=r"batch_size: 16 -> 8.*--restart"):
        pretrain(corpus_files, tmp_path, vocab=vocab, config=_config(batch_size=8), progress=False)
    with pytest.raises(ValueError, match=r"files: \[.*\] -> \["):
        pretrain(corpus_files[:1], tmp_path, vocab=vocab, config=_config(), progress=False)
    assert (tmp_path / "run.json").read_text() == run  # the run's record is kept
    longer = pretrain(corpus_files, tmp_path, vocab=vocab, config=_config(max_steps=8), progress=False)
    assert longer["steps"] == 8  # running longer is a resume
    restarted = pretrain(
        corpus_files, tmp_path, vocab=vocab, config=_config(batch_size=8), resume=False, progress=False
    )
    assert restarted["steps"] == 6


def test_the_settings_mismatch_error_says_how_to_start_over_in_python_and_on_the_command_line(
    corpus_files, vocab, tmp_path, capsys
):
    from panfoma_sc.cli import EXIT_BAD_INPUT, main

    run = {"config": _config(batch_size=16).to_dict(), "files": [str(f) for f in corpus_files]}
    (tmp_path / "run.json").write_text(json.dumps(run))
    (tmp_path / "state.pt").write_bytes(b"")  # a resumable run, as far as the check is concerned
    python = r"batch_size: 16 -> 8.*start over with resume=False \(--restart on the command line\), or use another"
    with pytest.raises(ValueError, match=python):
        pretrain(corpus_files, tmp_path, vocab=vocab, config=_config(batch_size=8), progress=False)
    assert main(["pretrain", *map(str, corpus_files), "--out", str(tmp_path), "--batch-size", "8"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "start over with resume=False (--restart on the command line), or use another output folder." in err
    assert "restart=True" not in err
    assert "--restart True" not in err


def test_a_run_resumed_with_more_steps_follows_the_longer_schedule(corpus_files, vocab, tmp_path):
    from panfoma_sc.train._pretrain import _lr_lambda

    schedule = {"warmup_steps": 1, "learning_rate": 1e-3, "batch_size": 8}
    pretrain(corpus_files, tmp_path, vocab=vocab, config=_config(max_steps=3, **schedule), progress=False)
    longer = _config(max_steps=5, **schedule)
    assert pretrain(corpus_files, tmp_path, vocab=vocab, config=longer, progress=False)["steps"] == 5
    lr = pd.read_csv(tmp_path / "history.csv")["lr"].to_numpy()
    # steps 1-3 trained on the 3-step schedule; steps 4 and 5 on the 5-step one, from where the run is
    factor = _lr_lambda(longer)
    np.testing.assert_allclose(lr[3:], [1e-3 * factor(3), 1e-3 * factor(4)], rtol=1e-12)
    np.testing.assert_allclose(lr, [1e-3, 1e-3, 5.5e-4, 5.5e-4, 1e-3 * (0.1 + 0.45 * (1 - 0.5**0.5))], rtol=1e-12)
    assert (np.diff(lr) <= 0).all()  # after the warm-up the rate never rises again


def test_a_file_without_vocabulary_genes_is_named_and_nothing_is_written(corpus_files, vocab, tmp_path, capsys):
    from panfoma_sc.cli import EXIT_BAD_INPUT, main
    from panfoma_sc.train import PretrainingCorpus

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    human = shutil.copy(corpus_files[0], data_dir / "human.h5ad")
    mouse = ad.read_h5ad(corpus_files[1])
    mouse.var_names = [f"ENSMUSG{i:011d}" for i in range(mouse.n_vars)]  # mouse Ensembl IDs: no vocabulary gene
    mouse.write_h5ad(data_dir / "mouse.h5ad")
    files = [human, data_dir / "mouse.h5ad"]
    pattern = (
        r"Training file '[^']*mouse\.h5ad': none of its 765 genes \(var_names, e\.g\. \['ENSMUSG00000000000'.* is in "
        r"the run's vocabulary.*Remove the file from the corpus .* or map its genes"
    )
    out = tmp_path / "cli"
    args = ["pretrain", "--data-dir", str(data_dir), "--out", str(out), "--min-cells", "1", "--quiet"]
    assert main(args) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert re.search(pattern, err), err
    assert "embed" not in err
    assert "gene_symbols" not in err  # an option of pf.tl.embed, not of pretraining
    assert not out.exists()
    # a new start in the folder of an earlier run leaves that run's files as they were
    out.mkdir()
    earlier = {name: f"earlier {name}" for name in ("run.json", "vocab.json", "vocab_options.json", "state.pt")}
    for name, text in earlier.items():
        (out / name).write_text(text)
    assert main([*args, "--restart"]) == EXIT_BAD_INPUT
    assert re.search(pattern, capsys.readouterr().err)
    assert {path.name: path.read_text() for path in out.iterdir()} == earlier
    with pytest.raises(ValueError, match=pattern):
        build_vocabulary(files, min_cells=1)
    # the Python API, with a vocabulary built elsewhere
    with pytest.raises(ValueError, match=pattern):
        pretrain(files, tmp_path / "api", vocab=vocab, config=_config(), progress=False)
    assert not (tmp_path / "api").exists()
    with pytest.raises(ValueError, match=pattern):
        PretrainingCorpus(files, vocab, batch_size=8)
    human_ids = ad.read_h5ad(corpus_files[1])
    human_ids.var_names = [f"ENSG{i:011d}" for i in range(human_ids.n_vars)]  # human IDs, a vocabulary without IDs
    human_ids.write_h5ad(data_dir / "ensembl.h5ad")
    with pytest.raises(ValueError, match=r"human Ensembl IDs and the vocabulary records none: .*--gene-table"):
        build_vocabulary([human, data_dir / "ensembl.h5ad"], min_cells=1)


def test_files_sharing_few_genes_are_warned_about_and_small_panels_are_not(corpus_files, tmp_path, caplog):
    from panfoma_sc.train import PretrainingCorpus
    from panfoma_sc.train._corpus import check_vocabulary_genes

    whole = ad.read_h5ad(corpus_files[0])
    panel = whole[:, :100].copy()  # a targeted panel: 100 of the other file's genes
    panel.write_h5ad(tmp_path / "panel.h5ad")
    other = ad.read_h5ad(corpus_files[1])
    other.var_names = [f"G{i}" for i in range(other.n_vars)]  # names the first file never uses
    other.write_h5ad(tmp_path / "other.h5ad")
    disjoint = [corpus_files[0], tmp_path / "other.h5ad"]
    vocab = build_vocabulary(disjoint, min_cells=1)
    with caplog.at_level(logging.WARNING):
        check_vocabulary_genes(disjoint, vocab)
    warned = [r.getMessage() for r in caplog.records if "shares at most" in r.getMessage()]
    assert len(warned) == 2, warned
    assert re.search(
        r"Training file '[^']*shard0\.h5ad' shares at most 0 of \d+ vocabulary genes \(0%\) with any", warned[0]
    )
    assert "other.h5ad" in warned[1]
    caplog.clear()
    panel_files = [corpus_files[0], tmp_path / "panel.h5ad"]
    with caplog.at_level(logging.WARNING):
        check_vocabulary_genes(panel_files, build_vocabulary(panel_files, min_cells=1))
        PretrainingCorpus(panel_files, build_vocabulary(panel_files, min_cells=1), batch_size=8).close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text  # nor embed's "only 100 genes"


def test_loss_goes_down_and_both_objectives_are_logged(corpus_files, vocab, tmp_path):
    summary = pretrain(
        corpus_files, tmp_path, vocab=vocab, config=_config(max_steps=30, warmup_steps=3), progress=False
    )
    history = pd.read_csv(tmp_path / "history.csv")
    assert {"loss_value", "loss_mvc", "lr", "grad_norm"} <= set(history.columns)
    assert history["loss"].tail(5).mean() < history["loss"].head(5).mean() - 0.3
    assert summary["loss_mvc"] > 0
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["config"]["max_steps"] == 30


@pytest.mark.slow
def test_ddp_two_cpu_ranks_stay_in_sync(corpus_files, vocab, tmp_path):
    config = _config(max_steps=12, warmup_steps=2).to_dict()
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "vocab.json").write_text(vocab.to_json())
    script = tmp_path / "ddp_job.py"
    script.write_text(
        textwrap.dedent(
            """
            import hashlib, json, sys
            from pathlib import Path
            import torch
            from panfoma_sc.data import GeneVocabulary
            from panfoma_sc.train import TrainingConfig, pretrain, init_distributed, finish_distributed
            from panfoma_sc.train import _pretrain

            out, vocab_file, *files = sys.argv[1:]
            rank, world = init_distributed()
            assert world == 2
            vocab = GeneVocabulary.from_json(Path(vocab_file).read_text())
            config = TrainingConfig(**json.loads(Path(out, "config.json").read_text()))
            captured = {}
            original = _pretrain.PretrainingObjective.__init__

            def keep(self, network):
                original(self, network)
                captured["network"] = network

            _pretrain.PretrainingObjective.__init__ = keep
            pretrain(files, Path(out) / "run", vocab=vocab, config=config, progress=False)
            digest = hashlib.sha256()
            for key, tensor in sorted(captured["network"].state_dict().items()):
                digest.update(key.encode())
                digest.update(tensor.detach().cpu().numpy().tobytes())
            Path(out, f"rank{rank}.sha256").write_text(digest.hexdigest())
            finish_distributed()
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29517",
            str(script),
            str(tmp_path),
            str(tmp_path / "vocab.json"),
            *map(str, corpus_files),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    hashes = [(tmp_path / f"rank{r}.sha256").read_text() for r in range(2)]
    assert hashes[0] == hashes[1]
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history["loss"].iloc[-3:].mean() < history["loss"].iloc[:3].mean()


def test_mvc_on_extra_genes_trains(corpus_files, vocab, tmp_path):
    summary = pretrain(corpus_files, tmp_path, vocab=vocab, config=_config(max_steps=4, mvc_genes=24), progress=False)
    assert summary["finished"]
    history = pd.read_csv(tmp_path / "history.csv")
    assert np.isfinite(history["loss_mvc"]).all()


def test_contrastive_term_is_weighted_logged_and_the_encoding_recorded(corpus_files, vocab, tmp_path):
    config = _config(max_steps=4, warmup_steps=2, contrastive_weight=0.5, value_encoding="presence")
    summary = pretrain(corpus_files, tmp_path, vocab=vocab, config=config, progress=False)
    history = pd.read_csv(tmp_path / "history.csv")
    assert {"loss_value", "loss_mvc", "loss_contrastive"} <= set(history.columns)
    # InfoNCE over 16 cells and their second views: at most about log(16) for embeddings that say nothing
    assert np.isfinite(history["loss_contrastive"]).all()
    assert (history["loss_contrastive"] < np.log(16) + 0.5).all()
    total = history["loss_value"] + history["loss_mvc"] + 0.5 * history["loss_contrastive"]
    np.testing.assert_allclose(history["loss"], total, rtol=1e-6)
    assert summary["loss_contrastive"] is not None
    from panfoma_sc.models import read_checkpoint

    assert read_checkpoint(tmp_path / "model.safetensors").config.value_encoding == "presence"


def test_batch_mmd_is_zero_for_one_batch_and_larger_for_separated_batches():
    import torch

    from panfoma_sc.train._finetune import batch_mmd

    generator = torch.Generator().manual_seed(0)
    cells = torch.randn(64, 16, generator=generator)
    batches = torch.arange(64) % 2
    separated = cells.clone()
    separated[batches == 1] += 3.0
    assert float(batch_mmd(cells, torch.zeros(64, dtype=torch.long))) == 0.0
    assert float(batch_mmd(separated, batches)) > 5 * float(batch_mmd(cells, batches))


def test_init_from_continues_a_checkpoint_and_refuses_another_vocabulary(corpus_files, vocab, tmp_path):
    first = tmp_path / "first"
    pretrain(corpus_files, first, vocab=vocab, config=_config(max_steps=20, warmup_steps=2), progress=False)
    # with a zero learning rate the continued run must start from (and keep) exactly the saved weights
    frozen = _config(max_steps=1, learning_rate=0.0, init_from=str(first / "model.safetensors"))
    pretrain(corpus_files, tmp_path / "frozen", vocab=vocab, config=frozen, progress=False)
    saved = load_file(first / "model.safetensors")
    continued = load_file(tmp_path / "frozen" / "model.safetensors")
    for key in saved:
        np.testing.assert_array_equal(saved[key], continued[key], err_msg=key)
    from panfoma_sc.models import read_checkpoint, sha256sum

    origin = read_checkpoint(tmp_path / "frozen" / "model.safetensors").info["initialized_from"]
    assert origin["sha256"] == sha256sum(first / "model.safetensors")
    assert origin["trained_on"]["steps"] == 20
    fresh = pd.read_csv(first / "history.csv")["loss"].iloc[0]
    warm = pd.read_csv(tmp_path / "frozen" / "history.csv")["loss"].iloc[0]
    assert warm < fresh - 0.3

    other = GeneVocabulary.from_genes(vocab.symbols[:-1])
    with pytest.raises(ValueError, match="vocabulary"):
        pretrain(corpus_files, tmp_path / "other", vocab=other, config=frozen, progress=False)

    # continuing into a new read-out and MVC head keeps every other trained tensor and records what started fresh
    upgrade = _config(
        max_steps=1,
        learning_rate=0.0,
        init_from=str(first / "model.safetensors"),
        model_overrides=TINY | {"cell_readout": "decoder+tokens", "mvc_head": "bilinear"},
    )
    pretrain(corpus_files, tmp_path / "upgraded", vocab=vocab, config=upgrade, progress=False)
    upgraded = load_file(tmp_path / "upgraded" / "model.safetensors")
    reinitialized = read_checkpoint(tmp_path / "upgraded" / "model.safetensors").info["initialized_from"][
        "reinitialized"
    ]
    new_modules = ("mvc_head.", "gene_mean_norm.")
    assert reinitialized == sorted(k for k in upgraded if k.startswith(new_modules) or k == "cell_projection.weight")
    for key in set(upgraded) - set(reinitialized):
        np.testing.assert_array_equal(saved[key], upgraded[key], err_msg=key)


def test_corpus_gene_factors_capture_co_expression(corpus_files, vocab):
    from panfoma_sc.data import Tokenizer
    from panfoma_sc.train import PretrainingCorpus, corpus_gene_factors

    corpus = PretrainingCorpus(corpus_files, vocab, batch_size=16)
    tokenizer = Tokenizer(n_genes=32, n_chunks=4, n_bins=51, pad_id=vocab.pad_id, selection="top")
    loadings, seen = corpus_gene_factors(corpus, tokenizer, vocab_size=len(vocab), n_components=8)
    again, _ = corpus_gene_factors(corpus, tokenizer, vocab_size=len(vocab), n_components=8)
    corpus.close()
    assert loadings.shape == (len(vocab), 8)
    np.testing.assert_array_equal(loadings, again)  # seeded
    assert 0 < seen.sum() < len(vocab)
    assert not loadings[~seen].any()
    assert not seen[vocab.pad_id]
    # genes held by the same cells get similar loadings: the first factor separates cells, not noise
    assert np.linalg.matrix_rank(loadings[seen]) == 8


@pytest.mark.parametrize("grouped", [False, True])
def test_top_right_singular_vectors_match_a_dense_svd(grouped):
    """The randomized factorization equals numpy's SVD, of the matrix with each group's mean row subtracted."""
    from scipy import sparse

    from panfoma_sc.train._gene_factors import top_right_singular_vectors

    rng = np.random.default_rng(0)
    groups = rng.integers(0, 4, 300)
    values = sparse.random(300, 80, density=0.1, random_state=1).toarray() * 3.0
    values[groups == 2, 5] = 10.0  # a column that only says which group a row is in
    matrix = sparse.csr_matrix(values)
    dense = values.copy()
    if grouped:
        for group in range(4):
            dense[groups == group] -= dense[groups == group].mean(0)
    expected = np.linalg.svd(dense, full_matrices=False)[2][:6]
    found = top_right_singular_vectors(matrix, 6, groups=groups if grouped else None, seed=3)
    np.testing.assert_allclose(np.abs((found * expected).sum(1)), 1.0, atol=1e-6)  # same vectors up to sign
    # the group-only column leads the uncentered factors and is gone once groups are centred
    assert (np.abs(found[0, 5]) > 0.9) != grouped


def test_corpus_gene_sets_hold_the_expressed_genes_only():
    """A cell with fewer expressed genes than tokens is filled with unexpressed genes: they are not in its set."""
    from scipy import sparse

    from panfoma_sc.data import Tokenizer
    from panfoma_sc.train._gene_factors import _gene_sets

    counts = np.zeros((2, 12), dtype=np.float32)
    counts[0, [1, 4, 7]] = [5, 1, 2]
    counts[1, :10] = np.arange(1, 11)
    gene_ids = np.arange(1, 13)
    tokenizer = Tokenizer(n_genes=8, n_chunks=2, n_bins=51, pad_id=0, selection="top", value_encoding="presence")
    bag = _gene_sets(sparse.csr_matrix(counts), gene_ids, np.array([3, 9], dtype=np.uint64), tokenizer, 13)
    np.testing.assert_array_equal(bag[0].indices, [2, 5, 8])  # vocabulary ids of the three expressed genes
    np.testing.assert_array_equal(bag[1].indices, np.arange(3, 11))  # the eight most expressed
    assert (bag.data == 1).all()


def test_corpus_svd_gene_init_is_recorded_and_stays_frozen(corpus_files, vocab, tmp_path):
    from panfoma_sc.models import read_checkpoint

    config = _config(
        max_steps=3,
        gene_init="corpus-svd",
        freeze_gene_embedding=True,
        model_overrides=TINY | {"cell_readout": "decoder+tokens", "mvc_head": "bilinear"},
    )
    pretrain(corpus_files, tmp_path / "svd", vocab=vocab, config=config, progress=False)
    checkpoint = read_checkpoint(tmp_path / "svd" / "model.safetensors")
    record = checkpoint.info["gene_init"]
    assert record["method"] == "corpus-svd"
    assert record["frozen"] is True
    assert 0 < record["genes_initialized"] < len(vocab)
    table = checkpoint.state_dict["embedding.gene.weight"].float().numpy()
    assert abs(table[table.any(1)].std() - 0.02) < 0.01
    # frozen: a second run with the same start and more steps has the very same table
    longer = _config(**{**config.to_dict(), "max_steps": 6})
    pretrain(corpus_files, tmp_path / "svd6", vocab=vocab, config=longer, progress=False)
    later = read_checkpoint(tmp_path / "svd6" / "model.safetensors").state_dict["embedding.gene.weight"]
    np.testing.assert_array_equal(table, later.float().numpy())
    assert not np.array_equal(  # while the rest of the network trained
        checkpoint.state_dict["cell_projection.weight"].float().numpy(),
        read_checkpoint(tmp_path / "svd6" / "model.safetensors").state_dict["cell_projection.weight"].float().numpy(),
    )
    with pytest.raises(ValueError, match="gene_init"):
        _config(gene_init="pca")


def test_corpus_gene_contrastive_learns_to_tell_cells_apart(corpus_files, vocab):
    from panfoma_sc.data import Tokenizer
    from panfoma_sc.train import PretrainingCorpus, corpus_gene_contrastive
    from panfoma_sc.train._gene_factors import _random_halves

    corpus = PretrainingCorpus(corpus_files, vocab, batch_size=16)
    tokenizer = Tokenizer(n_genes=32, n_chunks=4, n_bins=51, pad_id=vocab.pad_id, selection="top")
    options = {"vocab_size": len(vocab), "n_components": 8, "batch_size": 32, "learning_rate": 0.05}
    table, seen, losses = corpus_gene_contrastive(corpus, tokenizer, steps=60, **options)
    again, _, _ = corpus_gene_contrastive(corpus, tokenizer, steps=60, **options)
    corpus.close()
    assert table.shape == (len(vocab), 8)
    np.testing.assert_array_equal(table, again)  # seeded
    assert 0 < seen.sum() < len(vocab)
    assert not table[~seen].any()
    assert not seen[vocab.pad_id]
    # InfoNCE over 32 cells starts near chance (log 32 = 3.47) and falls as halves find each other
    assert losses[0] > 3.0
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])

    # the halves partition each cell's genes, in order of the rows asked for
    import scipy.sparse as sp

    bag = sp.csr_matrix(np.array([[1, 1, 1, 0, 1], [0, 1, 0, 1, 0], [1, 0, 1, 1, 1]], dtype=np.float32))
    (first, first_offsets), (second, second_offsets) = _random_halves(bag, np.array([0, 2]), np.random.default_rng(0))
    assert first_offsets.tolist() == [0, 2]
    assert second_offsets.tolist() == [0, 2]
    assert sorted(first[:2].tolist() + second[:2].tolist()) == [0, 1, 2, 4]
    assert sorted(first[2:].tolist() + second[2:].tolist()) == [0, 2, 3, 4]


def test_corpus_contrastive_gene_init_is_recorded(corpus_files, vocab, tmp_path):
    from panfoma_sc.models import read_checkpoint

    config = _config(
        max_steps=2,
        gene_init="corpus-contrastive",
        gene_init_steps=5,
        freeze_gene_embedding=True,
        model_overrides=TINY | {"cell_readout": "decoder+tokens", "mvc_head": "bilinear"},
    )
    pretrain(corpus_files, tmp_path / "contrastive", vocab=vocab, config=config, progress=False)
    checkpoint = read_checkpoint(tmp_path / "contrastive" / "model.safetensors")
    record = checkpoint.info["gene_init"]
    assert record["method"] == "corpus-contrastive"
    assert record["steps"] == 5
    assert record["loss_first"] > 0
    assert record["loss_last"] > 0
    table = checkpoint.state_dict["embedding.gene.weight"].float().numpy()
    assert abs(table[table.any(1)].std() - 0.02) < 0.01
    with pytest.raises(ValueError, match="gene_init must be one of"):
        _config(gene_init="pca")


def test_contrastive_logits_stay_float32_under_bf16_autocast():
    """The InfoNCE similarities divide by a small temperature: computed in bf16 (as autocast would make the matmul)
    the loss moved by about 5e-4. They are float32 inside a bf16 training step too."""
    from panfoma_sc.train._pretrain import info_nce

    gen = torch.Generator().manual_seed(0)
    first, second = torch.randn(32, 64, generator=gen), torch.randn(32, 64, generator=gen)
    plain = info_nce(first, second, temperature=0.07)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = info_nce(first.bfloat16(), second.bfloat16(), temperature=0.07)
    assert under_autocast.dtype == torch.float32
    expected = info_nce(first.bfloat16().float(), second.bfloat16().float(), temperature=0.07)
    torch.testing.assert_close(under_autocast, expected, rtol=1e-6, atol=1e-6)
    assert plain.dtype == torch.float32
