"""The benchmark configs shipped with the package load, and every input they name passes the pre-run checks."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest

import panfoma_sc as pf
from panfoma_sc.bench._harness import _check_data, _check_datasets, _check_model

CONFIGS = sorted(pf.bench.shipped_configs().values())


def test_the_cpu_and_gpu_configs_are_shipped():
    assert {path.name for path in CONFIGS} >= {"panfomabench.toml", "panfomabench-gpu.toml"}


def test_a_shipped_config_loads_by_its_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository: a pip user's working folder
    shipped = pf.bench.shipped_configs()["panfomabench"]
    for name in ("panfomabench", "panfomabench.toml"):
        assert Path(pf.bench.load_config(name)["_path"]) == shipped
    (tmp_path / "panfomabench").mkdir()  # a folder of that name here: the user's path wins, and is refused
    with pytest.raises(ValueError, match=r"is a folder: pass the config file \(it hides the shipped config"):
        pf.bench.load_config("panfomabench")
    assert Path(pf.bench.load_config(str(shipped))["_path"]) == shipped  # the way round it that the error names
    with pytest.raises(FileNotFoundError, match=r"or pass the name of a config that ships with panfoma-sc: \["):
        pf.bench.load_config("panfomabench-cpu")


def test_the_benchmarks_folder_links_to_the_shipped_configs():
    benchmarks = Path(__file__).parents[2] / "benchmarks"
    if not benchmarks.is_dir():
        pytest.skip("no benchmarks/ folder (tests run from an sdist)")
    for path in CONFIGS:
        assert (benchmarks / path.name).resolve() == path.resolve()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_a_shipped_config_passes_the_checks_made_before_a_run(path):
    config = pf.bench.load_config(path)
    _check_model(config)
    folder = os.environ.get("PANFOMA_DATA_DIR")
    if not folder or not Path(folder).is_dir():
        pytest.skip("PANFOMA_DATA_DIR is not set: checking a config's input files needs the shared data folder")
    _check_data(config, Path(folder))
    _check_datasets(config, Path(folder))


def test_the_gpu_config_runs_every_cell_at_the_tools_default_budgets():
    config = pf.bench.load_config("panfomabench-gpu")
    assert all("max_cells" not in dataset for dataset in config["datasets"])
    defaults = {
        tool: inspect.signature(getattr(pf.tl, tool)).parameters["max_epochs"].default
        for tool in ("annotate", "integrate")
    }
    assert config["methods"]["finetune_max_epochs"] == defaults["annotate"]
    assert config["methods"]["integrate_max_epochs"] == defaults["integrate"]
    assert "integrate_max_steps" not in config["methods"]
