"""Choose panfoma-tiny's inference defaults (genes per cell, value tokens) on labelled files of the *training* corpus.

Pretraining never used these files' labels, and none of them is in the held-out evaluation
(``panfoma_sc.train.EVALUATION_HOLDOUT``), so the choice does not peek at the model card's table.
Prints stratified 5-fold kNN (k=15) accuracy and macro-F1 for each candidate (the cell's most expressed genes,
``gene_selection="top"``, as the model card describes).

Usage (from the repository root)::

    PANFOMA_DATA_DIR=../shared/data python docs/model_cards/select_inference_defaults.py --n-genes 128 256 512 \
        --value-encoding presence rank
"""

from __future__ import annotations

import argparse

import pandas as pd
import scanpy as sc

import panfoma_sc as pf

#: labelled files of the training corpus: name, label column
SELECTION_SETS = [
    ("pbmc3k_allgenes_celltypes", "cell_type"),
    ("tumour_pdac_moncada_card_1926cells", "cell_type"),
    ("tumour_colorectal_scmetalink_2850cells", "cell_type"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="panfoma-tiny")
    parser.add_argument("--n-genes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--value-encoding", nargs="+", default=["presence"], choices=["presence", "rank"])
    parser.add_argument("--max-cells", type=int, default=400)
    args = parser.parse_args()
    models = {}
    for encoding in args.value_encoding:
        models[encoding] = pf.models.load(args.model)
        checkpoint = models[encoding].checkpoint
        checkpoint.config = checkpoint.config.replace(value_encoding=encoding, gene_selection="top")
    rows = []
    for name, label in SELECTION_SETS:
        adata = pf.datasets.load(name)
        keep = adata.obs[label].notna() & (adata.obs[label].astype(str) != "not_in_tutorial_QC")
        adata = adata[keep].copy()
        sc.pp.filter_cells(adata, min_genes=1)
        adata = sc.pp.sample(adata, n=min(args.max_cells, adata.n_obs), rng=0, copy=True)
        for encoding, model in models.items():
            for n_genes in args.n_genes:
                pf.tl.embed(adata, model, n_genes=n_genes, progress=False)
                scores = pf.bench.knn_transfer(adata.obsm["X_panfoma"], adata.obs[label].to_numpy())
                rows.append({"dataset": name, "value_encoding": encoding, "n_genes": n_genes, **scores})
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows).pivot_table(index=["value_encoding", "n_genes"], values=["accuracy", "macro_f1"])
    print(table.round(3).to_markdown())


if __name__ == "__main__":
    main()
