"""Fine-tuning a pretrained PanFoMa: a cell-type classifier, and batch-corrected (integrated) encoders."""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import sparse
from torch import nn

from .._arguments import MAX_SEED, require_integer, require_number
from .._memory import returns_freed_memory
from .._progress import progress_bar
from .._settings import settings, torch_threads
from ..data.rows import GeneColumns, iter_row_blocks, row_major
from ..data.tokenizer import sample_expression_targets
from ..models._pretrained import CLASSIFIER_HEAD, PretrainedModel, tokens_to_torch
from ..nn import BatchDiscriminator, CellClassifier, PanFoMa, masked_bin_loss
from ._history import POSTFIX_EVERY, StepLosses
from ._masking import mask_values

logger = logging.getLogger(__name__)

__all__ = ["CellRows", "FineTuneConfig", "finetune_classifier", "finetune_integration", "keeps_torch_rng"]


def keeps_torch_rng(function: Callable) -> Callable:
    """Run ``function``, which seeds torch's global generators, and give the caller's generator states back after.

    Fine-tuning seeds torch for reproducible dropout and initialization; the user's own draws after the call must
    not depend on it.
    """

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            return function(*args, **kwargs)

    return wrapper


@dataclass
class CellRows:
    """Expression rows matched to a model's vocabulary.

    Attributes
    ----------
    matrix
        ``(cells, genes)`` numpy array, scipy sparse matrix or backed dataset.
    columns
        Columns of ``matrix`` the model uses (:attr:`panfoma_sc.pp.GeneMatch.read_columns`).
    gene_ids
        Vocabulary id of each of ``columns``.
    cell_keys
        Per-cell sampling keys.
    rows
        The rows of ``matrix`` that are the cells (sorted ascending); default every row. A subset is read from
        ``matrix`` as it is needed, never copied out whole (a backed reference with unlabelled cells).
    """

    matrix: Any
    columns: np.ndarray | GeneColumns
    gene_ids: np.ndarray
    cell_keys: np.ndarray
    rows: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.matrix = row_major(self.matrix)  # in-memory CSC: converted once, not for every block

    @property
    def n_cells(self) -> int:
        """Number of rows."""
        return int(self.matrix.shape[0] if self.rows is None else self.rows.size)

    def block(self, cells: np.ndarray) -> sparse.csr_matrix:
        """CSR block of ``cells`` (positions among the cells, any order), restricted to the model's columns."""
        order = np.argsort(cells, kind="stable")
        rows = cells[order] if self.rows is None else self.rows[cells[order]]
        (_, block), *_ = iter_row_blocks(self.matrix, max(len(rows), 1), columns=self.columns, rows=rows)
        return block[np.argsort(order)]


