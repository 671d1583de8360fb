"""PanFoMaBench: build benchmark datasets, run tasks and baselines, score embeddings, write reports."""

from ._build import build, read_manifest, write_manifest
from ._config import load_config, shipped_configs
from ._embedding_eval import (
    batch_correction,
    bio_conservation,
    graph_bio_conservation,
    knn_transfer,
    neighbor_graph,
    pca_embedding,
)
from ._gating import PBMC_CITESEQ_GATES, gate_cells, marker_positive
from ._harmonize import harmonize_genes, read_gene_table
from ._harness import run
from ._metrics import bootstrap_ci, classification_metrics, per_class_f1
from ._multiomics import MULTIOMICS_METHODS, pca_concatenation, protein_pca, wnn_graph
from ._paired import build_paired, shared_panel
from ._qc import QCThresholds, expression_kind, quality_control
from ._report import render_report
from ._splits import group_column, split_cells, split_groups
from ._tasks import TASKS, TaskResult, register_task

__all__ = [
    "MULTIOMICS_METHODS",
    "PBMC_CITESEQ_GATES",
    "TASKS",
    "QCThresholds",
    "TaskResult",
    "batch_correction",
    "bio_conservation",
    "bootstrap_ci",
    "build",
    "build_paired",
    "classification_metrics",
    "expression_kind",
    "gate_cells",
    "graph_bio_conservation",
    "group_column",
    "harmonize_genes",
    "knn_transfer",
    "load_config",
    "marker_positive",
    "neighbor_graph",
    "pca_concatenation",
    "pca_embedding",
    "per_class_f1",
    "protein_pca",
    "quality_control",
    "read_gene_table",
    "read_manifest",
    "register_task",
    "render_report",
    "run",
    "shared_panel",
    "shipped_configs",
    "split_cells",
    "split_groups",
    "wnn_graph",
    "write_manifest",
]
