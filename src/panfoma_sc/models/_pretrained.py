"""A loaded checkpoint and batched inference over expression rows."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from .._progress import progress_bar
from .._settings import settings, torch_threads
from ..data.prefetch import Prefetcher
from ..data.tokenizer import TokenBatch, Tokenizer
from ._checkpoint import HEADS_PREFIX, Checkpoint, read_checkpoint, sha256sum, write_checkpoint

if TYPE_CHECKING:
    import torch

    from ..data.vocab import GeneVocabulary
    from ..nn import PanFoMa, PanFoMaConfig

logger = logging.getLogger(__name__)

__all__ = ["CLASSIFIER_HEAD", "PretrainedModel", "cells_per_forward", "tokens_to_torch"]

#: Name of the fine-tuned cell-type classifier head in a checkpoint.
CLASSIFIER_HEAD = "classifier"

#: Tokens per forward pass on CPU. Bigger passes spill the attention and SSD intermediates out of the caches:
#: panfoma-tiny at 256 genes ran 1.85x faster in 4-cell passes than in one 64-cell pass, and at 1,024 genes
#: its peak memory fell from 1,043 to 195 MiB (see the Performance page of the docs).
CPU_TOKENS_PER_FORWARD = 1024


def cells_per_forward(device: str | torch.device, tokens_per_cell: int, batch_size: int) -> int:
    """Cells per forward pass: on CPU about :data:`CPU_TOKENS_PER_FORWARD` tokens, elsewhere the whole batch."""
    import torch

    if torch.device(device).type != "cpu":
        return batch_size
    return max(1, min(batch_size, CPU_TOKENS_PER_FORWARD // max(tokens_per_cell, 1)))


def tokens_to_torch(tokens: TokenBatch, device: str | torch.device) -> tuple[torch.Tensor, ...]:
    """Move a :class:`TokenBatch` to torch tensors on ``device`` (pinned, non-blocking copies on CUDA)."""
    import torch

    arrays = (tokens.gene_ids, tokens.value_bins, tokens.padding_mask)
    tensors = tuple(torch.from_numpy(a) for a in arrays)
    if torch.device(device).type == "cuda":
        return tuple(t.pin_memory().to(device, non_blocking=True) for t in tensors)
    return tuple(t.to(device) for t in tensors)


def _token_batches(
    blocks: Iterable[tuple[np.ndarray, sparse.csr_matrix]],
    tokenizer: Tokenizer,
    gene_ids: np.ndarray,
    cell_keys: np.ndarray,
    seed: int,
) -> Iterator[tuple[np.ndarray, TokenBatch]]:
    """``(row_indices, tokens)`` per row block: the CPU work that :class:`Prefetcher` moves off the model's thread."""
    for rows, block in blocks:
        yield rows, tokenizer(block, gene_ids, cell_keys[rows], seed=seed)


def _split(tokens: TokenBatch, size: int) -> list[TokenBatch]:
    """Consecutive slices of at most ``size`` cells."""
    return [
        TokenBatch(tokens.gene_ids[i : i + size], tokens.value_bins[i : i + size], tokens.padding_mask[i : i + size])
        for i in range(0, max(len(tokens), 1), max(size, 1))
    ]


