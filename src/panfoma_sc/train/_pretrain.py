"""Pretraining loop: masked-value + MVC objectives, AdamW with warm-up and cosine decay, exact resume, DDP."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import numbers
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .._arguments import MAX_SEED, is_integer
from .._memory import returns_freed_memory
from .._progress import progress_bar
from .._settings import settings, torch_threads
from ..data.tokenizer import Tokenizer, sample_expression_targets
from ..data.vocab import GeneVocabulary
from ..models._checkpoint import read_checkpoint, sha256sum, write_checkpoint
from ..models._pretrained import tokens_to_torch
from ..models._sharding import rank_device
from ..nn import CONFIGS, PanFoMa, masked_bin_loss
from ..nn.precision import float32_region
from ._corpus import CorpusBatch, PretrainingCorpus, check_training_files, check_vocabulary_genes
from ._gene_factors import corpus_gene_contrastive, corpus_gene_factors
from ._held_out_cells import check_excluded_cells
from ._masking import mask_values

logger = logging.getLogger(__name__)

__all__ = ["InvalidSettingError", "PretrainingObjective", "TrainingConfig", "check_resumable", "pretrain"]

#: values of ``TrainingConfig.gene_init``
GENE_INITS = ("random", "corpus-svd", "corpus-contrastive")
STATE_FILE = "state.pt"
MODEL_FILE = "model.safetensors"
HISTORY_FILE = "history.csv"


@dataclass
class TrainingConfig:
    """Settings of a pretraining run (saved as ``run.json`` in the output folder)."""

    architecture: str = "panfoma-tiny"  # a name of panfoma_sc.nn.CONFIGS
    model_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. {"d_model": 64}
    n_genes: int = 256  # genes per cell while training (inference may use more)
    batch_size: int = 32  # cells per micro-batch
    # data loading: blocks of this many consecutive rows are shuffled (1: single rows, as panfoma-tiny was trained),
    # up to cells_per_read cells of a file are read at once, and with blocks the batches of `interleave` reads are
    # dealt in turn (see PretrainingCorpus)
    block_rows: int = 1
    cells_per_read: int = 2048
    interleave: int = 4
    # cells never trained on: {file name without .h5ad: {obs column: [values]}} (e.g. an evaluation's query batch)
    exclude_cells: dict[str, dict[str, list[str]]] = dataclasses.field(default_factory=dict)
    grad_accumulation: int = 1  # micro-batches per optimizer step
    # recompute layer activations in the backward pass (about a third of the memory, up to 1.2x the time, the same
    # gradients); None: pf.settings.activation_checkpointing
    activation_checkpointing: bool | None = None
    max_steps: int = 1000  # optimizer steps; the learning-rate schedule spans them
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to this share of the peak
    grad_clip: float = 1.0
    mask_ratio: tuple[float, float] = (0.15, 0.4)
    # MVC targets: None = the masked input genes (as panfoma-tiny v1 was trained); an int = that many extra genes
    # per cell, `mvc_nonzero_share` of them expressed and the rest not (see sample_expression_targets)
    mvc_genes: int | None = None
    mvc_nonzero_share: float = 0.5
    # contrastive term: each cell is tokenized twice (two seeded gene draws, two maskings) and InfoNCE pulls the
    # two cell embeddings together against the other cells of the micro-batch; 0 = off (as panfoma-tiny v1)
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.1
    # gene-embedding start: "random" (normal, std 0.02), "corpus-svd" (TF-IDF SVD loadings of the training cells'
    # top-gene sets; see corpus_gene_factors) or "corpus-contrastive" (a bag-of-genes encoder trained to tell the
    # training cells apart; see corpus_gene_contrastive), both rescaled to std 0.02; freeze_gene_embedding keeps
    # the table fixed
    gene_init: str = "random"
    # Adam steps of 512 cells for the "corpus-contrastive" table (8,000: about 8 minutes on one CPU core)
    gene_init_steps: int = 8000
    freeze_gene_embedding: bool = False
    value_encoding: str = "rank"  # the tokenizer's value tokens while training ("rank" or "presence")
    gene_selection: str = "random"  # the tokenizer's gene selection while training ("random" or "top")
    # continue from this checkpoint's weights (its architecture and vocabulary; `architecture` is then ignored)
    init_from: str | None = None
    log_every: int = 10
    checkpoint_every: int = 100
    seed: int = 0
    device: str | None = None
    max_minutes: float | None = None  # stop (and checkpoint) after this wall time; resume continues
    stop_after: int | None = None  # stop after this many steps this session (interruptions, tests)

    def __post_init__(self) -> None:
        """Refuse settings that cannot train, before any file is read or written."""
        if self.init_from is None and self.architecture not in CONFIGS:
            raise InvalidSettingError("architecture", self.architecture, f"one of {', '.join(map(repr, CONFIGS))}")
        if self.gene_init not in GENE_INITS:
            msg = f"gene_init must be one of {', '.join(map(repr, GENE_INITS))}, not {self.gene_init!r}."
            raise ValueError(msg)
        least = {"n_genes": 1, "batch_size": 1, "grad_accumulation": 1, "max_steps": 1, "log_every": 1}
        least |= {"block_rows": 1, "cells_per_read": 1, "interleave": 1}
        least |= {"checkpoint_every": 1, "gene_init_steps": 1, "warmup_steps": 0}
        for name, minimum in least.items():
            value = getattr(self, name)
            _require(name, value, is_integer(value) and value >= minimum, f"an integer >= {minimum}")
        valid_seed = is_integer(self.seed) and 0 <= self.seed <= MAX_SEED
        _require("seed", self.seed, valid_seed, f"an integer from 0 to {MAX_SEED}")
        checkpointing = self.activation_checkpointing
        valid = checkpointing is None or isinstance(checkpointing, bool)
        _require("activation_checkpointing", checkpointing, valid, "None, True or False")
        for name in ("mvc_genes", "stop_after"):
            value = getattr(self, name)
            _require(name, value, value is None or (is_integer(value) and value >= 1), "None or an integer >= 1")
        for name in ("learning_rate", "weight_decay", "min_lr_ratio", "contrastive_weight", "contrastive_temperature"):
            value = getattr(self, name)
            finite = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            _require(name, value, finite, "a finite number")
        low, high = self.mask_ratio
        checks = [
            ("learning_rate", self.learning_rate >= 0, ">= 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
            ("grad_clip", self.grad_clip > 0, "> 0"),
            ("mask_ratio", 0 < low <= high < 1, "(low, high) with 0 < low <= high < 1"),
            ("mvc_nonzero_share", 0 <= self.mvc_nonzero_share <= 1, "in [0, 1]"),
            ("contrastive_weight", self.contrastive_weight >= 0, ">= 0"),
            ("contrastive_temperature", self.contrastive_temperature > 0, "> 0"),
            ("value_encoding", self.value_encoding in ("rank", "presence"), "'rank' or 'presence'"),
            ("gene_selection", self.gene_selection in ("random", "top"), "'random' or 'top'"),
            ("max_minutes", self.max_minutes is None or self.max_minutes > 0, "None or > 0"),
        ]
        for name, valid, expected in checks:
            _require(name, getattr(self, name), valid, expected)
        self.exclude_cells = check_excluded_cells(self.exclude_cells)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return dataclasses.asdict(self)


class InvalidSettingError(ValueError):
    """A :class:`TrainingConfig` setting that cannot train; ``setting`` names the field, ``expected`` the rule."""

    def __init__(self, setting: str, value: Any, expected: str) -> None:
        super().__init__(f"TrainingConfig.{setting} must be {expected}, got {value!r}.")
        self.setting = setting
        self.value = value
        self.expected = expected


def _require(name: str, value: Any, valid: bool, expected: str) -> None:
    if not valid:
        raise InvalidSettingError(name, value, expected)


def info_nce(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between two ``(B, D)`` views: row ``i`` of each is the positive of the other's row ``i``."""
    with float32_region(first.device):  # float32 logits, also inside a bf16 training step
        first = F.normalize(first.float(), dim=-1)
        second = F.normalize(second.float(), dim=-1)
        logits = first @ second.T / temperature
    target = torch.arange(first.shape[0], device=first.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class PretrainingObjective(nn.Module):
    """The network plus its losses, as one module (what DDP wraps)."""

    def __init__(self, network: PanFoMa) -> None:
        super().__init__()
        self.network = network

    def forward(
        self,
        gene_ids: torch.Tensor,
        masked_bins: torch.Tensor,
        padding: torch.Tensor,
        targets: torch.Tensor,
        hidden: torch.Tensor,
        mvc_gene_ids: torch.Tensor | None = None,
        mvc_targets: torch.Tensor | None = None,
        n_views: int = 1,
        temperature: float = 0.1,
    ) -> dict[str, torch.Tensor]:
        """Masked-value cross-entropy over the hidden inputs, the MVC cross-entropy and, for two views, InfoNCE.

        MVC predicts bins from ``[cell_embedding, gene_embedding]`` alone: of the hidden input genes, or, when
        given, of the ``(B, Q)`` query genes ``mvc_gene_ids`` (expressed or not, in the input or not).
        With ``n_views=2`` the batch holds two tokenizations of the same cells, the second half after the
        first, and the contrastive loss is returned as ``"contrastive"``.
        """
        output = self.network(gene_ids, masked_bins, padding)
        flat_targets = targets.reshape(targets.shape[0], -1)
        flat_hidden = hidden.reshape(hidden.shape[0], -1)
        loss_value = masked_bin_loss(self.network.value_logits(output), flat_targets, flat_hidden)
        if mvc_gene_ids is None:
            loss_mvc = masked_bin_loss(self.network.mvc_logits(output, gene_ids), flat_targets, flat_hidden)
        else:
            every = torch.ones_like(mvc_targets, dtype=torch.bool)
            loss_mvc = masked_bin_loss(self.network.mvc_logits(output, mvc_gene_ids), mvc_targets, every)
        losses = {"value": loss_value, "mvc": loss_mvc}
        if n_views == 2:
            first, second = output.cell_embedding.chunk(2, dim=0)
            losses["contrastive"] = info_nce(first, second, temperature)
        return losses


def _lr_lambda(config: TrainingConfig):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _follow_schedule(optimizer: torch.optim.Optimizer, scheduler: Any, config: TrainingConfig, step: int) -> None:
    """Set the learning rates of a resumed run to its schedule's at ``step``, under the current ``config``.

    The saved optimizer holds the rate the saved run's schedule gave for ``step``; a run resumed with another
    ``max_steps`` (a resumable change) follows the new schedule from where it is instead.
    """
    factor = _lr_lambda(config)(step)
    for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base_lr * factor
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports


def _step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, micro, rank]).generate_state(1)[0])


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _world_size() -> int:
    """Processes of this run: the process group's size, or ``torchrun``'s ``WORLD_SIZE`` before it is initialized."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def _batch_stream(
    corpus: PretrainingCorpus, epoch: int, position: int, rank: int, world: int
) -> Iterator[tuple[int, int, CorpusBatch]]:
    """Endless ``(epoch, position_after, batch)`` stream from a saved position."""
    while True:
        for offset, batch in enumerate(corpus.batches(epoch, start=position, rank=rank, world=world)):
            yield epoch, position + offset + 1, batch
        epoch, position = epoch + 1, 0


def _network_from_checkpoint(config: TrainingConfig, vocab: GeneVocabulary) -> tuple[PanFoMa, dict[str, Any]]:
    """The network of ``config.init_from`` (checked against ``vocab``) and a provenance record of that file."""
    checkpoint = read_checkpoint(config.init_from)
    if checkpoint.vocab.symbols != vocab.symbols:
        msg = (
            f"The vocabulary of {config.init_from} differs from the run's vocabulary; continue training with "
            "the checkpoint's own vocabulary (the CLI does this with --init-from)."
        )
        raise ValueError(msg)
    architecture = checkpoint.config.replace(value_encoding=config.value_encoding, **config.model_overrides)
    network = PanFoMa(architecture)
    fresh = _load_matching_weights(network, checkpoint.build_model("cpu").state_dict())
    network.train()
    origin = {
        "file": Path(config.init_from).name,
        "sha256": sha256sum(config.init_from),
        "version": checkpoint.info.get("version"),
        "trained_on": checkpoint.info.get("trained_on"),
        "training": checkpoint.info.get("training"),
        "reinitialized": fresh,
    }
    return network, origin


def _load_matching_weights(network: PanFoMa, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy every tensor of ``state`` that ``network`` has with the same shape; return the names left fresh.

    This is how a checkpoint continues into a changed read-out or MVC head (``model_overrides``): the encoder,
    decoder and embeddings keep their trained weights and only the changed modules start from scratch.
    """
    own = network.state_dict()
    matching = {name: tensor for name, tensor in state.items() if name in own and own[name].shape == tensor.shape}
    network.load_state_dict(matching, strict=False)
    return sorted(set(own) - set(matching))


