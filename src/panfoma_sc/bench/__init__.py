"""PanFoMaBench: build benchmark datasets, run tasks and baselines, score embeddings, write reports."""

from ._build import build, read_manifest, write_manifest
from ._embedding_eval import batch_correction, bio_conservation, knn_transfer, pca_embedding
from ._gating import PBMC_CITESEQ_GATES, gate_cells, marker_positive
from ._harmonize import harmonize_genes, read_gene_table
from ._harness import load_config, run
from ._metrics import bootstrap_ci, classification_metrics, per_class_f1
from ._qc import QCThresholds, expression_kind, quality_control
from ._report import render_report
from ._splits import group_column, split_cells, split_groups
from ._tasks import TASKS, TaskResult, register_task

__all__ = [
    "PBMC_CITESEQ_GATES",
    "TASKS",
    "QCThresholds",
    "TaskResult",
    "batch_correction",
    "bio_conservation",
    "bootstrap_ci",
    "build",
    "classification_metrics",
    "expression_kind",
    "gate_cells",
    "group_column",
    "harmonize_genes",
    "knn_transfer",
    "load_config",
    "marker_positive",
    "pca_embedding",
    "per_class_f1",
    "quality_control",
    "read_gene_table",
    "read_manifest",
    "register_task",
    "render_report",
    "run",
    "split_cells",
    "split_groups",
    "write_manifest",
]
