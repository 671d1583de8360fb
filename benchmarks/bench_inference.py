"""Inference throughput, peak memory and FLOP/s of PanFoMa against equal-size baselines, in one run.

Each model embeds the same real cells (pbmc3k, raw counts, all genes) the way ``pf.tl.embed`` does: rows
streamed from the AnnData in batches, tokenized, moved to the device, encoded under ``torch.inference_mode``,
the cell embedding copied back. The baselines (``panfoma_sc.nn.baselines``) have PanFoMa's width and depth.
The run also times ``pf.tl.embed`` itself with the shipped ``panfoma-tiny`` checkpoint at its default genes
per cell, and a plain fp32 matmul as the reference for the FLOP/s share.

Usage::

    python benchmarks/bench_inference.py                       # CPU, panfoma-tiny, 1024 genes, batch 64
    python benchmarks/bench_inference.py --device cuda --architecture panfoma-base --n-genes 3072 --dtype bf16

Prints tables and writes ``benchmarks/results/inference-<architecture>-<device>.json`` (``...-1thread.json`` with
``--threads 1``).
"""

from __future__ import annotations

import logging
import time
from functools import partial

import _perf
import torch


def _matched_rows(n_cells: int):
    """The first ``n_cells`` pbmc3k cells, the shipped vocabulary's gene match and the cell keys."""
    import panfoma_sc as pf
    from panfoma_sc.data.tokenizer import cell_keys_from_names

    logging.disable(logging.WARNING)
    adata = _perf.pbmc3k_cells(n_cells)
    vocab = pf.models.load("panfoma-tiny").vocab
    match = pf.pp.match_genes(adata, vocab)
    return adata, vocab, match, cell_keys_from_names(adata.obs_names)


def measure_model(
    name: str, architecture: str, n_genes: int, batch_size: int, n_cells: int, opts: dict, *, whole_batch: bool
) -> dict:
    """Embed ``n_cells`` real cells with one model, in this (fresh) process.

    Like ``pf.tl.embed``, each batch runs in passes of ``cells_per_forward`` cells (about 1k tokens on CPU),
    unless ``whole_batch`` (one pass per batch, as before the CPU micro-batching).
    """
    from panfoma_sc.data.rows import iter_row_blocks
    from panfoma_sc.data.tokenizer import Tokenizer
    from panfoma_sc.models._pretrained import _split, cells_per_forward, tokens_to_torch

    device = opts["device"]
    _perf.set_threads(opts["threads"])
    adata, vocab, match, keys = _matched_rows(n_cells)
    config = _perf.config_for(architecture)
    tokenizer = Tokenizer(n_genes=n_genes, n_chunks=config.n_chunks, n_bins=config.n_bins, pad_id=vocab.pad_id)
    model = _perf.build(name, config, device).eval()
    step = batch_size if whole_batch else cells_per_forward(device, n_genes, batch_size)

    def encode(tokens):
        with _perf.autocast(device, opts["dtype"]):
            parts = [model(*tokens_to_torch(part, device)).cell_embedding for part in _split(tokens, step)]
            return torch.cat(parts).float().cpu().numpy()

    baseline = _perf.current_rss_mib()
    with torch.inference_mode():
        # a whole first batch, so the timed batches' shapes are already warm (CUDA compiles and tunes per shape)
        warm_rows, warm_block = next(iter_row_blocks(adata.X, batch_size, columns=match.columns))
        encode(tokenizer(warm_block, match.gene_ids, keys[warm_rows]))
        one = tokens_to_torch(tokenizer(warm_block[:1], match.gene_ids, keys[:1]), device)
        flops_per_cell = _perf.count_flops(lambda: model(*one))
        tokenize_s = forward_s = 0.0
        with _perf.PeakMemory(device, baseline=baseline) as memory:
            for rows, block in iter_row_blocks(adata.X, batch_size, columns=match.columns):
                start = time.perf_counter()
                tokens = tokenizer(block, match.gene_ids, keys[rows])
                tokenize_s += time.perf_counter() - start
                start = time.perf_counter()
                encode(tokens)
                forward_s += time.perf_counter() - start
    return {
        "model": name + (" (one pass per batch)" if whole_batch else ""),
        "cells_per_forward": step,
        "parameters": sum(p.numel() for p in model.parameters()),
        "cells_per_s": n_cells / (tokenize_s + forward_s),
        "model_cells_per_s": n_cells / forward_s,
        "tokenize_share": tokenize_s / (tokenize_s + forward_s),
        "peak_mib": memory.peak,
        "peak_increase_mib": memory.increase,
        "gflop_per_cell": flops_per_cell / 1e9,
        "model_gflop_per_s": flops_per_cell * n_cells / forward_s / 1e9,
    }


