"""Tokenizer throughput (cells/s), alone and with rows read from a backed h5ad, on real cells.

The data path must never be the bottleneck: compare these numbers with the model's cells/s from
``bench_inference.py``.

Usage::

    python benchmarks/bench_tokenizer.py

Prints a table and writes ``benchmarks/results/tokenizer.json``.
"""

from __future__ import annotations

import argparse
import logging
import time

import _perf
import anndata as ad

import panfoma_sc as pf
from panfoma_sc.data.rows import iter_row_blocks
from panfoma_sc.data.tokenizer import Tokenizer, cell_keys_from_names


def cells_per_s(blocks, tokenizer: Tokenizer, gene_ids, keys, *, repeats: int) -> float:
    """Best-of-``repeats`` rate of reading ``blocks()`` and tokenizing every block."""
    best = float("inf")
    for _ in range(repeats):
        start, n = time.perf_counter(), 0
        for rows, block in blocks():
            tokenizer(block, gene_ids, keys[rows])
            n += len(rows)
        best = min(best, time.perf_counter() - start)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-genes", type=int, nargs="+", default=[256, 1024, 3072])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    path = _perf.data_path(_perf.PBMC3K)
    memory = ad.read_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    vocab = pf.models.load("panfoma-tiny").vocab
    match = pf.pp.match_genes(memory, vocab)
    keys = cell_keys_from_names(memory.obs_names)
    rows = []
    for n_genes in args.n_genes:
        for selection in ("random", "top"):
            tokenizer = Tokenizer(n_genes=n_genes, n_chunks=4, pad_id=vocab.pad_id, selection=selection)
            rows.append(
                {
                    "n_genes": n_genes,
                    "selection": selection,
                    "in_memory_cells_per_s": cells_per_s(
                        lambda: iter_row_blocks(memory.X, args.batch_size, columns=match.columns),
                        tokenizer,
                        match.gene_ids,
                        keys,
                        repeats=args.repeats,
                    ),
                    "backed_cells_per_s": cells_per_s(
                        lambda: iter_row_blocks(backed.X, args.batch_size, columns=match.columns),
                        tokenizer,
                        match.gene_ids,
                        keys,
                        repeats=args.repeats,
                    ),
                }
            )
    print(f"\npbmc3k: {memory.n_obs} cells, {match.columns.size} genes matched, batch {args.batch_size}\n")
    table = _perf.print_table(rows, ["n_genes", "selection", "in_memory_cells_per_s", "backed_cells_per_s"])
    _perf.write_json(
        "tokenizer",
        {
            "data": _perf.PBMC3K,
            "cells": memory.n_obs,
            "genes_matched": int(match.columns.size),
            "arguments": vars(args),
            "machine": _perf.machine("cpu"),
            "results": rows,
            "table": table,
        },
    )


if __name__ == "__main__":
    main()
