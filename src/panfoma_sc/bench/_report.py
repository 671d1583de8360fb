"""``pf.bench.render_report``: a benchmark output folder -> markdown tables, figures and ``report.md``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ._figures import plot_per_class_f1, plot_results_table

__all__ = ["render_report"]

TASK_TITLES = {
    "annotation": "Annotation (reference -> query on held-out donors)",
    "pan_cancer": "Pan-cancer classification (leave one patient out)",
    "integration": "Integration (scib-metrics)",
    "multiomics": "Multi-omics (paired RNA + protein, labels from protein gating)",
}


def _fmt(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}f}"
    return str(value)


def _interval(row: pd.Series, metric: str) -> str:
    low, high = row.get(f"{metric}_low"), row.get(f"{metric}_high")
    if pd.isna(row.get(metric)):
        return ""
    if pd.isna(low):
        return _fmt(row[metric])
    return f"{row[metric]:.3f} [{low:.3f}, {high:.3f}]"


def _markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---" if table[c].dtype == object else "---:" for c in table.columns) + "|"
    lines = [header, rule]
    lines += ["| " + " | ".join(str(v).replace("|", "/") for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def _labels(rows: pd.DataFrame) -> list[str]:
    """Each row's method label, with the PCA components that row used."""
    from ._baselines import method_label

    n_comps = rows["n_comps"] if "n_comps" in rows else pd.Series(np.nan, index=rows.index)
    return [method_label(method, [n]) for method, n in zip(rows["method"], n_comps, strict=True)]


def _classification_table(rows: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "dataset": rows["dataset"],
            "method": _labels(rows),
            "accuracy [95% CI]": [_interval(r, "accuracy") for _, r in rows.iterrows()],
            "macro-F1 [95% CI]": [_interval(r, "macro_f1") for _, r in rows.iterrows()],
            "CI over": [
                f"{int(r['ci_n_units'])} {r['ci_unit']}" if pd.notna(r.get("ci_n_units")) else ""
                for _, r in rows.iterrows()
            ],
            "test cells": rows["n_test_cells"].map(lambda v: "" if pd.isna(v) else int(v)),
            "time (s)": rows["seconds"].map(lambda v: _fmt(v, 1)),
            "peak mem (MB)": rows["peak_memory_mb"].map(lambda v: _fmt(v, 0)),
        }
    )


def _integration_table(rows: pd.DataFrame) -> pd.DataFrame:
    table = pd.DataFrame({"dataset": rows["dataset"], "method": _labels(rows)})
    for column, header in (
        ("avg_bio", "AvgBIO"),
        ("avg_batch", "AvgBATCH"),
        ("total", "Total"),
        ("nmi", "NMI"),
        ("ari", "ARI"),
        ("asw_label", "ASW label"),
        ("asw_batch", "ASW batch"),
        ("graph_connectivity", "graph conn."),
        ("ilisi", "iLISI"),
    ):
        table[header] = rows[column].map(_fmt) if column in rows else ""
    table["time (s)"] = rows["seconds"].map(lambda v: _fmt(v, 1))
    table["peak mem (MB)"] = rows["peak_memory_mb"].map(lambda v: _fmt(v, 0))
    return table


def _multiomics_table(rows: pd.DataFrame) -> pd.DataFrame:
    table = pd.DataFrame({"dataset": rows["dataset"], "method": _labels(rows)})
    for column, header in (
        ("avg_bio", "AvgBIO"),
        ("nmi", "NMI"),
        ("ari", "ARI"),
        ("asw_label", "ASW label"),
        ("avg_bio_graph", "AvgBIO graph"),
        ("nmi_graph", "NMI graph"),
        ("ari_graph", "ARI graph"),
        ("avg_batch", "AvgBATCH"),
    ):
        table[header] = rows[column].map(_fmt) if column in rows else ""
    table["scored cells"] = rows["n_cells"].map(lambda v: "" if pd.isna(v) else int(v))
    table["time (s)"] = rows["seconds"].map(lambda v: _fmt(v, 1))
    table["peak mem (MB)"] = rows["peak_memory_mb"].map(lambda v: _fmt(v, 0))
    return table


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _read_results(folder: Path) -> pd.DataFrame:
    """``results.csv`` of a run's folder; an error naming the fix when it is absent or holds no row."""
    path = folder / "results.csv"
    if not path.is_file():
        msg = f"{str(folder)!r} has no results.csv: run `panfoma bench run CONFIG --out {folder}` first."
        raise FileNotFoundError(msg)
    try:
        results = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        results = pd.DataFrame()
    if results.empty or not {"dataset", "task", "status"} <= set(results.columns):
        msg = (
            f"{str(path)!r} holds no benchmark results (empty or not written by a run): run "
            f"`panfoma bench run CONFIG --out {folder}` again."
        )
        raise ValueError(msg)
    return results