@dataclass
class FineTuneConfig:
    """Settings of a fine-tuning run.

    Attributes
    ----------
    n_genes
        Genes per cell while fine-tuning (chosen by the model's inference rule).
    batch_size
        Cells per optimizer step.
    max_epochs
        Upper bound on passes over the cells.
    max_steps
        Optional cap on optimizer steps (``None``: no cap).
    learning_rate
        Learning rate of the pretrained network. The classifier defaults (5e-4, head 3e-3, patience 3) were chosen
        on a pbmc3k reference/query split from the training corpus (query accuracy 0.44 with 1e-4/1e-3/2,
        0.55 with 5e-4/1e-3/3, 0.62 with 5e-4/3e-3/3); ``pf.tl.integrate`` passes its own learning rate.
    head_learning_rate
        Learning rate of the new heads.
    weight_decay
        AdamW weight decay.
    validation_fraction
        Share of labelled cells held out for early stopping (classifier only).
    patience
        Epochs without a better validation loss before stopping (classifier only).
    probe_steps
        Classifier only: full-batch steps that first fit the new head on the frozen network's embeddings of the
        training cells (a linear probe, then fine-tuning: LP-FT). The probed model is also the first candidate
        of early stopping, so fine-tuning is kept only where it beats the probe on the validation cells. 0 goes
        straight to fine-tuning a randomly initialized head.
    seed
        Seed of splits, shuffling, gene draws and head initialization.
    """

    n_genes: int = 256
    batch_size: int = 32
    max_epochs: int = 15
    max_steps: int | None = None
    learning_rate: float = 5e-4
    head_learning_rate: float = 3e-3
    weight_decay: float = 0.01
    validation_fraction: float = 0.15
    patience: int = 3
    probe_steps: int = 300
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_genes", "batch_size", "max_epochs"):
            require_integer(name, getattr(self, name), 1)
        require_integer("max_steps", self.max_steps, 1, allow_none=True)
        require_integer("patience", self.patience, 1)
        require_integer("probe_steps", self.probe_steps, 0)
        require_integer("seed", self.seed, 0, maximum=MAX_SEED)
        for name in ("learning_rate", "head_learning_rate"):
            require_number(name, getattr(self, name), 0, low_open=True)
        require_number("weight_decay", self.weight_decay, 0)
        if not (isinstance(self.validation_fraction, float | int) and 0 <= self.validation_fraction < 1):
            msg = f"validation_fraction must lie in [0, 1), got {self.validation_fraction!r}."
            raise ValueError(msg)


