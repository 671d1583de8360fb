"""Multi-omics quality: PanFoMa joint RNA + protein embedding vs RNA-only PanFoMa, PCA concatenation and WNN.

Data: the real 10x CITE-seq PBMCs (5k and 10k PBMC protein v3 runs, 200 cells each: RNA + 29 ADTs, of which the
10k panel measured 14). There are no author labels, so cells are labelled by protein-marker gating on the 14
shared antibodies (``pf.bench.gate_cells`` with ``pf.bench.PBMC_CITESEQ_GATES``: CLR per cell, positive/negative
per marker and run by a two-component Gaussian mixture); ungated cells are left out of the scores. Because the
labels come from the proteins, methods that read the proteins have an advantage by construction: compare the joint
embedding with the other protein-using methods (PCA concatenation, WNN, late fusion) first.

Scores:

- Embeddings: AvgBIO = mean(NMI, ARI, ASW_label) from ``pf.bench.bio_conservation`` (scib-metrics; NMI/ARI of
  k-means clusters), and batch mixing from ``pf.bench.batch_correction``.
- Graphs (every method, so WNN can be compared): Leiden on the method's 15-NN graph (WNN: muon's multimodal graph)
  at resolutions 0.1-2.0; NMI and ARI at the resolution with the best NMI (scib's protocol). WNN has no embedding,
  so it has no ASW and no embedding AvgBIO; ``avg_bio_graph`` = mean(NMI_graph, ARI_graph) is comparable across all.

totalVI is not run yet (scvi-tools, the ``bench`` extra, was not installed where this was written). Writes
``benchmarks/results/multiomics.csv`` and ``.md``.

Usage (from the repository root)::

    PANFOMA_DATA_DIR=../shared/data python benchmarks/quality_multiomics.py
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

import panfoma_sc as pf

DATASET = "pbmc_citeseq_10x_5k_10k_400cells.h5mu"
NOTES = """
Notes
- Labels: protein-marker gating on the 14 antibodies of both panels (`pf.bench.gate_cells`); methods that read the
  proteins are favoured by construction. Ungated cells are not scored.
- avg_bio = mean(NMI, ARI, ASW_label) (scib-metrics, k-means clusters); avg_bio_graph = mean(NMI, ARI) of Leiden
  clusters on the method's 15-NN graph (WNN: muon's multimodal graph) at the best-NMI resolution in 0.1-2.0.
  WNN has no embedding, hence no ASW or avg_bio. avg_batch = mean(ASW_batch, graph connectivity).
- PanFoMa rows use panfoma-tiny; fine-tuned rows ran {epochs} epochs of 13 steps (32 cells each). Seconds are wall
  time on 2 shared, heavily loaded CPU cores (load average about 10), so they overstate the cost several-fold.
- totalVI was not run (scvi-tools not installed).
"""
RESOLUTIONS = np.round(np.arange(0.1, 2.01, 0.1), 2)


def _graph_scores(adata, labels: np.ndarray) -> dict[str, float]:
    """Leiden over a resolution sweep; NMI and ARI at the best-NMI resolution."""
    best = {"nmi_graph": -1.0, "ari_graph": 0.0, "resolution": 0.0}
    for resolution in RESOLUTIONS:
        sc.tl.leiden(
            adata,
            resolution=resolution,
            key_added="_leiden",
            flavor="igraph",
            n_iterations=2,
            random_state=0,
        )
        clusters = adata.obs["_leiden"].to_numpy()
        nmi = normalized_mutual_info_score(labels, clusters)
        if nmi > best["nmi_graph"]:
            best = {"nmi_graph": nmi, "ari_graph": adjusted_rand_score(labels, clusters), "resolution": resolution}
    best["avg_bio_graph"] = (best["nmi_graph"] + best["ari_graph"]) / 2
    return best


def _subgraph_scores(connectivities, keep: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Scores of a graph built on all cells, restricted to the gated ones."""
    work = sc.AnnData(np.zeros((int(keep.sum()), 1), dtype=np.float32))
    work.obsp["connectivities"] = connectivities[keep][:, keep]
    work.uns["neighbors"] = {"connectivities_key": "connectivities", "params": {"method": "umap"}}
    return _graph_scores(work, labels[keep])


