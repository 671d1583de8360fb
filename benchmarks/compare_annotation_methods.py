"""``pf.tl.annotate``: kNN against the linear probe (``method="logreg"``) on six labelled datasets.

Reference and query come from different batches or patients where the data have them (pancreas Xin 2016 ->
Wang 2016, lung lines CEL-seq2 -> Drop-seq, melanoma T cells of every third patient held out), else from
alternate cells of a random subset (sorted PBMC, PDAC, colorectal tumour; 800 cells). Every query cell is
predicted (``unknown_threshold=0``); the last column is the share of cells the default threshold (0.5) would call
Unknown. Prints a markdown table and writes ``benchmarks/results/annotation-methods.csv``.

Usage (from the repository root)::

    PANFOMA_DATA_DIR=../shared/data OMP_NUM_THREADS=1 python benchmarks/compare_annotation_methods.py
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.metrics import accuracy_score, f1_score

import panfoma_sc as pf


def _subset(adata: AnnData, n: int, rng: np.random.Generator) -> AnnData:
    return adata[np.sort(rng.choice(adata.n_obs, min(n, adata.n_obs), replace=False))].copy()


def _halves(adata: AnnData) -> tuple[AnnData, AnnData]:
    even = np.arange(adata.n_obs) % 2 == 0
    return adata[even].copy(), adata[~even].copy()


def splits(rng: np.random.Generator) -> list[tuple[str, AnnData, AnnData, str]]:
    """``(name, reference, query, label column)`` of each comparison."""
    cases = []
    sorted_pbmc = _subset(pf.datasets.load("pbmc_sorted_9types_mudan_2115cells"), 800, rng)
    cases.append(("sorted PBMC (alternate cells)", *_halves(sorted_pbmc), "cell_type"))
    islets = pf.datasets.load("pancreas_wang_xin_logexpr")
    xin = _subset(islets[islets.obs["batch"] == "Xin2016"], 500, rng)
    cases.append(("pancreas Xin -> Wang", xin, islets[islets.obs["batch"] == "Wang2016"].copy(), "cell_type"))
    lung = pf.datasets.load("lung_celllines_3cl_celseq2_dropseq")
    lung = lung[lung.obs["demuxlet_cls"] != "DBL"]
    celseq, dropseq = (_subset(lung[lung.obs["batch"] == b], 300, rng) for b in ("CEL-seq2", "Drop-seq"))
    cases.append(("lung lines CEL-seq2 -> Drop-seq", celseq, dropseq, "cell_line"))
    melanoma = pf.datasets.load("melanoma_icb_tcells_19patients")
    held_out = melanoma.obs["patient"].isin(sorted(melanoma.obs["patient"].unique())[::3]).to_numpy()
    cases.append(
        ("melanoma T cells (held-out patients)", melanoma[~held_out].copy(), melanoma[held_out].copy(), "celltype")
    )
    pdac = _subset(pf.datasets.load("tumour_pdac_moncada_card_1926cells"), 800, rng)
    cases.append(("PDAC (alternate cells)", *_halves(pdac), "cell_type"))
    colorectal = _subset(pf.datasets.load("tumour_colorectal_scmetalink_2850cells"), 800, rng)
    cases.append(("colorectal tumour (alternate cells)", *_halves(colorectal), "cell_type"))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="panfoma-tiny")
    parser.add_argument("--out", default="benchmarks/results/annotation-methods.csv")
    args = parser.parse_args()
    logging.getLogger("panfoma_sc").setLevel(logging.ERROR)
    model = pf.models.load(args.model)
    rows = []
    for name, reference, query, label in splits(np.random.default_rng(0)):
        truth = query.obs[label].astype(str).to_numpy()
        for method in ("knn", "logreg"):
            result = pf.tl.annotate(
                query,
                reference,
                labels_key=label,
                model=model,
                method=method,
                unknown_threshold=0,
                copy=True,
                progress=False,
            )
            predicted = result.obs["panfoma_label"].astype(str).to_numpy()
            rows.append(
                {
                    "data": name,
                    "reference -> query cells": f"{reference.n_obs} -> {query.n_obs}",
                    "method": method,
                    "accuracy": accuracy_score(truth, predicted),
                    "macro-F1": f1_score(truth, predicted, average="macro"),
                    "Unknown at 0.5": float((result.obs["panfoma_label_confidence"] < 0.5).mean()),
                }
            )
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(table.round(3).to_markdown(index=False))


if __name__ == "__main__":
    main()
