"""Held-out evaluation of a pretrained checkpoint (the panfoma-tiny model card table).

Compares, on labelled datasets that pretraining never saw (``panfoma_sc.train.EVALUATION_HOLDOUT``):
the trained checkpoint, the same network with random weights (scores averaged over several initialisations,
with their standard deviation), and PCA(50) on log-normalized HVGs.
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


def _random_weights_model(model: pf.models.PretrainedModel, folder: Path, seed: int) -> pf.models.PretrainedModel:
    import torch

    from panfoma_sc.nn import PanFoMa

    torch.manual_seed(seed)
    path = folder / f"random-{seed}.safetensors"
    pf.models.write_checkpoint(path, PanFoMa(model.config), model.vocab, info={"name": "random-weights"})
    return pf.models.PretrainedModel.from_file(path, name="random-weights")


def _scores(embedding, labels, groups) -> dict[str, float]:
    scores = {f"knn_{k}": v for k, v in pf.bench.knn_transfer(embedding, labels, groups=groups).items()}
    return scores | pf.bench.bio_conservation(embedding, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="panfoma-tiny")
    parser.add_argument("--out", default="docs/model_cards")
    parser.add_argument("--n-genes", type=int, nargs="+", default=[512])
    parser.add_argument("--max-cells", type=int, default=1000, help="random subsample per dataset for speed")
    parser.add_argument("--datasets", nargs="+", help="only these datasets (default: all)")
    parser.add_argument("--tag", default="eval", help="output files are panfoma-tiny-<tag>.csv/.md")
    parser.add_argument(
        "--random-seeds", type=int, nargs="+", default=[0, 1, 2], help="random-weights networks, scores averaged"
    )
    args = parser.parse_args()
    trained = pf.models.load(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        random_models = [_random_weights_model(trained, Path(tmp), seed) for seed in args.random_seeds]
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
            methods["PCA(50) on HVGs"] = ([pca], time.perf_counter() - start)
            candidates = [(f"PanFoMa trained ({n} genes)", [trained], n) for n in args.n_genes]
            n_random = len(random_models)
            random_tag = f"PanFoMa random weights ({args.n_genes[0]} genes, mean of {n_random} seeds)"
            candidates.append((random_tag, random_models, args.n_genes[0]))
            for method, models, n_genes in candidates:
                start = time.perf_counter()
                embeddings = [
                    pf.tl.embed(adata, model, n_genes=n_genes, copy=True, progress=False).obsm["X_panfoma"]
                    for model in models
                ]
                methods[method] = (embeddings, (time.perf_counter() - start) / len(models))
            for method, (embeddings, seconds) in methods.items():
                runs = pd.DataFrame([_scores(emb, labels, groups) for emb in embeddings])
                row = {"dataset": name, "n_cells": adata.n_obs, "method": method, "seconds": round(seconds, 1)}
                row |= runs.mean().to_dict()
                if len(runs) > 1:  # the spread between random initialisations
                    row |= {f"{k}_sd": v for k, v in runs[["knn_accuracy", "avg_bio"]].std().items()}
                rows.append(row)
                print(row, flush=True)
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"panfoma-tiny-{args.tag}.csv", index=False)
    shown = table.drop(columns=["seconds"]).round(3).fillna("")
    (out / f"panfoma-tiny-{args.tag}.md").write_text(shown.to_markdown(index=False) + "\n")
    print(shown.to_markdown(index=False))


if __name__ == "__main__":
    main()
