"""Gene-embedding tables learned from the corpus cells' gene sets, before the network is trained.

Two ways: a TF-IDF-weighted truncated SVD of the gene sets (:func:`corpus_gene_factors`), and a contrastive
bag-of-genes encoder (:func:`corpus_gene_contrastive`).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from ..data.tokenizer import TokenBatch, Tokenizer
from ._corpus import PretrainingCorpus

__all__ = ["corpus_gene_contrastive", "corpus_gene_factors"]

#: power iterations of the randomized SVD in :func:`corpus_gene_factors`
SVD_POWER_ITERATIONS = 20


def corpus_gene_factors(
    corpus: PretrainingCorpus,
    tokenizer: Tokenizer,
    *,
    vocab_size: int,
    n_components: int,
    max_cells_per_file: int = 3000,
    center_files: bool = True,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Factor which genes the corpus cells' tokens hold into ``n_components`` gene loadings.

    Each sampled cell becomes a 0/1 vector over the vocabulary (the expressed genes ``tokenizer`` gives it),
    weighted by inverse document frequency. With ``center_files``, each file's mean vector is subtracted, so the
    factors describe how cells differ *within* a dataset (cell types and states) and not how whole files differ
    (annotation pipelines, chemistries, which pseudogenes a reference lists). The top right singular vectors of
    that matrix, times the IDF, are the loadings; the mean loading over a cell's genes is then the cell's
    projection onto the corpus's main gene programs, which transfers to unseen cells the way PCA loadings do
    (see the panfoma-tiny model card).

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
    center_files
        Subtract each file's mean before the factorization.
    seed
        Sampling and SVD seed.

    Returns
    -------
    ``(vocab_size, n_components)`` float32 loadings (rows of genes no sampled cell holds are 0) and the
    ``(vocab_size,)`` bool mask of the genes that some sampled cell holds.
    """
    bag, files = _corpus_bag(corpus, tokenizer, vocab_size, max_cells_per_file, seed)
    idf, seen = idf_weights(bag)
    groups = files if center_files else None
    components = top_right_singular_vectors(bag.multiply(idf[None, :]).tocsr(), n_components, groups=groups, seed=seed)
    return loadings_from(components, idf, seen), seen


