"""Held-out evaluation of a pretrained checkpoint (the panfoma-tiny model card table).

Compares, on labelled cells that pretraining never saw, the trained checkpoint, the same network with random
weights (scores averaged over several initialisations, with their standard deviation), and PCA(50) on
log-normalized HVGs. Two kinds of held-out data:

- datasets held out whole (``panfoma_sc.train.EVALUATION_HOLDOUT``): kNN (k=15) label transfer with folds by
  batch/donor where the data have one (stratified folds otherwise), bio conservation on all cells;
- held-out batches of datasets whose other batch is pretraining data (``EVALUATION_HOLDOUT_CELLS``): the other
  batch is the kNN reference (its labels were never used in pretraining), the held-out batch the query, and bio
  conservation is scored on the query cells.

Metrics: kNN accuracy and macro-F1, scib-metrics bio conservation (NMI, ARI, ASW_label, AvgBIO). With several
``--subsample-seeds``, every method is scored on each random subsample of ``--max-cells`` cells (of the query and
of the reference each; sets no larger than that are used whole, once), the table gives the mean and standard
deviation over all runs, and a second table gives the trained-minus-random difference per subsample (paired:
same cells), its mean and standard deviation.

Usage (from the repository root)::

    PANFOMA_DATA_DIR=../shared/data python docs/model_cards/evaluate_panfoma_tiny.py \
        --model panfoma-tiny --out docs/model_cards
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc

import panfoma_sc as pf
from panfoma_sc.train import EVALUATION_HOLDOUT_CELLS

#: dataset, label column, group column for folds (None = stratified folds; unused for a dataset with held-out
#: cells, whose query is its EVALUATION_HOLDOUT_CELLS), whether X holds counts
DATASETS = [
    ("pbmc_sorted_9types_mudan_2115cells", "cell_type", None, True),
    ("lung_celllines_3cl_celseq2_dropseq", "cell_line", None, True),
    ("pancreas_wang_xin_logexpr", "cell_type", None, False),
    ("melanoma_icb_tcells_19patients", "celltype", "patient", False),
]


def _load(name: str, label: str):
    adata = pf.datasets.load(name)
    if name.startswith("lung"):
        adata = adata[adata.obs["demuxlet_cls"] == "SNG"].copy()
    sc.pp.filter_cells(adata, min_genes=1)
    return adata[adata.obs[label].notna()].copy()


def _query_mask(name: str, adata) -> np.ndarray | None:
    """The held-out (query) cells of a dataset whose other cells are pretraining data; ``None`` for the others."""
    if name not in EVALUATION_HOLDOUT_CELLS:
        return None
    query = np.zeros(adata.n_obs, dtype=bool)
    for column, values in EVALUATION_HOLDOUT_CELLS[name].items():
        query |= adata.obs[column].astype(str).isin(values).to_numpy()
    return query


def _subsample(full, query: np.ndarray | None, max_cells: int, seed: int):
    """Up to ``max_cells`` random cells of ``full`` (of its query and of its reference each, when it has a query)."""
    parts = [full] if query is None else [full[query], full[~query]]
    kept = [p if p.n_obs <= max_cells else sc.pp.sample(p, n=max_cells, rng=seed, copy=True) for p in parts]
    if len(kept) == 1:
        return kept[0].copy()
    return full[full.obs_names.isin(np.concatenate([p.obs_names for p in kept]))].copy()


def _random_weights_model(model: pf.models.PretrainedModel, folder: Path, seed: int) -> pf.models.PretrainedModel:
    import torch

    from panfoma_sc.nn import PanFoMa

    torch.manual_seed(seed)
    path = folder / f"random-{seed}.safetensors"
    pf.models.write_checkpoint(path, PanFoMa(model.config), model.vocab, info={"name": "random-weights"})
    return pf.models.PretrainedModel.from_file(path, name="random-weights")


def _scores(embedding, labels, groups, query) -> dict[str, float]:
    knn = pf.bench.knn_transfer(embedding, labels, groups=groups, query=query)
    scored = slice(None) if query is None else query
    return {f"knn_{k}": v for k, v in knn.items()} | pf.bench.bio_conservation(embedding[scored], labels[scored])


def _embeddings(adata, counts: bool, trained, random_models, args) -> dict[str, tuple[list, float]]:
    """Each method's embeddings of ``adata`` (one per random initialisation) and seconds per embedding."""
    methods = {}
    start = time.perf_counter()
    methods["PCA(50) on HVGs"] = ([pf.bench.pca_embedding(adata, counts=counts)], time.perf_counter() - start)
    candidates = [(f"PanFoMa trained ({n} genes)", [trained], n) for n in args.n_genes]
    random_tag = f"PanFoMa random weights ({args.n_genes[0]} genes, mean of {len(random_models)} seeds)"
    candidates.append((random_tag, random_models, args.n_genes[0]))
    for method, models, n_genes in candidates:
        start = time.perf_counter()
        embeddings = [
            pf.tl.embed(adata, model, n_genes=n_genes, copy=True, progress=False).obsm["X_panfoma"] for model in models
        ]
        methods[method] = (embeddings, (time.perf_counter() - start) / len(models))
    return methods


