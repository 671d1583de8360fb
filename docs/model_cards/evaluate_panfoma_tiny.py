"""Held-out evaluation of a pretrained checkpoint (the panfoma-tiny model card table).

Compares, on labelled datasets that pretraining never saw (``panfoma_sc.train.EVALUATION_HOLDOUT``):
the trained checkpoint, the same network with random weights, and PCA(50) on log-normalized HVGs.
Metrics: kNN (k=15) label transfer (folds by batch/donor where the data have one) and scib-metrics
bio conservation (NMI, ARI, ASW_label, AvgBIO).

Usage (from the repository root)::

    PANFOMA_DATA_DIR=../shared/data python docs/model_cards/evaluate_panfoma_tiny.py \
        --model panfoma-tiny --out docs/model_cards
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import scanpy as sc

import panfoma_sc as pf

#: dataset, label column, group column for folds (None = stratified folds), whether X holds counts
DATASETS = [
    ("pbmc_sorted_9types_mudan_2115cells", "cell_type", None, True),
    ("lung_celllines_3cl_celseq2_dropseq", "cell_line", "batch", True),
    ("pancreas_wang_xin_logexpr", "cell_type", None, False),
    ("melanoma_icb_tcells_19patients", "celltype", "patient", False),
]


def _load(name: str, label: str):
    adata = pf.datasets.load(name)
    if name.startswith("lung"):
        adata = adata[adata.obs["demuxlet_cls"] == "SNG"].copy()
    sc.pp.filter_cells(adata, min_genes=1)
    return adata[adata.obs[label].notna()].copy()


def _random_weights_model(model: pf.models.PretrainedModel, folder: Path) -> pf.models.PretrainedModel:
    import torch

    from panfoma_sc.nn import PanFoMa

    torch.manual_seed(0)
    path = folder / "random.safetensors"
    pf.models.write_checkpoint(path, PanFoMa(model.config), model.vocab, info={"name": "random-weights"})
    return pf.models.PretrainedModel.from_file(path, name="random-weights")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="panfoma-tiny")
    parser.add_argument("--out", default="docs/model_cards")
    parser.add_argument("--n-genes", type=int, nargs="+", default=[512])
    parser.add_argument("--max-cells", type=int, default=1000, help="random subsample per dataset for speed")
    parser.add_argument("--datasets", nargs="+", help="only these datasets (default: all)")
    parser.add_argument("--tag", default="eval", help="output files are panfoma-tiny-<tag>.csv/.md")
    args = parser.parse_args()
    trained = pf.models.load(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        random_model = _random_weights_model(trained, Path(tmp))
        for name, label, group, counts in DATASETS:
            if args.datasets and name not in args.datasets:
                continue
            adata = _load(name, label)
            if adata.n_obs > args.max_cells:
                adata = sc.pp.sample(adata, n=args.max_cells, rng=0, copy=True)
            labels = adata.obs[label].to_numpy()
            groups = None if group is None else adata.obs[group].to_numpy()
            methods = {}
            start = time.perf_counter()
            pca = pf.bench.pca_embedding(adata, counts=counts)
            methods["PCA(50) on HVGs"] = (pca, time.perf_counter() - start)
            candidates = [("PanFoMa trained", trained, n) for n in args.n_genes]
            candidates.append(("PanFoMa random weights", random_model, args.n_genes[0]))
            for tag, model, n_genes in candidates:
                start = time.perf_counter()
                emb = pf.tl.embed(adata, model, n_genes=n_genes, copy=True, progress=False).obsm["X_panfoma"]
                methods[f"{tag} ({n_genes} genes)"] = (emb, time.perf_counter() - start)
            for method, (emb, seconds) in methods.items():
                row = {"dataset": name, "n_cells": adata.n_obs, "method": method, "seconds": round(seconds, 1)}
                row.update({f"knn_{k}": v for k, v in pf.bench.knn_transfer(emb, labels, groups=groups).items()})
                row.update(pf.bench.bio_conservation(emb, labels))
                rows.append(row)
                print(row, flush=True)
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"panfoma-tiny-{args.tag}.csv", index=False)
    shown = table.drop(columns=["seconds"]).round(3)
    (out / f"panfoma-tiny-{args.tag}.md").write_text(shown.to_markdown(index=False) + "\n")
    print(shown.to_markdown(index=False))


if __name__ == "__main__":
    main()
