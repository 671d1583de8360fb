from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import anndata as ad
import h5py
import numpy as np
import pytest
import scanpy as sc

import panfoma_sc as pf
from panfoma_sc.cli import EXIT_BAD_INPUT, EXIT_OK, main


def test_embed_command_writes_the_embedding(pbmc68k, tiny_checkpoint, tmp_path, capsys):
    source, target = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    pbmc68k[:40].copy().write_h5ad(source)
    code = main(["embed", str(source), str(target), "--model", str(tiny_checkpoint), "--quiet", "--key-added", "X_pf"])
    assert code == EXIT_OK
    result = ad.read_h5ad(target)
    assert result.obsm["X_pf"].shape == (40, 32)
    assert np.isfinite(result.obsm["X_pf"]).all()
    assert "obsm['X_pf']" in capsys.readouterr().out
    # the record holds the command that made it, quoted to be run again
    command = f"panfoma embed {source} {target} --model {tiny_checkpoint} --quiet --key-added X_pf"
    assert result.uns["X_pf"]["params"]["command"] == command
    assert result.uns["X_pf"]["params"]["tool"] == "pf.tl.embed"


def test_writing_over_the_input_keeps_it_whole_until_the_result_is_written(
    pbmc68k, tiny_checkpoint, tmp_path, capsys, monkeypatch
):
    """The output replaces the file only when complete: the input itself, and an earlier output on a failed write."""
    source = tmp_path / "data.h5ad"
    pbmc68k[:40].copy().write_h5ad(source)
    model = ["--model", str(tiny_checkpoint), "--quiet"]
    assert main(["embed", str(source), str(source), *model]) == EXIT_OK
    result = ad.read_h5ad(source)
    assert result.obsm["X_panfoma"].shape == (40, 32)
    assert (result.X != pbmc68k[:40].X).nnz == 0
    before = source.read_bytes()

    def fail_midway(adata, source, destination, results):
        with open(destination, "wb") as file:
            file.write(b"half an h5ad")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("panfoma_sc._paths._write_file_with_results", fail_midway)
    assert main(["embed", str(source), str(source), *model, "--key-added", "X_again"]) != EXIT_OK
    assert "No space left on device" in capsys.readouterr().err
    assert source.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data.h5ad"]


def _only_backed_reads(monkeypatch) -> list[str]:
    """Make ``anndata.read_h5ad`` fail and record the files opened with their matrices on disk.

    Every matrix of an opened file (``X``, layers, ``raw/X``) must still be on disk once the command has run.
    """
    from panfoma_sc.data import lazy_h5ad

    opened, lazily = [], lazy_h5ad.read_h5ad_lazily

    def no_reading(filename, *args, **kwargs):
        raise AssertionError(f"{filename} was read with anndata.read_h5ad")

    def recorded(path):
        adata = lazily(path)
        opened.append((str(path), adata))
        return adata

    monkeypatch.setattr(ad, "read_h5ad", no_reading)
    monkeypatch.setattr(lazy_h5ad, "read_h5ad_lazily", recorded)
    return opened


def _on_disk(matrix) -> bool:
    return isinstance(matrix, h5py.Dataset) or type(matrix).__name__ in ("_CSRDataset", "_CSCDataset")


