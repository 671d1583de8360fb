"""Gene tables tried after panfoma-tiny 2.1, scored at the gene-mean level (kNN accuracy and AvgBIO).

Same cells, tokenization and read-out as ``ablate_gene_tables.py`` (the 256 most expressed genes, expressed ones
averaged over the table, layer-normalized; 400 cells per set). For the three labelled training-corpus files
(pbmc3k, PDAC, colorectal) every table is refitted without that file, so it plays an unseen dataset: these
columns judge a table without the held-out labels. Tables, all factored from the training cells' expressed
gene sets with each file's mean removed (as ``corpus_gene_factors``):

- ``factors 128 (2.1)``: the top 128 right singular vectors times IDF, as shipped;
- ``factors 128 / s^a``: each factor divided by its singular value to the power ``a`` (partly or fully
  whitened, so the weaker programs count as much as the strong ones);
- ``factors 128, rows / length^a``: each gene's row divided by its length to the power ``a`` (``a = 1``: unit
  rows), so genes that the top factors explain little weigh as much as program genes in the mean;
- ``factors 256`` / ``factors 384``: more factors (a wider model would hold them);
- ``factors k + random residual``: ``k`` factors plus ``128 - k`` random directions orthogonal to them, scaled
  so they carry 25% of the corpus variance (what the factors leave out, as random weights keep it);
- ``random 128`` / ``random 256``: Gaussian tables, mean of three seeds.

It also regresses each cell's count of 28 cell-cycle genes out of the gene-mean embedding of the lung lines, to
measure how much the cell cycle costs the trained table in clustering there.

Usage (repository root; about 8 minutes on 2 CPU cores)::

    PANFOMA_DATA_DIR=../shared/data python docs/model_cards/explore_gene_tables.py
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from ablate_gene_tables import corpus_sets, evaluation_sets, gene_mean

import panfoma_sc as pf
from panfoma_sc.data import Tokenizer
from panfoma_sc.train import default_pretraining_files
from panfoma_sc.train._gene_factors import idf_weights, loadings_from, top_right_singular_vectors

#: labelled evaluation sets that are training-corpus files: each is left out of the factorization it is scored on
LEAVE_OUT = {
    "pbmc3k_allgenes_celltypes",
    "tumour_pdac_moncada_card_1926cells",
    "tumour_colorectal_scmetalink_2850cells",
}
CELL_CYCLE = [
    *("MKI67", "TOP2A", "CCNB1", "CDK1", "UBE2C", "BIRC5", "TPX2", "CENPF", "NUSAP1", "PRC1", "HMGB2", "TYMS"),
    *("MCM2", "MCM3", "MCM5", "PCNA", "CDC20", "CCNB2", "AURKA", "AURKB", "KIF20A", "CKS2", "CKS1B", "SMC4"),
    *("STMN1", "RRM2", "MCM7", "GINS2"),
]
RESIDUAL_SHARE = 0.25


def fitted_tables(bag, files: np.ndarray) -> dict[str, np.ndarray]:
    """Every factored table of the module docstring, fitted on ``bag`` (cells x vocabulary, 0/1)."""
    idf, seen = idf_weights(bag)
    weighted = bag.multiply(idf[None, :]).tocsr()
    components = top_right_singular_vectors(weighted, 384, groups=files, seed=0)
    centred_scores = weighted @ components.T
    for group in np.unique(files):
        rows = files == group
        centred_scores[rows] -= centred_scores[rows].mean(0)
    singular = np.linalg.norm(centred_scores, axis=0)
    tables = {"factors 128 (2.1)": loadings_from(components[:128], idf, seen)}
    for power in (0.5, 1.0):
        tables[f"factors 128 / s^{power}"] = tables["factors 128 (2.1)"] / singular[:128] ** power
    lengths = np.linalg.norm(tables["factors 128 (2.1)"], axis=1, keepdims=True)
    for power in (0.5, 1.0):
        tables[f"factors 128, rows / length^{power}"] = (
            tables["factors 128 (2.1)"] / np.maximum(lengths, 1e-12) ** power
        )
    for k in (256, 384):
        tables[f"factors {k}"] = loadings_from(components[:k], idf, seen)
    rng = np.random.default_rng(1)
    genes_per_cell = np.maximum(np.asarray(bag.sum(1)), 1)
    sample = rng.choice(bag.shape[0], min(5000, bag.shape[0]), replace=False)
    for k in (64, 96):
        factors = loadings_from(components[:k], idf, seen)
        directions = rng.standard_normal((bag.shape[1], 128 - k))
        directions -= components[:k].T @ (components[:k] @ directions)  # orthogonal to the factors
        residual = loadings_from(directions.T, idf, seen)
        variance = [np.var(np.asarray(bag[sample] @ t) / genes_per_cell[sample], 0).sum() for t in (factors, residual)]
        scale = np.sqrt(RESIDUAL_SHARE / (1 - RESIDUAL_SHARE) * variance[0] / variance[1])
        tables[f"factors {k} + random residual"] = np.hstack([factors, residual * scale])
    return {name: table.astype(np.float32) for name, table in tables.items()}


def random_table(n_genes: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n_genes, width)).astype(np.float32)


def scores(embedding: np.ndarray, data: dict) -> tuple[float, float]:
    knn = pf.bench.knn_transfer(embedding, data["labels"], groups=data["groups"])["accuracy"]
    return knn, pf.bench.bio_conservation(embedding, data["labels"])["avg_bio"]


def main() -> None:
    model = pf.models.load("panfoma-tiny")
    tokenizer = Tokenizer(
        n_genes=256, n_chunks=4, n_bins=51, pad_id=model.vocab.pad_id, selection="top", value_encoding="presence"
    )
    bags, files = corpus_sets(model, tokenizer)
    bag = bags[True]
    names = [p.stem for p in default_pretraining_files(pf.datasets.data_dir())]
    sets = evaluation_sets(model, tokenizer)
    full = fitted_tables(bag, files)
    rows = []
    for data in sets:
        tables = full
        if data["name"] in LEAVE_OUT:
            keep = files != names.index(data["name"])
            tables = fitted_tables(bag[keep], np.unique(files[keep], return_inverse=True)[1])
        query = data["bags"][True]
        for name, table in tables.items():
            rows.append((data["name"], name, *scores(gene_mean(table, query), data)))
        for width in (128, 256):
            draws = [random_table(bag.shape[1], width, seed) for seed in range(3)]
            mean = np.mean([scores(gene_mean(t, query), data) for t in draws], axis=0)
            rows.append((data["name"], f"random {width} (3 seeds)", *mean))
        if data["name"].startswith("lung"):
            cycle_report(full["factors 128 (2.1)"], random_table(bag.shape[1], 128, 0), query, data, model)
    result = pd.DataFrame(rows, columns=["dataset", "table", "knn", "avg_bio"])
    for metric in ("knn", "avg_bio"):
        print(f"\n{metric}\n")
        table = result.pivot(index="table", columns="dataset", values=metric).round(3)
        print(table.loc[list(dict.fromkeys(result["table"]))].to_markdown())


def cycle_report(trained: np.ndarray, random: np.ndarray, query, data: dict, model) -> None:
    """AvgBIO of the lung gene-mean embeddings before and after regressing out the cell-cycle gene count."""
    symbols = list(model.vocab.symbols)
    cycle = np.asarray(query[:, [symbols.index(g) for g in CELL_CYCLE if g in symbols]].sum(1)).ravel()
    design = np.c_[np.ones_like(cycle), cycle]
    for name, table in (("trained 2.1", trained), ("random (seed 0)", random)):
        embedding = gene_mean(table, query)
        residual = embedding - design @ np.linalg.lstsq(design, embedding, rcond=None)[0]
        before, after = scores(embedding, data)[1], scores(residual, data)[1]
        print(f"lung, {name}: AvgBIO {before:.3f}, with the cell-cycle count regressed out {after:.3f}")


if __name__ == "__main__":
    main()
