"""``embed`` and ``integrate`` on a MuData: the RNA modality alone, or RNA jointly with protein / ATAC."""

from __future__ import annotations

import copy as copy_module
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..models import PretrainedModel
from ._embedding_job import EmbeddingJob
from ._integrate import warn_if_per_cell_batches
from ._keys import EmbeddingKeys, warn_if_replacing
from ._mudata import ATAC_NAMES, PROTEIN_NAMES, ROLE_CONTENT, find_modality, modality_rows, obs_column
from ._multiomics import ModalityFeatures, atac_features, late_fusion, protein_features

if TYPE_CHECKING:
    from mudata import MuData

logger = logging.getLogger(__name__)

__all__ = ["embed_mudata", "integrate_mudata"]

METHODS = ("joint", "late_fusion")


def _prepare_rna(mdata: MuData, modality: str, rows: np.ndarray | None, **job_kwargs: Any) -> EmbeddingJob:
    """The RNA modality's embedding job, with errors that name the modality."""
    rna = mdata.mod[modality]
    if rows is not None and not np.array_equal(rows, np.arange(rna.n_obs)):
        rna = rna[rows]
    try:
        return EmbeddingJob.prepare(rna, **job_kwargs)
    except (ValueError, KeyError) as error:
        message = str(error.args[0]) if error.args else str(error)
        msg = f"mdata.mod[{modality!r}] (the RNA modality): {message}"
        if "vocabulary" in message or "match" in message:
            msg += f" If {modality!r} is not the RNA modality, pass the RNA one: modality=... (have {list(mdata.mod)})."
        raise type(error)(msg) from error


def _refuse_backed_copy(mdata: MuData, *, copy: bool) -> None:
    """Mudata copies a backed MuData only into a new file: refuse ``copy=True`` before any work."""
    if copy and mdata.isbacked:
        msg = (
            "mdata is backed (read with backed=True), and mudata copies a backed MuData only into a new file, so "
            "copy=True cannot return the result. Read it into memory (mudata.read_h5mu(path)) for copy=True, or "
            "pass copy=False to write the result into mdata."
        )
        raise ValueError(msg)


def _refuse_modality_key(mdata: MuData, keys: EmbeddingKeys) -> None:
    """A ``key_added`` named like a modality would replace mudata's own ``obsm[<modality>]`` (which cells it has)."""
    if keys.obsm in mdata.mod:
        msg = (
            f"key_added={keys.obsm!r} is the name of a modality: mdata.obsm[{keys.obsm!r}] is mudata's record of "
            "which cells that modality holds, and the result would replace it. Pass another key_added."
        )
        raise ValueError(msg)


def _warn_if_replacing(mdata: MuData, keys: EmbeddingKeys, *, tool: str, modality: str | None = None) -> None:
    """The replacement warning for ``mdata``'s own entries and, for ``embed``, the RNA modality's."""
    warn_if_replacing(mdata, tool=tool, uns_key=keys.uns, obsm_keys=[keys.obsm], name="mdata")
    if modality is not None:
        name = f"mdata.mod[{modality!r}]"
        warn_if_replacing(mdata.mod[modality], tool=tool, uns_key=keys.uns, obsm_keys=[keys.obsm], name=name)


def embed_mudata(
    mdata: MuData,
    model: PretrainedModel,
    *,
    modality: str,
    keys: EmbeddingKeys,
    copy: bool,
    device: str | None,
    progress: bool,
    **job_kwargs: Any,
) -> MuData | None:
    """Embed the RNA modality; write ``mod[modality].obsm``/``uns`` and ``mdata.obsm``/``uns``."""
    find_modality(mdata, modality, role="modality")
    _refuse_backed_copy(mdata, copy=copy)
    _refuse_modality_key(mdata, keys)
    shared, rows = modality_rows(mdata, [modality], require_all=False)
    job = _prepare_rna(mdata, modality, None, model=model, device=device, progress=progress, **job_kwargs)
    if not copy:
        _warn_if_replacing(mdata, keys, tool="pf.tl.embed", modality=modality)
    embedding = job.run(device=device, progress=progress)
    if copy:
        mdata = mdata.copy()
    rna = mdata.mod[modality]
    provenance = job.provenance("pf.tl.embed", obsm_key=keys.obsm, modality=modality)
    rna.obsm[keys.obsm] = embedding
    rna.uns[keys.uns] = provenance
    joint = np.full((mdata.n_obs, embedding.shape[1]), np.nan, dtype=np.float32)
    joint[shared] = embedding[rows[modality]]
    if shared.size < mdata.n_obs:
        logger.warning(
            "%d of %d cells have no %r data: their rows of mdata.obsm[%r] are NaN. Keep the paired cells with "
            "mu.pp.intersect_obs(mdata) before building a graph on it.",
            mdata.n_obs - shared.size,
            mdata.n_obs,
            modality,
            keys.obsm,
        )
    mdata.obsm[keys.obsm] = joint
    mdata.uns[keys.uns] = copy_module.deepcopy(provenance)  # two records: editing one leaves the other as it was
    return mdata if copy else None


