"""Benchmark figures: scib-style results table, per-class F1 bars, UMAPs of each method's embedding."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["plot_per_class_f1", "plot_results_table", "plot_umaps"]

#: Integration columns of the results table: (column, header, aggregate?).
INTEGRATION_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("nmi", "NMI", False),
    ("ari", "ARI", False),
    ("asw_label", "ASW label", False),
    ("asw_batch", "ASW batch", False),
    ("graph_connectivity", "Graph conn.", False),
    ("ilisi", "iLISI", False),
    ("avg_bio", "AvgBIO", True),
    ("avg_batch", "AvgBATCH", True),
    ("total", "Total", True),
)
#: Multi-omics columns of the results table (WNN has graph scores only).
MULTIOMICS_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("nmi", "NMI", False),
    ("ari", "ARI", False),
    ("asw_label", "ASW label", False),
    ("nmi_graph", "NMI graph", False),
    ("ari_graph", "ARI graph", False),
    ("avg_batch", "AvgBATCH", True),
    ("avg_bio", "AvgBIO", True),
    ("avg_bio_graph", "AvgBIO graph", True),
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _label(method: str, n_comps: Iterable[object] = ()) -> str:
    """The method's label, with the PCA components it used (see :func:`~panfoma_sc.bench._baselines.method_label`)."""
    from ._baselines import method_label

    return method_label(method, n_comps)


def _shared_datasets(rows: pd.DataFrame) -> list[str]:
    """The datasets on which every method of ``rows`` has a result."""
    methods_per_dataset = rows.groupby("dataset")["method"].nunique()
    return sorted(methods_per_dataset.index[methods_per_dataset == rows["method"].nunique()])


def summary_table(results: pd.DataFrame, task: str) -> tuple[pd.DataFrame, list[tuple[str, str, bool]], str] | None:
    """What :func:`plot_results_table` draws: methods x scores, the columns (name, header, is an aggregate), title.

    Means are taken over the datasets on which every method has a result, so that a method that failed on a hard
    dataset does not rank higher for it; the title says so when that leaves some datasets out.
    """
    rows = results[(results["task"] == task) & (results["status"] == "ok")]
    if rows.empty:
        return None
    shared = _shared_datasets(rows)
    n_datasets = rows["dataset"].nunique()
    everywhere = len(shared) == n_datasets
    datasets = "datasets" if everywhere else f"the {len(shared)} of {n_datasets} datasets every method ran"
    if task in {"integration", "multiomics"}:
        spec = INTEGRATION_COLUMNS if task == "integration" else MULTIOMICS_COLUMNS
        columns = [(c, h, a) for c, h, a in spec if c in rows]
        if not columns:
            return None
        table = rows[rows["dataset"].isin(shared)].groupby("method")[[c for c, _, _ in columns]].mean()
        table = table.reindex(sorted(rows["method"].unique()))
        title = f"{'Integration' if task == 'integration' else 'Multi-omics'} (mean over {datasets})"
    elif "macro_f1" in rows:
        table = rows.pivot_table(index="method", columns="dataset", values="macro_f1")
        table["mean"] = table[shared].mean(axis=1)
        columns = [(c, str(c).replace("_", " ")[:22], False) for c in table.columns[:-1]]
        columns.append(("mean", "Mean macro-F1" if everywhere else f"Mean of {len(shared)} shared", True))
        cells = "test cells" if task == "annotation" else "held-out patients"
        title = f"{task.replace('_', ' ').capitalize()}: macro-F1 on {cells}"
        title += "" if everywhere else f"; mean over {datasets}"
    else:  # a task registered elsewhere, without scores this figure knows
        return None
    return table.sort_values(columns[-1][0], ascending=True, na_position="first"), columns, title