def _embedding_graph_scores(embedding: np.ndarray, keep: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    work = sc.AnnData(np.zeros((embedding.shape[0], 1), dtype=np.float32))
    work.obsm["rep"] = embedding
    sc.pp.neighbors(work, use_rep="rep", n_neighbors=15, random_state=0)
    return _subgraph_scores(work.obsp["connectivities"], keep, labels)


def _pca_concat(mdata, shared_proteins: list[str]) -> tuple[np.ndarray, object, object]:
    """RNA PCA (log-normalized HVGs) and protein PCA (CLR), each scaled to unit total variance, concatenated."""
    import muon as mu

    rna_pca = pf.bench.pca_embedding(mdata.mod["rna"], n_comps=30)
    prot = mdata.mod["prot"][:, shared_proteins].copy()
    mu.prot.pp.clr(prot, axis=1)
    sc.pp.pca(prot, n_comps=min(10, prot.n_vars - 1), random_state=0)

    def unit(x):
        x = x - x.mean(0)
        return x / np.sqrt((x**2).sum(1).mean())

    return np.concatenate([unit(rna_pca), unit(prot.obsm["X_pca"])], axis=1).astype(np.float32), rna_pca, prot


def _wnn(mdata, rna_pca: np.ndarray, prot) -> sc.AnnData:
    """muon's weighted nearest neighbours of the RNA PCA graph and the protein PCA graph."""
    import mudata as md
    import muon as mu

    rna = sc.AnnData(np.zeros((mdata.n_obs, 1), dtype=np.float32), obs=pd.DataFrame(index=mdata.obs_names))
    rna.obsm["X_pca"] = rna_pca
    sc.pp.neighbors(rna, use_rep="X_pca", n_neighbors=15, random_state=0)
    sc.pp.neighbors(prot, use_rep="X_pca", n_neighbors=15, random_state=0)
    joint = md.MuData({"rna": rna, "prot": prot})
    mu.pp.neighbors(joint, key_added="wnn")
    return joint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="panfoma-tiny")
    parser.add_argument("--max-epochs", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None, help="cap on fine-tuning steps (smoke runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/multiomics.csv")
    args = parser.parse_args()
    import mudata as md
    import muon as mu

    warnings.filterwarnings("ignore", category=FutureWarning)
    mdata = md.read_h5mu(pf.datasets.path(DATASET))
    prot = mdata.mod["prot"]
    batch = prot.obs["batch"].to_numpy()
    counts = prot.X.toarray() if hasattr(prot.X, "toarray") else np.asarray(prot.X)
    in_every_run = np.all([counts[batch == b].sum(0) > 0 for b in np.unique(batch)], axis=0)
    shared = list(prot.var_names[in_every_run])  # the 14 antibodies of both panels
    gating = prot[:, shared].copy()
    mu.prot.pp.clr(gating, axis=1)
    labels = pf.bench.gate_cells(gating, batch_key="batch").to_numpy().astype(str)
    gated = labels != "ungated"
    print(pd.Series(labels).value_counts().to_string(), flush=True)
    batches = mdata.obs["rna:batch"].to_numpy()

    # embeddings are kept per setting, so a rerun with the same arguments only scores
    setting = f"{Path(args.model).stem}_e{args.max_epochs}_s{args.max_steps}_seed{args.seed}"
    cache = Path(tempfile.gettempdir()) / "panfoma_multiomics" / setting
    cache.mkdir(parents=True, exist_ok=True)
    embeddings, seconds, graphs = {}, {}, {}

    def run(method: str, compute) -> None:
        file = cache / f"{re.sub(r'[^A-Za-z0-9]+', '_', method)}.npz"
        if file.is_file():
            stored = np.load(file)
            embeddings[method], seconds[method] = stored["embedding"], float(stored["seconds"])
            return
        start = time.perf_counter()
        embeddings[method] = compute()
        seconds[method] = time.perf_counter() - start
        np.savez(file, embedding=embeddings[method], seconds=seconds[method])
        print(f"{method}: {seconds[method]:.0f} s", flush=True)

    finetune = {"model": args.model, "max_epochs": args.max_epochs, "max_steps": args.max_steps, "seed": args.seed}

    def zero_shot():
        return pf.tl.embed(mdata, args.model, progress=False, copy=True).obsm["X_panfoma"]

    def rna_integrated():
        rna = pf.tl.integrate(mdata.mod["rna"], "batch", progress=False, copy=True, **finetune)
        return rna.obsm["X_panfoma_integrated"]

    def joint():
        return pf.tl.integrate(mdata, "batch", progress=False, copy=True, **finetune).obsm["X_panfoma_integrated"]

    def late():  # zero-shot RNA embedding next to a PCA of the 14 antibodies of both panels
        paired = md.MuData({"rna": mdata.mod["rna"].copy(), "prot": mdata.mod["prot"][:, shared].copy()})
        pf.tl.integrate(paired, model=args.model, method="late_fusion", progress=False)
        return paired.obsm["X_panfoma_integrated"]

    run("PanFoMa RNA only (zero-shot)", zero_shot)
    run("PanFoMa RNA only (integrated)", rna_integrated)
    run("PanFoMa joint RNA+protein", joint)
    run("PanFoMa late fusion (RNA zero-shot + protein PCA)", late)

    start = time.perf_counter()
    concat, rna_pca, prot_pca = _pca_concat(mdata, shared)
    embeddings["PCA concatenation (RNA PCA + protein PCA)"] = concat
    seconds["PCA concatenation (RNA PCA + protein PCA)"] = time.perf_counter() - start
    embeddings["RNA PCA only"] = rna_pca
    seconds["RNA PCA only"] = np.nan

    start = time.perf_counter()
    graphs["WNN (muon; RNA PCA + protein PCA graphs)"] = _wnn(mdata, rna_pca, prot_pca)
    seconds["WNN (muon; RNA PCA + protein PCA graphs)"] = time.perf_counter() - start

    if importlib.util.find_spec("scvi") is None:
        print("totalVI skipped: scvi-tools is not installed (pip install 'panfoma-sc[bench]').", flush=True)
    else:
        print("totalVI is not run by this script yet (scvi-tools is installed).", flush=True)

    rows = []
    for method, embedding in embeddings.items():
        row = {"dataset": DATASET, "n_cells": int(gated.sum()), "method": method}
        row |= pf.bench.bio_conservation(embedding[gated], labels[gated])
        row |= pf.bench.batch_correction(embedding[gated], batches[gated], labels[gated])
        row |= _embedding_graph_scores(embedding, gated, labels)
        row["seconds"] = round(seconds[method], 1)
        rows.append(row)
        print(row, flush=True)
    for method, graph_data in graphs.items():
        row = {"dataset": DATASET, "n_cells": int(gated.sum()), "method": method}
        row |= _subgraph_scores(graph_data.obsp["wnn_connectivities"], gated, labels)
        row["seconds"] = round(seconds[method], 1)
        rows.append(row)
        print(row, flush=True)
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    columns = [
        "method",
        "avg_bio",
        "nmi",
        "ari",
        "asw_label",
        "avg_bio_graph",
        "nmi_graph",
        "ari_graph",
        "avg_batch",
        "seconds",
    ]
    counts_line = ", ".join(f"{k} {v}" for k, v in pd.Series(labels).value_counts().items())
    text = (
        f"# Multi-omics: {DATASET} ({int(gated.sum())} gated cells of {mdata.n_obs}; {counts_line})\n\n"
        f"`python benchmarks/quality_multiomics.py --model {args.model} --max-epochs {args.max_epochs} "
        f"--seed {args.seed}`\n\n"
        + table[columns].round(3).to_markdown(index=False)
        + "\n"
        + NOTES.format(epochs=args.max_epochs)
    )
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
