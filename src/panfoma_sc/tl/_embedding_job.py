"""Validated embedding work shared by the tools: check everything first, compute second, write last."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._arguments import MAX_SEED, require_flag, require_integer
from .._settings import settings
from .._version import __version__
from ..data.rows import expression_matrix, iter_row_blocks, raw_values
from ..data.tokenizer import cell_keys_from_names
from ..models import PretrainedModel
from ..models._sharding import combine_shards, inference_world, rank_device, shard_rows
from ..pp import ExpressionReport, GeneMatch, check_expression, match_genes

__all__ = ["EmbeddingJob"]

logger = logging.getLogger(__name__)


@dataclass
class EmbeddingJob:
    """An AnnData checked against a model, ready to embed."""

    adata: AnnData
    model: PretrainedModel
    match: GeneMatch
    report: ExpressionReport
    layer: str | None
    gene_symbols: str | None
    batch_size: int
    n_genes: int
    gene_selection: str
    seed: int
    precision: str = "auto"  # as asked ("auto", "fp32", "bf16"); resolved for the device by run()
    rows: np.ndarray | None = None  # the cells: these rows of adata (sorted), read in place; None: every row
    use_raw: bool = False  # adata is then the values of the caller's .raw (raw_values), for provenance
    precision_used: str | None = field(default=None, init=False)  # what the last run() used, for provenance

    @classmethod
    def prepare(
        cls,
        adata: AnnData,
        model: PretrainedModel,
        *,
        layer: str | None = None,
        gene_symbols: str | None = None,
        batch_size: int | None = None,
        n_genes: int | None = None,
        gene_selection: str | None = None,
        seed: int = 0,
        precision: str | None = None,
        device: str | None = None,
        adata_name: str = "adata",
        rows: np.ndarray | None = None,
        use_raw: bool = False,
        progress: bool = False,
    ) -> EmbeddingJob:
        """Run every check (genes, values, arguments); raises before any model work.

        ``device`` is the one :meth:`run` will get: it is only used to refuse ``precision="bf16"`` off CUDA here.
        ``adata_name`` is how the gene-match warnings call ``adata`` (the argument it was passed as). ``rows``
        (sorted positions) makes the job's cells those rows of ``adata``, read from it in place: subsetting a
        backed AnnData would read the rows into memory instead. ``use_raw``: the values and genes of ``adata.raw``
        (:func:`~panfoma_sc.data.rows.raw_values`, nothing copied). ``progress``: a bar for the value checks when
        they take more than two seconds.
        """
        batch_size = settings.batch_size if batch_size is None else batch_size
        require_integer("batch_size", batch_size, 1)
        require_integer("n_genes", n_genes, 1, allow_none=True)
        require_integer("seed", seed, 0, maximum=MAX_SEED)
        require_flag("use_raw", use_raw)
        if gene_selection not in (None, "random", "top"):
            msg = f"gene_selection must be 'random', 'top' or None, got {gene_selection!r}."
            raise ValueError(msg)
        precision = settings.precision if precision is None else precision
        settings.resolve_precision(precision, settings.resolve_device(device))  # unknown value, bf16 off CUDA
        if use_raw:
            raw_values(adata, layer=layer, name=adata_name)  # a layer too, no .raw, a backed CSC .raw
        else:
            expression_matrix(adata, layer)  # missing layer / empty X
        match = match_genes(adata, model.vocab, gene_symbols=gene_symbols, adata_name=adata_name, use_raw=use_raw)
        rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        report = check_expression(
            adata, layer=layer, columns=match.read_columns, rows=rows, use_raw=use_raw, progress=progress
        )
        tokenizer = model.tokenizer(n_genes, gene_selection)  # resolves the model's defaults once
        if n_genes is not None and n_genes > 2 * report.max_expressed:  # asked for; the default is the model's
            logger.warning(
                "n_genes=%d, but no cell expresses more than %d of the matched genes: most tokens will be "
                "unexpressed filler, which costs time and memory (attention grows with the square of the chunk "
                "length). A smaller n_genes is faster.",
                tokenizer.n_genes,
                report.max_expressed,
            )
        return cls(
            adata=raw_values(adata) if use_raw else adata,
            model=model,
            match=match,
            report=report,
            layer=layer,
            gene_symbols=gene_symbols,
            batch_size=int(batch_size),
            n_genes=tokenizer.n_genes,
            gene_selection=tokenizer.selection,
            seed=seed,
            precision=precision,
            rows=rows,
            use_raw=use_raw,
        )

    @property
    def n_cells(self) -> int:
        """How many cells the job embeds."""
        return self.adata.n_obs if self.rows is None else int(self.rows.size)

    @property
    def obs_names(self) -> pd.Index:
        """The names of the job's cells."""
        return self.adata.obs_names if self.rows is None else self.adata.obs_names[self.rows]

    def run(self, *, device: str | None = None, progress: bool = True) -> np.ndarray:
        """Compute the ``(n_obs, d_model)`` float32 embedding, streaming ``batch_size`` cells at a time.

        In a :mod:`torch.distributed` process group (``torchrun``) each process embeds its own slice of the cells
        and every process gets the whole result.
        """
        stream = self._stream(device, progress)
        return combine_shards(self.model.embed_blocks(**stream), device=stream["device"])

    def predict(self, *, device: str | None = None, progress: bool = True) -> np.ndarray:
        """Class probabilities ``(n_obs, n_classes)`` from the model's fine-tuned classifier head, sharded as in run."""
        stream = self._stream(device, progress)
        return combine_shards(self.model.predict_blocks(**stream), device=stream["device"])

    def _stream(self, device: str | None, progress: bool) -> dict[str, Any]:
        """Arguments of the model's block-wise inference: row blocks of the matched genes and the settings.

        Resolves the device and the precision first, so that bf16 on a CPU fails before any model work.
        """
        rank, world = inference_world()
        device = rank_device(settings.resolve_device(device), rank, world)
        self.precision_used = settings.resolve_precision(self.precision, device)
        matrix = expression_matrix(self.adata, self.layer)
        cells = shard_rows(self.n_cells, rank, world) if world > 1 else None  # positions among the job's cells
        rows = cells if self.rows is None else self.rows if cells is None else self.rows[cells]
        blocks = iter_row_blocks(matrix, self.batch_size, columns=self.match.read_columns, rows=rows)
        if self.rows is not None:
            blocks = _as_positions(blocks, self.rows)
        return {
            "blocks": blocks,
            "rows_in_blocks": None if cells is None else cells.size,
            "n_cells": self.n_cells,
            "gene_ids": self.match.gene_ids,
            "cell_keys": cell_keys_from_names(self.obs_names),
            "device": device,
            "n_genes": self.n_genes,
            "gene_selection": self.gene_selection,
            "seed": self.seed,
            "progress": progress,
            "precision": self.precision_used,
        }

    def cell_rows(self):
        """The matched expression rows, as the fine-tuning engine takes them (:class:`panfoma_sc.train.CellRows`)."""
        from ..train import CellRows

        return CellRows(
            matrix=expression_matrix(self.adata, self.layer),
            columns=self.match.read_columns,
            gene_ids=self.match.gene_ids,
            cell_keys=cell_keys_from_names(self.obs_names),
            rows=self.rows,
        )

    def provenance(self, tool: str, **extra: Any) -> dict[str, Any]:
        """What to record in ``uns``: parameters (no ``None``, which h5ad cannot store), gene match, input kind.

        The parameters name the tool that wrote the record (``"pf.tl.embed"``, ...), the model (name, version,
        sha256) and, for a fine-tuned one, the model it started from (``fine_tuned_from`` is its sha256, with
        ``fine_tuned_from_name`` and ``fine_tuned_from_version``) and the fine-tuning settings.
        """
        version = self.model.info.get("version")
        base = self.model.info.get("fine_tuned_from", {})  # a fine-tuned model: its starting point and settings
        params = {
            "tool": tool,
            "model": self.model.name,
            "sha256": self.model.sha256,
            "model_version": None if version is None else str(version),
            "fine_tuned_from": base.get("sha256"),
            "fine_tuned_from_name": base.get("name"),
            "fine_tuned_from_version": None if base.get("version") is None else str(base["version"]),
            "fine_tuning": self.model.info.get("fine_tuning"),
            "panfoma_sc_version": __version__,
            "n_genes": self.n_genes,
            "gene_selection": self.gene_selection,
            "value_encoding": self.model.config.value_encoding,
            "seed": self.seed,
            "precision": self.precision_used,
            "layer": self.layer,
            "use_raw": True if self.use_raw else None,
            "gene_symbols": self.gene_symbols,
            **extra,
        }
        return {
            "params": {k: v for k, v in params.items() if v is not None},
            "genes": self.match.summary(),
            "input": self.report.summary(),
        }


def _as_positions(blocks: Iterator[tuple[np.ndarray, Any]], rows: np.ndarray) -> Iterator[tuple[np.ndarray, Any]]:
    """Row blocks of a subset, their row indices turned into positions among the subset's (sorted) ``rows``."""
    for selected, block in blocks:
        yield np.searchsorted(rows, selected), block