@dataclass
class PretrainedModel:
    """A PanFoMa checkpoint ready for inference.

    Attributes
    ----------
    name
        Registry name, or the file name for a checkpoint loaded from a path.
    path
        The checkpoint file (``None`` for an in-memory model not saved yet).
    sha256
        Its verified checksum (``None`` for an in-memory model not saved yet).
    checkpoint
        Weights, config, vocabulary and provenance.
    """

    name: str
    path: Path | None
    sha256: str | None
    checkpoint: Checkpoint
    _networks: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_network(
        cls,
        network: PanFoMa,
        vocab: GeneVocabulary,
        *,
        name: str,
        info: dict[str, Any] | None = None,
        heads: dict[str, torch.nn.Module] | None = None,
        n_genes: int | None = None,
    ) -> PretrainedModel:
        """An in-memory model (e.g. fine-tuned) with no file yet: ``path`` and ``sha256`` stay ``None``.

        :meth:`save` writes it as a checkpoint that :func:`panfoma_sc.models.register` accepts. ``n_genes``
        replaces the network config's genes per cell, the default of every later use (a fine-tuned model keeps
        the genes per cell it was tuned with).
        """
        config = network.config if n_genes is None else replace(network.config, n_genes=n_genes)
        state = {k: v.detach().to("cpu").clone() for k, v in network.state_dict().items()}
        for head_name, head in (heads or {}).items():
            state |= {
                f"{HEADS_PREFIX}{head_name}.{k}": v.detach().to("cpu").clone() for k, v in head.state_dict().items()
            }
        checkpoint = Checkpoint(state_dict=state, config=config, vocab=vocab, info={"name": name, **(info or {})})
        return cls(name=name, path=None, sha256=None, checkpoint=checkpoint)

    def save(self, path: str | Path, *, half_precision: bool = False) -> str:
        """Write this model (network, task heads, provenance) as a checkpoint; returns its SHA-256.

        Parameters
        ----------
        path
            Target ``.safetensors`` file.
        half_precision
            Store weights as float16.
        """
        heads = {name: self._head(name, "cpu") for name in self._head_names()}
        digest = write_checkpoint(
            path, self.network("cpu"), self.vocab, info=self.info, half_precision=half_precision, heads=heads
        )
        self.path, self.sha256 = Path(path), digest
        return digest

    def _head_names(self) -> list[str]:
        names = {
            k[len(HEADS_PREFIX) :].split(".", 1)[0] for k in self.checkpoint.state_dict if k.startswith(HEADS_PREFIX)
        }
        return sorted(names)

    def _head(self, name: str, device: str) -> torch.nn.Module:
        import torch

        from ..nn import CellClassifier

        if name != CLASSIFIER_HEAD:
            msg = f"Unknown task head {name!r} in checkpoint {self.name!r}."
            raise ValueError(msg)
        with torch.random.fork_rng(devices=[]):  # as for the network: the user's generator is left alone
            head = CellClassifier(self.config.d_model, len(self.classes or ()))
        head.load_state_dict(self.checkpoint.head_state(name), strict=True)
        return head.to(device).eval()

    @property
    def classes(self) -> list[str] | None:
        """Labels of the fine-tuned classifier head, or ``None`` when the model has none."""
        classifier = self.info.get("classifier")
        return None if classifier is None else list(classifier["classes"])

    @classmethod
    def from_file(cls, path: str | Path, *, name: str | None = None, sha256: str | None = None) -> PretrainedModel:
        """Load a checkpoint file (the checksum is computed when not given)."""
        path = Path(path)
        checkpoint = read_checkpoint(path)
        return cls(name=name or path.stem, path=path, sha256=sha256 or sha256sum(path), checkpoint=checkpoint)

    @property
    def config(self) -> PanFoMaConfig:
        """Network sizes."""
        return self.checkpoint.config

    @property
    def vocab(self) -> GeneVocabulary:
        """Gene vocabulary."""
        return self.checkpoint.vocab

    @property
    def info(self) -> dict[str, Any]:
        """Provenance (training data, metrics, version)."""
        return self.checkpoint.info

    def network(self, device: str | None = None) -> PanFoMa:
        """The torch network on ``device`` (built once per device, in eval mode)."""
        device = _full_device_name(settings.resolve_device(device))
        if device not in self._networks:
            self._networks[device] = self.checkpoint.build_model(device)
        return self._networks[device]

    def tokenizer(self, n_genes: int | None = None, gene_selection: str | None = None) -> Tokenizer:
        """Tokenizer matching this model; arguments override the config's genes per cell and selection rule."""
        n_genes = n_genes or self.config.n_genes
        if n_genes % self.config.n_chunks:
            n_genes += self.config.n_chunks - n_genes % self.config.n_chunks
        return Tokenizer(
            n_genes=n_genes,
            n_chunks=self.config.n_chunks,
            n_bins=self.config.n_bins,
            pad_id=self.vocab.pad_id,
            selection=gene_selection or self.config.gene_selection,
            value_encoding=self.config.value_encoding,
        )

    def embed_blocks(
        self,
        blocks: Iterable[tuple[np.ndarray, sparse.csr_matrix]],
        *,
        n_cells: int,
        gene_ids: np.ndarray,
        cell_keys: np.ndarray,
        device: str | None = None,
        n_genes: int | None = None,
        gene_selection: str | None = None,
        seed: int = 0,
        progress: bool = True,
        precision: str | None = None,
        prefetch: int | None = None,
        rows_in_blocks: int | None = None,
    ) -> np.ndarray:
        """Cell embeddings of row blocks.

        Parameters
        ----------
        blocks
            ``(row_indices, csr)`` pairs, rows indexing ``cell_keys`` and the output, columns = ``gene_ids``.
        n_cells
            Total rows (size of the output).
        gene_ids
            Vocabulary id of each column.
        cell_keys
            Per-cell sampling keys, one per row.
        device
            Torch device; default :attr:`panfoma_sc.settings.device`.
        n_genes
            Genes per cell (default: the model's).
        gene_selection
            ``"random"`` or ``"top"`` expressed genes when a cell has more than ``n_genes`` (default: the model's).
        seed
            Gene-sampling seed.
        progress
            Show a tqdm bar.
        precision
            ``"auto"`` (bf16 autocast on CUDA GPUs of compute capability 8.0 or later, float32 elsewhere), ``"fp32"``
            or ``"bf16"`` (CUDA only; an error
            elsewhere); default :attr:`panfoma_sc.settings.precision`. The result is float32 either way.
        prefetch
            Row blocks read and tokenized ahead in a background thread while the network runs (``0``: none);
            default :attr:`panfoma_sc.settings.prefetch` (1 on a GPU, 0 on CPU). Does not change the result.
        rows_in_blocks
            How many rows ``blocks`` hold, when they cover only some of the ``n_cells`` (the progress bar's total);
            the other rows of the result are zeros. Default ``n_cells``.

        Returns
        -------
        ``(n_cells, d_model)`` float32 embeddings.
        """
        return self._map_blocks(
            lambda embedding: embedding,
            self.config.d_model,
            blocks,
            n_cells=n_cells,
            gene_ids=gene_ids,
            cell_keys=cell_keys,
            device=device,
            n_genes=n_genes,
            gene_selection=gene_selection,
            seed=seed,
            progress=progress,
            precision=precision,
            prefetch=prefetch,
            rows_in_blocks=rows_in_blocks,
            desc="embed",
        )

    def predict_blocks(
        self,
        blocks: Iterable[tuple[np.ndarray, sparse.csr_matrix]],
        *,
        n_cells: int,
        gene_ids: np.ndarray,
        cell_keys: np.ndarray,
        device: str | None = None,
        n_genes: int | None = None,
        gene_selection: str | None = None,
        seed: int = 0,
        progress: bool = True,
        precision: str | None = None,
        prefetch: int | None = None,
        rows_in_blocks: int | None = None,
    ) -> np.ndarray:
        """Class probabilities ``(n_cells, len(classes))`` of the fine-tuned classifier head.

        Arguments as in :meth:`embed_blocks`. Raises ``ValueError`` when the model has no classifier.
        """
        import torch

        if self.classes is None:
            msg = (
                f"Model {self.name!r} has no cell-type classifier; fine-tune one with "
                "pf.tl.annotate(..., method='finetune') or use method='knn'."
            )
            raise ValueError(msg)
        device = settings.resolve_device(device)
        head = self._head(CLASSIFIER_HEAD, device)
        return self._map_blocks(
            lambda embedding: torch.softmax(head(embedding).float(), dim=-1),
            len(self.classes),
            blocks,
            n_cells=n_cells,
            gene_ids=gene_ids,
            cell_keys=cell_keys,
            device=device,
            n_genes=n_genes,
            gene_selection=gene_selection,
            seed=seed,
            progress=progress,
            precision=precision,
            prefetch=prefetch,
            rows_in_blocks=rows_in_blocks,
            desc="predict",
        )

    @torch_threads()
    def _map_blocks(
        self,
        transform,
        width: int,
        blocks: Iterable[tuple[np.ndarray, sparse.csr_matrix]],
        *,
        n_cells: int,
        gene_ids: np.ndarray,
        cell_keys: np.ndarray,
        device: str | None,
        n_genes: int | None,
        gene_selection: str | None,
        seed: int,
        progress: bool,
        precision: str | None,
        prefetch: int | None,
        rows_in_blocks: int | None,
        desc: str,
    ) -> np.ndarray:
        """Run the network over row blocks and store ``transform(cell_embedding)`` per cell.

        With ``prefetch`` > 0, block ``i + 1`` is read and tokenized in a background thread while the network runs
        block ``i`` (see :class:`~panfoma_sc.data.Prefetcher`); on CUDA the network runs under bf16 autocast
        unless ``precision`` says ``"fp32"``.
        """
        import torch

        device = settings.resolve_device(device)
        bf16 = settings.resolve_precision(precision, device) == "bf16"
        prefetch = settings.resolve_prefetch(prefetch, device)
        network = self.network(device)
        tokenizer = self.tokenizer(n_genes, gene_selection)
        output = np.zeros((n_cells, width), dtype=np.float32)  # rows not in blocks stay zero
        batches = Prefetcher(_token_batches(blocks, tokenizer, gene_ids, cell_keys, seed), prefetch)
        total = n_cells if rows_in_blocks is None else rows_in_blocks
        with (
            torch.inference_mode(),
            progress_bar(total=total, enabled=progress, unit="cells", desc=desc) as bar,
            batches,
        ):
            for rows, tokens in batches:
                step = cells_per_forward(device, tokens.gene_ids[0].size if len(tokens) else 1, len(tokens))
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                    embeddings = [
                        network(*tokens_to_torch(part, device)).cell_embedding for part in _split(tokens, step)
                    ]  # one copy back per block: no host-device round trip per pass
                    result = transform(torch.cat(embeddings))
                output[rows] = result.float().cpu().numpy()
                bar.update(len(rows))
        return output


def _full_device_name(device: str) -> str:
    """``device`` with its index, so that one GPU has one network whatever it was called.

    ``"cuda"`` is the current GPU: ``"cuda"`` and ``"cuda:0"`` are the same device, and ``"cuda"`` after
    :func:`torch.cuda.set_device` is another.
    """
    import torch

    parsed = torch.device(device)
    if parsed.type == "cuda" and parsed.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(parsed)