def _minibatches(indices: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    shuffled = rng.permutation(indices)
    for start in range(0, shuffled.size, batch_size):
        yield shuffled[start : start + batch_size]


def _scheduled_minibatches(
    indices: np.ndarray, config: FineTuneConfig, rng: np.random.Generator
) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(step, epoch, rows)`` of every optimizer step: reshuffled passes over ``indices`` until the step budget."""
    steps_per_epoch, total_steps = _step_budget(indices.size, config)
    step = 0
    while step < total_steps:
        for rows in _minibatches(indices, config.batch_size, rng):
            yield step, step // steps_per_epoch, rows
            step += 1
            if step >= total_steps:
                return


def _apply_gradients(optimizer: torch.optim.Optimizer, loss: torch.Tensor, parameters) -> None:
    """One optimizer step on ``loss``, gradients clipped to norm 1."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimizer.step()


def _step_budget(n_cells: int, config: FineTuneConfig) -> tuple[int, int]:
    """``(steps_per_epoch, total_steps)``: ``max_epochs`` passes over ``n_cells``, capped at ``max_steps``."""
    steps_per_epoch = max(-(-n_cells // config.batch_size), 1)
    total_steps = config.max_epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    return steps_per_epoch, total_steps


def _masked_inputs_and_mvc_targets(
    model: PretrainedModel,
    cells: CellRows,
    rows: np.ndarray,
    block,
    bins: torch.Tensor,
    padding: torch.Tensor,
    *,
    seed: int,
    step: int,
    epoch: int,
    mvc_genes: int,
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """The self-supervised part of a fine-tuning step: masked value tokens and MVC targets of these rows.

    Returns the masked bins, the hidden-position mask, and ``mvc_genes`` query genes per cell (half expressed,
    half silent) with their target bins, all seeded by ``seed``, ``step`` and ``epoch``.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    masked, hidden = mask_values(
        bins, padding, mask_bin=model.config.n_bins, ratio_range=(0.15, 0.4), generator=generator
    )
    mvc_ids, mvc_bins = sample_expression_targets(
        block,
        cells.gene_ids,
        cells.cell_keys[rows],
        n_genes=mvc_genes,
        n_bins=model.config.n_bins,
        seed=seed + epoch + 1,
    )
    return masked, hidden, mvc_ids, mvc_bins


def _split(codes: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/validation split; classes with fewer than 2 cells stay in training."""
    rng = np.random.default_rng(seed)
    validation = []
    for code in np.unique(codes):
        members = rng.permutation(np.flatnonzero(codes == code))
        n_validation = round(fraction * members.size) if members.size >= 2 else 0
        validation.append(members[: min(n_validation, members.size - 1)])
    validation = np.sort(np.concatenate(validation)) if validation else np.array([], dtype=int)
    train = np.setdiff1d(np.arange(codes.size), validation)
    return train, validation


def _fresh_network(model: PretrainedModel, device: str) -> PanFoMa:
    network = model.checkpoint.build_model(device)  # a new copy: the loaded model stays untouched
    network.activation_checkpointing = settings.activation_checkpointing
    return network.train()


def _step_tokens(
    model: PretrainedModel, cells: CellRows, rows: np.ndarray, block, n_genes: int, seed: int, device: str
):
    # the model's own gene-selection rule, as at inference: a classifier trained on random gene subsets and
    # applied to the most expressed genes would see two different distributions
    tokenizer = model.tokenizer(n_genes)
    return tokens_to_torch(tokenizer(block, cells.gene_ids, cells.cell_keys[rows], seed=seed), device)


@returns_freed_memory
@torch_threads()
@keeps_torch_rng
def finetune_classifier(
    model: PretrainedModel,
    cells: CellRows,
    labels: np.ndarray,
    classes: list[str],
    *,
    config: FineTuneConfig | None = None,
    device: str | None = None,
    progress: bool = True,
) -> tuple[PretrainedModel, pd.DataFrame]:
    """Fine-tune the whole network with a classification head; early stopping on a validation split.

    Parameters
    ----------
    model
        Pretrained starting point (not modified).
    cells
        Labelled cells.
    labels
        ``(n_cells,)`` integer class of each cell (index into ``classes``).
    classes
        Class names.
    config
        Fine-tuning settings.
    device
        Torch device (default: auto).
    progress
        Show a progress bar.

    Returns
    -------
    The fine-tuned model (in memory, with a ``"classifier"`` head and its classes in ``info``, and the base
    model and these settings in ``info["fine_tuned_from"]`` and ``info["fine_tuning"]``), and the per-epoch
    history (train loss, validation loss and accuracy).

    Raises
    ------
    ValueError
        ``labels`` are not one integer per cell of ``cells``, each an index into ``classes``.
    """
    config = config or FineTuneConfig()
    device = settings.resolve_device(device)
    labels = _class_codes(labels, cells.n_cells, len(classes), name="labels", count_name="len(classes)")
    torch.manual_seed(config.seed)
    network = _fresh_network(model, device)
    head = CellClassifier(model.config.d_model, len(classes)).to(device).train()
    train, validation = _split(labels, config.validation_fraction, config.seed)
    counts = np.bincount(labels[train], minlength=len(classes)).astype(np.float64)
    class_weight = torch.tensor(
        np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max((counts > 0).sum(), 1), 0.0),
        dtype=torch.float32,
        device=device,
    )
    optimizer = torch.optim.AdamW(
        [
            {"params": network.parameters(), "lr": config.learning_rate},
            {"params": head.parameters(), "lr": config.head_learning_rate},
        ],
        weight_decay=config.weight_decay,
    )
    rng = np.random.default_rng(config.seed)
    _, total_steps = _step_budget(train.size, config)
    history, best, best_loss, stale, step = [], None, np.inf, 0, 0
    if config.probe_steps:
        record = {"epoch": -1, "step": 0} | _probe_head(
            model, network, head, cells, train, labels, class_weight, config, device
        )
        if validation.size:
            record |= _validate(model, network, head, cells, validation, labels, config, device)
        history.append(record)
        best_loss = record.get("validation_loss", record["train_loss"])
        best = (copy.deepcopy(network.state_dict()), copy.deepcopy(head.state_dict()), -1)
    bar = progress_bar(total=total_steps, enabled=progress, desc="fine-tune classifier", unit="step")
    for epoch in range(config.max_epochs):
        network.train(), head.train()
        train_loss, seen = torch.zeros((), device=device), 0  # summed on the device, read once per epoch
        for rows in _minibatches(train, config.batch_size, rng):
            block = cells.block(rows)
            output = network(*_step_tokens(model, cells, rows, block, config.n_genes, config.seed + epoch, device))
            target = torch.from_numpy(labels[rows]).to(device)
            loss = F.cross_entropy(head(output.cell_embedding).float(), target, weight=class_weight)
            _apply_gradients(optimizer, loss, [*network.parameters(), *head.parameters()])
            train_loss += loss.detach().float() * rows.size
            seen += rows.size
            step += 1
            bar.update(1)
            if progress and step % POSTFIX_EVERY == 1:  # the first step, then every 10th
                bar.set_postfix(epoch=epoch, loss=f"{float(loss.detach()):.3f}")
            if step >= total_steps:
                break
        record = {"epoch": epoch, "step": step, "train_loss": float(train_loss) / max(seen, 1)}
        if progress:  # the epoch's mean loss, read anyway: the bar's last line is current
            bar.set_postfix(epoch=epoch, loss=f"{record['train_loss']:.3f}")
        if validation.size:
            record |= _validate(model, network, head, cells, validation, labels, config, device)
        history.append(record)
        monitored = record.get("validation_loss", record["train_loss"])
        if monitored < best_loss - 1e-4:
            best_loss, stale = monitored, 0
            best = (copy.deepcopy(network.state_dict()), copy.deepcopy(head.state_dict()), epoch)
        else:
            stale += 1
        if step >= total_steps or (validation.size and stale >= config.patience):
            break
    bar.close()
    network_state, head_state, best_epoch = best
    network.load_state_dict(network_state)
    head.load_state_dict(head_state)
    logger.info("Fine-tuned classifier: best epoch %d (-1: the linear probe) of %d.", best_epoch, len(history))
    info = {
        "fine_tuned_from": _base_model_provenance(model),
        "classifier": {
            "classes": list(classes),
            "best_epoch": best_epoch,
            "n_cells": int(labels.size),
            "n_validation_cells": int(validation.size),
            "history": history,
        },
        "fine_tuning": dataclass_dict(config),
    }
    tuned = PretrainedModel.from_network(
        network.eval(),
        model.vocab,
        name=f"{model.name}-classifier",
        info=info,
        heads={CLASSIFIER_HEAD: head.eval()},
        n_genes=model.tokenizer(config.n_genes).n_genes,
    )
    return tuned, pd.DataFrame(history)


@torch.no_grad()
def _frozen_embeddings(
    model: PretrainedModel, network: PanFoMa, cells: CellRows, rows: np.ndarray, config: FineTuneConfig, device: str
) -> torch.Tensor:
    """Cell embeddings of ``rows`` by the network in eval mode with the inference tokenizer."""
    network.eval()
    tokenizer = model.tokenizer(config.n_genes)
    parts = []
    for start in range(0, rows.size, config.batch_size):
        batch = rows[start : start + config.batch_size]
        tokens = tokenizer(cells.block(batch), cells.gene_ids, cells.cell_keys[batch], seed=config.seed)
        parts.append(network(*tokens_to_torch(tokens, device)).cell_embedding.float())
    return torch.cat(parts)


def _probe_head(
    model: PretrainedModel,
    network: PanFoMa,
    head: CellClassifier,
    cells: CellRows,
    train: np.ndarray,
    labels: np.ndarray,
    class_weight: torch.Tensor,
    config: FineTuneConfig,
    device: str,
) -> dict[str, float]:
    """Fit ``head`` on the frozen embeddings of the training cells; returns its final training loss."""
    embeddings = _frozen_embeddings(model, network, cells, train, config, device)
    target = torch.from_numpy(labels[train]).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.head_learning_rate, weight_decay=config.weight_decay)
    head.train()
    for _ in range(config.probe_steps):
        loss = F.cross_entropy(head(embeddings).float(), target, weight=class_weight)
        _apply_gradients(optimizer, loss, head.parameters())
    head.eval()
    with torch.no_grad():
        loss = F.cross_entropy(head(embeddings).float(), target, weight=class_weight)
    return {"train_loss": float(loss)}


@torch.no_grad()
def _validate(
    model: PretrainedModel,
    network: PanFoMa,
    head: CellClassifier,
    cells: CellRows,
    rows: np.ndarray,
    labels: np.ndarray,
    config: FineTuneConfig,
    device: str,
) -> dict[str, float]:
    network.eval(), head.eval()
    tokenizer = model.tokenizer(config.n_genes)  # the inference tokenizer: deterministic
    totals = torch.zeros(2, dtype=torch.float64 if device == "cpu" else torch.float32, device=device)
    for start in range(0, rows.size, config.batch_size):
        batch = rows[start : start + config.batch_size]
        tokens = tokenizer(cells.block(batch), cells.gene_ids, cells.cell_keys[batch], seed=config.seed)
        logits = head(network(*tokens_to_torch(tokens, device)).cell_embedding).float()
        target = torch.from_numpy(labels[batch]).to(device)
        # summed on the device (loss, correct calls), read once: a read per batch would wait for the device
        totals += torch.stack([F.cross_entropy(logits, target, reduction="sum"), (logits.argmax(1) == target).sum()])
    loss, correct = totals.tolist()
    return {"validation_loss": loss / rows.size, "validation_accuracy": correct / rows.size}


def dataclass_dict(config: FineTuneConfig) -> dict[str, Any]:
    """JSON-able settings."""
    return {k: v for k, v in vars(config).items() if v is not None}


#: :class:`FineTuneConfig` fields that only the classifier uses (integration has no labels to validate on)
CLASSIFIER_ONLY = ("validation_fraction", "patience", "probe_steps")


def integration_settings(config: FineTuneConfig) -> dict[str, Any]:
    """JSON-able settings of an integration run: those it uses, without the classifier-only ones."""
    return {k: v for k, v in dataclass_dict(config).items() if k not in CLASSIFIER_ONLY}


def _base_model_provenance(model: PretrainedModel) -> dict[str, Any]:
    """What a fine-tuned model records of its starting point: name, version and checksum (``None`` when unknown).

    A base that was itself fine-tuned keeps its own ``fine_tuned_from``, so the whole lineage stays readable.
    """
    record = {"name": model.name, "version": model.info.get("version"), "sha256": model.sha256}
    if "fine_tuned_from" in model.info:
        record["fine_tuned_from"] = model.info["fine_tuned_from"]
    return record


def _class_codes(codes: Any, n_cells: int, n_classes: int, *, name: str, count_name: str) -> np.ndarray:
    """``codes`` as int64, once checked to hold one integer per cell, each in ``0..n_classes - 1``.

    ``name`` and ``count_name`` are the arguments that hold the codes and the number of classes, for the messages.
    """
    array = np.asarray(codes)
    if array.ndim != 1 or array.size != n_cells:
        msg = (
            f"{name} has shape {array.shape}, but there are {n_cells} cells: pass one code per cell, in the order of "
            "the cells' rows."
        )
        raise ValueError(msg)
    if array.dtype.kind not in "iu":
        msg = (
            f"{name} must be integer codes, got dtype {array.dtype}. Encode the values first, e.g. "
            "categories = pd.Categorical(values), then pass categories.codes."
        )
        raise ValueError(msg)
    if array.size and (array.min() < 0 or array.max() >= n_classes):
        msg = (
            f"{name} must lie in 0..{n_classes - 1} ({count_name} is {n_classes}), got values from {array.min()} to "
            f"{array.max()}. -1 is how pandas codes a missing value: leave those cells out first; for a code "
            f"past the end, check {count_name}."
        )
        raise ValueError(msg)
    return array.astype(np.int64)


def batch_mmd(embedding: torch.Tensor, batches: torch.Tensor, n_batches: int | None = None) -> torch.Tensor:
    """Mean squared maximum mean discrepancy between each batch's cells and the other cells of the minibatch.

    Multi-scale Gaussian kernels on L2-normalized embeddings; 0 when the minibatch holds a single batch. The
    mean is over the batches present, computed for all ``n_batches`` at once without asking which are present
    (which would make the host wait for the device); ``None`` reads it from ``batches``.
    """
    z = F.normalize(embedding.float(), dim=-1)
    squared = torch.cdist(z, z).pow(2)
    kernel = sum(torch.exp(-squared / (2 * width**2)) for width in (0.1, 0.2, 0.5, 1.0))
    n_batches = int(batches.max()) + 1 if n_batches is None else n_batches
    inside = F.one_hot(batches, n_batches).to(kernel.dtype)  # (B, K)
    outside = 1.0 - inside
    n_in, n_out = inside.sum(0), outside.sum(0)
    within_in = (inside * (kernel @ inside)).sum(0) / (n_in * n_in).clamp(min=1.0)
    within_out = (outside * (kernel @ outside)).sum(0) / (n_out * n_out).clamp(min=1.0)
    between = (inside * (kernel @ outside)).sum(0) / (n_in * n_out).clamp(min=1.0)
    # a batch counts when it has cells in the minibatch and others do too (so one batch alone gives 0)
    counted = ((n_in > 0) & (n_out > 0)).to(kernel.dtype)
    terms = within_in + within_out - 2 * between
    return (terms * counted).sum() / counted.sum().clamp(min=1.0)


class _IntegrationObjective(nn.Module):
    """Masked-value + batch-conditioned MVC + adversarial batch terms + batch MMD on the cell embedding."""

    def __init__(self, network: PanFoMa, n_batches: int) -> None:
        super().__init__()
        self.network = network
        self.batch_embedding = nn.Embedding(n_batches, network.config.d_model)
        nn.init.zeros_(self.batch_embedding.weight)
        self.discriminator = BatchDiscriminator(network.config.d_model, n_batches)

    def forward(self, tokens, masked_bins, hidden, batches, mvc_ids, mvc_bins):
        gene_ids, bins, padding = tokens
        output = self.network(gene_ids, masked_bins, padding)
        flat = bins.reshape(bins.shape[0], -1)
        loss_value = masked_bin_loss(self.network.value_logits(output), flat, hidden.reshape(hidden.shape[0], -1))
        # the decoder is told the batch, so the cell embedding need not carry it to reconstruct the profile
        conditioned = output.cell_embedding + self.batch_embedding(batches)
        logits = self.network.mvc_head(conditioned, self.network.embedding.gene(mvc_ids))
        loss_mvc = masked_bin_loss(logits, mvc_bins, torch.ones_like(mvc_bins, dtype=torch.bool))
        loss_batch, loss_confusion = self.discriminator.losses(output.cell_embedding, batches)
        mmd = batch_mmd(output.cell_embedding, batches, self.discriminator.n_batches)
        return loss_value, loss_mvc, loss_batch, loss_confusion, mmd


@returns_freed_memory
@torch_threads()
@keeps_torch_rng
def finetune_integration(
    model: PretrainedModel,
    cells: CellRows,
    batches: np.ndarray,
    n_batches: int,
    *,
    config: FineTuneConfig | None = None,
    adversarial_weight: float = 1.0,
    mmd_weight: float = 0.0,
    mvc_genes: int = 128,
    device: str | None = None,
    progress: bool = True,
) -> tuple[PretrainedModel, pd.DataFrame]:
    """Fine-tune the encoder so its cell embedding keeps the expression profile but not the batch.

    The objective is the pretraining one (masked values, and MVC reconstruction of expressed and silent
    genes from the cell embedding) with two changes: the MVC decoder also receives a learned batch
    embedding, and a batch discriminator learns to predict the batch from the cell embedding while the encoder
    learns to make its prediction uniform (:class:`~panfoma_sc.nn.BatchDiscriminator`; the encoder's term ramped
    up over the first third of the steps, as in DANN).

    Parameters
    ----------
    model
        Pretrained starting point (not modified).
    cells
        The cells to integrate.
    batches
        ``(n_cells,)`` integer batch of each cell.
    n_batches
        Number of batches.
    config
        Fine-tuning settings (``validation_fraction`` and ``patience`` are not used: there are no labels).
    adversarial_weight
        Weight of the batch discriminator's loss and of the encoder's confusion loss.
    mmd_weight
        Weight of the maximum mean discrepancy between each batch's embeddings and the rest of the minibatch.
    mvc_genes
        Reconstructed genes per cell (half expressed, half silent).
    device
        Torch device (default: auto).
    progress
        Show a progress bar.

    Returns
    -------
    The fine-tuned model (in memory) and the per-step loss history.

    Raises
    ------
    ValueError
        ``batches`` are not one integer per cell of ``cells``, each in ``0..n_batches - 1``.
    """
    config = config or FineTuneConfig()
    device = settings.resolve_device(device)
    batches = _class_codes(batches, cells.n_cells, n_batches, name="batches", count_name="n_batches")
    torch.manual_seed(config.seed)
    objective = _IntegrationObjective(_fresh_network(model, device), n_batches).to(device).train()
    new_parameters = [*objective.batch_embedding.parameters(), *objective.discriminator.parameters()]
    optimizer = torch.optim.AdamW(
        [
            {"params": objective.network.parameters(), "lr": config.learning_rate},
            {"params": new_parameters, "lr": config.head_learning_rate},
        ],
        weight_decay=config.weight_decay,
    )
    rng = np.random.default_rng(config.seed)
    every = np.arange(cells.n_cells)
    _, total_steps = _step_budget(every.size, config)
    ramp = max(total_steps // 3, 1)
    step_losses = StepLosses()
    with progress_bar(total=total_steps, enabled=progress, desc="integrate", unit="step") as bar:
        for step, epoch, rows in _scheduled_minibatches(every, config, rng):
            block = cells.block(rows)  # read once: tokens and MVC targets come from the same rows
            tokens = _step_tokens(model, cells, rows, block, config.n_genes, config.seed + epoch, device)
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
            strength = min(1.0, (step + 1) / ramp)
            loss_value, loss_mvc, loss_batch, loss_confusion, loss_mmd = objective(
                tokens,
                masked,
                hidden,
                torch.from_numpy(batches[rows]).to(device),
                torch.from_numpy(mvc_ids).to(device),
                torch.from_numpy(mvc_bins).to(device),
            )
            adversarial = loss_batch + strength * loss_confusion
            loss = loss_value + loss_mvc + adversarial_weight * adversarial + mmd_weight * loss_mmd
            _apply_gradients(optimizer, loss, objective.parameters())
            losses = {
                "loss_value": loss_value,
                "loss_mvc": loss_mvc,
                "loss_batch": loss_batch,
                "loss_confusion": loss_confusion,
                "loss_mmd": loss_mmd,
            }
            step_losses.append(step, losses)
            bar.update(1)
            last = len(step_losses) == total_steps
            if progress and (len(step_losses) % POSTFIX_EVERY == 1 or last):  # first, every 10th and last step
                shown = step_losses.latest()
                bar.set_postfix(mvc=f"{shown['loss_mvc']:.3f}", batch=f"{shown['loss_batch']:.3f}")
    history = step_losses.records()
    info = {
        "fine_tuned_from": _base_model_provenance(model),
        "integration": {
            "n_batches": int(n_batches),
            "adversarial_weight": adversarial_weight,
            "mmd_weight": mmd_weight,
            "steps": len(history),
        },
        "fine_tuning": integration_settings(config),
    }
    tuned = PretrainedModel.from_network(
        objective.network.eval(),
        model.vocab,
        name=f"{model.name}-integrated",
        info=info,
        n_genes=model.tokenizer(config.n_genes).n_genes,
    )
    return tuned, pd.DataFrame(history)
