"""Forward time of the PanFoMa network per batch of cells (no tokenization, no I/O).

Usage::

    python benchmarks/bench_forward.py --architecture panfoma-tiny --batch-size 64 --n-genes 256 512 1024

Prints a table and writes ``benchmarks/results/forward-<architecture>-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from panfoma_sc.nn import CONFIGS, PanFoMa


def time_forward(model: PanFoMa, batch: int, n_genes: int, *, device: str, repeats: int) -> float:
    """Median seconds of one forward pass over ``batch`` random cells of ``n_genes`` tokens."""
    chunks = model.config.n_chunks
    shape = (batch, chunks, n_genes // chunks)
    generator = torch.Generator().manual_seed(0)
    gene_ids = torch.randint(2, model.config.vocab_size, shape, generator=generator).to(device)
    bins = torch.randint(0, model.config.n_bins, shape, generator=generator).to(device)
    padding = torch.zeros(shape, dtype=torch.bool, device=device)
    times = []
    with torch.inference_mode():
        model(gene_ids, bins, padding)  # warm-up
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(gene_ids, bins, padding)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="panfoma-tiny", choices=sorted(CONFIGS))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-genes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--vocab-size", type=int, default=21303)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = PanFoMa(CONFIGS[args.architecture].replace(vocab_size=args.vocab_size)).to(args.device).eval()
    rows = []
    for n_genes in args.n_genes:
        seconds = time_forward(model, args.batch_size, n_genes, device=args.device, repeats=args.repeats)
        rows.append({"n_genes": n_genes, "seconds_per_batch": seconds, "cells_per_s": args.batch_size / seconds})
        rate = args.batch_size / seconds
        print(f"{args.architecture} batch {args.batch_size} x {n_genes} genes: {seconds:.2f} s ({rate:.1f} cells/s)")
    result = {
        "architecture": args.architecture,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "batch_size": args.batch_size,
        "results": rows,
    }
    out = Path(__file__).parent / "results" / f"forward-{args.architecture}-{args.device}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
