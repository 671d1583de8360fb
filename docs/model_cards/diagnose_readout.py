"""Where does a checkpoint lose the cell identity its tokens carry? kNN accuracy of several read-outs.

For each held-out labelled dataset (``panfoma_sc.train.EVALUATION_HOLDOUT``), the cells are tokenized exactly as
``pf.tl.embed`` does (the model's inference defaults) and scored by kNN label transfer (k=15, folds by batch/donor
where the data have one) on:

- ``bag of top genes (SVD 50)``: each cell's selected genes as a 0/1 vector over the vocabulary, truncated SVD
  to 50 dimensions. No network: what the tokens themselves carry.
- ``<weights> mean token embedding``: the mean of the cell's gene-embedding rows (the network's first step).
  Both use the genes the model's read-out averages: every token, or the expressed ones (``decoder+expressed``).
- ``<weights> h_global``: the encoder's chunk summaries (before the Mamba decoder).
- ``<weights> cell embedding``: what ``pf.tl.embed`` returns.

``<weights>`` is the checkpoint and the same network with random weights. Usage (repository root)::

    PANFOMA_DATA_DIR=../shared/data python docs/model_cards/diagnose_readout.py --model panfoma-tiny
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import scanpy as sc
import torch
from sklearn.decomposition import TruncatedSVD

import panfoma_sc as pf
from panfoma_sc.models._pretrained import tokens_to_torch
from panfoma_sc.nn import PanFoMa
from panfoma_sc.tl._embedding_job import EmbeddingJob
from panfoma_sc.train._gene_factors import token_gene_sets

#: dataset, label column, group column for folds (None = stratified folds)
DATASETS = [
    ("pbmc_sorted_9types_mudan_2115cells", "cell_type", None),
    ("lung_celllines_3cl_celseq2_dropseq", "cell_line", "batch"),
    ("pancreas_wang_xin_logexpr", "cell_type", None),
    ("melanoma_icb_tcells_19patients", "celltype", "patient"),
]


def _load(name: str, label: str, max_cells: int):
    adata = pf.datasets.load(name)
    if name.startswith("lung"):
        adata = adata[adata.obs["demuxlet_cls"] == "SNG"].copy()
    sc.pp.filter_cells(adata, min_genes=1)
    adata = adata[adata.obs[label].notna()].copy()
    return sc.pp.sample(adata, n=min(max_cells, adata.n_obs), rng=0, copy=True)


def _read_tokens(config, bins: torch.Tensor, padding: torch.Tensor) -> np.ndarray:
    """``(cells, tokens)`` bool: the tokens the gene-mean read-out averages (the expressed ones for v2.1)."""
    keep = ~padding
    if config.cell_readout == "decoder+expressed":
        keep &= bins != 0
    return keep.reshape(keep.shape[0], -1).numpy()


def _readouts(network: PanFoMa, gene_ids, bins, padding) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        output = network(gene_ids, bins, padding)
        flat_ids = gene_ids.reshape(gene_ids.shape[0], -1)
        present = torch.from_numpy(_read_tokens(network.config, bins, padding)).unsqueeze(-1).float()
        tokens = network.embedding.gene(flat_ids)
        return {
            "mean token embedding": ((tokens * present).sum(1) / present.sum(1)).numpy(),
            "h_global": output.h_global.reshape(output.h_global.shape[0], -1).numpy(),
            "cell embedding": output.cell_embedding.numpy(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="panfoma-tiny")
    parser.add_argument("--max-cells", type=int, default=300)
    parser.add_argument("--out", help="write the table to this CSV")
    args = parser.parse_args()
    trained = pf.models.load(args.model)
    torch.manual_seed(0)
    networks = {"trained": trained.network("cpu"), "random": PanFoMa(trained.config).eval()}
    rows = []
    for name, label, group in DATASETS:
        adata = _load(name, label, args.max_cells)
        cells = EmbeddingJob.prepare(adata, trained).cell_rows()
        every = np.arange(adata.n_obs)
        tokens = trained.tokenizer()(cells.block(every), cells.gene_ids, cells.cell_keys, seed=0)
        gene_ids, bins, padding = tokens_to_torch(tokens, "cpu")
        expressed_only = trained.config.cell_readout == "decoder+expressed"
        bag = token_gene_sets(tokens, len(trained.vocab), expressed_only=expressed_only)
        readouts = {"bag of top genes (SVD 50)": TruncatedSVD(50, random_state=0).fit_transform(bag)}
        for weights, network in networks.items():
            readouts |= {f"{weights} {k}": v for k, v in _readouts(network, gene_ids, bins, padding).items()}
        labels = adata.obs[label].to_numpy()
        groups = None if group is None else adata.obs[group].to_numpy()
        for readout, embedding in readouts.items():
            accuracy = pf.bench.knn_transfer(embedding, labels, groups=groups)["accuracy"]
            rows.append({"dataset": name, "n_cells": adata.n_obs, "readout": readout, "knn_accuracy": accuracy})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows).pivot(index="readout", columns="dataset", values="knn_accuracy").round(3)
    print(table.to_markdown())
    if args.out:
        table.to_csv(args.out)


if __name__ == "__main__":
    main()
