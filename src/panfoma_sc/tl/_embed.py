"""``pf.tl.embed``: PanFoMa cell embeddings into ``adata.obsm``."""

from __future__ import annotations

import logging
from pathlib import Path

from anndata import AnnData

from .._settings import settings
from .._version import __version__
from ..data.rows import expression_matrix, iter_row_blocks
from ..data.tokenizer import cell_keys_from_names
from ..models import DEFAULT_MODEL, PretrainedModel
from ..pp import check_expression, match_genes
from ._keys import embedding_keys
from ._model_arg import resolve_model

logger = logging.getLogger(__name__)

__all__ = ["embed"]


def embed(
    adata: AnnData,
    model: str | Path | PretrainedModel = DEFAULT_MODEL,
    *,
    layer: str | None = None,
    gene_symbols: str | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    n_genes: int | None = None,
    key_added: str | None = None,
    copy: bool = False,
    progress: bool = True,
    seed: int = 0,
) -> AnnData | None:
    """Embed cells with a PanFoMa model.

    Accepts raw counts or log1p-normalized values (dense or sparse, in memory or backed); values are binned
    by rank within each cell, so both give the same embedding. Scaled (z-scored) data are refused.

    Parameters
    ----------
    adata
        Cells x genes. Genes are matched to the model's vocabulary by symbol or Ensembl ID.
    model
        Registry name (see :func:`panfoma_sc.models.available`), checkpoint path, or a loaded model.
    layer
        Layer holding expression; ``None`` uses ``adata.X``.
    gene_symbols
        Column of ``adata.var`` with gene symbols, when ``var_names`` are something else.
    batch_size
        Cells per forward pass (default ``pf.settings.batch_size``); memory is bounded by it.
    device
        ``"cpu"``, ``"cuda"``, ``"mps"``...; default ``pf.settings.device`` (auto: cuda > mps > cpu).
    n_genes
        Genes per cell given to the model (default: the model's); more genes cost more time.
    key_added
        Result keys: ``obsm[key_added]`` and ``uns[key_added]``; ``None`` gives ``"X_panfoma"`` and ``"panfoma"``.
    copy
        Return a new AnnData instead of writing into ``adata``.
    progress
        Show a progress bar.
    seed
        Seed of the per-cell gene sampling (the result is deterministic on CPU for a given seed).

    Returns
    -------
    ``None``, or a new AnnData when ``copy=True``. Sets

    adata.obsm['X_panfoma' | key_added] : :class:`numpy.ndarray` (dtype ``float32``)
        The cell embedding, ``(n_obs, d_model)``.
    adata.uns['panfoma' | key_added] : :class:`dict`
        ``params`` (model name, checkpoint sha256, versions, genes per cell, seed), ``genes`` (match report)
        and ``input`` (what the values looked like).

    Examples
    --------
    >>> import scanpy as sc
    >>> import panfoma_sc as pf
    >>> adata = sc.datasets.pbmc68k_reduced()
    >>> pf.tl.embed(adata.raw.to_adata(), progress=False, copy=True).obsm["X_panfoma"].shape
    (700, 128)
    """
    keys = embedding_keys(key_added)
    if copy:
        adata = adata.to_memory() if adata.isbacked else adata.copy()
    pretrained = resolve_model(model)
    match = match_genes(adata, pretrained.vocab, gene_symbols=gene_symbols)
    matrix = expression_matrix(adata, layer)
    report = check_expression(adata, layer=layer, columns=match.columns)
    batch_size = batch_size or settings.batch_size
    if batch_size < 1:
        msg = f"batch_size must be a positive integer, got {batch_size}."
        raise ValueError(msg)

    embedding = pretrained.embed_blocks(
        iter_row_blocks(matrix, batch_size, columns=match.columns),
        n_cells=adata.n_obs,
        gene_ids=match.gene_ids,
        cell_keys=cell_keys_from_names(adata.obs_names),
        device=device,
        n_genes=n_genes,
        seed=seed,
        progress=progress,
    )

    params = {
        "model": pretrained.name,
        "sha256": pretrained.sha256,
        "model_version": str(pretrained.info.get("version", "")),
        "panfoma_sc_version": __version__,
        "n_genes": pretrained.tokenizer(n_genes).n_genes,
        "seed": seed,
        "layer": layer,
        "gene_symbols": gene_symbols,
        "obsm_key": keys.obsm,
    }
    adata.obsm[keys.obsm] = embedding
    adata.uns[keys.uns] = {
        "params": {k: v for k, v in params.items() if v is not None},  # h5ad cannot store None
        "genes": match.summary(),
        "input": report.summary(),
    }
    logger.info("Wrote the embedding to adata.obsm[%r] and details to adata.uns[%r].", keys.obsm, keys.uns)
    return adata if copy else None