#: genes per cell and cells per file of the corpus tables behind ``gene_init="corpus-svd"`` / ``"corpus-contrastive"``
FACTOR_GENES = 256
FACTOR_CELLS_PER_FILE = 3000


def _init_gene_embedding(
    network: PanFoMa, corpus: PretrainingCorpus, config: TrainingConfig, pad_id: int, *, progress: bool = False
) -> dict[str, Any]:
    """Overwrite the gene-embedding rows of corpus genes with a table learned from their gene sets (std 0.02)."""
    architecture = network.config
    tokenizer = Tokenizer(
        n_genes=FACTOR_GENES,
        n_chunks=architecture.n_chunks,
        n_bins=architecture.n_bins,
        pad_id=pad_id,
        selection="top",
        value_encoding="presence",
    )
    shared = {
        "vocab_size": architecture.vocab_size,
        "n_components": architecture.d_model,
        "max_cells_per_file": FACTOR_CELLS_PER_FILE,
        "seed": config.seed,
    }
    record: dict[str, Any] = {}
    if config.gene_init == "corpus-contrastive":
        table, seen, losses = corpus_gene_contrastive(
            corpus, tokenizer, steps=config.gene_init_steps, progress=progress, **shared
        )
        tail = max(1, len(losses) // 20)
        record = {
            "steps": len(losses),
            "loss_first": float(np.mean(losses[:tail])),
            "loss_last": float(np.mean(losses[-tail:])),
        }
    else:
        table, seen = corpus_gene_factors(corpus, tokenizer, **shared)
    table *= 0.02 / table[seen].std()
    weight = network.embedding.gene.weight
    with torch.no_grad():
        weight[torch.from_numpy(seen).to(weight.device)] = torch.from_numpy(table[seen]).to(weight)
    return {
        "method": config.gene_init,
        "genes_per_cell": FACTOR_GENES,
        "cells_per_file": FACTOR_CELLS_PER_FILE,
        "genes_initialized": int(seen.sum()),
        "frozen": config.freeze_gene_embedding,
        **record,
    }


def _save_state(
    path: Path, objective: nn.Module, optimizer, scheduler, step: int, epoch: int, position: int, elapsed_s: float
) -> None:
    state = {
        "model": objective.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "epoch": epoch,
        "position": position,
        "elapsed_s": elapsed_s,  # training wall time of all sessions up to this step
    }
    tmp = path.with_suffix(".partial")
    torch.save(state, tmp)
    tmp.replace(path)


#: settings a resumed run may change: how long it runs, how often it logs and saves, where it runs
RESUMABLE_CHANGES = frozenset(
    {"max_steps", "max_minutes", "stop_after", "log_every", "checkpoint_every", "device", "activation_checkpointing"}
)


def check_resumable(out_dir: str | Path, config: TrainingConfig, files: Sequence[str | Path]) -> None:
    """Refuse to resume the run in ``out_dir`` with other data, settings or processes than it was started with.

    Nothing happens when ``out_dir`` holds no resumable run (no ``state.pt`` or no ``run.json``) and no checkpoint.

    Raises
    ------
    ValueError
        The files (by name), a setting outside :data:`RESUMABLE_CHANGES` or the number of processes (under
        ``torchrun``) differ from ``run.json``; the message names each difference, saved then now. Or ``out_dir``
        holds a ``model.safetensors`` without the ``state.pt`` to resume from, which a new run would replace.
    """
    out_dir = Path(out_dir)
    run_file = out_dir / "run.json"
    if not (out_dir / STATE_FILE).is_file() and (out_dir / MODEL_FILE).is_file():
        msg = (
            f"{str(out_dir)!r} holds a {MODEL_FILE} but no {STATE_FILE} to resume from: a new run there would replace "
            "that model. Use another output folder, or start over in it with resume=False (--restart on the "
            "command line)."
        )
        raise ValueError(msg)
    if not (out_dir / STATE_FILE).is_file() or not run_file.is_file():
        return
    saved = json.loads(run_file.read_text())
    now = config.to_dict()
    # a setting added after the run started reads back as its default, the value the run had in effect
    then = {name: _as_json(getattr(TrainingConfig(), name)) for name in now} | saved["config"]
    changed = [
        f"{name}: {then.get(name)!r} -> {value!r}"
        for name, value in now.items()
        if name not in RESUMABLE_CHANGES and _as_json(value) != then.get(name)
    ]
    saved_files, new_files = [Path(f).name for f in saved.get("files", [])], [Path(f).name for f in files]
    if saved_files != new_files:
        changed.append(f"files: {saved_files} -> {new_files}")
    world = _world_size()
    if saved.get("world_size", world) != world:  # runs from before it was recorded: not checked
        # each process reads its own share of every step's batches: another count changes the batches and data order
        changed.append(f"processes (torchrun --nproc_per_node): {saved['world_size']} -> {world}")
    if changed:
        msg = (
            f"{str(out_dir)!r} holds a run started with other settings, so it cannot be resumed exactly: "
            f"{'; '.join(changed)}. Pass the settings it was started with (run.json lists them), start over "
            "with resume=False (--restart on the command line), or use another output folder."
        )
        raise ValueError(msg)


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from ``run.json`` (tuples become lists)."""
    return json.loads(json.dumps(value))


@returns_freed_memory
@torch_threads()
def pretrain(
    files: Sequence[str | Path],
    out_dir: str | Path,
    *,
    vocab: GeneVocabulary,
    config: TrainingConfig | None = None,
    resume: bool = True,
    progress: bool = True,
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pretrain a PanFoMa network on ``.h5ad`` files.

    Writes into ``out_dir``: ``run.json`` (settings), ``history.csv`` (losses per logged step),
    ``state.pt`` (everything needed to resume exactly) and ``model.safetensors`` (the checkpoint).
    Under ``torchrun`` every rank reads its own share of batches and gradients are averaged (DDP).
    The files are checked first (:func:`~panfoma_sc.train.check_training_files`), before anything is written.

    The checkpoint keeps the architecture's ``n_genes`` (1,024 for ``"panfoma-tiny"``) as the genes per cell that
    :func:`panfoma_sc.tl.embed` reads by default, whatever ``config.n_genes`` trained with: pass ``n_genes=`` when
    embedding, or choose the default when packaging the model (the bundled one was packaged with 256, chosen on
    labelled training files, by ``docs/model_cards/package_panfoma_tiny.py``).

    A ``history.csv`` row gives the mean losses over the steps since the previous row, ``lr`` the learning rate
    the row's step trained with, ``elapsed_s`` the training wall time up to it (over all resumed sessions) and
    ``cells_per_s`` the throughput of the session.

    Parameters
    ----------
    files
        Training data (raw counts or any nonnegative per-cell scale in ``X``), read backed.
    out_dir
        Output folder.
    vocab
        Gene vocabulary of the new model.
    config
        Run settings.
    resume
        Continue from ``out_dir/state.pt`` when it exists (model, optimizer, schedule and data position).
    progress
        Show a tqdm bar with the loss.
    info
        Extra provenance stored in the checkpoint.

    Returns
    -------
    Summary: steps done, final losses, wall time of this session, whether the run finished.

    Raises
    ------
    ValueError
        ``vocab`` is empty, a file fails :func:`~panfoma_sc.train.check_training_files` or has none of the
        vocabulary's genes, or ``out_dir`` holds a run started with other files or settings (see
        :func:`check_resumable`).
    """
    config = config or TrainingConfig()
    out_dir = Path(out_dir)
    rank, world = _distributed()
    device = rank_device(settings.resolve_device(config.device), rank, world)
    # bf16 autocast where pf.settings.precision allows it ("auto": CUDA GPUs of compute capability 8.0 or later);
    # resolved here, so that pf.settings.precision="bf16" off CUDA fails before anything is written
    use_autocast = settings.resolve_precision(None, device) == "bf16"
    if not vocab.symbols:
        msg = "vocab holds no genes. Build it from the training files with build_vocabulary(files, min_cells=...)."
        raise ValueError(msg)
    if resume:
        check_resumable(out_dir, config, files)
    check_training_files(files)
    check_vocabulary_genes(files, vocab)  # before run.json is written
    if config.warmup_steps > config.max_steps:
        logger.warning(
            "The warm-up (warmup_steps=%d, --warmup) is longer than the run (max_steps=%d, --steps): the learning "
            "rate rises to %.3g only, never to its peak %.3g. Use fewer warm-up steps or more steps.",
            config.warmup_steps,
            config.max_steps,
            config.learning_rate * _lr_lambda(config)(config.max_steps - 1),
            config.learning_rate,
        )
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "run.json").write_text(
            json.dumps({"config": config.to_dict(), "files": [str(f) for f in files], "world_size": world}, indent=2)
        )

    torch.manual_seed(config.seed)
    if config.init_from is not None:
        network, origin = _network_from_checkpoint(config, vocab)
        network = network.to(device)
        architecture = network.config
        info = {"initialized_from": origin, **(info or {})}
    else:
        architecture = CONFIGS[config.architecture].replace(
            **({"value_encoding": config.value_encoding} | config.model_overrides), vocab_size=len(vocab)
        )
        network = PanFoMa(architecture).to(device)
    checkpointing = config.activation_checkpointing
    network.activation_checkpointing = settings.activation_checkpointing if checkpointing is None else checkpointing
    corpus = PretrainingCorpus(
        files,
        vocab,
        batch_size=config.batch_size,
        seed=config.seed,
        block_rows=config.block_rows,
        cells_per_read=config.cells_per_read,
        interleave=config.interleave,
        exclude_cells=config.exclude_cells,
    )
    state_path = out_dir / STATE_FILE
    resuming = resume and state_path.is_file()
    if config.gene_init != "random" and not resuming:
        info = {
            "gene_init": _init_gene_embedding(network, corpus, config, vocab.pad_id, progress=progress and rank == 0),
            **(info or {}),
        }
    if config.freeze_gene_embedding:
        network.embedding.gene.weight.requires_grad_(False)
    objective: nn.Module = PretrainingObjective(network)
    optimizer = torch.optim.AdamW(
        (p for p in objective.parameters() if p.requires_grad),
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        betas=(0.9, 0.98),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    step, epoch, position = 0, 0, 0
    elapsed_before = 0.0  # training wall time of the earlier sessions of a resumed run
    if resuming:
        # on the CPU: the optimizer's load moves its float state to the parameters' device and keeps AdamW's step
        # counts on the host, where reading them does not wait for the GPU
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        objective.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, position = state["step"], state["epoch"], state["position"]
        elapsed_before = float(state.get("elapsed_s", 0.0))  # absent from the state of older runs
        _follow_schedule(optimizer, scheduler, config, step)
        logger.info("Resuming at step %d (epoch %d, batch %d).", step, epoch, position)
    trained = objective
    if world > 1:
        trained = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device] if device.startswith("cuda") else None
        )

    tokenizer = Tokenizer(
        n_genes=config.n_genes,
        n_chunks=architecture.n_chunks,
        n_bins=architecture.n_bins,
        pad_id=vocab.pad_id,
        selection=config.gene_selection,
        value_encoding=config.value_encoding,
    )
    n_views = 2 if config.contrastive_weight > 0 else 1
    weights = {"value": 1.0, "mvc": 1.0, "contrastive": config.contrastive_weight}
    stream = _batch_stream(corpus, epoch, position, rank, world)
    history_path = out_dir / HISTORY_FILE
    history: list[dict[str, float]] = []
    if rank == 0 and history_path.is_file() and history_path.read_text().strip():  # empty: stopped before a row
        previous = pd.read_csv(history_path)
        history = previous[previous["step"] <= step].to_dict("records")

    start_time = time.monotonic()
    steps_this_session = 0
    objective.train()
    shown = progress and rank == 0
    bar = progress_bar(total=config.max_steps, initial=step, enabled=shown, desc="pretrain", unit="step")
    loss_names = ["value", "mvc"] + (["contrastive"] if n_views == 2 else [])
    # the losses add up on the device and are read back only when a row is logged: reading them each step would
    # make the host wait for the GPU to finish every step before it can prepare the next batch
    running_losses = torch.zeros(len(loss_names), dtype=torch.float32, device=device)
    running = {"cells": 0, "steps": 0}
    finished = step >= config.max_steps
    while not finished:
        for micro in range(config.grad_accumulation):
            epoch, position, batch = next(stream)
            sampling_seed = _step_seed(config.seed, epoch, 0, 0)
            tokens = tokenizer(batch.matrix, batch.gene_ids, batch.cell_keys, seed=sampling_seed)
            gene_ids, bins, padding = tokens_to_torch(tokens, device)
            if n_views == 2:  # a second, independent gene draw of the same cells
                view = tokens_to_torch(
                    tokenizer(batch.matrix, batch.gene_ids, batch.cell_keys, seed=sampling_seed + 2), device
                )
                pairs = zip((gene_ids, bins, padding), view, strict=True)
                gene_ids, bins, padding = (torch.cat(pair) for pair in pairs)
            mvc_ids = mvc_bins = None
            if config.mvc_genes:
                mvc_ids, mvc_bins = sample_expression_targets(
                    batch.matrix,
                    batch.gene_ids,
                    batch.cell_keys,
                    n_genes=config.mvc_genes,
                    n_bins=architecture.n_bins,
                    seed=sampling_seed + 1,
                    nonzero_share=config.mvc_nonzero_share,
                )
                mvc_ids, mvc_bins = torch.from_numpy(mvc_ids).to(device), torch.from_numpy(mvc_bins).to(device)
                if n_views == 2:
                    mvc_ids, mvc_bins = mvc_ids.repeat(2, 1), mvc_bins.repeat(2, 1)
            generator = torch.Generator().manual_seed(_step_seed(config.seed, step, micro, rank))
            masked, hidden = mask_values(
                bins, padding, mask_bin=architecture.n_bins, ratio_range=config.mask_ratio, generator=generator
            )
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_autocast):
                losses = trained(
                    gene_ids,
                    masked,
                    padding,
                    bins,
                    hidden,
                    mvc_ids,
                    mvc_bins,
                    n_views=n_views,
                    temperature=config.contrastive_temperature,
                )
            total = sum(weights[name] * loss for name, loss in losses.items())
            (total / config.grad_accumulation).backward()
            running_losses += torch.stack([losses[name].detach().float() for name in loss_names]).div_(
                config.grad_accumulation
            )
            running["cells"] += len(tokens)
        grad_norm = torch.nn.utils.clip_grad_norm_(objective.parameters(), config.grad_clip)
        lr = optimizer.param_groups[0]["lr"]  # the rate of this step: scheduler.step() sets the next one
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        steps_this_session += 1
        running["steps"] += 1
        elapsed = time.monotonic() - start_time
        if step % config.log_every == 0 or step == config.max_steps:
            steps_logged = max(running["steps"], 1)  # since the last row, in this session
            record = {"step": step, "epoch": epoch, "lr": lr}
            mean_losses = (running_losses / steps_logged).tolist()  # the one wait for the GPU per logged row
            record |= {f"loss_{name}": value for name, value in zip(loss_names, mean_losses, strict=True)}
            record |= {
                "grad_norm": float(grad_norm),
                "cells_per_s": running["cells"] * world / max(elapsed, 1e-9) if steps_this_session else 0.0,
                "elapsed_s": elapsed_before + elapsed,
            }
            record["loss"] = sum(weights[name] * record[f"loss_{name}"] for name in loss_names)
            history.append(record)
            bar.set_postfix({"loss": f"{record['loss']:.3f}"} | {n: f"{record[f'loss_{n}']:.3f}" for n in loss_names})
            running_losses.zero_()
            running["steps"] = 0
        bar.update(1)
        finished = step >= config.max_steps
        out_of_time = config.max_minutes is not None and elapsed > 60 * config.max_minutes
        interrupted = config.stop_after is not None and steps_this_session >= config.stop_after
        if rank == 0 and (finished or out_of_time or interrupted or step % config.checkpoint_every == 0):
            _save_state(state_path, objective, optimizer, scheduler, step, epoch, position, elapsed_before + elapsed)
            pd.DataFrame(history).to_csv(history_path, index=False)
            write_checkpoint(
                out_dir / MODEL_FILE,
                network,
                vocab,
                info={
                    "trained_on": {"files": [Path(f).name for f in files], "n_cells": corpus.n_cells, "steps": step},
                    "training": config.to_dict(),
                    **(info or {}),
                },
            )
        if out_of_time or interrupted:
            break
    bar.close()
    corpus.close()
    last = history[-1] if history else {}
    return {
        "steps": step,
        "finished": step >= config.max_steps,
        "loss_value": last.get("loss_value"),
        "loss_mvc": last.get("loss_mvc"),
        "loss_contrastive": last.get("loss_contrastive"),
        "wall_time_s": time.monotonic() - start_time,
        "out_dir": str(out_dir),
    }