def _paired_difference(name: str, runs: dict[str, list[pd.DataFrame]]) -> dict[str, float]:
    """Trained minus random weights (mean over initialisations) on the same cells: mean and sd over subsamples."""
    trained = next(m for m in runs if m.startswith("PanFoMa trained"))
    random = next(m for m in runs if m.startswith("PanFoMa random"))
    per_subsample = (
        pd.concat(runs[trained]).groupby("subsample").mean() - pd.concat(runs[random]).groupby("subsample").mean()
    )
    row = {"dataset": name, "subsamples": len(per_subsample)}
    for metric in ("knn_accuracy", "avg_bio"):
        row[f"{metric}_difference"] = per_subsample[metric].mean()
        row[f"{metric}_difference_sd"] = per_subsample[metric].std()
    return row


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
    parser.add_argument(
        "--subsample-seeds", type=int, nargs="+", default=[0], help="cell subsamples per dataset, scores averaged"
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trained = pf.models.load(args.model)
    rows, differences = [], []
    with tempfile.TemporaryDirectory() as tmp:
        random_models = [_random_weights_model(trained, Path(tmp), seed) for seed in args.random_seeds]
        for name, label, group, counts in DATASETS:
            if args.datasets and name not in args.datasets:
                continue
            full = _load(name, label)
            full_query = _query_mask(name, full)
            parts = [full.n_obs] if full_query is None else [full_query.sum(), (~full_query).sum()]
            seeds = args.subsample_seeds if max(parts) > args.max_cells else args.subsample_seeds[:1]
            runs: dict[str, list[pd.DataFrame]] = {}
            seconds: dict[str, float] = {}
            for subsample in seeds:
                adata = _subsample(full, full_query, args.max_cells, subsample)
                query = _query_mask(name, adata)
                labels = adata.obs[label].to_numpy()
                groups = None if group is None else adata.obs[group].to_numpy()
                for method, (embeddings, took) in _embeddings(adata, counts, trained, random_models, args).items():
                    scores = pd.DataFrame([_scores(emb, labels, groups, query) for emb in embeddings])
                    runs.setdefault(method, []).append(scores.assign(subsample=subsample))
                    seconds[method] = took
            for method, frames in runs.items():
                scores = pd.concat(frames)
                n_query = min(parts[0], args.max_cells)
                n_reference = min(parts[1], args.max_cells) if len(parts) > 1 else 0
                row = {"dataset": name, "n_cells": n_query, "n_reference": n_reference, "method": method}
                row |= {"runs": len(scores), "seconds": round(seconds[method], 1)}
                row |= scores.drop(columns="subsample").mean().to_dict()
                if len(scores) > 1:
                    row |= {f"{k}_sd": v for k, v in scores[["knn_accuracy", "avg_bio"]].std().items()}
                rows.append(row)
                print(row, flush=True)
            differences.append(_paired_difference(name, runs))
    if len(args.subsample_seeds) > 1:
        paired = pd.DataFrame(differences).round(3).fillna("")
        (out / f"panfoma-tiny-{args.tag}-paired.md").write_text(paired.to_markdown(index=False) + "\n")
        print(paired.to_markdown(index=False))
    table = pd.DataFrame(rows)
    table.to_csv(out / f"panfoma-tiny-{args.tag}.csv", index=False)
    shown = table.drop(columns=["seconds"]).round(3).fillna("")
    (out / f"panfoma-tiny-{args.tag}.md").write_text(shown.to_markdown(index=False) + "\n")
    print(shown.to_markdown(index=False))


if __name__ == "__main__":
    main()
