"""Integration quality: PanFoMa zero-shot and integrated vs PCA and Harmony, scored with scib-metrics.

For each labelled multi-batch dataset: AvgBIO (NMI, ARI, label silhouette) and AvgBATCH (batch silhouette,
iLISI, graph connectivity) of the embeddings of the same cells: PCA on HVGs, Harmony on that PCA (harmonypy, from
the ``bench`` extra), PanFoMa zero-shot and integrated, and the integration with one batch-removal term only
(``mmd_weight=0``: the adversarial term alone; ``adversarial_weight=0``: the MMD alone), which is what
``pf.tl.integrate``'s docstring cites. Prints a table and writes ``benchmarks/results/integration.csv`` and
``integration.md``.

Usage (from the repository root)::

    PANFOMA_DATA_DIR=../shared/data python benchmarks/quality_integration.py
    # the MMD weight's trade-off instead of the term ablation (written elsewhere to keep the shipped table)
    PANFOMA_DATA_DIR=../shared/data python benchmarks/quality_integration.py --mmd-weights 1 3 10 \\
        --out benchmarks/results/integration-mmd-weights.csv
"""

from __future__ import annotations

import argparse
import inspect
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc

import panfoma_sc as pf

#: dataset, label column, batch column, whether X holds counts
DATASETS = [
    ("lung_celllines_3cl_celseq2_dropseq", "cell_line", "batch", True),
    ("pancreas_3batches_beta_ductal", "cell_type", "batch", True),
    ("pancreas_wang_xin_logexpr", "cell_type", "batch", False),
]

#: the integrations compared: pf.tl.integrate's defaults, and each batch-removal term alone
INTEGRATIONS = {
    "PanFoMa integrated": {},
    "PanFoMa integrated, adversarial term only": {"mmd_weight": 0.0},
    "PanFoMa integrated, MMD term only": {"adversarial_weight": 0.0},
}


def _harmony(pca: np.ndarray, obs: pd.DataFrame, batch: str) -> np.ndarray:
    import harmonypy

    result = harmonypy.run_harmony(pca, obs, [batch], random_state=0, verbose=False)
    corrected = np.asarray(result.Z_corr)
    return (corrected.T if corrected.shape[0] != pca.shape[0] else corrected).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="panfoma-tiny")
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--max-cells", type=int, default=600)
    names = [name for name, *_ in DATASETS]
    parser.add_argument("--datasets", nargs="+", choices=names, default=names, help="datasets to run (default: all)")
    parser.add_argument(
        "--mmd-weights",
        nargs="+",
        type=float,
        help="instead of the term ablation: one integration per MMD weight (adversarial term at its default)",
    )
    parser.add_argument("--learning-rate", type=float, help="pf.tl.integrate's learning_rate (default: its own)")
    parser.add_argument("--out", default="benchmarks/results/integration.csv")
    args = parser.parse_args()
    rate = {} if args.learning_rate is None else {"learning_rate": args.learning_rate}
    integrations = (
        INTEGRATIONS
        if args.mmd_weights is None
        else {f"PanFoMa integrated, mmd_weight={w:g}": {"mmd_weight": w} for w in args.mmd_weights}
    )
    rows = []
    for name, label, batch, counts in (d for d in DATASETS if d[0] in args.datasets):
        adata = pf.datasets.load(name)
        if "demuxlet_cls" in adata.obs:
            adata = adata[adata.obs["demuxlet_cls"] == "SNG"].copy()
        sc.pp.filter_cells(adata, min_genes=1)
        adata = adata[adata.obs[label].notna()].copy()
        if adata.n_obs > args.max_cells:
            adata = sc.pp.sample(adata, n=args.max_cells, rng=0, copy=True)
        embeddings, seconds = {}, {}
        start = time.perf_counter()
        embeddings["PCA(50) on HVGs"] = pf.bench.pca_embedding(adata, counts=counts)
        seconds["PCA(50) on HVGs"] = time.perf_counter() - start
        start = time.perf_counter()
        embeddings["Harmony (on the PCA)"] = _harmony(embeddings["PCA(50) on HVGs"], adata.obs, batch)
        seconds["Harmony (on the PCA)"] = time.perf_counter() - start
        start = time.perf_counter()
        pf.tl.embed(adata, args.model, progress=False)
        embeddings["PanFoMa zero-shot"] = adata.obsm["X_panfoma"]
        seconds["PanFoMa zero-shot"] = time.perf_counter() - start
        for method, weights in integrations.items():
            start = time.perf_counter()
            pf.tl.integrate(
                adata, batch, model=args.model, max_epochs=args.max_epochs, progress=False, **weights, **rate
            )
            embeddings[method] = adata.obsm["X_panfoma_integrated"]
            seconds[method] = time.perf_counter() - start
        labels, batches = adata.obs[label].to_numpy(), adata.obs[batch].to_numpy()
        for method, embedding in embeddings.items():
            row = {"dataset": name, "n_cells": adata.n_obs, "n_batches": len(set(batches)), "method": method}
            row |= pf.bench.bio_conservation(embedding, labels)
            row |= pf.bench.batch_correction(embedding, batches, labels)
            row["seconds"] = round(seconds[method], 1)
            rows.append(row)
            print(row, flush=True)
    table = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    columns = ["dataset", "n_cells", "method", "avg_bio", "avg_batch", "nmi", "ari", "asw_label", "asw_batch", "ilisi"]
    markdown = table[columns].round(3).to_markdown(index=False)
    print(markdown)
    model = pf.models.describe(args.model)
    command = f"python benchmarks/quality_integration.py --model {args.model} --max-epochs {args.max_epochs}"
    if args.datasets != names:
        command += " --datasets " + " ".join(args.datasets)
    if args.mmd_weights is not None:
        command += " --mmd-weights " + " ".join(f"{w:g}" for w in args.mmd_weights)
    # the rate always goes into the recorded command: pf.tl.integrate's default has changed before
    used_rate = inspect.signature(pf.tl.integrate).parameters["learning_rate"].default
    command += f" --learning-rate {used_rate if args.learning_rate is None else args.learning_rate:g}"
    header = (
        f"# Integration: {args.model} {model.get('version', '')} (sha256 {model['sha256'][:8]}...)\n\n`{command}`\n\n"
    )
    Path(args.out).with_suffix(".md").write_text(header + markdown + "\n")


if __name__ == "__main__":
    main()