def test_commands_stream_the_input_and_keep_the_rest_of_the_file(pbmc68k, tiny_checkpoint, tmp_path, monkeypatch):
    """embed and annotate read cells from the file as they go; the output is the input plus the results only."""
    data = pbmc68k[:60].copy()
    data.obsm["X_mine"] = np.arange(data.n_obs * 2, dtype=np.float32).reshape(-1, 2)
    data.uns["mine"] = {"kept": 1}
    data.layers["copy"] = data.X.copy()
    source, embedded, labelled = (tmp_path / f"{name}.h5ad" for name in ("in", "embedded", "labelled"))
    data[:40].write_h5ad(source)
    data[40:].write_h5ad(tmp_path / "reference.h5ad")
    model = ["--model", str(tiny_checkpoint), "--quiet"]
    opened = _only_backed_reads(monkeypatch)
    assert main(["embed", str(source), str(embedded), *model]) == EXIT_OK
    reference = str(tmp_path / "reference.h5ad")
    assert main(["annotate", str(embedded), reference, str(labelled), "--labels-key", "louvain", *model]) == EXIT_OK
    assert [path for path, _ in opened] == [str(source), str(embedded), reference]
    for _, adata in opened:
        assert _on_disk(adata.X)
        assert all(_on_disk(matrix) for matrix in adata.layers.values())
    monkeypatch.undo()
    result, original = ad.read_h5ad(labelled), data[:40]
    assert result.obsm["X_panfoma"].shape == (40, 32)
    assert set(result.obsm) == {*original.obsm, "X_panfoma"}
    for key in original.obsm:
        np.testing.assert_array_equal(result.obsm[key], original.obsm[key])
    assert (result.X != original.X).nnz == 0
    assert (result.layers["copy"] != original.layers["copy"]).nnz == 0
    assert result.uns["mine"] == {"kept": 1}
    assert {"panfoma", "panfoma_label"} <= set(result.uns)
    new_columns = ["panfoma_label", "panfoma_label_confidence"]
    assert list(result.obs.columns) == [*original.obs.columns, *new_columns]
    assert result.obs[original.obs.columns].equals(original.obs)
    assert result.var.equals(original.var)
    # a rerun into its own input replaces the result in place
    before = ad.read_h5ad(source)
    assert main(["embed", str(labelled), str(labelled), *model, "--seed", "3"]) == EXIT_OK
    rerun = ad.read_h5ad(labelled)
    assert rerun.obsm["X_panfoma"].shape == (40, 32)
    assert list(rerun.obs.columns) == list(result.obs.columns)
    assert ad.read_h5ad(source).obsm.keys() == before.obsm.keys()


def test_a_column_major_input_is_read_into_memory_with_a_warning(pbmc68k, tiny_checkpoint, tmp_path, caplog):
    """A CSC X cannot be streamed: the command loads it (as before it streamed) and says how to store it."""
    from scipy import sparse

    data = pbmc68k[:30].copy()
    data.X = sparse.csc_matrix(data.X)
    source, target = tmp_path / "csc.h5ad", tmp_path / "out.h5ad"
    data.write_h5ad(source, compression="gzip")
    assert main(["embed", str(source), str(target), "--model", str(tiny_checkpoint), "--quiet"]) == EXIT_OK
    assert "stores X by column (CSC)" in caplog.text
    assert "adata.X = adata.X.tocsr()" in caplog.text
    result = ad.read_h5ad(target)
    assert result.obsm["X_panfoma"].shape == (30, 32)
    assert (result.X != data.X).nnz == 0
    with h5py.File(target) as file:  # the input's X copied as stored, not rewritten from memory
        assert file["X"].attrs["encoding-type"] == "csc_matrix"
        assert file["X/data"].compression == "gzip"


def test_a_layer_is_streamed_from_the_file_too(pbmc68k, tiny_checkpoint, tmp_path, monkeypatch):
    """anndata's backed mode reads every layer into memory; the commands read the layer's cells as they go."""
    data = pbmc68k[:50].copy()
    data.layers["counts"] = data.X.copy()
    data.layers["other"] = data.X.copy()
    data.X = data.X * 0  # only the layer holds the expression
    source, target = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    data.write_h5ad(source)
    expected = pbmc68k[:50].copy()
    pf.tl.embed(expected, model=tiny_checkpoint, progress=False)
    opened = _only_backed_reads(monkeypatch)
    command = ["embed", str(source), str(target), "--layer", "counts", "--model", str(tiny_checkpoint), "--quiet"]
    assert main(command) == EXIT_OK
    (_, adata), *_ = opened
    assert all(_on_disk(matrix) for matrix in adata.layers.values())
    monkeypatch.undo()
    result = ad.read_h5ad(target)
    np.testing.assert_allclose(result.obsm["X_panfoma"], expected.obsm["X_panfoma"], rtol=1e-5, atol=1e-6)
    assert result.uns["panfoma"]["params"]["layer"] == "counts"
    assert (result.layers["other"] != data.layers["other"]).nnz == 0


