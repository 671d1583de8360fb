"""How far bf16 autocast moves ``pf.tl.embed``'s embedding from float32, per cell, on real cells.

On CUDA it compares ``precision="bf16"`` with ``precision="fp32"``. On CPU, where ``pf.tl.embed`` refuses
bf16, it emulates it: the float32 path run inside ``torch.autocast("cpu", dtype=torch.bfloat16)`` (the CPU
autocast lists differ a little from CUDA's, so this is an estimate of the GPU numbers, not a replacement).
This is the evidence behind the tolerance of the GPU test ``test_bf16_autocast_agrees_with_fp32_on_cuda``.

Usage::

    python benchmarks/precision_bf16.py --threads 1
    python benchmarks/precision_bf16.py --device cuda

Prints the per-cell cosine similarity and relative error and writes
``benchmarks/results/precision-bf16-<device>.json``.
"""

from __future__ import annotations

import contextlib
import logging

import _perf
import numpy as np
import torch

import panfoma_sc as pf


def main() -> None:
    parser = _perf.embed_parser(__doc__.splitlines()[0], cells=256)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    _perf.set_threads(args.threads)

    cells = _perf.pbmc3k_cells(args.cells)
    model = pf.models.load("panfoma-tiny")
    options = {"batch_size": args.batch_size, "device": args.device, "progress": False, "copy": True}
    fp32 = pf.tl.embed(cells, model, precision="fp32", **options).obsm["X_panfoma"]
    if args.device.startswith("cuda"):
        bf16_run, emulated = contextlib.nullcontext(), False
        bf16 = pf.tl.embed(cells, model, precision="bf16", **options).obsm["X_panfoma"]
    else:
        bf16_run, emulated = torch.autocast("cpu", dtype=torch.bfloat16), True
        with bf16_run:
            bf16 = pf.tl.embed(cells, model, precision="fp32", **options).obsm["X_panfoma"]

    cosine = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    relative = np.linalg.norm(bf16 - fp32, axis=1) / np.linalg.norm(fp32, axis=1)
    summary = {
        "cells": args.cells,
        "n_genes": model.config.n_genes,
        "emulated_on_cpu": emulated,
        "cosine_min": float(cosine.min()),
        "cosine_median": float(np.median(cosine)),
        "relative_error_median": float(np.median(relative)),
        "relative_error_max": float(relative.max()),
        "dtype": str(bf16.dtype),
    }
    print(f"\nbf16 vs fp32, pf.tl.embed(panfoma-tiny), {args.cells} pbmc3k cells, {args.device}")
    table = _perf.print_table([summary], list(summary))
    _perf.write_json(
        f"precision-bf16-{args.device}",
        {
            "command": "python benchmarks/precision_bf16.py "
            + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
            "machine": _perf.machine(args.device),
            "model": {"name": model.name, "version": str(model.info.get("version", "")), "sha256": model.sha256},
            "results": summary,
            "table": table,
        },
    )


if __name__ == "__main__":
    main()
