"""A loaded checkpoint and batched inference over expression rows."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse
from tqdm.auto import tqdm

from .._settings import settings
from ..data.tokenizer import TokenBatch, Tokenizer
from ._checkpoint import Checkpoint, read_checkpoint, sha256sum

if TYPE_CHECKING:
    import torch

    from ..data.vocab import GeneVocabulary
    from ..nn import PanFoMa, PanFoMaConfig

logger = logging.getLogger(__name__)

__all__ = ["PretrainedModel", "tokens_to_torch"]


def tokens_to_torch(tokens: TokenBatch, device: str | torch.device) -> tuple[torch.Tensor, ...]:
    """Move a :class:`TokenBatch` to torch tensors on ``device`` (pinned, non-blocking copies on CUDA)."""
    import torch

    arrays = (tokens.gene_ids, tokens.value_bins, tokens.padding_mask)
    tensors = tuple(torch.from_numpy(a) for a in arrays)
    if torch.device(device).type == "cuda":
        return tuple(t.pin_memory().to(device, non_blocking=True) for t in tensors)
    return tuple(t.to(device) for t in tensors)


@dataclass
class PretrainedModel:
    """A PanFoMa checkpoint ready for inference.

    Attributes
    ----------
    name
        Registry name, or the file name for a checkpoint loaded from a path.
    path
        The checkpoint file.
    sha256
        Its verified checksum.
    checkpoint
        Weights, config, vocabulary and provenance.
    """

    name: str
    path: Path
    sha256: str
    checkpoint: Checkpoint
    _networks: dict[str, Any] = field(default_factory=dict, repr=False)

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
        device = settings.resolve_device(device)
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

        Returns
        -------
        ``(n_cells, d_model)`` float32 embeddings.
        """
        import torch

        device = settings.resolve_device(device)
        network = self.network(device)
        tokenizer = self.tokenizer(n_genes, gene_selection)
        output = np.empty((n_cells, self.config.d_model), dtype=np.float32)
        with torch.inference_mode(), tqdm(total=n_cells, unit="cells", disable=not progress, desc="embed") as bar:
            for rows, block in blocks:
                tokens = tokenizer(block, gene_ids, cell_keys[rows], seed=seed)
                result = network(*tokens_to_torch(tokens, device))
                output[rows] = result.cell_embedding.float().cpu().numpy()
                bar.update(len(rows))
        return output