def _read_optional_table(path: Path) -> pd.DataFrame:
    """A CSV table the report can do without (``per_class_f1.csv``): empty when absent or empty."""
    if not path.is_file():
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def render_report(folder: str | Path) -> str:
    """Render a benchmark output folder: per-task tables, figures and ``report.md``.

    Reads ``results.csv`` and, when present, ``per_class_f1.csv`` and ``run.json`` written by
    :func:`panfoma_sc.bench.run`;
    writes ``results.md`` (the tables), ``figures/results_table_<task>.png``,
    ``figures/per_class_f1_<task>_<dataset>.png`` and ``report.md`` (tables, figures, datasets with their
    split units, subsampling, flags, settings and cost measures). Figures are linked relative to the folder.

    Parameters
    ----------
    folder
        The output folder of a run.

    Returns
    -------
    The markdown of ``report.md``.
    """
    folder = Path(folder)
    results = _read_results(folder)
    info = json.loads((folder / "run.json").read_text()) if (folder / "run.json").is_file() else {}
    per_class = _read_optional_table(folder / "per_class_f1.csv")
    (folder / "figures").mkdir(exist_ok=True)

    model = info.get("model", {})
    options = info.get("method_options", {})
    lines = ["# PanFoMaBench results", ""]
    sha = str(model.get("sha256") or "")[:12]
    cores = info.get("environment", {}).get("cpu_count", "?")
    lines.append(
        f"Model `{model.get('name', '?')}` (version {model.get('version', '?')}, sha256 `{sha}…`), seed "
        f"{info.get('seed', '?')}, run {info.get('started', '?')} on {cores} CPU cores; whole run "
        f"{info.get('wall_time_s', '?')} s."
    )
    load = info.get("environment", {}).get("load_average_1_5_15_min_at_end")
    if load:
        lines += [
            "",
            f"Load average of the machine at the end of the run (1/5/15 min): {load}; wall times include waiting "
            "for the CPU when other jobs share it.",
        ]
    if info.get("command"):
        lines += ["", f"Command: `{info['command']}`"]
    settings = ", ".join(f"{k}={v}" for k, v in sorted(options.items()) if v is not None)
    lines += ["", f"Method settings: {settings}.", ""]

    tables = []
    for task in [t for t in TASK_TITLES if t in set(results.get("task", pd.Series(dtype=str)))] + sorted(
        set(results.get("task", pd.Series(dtype=str)).dropna()) - set(TASK_TITLES)
    ):
        rows = results[(results["task"] == task) & (results["status"] == "ok")]
        if rows.empty:
            continue
        lines += [f"## {TASK_TITLES.get(task, task)}", ""]
        if task == "integration":
            table = _integration_table(rows)
        elif task == "multiomics":
            table = _multiomics_table(rows)
        elif {"accuracy", "macro_f1"} <= set(rows.columns):
            table = _classification_table(rows)
        else:
            table = rows.drop(columns=["status", "reason"], errors="ignore")
        markdown = _markdown(table)
        tables += [f"## {TASK_TITLES.get(task, task)}", "", markdown, ""]
        lines += [markdown, ""]
        figure = plot_results_table(results, task, folder / "figures" / f"results_table_{task}.png")
        if figure is not None:
            lines += [f"![{task} results table](figures/{figure.name})", ""]
        if not per_class.empty and task not in {"integration", "multiomics"}:
            for dataset, part in per_class[per_class["task"] == task].groupby("dataset"):
                name = f"per_class_f1_{task}_{_slug(str(dataset))}.png"
                if plot_per_class_f1(part, folder / "figures" / name, title=f"{task}: {dataset}") is not None:
                    lines += [f"![per-class F1, {dataset}](figures/{name})", ""]
        if task in {"integration", "multiomics"}:
            for dataset in rows["dataset"].unique():
                umap = folder / "figures" / f"umap_{dataset}.png"
                if umap.is_file():
                    lines += [f"![UMAPs, {dataset}](figures/{umap.name})", ""]

    noted = results[(results["status"] == "ok") & results.get("reason", pd.Series(dtype=str)).fillna("").ne("")]
    if not noted.empty:  # e.g. test classes absent from training: scores to read with that in mind
        notes = noted.groupby(["dataset", "task"], sort=False)["reason"].agg(lambda r: "; ".join(dict.fromkeys(r)))
        lines += ["## Notes on scored results", "", _markdown(notes.reset_index(name="note")), ""]

    not_run = results[results["status"] != "ok"]
    if not not_run.empty:
        reasons = not_run["reason"].astype(str).map(lambda r: r if len(r) <= 140 else r[:137] + "...")
        not_run = not_run.assign(reason=reasons).reindex(columns=["dataset", "task", "method", "status", "reason"])
        # a dataset skipped as a whole (data absent) has one row and no method
        lines += ["## Methods not run", "", _markdown(not_run.fillna({"method": "all"})), ""]

    if info.get("datasets"):
        lines += ["## Datasets", ""]
        table = pd.DataFrame(
            {
                "dataset": [d["dataset"] for d in info["datasets"]],
                "tasks": [", ".join(d["tasks"]) for d in info["datasets"]],
                "cells (train/val/test)": [
                    f"{d['n_cells']} ({d['splits']['train']}/{d['splits']['val']}/{d['splits']['test']})"
                    if d.get("splits")
                    else f"{d['n_cells']} (no split)"
                    for d in info["datasets"]
                ],
                "genes": [d["n_genes"] for d in info["datasets"]],
                "max cells per file": [d.get("max_cells_per_file") or "all" for d in info["datasets"]],
                "split by": [
                    "CELLS (one donor/batch)"
                    if d["split_unit"] == "cells"
                    else "; ".join(sorted(set(d["split_units_per_file"].values())))
                    for d in info["datasets"]
                ],
                "X": [", ".join(sorted(set(d["x_kind"].values()))) for d in info["datasets"]],
                "in pretraining corpus": [
                    "yes (unlabelled)" if d["seen_in_pretraining"] else "no" for d in info["datasets"]
                ],
            }
        )
        lines += [_markdown(table), ""]
        notes = [(d["dataset"], d.get("note", ""), d.get("flags", [])) for d in info["datasets"]]
        for dataset, note, flags in notes:
            if note or flags:
                text = " ".join([note, *[f"Flag: {f}." for f in flags]]).strip()
                lines.append(f"- **{dataset}**: {text}")
        lines.append("")
    lines += [
        "## How the numbers are measured",
        "",
        "- Classifiers are fitted on the train and val donors and scored on the test donors (pan-cancer: each "
        "patient in turn is the test set). 95% intervals: percentile bootstrap over test donors (over cells "
        "where the test cells come from a single donor, as in a dataset of one donor: such intervals ignore "
        "donor-to-donor variation; results.csv's ci_unit says which).",
        "- Integration metrics use scib-metrics on every cell of the dataset: AvgBIO = mean(NMI, ARI, ASW "
        "label), AvgBATCH = mean(ASW batch, graph connectivity), Total = 0.6 AvgBIO + 0.4 AvgBATCH.",
        "- Multi-omics: every cell is embedded; the cells with a label from protein-marker gating are scored "
        "(AvgBIO and AvgBATCH as for integration). Methods that read the proteins are favoured by construction, "
        "since the labels come from the proteins. AvgBIO graph = mean(NMI, ARI) of Leiden clusters of the "
        "method's 15-NN graph (WNN: its own graph, which has no embedding) at the best-NMI resolution in "
        "0.1-2.0.",
        "- Time: wall clock of the method, including the one-off embedding it reuses (PanFoMa zero-shot, PCA).",
        f"- Memory: {info.get('memory_measure', 'peak RSS increase')}.",
        "",
    ]
    report = "\n".join(lines)
    (folder / "report.md").write_text(report)
    (folder / "results.md").write_text("\n".join(tables))
    return report
