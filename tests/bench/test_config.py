"""Config mistakes are refused when the config is loaded (files and dicts alike), before anything runs."""

from __future__ import annotations

import copy
import json

import pytest

import panfoma_sc as pf
from panfoma_sc.cli import EXIT_BAD_INPUT, main

VALID = {
    "run": {"seed": 0, "n_boot": 20},
    "methods": {"n_comps": 20},
    "tasks": {"annotation": {"methods": ["pca_knn"]}},
    "datasets": [
        {"name": "one", "files": ["one.h5ad"], "tasks": ["annotation"], "label_key": "cell_type"},
        {"name": "two", "files": ["two.h5ad"], "tasks": ["annotation"], "label_key": "cell_type"},
    ],
}


def _with(change) -> dict:
    config = copy.deepcopy(VALID)
    change(config)
    return config


def _set_dataset(key, value, index=1):
    def change(config):
        config["datasets"][index][key] = value

    return change


def _drop_dataset_key(key):
    def change(config):
        del config["datasets"][0][key]

    return change


CASES = {
    "misspelt run key": (lambda c: c["run"].update(modle="x"), r"unknown keys \['modle'\].*'model'"),
    "misspelt method setting": (lambda c: c["methods"].update(n_comp=5), r"unknown method settings \['n_comp'\]"),
    "unknown section": (lambda c: c.update(extra={}), r"unknown top-level sections \['extra'\].*'tasks'"),
    "task instead of tasks": (lambda c: c.update(task={"annotation": {}}), r"unknown top-level sections \['task'\]"),
    "misspelt task section": (
        lambda c: c["tasks"].update(annotaton={"methods": ["pca_knn"]}),
        r"\[tasks.annotaton\]: unknown task 'annotaton'; available tasks: \[.*'annotation'",
    ),
    "unknown task key": (lambda c: c["tasks"]["annotation"].update(method=["x"]), r"unknown keys \['method'\]"),
    "unknown task of a dataset": (_set_dataset("tasks", ["anotation"]), r"dataset 'two': unknown task 'anotation'"),
    "unknown method of a task": (
        lambda c: c["tasks"]["annotation"].update(methods=["pca_knnn"]),
        r"unknown annotation methods \['pca_knnn'\]; available: \[.*'pca_knn'",
    ),
    "unknown method of the second dataset": (
        _set_dataset("methods", {"annotation": ["pca_knnn"]}),
        r"dataset 'two': methods.annotation: unknown annotation methods \['pca_knnn'\]",
    ),
    "empty methods": (lambda c: c["tasks"]["annotation"].update(methods=[]), r"methods = \[\] names no method"),
    "dataset methods as a list": (
        _set_dataset("methods", ["pca_knn"]),
        r"dataset 'two': methods must be a table of lists per task, e.g. methods = \{ annotation = ",
    ),
    "dataset methods of a task it does not run": (
        _set_dataset("methods", {"integration": ["pca"]}),
        r"methods lists task 'integration', which is not in its tasks",
    ),
    "misspelt qc key": (
        _set_dataset("qc", {"min_gene": 50}),
        r"dataset 'two': qc: unknown keys \['min_gene'\]; valid keys: \[.*'min_genes'",
    ),
    "negative qc threshold": (_set_dataset("qc", {"min_genes": -1}), r"dataset 'two': QCThresholds\(min_genes=-1\)"),
    "no tasks": (_drop_dataset_key("tasks"), r"dataset 'one' lacks \['tasks'\]"),
    "no files": (_drop_dataset_key("files"), r"dataset 'one' lacks \['files'\]"),
    "files as a string": (_set_dataset("files", "two.h5ad"), r"files must be a non-empty list"),
    "no label_key for annotation": (_drop_dataset_key("label_key"), r"the annotation task needs \['label_key'\]"),
    "gene_table not a string": (_set_dataset("gene_table", 5), r"dataset 'two': gene_table = 5: name one file"),
    "no batch_key for integration": (
        _set_dataset("tasks", ["integration"]),
        r"the integration task needs \['batch_key'\]: name the obs column\(s\), e\.g\. batch_key = 'batch'\.",
    ),
    "n_boot 0": (lambda c: c["run"].update(n_boot=0), r"n_boot=0: use an integer >= 1"),
    "seed not a number": (lambda c: c["run"].update(seed="abc"), r"\[run\] seed='abc': use an integer"),
    "max_cells 0": (_set_dataset("max_cells", 0), r"max_cells=0: use an integer >= 1"),
    "fractions not summing to 1": (_set_dataset("fractions", [0.5, 0.2, 0.2]), r"fractions=.*summing to 1"),
    "two datasets of one name": (_set_dataset("name", "one"), r"dataset names \['one'\] are used twice"),
    "label_key as a list": (
        _set_dataset("label_key", ["cell_type"]),
        r"dataset 'two': label_key = \['cell_type'\]: name one obs column as a string",
    ),
    "donor_key a number": (_set_dataset("donor_key", 5), r"dataset 'two': donor_key = 5: name one obs column"),
    "unknown gate set": (
        _set_dataset("gates", "pbmc"),
        r"unknown gate set gates = 'pbmc'; available: \['pbmc_citeseq'\]",
    ),
    "gates a number": (_set_dataset("gates", 5), r"gates = 5: name a gate set \(\['pbmc_citeseq'\]\) or give a table"),
    "gate rule not a table": (_set_dataset("gates", {"B": "CD19"}), r"gates = \{'B': 'CD19'\}: name a gate set"),
    "layer as a list": (_set_dataset("layer", ["counts"]), r"dataset 'two': layer = \['counts'\]: name one layer"),
    "h5ad options on a paired dataset": (
        lambda c: c["datasets"].append(
            {"name": "cite", "files": ["cite.h5mu"], "tasks": ["multiomics"], "layer": "counts", "keep": {}}
        ),
        r"dataset 'cite': \['keep'\] apply to .h5ad datasets only",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_config_mistakes_are_refused_at_load(tmp_path, case):
    change, message = CASES[case]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(_with(change)))
    with pytest.raises(ValueError, match=message):
        pf.bench.load_config(path)


def test_a_valid_config_loads():
    path_free = copy.deepcopy(VALID)
    pf.bench._config.validate_config(path_free)  # does not raise
    assert path_free == VALID  # and does not change the config


def test_a_dataset_without_files_does_not_speak_of_unknown_keys(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"datasets": [{"name": "x", "tasks": ["annotation"]}]}))
    with pytest.raises(ValueError, match="lacks") as error:
        pf.bench.load_config(path)
    assert "unknown keys" not in str(error.value)


