"""Gene-embedding start from corpus co-expression: TF-IDF-weighted truncated SVD of the cells' gene sets."""

from __future__ import annotations

import numpy as np
from scipy import sparse
from sklearn.decomposition import TruncatedSVD

from ..data.tokenizer import Tokenizer
from ._corpus import PretrainingCorpus

__all__ = ["corpus_gene_factors"]


def corpus_gene_factors(
    corpus: PretrainingCorpus,
    tokenizer: Tokenizer,
    *,
    vocab_size: int,
    n_components: int,
    max_cells_per_file: int = 3000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Factor which genes the corpus cells' tokens hold into ``n_components`` gene loadings.

    Each sampled cell becomes a 0/1 vector over the vocabulary (the genes ``tokenizer`` gives it), weighted by
    inverse document frequency; the right singular vectors of that matrix, times the IDF, are the loadings. The
    mean loading over a cell's genes is then the cell's projection onto the corpus's main gene programs, which
    transfers to unseen cells the way PCA loadings do (see the panfoma-tiny model card).

    Parameters
    ----------
    corpus
        The pretraining corpus (only its training files are read).
    tokenizer
        Tokenizer that picks each cell's genes (use the inference one: top genes).
    vocab_size
        Rows of the result.
    n_components
        Columns of the result (the model width).
    max_cells_per_file
        Random cells sampled per file (seeded).
    seed
        Sampling and SVD seed.

    Returns
    -------
    ``(vocab_size, n_components)`` float32 loadings (rows of genes no sampled cell holds are 0) and the
    ``(vocab_size,)`` bool mask of the genes that some sampled cell holds.
    """
    bags = [
        _gene_sets(batch.matrix, batch.gene_ids, batch.cell_keys, tokenizer, vocab_size)
        for batch in corpus.sample(max_cells_per_file, seed=seed)
    ]
    bag = sparse.vstack(bags).tocsr()
    held = np.asarray((bag > 0).sum(0)).ravel()
    idf = (np.log((1.0 + bag.shape[0]) / (1.0 + held)) + 1.0).astype(np.float32)
    svd = TruncatedSVD(n_components, random_state=seed).fit(bag.multiply(idf[None, :]).tocsr())
    loadings = svd.components_.T.astype(np.float32) * idf[:, None]
    seen = held > 0
    loadings[~seen] = 0.0
    return loadings, seen


def _gene_sets(matrix, gene_ids: np.ndarray, cell_keys: np.ndarray, tokenizer: Tokenizer, vocab_size: int):
    tokens = tokenizer(matrix, gene_ids, cell_keys, seed=0)
    n_cells = tokens.gene_ids.shape[0]
    ids = tokens.gene_ids.reshape(n_cells, -1)
    real = ~tokens.padding_mask.reshape(n_cells, -1)
    rows = np.nonzero(real)[0]
    return sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, ids[real])), shape=(n_cells, vocab_size))
