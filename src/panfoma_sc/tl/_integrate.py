"""``pf.tl.integrate``: a batch-corrected PanFoMa embedding, or a joint RNA + protein / ATAC one for a MuData."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from anndata import AnnData

from .._arguments import require_flag, require_integer, require_number
from .._paths import check_writable
from ..models import DEFAULT_MODEL, PretrainedModel
from ._embedding_job import EmbeddingJob
from ._keys import check_result_target, embedding_keys, read_backed_copy, result_target, warn_if_replacing
from ._model_arg import resolve_model
from ._mudata import is_mudata

if TYPE_CHECKING:
    from mudata import MuData

logger = logging.getLogger(__name__)

__all__ = ["integrate"]


def _batch_codes(adata: AnnData, batch_key: str) -> pd.Categorical:
    if adata.n_obs == 0:
        msg = "adata has no cells (0 observations). Check the filtering that produced it."
        raise ValueError(msg)
    if batch_key not in adata.obs.columns:
        msg = f"batch_key={batch_key!r} is not a column of adata.obs (columns: {list(adata.obs.columns)})."
        raise KeyError(msg)
    batches = adata.obs[batch_key]
    if batches.isna().any():
        msg = (
            f"adata.obs[{batch_key!r}] has {int(batches.isna().sum())} missing values; give every cell a batch "
            "(e.g. fill them with 'unknown') before integrating."
        )
        raise ValueError(msg)
    codes = pd.Categorical(batches.astype(str))
    if len(codes.categories) < 2:
        msg = (
            f"adata.obs[{batch_key!r}] holds a single batch ({codes.categories[0]!r}): there is nothing to "
            "integrate. Use pf.tl.embed for one batch."
        )
        raise ValueError(msg)
    warn_if_per_cell_batches(codes, f"adata.obs[{batch_key!r}]")
    return codes


def warn_if_per_cell_batches(codes: pd.Categorical, where: str) -> None:
    """Log a warning when most batches hold a single cell: the column is likely a cell ID, not a batch."""
    sizes = pd.Series(codes).value_counts()
    singles = int((sizes == 1).sum())
    if singles > len(sizes) / 2:
        logger.warning(
            "%s has %d batches for %d cells, %d of them a single cell: is it a per-cell column (barcode, cell ID)? "
            "Integration removes differences between batches of several cells each; pass the sample, donor or "
            "protocol column.",
            where,
            len(sizes),
            len(codes),
            singles,
        )


#: the MuData-only options of :func:`integrate` and their defaults
_MUDATA_DEFAULTS = {"modality": "rna", "protein": None, "atac": None, "method": "joint", "feature_weight": 1.0}


def _refuse_mudata_options(**options: object) -> None:
    """An AnnData with MuData-only options set: raise, rather than integrate the RNA alone without saying so."""
    given = [name for name, value in options.items() if value != _MUDATA_DEFAULTS[name]]
    if given:
        verb, these = ("applies", "this option") if len(given) == 1 else ("apply", "these options")
        msg = (
            f"{', '.join(given)} {verb} to a MuData only, and adata is an AnnData. Pass the MuData (e.g. "
            f"mudata.read_h5mu(...)) for a multi-omics embedding, or drop {these}."
        )
        raise ValueError(msg)


def integrate(
    adata: AnnData | MuData,
    batch_key: str | None = None,
    *,
    model: str | Path | PretrainedModel = DEFAULT_MODEL,
    layer: str | None = None,
    use_raw: bool = False,
    gene_symbols: str | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    n_genes: int | None = None,
    max_epochs: int = 4,
    max_steps: int | None = None,
    adversarial_weight: float = 1.0,
    mmd_weight: float = 10.0,
    learning_rate: float = 1e-4,
    key_added: str = "X_panfoma_integrated",
    save_model: str | Path | None = None,
    modality: str = "rna",
    protein: str | None = None,
    atac: str | None = None,
    method: str = "joint",
    feature_weight: float = 1.0,
    copy: bool = False,
    progress: bool = True,
    seed: int = 0,
) -> AnnData | MuData | None:
    """Batch-corrected PanFoMa embedding.

    Fine-tunes the model on ``adata`` with its pretraining objective (masked values, and reconstruction of
    expressed and silent genes from the cell embedding) while removing batch: the reconstruction decoder is
    told each cell's batch (so the embedding need not carry it), a batch discriminator learns to tell the batches
    apart from the embedding while the encoder learns to make its prediction uniform (a bounded confusion loss,
    :class:`~panfoma_sc.nn.BatchDiscriminator`), and a maximum-mean-discrepancy term pulls each batch's embeddings
    onto the other cells of the minibatch. The fine-tuned model then embeds every cell.

    Given a :class:`~mudata.MuData`, builds a joint embedding of its RNA modality with protein (CITE-seq ADTs)
    and/or chromatin (ATAC peaks) and writes it to ``mdata.obsm[key_added]``. With ``method="joint"`` the model
    reads both modalities: each cell is one sequence of its gene tokens and its feature tokens (proteins as
    CLR-normalized levels, ATAC as TF-IDF/LSI components, each binned into quantiles across cells) with their own
    embeddings and a learned modality embedding; fine-tuning hides values of both kinds (each predicted from the
    other) and asks the cell embedding to reconstruct genes and every measured feature. ``batch_key`` adds the
    batch-removal terms above. ``method="late_fusion"`` is the baseline: the RNA embedding (batch-corrected when
    ``batch_key`` is given) concatenated with a PCA of the other modality, each block scaled to unit variance.
    With ``batch_key``, only proteins with counts in every batch are used: panels differ between runs (merged files
    fill the gaps with zeros), and a protein of one panel only would reveal the batch. The ATAC path is tested on
    generated peak matrices only: its accuracy has not been measured on real multiome data.

    Of the two batch-removal terms the MMD does the work: on 450 lung cell-line cells by two protocols
    (``benchmarks/quality_integration.py``, 4 epochs), the adversarial term alone left AvgBATCH at 0.931
    (zero-shot 0.932, AvgBIO 0.890 vs 0.889), the MMD alone and both terms (the default) raised it to 0.960 at
    AvgBIO 0.884. MMD assumes the batches hold broadly similar cell populations; lower ``mmd_weight`` when they
    do not (the adversarial term then removes little batch in a short fine-tuning, but does not distort the
    embedding). Measured on islets whose studies hold different cell-type mixes (``--mmd-weights 1 3 10``, at
    the former learning rate 1e-3): a weight of 3 kept more of the cell types than 10 at about the same batch
    mixing (AvgBIO 0.694 vs 0.644 on Wang/Xin, 0.650 vs 0.610 on three pancreas batches).

    The learning rate mattered more than the weight, and its default is 1e-4. With the default weights
    (``benchmarks/results/integration-lr-1e-4.md``, 4 epochs) AvgBIO / AvgBATCH were 0.827 / 0.968 on the three
    pancreas batches (zero-shot 0.816 / 0.912), 0.676 / 0.930 on Wang/Xin (0.690 / 0.744) and 0.884 / 0.960 on
    the lung lines (0.889 / 0.932). At 1e-3, the former default, AvgBATCH was 0.975, 0.912 and 0.978 (a little
    higher on pancreas and the lung lines, lower on Wang/Xin), but fine-tuning over-corrected: the three pancreas
    batches lost much of their cell types (AvgBIO 0.610, NMI 0.608 against 0.920 at 1e-4) and Wang/Xin's AvgBIO
    fell to 0.644. A larger rate can remove more batch where the batches hold the same cell populations; check
    any result against ``pf.tl.embed``'s on known labels (on Wang/Xin the default still keeps a little less
    biology than the zero-shot embedding).

    Parameters
    ----------
    adata
        Cells x genes (raw counts or log1p-normalized), with a batch column; or a MuData with paired modalities
        (every cell in every modality used: ``mu.pp.intersect_obs`` keeps those).
    batch_key
        Column of ``adata.obs`` with each cell's batch (sample, donor, protocol...). Required for an AnnData; for a
        MuData, a column of ``mdata.obs`` or of the RNA modality's ``obs``, or ``None`` (no batch correction).
    model
        Registry name, checkpoint path or loaded model to start from.
    layer
        Layer holding expression; ``None`` uses ``adata.X``. For a MuData, a layer of the RNA modality.
    use_raw
        Read expression and genes from ``adata.raw`` (as scanpy keeps them before scaling or gene selection)
        instead of ``adata.X``; results are still written to ``adata``. Not with ``layer``.
    gene_symbols
        Column of ``adata.var`` with gene symbols, when ``var_names`` are something else.
    batch_size
        Cells per step and per forward pass.
    device
        Torch device (default: auto). Fine-tuning runs in float32; the final embedding of the cells follows
        ``pf.settings.precision``, as :func:`~panfoma_sc.tl.embed` (bf16 autocast on CUDA GPUs of compute
        capability 8.0 or later).
    n_genes
        Genes per cell (default: the model's).
    max_epochs
        Passes over the cells while fine-tuning.
    max_steps
        Optional cap on fine-tuning steps.
    adversarial_weight
        Weight of the batch-classifier loss: higher removes more batch signal, at some cost to biology.
    mmd_weight
        Weight of a maximum-mean-discrepancy term that pulls each batch's embeddings onto the others'.
    learning_rate
        Learning rate of the pretrained weights (1e-4; 1e-3 over-corrected batches of different cell-type mixes).
    key_added
        ``obsm`` key of the result; details go to ``uns[key_added]``.
    save_model
        Write the fine-tuned model to this ``.safetensors`` file (AnnData only).
    modality
        MuData: the RNA modality.
    protein
        MuData: the protein (ADT) modality, raw counts. When neither ``protein`` nor ``atac`` is given, the
        modality named ``prot``, ``protein``, ``adt`` or ``antibody capture`` (any case), if there is one; naming
        only ``atac`` leaves the proteins out.
    atac
        MuData: the ATAC modality, raw peak counts with peak coordinates. When neither ``protein`` nor ``atac`` is
        given, the modality named ``atac``, ``peaks`` or ``chromatin`` (any case), if there is one; naming only
        ``protein`` leaves the peaks out.
    method
        MuData: ``"joint"`` (the model reads every modality) or ``"late_fusion"`` (the baseline).
    feature_weight
        MuData, ``method="joint"``: weight of reconstructing the protein / ATAC features from the cell embedding.
    copy
        Return a new AnnData (MuData) instead of writing into ``adata``. A backed AnnData is read into memory for
        it, before the model runs; with ``copy=False`` it stays on disk and the results go to the AnnData object
        (in memory; the file is not changed: save with ``adata.write_h5ad(new_path)``).
    progress
        Show progress bars.
    seed
        Seed of fine-tuning and gene sampling.

    Returns
    -------
    ``None``, or a new AnnData (MuData) when ``copy=True``. Sets

    ``adata.obsm[key_added]`` : :class:`numpy.ndarray` (``float32``)
        The integrated embedding.
    ``adata.uns[key_added]`` : :class:`dict`
        Parameters, the gene match and the fine-tuning summary.

    For a MuData, ``mdata.obsm[key_added]`` (rows as ``mdata.obs``) and ``mdata.uns[key_added]``, which also
    describes each modality's features (``modalities``) and the final losses.

    Examples
    --------
    >>> import scanpy as sc
    >>> import panfoma_sc as pf
    >>> pf.tl.integrate(adata, batch_key="batch")  # doctest: +SKIP
    >>> sc.pp.neighbors(adata, use_rep="X_panfoma_integrated")  # doctest: +SKIP
    >>> pf.tl.integrate(mdata, batch_key="batch", protein="prot")  # doctest: +SKIP
    >>> sc.pp.neighbors(mdata, use_rep="X_panfoma_integrated")  # doctest: +SKIP
    """
    for name, flag in (("copy", copy), ("progress", progress)):
        require_flag(name, flag)
    keys = embedding_keys(key_added, default_obsm="X_panfoma_integrated", default_uns="X_panfoma_integrated")
    for name, weight in (
        ("adversarial_weight", adversarial_weight),
        ("mmd_weight", mmd_weight),
        ("feature_weight", feature_weight),
    ):
        require_number(name, weight, 0)
    require_integer("max_epochs", max_epochs, 1)  # as FineTuneConfig, here for every path (late fusion has none)
    require_integer("max_steps", max_steps, 1, allow_none=True)
    require_number("learning_rate", learning_rate, 0, low_open=True)
    if method not in ("joint", "late_fusion"):
        msg = f"method={method!r} is not available; use 'joint' or 'late_fusion' (with a MuData)."
        raise ValueError(msg)
    if not is_mudata(adata):
        _refuse_mudata_options(
            modality=modality, protein=protein, atac=atac, method=method, feature_weight=feature_weight
        )
        check_result_target(adata, copy=copy)
    if save_model is not None and not is_mudata(adata):
        check_writable(save_model, "save_model", suffix=".safetensors")
    if is_mudata(adata):
        from ._mudata_tools import integrate_mudata

        finetune = {
            "max_epochs": max_epochs,
            "max_steps": max_steps,
            "learning_rate": learning_rate,
            "adversarial_weight": adversarial_weight,
            "mmd_weight": mmd_weight,
            "feature_weight": feature_weight,
        }
        return integrate_mudata(
            adata,
            resolve_model(model),
            batch_key=batch_key,
            modality=modality,
            protein=protein,
            atac=atac,
            method=method,
            keys=keys,
            finetune=finetune,
            copy=copy,
            device=device,
            progress=progress,
            save_model=save_model,
            layer=layer,
            use_raw=use_raw,
            gene_symbols=gene_symbols,
            batch_size=batch_size,
            n_genes=n_genes,
            seed=seed,
        )
    if batch_key is None:
        msg = "batch_key is required for an AnnData: name the column of adata.obs holding each cell's batch."
        raise ValueError(msg)
    codes = _batch_codes(adata, batch_key)
    pretrained = resolve_model(model)
    job = EmbeddingJob.prepare(
        adata,
        pretrained,
        layer=layer,
        use_raw=use_raw,
        gene_symbols=gene_symbols,
        batch_size=batch_size,
        n_genes=n_genes,
        seed=seed,
        device=device,
        progress=progress,
    )
    from ..train import FineTuneConfig, finetune_integration

    config = FineTuneConfig(
        n_genes=job.n_genes,
        batch_size=job.batch_size,
        max_epochs=max_epochs,
        max_steps=max_steps,
        learning_rate=learning_rate,
        seed=seed,
    )
    if not copy:
        warn_if_replacing(adata, tool="pf.tl.integrate", uns_key=keys.uns, obsm_keys=[keys.obsm])
    backed_copy = read_backed_copy(adata, copy=copy)
    # every check passed: fine-tune, embed, then write
    tuned, history = finetune_integration(
        pretrained,
        job.cell_rows(),
        codes.codes,
        len(codes.categories),
        config=config,
        adversarial_weight=adversarial_weight,
        mmd_weight=mmd_weight,
        device=device,
        progress=progress,
    )
    job.model = tuned
    embedding = job.run(device=device, progress=progress)
    if save_model is not None:
        tuned.save(save_model)
    target = result_target(adata, copy=copy, backed_copy=backed_copy)
    target.obsm[keys.obsm] = embedding
    tail = history.tail(max(len(history) // 10, 1))
    target.uns[keys.uns] = job.provenance(
        "pf.tl.integrate",
        obsm_key=keys.obsm,
        batch_key=batch_key,
        n_batches=len(codes.categories),
        steps=len(history),
        adversarial_weight=adversarial_weight,
        mmd_weight=mmd_weight,
        learning_rate=learning_rate,
        final_loss_mvc=float(tail["loss_mvc"].mean()),
        final_loss_batch=float(tail["loss_batch"].mean()),
        saved_model=None if save_model is None else str(save_model),
    )
    return target if copy else None
