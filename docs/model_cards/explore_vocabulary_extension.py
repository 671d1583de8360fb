"""Would a vocabulary extended beyond the training corpus help? Scored at the gene-mean level.

The shipped vocabulary holds the genes expressed in at least 20 training cells (21,301 in 2.1, when this was
run). Data annotated with newer symbols (the lung lines: SARS1, ADSS2, BMAL2...) or expressing genes the PBMC-
and tumour-heavy corpus never does (ROS1, CYP24A1 in the lung lines; ARX, CALB1 in the islets) lose those
genes. Here the vocabulary is extended by every GENCODE v44 symbol it lacks, each with a fixed random row at the
scale of the shipped table, and the gene-mean read-out of the cells' 256 most expressed genes (presence tokens,
as ``ablate_gene_tables.py``; 400 cells per set) is scored with the shipped table and with random tables (three
seeds) of the same size.

Usage (repository root; about 2 minutes on 2 CPU cores)::

    PANFOMA_DATA_DIR=../shared/data python docs/model_cards/explore_vocabulary_extension.py
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from ablate_gene_tables import DATASETS, evaluation_cells, gene_mean
from explore_gene_tables import scores

import panfoma_sc as pf
from panfoma_sc.data import GeneVocabulary, Tokenizer, cell_keys_from_names
from panfoma_sc.data.vocab import normalize_gene_name
from panfoma_sc.train._gene_factors import token_gene_sets


def extended(vocab: GeneVocabulary, table: np.ndarray) -> tuple[GeneVocabulary, np.ndarray]:
    """``vocab`` plus every GENCODE v44 symbol it lacks, and ``table`` plus a seeded random row for each."""
    gencode = pd.read_csv(pf.datasets.data_dir() / "genes" / "GENCODEv44_gene_id_to_name.csv", header=None)
    known = {normalize_gene_name(s) for s in vocab.symbols}
    extra = list(dict.fromkeys(normalize_gene_name(s) for s in gencode[1].dropna().astype(str)))
    extra = [s for s in extra if s not in known]
    scale = table[-len(vocab.symbols) :].std()
    rows = np.random.default_rng(0).standard_normal((len(extra), table.shape[1])).astype(np.float32) * scale
    return GeneVocabulary.from_genes([*vocab.symbols, *extra]), np.vstack([table, rows])


def bag_of_top_genes(adata, vocab: GeneVocabulary, tokenizer: Tokenizer):
    ids = vocab.lookup(adata.var_names)
    columns = np.flatnonzero(ids >= 0)
    columns = columns[np.sort(np.unique(ids[columns], return_index=True)[1])]  # first column of each gene
    tokens = tokenizer(adata.X[:, columns], ids[columns], cell_keys_from_names(adata.obs_names), seed=0)
    return token_gene_sets(tokens, len(vocab), expressed_only=True), columns.size


def main() -> None:
    model = pf.models.load("panfoma-tiny")
    table = model.network("cpu").embedding.gene.weight.detach().float().numpy()
    choices = {"2.1 vocabulary": (model.vocab, table), "extended": extended(model.vocab, table)}
    print(f"vocabulary {len(model.vocab)} tokens, extended {len(choices['extended'][0])}")
    tokenizer = Tokenizer(
        n_genes=256, n_chunks=4, n_bins=51, pad_id=model.vocab.pad_id, selection="top", value_encoding="presence"
    )
    rows = []
    for name, label, group in DATASETS:
        adata = evaluation_cells(name, label)
        data = {
            "labels": adata.obs[label].astype(str).to_numpy(),
            "groups": None if group is None else adata.obs[group].astype(str).to_numpy(),
        }
        for choice, (vocab, gene_table) in choices.items():
            bag, n_matched = bag_of_top_genes(adata, vocab, tokenizer)
            trained = scores(gene_mean(gene_table, bag), data)
            draws = [
                np.random.default_rng(seed).standard_normal(gene_table.shape).astype(np.float32) for seed in range(3)
            ]
            random = np.mean([scores(gene_mean(t, bag), data) for t in draws], axis=0)
            rows.append((name, choice, n_matched, *trained, *random))
    columns = ["dataset", "vocabulary", "genes matched", "knn", "avg_bio", "random knn", "random avg_bio"]
    print(pd.DataFrame(rows, columns=columns).round(3).to_markdown(index=False))


if __name__ == "__main__":
    main()
