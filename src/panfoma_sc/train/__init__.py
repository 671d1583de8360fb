"""Pretraining: corpus streaming, objectives, the training loop with exact resume, DDP (imports torch)."""

from ._corpus import EVALUATION_HOLDOUT, PretrainingCorpus, build_vocabulary, default_pretraining_files
from ._distributed import finish_distributed, init_distributed
from ._finetune import CellRows, FineTuneConfig, finetune_classifier, finetune_integration
from ._pretrain import PretrainingObjective, TrainingConfig, pretrain

__all__ = [
    "EVALUATION_HOLDOUT",
    "CellRows",
    "FineTuneConfig",
    "PretrainingCorpus",
    "PretrainingObjective",
    "TrainingConfig",
    "build_vocabulary",
    "default_pretraining_files",
    "finetune_classifier",
    "finetune_integration",
    "finish_distributed",
    "init_distributed",
    "pretrain",
]
