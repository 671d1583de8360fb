"""``pf.bench.run``: a config of datasets, tasks and methods -> results, figures and a report in a folder."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pandas as pd

from ._baselines import MethodContext
from ._build import _check_inputs, _input_files, build, read_manifest, write_manifest
from ._config import DEFAULT_METHODS, load_config, validate_config
from ._harmonize import GENE_TABLE_NAME
from ._multiomics import GRAPH_METHODS
from ._paired import build_paired, check_paired_input
from ._qc import QCThresholds
from ._tasks import TASKS
from ._timing import MEMORY_MEASURE

logger = logging.getLogger(__name__)

__all__ = ["run"]

#: Files a run writes into its output folder, removed at the start of a run so that none of an earlier run's
#: outputs is left next to (or linked from the report of) the new one.
RUN_FILES = ("results.csv", "results.md", "report.md", "per_class_f1.csv", "run.json")
#: Files a run writes into its subfolders (``figures/``, ``manifests/``), by pattern.
RUN_FILE_PATTERNS = (
    "figures/umap_*.png",
    "figures/results_table_*.png",
    "figures/per_class_f1_*.png",
    "manifests/*.json",
)


def _data_folder(config: Mapping) -> Path:
    folder = config.get("run", {}).get("data_dir")
    if folder is not None:
        folder = Path(folder)
        folder = folder if folder.is_absolute() else Path(config.get("_path", ".")).parent / folder
        if not folder.is_dir():
            msg = f"[run] data_dir {str(folder)!r} is not a folder: fix data_dir (relative to the config file)."
            raise FileNotFoundError(msg)
        return folder
    from ..datasets import data_dir

    return data_dir()


def _check_data(config: Mapping, folder: Path) -> None:
    """Refuse a config whose input files are not all in ``folder``, naming every missing one."""
    missing = {
        dataset["name"]: [str(f) for f in dataset["files"] if not (folder / f).is_file()]
        for dataset in config["datasets"]
    }
    for dataset in config["datasets"]:  # a named gene table is an input too
        if dataset.get("gene_table", "auto") != "auto" and not (folder / dataset["gene_table"]).is_file():
            missing.setdefault(dataset["name"], []).append(str(dataset["gene_table"]))
    missing = {name: files for name, files in missing.items() if files}
    if missing:
        msg = (
            f"Input files not found in {str(folder)!r}: {missing}. Fix the file names, or point [run] data_dir "
            "(or PANFOMA_DATA_DIR) at the folder that holds them; nothing was run."
        )
        raise FileNotFoundError(msg)


def _gene_table(dataset: Mapping, folder: Path) -> Path | str:
    """A dataset's Ensembl-to-symbol table: its ``gene_table``, else the data folder's GENCODE table, else "auto".

    ``gene_table`` is relative to the data folder; ``"auto"`` makes :func:`build` look in PANFOMA_DATA_DIR.
    """
    if dataset.get("gene_table", "auto") != "auto":
        return folder / dataset["gene_table"]
    beside = folder / GENE_TABLE_NAME
    return beside if beside.is_file() else "auto"


def _check_datasets(config: Mapping, folder: Path) -> None:
    """Check every dataset's inputs from their obs and layout, so that no mistake stops a long run.

    ``.h5ad`` datasets: obs columns, layer, labels and test groups; a paired ``.h5mu``: modalities, batch column
    and RNA layer.
    """
    for dataset in config["datasets"]:
        files = [folder / f for f in dataset["files"]]
        try:
            if files[0].suffix == ".h5mu":
                batch_key = dataset.get("batch_key") or "batch"
                check_paired_input(files[0], batch_key=batch_key, layer=dataset.get("layer"))
                continue
            _check_inputs(
                _input_files(files),
                dataset.get("label_key"),
                dataset.get("donor_key"),
                dataset.get("batch_key"),
                dataset.get("keep"),
                dataset.get("test_groups"),
                dataset.get("layer"),
                batch_required="integration" in dataset.get("tasks", []),
            )
        except (KeyError, ValueError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            msg = f"Dataset {dataset['name']!r}: {message} Nothing was run."
            raise type(err)(msg) from None


def _check_packages(config: Mapping) -> None:
    """Refuse a config whose tasks need scib-metrics when it is not installed, naming the extra that brings it.

    The integration task scores every method with scib-metrics, the multi-omics task every method but the
    graph-only ones. Baselines whose own package is missing (Harmony, scVI, muon's WNN) and paired datasets
    without mudata are skipped at run time with the reason instead, as the other datasets can still run.
    """
    if importlib.util.find_spec("scib_metrics") is not None:
        return
    needing = sorted(
        {
            task
            for dataset in config["datasets"]
            for task in dataset.get("tasks", [])
            if task == "integration"
            or (task == "multiomics" and set(_methods_of(config, dataset, task)) - GRAPH_METHODS)
        }
    )
    if needing:
        tasks = "The " + " and the ".join(f"{task} task" for task in needing)
        verb = "scores" if len(needing) == 1 else "score"
        msg = (
            f"{tasks} {verb} the embeddings with scib-metrics, which is not installed: "
            "pip install 'panfoma-sc[bench]', or drop the task from the config's datasets. Nothing was run."
        )
        raise ModuleNotFoundError(msg)


def _check_model(config: Mapping) -> None:
    """Refuse a ``[run] model`` that names no registered model or checkpoint file, when a PanFoMa method runs."""
    methods = {m for d in config["datasets"] for t in d.get("tasks", []) for m in _methods_of(config, d, t)}
    if not any(method.startswith("panfoma") for method in methods):
        return
    from ..models._registry import _resolve

    name = config.get("run", {}).get("model", "panfoma-tiny")
    try:
        target = _resolve(name)
        if isinstance(target, Path) and not target.is_file():
            msg = f"{str(target)!r} is not a checkpoint file."
            raise FileNotFoundError(msg)
    except (KeyError, ValueError, FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        msg = f"[run] model = {name!r}: {message} Nothing was run."
        raise type(err)(msg) from None


def _prepare_output(out: Path) -> Path:
    """Check ``out`` and create the staging folder the run writes into (``.<out name>.partial`` beside it).

    ``out`` itself is not touched until the run has finished (:func:`_publish`), so a run that stops leaves an
    earlier run's outputs there as they were.
    """
    if out.exists() and not out.is_dir():
        msg = f"Output {str(out)!r} is a file: pass a folder (new or from an earlier run) to --out/out."
        raise ValueError(msg)
    resolved = out.resolve()  # "." has no name of its own
    staging = resolved.parent / f".{resolved.name}.partial"
    if staging.exists():  # the leftovers of a run that stopped
        shutil.rmtree(staging)
    (staging / "manifests").mkdir(parents=True)
    (staging / "figures").mkdir()
    return staging


def _run_outputs(folder: Path) -> list[Path]:
    """The files a run writes that are in ``folder`` (and only those)."""
    found = [folder / name for name in RUN_FILES if (folder / name).is_file()]
    return found + [path for pattern in RUN_FILE_PATTERNS for path in sorted(folder.glob(pattern)) if path.is_file()]


def _publish(staging: Path, out: Path) -> None:
    """Replace the outputs of an earlier run in ``out`` (only the files a run writes) with the finished run's."""
    stale = _run_outputs(out) if out.is_dir() else []
    if stale:
        logger.info("Replacing %d outputs of an earlier run in %s.", len(stale), out)
        for path in stale:
            path.unlink()
    for path in _run_outputs(staging):
        target = out / path.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        path.replace(target)
    for folder in ("manifests", "figures"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging)


def _methods_of(config: Mapping, dataset: Mapping, task: str) -> list[str]:
    """The methods of ``task`` on ``dataset``: the dataset's, else ``[tasks.<task>]``'s, else the defaults."""
    if task in dataset.get("methods", {}):
        return list(dataset["methods"][task])
    task_settings = config.get("tasks", {}).get(task, {})
    if "methods" in task_settings:
        return list(task_settings["methods"])
    return list(DEFAULT_METHODS.get(task, []))


def _load_model(name: str):
    """The loaded model and its provenance, or the error message when it cannot be loaded."""
    from ..models import load

    try:
        model = load(name)
    except Exception as err:  # recorded in every PanFoMa row instead of stopping the baselines
        return name, {"name": name, "error": f"{type(err).__name__}: {err}"}
    trained_on = (model.info or {}).get("trained_on", {}) if hasattr(model, "info") else {}
    return model, {
        "name": model.name,
        "version": (model.info or {}).get("version") if hasattr(model, "info") else None,
        "sha256": model.sha256,
        "trained_on_files": list(trained_on.get("files", [])),
    }


def run(config: Mapping | str | Path, out: str | Path, *, command: str | None = None) -> pd.DataFrame:
    """Run a benchmark config and write its results into ``out``.

    Before any work the config is checked (:func:`load_config`; a dict too), every input file must be in the
    data folder, and each dataset's obs must hold its columns, labelled cells and ``test_groups``. The run writes
    into a staging folder beside ``out`` (``.<name>.partial``); only when it has finished do its outputs replace
    those of an earlier run in ``out`` (the files listed below, and only those), so the folder and its report
    show this run alone, and a run that stops (an error, Ctrl-C) leaves ``out`` as it was, its partial results in
    the staging folder.

    For each dataset: :func:`build` (harmonization, QC, donor splits; manifest in ``manifests/``) or, for a
    paired ``.h5mu`` file, :func:`build_paired`, then each task with its methods on the same cells and splits.
    A method the task returns no row for is recorded as ``failed``, so none drops out of the results unseen.
    Writes ``results.csv`` (one row per dataset, task
    and method, with status, metrics, confidence intervals, wall time and peak memory),
    ``per_class_f1.csv``, ``run.json`` (config, model checksum, versions, timing), ``figures/`` and the
    markdown report (:func:`render_report`).

    scib-metrics computes on JAX: where JAX has a GPU, it would take 75% of the GPU's memory at its first call and
    leave the torch models (PanFoMa, scVI) short. Unless ``XLA_PYTHON_CLIENT_PREALLOCATE`` is already set, the run
    sets it to ``false`` (JAX then allocates what it uses); it has no effect once JAX has computed in the process.

    Parameters
    ----------
    config
        The config (see :func:`load_config`) or its file.
    out
        Output folder (created; an earlier run's outputs in it are replaced).
    command
        The command line to record in the report.

    Returns
    -------
    The results table.

    Raises
    ------
    ValueError
        The config is invalid, ``out`` is a file, or a dataset's cells or ``test_groups`` do not fit its files.
    KeyError
        A dataset's ``label_key``, ``donor_key``, ``batch_key`` or ``keep`` column is not in its files' obs, or
        (when a PanFoMa method runs) ``[run] model`` is not a registered model.
    FileNotFoundError
        The data folder, an input file or the ``[run] model`` checkpoint file does not exist (all missing input
        files are named).
    ModuleNotFoundError
        The integration or multi-omics task would score with ``scib-metrics`` (the ``bench`` extra), which is not
        installed.

    Examples
    --------
    >>> pf.bench.run("panfomabench", "bench_out")  # doctest: +SKIP
    """
    if isinstance(config, Mapping):
        validate_config(config)
    else:
        config = load_config(config)
    out = Path(out)
    _check_packages(config)
    folder = _data_folder(config)
    _check_data(config, folder)
    _check_datasets(config, folder)
    _check_model(config)
    staging = _prepare_output(out)
    _share_the_gpu_with_jax()
    try:
        results = _run_datasets(config, folder, staging, command)
    except BaseException:
        logger.error(
            "The run stopped: %s is as it was; what this run wrote so far is in %s.", out.resolve(), staging.resolve()
        )
        raise
    _publish(staging, out)
    return results


def _share_the_gpu_with_jax() -> None:
    """Stop JAX (scib-metrics) from reserving most of the GPU's memory when it starts in this process."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def _run_datasets(config: Mapping, folder: Path, out: Path, command: str | None) -> pd.DataFrame:
    """Build and benchmark every dataset of ``config``, writing all outputs into ``out`` (the staging folder)."""
    from ._figures import plot_umaps
    from ._report import render_report

    settings = config.get("run", {})
    seed = int(settings.get("seed", 0))
    options = {**config.get("methods", {}), "seed": seed}
    start = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    model, model_info = _load_model(settings.get("model", "panfoma-tiny"))
    rows, per_class, datasets = [], [], []
    for dataset in config["datasets"]:
        name = dataset["name"]
        files = [folder / f for f in dataset["files"]]
        logger.info("Building %s from %s.", name, [f.name for f in files])
        label_key, batch_key = dataset.get("label_key"), dataset.get("batch_key")
        if files[0].suffix == ".h5mu":
            label_key, batch_key = label_key or "gated_label", batch_key or "batch"
            try:
                adata = build_paired(
                    files[0],
                    gates=dataset.get("gates", "pbmc_citeseq"),
                    label_key=label_key,
                    batch_key=batch_key,
                    layer=dataset.get("layer"),
                    qc=QCThresholds(**dataset.get("qc", {})),
                    max_cells=dataset.get("max_cells"),
                    seed=seed,
                )
            except ImportError as err:  # mudata/muon are an extra: the other datasets still run
                logger.warning("Dataset %s skipped: %s", name, err)
                rows.append({"dataset": name, "task": ",".join(dataset.get("tasks", [])), "status": "skipped"})
                rows[-1]["reason"] = str(err)
                continue
        else:
            adata = build(
                files,
                label_key=label_key,
                donor_key=dataset.get("donor_key"),
                batch_key=batch_key,
                keep=dataset.get("keep"),
                layer=dataset.get("layer"),
                qc=QCThresholds(**dataset.get("qc", {})),
                join=dataset.get("join", "inner"),
                fractions=tuple(dataset.get("fractions", (0.6, 0.2, 0.2))),
                test_groups=dataset.get("test_groups"),
                max_cells=dataset.get("max_cells"),
                gene_table=_gene_table(dataset, folder),
                seed=seed,
            )
        manifest = read_manifest(adata)
        write_manifest(manifest, out / "manifests" / f"{name}.json")
        seen = sorted(set(dataset["files"]) & set(model_info.get("trained_on_files", [])))
        datasets.append(
            {
                "dataset": name,
                "files": list(dataset["files"]),
                "tasks": list(dataset.get("tasks", [])),
                "n_cells": manifest["n_cells"],
                "n_genes": manifest["n_genes"],
                "max_cells_per_file": dataset.get("max_cells"),
                "split_unit": manifest["split_unit"],
                "split_units_per_file": {i["name"]: i["split_unit"] for i in manifest["inputs"]},
                "x_kind": {i["name"]: i["x_kind"] for i in manifest["inputs"]},
                "splits": {k: v["n_cells"] for k, v in manifest["splits"].items()},
                "labels": manifest.get("labels"),
                "flags": manifest["flags"],
                "seen_in_pretraining": seen,
                "note": dataset.get("note", ""),
            }
        )
        ctx = MethodContext(adata, model=model, options=options)
        for task in dataset.get("tasks", []):
            methods = _methods_of(config, dataset, task)
            spec = {
                "label_key": label_key,
                "batch_key": batch_key,
                "cv": dataset.get("cv", "leave_one_group_out" if task == "pan_cancer" else "split"),
                "n_boot": settings.get("n_boot", 1000),
                "split_unit": manifest["split_unit"],
            }
            logger.info("%s / %s: %s", name, task, methods)
            result = TASKS[task](ctx, spec, methods)
            for row in result.rows:
                if "error" in model_info and row["method"].startswith("panfoma") and row.get("status") != "ok":
                    row["reason"] = f"model could not be loaded: {model_info['error']}"
                rows.append({"dataset": name, **row})
            rows += _missing_rows(name, task, methods, result.rows)
            if not result.per_class.empty:
                per_class.append(result.per_class.assign(dataset=name, task=task))
            # written after every task, so a long run that stops early still leaves its results
            pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
            if task in {"integration", "multiomics"} and dataset.get("umap") and result.embeddings:
                plot_umaps(
                    result.embeddings,
                    adata.obs[label_key].astype(str).to_numpy(),
                    adata.obs[batch_key].astype(str).to_numpy(),
                    out / "figures" / f"umap_{name}.png",
                    title=name,
                    seed=seed,
                )
    results = pd.DataFrame(rows)
    results.to_csv(out / "results.csv", index=False)
    per_class_table = pd.concat(per_class, ignore_index=True) if per_class else pd.DataFrame()
    per_class_table.to_csv(out / "per_class_f1.csv", index=False)
    info = {
        "started": started,
        "wall_time_s": round(time.perf_counter() - start, 1),
        "command": command,
        "config_file": config.get("_path"),
        "config": {k: v for k, v in config.items() if k != "_path"},
        "seed": seed,
        "model": model_info,
        "method_options": options,
        "datasets": datasets,
        "memory_measure": MEMORY_MEASURE,
        "environment": _environment(),
    }
    (out / "run.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    render_report(out)
    return results


def _missing_rows(dataset: str, task: str, methods: list[str], task_rows: list[dict]) -> list[dict]:
    """A ``failed`` row for each requested method the task returned no row for, so none drops out unseen."""
    returned = {row.get("method") for row in task_rows}
    missing = [method for method in methods if method not in returned]
    for method in missing:
        logger.error("%s / %s: the task returned no result for method %s.", dataset, task, method)
    reason = "the task returned no result row for this method"
    return [
        {"dataset": dataset, "task": task, "method": method, "status": "failed", "reason": reason} for method in missing
    ]


def _environment() -> dict[str, object]:
    from .. import __version__

    versions = {"panfoma_sc": __version__, "python": platform.python_version()}
    for package in ("torch", "scanpy", "anndata", "scib-metrics", "scikit-learn", "harmonypy", "scvi-tools"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "versions": versions,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "load_average_1_5_15_min_at_end": None if load is None else [round(v, 2) for v in load],
    }