def test_a_dict_config_is_checked_before_anything_runs(tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the run started before the config was checked")

    monkeypatch.setattr("panfoma_sc.bench._harness._load_model", no_work)
    monkeypatch.setattr("panfoma_sc.bench._harness.build", no_work)
    config = _with(_set_dataset("methods", {"annotation": ["pca_knnn"]}))
    with pytest.raises(ValueError, match="pca_knnn"):
        pf.bench.run(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_toml_mistakes_exit_2_before_any_output(tmp_path, capsys):
    path = tmp_path / "bench.toml"
    path.write_text('[run]\nseed = 0\n[tasks.annotaton]\nmethods = ["pca_knn"]\n')
    assert main(["bench", "run", str(path), "--out", str(tmp_path / "out")]) == EXIT_BAD_INPUT
    assert "annotaton" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_folder_as_config_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", "run", str(tmp_path), "--out", str(tmp_path / "out")]) == EXIT_BAD_INPUT
    assert "is a folder: pass the config file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("suffix", "text", "message"),
    [
        (".toml", "[[datasets\n", r"Config 'bench.toml' is not valid TOML: Expected"),
        (".json", '{"datasets": [\n', r"Config 'bench.json' is not valid JSON: Expecting value"),
        (".yaml", "datasets: [\n", r"Config 'bench.yaml' is not valid YAML"),
    ],
)
def test_a_config_that_does_not_parse_names_the_file_and_exits_2(tmp_path, capsys, suffix, text, message):
    if suffix == ".yaml":
        pytest.importorskip("yaml")
    path = tmp_path / f"bench{suffix}"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        pf.bench.load_config(path)
    assert main(["bench", "run", str(path), "--out", str(tmp_path / "out")]) == EXIT_BAD_INPUT
    assert "is not valid" in capsys.readouterr().err


def test_the_recorded_command_can_be_pasted_into_a_shell(tmp_path, monkeypatch, capsys):
    import shlex

    import pandas as pd

    recorded = {}

    def run(config, out, *, command):
        recorded["command"] = command
        return pd.DataFrame({"status": ["ok"]})

    monkeypatch.setattr("panfoma_sc.bench._harness.run", run)
    config, out = tmp_path / "my bench.toml", tmp_path / "out dir"
    assert main(["bench", "run", str(config), "--out", str(out)]) == 0
    assert shlex.split(recorded["command"]) == ["panfoma", "bench", "run", str(config), "--out", str(out)]