def measure_embed(batch_size: int, n_cells: int, opts: dict) -> dict:
    """``pf.tl.embed`` with the shipped panfoma-tiny checkpoint at its default genes per cell."""
    import panfoma_sc as pf

    _perf.set_threads(opts["threads"])
    adata, *_ = _matched_rows(n_cells)
    model = pf.models.load("panfoma-tiny")
    baseline = _perf.current_rss_mib()
    pf.tl.embed(adata[:8].copy(), model, device=opts["device"], progress=False)  # warm-up
    with _perf.PeakMemory(opts["device"], baseline=baseline) as memory:
        start = time.perf_counter()
        pf.tl.embed(adata, model, batch_size=batch_size, device=opts["device"], progress=False)
        seconds = time.perf_counter() - start
    return {
        "model": "pf.tl.embed(panfoma-tiny checkpoint)",
        "n_genes": model.config.n_genes,
        "batch_size": batch_size,
        "cells_per_s": n_cells / seconds,
        "peak_mib": memory.peak,
        "peak_increase_mib": memory.increase,
    }


def main() -> None:
    parser = _perf.model_parser(__doc__.splitlines()[0], batch_size=64)
    parser.add_argument("--cells", type=int, default=64, help="cells embedded per model (after a one-batch warm-up)")
    args = parser.parse_args()
    _perf.set_threads(args.threads)
    n_genes = args.n_genes or _perf.config_for(args.architecture).n_genes
    opts = {"device": args.device, "dtype": args.dtype, "threads": args.threads}

    # the reference: a plain fp32 matmul on CPU, a large bf16 matmul (the achievable tensor-core rate) on CUDA
    reference = {"size": 1024, "dtype": torch.float32}
    if args.device.startswith("cuda"):
        reference = {"size": 8192, "dtype": torch.bfloat16 if args.dtype == "bf16" else torch.float32}
    matmul_before = _perf.matmul_flops_per_s(args.device, **reference)
    shape = (args.architecture, n_genes, args.batch_size, args.cells, opts)
    rows = [_perf.run_isolated(partial(measure_model, whole_batch=False), name, *shape) for name in _perf.MODELS]
    if not args.device.startswith("cuda"):  # before/after of the CPU micro-batching, same run
        rows.append(_perf.run_isolated(partial(measure_model, whole_batch=True), "panfoma", *shape))
    matmul = (matmul_before + _perf.matmul_flops_per_s(args.device, **reference)) / 2
    panfoma = rows[0]
    for row in rows:
        row["time_ratio_to_panfoma"] = panfoma["cells_per_s"] / row["cells_per_s"]
        row["memory_ratio_to_panfoma"] = row["peak_increase_mib"] / max(panfoma["peak_increase_mib"], 1e-9)
        row["flop_share_of_matmul"] = row["model_gflop_per_s"] * 1e9 / matmul
    embed = _perf.run_isolated(measure_embed, args.batch_size, max(args.cells, args.batch_size), opts)

    print(f"\n{args.architecture}, {n_genes} genes/cell, batch {args.batch_size}, {args.device} {args.dtype}")
    print(f"plain {reference['dtype']} matmul ({reference['size']}^3): {matmul / 1e9:.1f} GFLOP/s\n")
    table = _perf.print_table(
        rows,
        [
            "model",
            "cells_per_forward",
            "cells_per_s",
            "time_ratio_to_panfoma",
            "peak_increase_mib",
            "memory_ratio_to_panfoma",
            "gflop_per_cell",
            "model_gflop_per_s",
            "flop_share_of_matmul",
            "tokenize_share",
        ],
    )
    print()
    embed_table = _perf.print_table([embed], ["model", "n_genes", "batch_size", "cells_per_s", "peak_increase_mib"])
    _perf.write_json(
        f"inference-{args.architecture}-{args.device}" + ("-1thread" if args.threads == 1 else ""),
        {
            "command": "python benchmarks/bench_inference.py "
            + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
            "architecture": args.architecture,
            "n_genes": n_genes,
            "batch_size": args.batch_size,
            "cells": args.cells,
            "dtype": args.dtype,
            "matmul_gflop_per_s": matmul / 1e9,
            "matmul_reference": {"size": reference["size"], "dtype": str(reference["dtype"])},
            "machine": _perf.machine(args.device),
            "results": rows,
            "embed": embed,
            "table": table,
            "embed_table": embed_table,
        },
    )


if __name__ == "__main__":
    main()
