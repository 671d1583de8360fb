"""Pretraining corpus: many backed h5ad files streamed batch by batch, sharded across ranks."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from .._arguments import is_integer
from ..data.rows import ColumnMajorBackedError, check_row_readable, expression_matrix, iter_row_blocks
from ..data.tokenizer import cell_keys_from_names
from ..data.vocab import (
    DEFAULT_MIN_CELLS,
    ENSEMBL_ID_SEPARATOR,
    GeneVocabulary,
    dominant_ensembl_species,
    is_ensembl_id,
    is_spike_in,
    normalize_gene_name,
)
from ..pp import ExpressionReport, check_expression
from ..pp._genes import match_names
from ._held_out_cells import ExcludedCells, check_excluded_cells, training_rows

logger = logging.getLogger(__name__)

__all__ = [
    "EVALUATION_HOLDOUT",
    "EVALUATION_HOLDOUT_CELLS",
    "CorpusBatch",
    "PretrainingCorpus",
    "build_vocabulary",
    "check_training_files",
    "default_excluded_cells",
    "default_pretraining_files",
    "ensembl_ids_by_symbol",
]

#: Files of the shared data folder kept out of pretraining, with the reason. Their cells are the
#: evaluation's query/test sets (labelled data), duplicates, or not human.
EVALUATION_HOLDOUT: dict[str, str] = {
    "pbmc_sorted_9types_mudan_2115cells": "held-out evaluation: FACS-sorted PBMC labels (annotation query)",
    "pancreas_3batches_beta_ductal": "held-out evaluation: pancreas cell types across three batches",
    "melanoma_icb_tcells_19patients": "held-out evaluation: T-cell states across patients",
    "tme_hnscc_melanoma_chetah": "held-out evaluation: tumour micro-environment cell types",
    "tumour_thyroid_atc2_numbat_173cells": "held-out evaluation: malignant vs normal (pan-cancer test patient)",
    "tumour_neuroblastoma_ngp_cellline_83cells": "held-out evaluation: pan-cancer test cell line",
    "pbmc3k_celltypes_hvg2000": "same cells as pbmc3k_allgenes_celltypes (duplicate)",
    "mouse_esc_3batches_ensembl": "mouse data, Ensembl IDs only",
}


#: Files of the shared data folder whose cells are split: the cells named here (``{obs column: values}``) are the
#: evaluation's query set and are kept out of pretraining; the file's other cells (the reference batch, whose labels
#: pretraining never reads) are pretraining data. A held-out batch of a dataset whose other batch the corpus holds
#: is how the model card measures transfer to a new protocol or study of cells like those it has seen.
EVALUATION_HOLDOUT_CELLS: dict[str, dict[str, list[str]]] = {
    # held-out evaluation: the three lung lines measured with Drop-seq (query); CEL-seq2 cells are pretraining data
    "lung_celllines_3cl_celseq2_dropseq": {"batch": ["Drop-seq"]},
    # held-out evaluation: the Wang 2016 islets (query, 219 genes measured); Xin 2016 cells are pretraining data
    "pancreas_wang_xin_logexpr": {"batch": ["Wang2016"]},
}


def default_pretraining_files(data_dir: str | Path) -> list[Path]:
    """The ``.h5ad`` files of ``data_dir`` that are not in :data:`EVALUATION_HOLDOUT`.

    Some of them hold evaluation cells too: pass :func:`default_excluded_cells` of them as ``exclude_cells``.
    """
    return sorted(p for p in Path(data_dir).glob("*.h5ad") if p.stem not in EVALUATION_HOLDOUT)


def default_excluded_cells(files: Sequence[str | Path]) -> dict[str, dict[str, list[str]]]:
    """The :data:`EVALUATION_HOLDOUT_CELLS` of those ``files`` that are shared-data files, as ``exclude_cells``."""
    stems = {Path(f).stem for f in files}
    return {stem: dict(cells) for stem, cells in EVALUATION_HOLDOUT_CELLS.items() if stem in stems}


#: cells of each file that :func:`check_training_files` reads (all cells of a smaller file)
CHECK_CELLS_PER_FILE = 2000
#: the cells read of a larger file lie in this many evenly spaced runs of rows, the first and the last included
_CHECK_RUNS = 8


def check_training_files(
    files: Sequence[str | Path], *, max_cells_per_file: int = CHECK_CELLS_PER_FILE
) -> list[ExpressionReport]:
    """Refuse training files whose ``X`` cannot be tokenized, with the checks of :func:`panfoma_sc.pp.check_expression`.

    These are the checks ``pf.tl.embed`` runs: no NaN or infinite values, no negative values (scaled data), no
    cells without an expressed gene. Each file is read backed and only ``max_cells_per_file`` of its cells are
    checked (all of a smaller file; of a larger one, evenly spaced runs of rows from its first row to its last),
    so memory stays bounded and a large corpus is checked in seconds.

    Parameters
    ----------
    files
        Training ``.h5ad`` files.
    max_cells_per_file
        Cells checked per file.

    Returns
    -------
    What each file's checked cells hold, in the order of ``files``.

    Raises
    ------
    ValueError
        A file fails a check; the message names the file, what is wrong and how to fix it.
    """
    reports = []
    for file in files:
        adata = ad.read_h5ad(file, backed="r")
        try:
            reports.append(check_expression(_cells_to_check(adata, max_cells_per_file)))
        except ColumnMajorBackedError:  # raised again naming the file, with the fix that applies to a file
            check_row_readable(adata.X, f"X of training file {str(file)!r}", file_only=True)
        except ValueError as err:
            msg = (
                f"Training file {str(file)!r}: {err} Pretraining reads X of every file: write the file again with "
                "raw counts (or log1p-normalized values) in X, e.g. adata.X = adata.layers['counts'], or leave it out."
            )
            raise ValueError(msg) from err
        finally:
            adata.file.close()
    return reports


#: warn about a training file that shares less than this share of its genes (or of the other file's, when that
#: holds fewer) with every other training file
MIN_SHARED_GENE_FRACTION = 0.5


def check_vocabulary_genes(files: Sequence[str | Path], vocab: GeneVocabulary) -> None:
    """Refuse training files none of whose genes is in ``vocab``: none of their cells could be trained on.

    A file that shares less than half of its vocabulary genes with every other file (of the other file's genes,
    where that holds fewer: a gene panel shares all of its genes with a whole transcriptome) is warned about:
    another species, other gene names, other genes. Its cells are read through tokens the other files' cells never
    use, so the model cannot learn how they relate. Only each file's ``var_names`` are read.

    Parameters
    ----------
    files
        Training ``.h5ad`` files.
    vocab
        The run's vocabulary.

    Raises
    ------
    ValueError
        A file has no gene of ``vocab``; the message names the file and says how to fix it.
    """
    genes_of_files = []
    for file in files:
        adata = ad.read_h5ad(file, backed="r")
        try:
            names = pd.Index(adata.var_names).astype(str)
        finally:
            adata.file.close()
        _require_vocabulary_genes(file, names, vocab)
        ids = vocab.lookup(names)
        genes_of_files.append(np.unique(ids[ids >= 0]))
    _warn_if_files_share_few_genes(files, genes_of_files)


def _warn_if_files_share_few_genes(files: Sequence[str | Path], genes_of_files: Sequence[np.ndarray]) -> None:
    """Log a warning for each file sharing little of its genes with any other (:data:`MIN_SHARED_GENE_FRACTION`)."""
    if len(files) < 2:
        return
    for i, (file, genes) in enumerate(zip(files, genes_of_files, strict=True)):
        overlaps = [
            (np.isin(genes, other).sum(), min(genes.size, other.size))
            for j, other in enumerate(genes_of_files)
            if j != i
        ]
        n_shared, of = max(overlaps, key=lambda shared_of: shared_of[0] / max(shared_of[1], 1))
        if n_shared < MIN_SHARED_GENE_FRACTION * of:
            logger.warning(
                "Training file %r shares at most %d of %d vocabulary genes (%.0f%%) with any other training file: its "
                "cells are read through genes the others' cells never show, so the model cannot learn how they "
                "relate to the rest. Check that its var_names name the same kind of genes (symbols of the same "
                "species, mapped to orthologs first for another species), or train on it separately.",
                str(file),
                n_shared,
                of,
                100 * n_shared / max(of, 1),
            )


def _require_vocabulary_genes(file: str | Path, names: pd.Index, vocab: GeneVocabulary) -> None:
    """A ``ValueError`` naming ``file`` when none of its gene ``names`` is in ``vocab``."""
    if len(names) and (vocab.lookup(names) >= 0).any():
        return
    fix = (
        "Its genes are human Ensembl IDs and the vocabulary records none: build it with a gene table "
        "(build_vocabulary(..., gene_table='GENCODE.csv'), --gene-table on the command line; a headerless "
        "ensembl_id,symbol CSV) so that they match, or write the file again with gene symbols as var_names."
        if dominant_ensembl_species(names) == "" and vocab.ensembl_ids is None
        else "Remove the file from the corpus (the files passed, or the --data-dir folder), or map its genes: write "
        "it again with gene symbols of the vocabulary's species as var_names (another species' genes mapped to "
        "their orthologs first)."
    )
    msg = (
        f"Training file {str(file)!r}: none of its {len(names)} genes (var_names, e.g. {names[:3].tolist()}) is "
        f"in the run's vocabulary, so none of its cells can be trained on. {fix}"
    )
    raise ValueError(msg)


def _cells_to_check(adata: ad.AnnData, max_cells: int) -> ad.AnnData:
    """Up to ``max_cells`` cells of backed ``adata`` in memory (sparse), read as contiguous runs of rows."""
    matrix = expression_matrix(adata)
    n_cells = adata.n_obs
    if n_cells <= max_cells:
        rows = np.arange(n_cells)
    else:
        width = max(1, max_cells // _CHECK_RUNS)
        starts = np.linspace(0, n_cells - width, _CHECK_RUNS).round().astype(np.int64)
        rows = np.unique((starts[:, None] + np.arange(width)).ravel())
    blocks = [
        block
        for run in np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
        for _, block in iter_row_blocks(matrix, 256, rows=run)
    ]
    values = sparse.vstack(blocks, format="csr") if blocks else sparse.csr_matrix((0, adata.n_vars))
    obs = pd.DataFrame(index=adata.obs_names[rows])
    return ad.AnnData(X=values, obs=obs, var=pd.DataFrame(index=pd.RangeIndex(adata.n_vars).astype(str)))


def build_vocabulary(
    files: Sequence[str | Path],
    *,
    min_cells: int = DEFAULT_MIN_CELLS,
    gene_table: str | Path | None = None,
    exclude_cells: ExcludedCells | None = None,
    block_size: int = 4096,
) -> GeneVocabulary:
    """Vocabulary of the genes expressed in at least ``min_cells`` cells of the corpus.

    Genes are read from ``var_names`` as symbols: Ensembl IDs and ERCC spike-in controls (``ERCC-00002``, not
    genes) are left out. The files are checked first (:func:`check_training_files`).

    Parameters
    ----------
    files
        Training ``.h5ad`` files (gene symbols as ``var_names``).
    min_cells
        Keep genes seen expressed in at least this many cells overall.
    gene_table
        Optional headerless CSV ``ensembl_id,symbol`` (e.g. GENCODE) to record each symbol's Ensembl IDs (all
        of them, where a symbol has several), so data indexed by Ensembl IDs match too.
    exclude_cells
        ``{file name without .h5ad: {obs column: [values]}}``: cells not counted (those pretraining leaves out,
        e.g. :func:`default_excluded_cells`).
    block_size
        Rows read at a time.

    Returns
    -------
    The vocabulary, genes sorted by name (ignoring case).

    Raises
    ------
    ValueError
        A file fails :func:`check_training_files`, or no gene is left (no gene symbols among the names, no gene
        expressed, or none in ``min_cells`` cells), or a file has none of the vocabulary's genes; the message
        says which.
    """
    check_training_files(files)
    exclude_cells = _check_excluded_files(exclude_cells or {}, files)
    cells_expressing: Counter[str] = Counter()
    spelling: dict[str, str] = {}
    spike_ins: set[str] = set()
    n_names, n_symbols, n_cells = 0, 0, 0
    names_of_files: list[pd.Index] = []
    for file in files:
        adata = ad.read_h5ad(file, backed="r")
        names = pd.Index(adata.var_names).astype(str)
        names_of_files.append(names)
        counts = np.zeros(adata.n_vars, dtype=np.int64)
        rows = training_rows(adata, exclude_cells.get(Path(file).stem), file=file)
        for _, block in iter_row_blocks(adata.X, block_size, rows=rows):
            block.data = (block.data > 0).astype(np.float64)
            counts += np.asarray(block.sum(axis=0)).ravel().astype(np.int64)
        for name, count in zip(names, counts, strict=True):
            if is_spike_in(name):
                spike_ins.add(normalize_gene_name(name))
            elif not is_ensembl_id(name):
                n_symbols += 1
                if count:
                    key = normalize_gene_name(name)
                    cells_expressing[key] += int(count)
                    spelling.setdefault(key, name)
        n_names += len(names)
        n_cells += rows.size
        adata.file.close()
    keys = sorted(k for k, n in cells_expressing.items() if n >= min_cells)
    if not keys:
        if n_symbols == 0:
            msg = (
                f"No gene symbols among the {n_names} var_names of the files, so the vocabulary would be empty: "
                "it is built from gene symbols (Ensembl IDs and ERCC spike-ins are left out). Write the files "
                "with gene symbols as var_names, e.g. mapped from Ensembl IDs with a GENCODE table."
            )
        elif not cells_expressing:
            msg = (
                f"None of the {n_symbols} genes is expressed (a value > 0) in any of the {n_cells} cells of the "
                "files, so the vocabulary would be empty. Pass files with raw counts or log1p-normalized values in X."
            )
        else:
            widest = max(cells_expressing, key=cells_expressing.__getitem__)
            msg = (
                f"No gene is expressed in min_cells={min_cells} cells or more, so the vocabulary would be empty: "
                f"the most widely expressed gene, {spelling[widest]}, is in {cells_expressing[widest]} of the "
                f"{n_cells} cells. Lower min_cells (--min-cells) to at most {cells_expressing[widest]}, or train on "
                "more cells."
            )
        raise ValueError(msg)
    symbols = [spelling[k] for k in keys]
    ensembl_ids = None
    if gene_table is not None:
        ids_of = ensembl_ids_by_symbol(gene_table)
        ensembl_ids = [ids_of.get(k, "") for k in keys]
    if spike_ins:
        logger.info("Vocabulary: %d ERCC spike-in controls left out (not genes).", len(spike_ins))
    vocab = GeneVocabulary(symbols, ensembl_ids)
    for file, names in zip(files, names_of_files, strict=True):  # a file the vocabulary leaves out cannot train
        _require_vocabulary_genes(file, names, vocab)
    logger.info("Vocabulary: %d genes expressed in >= %d cells.", len(symbols), min_cells)
    return vocab


def ensembl_ids_by_symbol(gene_table: str | Path) -> dict[str, str]:
    """Every Ensembl ID of each symbol in a headerless ``ensembl_id,symbol`` CSV (e.g. GENCODE's).

    Keys are normalized symbols (:func:`~panfoma_sc.data.vocab.normalize_gene_name`); values the symbol's IDs
    (version suffixes removed) in the table's order, joined by ``;`` as :class:`GeneVocabulary` stores them.
    """
    table = pd.read_csv(gene_table, header=None, names=["ensembl_id", "symbol"], dtype=str).dropna()
    table["key"] = table["symbol"].map(normalize_gene_name)
    table["ensembl_id"] = table["ensembl_id"].map(normalize_gene_name)
    table = table.drop_duplicates(["key", "ensembl_id"])
    return table.groupby("key", sort=False)["ensembl_id"].agg(ENSEMBL_ID_SEPARATOR.join).to_dict()


@dataclass
class CorpusBatch:
    """A batch of cells from one file, with the gene ids of its columns."""

    file_index: int
    matrix: object  # CSR rows, columns = gene_ids
    gene_ids: np.ndarray
    cell_keys: np.ndarray


class PretrainingCorpus:
    """Streams shuffled batches of cells from backed ``.h5ad`` files.

    Every epoch's batch list is a pure function of ``(seed, epoch)``, and rank ``r`` of ``world`` takes every
    ``world``-th batch (the same number on every rank). A run can therefore resume at any ``(epoch, batch)``
    position exactly.

    With ``block_rows=1`` (the default) each file's rows are shuffled and cut into batches, and the batches of all
    files are shuffled together; consecutive batches of one file are read together, up to ``cells_per_read`` cells
    at a time, as one read of the backed file (a boolean row mask, read run by run).

    With ``block_rows > 1`` (block shuffling) each file's rows are cut into blocks of that many consecutive rows;
    the blocks are shuffled and dealt into reads of ``cells_per_read`` cells, and each read's cells are shuffled
    and cut into batches. The reads of all files are shuffled together and taken ``interleave`` at a time, their
    batches dealt in turn, so that consecutive steps draw on ``interleave`` reads (often of as many files). Each
    read is one read of the file (this rank's cells of it) and at most ``interleave`` reads are held in memory.
    Batches stay nearly as mixed (a read draws on ``cells_per_read / block_rows`` blocks) while the file is read in
    runs of rows: on a gzip-compressed file, where each random row decompresses its own chunk, about 8x faster
    (Performance page, "Data loaders"). The batches are the same as read one by one.

    Parameters
    ----------
    files
        ``.h5ad`` files with raw counts (or any nonnegative per-cell scale) in ``X``.
    vocab
        Vocabulary the genes are matched to.
    batch_size
        Cells per batch (all from one file).
    seed
        Shuffling seed.
    block_rows
        Consecutive rows per shuffled block; 1 shuffles single rows (the plan of earlier releases).
    cells_per_read
        Cells read from a file at once, at most (and the size of a block-shuffled read).
    interleave
        Block-shuffled reads whose batches are dealt in turn (ignored with ``block_rows=1``).
    exclude_cells
        ``{file name without .h5ad: {obs column: [values]}}``: cells never read (e.g. an evaluation's query batch;
        :func:`default_excluded_cells`). The other cells of the file are planned as if they were the whole file.
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        vocab: GeneVocabulary,
        *,
        batch_size: int,
        seed: int = 0,
        block_rows: int = 1,
        cells_per_read: int = 2048,
        interleave: int = 4,
        exclude_cells: ExcludedCells | None = None,
    ) -> None:
        sizes = {"batch_size": batch_size, "block_rows": block_rows, "cells_per_read": cells_per_read}
        for name, value in (sizes | {"interleave": interleave}).items():
            if not is_integer(value) or value < 1:
                msg = f"{name}={value!r}: use an integer >= 1."
                raise ValueError(msg)
        self.files = [Path(f) for f in files]
        self.batch_size = batch_size
        self.seed = seed
        self.block_rows = int(block_rows)
        self.cells_per_read = int(cells_per_read)
        self.interleave = int(interleave)
        self._data = [ad.read_h5ad(f, backed="r") for f in self.files]
        # a backed adata.X is a new object on every access, which reads the file's whole indptr again: open it once
        self._matrices = [a.X for a in self._data]
        try:
            for file, adata, matrix in zip(self.files, self._data, self._matrices, strict=True):
                check_row_readable(matrix, f"X of training file {str(file)!r}", file_only=True)
                _require_vocabulary_genes(file, pd.Index(adata.var_names).astype(str), vocab)
        except ValueError:
            self.close()
            raise
        self._matches = [
            match_names(pd.Index(a.var_names).astype(str), vocab, source=f"var_names of {str(f)!r}", min_fraction=0.0)
            for f, a in zip(self.files, self._data, strict=True)
        ]
        self._keys = [cell_keys_from_names(a.obs_names) for a in self._data]
        exclude_cells = _check_excluded_files(exclude_cells or {}, self.files)
        #: each file's training rows (sorted); the plans below draw positions in them
        self._rows = [
            training_rows(a, exclude_cells.get(f.stem), file=f) for f, a in zip(self.files, self._data, strict=True)
        ]

    @property
    def n_cells(self) -> int:
        """Training cells in the corpus."""
        return sum(rows.size for rows in self._rows)

    def summary(self) -> list[dict[str, object]]:
        """Per-file training cells, cells kept out and matched genes."""
        return [
            {"file": f.name, "n_cells": r.size, "n_cells_excluded": a.n_obs - r.size, "n_genes_matched": m.n_matched}
            for f, a, r, m in zip(self.files, self._data, self._rows, self._matches, strict=True)
        ]

    def epoch_plan(self, epoch: int, *, rank: int = 0, world: int = 1) -> list[tuple[int, np.ndarray]]:
        """``(file_index, sorted_rows)`` batches of this rank for ``epoch``, equal in number on every rank."""
        return [(file_index, rows) for file_index, rows, _ in self._plan(epoch, rank, world)]

    def _plan(self, epoch: int, rank: int, world: int) -> list[tuple[int, np.ndarray, int]]:
        """``(file_index, sorted_rows, read)`` batches of a rank; ``read`` numbers block-shuffled reads, else -1."""
        rng = np.random.default_rng([self.seed, epoch])
        plan: list[tuple[int, np.ndarray, int]] = []
        if self.block_rows == 1:
            for index, training in enumerate(self._rows):
                rows = training[rng.permutation(training.size)]
                plan.extend(
                    (index, np.sort(rows[s : s + self.batch_size]), -1) for s in range(0, rows.size, self.batch_size)
                )
            plan = [plan[i] for i in rng.permutation(len(plan))]
        else:
            reads = self._block_reads(rng)
            order = rng.permutation(len(reads))
            for first in range(0, order.size, self.interleave):
                window = order[first : first + self.interleave]
                for turn in range(max(len(reads[read]) for read in window)):
                    plan.extend((*reads[read][turn], int(read)) for read in window if turn < len(reads[read]))
        usable = len(plan) - len(plan) % world  # same number of steps on every rank
        return plan[rank:usable:world]

    def _block_reads(self, rng: np.random.Generator) -> list[list[tuple[int, np.ndarray]]]:
        """Every file's block-shuffled reads, each a list of ``(file_index, sorted_rows)`` batches."""
        read_cells = max(1, self.cells_per_read // self.batch_size) * self.batch_size
        reads = []
        for index, training in enumerate(self._rows):  # blocks of consecutive training rows
            n_blocks = -(-training.size // self.block_rows)
            order = (rng.permutation(n_blocks)[:, None] * self.block_rows + np.arange(self.block_rows)).ravel()
            order = training[order[order < training.size]]  # the last block may be short
            for first in range(0, order.size, read_cells):
                rows = rng.permutation(order[first : first + read_cells])
                batches = range(0, rows.size, self.batch_size)
                reads.append([(index, np.sort(rows[s : s + self.batch_size])) for s in batches])
        return reads

    def batches(self, epoch: int, *, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[CorpusBatch]:
        """Read this rank's batches of ``epoch`` from position ``start`` on."""
        plan = self._plan(epoch, rank, world)[start:]
        if self.block_rows == 1:
            yield from self._single_row_batches(plan)
            return
        rows_of_read: dict[int, list[np.ndarray]] = {}
        for _, rows, read in plan:
            rows_of_read.setdefault(read, []).append(rows)
        left = {read: len(batches) for read, batches in rows_of_read.items()}
        held: dict[int, tuple[np.ndarray, sparse.csr_matrix]] = {}  # this rank's cells of the reads in turn
        for file_index, rows, read in plan:
            if read not in held:
                together = np.unique(np.concatenate(rows_of_read.pop(read)))
                held[read] = together, self._read(file_index, together)
            together, block = held[read]
            yield self._batch(file_index, rows, block[np.searchsorted(together, rows)])
            left[read] -= 1
            if not left[read]:
                del held[read]

    def _single_row_batches(self, plan: list[tuple[int, np.ndarray, int]]) -> Iterator[CorpusBatch]:
        """The batches of a single-row plan, consecutive batches of a file read together (``cells_per_read``)."""
        position = 0
        while position < len(plan):
            file_index = plan[position][0]
            group, cells = [], 0
            while position < len(plan) and plan[position][0] == file_index:
                rows = plan[position][1]
                if group and cells + rows.size > self.cells_per_read:
                    break
                group.append(rows)
                cells += rows.size
                position += 1
            together = np.unique(np.concatenate(group))
            block = self._read(file_index, together)
            for rows in group:
                yield self._batch(file_index, rows, block[np.searchsorted(together, rows)])

    def _read(self, file_index: int, rows: np.ndarray) -> sparse.csr_matrix:
        """Sorted ``rows`` of one file, on the genes matched to the vocabulary, in one read."""
        columns = self._matches[file_index].read_columns
        _, block = next(iter_row_blocks(self._matrices[file_index], rows.size, columns=columns, rows=rows))
        return block

    def _batch(self, file_index: int, rows: np.ndarray, matrix: sparse.csr_matrix) -> CorpusBatch:
        return CorpusBatch(file_index, matrix, self._matches[file_index].gene_ids, self._keys[file_index][rows])

    def sample(self, max_cells_per_file: int, *, seed: int = 0, block: int = 512) -> Iterator[CorpusBatch]:
        """Up to ``max_cells_per_file`` random cells of every file (seeded), in blocks of ``block`` rows."""
        rng = np.random.default_rng([self.seed, seed, 7])
        for file_index, training in enumerate(self._rows):
            rows = np.sort(training[rng.permutation(training.size)[:max_cells_per_file]])
            match = self._matches[file_index]
            for start in range(0, len(rows), block):
                chunk = rows[start : start + block]
                matrix = self._matrices[file_index]
                _, matrix = next(iter_row_blocks(matrix, len(chunk), columns=match.read_columns, rows=chunk))
                yield CorpusBatch(file_index, matrix, match.gene_ids, self._keys[file_index][chunk])

    def close(self) -> None:
        """Close the backed files."""
        for adata in self._data:
            adata.file.close()


def _check_excluded_files(exclude_cells: ExcludedCells, files: Sequence[str | Path]) -> dict[str, dict[str, list[str]]]:
    """``exclude_cells`` checked (:func:`check_excluded_cells`), each of its file names among ``files``."""
    checked = check_excluded_cells(exclude_cells)
    stems = [Path(f).stem for f in files]
    unknown = sorted(set(checked) - set(stems))
    if unknown:
        msg = (
            f"exclude_cells names {unknown}, not among the training files {stems}: name files by their name without "
            ".h5ad, or drop the entry."
        )
        raise ValueError(msg)
    return checked
