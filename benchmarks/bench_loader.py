"""``pf.tl.embed`` throughput with and without the background loader (prefetch), in memory and backed.

The shipped panfoma-tiny checkpoint embeds the first ``--cells`` real pbmc3k cells (raw counts, all genes) at
batch 64, once per prefetch depth and input kind, the settings interleaved round by round so that a change
of machine load hits every setting alike. The embeddings of every setting are checked to be bit-identical
(on CPU).

Usage::

    python benchmarks/bench_loader.py --threads 1
    python benchmarks/bench_loader.py --device cuda --cells 2700 --precision bf16

Prints a table and writes ``benchmarks/results/loader-<device>[-<threads>thread].json``.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path

import _perf
import anndata as ad
import numpy as np

import panfoma_sc as pf


def main() -> None:
    parser = _perf.embed_parser(__doc__.splitlines()[0], cells=384)
    parser.add_argument("--prefetch", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    _perf.set_threads(args.threads)

    cells = _perf.pbmc3k_cells(args.cells)
    model = pf.models.load("panfoma-tiny")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cells.h5ad"
        cells.write_h5ad(path)
        inputs = {"in memory": cells, "backed": ad.read_h5ad(path, backed="r")}
        options = {"batch_size": args.batch_size, "device": args.device, "precision": args.precision}
        pf.tl.embed(cells[:8].copy(), model, progress=False, **options)  # warm-up
        seconds: dict[tuple[str, int], list[float]] = {}
        embeddings: dict[tuple[str, int], np.ndarray] = {}
        for _ in range(args.repeats):
            for kind, adata in inputs.items():
                for depth in args.prefetch:
                    pf.settings.prefetch = depth
                    _perf.synchronize(args.device)
                    start = time.perf_counter()
                    pf.tl.embed(adata, model, progress=False, **options)
                    _perf.synchronize(args.device)
                    seconds.setdefault((kind, depth), []).append(time.perf_counter() - start)
                    embeddings[kind, depth] = adata.obsm["X_panfoma"].copy()
        inputs["backed"].file.close()

    reference = embeddings["in memory", args.prefetch[0]]
    rows = []
    for (kind, depth), times in seconds.items():
        median = statistics.median(times)
        rows.append(
            {
                "input": kind,
                "prefetch": depth,
                "cells_per_s": args.cells / median,
                "speedup_vs_prefetch_0": statistics.median(seconds[kind, 0]) / median if 0 in args.prefetch else None,
                "seconds": [round(t, 2) for t in times],
                "identical_to_in_memory_prefetch_0": bool(np.array_equal(embeddings[kind, depth], reference)),
            }
        )
    print(f"\npf.tl.embed(panfoma-tiny), {args.cells} pbmc3k cells, batch {args.batch_size}, {args.device}")
    table = _perf.print_table(
        rows, ["input", "prefetch", "cells_per_s", "speedup_vs_prefetch_0", "identical_to_in_memory_prefetch_0"]
    )
    _perf.write_json(
        f"loader-{args.device}" + (f"-{args.threads}thread" if args.threads else ""),
        {
            "command": "python benchmarks/bench_loader.py "
            + " ".join(
                f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in vars(args).items()
                if v is not None
            ),
            "n_genes": model.config.n_genes,
            "model": {"name": model.name, "version": str(model.info.get("version", "")), "sha256": model.sha256},
            "machine": _perf.machine(args.device),
            "results": rows,
            "table": table,
        },
    )


if __name__ == "__main__":
    main()