def idf_weights(bag: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed inverse document frequency of each column of a cells x genes 0/1 matrix, and which columns occur."""
    held = np.asarray((bag > 0).sum(0)).ravel()
    return (np.log((1.0 + bag.shape[0]) / (1.0 + held)) + 1.0).astype(np.float32), held > 0


def loadings_from(components: np.ndarray, idf: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """``(genes, k)`` gene loadings from ``(k, genes)`` factors of the IDF-weighted matrix (0 for unseen genes)."""
    loadings = components.T.astype(np.float32) * idf[:, None]
    loadings[~seen] = 0.0
    return loadings


def top_right_singular_vectors(
    matrix: sparse.csr_matrix,
    n_components: int,
    *,
    groups: np.ndarray | None = None,
    n_iter: int = SVD_POWER_ITERATIONS,
    oversamples: int = 20,
    seed: int = 0,
) -> np.ndarray:
    """``(n_components, n_columns)`` top right singular vectors of a sparse matrix, by randomized subspace iteration.

    With ``groups`` (an integer label per row), each group's mean row is subtracted first, without making the
    matrix dense. ``n_iter`` power iterations make the last components converge: with scikit-learn's default of
    five, the 128th singular value of the panfoma-tiny corpus came out 5% low and the trailing components were
    mixtures.
    """
    n_rows, n_columns = matrix.shape
    if groups is None:  # no groups: the correction terms below are empty products
        member, means = sparse.csr_matrix((n_rows, 0)), np.zeros((0, n_columns))
    else:
        groups = np.asarray(groups, dtype=np.int64)
        member = _group_indicator(groups)
        means = (member.T @ matrix).toarray() / np.maximum(np.bincount(groups), 1)[:, None]

    def times(block: np.ndarray) -> np.ndarray:  # (centered matrix) @ block
        return matrix @ block - member @ (means @ block)

    def transposed_times(block: np.ndarray) -> np.ndarray:  # (centered matrix).T @ block
        return matrix.T @ block - means.T @ (member.T @ block)

    rng = np.random.default_rng(seed)
    width = min(n_components + oversamples, n_rows, n_columns)
    basis = np.linalg.qr(times(rng.standard_normal((n_columns, width))))[0]
    for _ in range(n_iter):
        basis = np.linalg.qr(times(np.linalg.qr(transposed_times(basis))[0]))[0]
    _, _, right = np.linalg.svd(transposed_times(basis).T, full_matrices=False)
    return right[:n_components]


def _group_indicator(groups: np.ndarray) -> sparse.csr_matrix:
    """Rows x groups, 1 where the row is in the group."""
    rows = np.arange(len(groups))
    return sparse.csr_matrix((np.ones(len(groups)), (rows, groups)), shape=(len(groups), groups.max() + 1))


def _gene_sets(matrix, gene_ids: np.ndarray, cell_keys: np.ndarray, tokenizer: Tokenizer, vocab_size: int):
    """Cells x vocabulary, 1 at the expressed genes among the tokens ``tokenizer`` gives each cell."""
    return token_gene_sets(tokenizer(matrix, gene_ids, cell_keys, seed=0), vocab_size)


def token_gene_sets(tokens: TokenBatch, vocab_size: int, *, expressed_only: bool = True) -> sparse.csr_matrix:
    """Cells x vocabulary, 1 at each cell's tokens.

    With ``expressed_only``, not at the unexpressed genes that fill the tokens of a cell with fewer expressed genes:
    they are drawn at random.
    """
    n_cells = tokens.gene_ids.shape[0]
    ids = tokens.gene_ids.reshape(n_cells, -1)
    real = ~tokens.padding_mask.reshape(n_cells, -1)
    if expressed_only:
        real &= tokens.value_bins.reshape(n_cells, -1) > 0
    rows = np.nonzero(real)[0]
    return sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, ids[real])), shape=(n_cells, vocab_size))


def corpus_gene_contrastive(
    corpus: PretrainingCorpus,
    tokenizer: Tokenizer,
    *,
    vocab_size: int,
    n_components: int,
    max_cells_per_file: int = 3000,
    steps: int = 8000,
    batch_size: int = 512,
    temperature: float = 0.1,
    learning_rate: float = 1e-2,
    seed: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Gene vectors whose mean over a cell's genes identifies the cell: a contrastive bag-of-genes encoder.

    Each sampled cell's gene set (the genes ``tokenizer`` gives it) is split at random into two halves, each
    half is encoded as the layer-normalized mean of its genes' vectors, and InfoNCE asks each half to find its
    other half among the ``batch_size`` cells of the step. The table starts random, so genes that no corpus
    program explains keep a direction of their own (as in a random projection, which separates cells of any
    kind), while genes that co-occur in corpus cells are pulled together (which removes sampling noise, as a
    PCA does). The SVD start (:func:`corpus_gene_factors`) keeps only the corpus's main programs and loses
    cells that differ along other directions (the panfoma-tiny model card measures both).

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
    steps
        Optimizer steps (Adam).
    batch_size
        Cells per step; each is contrasted against the others.
    temperature
        InfoNCE temperature on cosine similarities.
    learning_rate
        Adam learning rate (the table starts with unit-variance entries).
    seed
        Sampling, split and initialization seed.
    progress
        Show a progress bar with the loss.

    Returns
    -------
    The ``(vocab_size, n_components)`` float32 table (rows of genes no sampled cell holds are 0), the
    ``(vocab_size,)`` bool mask of the genes that some sampled cell holds, and the loss of every step.
    """
    import torch
    import torch.nn.functional as F

    from .._progress import progress_bar
    from ._pretrain import info_nce  # imported here: _pretrain imports this module

    bag, _ = _corpus_bag(corpus, tokenizer, vocab_size, max_cells_per_file, seed)
    bag = bag[np.diff(bag.indptr) >= 2]  # a cell needs a gene in each half
    n_cells = bag.shape[0]
    batch_size = min(batch_size, n_cells)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(vocab_size, n_components, generator=generator).requires_grad_()
    optimizer = torch.optim.Adam([table], lr=learning_rate)
    losses = []
    bar = progress_bar(range(steps), enabled=progress, desc="gene table (contrastive)")
    for _ in bar:
        rows = np.sort(rng.choice(n_cells, batch_size, replace=False))
        first, second = _random_halves(bag, rows, rng)
        views = [
            F.layer_norm(F.embedding_bag(ids, table, offsets, mode="mean"), (n_components,))
            for ids, offsets in (first, second)
        ]
        loss = info_nce(views[0], views[1], temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    seen = np.asarray((bag > 0).sum(0)).ravel() > 0
    result = table.detach().numpy().astype(np.float32)
    result[~seen] = 0.0
    return result, seen, losses


def _random_halves(bag: sparse.csr_matrix, rows: np.ndarray, rng: np.random.Generator):
    """Split each row's genes at random into two halves: (gene ids, offsets) per half, for ``embedding_bag``."""
    import torch

    lengths = bag.indptr[rows + 1] - bag.indptr[rows]
    genes = np.concatenate([bag.indices[bag.indptr[r] : bag.indptr[r + 1]] for r in rows])
    owner = np.repeat(np.arange(len(rows)), lengths)
    order = np.lexsort((rng.random(len(genes)), owner))  # shuffled within each row, rows kept in order
    genes = genes[order]
    position = np.arange(len(genes)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    in_first = position < np.repeat(lengths // 2, lengths)
    halves = []
    for mask in (in_first, ~in_first):
        counts = np.bincount(owner[mask], minlength=len(rows))
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        halves.append((torch.from_numpy(genes[mask].astype(np.int64)), torch.from_numpy(offsets.astype(np.int64))))
    return halves


def _corpus_bag(
    corpus: PretrainingCorpus, tokenizer: Tokenizer, vocab_size: int, max_cells_per_file: int, seed: int
) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Sampled corpus cells x vocabulary (1 where ``tokenizer`` gives the cell that gene, expressed), row files."""
    bags, files = [], []
    for batch in corpus.sample(max_cells_per_file, seed=seed):
        bags.append(_gene_sets(batch.matrix, batch.gene_ids, batch.cell_keys, tokenizer, vocab_size))
        files.append(np.full(batch.matrix.shape[0], batch.file_index))
    return sparse.vstack(bags).tocsr(), np.concatenate(files)
