"""The multi-omics task: embeddings of paired RNA + protein cells, scored against labels from protein gating.

Methods take the dataset of :func:`~panfoma_sc.bench.build_paired` (a MuData with modalities ``rna`` and
``prot``) and return an embedding of every cell or, for methods without one (WNN), a cell graph. Each is a
plain function registered in :data:`MULTIOMICS_METHODS`; a method that cannot run here raises
:class:`~panfoma_sc.bench._baselines.MethodSkipped` with the reason.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData

from ._baselines import MethodContext, MethodSkipped, _import_scvi, log_normalized, panfoma
from ._embedding_eval import batch_correction, bio_conservation, graph_bio_conservation, neighbor_graph, pca_embedding
from ._paired import PROTEIN, RNA, UNGATED
from ._tasks import TaskResult, _run_and_score, register_task

logger = logging.getLogger(__name__)

__all__ = ["MULTIOMICS_METHODS", "multiomics", "pca_concatenation", "protein_pca", "wnn_graph"]


def _unit_block(x: np.ndarray) -> np.ndarray:
    """Centre and scale a block to unit mean squared norm per cell, so blocks of any width weigh the same."""
    x = x - x.mean(0)
    return x / max(float(np.sqrt((x**2).sum(1).mean())), 1e-12)


def protein_pca(protein: AnnData, *, n_comps: int = 10, seed: int = 0) -> np.ndarray:
    """PCA of CLR-normalized protein levels (CLR per cell, ``muon.prot.pp.clr(axis=1)``).

    Parameters
    ----------
    protein
        Cells x proteins, raw ADT counts (not modified); pass the proteins measured in every cell.
    n_comps
        Components (at most the number of proteins minus one).
    seed
        PCA seed.

    Returns
    -------
    ``(n_cells, n_comps)`` float32.
    """
    from ..tl._mudata import require_muon

    work = AnnData(protein.X.copy(), obs=pd.DataFrame(index=protein.obs_names))
    work.var_names = protein.var_names
    require_muon().prot.pp.clr(work, axis=1)
    sc.pp.pca(work, n_comps=min(n_comps, work.n_vars - 1, work.n_obs - 1), random_state=seed)
    return work.obsm["X_pca"].astype(np.float32)


def pca_concatenation(rna_pca: np.ndarray, protein_pca: np.ndarray) -> np.ndarray:
    """The concatenation baseline: RNA PCA next to protein PCA, each block scaled to unit total variance.

    Parameters
    ----------
    rna_pca, protein_pca
        ``(n_cells, d_rna)`` and ``(n_cells, d_protein)``.

    Returns
    -------
    ``(n_cells, d_rna + d_protein)`` float32.
    """
    return np.concatenate([_unit_block(rna_pca), _unit_block(protein_pca)], axis=1).astype(np.float32)


def wnn_graph(rna_pca: np.ndarray, protein_pca: np.ndarray, *, n_neighbors: int = 15, seed: int = 0) -> sp.csr_matrix:
    """Weighted nearest neighbours (muon's, after Hao et al. 2021) of an RNA PCA graph and a protein PCA graph.

    Parameters
    ----------
    rna_pca, protein_pca
        ``(n_cells, d)`` per modality.
    n_neighbors
        Neighbours of each modality's graph.
    seed
        Seed of the neighbour search.

    Returns
    -------
    ``(n_cells, n_cells)`` multimodal connectivities.
    """
    import mudata as md

    from ..tl._mudata import require_muon

    muon = require_muon()
    index = pd.Index([str(i) for i in range(rna_pca.shape[0])])
    modalities = {}
    for name, embedding in (("rna", rna_pca), ("prot", protein_pca)):
        mod = AnnData(np.zeros((embedding.shape[0], 1), dtype=np.float32), obs=pd.DataFrame(index=index))
        mod.obsm["X_pca"] = embedding
        sc.pp.neighbors(mod, use_rep="X_pca", n_neighbors=n_neighbors, random_state=seed)
        modalities[name] = mod
    joint = md.MuData(modalities)
    # muon's defaults (20 bandwidth neighbours, 200 candidates) overrun the arrays of a dataset with fewer cells
    n_cells = rna_pca.shape[0]
    muon.pp.neighbors(
        joint,
        n_bandwidth_neighbors=min(20, n_cells - 1),
        n_multineighbors=min(200, n_cells - 1),
        key_added="wnn",
        random_state=seed,
    )
    return sp.csr_matrix(joint.obsp["wnn_connectivities"])


# -- methods: (ctx, batch column) -> (n_cells, d) embedding, or (n_cells, n_cells) sparse graph


def _shared_proteins(ctx: MethodContext) -> AnnData:
    protein = ctx.adata.mod[PROTEIN]
    return protein[:, protein.var["in_every_batch"].to_numpy(dtype=bool)]


def _rna_pca(ctx: MethodContext) -> np.ndarray:
    def compute() -> np.ndarray:
        return pca_embedding(
            ctx.adata.mod[RNA],
            n_comps=int(ctx.option("multiomics_rna_comps", 30)),
            n_top_genes=int(ctx.option("n_top_genes", 2000)),
            counts=bool((ctx.adata.obs["x_kind"] == "counts").all()),
        )

    return ctx.cached("rna_pca", compute)[0]


def _protein_pca(ctx: MethodContext) -> np.ndarray:
    def compute() -> np.ndarray:
        n_comps = int(ctx.option("multiomics_protein_comps", 10))
        return protein_pca(_shared_proteins(ctx), n_comps=n_comps, seed=int(ctx.option("seed", 0)))

    return ctx.cached("protein_pca", compute)[0]


def rna_pca(ctx: MethodContext, batch_key: str) -> np.ndarray:
    """Baseline without proteins: PCA (``multiomics_rna_comps``, 30) of log-normalized HVGs of the RNA."""
    embedding = _rna_pca(ctx)
    ctx.record("n_comps", embedding.shape[1])
    return embedding


def pca_concat(ctx: MethodContext, batch_key: str) -> np.ndarray:
    """Baseline: RNA PCA(30) and protein PCA(10) (CLR, shared panel) concatenated, blocks at unit variance."""
    return pca_concatenation(_rna_pca(ctx), _protein_pca(ctx))


def wnn(ctx: MethodContext, batch_key: str) -> sp.csr_matrix:
    """Baseline: muon's WNN graph of the RNA PCA and protein PCA graphs (a graph, no embedding)."""
    if importlib.util.find_spec("muon") is None:
        msg = "muon is not installed: pip install 'panfoma-sc[multiomics]'"
        raise MethodSkipped(msg)
    return wnn_graph(
        _rna_pca(ctx),
        _protein_pca(ctx),
        n_neighbors=int(ctx.option("n_neighbors", 15)),
        seed=int(ctx.option("seed", 0)),
    )


def _scvi_paired_counts(ctx: MethodContext, batch_key: str, method: str):
    """scvi-tools and a MuData (``rna``: HVG counts, ``prot``: all ADT counts, batch in ``rna.obs``) for ``method``."""
    scvi = _import_scvi(ctx)
    if (ctx.adata.obs["x_kind"] != "counts").any():
        msg = f"{method} models raw counts and the RNA here is not counts"
        raise MethodSkipped(msg)
    import mudata as md

    rna, protein = ctx.adata.mod[RNA], ctx.adata.mod[PROTEIN]
    obs = pd.DataFrame({"batch": ctx.adata.obs[batch_key].astype(str).to_numpy()}, index=rna.obs_names)
    counts = AnnData(sp.csr_matrix(rna.X, dtype=np.float32), obs=obs, var=pd.DataFrame(index=rna.var_names))
    n_top = int(ctx.option("n_top_genes", 2000))
    if counts.n_vars > n_top:
        hvg = sc.pp.highly_variable_genes(log_normalized(counts), n_top_genes=n_top, inplace=False)["highly_variable"]
        counts = counts[:, hvg.to_numpy()].copy()
    # dense: scvi-tools' per-batch protein mask indexes the matrix in a way a sparse one does not support
    values = protein.X.toarray() if sp.issparse(protein.X) else np.asarray(protein.X)
    adt = AnnData(values.astype(np.float32), obs=pd.DataFrame(index=rna.obs_names))
    adt.var_names = protein.var_names
    return scvi, md.MuData({"rna": counts, "prot": adt})


def totalvi(ctx: MethodContext, batch_key: str) -> np.ndarray:
    """Baseline totalVI (scvi-tools, ``bench`` extra): joint VAE of RNA counts (HVGs) and all ADT counts.

    Proteins absent from a batch's panel (0 in all its cells) are treated as missing there by totalVI.
    """
    scvi, work = _scvi_paired_counts(ctx, batch_key, "totalVI")
    scvi.model.TOTALVI.setup_mudata(
        work, batch_key="batch", modalities={"rna_layer": "rna", "protein_layer": "prot", "batch_key": "rna"}
    )
    model = scvi.model.TOTALVI(work)
    model.train(max_epochs=int(ctx.option("scvi_max_epochs", 50)))
    return np.asarray(model.get_latent_representation(), dtype=np.float32)


def multivi(ctx: MethodContext, batch_key: str) -> np.ndarray:
    """Baseline MultiVI (scvi-tools, ``bench`` extra) on RNA counts (HVGs) and ADT counts, no chromatin.

    MultiVI models RNA, ATAC and protein; the paired data here are CITE-seq, so it runs with zero peak regions.
    Latent size as totalVI's (20).
    """
    scvi, work = _scvi_paired_counts(ctx, batch_key, "MultiVI")
    scvi.model.MULTIVI.setup_mudata(
        work, batch_key="batch", modalities={"rna_layer": "rna", "protein_layer": "prot", "batch_key": "rna"}
    )
    model = scvi.model.MULTIVI(work, n_genes=work.mod["rna"].n_vars, n_regions=0, n_latent=20)
    model.train(max_epochs=int(ctx.option("scvi_max_epochs", 50)))
    return np.asarray(model.get_latent_representation(), dtype=np.float32)


def _finetune_options(ctx: MethodContext, prefix: str, default_epochs: int) -> dict[str, object]:
    return {
        "model": ctx.model,
        "max_epochs": int(ctx.option(f"{prefix}_max_epochs", default_epochs)),
        "max_steps": ctx.options.get(f"{prefix}_max_steps"),
        "batch_size": ctx.options.get("batch_size"),
        "n_genes": ctx.options.get("n_genes"),
        "seed": int(ctx.option("seed", 0)),
        "progress": False,
    }


def panfoma_integrated(ctx: MethodContext, batch_key: str) -> np.ndarray:
    """PanFoMa on the RNA alone, fine-tuned with batch removal (``pf.tl.integrate`` on the RNA modality)."""
    from ..tl import integrate

    rna = ctx.adata.mod[RNA].copy()
    rna.obs[batch_key] = ctx.adata.obs[batch_key].to_numpy()
    result = integrate(rna, batch_key, copy=True, **_finetune_options(ctx, "integrate", 1))
    return result.obsm["X_panfoma_integrated"]


def panfoma_joint(ctx: MethodContext, batch_key: str) -> np.ndarray:
    """PanFoMa reading RNA and protein tokens, fine-tuned with batch removal (``integrate(method="joint")``).

    The budget is ``joint_max_epochs`` (default 2) and ``joint_max_steps`` of the method settings.
    """
    from ..tl import integrate

    options = _finetune_options(ctx, "joint", 2)
    result = integrate(ctx.adata, batch_key, protein=PROTEIN, method="joint", copy=True, **options)
    return result.obsm["X_panfoma_integrated"]


def panfoma_late_fusion(ctx: MethodContext, batch_key: str) -> np.ndarray:
    """PanFoMa zero-shot RNA embedding next to a PCA of the shared-panel proteins (``method="late_fusion"``)."""
    import mudata as md

    from ..tl import integrate

    paired = md.MuData({RNA: ctx.adata.mod[RNA].copy(), PROTEIN: _shared_proteins(ctx).copy()})
    options = _finetune_options(ctx, "integrate", 1)
    # no batch_key: the RNA part stays zero-shot (a batch_key would fine-tune it first)
    integrate(paired, None, protein=PROTEIN, method="late_fusion", **options)
    return paired.obsm["X_panfoma_integrated"]


#: Methods that return a cell graph, not an embedding: scored on the graph alone (no scib-metrics).
GRAPH_METHODS = frozenset({"wnn"})

MULTIOMICS_METHODS: dict[str, Callable[..., np.ndarray | sp.spmatrix]] = {
    "rna_pca": rna_pca,
    "pca_concat": pca_concat,
    "wnn": wnn,
    "totalvi": totalvi,
    "multivi": multivi,
    "panfoma": panfoma,
    "panfoma_integrated": panfoma_integrated,
    "panfoma_joint": panfoma_joint,
    "panfoma_late_fusion": panfoma_late_fusion,
}


def _score(output, labels: np.ndarray, batches: np.ndarray, scored: np.ndarray, ctx: MethodContext) -> dict:
    """Embedding scores (scib-metrics, scored cells) and graph scores (Leiden on the graph of all cells)."""
    seed = int(ctx.option("seed", 0))
    row: dict[str, object] = {}
    if sp.issparse(output):
        graph = sp.csr_matrix(output)
    else:
        embedding = np.asarray(output, dtype=np.float32)
        if not np.isfinite(embedding).all():
            msg = "the embedding holds non-finite values"
            raise ValueError(msg)
        row |= bio_conservation(embedding[scored], labels[scored])
        if np.unique(batches[scored]).size > 1:
            row |= batch_correction(embedding[scored], batches[scored], labels[scored])
        graph = neighbor_graph(embedding, n_neighbors=int(ctx.option("n_neighbors", 15)), seed=seed)
    if importlib.util.find_spec("igraph") is not None:
        row |= graph_bio_conservation(graph[scored][:, scored], labels[scored], seed=seed)
    elif sp.issparse(output):
        msg = "a graph is scored by Leiden clustering, which needs igraph: pip install igraph"
        raise MethodSkipped(msg)
    else:
        row["reason"] = "graph scores not computed: igraph is not installed"
    return row


@register_task("multiomics", methods=MULTIOMICS_METHODS)
def multiomics(ctx: MethodContext, spec: Mapping, methods: Sequence[str]) -> TaskResult:
    """Multi-omics: embeddings of paired RNA + protein cells, scored on the cells with a gated label.

    Every cell is embedded; cells labelled :data:`~panfoma_sc.bench._paired.UNGATED` are left out of the
    scores. Embeddings: AvgBIO = mean(NMI, ARI, ASW_label) and AvgBATCH (scib-metrics, as in the integration
    task). Every method, WNN included, is also scored on its graph (the 15-NN graph of its embedding, WNN's
    own graph): NMI and ARI of Leiden clusters at the best-NMI resolution, ``avg_bio_graph`` their mean.
    ``spec``: ``label_key`` and ``batch_key``; ``ctx.adata`` is the MuData of
    :func:`~panfoma_sc.bench.build_paired`.
    """
    from ..tl._mudata import is_mudata

    if not is_mudata(ctx.adata):
        msg = "The multiomics task needs a paired dataset: list an .h5mu file (read by pf.bench.build_paired)."
        raise ValueError(msg)
    label_key, batch_key = spec["label_key"], spec["batch_key"]
    labels = ctx.adata.obs[label_key].astype(str).to_numpy()
    batches = ctx.adata.obs[batch_key].astype(str).to_numpy()
    scored = labels != UNGATED
    counts = {
        "n_cells": int(scored.sum()),
        "n_cells_embedded": int(ctx.adata.n_obs),
        "n_batches": int(np.unique(batches).size),
    }
    return _run_and_score(
        "multiomics",
        ctx,
        methods,
        MULTIOMICS_METHODS,
        batch_key,
        lambda output: _score(output, labels, batches, scored, ctx),
        counts,
    )