def test_a_column_major_layer_is_read_into_memory_with_a_warning(pbmc68k, tiny_checkpoint, tmp_path, caplog):
    from scipy import sparse

    data = pbmc68k[:30].copy()
    data.layers["counts"] = sparse.csc_matrix(data.X)
    source, target = tmp_path / "csc.h5ad", tmp_path / "out.h5ad"
    data.write_h5ad(source)
    command = ["embed", str(source), str(target), "--layer", "counts", "--model", str(tiny_checkpoint), "--quiet"]
    assert main(command) == EXIT_OK
    assert "stores layers['counts'] by column (CSC)" in caplog.text
    assert "adata.layers['counts'] = adata.layers['counts'].tocsr()" in caplog.text
    assert ad.read_h5ad(target).obsm["X_panfoma"].shape == (30, 32)


def test_bad_numbers_are_refused_before_the_input_is_read(tmp_path, capsys, monkeypatch):
    """A large input is not read (minutes, gigabytes) only to find that --batch-size was 0."""
    import pytest

    def no_reading(*args, **kwargs):
        raise AssertionError("the input was read before the options were checked")

    monkeypatch.setattr(ad, "read_h5ad", no_reading)
    monkeypatch.setattr("panfoma_sc.data.lazy_h5ad.read_h5ad_lazily", no_reading)
    files = [str(tmp_path / "in.h5ad"), str(tmp_path / "out.h5ad")]
    for command, expected in [
        (["embed", *files, "--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got 0."),
        (["embed", *files, "--seed", "-1"], "argument --seed: must be an integer from 0 to 4294967295, got -1."),
        (["embed", *files, "--n-genes", "many"], "argument --n-genes: an integer is expected, got 'many'"),
        (["annotate", *files, "--unknown-threshold", "1.5"], "must be a number in [0, 1], got 1.5."),
        (["integrate", *files, "--batch-key", "b", "--learning-rate", "0"], "must be a finite number > 0, got 0.0."),
        (["integrate", *files, "--batch-key", "b", "--mmd-weight", "inf"], "must be a finite number >= 0, got inf."),
    ]:
        with pytest.raises(SystemExit) as stopped:
            main(command)
        assert stopped.value.code == EXIT_BAD_INPUT
        assert expected in capsys.readouterr().err


def test_bad_input_exits_2_with_a_message(pbmc68k, tiny_checkpoint, tmp_path, capsys):
    source = tmp_path / "in.h5ad"
    pbmc68k[:10].copy().write_h5ad(source)
    code = main(["embed", str(source), str(tmp_path / "out.h5ad"), "--model", str(tiny_checkpoint), "--layer", "nope"])
    assert code == EXIT_BAD_INPUT
    assert "Layer 'nope' not found" in capsys.readouterr().err
    assert not (tmp_path / "out.h5ad").exists()
    assert main(["embed", str(tmp_path / "missing.h5ad"), str(tmp_path / "o.h5ad")]) == EXIT_BAD_INPUT
    assert "missing.h5ad' does not exist" in capsys.readouterr().err


def test_hint_values_are_quoted_as_a_shell_needs_them():
    from panfoma_sc.cli import _as_options

    message = "Pass counts instead, e.g. layer='umi' or layer='my layer' or use_raw=True (adata.raw)."
    assert _as_options(message, {"--layer", "--use-raw"}) == (
        "Pass counts instead, e.g. --layer umi or --layer 'my layer' or --use-raw (adata.raw)."
    )


def test_hints_name_the_command_line_options(pbmc68k, tiny_checkpoint, tmp_path, capsys):
    """The tools' Python-style hints (layer='counts') are worded as the command's options (--layer counts)."""
    source = tmp_path / "scaled.h5ad"
    scaled = pbmc68k[:10].copy()
    scaled.raw = scaled.copy()
    scaled.layers["counts"] = scaled.X.copy()
    sc.pp.scale(scaled)  # negative values
    scaled.write_h5ad(source)
    assert main(["embed", str(source), str(tmp_path / "out.h5ad"), "--model", str(tiny_checkpoint)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "has negative values" in err
    assert "e.g. --layer counts or --use-raw (adata.raw)." in err
    assert "layer='counts'" not in err


def test_logged_hints_are_worded_as_options_too(pbmc68k, tiny_checkpoint, tmp_path, caplog):
    """Warnings, like errors, name the command's options; the wording is gone once the command returns."""
    import logging

    source = tmp_path / "in.h5ad"
    pbmc68k[:20].copy().write_h5ad(source)  # it has obsm['X_pca'], which no panfoma tool wrote
    command = ["embed", str(source), str(tmp_path / "out.h5ad"), "--model", str(tiny_checkpoint), "--quiet"]
    with caplog.at_level(logging.WARNING, logger="panfoma_sc"):
        assert main([*command, "--key-added", "X_pca"]) == EXIT_OK
    assert "Pass --key-added <another name> to keep it." in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="panfoma_sc"):
        logging.getLogger("panfoma_sc.tl").warning("Pass key_added='<another name>' to keep it.")
    assert "key_added='<another name>'" in caplog.text  # Python callers keep Python wording


def test_python_hints_become_options_switches_included():
    from panfoma_sc.cli import _as_options

    options = {"--restart", "--layer", "--n-genes"}
    message = "Start over with restart=True, pass layer=None or n_genes=64. Keep seed=3 (no such option)."
    expected = "Start over with --restart, pass no --layer or --n-genes 64. Keep seed=3 (no such option)."
    assert _as_options(message, options) == expected
    options = {"--n-neighbors", "--labels-key", "--key-added"}
    message = (
        "labels_key is required. Use a smaller n_neighbors; adata.obs_names, obs['key_added'], n_cells and "
        "pf.tl.key_added() stay; key_added must be a string."
    )
    expected = (
        "--labels-key is required. Use a smaller --n-neighbors; adata.obs_names, obs['key_added'], n_cells and "
        "pf.tl.key_added() stay; --key-added must be a string."
    )
    assert _as_options(message, options) == expected
    both = "Lower n_neighbors (--n-neighbors) to 5."  # written for both audiences: left as it is
    assert _as_options(both, options) == both


def test_unwritable_output_is_refused_before_any_work(pbmc68k, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    source = tmp_path / "in.h5ad"
    pbmc68k[:10].copy().write_h5ad(source)

    def no_work(*args, **kwargs):
        raise AssertionError("the tool ran although the output cannot be written")

    monkeypatch.setattr("panfoma_sc.tl.embed", no_work)
    monkeypatch.setattr("panfoma_sc.tl.annotate", no_work)
    model = ["--model", str(tiny_checkpoint), "--quiet"]
    missing_folder = str(tmp_path / "no" / "such" / "out.h5ad")
    assert main(["embed", str(source), missing_folder, *model]) == EXIT_BAD_INPUT
    assert "does not exist. Create it first" in capsys.readouterr().err
    assert main(["embed", str(source), str(tmp_path), *model]) == EXIT_BAD_INPUT
    assert "is a folder" in capsys.readouterr().err
    args = ["annotate", str(source), str(source), str(tmp_path / "o.h5ad"), "--labels-key", "louvain"]
    saved = str(tmp_path / "no" / "tuned.safetensors")
    assert main([*args, "--method", "finetune", "--save-model", saved, *model]) == EXIT_BAD_INPUT
    assert "cannot write --save-model" in capsys.readouterr().err  # named as the option, not as "output"
    assert main(["embed", str(source), str(tmp_path / "out.csv"), *model]) == EXIT_BAD_INPUT
    assert "must be a .h5ad file: name it e.g." in capsys.readouterr().err
    assert main([*args, "--method", "finetune", "--save-model", str(tmp_path / "tuned.pt"), *model]) == EXIT_BAD_INPUT
    assert "must be a .safetensors file" in capsys.readouterr().err
    assert not list(tmp_path.glob("o.*"))
    assert not list(tmp_path.glob("tuned*"))


def test_annotate_never_writes_over_its_reference(pbmc68k, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """Two files and --labels-key: the second is not taken as the output (it is the reference the user meant)."""
    query, reference = tmp_path / "query.h5ad", tmp_path / "reference.h5ad"
    pbmc68k[:10].copy().write_h5ad(query)
    pbmc68k[10:30].copy().write_h5ad(reference)
    before = reference.read_bytes()

    def no_work(*args, **kwargs):
        raise AssertionError("the tool ran although the command names no separate output")

    monkeypatch.setattr("panfoma_sc.tl.annotate", no_work)
    model = ["--model", str(tiny_checkpoint), "--quiet", "--method", "finetune"]
    assert main(["annotate", str(query), str(reference), "--labels-key", "louvain", *model]) == EXIT_BAD_INPUT
    assert "only two files were given" in capsys.readouterr().err
    three = ["annotate", str(query), str(reference), str(reference), "--labels-key", "louvain", *model]
    assert main(three) == EXIT_BAD_INPUT
    assert "is the reference file: it would be overwritten" in capsys.readouterr().err
    # QUERY REFERENCE with the output forgotten and a fine-tuned model (no --labels-key): the existing second file
    # may be the reference, so it is not written over
    assert main(["annotate", str(query), str(reference), *model]) == EXIT_BAD_INPUT
    assert "the output exists. If" in capsys.readouterr().err
    assert reference.read_bytes() == before


def test_unreadable_inputs_exit_2_with_what_to_do(tmp_path, capsys):
    import h5py

    text, empty, tenx = tmp_path / "cells.csv", tmp_path / "empty.h5ad", tmp_path / "filtered.h5"
    text.write_text("gene,cell1\nCD3E,4\n")
    empty.write_bytes(b"")
    with h5py.File(tenx, "w") as file:
        file.create_group("matrix")
    out = str(tmp_path / "out.h5ad")
    for path in (text, empty):
        assert main(["embed", str(path), out]) == EXIT_BAD_INPUT
        assert "is not an .h5ad (HDF5) file" in capsys.readouterr().err
    assert main(["embed", str(tenx), out]) == EXIT_BAD_INPUT
    assert "read it with sc.read_10x_h5" in capsys.readouterr().err
    multimodal = tmp_path / "cells.h5mu"  # anndata would read its global obs/var as an AnnData without X
    with h5py.File(multimodal, "w") as file:
        for group in ("obs", "var", "mod/prot", "mod/rna"):
            file.create_group(group)
    assert main(["embed", str(multimodal), out]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "is a MuData .h5mu file (modalities ['prot', 'rna']); the command line reads AnnData .h5ad" in err
    assert "mudata.read_h5mu(path)['rna'].write_h5ad('rna.h5ad')" in err
    assert main(["pretrain", str(text), "--out", str(tmp_path / "run")]) == EXIT_BAD_INPUT
    assert "is not an .h5ad (HDF5) file" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "out.h5ad").exists()


def test_models_describe_prints_parameter_counts(tiny_checkpoint, capsys):
    assert main(["models", "describe", str(tiny_checkpoint)]) == EXIT_OK
    described = json.loads(capsys.readouterr().out)
    assert described["n_parameters"] > 0
    assert main(["models", "describe", "panfoma-base"]) == EXIT_OK
    base = json.loads(capsys.readouterr().out)
    assert base["n_parameters"] > 30_000_000
    assert base["config"]["d_model"] == 512


def test_models_register_and_list(tiny_checkpoint, capsys):
    assert main(["models", "register", "mine", str(tiny_checkpoint)]) == EXIT_OK
    assert main(["models", "list"]) == EXIT_OK
    assert "mine" in capsys.readouterr().out
    # the register subcommand's errors name its own options
    assert main(["models", "register", "mine", str(tiny_checkpoint)]) == EXIT_BAD_INPUT
    assert "already registered; pass --overwrite to replace it." in capsys.readouterr().err
    assert main(["models", "register", "web", "https://example.org/m.safetensors"]) == EXIT_BAD_INPUT
    assert "needs --sha256 ..." in capsys.readouterr().err


def test_annotate_and_integrate_commands(pbmc_sorted, tiny_checkpoint, tmp_path, capsys):
    query, reference = pbmc_sorted[::3].copy(), pbmc_sorted[1::3].copy()
    query.obs["batch"] = np.where(np.arange(query.n_obs) % 2, "a", "b")
    paths = {name: tmp_path / f"{name}.h5ad" for name in ("query", "reference", "labelled", "integrated")}
    query.write_h5ad(paths["query"])
    reference.write_h5ad(paths["reference"])
    model = ["--model", str(tiny_checkpoint), "--quiet"]
    args = ["annotate", str(paths["query"]), str(paths["reference"]), str(paths["labelled"]), "--labels-key"]
    assert main([*args, "cell_type", *model]) == EXIT_OK
    confidence = ad.read_h5ad(paths["labelled"]).obs["panfoma_label_confidence"]
    capsys.readouterr()
    # a threshold half the cells miss: the summary counts the labels cells got, not the reference's categories
    threshold = str(float(np.median(confidence)))
    assert main([*args, "cell_type", "--unknown-threshold", threshold, *model]) == EXIT_OK
    labels = ad.read_h5ad(paths["labelled"]).obs["panfoma_label"].astype(str)
    unknown, given = int((labels == "Unknown").sum()), labels[labels != "Unknown"]
    assert 0 < unknown < query.n_obs
    expected = f"{given.size} cells labelled with {given.nunique()} labels, {unknown} Unknown."
    assert expected in capsys.readouterr().out
    assert main([*args, "cell_type", "--method", "logreg", *model]) == EXIT_OK
    record = ad.read_h5ad(paths["labelled"]).uns["panfoma_label"]["params"]
    assert record["method"] == "logreg"
    assert record["command"].startswith(f"panfoma annotate {paths['query']} {paths['reference']}")
    assert record["command"].endswith("--method logreg --model " + f"{tiny_checkpoint} --quiet")
    args = ["integrate", str(paths["query"]), str(paths["integrated"]), "--batch-key", "batch", "--max-steps", "1"]
    assert main([*args, *model]) == EXIT_OK
    integrated = ad.read_h5ad(paths["integrated"])
    assert integrated.obsm["X_panfoma_integrated"].shape == (query.n_obs, 32)
    assert integrated.uns["X_panfoma_integrated"]["params"]["command"].startswith("panfoma integrate ")


def test_annotate_with_a_fine_tuned_model_needs_no_method_and_unused_options_are_named(
    pbmc_sorted, tiny_checkpoint, tmp_path, caplog
):
    query, reference = pbmc_sorted[::3].copy(), pbmc_sorted[1::3].copy()
    paths = {name: tmp_path / f"{name}.h5ad" for name in ("query", "reference", "labelled", "again")}
    query.write_h5ad(paths["query"])
    reference.write_h5ad(paths["reference"])
    tuned = tmp_path / "tuned.safetensors"
    model = ["--model", str(tiny_checkpoint), "--quiet"]
    args = ["annotate", str(paths["query"]), str(paths["reference"]), str(paths["labelled"]), "--labels-key"]
    with caplog.at_level(logging.WARNING):
        assert main([*args, "cell_type", "--method", "finetune", "--max-epochs", "1", "--n-neighbors", "5",
                     "--save-model", str(tuned), *model]) == EXIT_OK  # fmt: skip
    assert "--n-neighbors applies to --method knn only: ignored with --method finetune" in caplog.text
    assert "--max-epochs" not in caplog.text
    # two files and a fine-tuned model: its classes label the query, no --method needed
    assert main(["annotate", str(paths["query"]), str(paths["again"]), "--model", str(tuned), "--quiet"]) == EXIT_OK
    labels = ad.read_h5ad(paths["labelled"]).obs["panfoma_label"]
    assert (ad.read_h5ad(paths["again"]).obs["panfoma_label"] == labels).all()


def test_sigterm_while_writing_leaves_no_partial_output(pbmc68k, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    import signal

    source = tmp_path / "in.h5ad"
    pbmc68k[:20].copy().write_h5ad(source)

    def terminated_midway(adata, source, destination, results):
        with open(destination, "wb") as file:
            file.write(b"half an h5ad")
        os.kill(os.getpid(), signal.SIGTERM)  # as timeout, a batch scheduler or docker stop would

    monkeypatch.setattr("panfoma_sc._paths._write_file_with_results", terminated_midway)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as info:
        main(["embed", str(source), str(tmp_path / "out.h5ad"), "--model", str(tiny_checkpoint), "--quiet"])
    assert info.value.code == 128 + signal.SIGTERM
    assert "panfoma: terminated" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.h5ad"]
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is the command's only


def test_annotate_and_integrate_refuse_bad_keys_with_exit_2(pbmc_sorted, tiny_checkpoint, tmp_path, capsys):
    source = tmp_path / "in.h5ad"
    pbmc_sorted[:20].copy().write_h5ad(source)
    out = tmp_path / "out.h5ad"
    model = ["--model", str(tiny_checkpoint), "--quiet"]
    assert main(["annotate", str(source), str(source), str(out), "--labels-key", "nope", *model]) == EXIT_BAD_INPUT
    assert "--labels-key nope is not a column of reference.obs" in capsys.readouterr().err  # named as the option
    assert main(["integrate", str(source), str(out), "--batch-key", "nope", *model]) == EXIT_BAD_INPUT
    assert "--batch-key nope" in capsys.readouterr().err
    labels = ["--labels-key", "cell_type", "--gene-symbols", "symbol"]
    assert main(["annotate", str(source), str(source), str(out), *labels, *model]) == EXIT_BAD_INPUT
    assert "--gene-symbols symbol names a column of both the query's and the reference's var" in capsys.readouterr().err
    assert not out.exists()


def test_version_verbose_after_the_subcommand_and_register_overwrite(tiny_checkpoint, capsys):
    import pytest

    import panfoma_sc as pf
    from panfoma_sc.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"panfoma {pf.__version__}"
    parser = build_parser()
    assert parser.parse_args(["embed", "a.h5ad", "b.h5ad", "-v"]).verbose
    assert parser.parse_args(["models", "list", "--verbose"]).verbose
    assert not parser.parse_args(["embed", "a.h5ad", "b.h5ad"]).verbose
    assert main(["models", "register", "twice", str(tiny_checkpoint)]) == EXIT_OK
    assert main(["models", "register", "twice", str(tiny_checkpoint)]) == EXIT_BAD_INPUT
    assert main(["models", "register", "twice", str(tiny_checkpoint), "--overwrite"]) == EXIT_OK


def test_integrate_command_defaults_are_the_functions():
    import inspect

    from panfoma_sc.cli import build_parser

    args = build_parser().parse_args(["integrate", "in.h5ad", "out.h5ad", "--batch-key", "b"])
    defaults = {k: p.default for k, p in inspect.signature(pf.tl.integrate).parameters.items()}
    shared = (set(vars(args)) & set(defaults)) - {"batch_key"}  # required on the command line
    assert {"learning_rate", "mmd_weight", "adversarial_weight", "max_epochs"} <= shared
    assert {k: getattr(args, k) for k in shared} == {k: defaults[k] for k in shared}
    assert args.learning_rate == 1e-4


def test_a_reader_closing_the_pipe_ends_the_command_quietly(tmp_path):
    # `panfoma models describe panfoma-tiny | head -3`: the reader goes before the output is written
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "PANFOMA_CACHE_DIR": str(tmp_path)}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "panfoma_sc.cli", "models", "describe", "panfoma-tiny"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == EXIT_OK
    assert "Traceback" not in done.stderr
    assert "BrokenPipeError" not in done.stderr
    assert "Exception ignored" not in done.stderr


def test_a_reader_taking_one_line_then_closing_gets_it_and_no_traceback(tmp_path):
    env = {**os.environ, "PANFOMA_CACHE_DIR": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "panfoma_sc.cli", "models", "describe", "panfoma-tiny"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    first = process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == EXIT_OK
    assert first == "{\n"
    assert "Traceback" not in stderr
    assert "BrokenPipeError" not in stderr


def test_registry_advice_is_worded_as_the_models_register_command(capsys):
    """The registry's hints name pf.models.register(...); on the command line they name the command."""
    assert main(["models", "describe", "mine"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "Unknown model 'mine'" in err
    assert "add yours with panfoma models register NAME PATH_OR_URL --sha256 SHA256." in err
    assert "pf.models.register" not in err


def test_models_list_fits_the_terminal(tiny_checkpoint, capsys, monkeypatch):
    description = "a long description " * 12
    assert main(["models", "register", "verbose-one", str(tiny_checkpoint), "--description", description]) == EXIT_OK
    capsys.readouterr()
    monkeypatch.setenv("COLUMNS", "120")
    assert main(["models", "list"]) == EXIT_OK
    listed = capsys.readouterr().out
    assert max(map(len, listed.splitlines())) <= 120
    assert "verbose-one" in listed
    assert "..." in listed
    # describe keeps the whole text
    assert main(["models", "describe", "verbose-one"]) == EXIT_OK
    assert description.strip() in json.loads(capsys.readouterr().out)["description"]
