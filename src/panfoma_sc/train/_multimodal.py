"""Joint fine-tuning on paired cells: PanFoMa reads RNA tokens and protein / chromatin feature tokens together."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._memory import returns_freed_memory
from .._progress import progress_bar
from .._settings import settings, torch_threads
from ..data.features import append_feature_tokens
from ..models._pretrained import PretrainedModel, tokens_to_torch
from ..nn import BatchDiscriminator, PanFoMa, masked_bin_loss
from ..nn.multimodal import add_feature_tokens
from ._finetune import (
    CellRows,
    FineTuneConfig,
    _apply_gradients,
    _masked_inputs_and_mvc_targets,
    _scheduled_minibatches,
    _step_budget,
    batch_mmd,
    integration_settings,
    keeps_torch_rng,
)
from ._history import POSTFIX_EVERY, StepLosses

logger = logging.getLogger(__name__)

__all__ = ["FeatureTokens", "MultimodalEncoder", "finetune_multimodal"]


@dataclass
class FeatureTokens:
    """The non-RNA features of the cells, as tokens.

    Attributes
    ----------
    bins
        ``(n_cells, n_features)`` int64 value bins (see :func:`panfoma_sc.data.features.feature_bins`); 0 where a
        feature was not measured in a cell.
    modality
        ``(n_features,)`` modality index of each feature (0, 1, ... in the order of ``modality_names``).
    modality_names
        Name of each modality (e.g. ``["prot"]``).
    gene_ids
        ``(n_features,)`` vocabulary id of the gene coding each feature (a protein's gene), -1 where none: such
        features start from that gene's embedding.
    """

    bins: np.ndarray
    modality: np.ndarray
    modality_names: list[str]
    gene_ids: np.ndarray

    @property
    def n_features(self) -> int:
        """Number of features."""
        return int(self.bins.shape[1])


def _multimodal_network(model: PretrainedModel, features: FeatureTokens, device: str) -> PanFoMa:
    network = model.checkpoint.build_model(device)  # a new copy: the loaded model stays untouched
    network.activation_checkpointing = settings.activation_checkpointing
    gene_weight = network.embedding.gene.weight.detach()
    init = torch.randn(features.n_features, gene_weight.shape[1], device=gene_weight.device) * 0.02
    coded = np.flatnonzero(features.gene_ids >= 0)
    init[coded] = gene_weight[torch.as_tensor(features.gene_ids[coded], device=gene_weight.device)]
    return add_feature_tokens(network, torch.as_tensor(features.modality, dtype=torch.long), init)


@dataclass
class MultimodalEncoder:
    """A PanFoMa network fine-tuned to read gene and feature tokens; embeds the cells it was tuned on.

    Attributes
    ----------
    model
        The pretrained model it started from (tokenizer settings and vocabulary).
    network
        The fine-tuned network (in eval mode).
    n_genes
        Gene tokens per cell.
    """

    model: PretrainedModel
    network: PanFoMa
    n_genes: int

    def tokens(self, cells: CellRows, features: FeatureTokens, rows: np.ndarray, block, *, seed: int, device: str):
        """Gene tokens (the model's selection rule) with the cells' feature tokens appended, on ``device``."""
        tokenizer = self.model.tokenizer(self.n_genes)
        gene_tokens = tokenizer(block, cells.gene_ids, cells.cell_keys[rows], seed=seed)
        feature_ids = len(self.model.vocab) + np.arange(features.n_features)
        joint = append_feature_tokens(gene_tokens, feature_ids, features.bins[rows], pad_id=self.model.vocab.pad_id)
        return tokens_to_torch(joint, device)

    @torch_threads()
    def embed(
        self,
        cells: CellRows,
        features: FeatureTokens,
        *,
        batch_size: int = 64,
        device: str | None = None,
        seed: int = 0,
        progress: bool = True,
    ) -> np.ndarray:
        """``(n_cells, d_model)`` float32 joint embeddings, ``batch_size`` cells at a time."""
        device = settings.resolve_device(device)
        self.network.to(device).eval()
        output = np.empty((cells.n_cells, self.network.config.d_model), dtype=np.float32)
        bar = progress_bar(total=cells.n_cells, enabled=progress, desc="embed", unit="cells")
        with torch.inference_mode(), bar:
            for start in range(0, cells.n_cells, batch_size):
                rows = np.arange(start, min(start + batch_size, cells.n_cells))
                tokens = self.tokens(cells, features, rows, cells.block(rows), seed=seed, device=device)
                output[rows] = self.network(*tokens).cell_embedding.float().cpu().numpy()
                bar.update(rows.size)
        return output


class _JointObjective(nn.Module):
    """Masked values of genes and features, MVC reconstruction of both from the cell embedding, batch terms."""

    def __init__(self, network: PanFoMa, n_batches: int) -> None:
        super().__init__()
        self.network = network
        self.n_batches = n_batches
        self.batch_embedding = nn.Embedding(max(n_batches, 1), network.config.d_model)
        nn.init.zeros_(self.batch_embedding.weight)
        self.discriminator = BatchDiscriminator(network.config.d_model, max(n_batches, 2))

    def forward(self, tokens, masked_bins, hidden, batches, targets):
        gene_ids, bins, padding = tokens
        output = self.network(gene_ids, masked_bins, padding)
        flat = bins.reshape(bins.shape[0], -1)
        loss_value = masked_bin_loss(self.network.value_logits(output), flat, hidden.reshape(hidden.shape[0], -1))
        # the reconstruction decoder is told the batch, so the cell embedding need not carry it
        conditioned = output.cell_embedding + self.batch_embedding(batches)
        losses = {"loss_value": loss_value}
        for name, (ids, target_bins, keep) in targets.items():
            logits = self.network.mvc_head(conditioned, self.network.embedding.token_vectors(ids))
            losses[name] = masked_bin_loss(logits, target_bins, keep)
        if self.n_batches >= 2:
            losses["loss_batch"], losses["loss_confusion"] = self.discriminator.losses(output.cell_embedding, batches)
            losses["loss_mmd"] = batch_mmd(output.cell_embedding, batches, self.n_batches)
        return losses


@returns_freed_memory
@torch_threads()
@keeps_torch_rng
def finetune_multimodal(
    model: PretrainedModel,
    cells: CellRows,
    features: FeatureTokens,
    batches: np.ndarray | None = None,
    n_batches: int = 1,
    *,
    config: FineTuneConfig | None = None,
    feature_weight: float = 1.0,
    adversarial_weight: float = 1.0,
    mmd_weight: float = 10.0,
    mvc_genes: int = 128,
    device: str | None = None,
    progress: bool = True,
) -> tuple[MultimodalEncoder, pd.DataFrame]:
    """Fine-tune PanFoMa on paired cells so that its cell embedding carries the RNA and the other modalities.

    Each cell is one sequence: its gene tokens and its feature tokens (proteins, chromatin components), the
    latter with their own embeddings and a learned modality embedding. The objective is the pretraining one
    extended to features: masked values (genes and features hidden together, so each modality is predicted
    from the other) and reconstruction from the cell embedding of expressed and silent genes and of every
    measured feature. With several batches, the reconstruction is told the batch, and an adversarial batch
    classifier and a maximum mean discrepancy term remove it from the embedding (as in ``finetune_integration``).

    Parameters
    ----------
    model
        Pretrained starting point (not modified).
    cells
        The cells' RNA rows.
    features
        Their feature tokens.
    batches
        ``(n_cells,)`` integer batch of each cell, or ``None``.
    n_batches
        Number of batches (1: no batch terms).
    config
        Fine-tuning settings (``validation_fraction`` and ``patience`` are not used).
    feature_weight
        Weight of the feature reconstruction from the cell embedding.
    adversarial_weight
        Weight of the batch discriminator's loss and of the encoder's confusion loss (with several batches).
    mmd_weight
        Weight of the batch MMD (with several batches).
    mvc_genes
        Reconstructed genes per cell (half expressed, half silent).
    device
        Torch device (default: auto).
    progress
        Show a progress bar.

    Returns
    -------
    The fine-tuned encoder and the per-step loss history.
    """
    config = config or FineTuneConfig()
    device = settings.resolve_device(device)
    batches = np.zeros(cells.n_cells, dtype=np.int64) if batches is None else np.asarray(batches, dtype=np.int64)
    torch.manual_seed(config.seed)
    network = _multimodal_network(model, features, device).train()
    objective = _JointObjective(network, n_batches).to(device).train()
    embedding = network.embedding
    new_parameters = [
        embedding.feature.weight,
        embedding.modality.weight,
        *objective.batch_embedding.parameters(),
        *objective.discriminator.parameters(),
    ]
    new_ids = {id(p) for p in new_parameters}
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in network.parameters() if id(p) not in new_ids], "lr": config.learning_rate},
            {"params": new_parameters, "lr": config.head_learning_rate},
        ],
        weight_decay=config.weight_decay,
    )
    encoder = MultimodalEncoder(model=model, network=network, n_genes=config.n_genes)
    feature_ids = torch.as_tensor(len(model.vocab) + np.arange(features.n_features), device=device)
    rng = np.random.default_rng(config.seed)
    every = np.arange(cells.n_cells)
    _, total_steps = _step_budget(every.size, config)
    ramp = max(total_steps // 3, 1)
    step_losses = StepLosses()
    with progress_bar(total=total_steps, enabled=progress, desc="joint fine-tune", unit="step") as bar:
        for step, epoch, rows in _scheduled_minibatches(every, config, rng):
            block = cells.block(rows)
            tokens = encoder.tokens(cells, features, rows, block, seed=config.seed + epoch, device=device)
            masked, hidden, mvc_ids, mvc_bins = _masked_inputs_and_mvc_targets(
                model,
                cells,
                rows,
                block,
                tokens[1],
                tokens[2],
                seed=config.seed,
                step=step,
                epoch=epoch,
                mvc_genes=mvc_genes,
            )
            mvc_bins = torch.from_numpy(mvc_bins).to(device)
            feature_bins = torch.from_numpy(features.bins[rows]).to(device)
            every_gene = torch.ones_like(mvc_bins, dtype=torch.bool)
            targets = {
                "loss_mvc": (torch.from_numpy(mvc_ids).to(device), mvc_bins, every_gene),
                "loss_feature": (feature_ids.expand(rows.size, -1), feature_bins, feature_bins > 0),
            }
            losses = objective(tokens, masked, hidden, torch.from_numpy(batches[rows]).to(device), targets)
            loss = losses["loss_value"] + losses["loss_mvc"] + feature_weight * losses["loss_feature"]
            if "loss_batch" in losses:
                strength = min(1.0, (step + 1) / ramp)
                adversarial = losses["loss_batch"] + strength * losses["loss_confusion"]
                loss = loss + adversarial_weight * adversarial + mmd_weight * losses["loss_mmd"]
            _apply_gradients(optimizer, loss, objective.parameters())
            step_losses.append(step, losses)
            bar.update(1)
            last = len(step_losses) == total_steps
            if progress and (len(step_losses) % POSTFIX_EVERY == 1 or last):  # first, every 10th and last step
                shown = step_losses.latest()
                bar.set_postfix(feature=f"{shown['loss_feature']:.3f}", mvc=f"{shown['loss_mvc']:.3f}")
    history = step_losses.records()
    network.eval()
    logger.info("Joint fine-tuning: %d steps (%s).", len(history), integration_settings(config))
    return encoder, pd.DataFrame(history)
