"""Pretraining: corpus streaming, objectives, the training loop with exact resume, DDP (imports torch)."""

from ._corpus import (
    EVALUATION_HOLDOUT,
    EVALUATION_HOLDOUT_CELLS,
    PretrainingCorpus,
    build_vocabulary,
    check_training_files,
    default_excluded_cells,
    default_pretraining_files,
    ensembl_ids_by_symbol,
)
from ._distributed import finish_distributed, init_distributed
from ._finetune import CellRows, FineTuneConfig, finetune_classifier, finetune_integration, integration_settings
from ._gene_factors import corpus_gene_contrastive, corpus_gene_factors
from ._multimodal import FeatureTokens, MultimodalEncoder, finetune_multimodal
from ._pretrain import InvalidSettingError, PretrainingObjective, TrainingConfig, check_resumable, pretrain

__all__ = [
    "EVALUATION_HOLDOUT",
    "EVALUATION_HOLDOUT_CELLS",
    "CellRows",
    "FeatureTokens",
    "FineTuneConfig",
    "InvalidSettingError",
    "MultimodalEncoder",
    "PretrainingCorpus",
    "PretrainingObjective",
    "TrainingConfig",
    "build_vocabulary",
    "check_resumable",
    "check_training_files",
    "corpus_gene_contrastive",
    "corpus_gene_factors",
    "default_excluded_cells",
    "default_pretraining_files",
    "ensembl_ids_by_symbol",
    "finetune_classifier",
    "finetune_integration",
    "finetune_multimodal",
    "finish_distributed",
    "init_distributed",
    "integration_settings",
    "pretrain",
]
