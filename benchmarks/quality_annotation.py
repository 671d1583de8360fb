"""Annotation quality on a held-out batch: PanFoMa kNN, linear probe and fine-tuning vs logistic regression, PCA+kNN.

The reference is one batch (study or protocol) of a labelled dataset, the query another, so every query cell
comes from a batch the reference never saw. Baselines see the same reference cells:
logistic regression on log-normalized highly variable genes (chosen on the reference), and kNN (k=15) in a
PCA(50) of those genes fitted on the reference. PanFoMa predicts every cell (``unknown_threshold=0``), so
all four are scored on the same cells. Prints a table and writes ``benchmarks/results/annotation.csv``.

Usage (from the repository root)::

    PANFOMA_DATA_DIR=../shared/data python benchmarks/quality_annotation.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.neighbors import KNeighborsClassifier

import panfoma_sc as pf

#: dataset, label column, batch column, reference batches, query batches, whether X holds counts
SPLITS = [
    ("pancreas_wang_xin_logexpr", "cell_type", "batch", ["Xin2016"], ["Wang2016"], False),
    ("lung_celllines_3cl_celseq2_dropseq", "cell_line", "batch", ["CEL-seq2"], ["Drop-seq"], True),
    ("pancreas_3batches_beta_ductal", "cell_type", "batch", ["batch 1", "batch 4"], ["batch 5"], True),
]


def _load(name: str, label: str) -> AnnData:
    adata = pf.datasets.load(name)
    if "demuxlet_cls" in adata.obs:
        adata = adata[adata.obs["demuxlet_cls"] == "SNG"].copy()
    sc.pp.filter_cells(adata, min_genes=1)
    return adata[adata.obs[label].notna()].copy()


def _log_normalized(adata: AnnData, counts: bool) -> AnnData:
    work = AnnData(adata.X.copy(), obs=adata.obs[[]].copy(), var=adata.var[[]].copy())
    if counts:
        sc.pp.normalize_total(work, target_sum=1e4)
        sc.pp.log1p(work)
    return work


def _baselines(reference: AnnData, query: AnnData, label: str, counts: bool) -> dict[str, np.ndarray]:
    ref, qry = _log_normalized(reference, counts), _log_normalized(query, counts)
    n_top = min(2000, ref.n_vars)
    hvg = sc.pp.highly_variable_genes(ref, n_top_genes=n_top, inplace=False)["highly_variable"].to_numpy()
    x_ref = np.asarray(ref.X[:, hvg].todense() if hasattr(ref.X, "todense") else ref.X[:, hvg])
    x_qry = np.asarray(qry.X[:, hvg].todense() if hasattr(qry.X, "todense") else qry.X[:, hvg])
    y_ref = reference.obs[label].astype(str).to_numpy()
    logistic = LogisticRegression(max_iter=2000).fit(x_ref, y_ref)
    pca = PCA(n_components=min(50, x_ref.shape[0] - 1, x_ref.shape[1] - 1), random_state=0).fit(x_ref)
    knn = KNeighborsClassifier(n_neighbors=15, weights="distance").fit(pca.transform(x_ref), y_ref)
    return {
        "logistic regression (HVGs)": logistic.predict(x_qry),
        "PCA(50) + kNN": knn.predict(pca.transform(x_qry)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="panfoma-tiny")
    parser.add_argument("--max-reference", type=int, default=600, help="reference cells at most (random)")
    parser.add_argument("--max-epochs", type=int, default=15)
    parser.add_argument("--out", default="benchmarks/results/annotation.csv")
    args = parser.parse_args()
    rows = []
    for name, label, batch, reference_batches, query_batches, counts in SPLITS:
        adata = _load(name, label)
        reference = adata[adata.obs[batch].isin(reference_batches)].copy()
        query = adata[adata.obs[batch].isin(query_batches)].copy()
        if reference.n_obs > args.max_reference:
            reference = sc.pp.sample(reference, n=args.max_reference, rng=0, copy=True)
        truth = query.obs[label].astype(str).to_numpy()
        predictions = {}
        start = time.perf_counter()
        for method, prediction in _baselines(reference, query, label, counts).items():
            predictions[method] = (prediction, time.perf_counter() - start)
        for method in ("knn", "logreg", "finetune"):
            start = time.perf_counter()
            result = pf.tl.annotate(
                query,
                reference,
                labels_key=label,
                model=args.model,
                method=method,
                max_epochs=args.max_epochs,
                unknown_threshold=0,
                progress=False,
                copy=True,
            )
            predictions[f"PanFoMa {method}"] = (
                result.obs["panfoma_label"].astype(str).to_numpy(),
                time.perf_counter() - start,
            )
        for method, (prediction, seconds) in predictions.items():
            row = {
                "dataset": name,
                "reference": "+".join(reference_batches),
                "query": "+".join(query_batches),
                "n_reference": reference.n_obs,
                "n_query": query.n_obs,
                "method": method,
                "accuracy": accuracy_score(truth, prediction),
                "macro_f1": f1_score(truth, prediction, average="macro"),
                "seconds": round(seconds, 1),
            }
            rows.append(row)
            print(row, flush=True)
    table = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(table.round(3).to_markdown(index=False))


if __name__ == "__main__":
    main()
