"""The gene-table ablation of the panfoma-tiny 2.1 model card: kNN accuracy of the gene-mean read-out alone.

Each cell's 256 most expressed genes (the inference tokenization) are averaged over a 128-column gene table and
layer-normalized; kNN label transfer (k=15; folds by protocol/patient where the data have them) scores the result
on the held-out sets (``panfoma_sc.train.EVALUATION_HOLDOUT``) and on the labelled files of the training corpus.
The tables are factored from up to 3,000 cells per training file, as in ``corpus_gene_factors``:

- ``2.0``: all tokens (filler genes of shallow cells too), scikit-learn's randomized SVD, 5 power iterations;
- ``converged``: the same with 20 power iterations;
- ``+ expressed mean``: the read-out averages expressed genes only;
- ``+ expressed table``: the table is factored from expressed genes only (this package's solver);
- ``+ file centring (2.1)``: each training file's mean is removed before factoring;
- ``random``: a Gaussian table (what random weights give).

Usage (repository root; about 5 minutes on 2 CPU cores)::

    PANFOMA_DATA_DIR=../shared/data python docs/model_cards/ablate_gene_tables.py
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse
from sklearn.decomposition import TruncatedSVD

import panfoma_sc as pf
from panfoma_sc.data import Tokenizer
from panfoma_sc.tl._embedding_job import EmbeddingJob
from panfoma_sc.train import PretrainingCorpus, default_excluded_cells, default_pretraining_files
from panfoma_sc.train._gene_factors import idf_weights, loadings_from, token_gene_sets, top_right_singular_vectors

#: dataset, label column, group column for folds (None = stratified folds)
DATASETS = [
    ("pbmc_sorted_9types_mudan_2115cells", "cell_type", None),
    ("lung_celllines_3cl_celseq2_dropseq", "cell_line", "batch"),
    ("pancreas_wang_xin_logexpr", "cell_type", None),
    ("melanoma_icb_tcells_19patients", "celltype", "patient"),
    ("pbmc3k_allgenes_celltypes", "cell_type", None),
    ("tumour_pdac_moncada_card_1926cells", "cell_type", None),
    ("tumour_colorectal_scmetalink_2850cells", "cell_type", None),
]
CELLS_PER_SET = 400
CELLS_PER_FILE = 3000
WIDTH = 128


def corpus_sets(model, tokenizer: Tokenizer) -> tuple[dict[bool, sparse.csr_matrix], np.ndarray]:
    files = default_pretraining_files(pf.datasets.data_dir())
    corpus = PretrainingCorpus(files, model.vocab, batch_size=32, exclude_cells=default_excluded_cells(files))
    bags = {False: [], True: []}
    files = []
    for batch in corpus.sample(CELLS_PER_FILE, seed=0):
        tokens = tokenizer(batch.matrix, batch.gene_ids, batch.cell_keys, seed=0)
        for expressed_only in bags:
            bags[expressed_only].append(token_gene_sets(tokens, len(model.vocab), expressed_only=expressed_only))
        files.append(np.full(batch.matrix.shape[0], batch.file_index))
    corpus.close()
    return {k: sparse.vstack(v).tocsr() for k, v in bags.items()}, np.concatenate(files)


def evaluation_cells(name: str, label: str):
    """The labelled cells of one evaluation set (lung: singlets), ``CELLS_PER_SET`` of them drawn with seed 0."""
    adata = pf.datasets.load(name)
    if name.startswith("lung"):
        adata = adata[adata.obs["demuxlet_cls"] == "SNG"].copy()
    keep = adata.obs[label].notna() & (adata.obs[label].astype(str) != "not_in_tutorial_QC")
    adata = adata[keep].copy()
    sc.pp.filter_cells(adata, min_genes=1)
    return sc.pp.sample(adata, n=min(CELLS_PER_SET, adata.n_obs), rng=0, copy=True)


def evaluation_sets(model, tokenizer: Tokenizer) -> list[dict]:
    sets = []
    for name, label, group in DATASETS:
        adata = evaluation_cells(name, label)
        cells = EmbeddingJob.prepare(adata, model).cell_rows()
        tokens = tokenizer(cells.block(np.arange(adata.n_obs)), cells.gene_ids, cells.cell_keys, seed=0)
        sets.append(
            {
                "name": name,
                "bags": {e: token_gene_sets(tokens, len(model.vocab), expressed_only=e) for e in (False, True)},
                "labels": adata.obs[label].astype(str).to_numpy(),
                "groups": None if group is None else adata.obs[group].astype(str).to_numpy(),
            }
        )
    return sets


def gene_mean(table: np.ndarray, bag: sparse.csr_matrix) -> np.ndarray:
    """Each cell's mean table row over its genes (the rows of ``bag``), layer-normalized."""
    mean = np.asarray(bag @ table) / np.maximum(np.asarray(bag.sum(1)), 1)
    return (mean - mean.mean(1, keepdims=True)) / (mean.std(1, keepdims=True) + 1e-6)


def score(table: np.ndarray, sets: list[dict], *, expressed_only: bool) -> dict[str, float]:
    scores = {}
    for data in sets:
        mean = gene_mean(table, data["bags"][expressed_only])
        result = pf.bench.knn_transfer(mean, data["labels"], groups=data["groups"])
        scores[data["name"]] = round(result["accuracy"], 3)
    return scores


def main() -> None:
    model = pf.models.load("panfoma-tiny")
    tokenizer = Tokenizer(
        n_genes=256, n_chunks=4, n_bins=51, pad_id=model.vocab.pad_id, selection="top", value_encoding="presence"
    )
    bags, files = corpus_sets(model, tokenizer)
    sets = evaluation_sets(model, tokenizer)
    rows = {}
    idf, seen = idf_weights(bags[False])
    weighted = bags[False].multiply(idf[None, :]).tocsr()
    for tag, n_iter in [("2.0", 5), ("converged", 20)]:
        svd = TruncatedSVD(WIDTH, n_iter=n_iter, random_state=0).fit(weighted)
        rows[tag] = score(loadings_from(svd.components_, idf, seen), sets, expressed_only=False)
    rows["+ expressed mean"] = score(loadings_from(svd.components_, idf, seen), sets, expressed_only=True)
    idf, seen = idf_weights(bags[True])
    weighted = bags[True].multiply(idf[None, :]).tocsr()
    for tag, groups in [("+ expressed table", None), ("+ file centring (2.1)", files)]:
        components = top_right_singular_vectors(weighted, WIDTH, groups=groups, seed=0)
        rows[tag] = score(loadings_from(components, idf, seen), sets, expressed_only=True)
    random_table = np.random.default_rng(0).standard_normal((len(model.vocab), WIDTH)).astype(np.float32)
    rows["random"] = score(random_table, sets, expressed_only=True)
    print(pd.DataFrame(rows).T.to_markdown())


if __name__ == "__main__":
    main()