def _batch_codes(mdata: MuData, batch_key: str | None, modality: str, shared: np.ndarray) -> pd.Categorical | None:
    if batch_key is None:
        return None
    values, where = obs_column(mdata, batch_key, modality)
    values = values.iloc[shared]
    if values.isna().any():
        msg = f"{where} has {int(values.isna().sum())} missing values; give every cell a batch first."
        raise ValueError(msg)
    codes = pd.Categorical(values.astype(str))
    if len(codes.categories) < 2:
        msg = f"{where} holds a single batch ({codes.categories[0]!r}): pass batch_key=None for one batch."
        raise ValueError(msg)
    warn_if_per_cell_batches(codes, where)
    return codes


def integrate_mudata(
    mdata: MuData,
    model: PretrainedModel,
    *,
    batch_key: str | None,
    modality: str,
    protein: str | None,
    atac: str | None,
    method: str,
    keys: EmbeddingKeys,
    finetune: dict[str, Any],
    copy: bool,
    device,
    progress: bool,
    save_model,
    **job_kwargs,
) -> MuData | None:
    """Joint embedding of RNA with protein and/or ATAC into ``mdata.obsm[keys.obsm]``; checks everything first."""
    if method not in METHODS:
        msg = f"method must be one of {METHODS}, got {method!r}."
        raise ValueError(msg)
    if save_model is not None:
        msg = "save_model is not supported for MuData yet (the joint network has protein/ATAC tokens); pass None."
        raise ValueError(msg)
    find_modality(mdata, modality, role="modality")
    _refuse_backed_copy(mdata, copy=copy)
    _refuse_modality_key(mdata, keys)
    for role, name in (("protein", protein), ("atac", atac)):
        if name is not None and name == modality:
            msg = (
                f"{role}={name!r} is the RNA modality (modality={modality!r}). Pass {role}= the name of the "
                f"{ROLE_CONTENT[role]} modality (modalities: {list(mdata.mod)})."
            )
            raise ValueError(msg)
    # the usual names are looked for only when neither is named: naming one means "this one only"
    detect = protein is None and atac is None
    others = {
        "protein": find_modality(mdata, protein, role="protein", candidates=PROTEIN_NAMES)
        if protein is not None or detect
        else None,
        "atac": find_modality(mdata, atac, role="atac", candidates=ATAC_NAMES) if atac is not None or detect else None,
    }
    others = {kind: name for kind, name in others.items() if name is not None and name != modality}
    if not others:
        msg = (
            f"No protein or ATAC modality to integrate with {modality!r} (modalities: {list(mdata.mod)}). Name it: "
            "protein='prot' or atac='atac'. For RNA alone use pf.tl.embed(mdata) or "
            "pf.tl.integrate(mdata.mod['rna'], batch_key=...)."
        )
        raise ValueError(msg)
    shared, rows = modality_rows(mdata, [modality, *others.values()], require_all=True)
    codes = _batch_codes(mdata, batch_key, modality, shared)
    job = _prepare_rna(mdata, modality, rows[modality], model=model, device=device, progress=progress, **job_kwargs)
    config = _finetune_config(job, finetune)  # checks the settings before the features are computed
    batches = None if codes is None else np.asarray(codes.codes, dtype=np.int64)
    features: list[ModalityFeatures] = []
    if "protein" in others:
        name = others["protein"]
        features.append(
            protein_features(
                mdata.mod[name], rows[name], batches, model.vocab, name=name, rna_names=mdata.mod[modality].var_names
            )
        )
    if "atac" in others:
        name = others["atac"]
        features.append(atac_features(mdata.mod[name], rows[name], name=name))
    if not copy:
        _warn_if_replacing(mdata, keys, tool="pf.tl.integrate")
    # every check passed: compute, then write
    lineage = {}
    if method == "joint":
        embedding, history = _joint(job, features, batches, codes, config, finetune, device, progress)
        job.precision_used = "fp32"  # the joint encoder embeds without autocast
        lineage = _joint_lineage(job.model, config)
    else:
        embedding, history = _late_fusion(job, features, batches, codes, config, finetune, device, progress)
    if copy:
        mdata = mdata.copy()
    mdata.obsm[keys.obsm] = embedding
    params = {
        "method": method,
        "modality": modality,
        "batch_key": batch_key,
        "n_batches": None if codes is None else len(codes.categories),
        "steps": None if history is None else len(history),
        **_applied_finetune_settings(method, finetune, fine_tuned=history is not None),
        **lineage,
    }
    provenance = job.provenance("pf.tl.integrate", obsm_key=keys.obsm, **params)
    provenance["modalities"] = {f.modality: f.summary for f in features}
    if history is not None and len(history):
        tail = history.tail(max(len(history) // 10, 1))
        provenance["losses"] = {k: float(tail[k].mean()) for k in tail.columns if k.startswith("loss")}
    mdata.uns[keys.uns] = provenance
    logger.info("Wrote the joint embedding to mdata.obsm[%r].", keys.obsm)
    return mdata if copy else None


def _applied_finetune_settings(method: str, finetune: dict[str, Any], *, fine_tuned: bool) -> dict[str, Any]:
    """The fine-tuning settings that shaped the result, for ``uns``: none when nothing was fine-tuned."""
    if not fine_tuned:
        return {}
    skip = {"feature_weight"} if method == "late_fusion" else set()  # late fusion reconstructs no features
    return {k: v for k, v in finetune.items() if v is not None and k not in skip}


def _joint_lineage(model: PretrainedModel, config) -> dict[str, Any]:
    """Provenance of the joint network, which exists only in the result: named after its starting point.

    As a fine-tuned model's record: ``model`` is ``<base>-joint`` (no checkpoint, so no sha256), ``fine_tuned_from``
    the base's sha256 with its name and version, and ``fine_tuning`` the settings used (``batch_size`` included).
    """
    from ..train import integration_settings

    version = model.info.get("version")
    return {
        "model": f"{model.name}-joint",
        "sha256": None,
        "model_version": None,
        "fine_tuned_from": model.sha256,
        "fine_tuned_from_name": model.name,
        "fine_tuned_from_version": None if version is None else str(version),
        "fine_tuning": integration_settings(config),
    }


def _finetune_config(job: EmbeddingJob, finetune: dict[str, Any]):
    from ..train import FineTuneConfig

    return FineTuneConfig(
        n_genes=job.n_genes,
        batch_size=job.batch_size,
        max_epochs=finetune["max_epochs"],
        max_steps=finetune["max_steps"],
        learning_rate=finetune["learning_rate"],
        seed=job.seed,
    )


def _joint(job, features, batches, codes, config, finetune, device, progress):
    from ..data.features import feature_bins
    from ..train import FeatureTokens, finetune_multimodal

    n_bins = job.model.config.n_bins
    tokens = FeatureTokens(
        bins=np.concatenate([feature_bins(f.values, f.measured, n_bins=n_bins) for f in features], axis=1),
        modality=np.concatenate([np.full(len(f.names), i, dtype=np.int64) for i, f in enumerate(features)]),
        modality_names=[f.modality for f in features],
        gene_ids=np.concatenate([f.gene_ids for f in features]),
    )
    cells = job.cell_rows()
    encoder, history = finetune_multimodal(
        job.model,
        cells,
        tokens,
        batches,
        1 if codes is None else len(codes.categories),
        config=config,
        feature_weight=finetune["feature_weight"],
        adversarial_weight=finetune["adversarial_weight"],
        mmd_weight=finetune["mmd_weight"],
        device=device,
        progress=progress,
    )
    embedding = encoder.embed(cells, tokens, batch_size=job.batch_size, device=device, seed=job.seed, progress=progress)
    return embedding, history


def _late_fusion(job, features, batches, codes, config, finetune, device, progress):
    history = None
    if codes is not None:  # the RNA part is batch-corrected as pf.tl.integrate does on an AnnData
        from ..train import finetune_integration

        job.model, history = finetune_integration(
            job.model,
            job.cell_rows(),
            batches,
            len(codes.categories),
            config=config,
            adversarial_weight=finetune["adversarial_weight"],
            mmd_weight=finetune["mmd_weight"],
            device=device,
            progress=progress,
        )
    rna = job.run(device=device, progress=progress)
    return late_fusion(rna, features), history