def plot_results_table(results: pd.DataFrame, task: str, path: str | Path) -> Path | None:
    """A scib-metrics-style table: methods as rows, scores as coloured circles, aggregates as bars.

    Integration and multi-omics show each metric averaged over the datasets (the aggregates as bars);
    classification tasks show macro-F1 per dataset and its mean. Rows are sorted by the last column.

    Parameters
    ----------
    results
        The results table of :func:`panfoma_sc.bench.run`.
    task
        ``"integration"``, ``"multiomics"``, ``"annotation"`` or ``"pan_cancer"``.
    path
        Output image.

    Returns
    -------
    The path, or ``None`` when the task has no successful rows or no scores this figure knows.
    """
    plt = _pyplot()
    summary = summary_table(results, task)
    if summary is None:
        return None
    table, columns, title = summary
    rows = results[(results["task"] == task) & (results["status"] == "ok")]
    n_rows, n_cols = table.shape[0], len(columns)
    fig, ax = plt.subplots(figsize=(2.2 + 1.15 * n_cols + 2.2, 0.9 + 0.45 * n_rows))
    cmap = plt.get_cmap("viridis")
    for j, (column, header, aggregate) in enumerate(columns):
        values = table[column].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
        for i, value in enumerate(values):
            if not np.isfinite(value):
                continue
            scaled = 0.5 if high == low else (value - low) / (high - low)
            if aggregate:
                ax.barh(
                    i, 0.9 * max(value, 0), left=j - 0.45, height=0.6, color=plt.get_cmap("YlGnBu")(0.3 + 0.7 * scaled)
                )
                ax.text(j - 0.42, i, f"{value:.2f}", va="center", ha="left", fontsize=8)
            else:
                ax.scatter(j, i, s=120 + 380 * scaled, color=cmap(scaled), edgecolors="none")
                ax.text(
                    j,
                    i,
                    f"{value:.2f}",
                    va="center",
                    ha="center",
                    fontsize=6.5,
                    color="white" if scaled < 0.6 else "black",
                )
        ax.text(j, n_rows - 0.3, header, ha="center", va="bottom", fontsize=8, rotation=0, fontweight="bold")
    ax.set_yticks(
        range(n_rows),
        [_label(m, rows.loc[rows["method"] == m, "n_comps"] if "n_comps" in rows else ()) for m in table.index],
        fontsize=8,
    )
    ax.set_xlim(-0.6, n_cols - 0.4)
    ax.set_ylim(-0.6, n_rows + 0.2)
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_per_class_f1(per_class: pd.DataFrame, path: str | Path, *, title: str = "") -> Path | None:
    """Grouped bars of F1 per class (rows) and method (colours), class support in the labels.

    Parameters
    ----------
    per_class
        Rows of ``per_class_f1.csv`` for one dataset and task (``method``, ``class``, ``f1``, ``n_cells``).
    path
        Output image.
    title
        Figure title.

    Returns
    -------
    The path, or ``None`` for an empty table.
    """
    plt = _pyplot()
    if per_class.empty:
        return None
    table = per_class.pivot_table(index="class", columns="method", values="f1")
    support = per_class.groupby("class")["n_cells"].first()
    methods: Sequence[str] = list(table.columns)
    n_classes = table.shape[0]
    fig, ax = plt.subplots(figsize=(9, 0.8 + n_classes * (0.12 * len(methods) + 0.2)))
    height = 0.8 / max(len(methods), 1)
    colors = plt.get_cmap("tab10")
    for k, method in enumerate(methods):
        ax.barh(
            np.arange(n_classes) + k * height,
            table[method].to_numpy(),
            height=height,
            label=_label(method),
            color=colors(k % 10),
        )
    ax.set_yticks(
        np.arange(n_classes) + 0.4 - height / 2, [f"{c} (n={int(support[c])})" for c in table.index], fontsize=8
    )
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1 on test cells")
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_umaps(
    embeddings: Mapping[str, np.ndarray],
    labels: np.ndarray,
    batches: np.ndarray,
    path: str | Path,
    *,
    title: str = "",
    seed: int = 0,
) -> Path:
    """UMAP of each method's embedding, coloured by label (top row) and batch (bottom row).

    Parameters
    ----------
    embeddings
        ``{method: (n_cells, d)}`` of the same cells.
    labels, batches
        Label and batch of each cell.
    path
        Output image.
    title
        Figure title.
    seed
        UMAP seed.

    Returns
    -------
    The path.
    """
    import scanpy as sc
    from anndata import AnnData

    plt = _pyplot()
    methods = list(embeddings)
    fig, axes = plt.subplots(2, len(methods), figsize=(3.1 * len(methods), 6.2), squeeze=False)
    for j, method in enumerate(methods):
        work = AnnData(obs=pd.DataFrame(index=[str(i) for i in range(len(labels))]))
        work.obsm["X_emb"] = np.asarray(embeddings[method], dtype=np.float32)
        sc.pp.neighbors(work, use_rep="X_emb", n_neighbors=15, random_state=seed)
        sc.tl.umap(work, random_state=seed)
        coords = work.obsm["X_umap"]
        for i, (values, name) in enumerate(((labels, "label"), (batches, "batch"))):
            ax = axes[i, j]
            categories = pd.Categorical(values)
            palette = plt.get_cmap("tab20" if len(categories.categories) > 10 else "tab10")
            for k, category in enumerate(categories.categories):
                cells = categories == category
                ax.scatter(*coords[cells].T, s=3, color=palette(k % 20), label=str(category), rasterized=True)
            ax.set_xticks([])
            ax.set_yticks([])
            label = _label(method, [np.shape(embeddings[method])[1]])
            ax.set_title(f"{label}\n({name})", fontsize=8)
            if j == len(methods) - 1:
                ax.legend(fontsize=6, markerscale=3, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
