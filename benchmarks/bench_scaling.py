"""Scaling curves: time and memory against genes per cell, and against cells streamed from a backed h5ad.

1. Genes per cell: the median of ``--repeats`` forward passes (``torch.inference_mode``) of PanFoMa and the
   two equal-size baselines on random tokens, lengths ascending, each model in its own process; on CUDA each
   length first gets an untimed call (Triton compiles and autotunes per shape). A model's longer lengths are
   skipped once the predicted time (quadratic growth for full attention, linear otherwise) passes ``--budget-s``.
2. Cells: ``pf.tl.embed`` of a backed h5ad of ``n`` cells (pbmc3k rows tiled, written to ``--workdir``),
   each ``n`` in its own process; peak memory should not grow with ``n`` beyond the ``(n, d_model)``
   float32 result (on a GPU both the GPU's peak and the process's peak resident memory are recorded).

Usage::

    python benchmarks/bench_scaling.py --threads 1
    python benchmarks/bench_scaling.py --device cuda --architecture panfoma-base --genes 1024 2048 4096 8192 16384

Prints tables, writes ``benchmarks/results/scaling-<architecture>-<device>.json`` and a plot
``benchmarks/results/scaling-<architecture>-<device>.png`` (``...-cells.json/png`` when ``--genes`` is given
alone, which runs the cells curve only).
"""

from __future__ import annotations

import argparse
import logging
import resource
import tempfile
import time
from pathlib import Path

import _perf
import numpy as np
import torch


def genes_curve(name: str, architecture: str, lengths: list[int], opts: dict) -> list[dict]:
    """Forward time and peak memory of one model at each length (ascending), in this fresh process."""
    device = opts["device"]
    _perf.set_threads(opts["threads"])
    config = _perf.config_for(architecture)
    model = _perf.build(name, config, device).eval()
    rows, predicted = [], 0.0
    growth = 2 if name == "full-attention" else 1
    baseline = _perf.current_rss_mib()  # lengths ascend, so each length's peak is the process peak so far
    # On CUDA every new shape (and dtype) pays for Triton compilation and autotuning, cuBLAS heuristics and
    # allocator growth on its first call, so each length gets an untimed call; CPU kernels are not compiled per
    # shape, and one warm-up at the first length is enough there. Warm-ups run under the timed autocast.
    warm_each = device.startswith("cuda")
    with torch.inference_mode():
        with _perf.autocast(device, opts["dtype"]):
            model(*_perf.random_tokens(config, opts["cells"], lengths[0], device))  # warm-up
        previous = None
        for length in lengths:
            if previous is not None:
                predicted = previous["seconds"] * (length / previous["n_genes"]) ** growth
            if predicted > opts["budget_s"]:
                rows.append({"model": name, "n_genes": length, "skipped": f"predicted {predicted:.0f} s > budget"})
                continue
            tokens = _perf.random_tokens(config, opts["cells"], length, device)
            with _perf.PeakMemory(device, baseline=baseline) as memory, _perf.autocast(device, opts["dtype"]):
                seconds = _perf.median_seconds(
                    lambda tokens=tokens: model(*tokens),
                    repeats=opts["repeats"],
                    device=device,
                    warmup=int(warm_each),
                )
            previous = {
                "model": name,
                "n_genes": length,
                "seconds": seconds,
                "ms_per_cell": 1e3 * seconds / opts["cells"],
                "peak_mib": memory.peak,
                "peak_increase_mib": memory.increase,
            }
            rows.append(previous)
    return rows


def write_tiled_h5ad(path: Path, n_cells: int) -> None:
    """pbmc3k rows repeated (with unique cell names) to ``n_cells`` cells, CSR, in a backed-readable h5ad."""
    import anndata as ad
    from scipy import sparse

    source = _perf.pbmc3k_cells()
    reps = -(-n_cells // source.n_obs)
    x = sparse.vstack([source.X] * reps, format="csr")[:n_cells]
    names = [f"c{i}" for i in range(n_cells)]
    ad.AnnData(x, obs={"obs_names": names}, var=source.var[[]].copy()).write_h5ad(path)


def cells_point(path: str, opts: dict) -> dict:
    """``pf.tl.embed`` of a whole backed file, in this fresh process."""
    import anndata as ad

    import panfoma_sc as pf

    logging.disable(logging.WARNING)
    _perf.set_threads(opts["threads"])
    model = pf.models.load("panfoma-tiny")
    adata = ad.read_h5ad(path, backed="r")
    n_cells = adata.n_obs
    start = time.perf_counter()
    with _perf.PeakMemory(opts["device"]) as memory:
        pf.tl.embed(
            adata,
            model,
            n_genes=opts["cells_n_genes"],
            batch_size=opts["batch_size"],
            device=opts["device"],
            progress=False,
        )
    seconds = time.perf_counter() - start
    result_mib = adata.obsm["X_panfoma"].nbytes / 2**20
    return {
        "n_cells": n_cells,
        "device": opts["device"],
        "seconds": seconds,
        "cells_per_s": n_cells / seconds,
        "peak_mib": memory.peak,
        "peak_increase_mib": memory.increase,
        # the process's peak resident memory (on a GPU, peak_mib is the GPU's): streaming keeps both flat
        "host_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "result_mib": result_mib,
    }


def plot(genes_rows: list[dict], cells_rows: list[dict], title: str, path: Path) -> None:
    """Three panels: ms/cell and peak memory against genes per cell, peak memory against cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for name in _perf.MODELS:
        done = [r for r in genes_rows if r["model"] == name and "seconds" in r]
        x = [r["n_genes"] for r in done]
        axes[0].plot(x, [r["ms_per_cell"] for r in done], marker="o", label=name)
        axes[1].plot(x, [r["peak_increase_mib"] for r in done], marker="o", label=name)
    for ax, label in zip(axes[:2], ["ms per cell", "peak memory increase (MiB)"], strict=True):
        ax.set_xlabel("genes per cell")
        ax.set_ylabel(label)
        if not genes_rows:  # --genes alone: the cells curve only
            ax.text(0.5, 0.5, "genes curve not run", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
    if genes_rows:
        axes[0].legend(fontsize=8)
    if cells_rows:
        x = [r["n_cells"] for r in cells_rows]
        on_gpu = str(cells_rows[0].get("device", "cpu")).startswith("cuda")
        label = "peak GPU memory" if on_gpu else "peak RSS"
        axes[2].plot(x, [r["peak_mib"] for r in cells_rows], marker="o", label=label)
        if on_gpu:
            axes[2].plot(x, [r["host_peak_mib"] for r in cells_rows], marker="^", label="peak RSS")
        axes[2].plot(x, [r["result_mib"] for r in cells_rows], marker="s", label="result array")
        axes[2].set_xscale("log")
        axes[2].set_xlabel("cells streamed from backed h5ad")
        axes[2].set_ylabel("MiB")
        axes[2].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="panfoma-tiny", choices=sorted(_perf.CONFIGS))
    parser.add_argument(
        "--genes",
        type=int,
        nargs="*",
        default=[1024, 2048, 3072, 4096, 8192, 16384],
        help="lengths of the genes curve; --genes alone skips it (cells curve only)",
    )
    parser.add_argument("--cells-per-batch", type=int, default=1, help="cells per forward pass of the genes curve")
    parser.add_argument("--budget-s", type=float, default=60.0, help="skip a length predicted to take longer")
    parser.add_argument(
        "--repeats", type=int, default=1, help="timed forwards per length of the genes curve (median reported)"
    )
    parser.add_argument("--cells", type=int, nargs="*", default=[1000, 3000, 10000])
    parser.add_argument("--cells-n-genes", type=int, default=64, help="genes per cell of the cells curve")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workdir", default=None, help="where the tiled h5ad goes (default: a temp folder)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    _perf.set_threads(args.threads)
    opts = {
        "device": args.device,
        "dtype": args.dtype,
        "threads": args.threads,
        "budget_s": args.budget_s,
        "repeats": args.repeats,
        "cells": args.cells_per_batch,
        "cells_n_genes": args.cells_n_genes,
        "batch_size": args.batch_size,
    }
    lengths = sorted(args.genes)
    genes_rows = [
        row
        for name in (_perf.MODELS if lengths else [])
        for row in _perf.run_isolated(genes_curve, name, args.architecture, lengths, opts)
    ]
    by_length = {}
    for row in genes_rows:
        by_length.setdefault(row["n_genes"], {})[row["model"]] = row.get("seconds")
    ratio_rows = []
    for length, times in sorted(by_length.items()):
        base = times.get("panfoma")
        ratio_rows.append(
            {
                "n_genes": length,
                "panfoma_ms_per_cell": 1e3 * base / args.cells_per_batch if base else None,
                "full_attention_time_ratio": times["full-attention"] / base
                if base and times.get("full-attention")
                else None,
                "unidirectional_mamba_time_ratio": (
                    times["unidirectional-mamba"] / base if base and times.get("unidirectional-mamba") else None
                ),
            }
        )
    print(f"\n{args.architecture}, {args.cells_per_batch} cell(s) per forward, {args.device} {args.dtype}\n")
    genes_table = _perf.print_table(genes_rows, ["model", "n_genes", "ms_per_cell", "peak_increase_mib", "skipped"])
    print()
    ratio_table = _perf.print_table(ratio_rows, list(ratio_rows[0])) if ratio_rows else ""

    cells_rows = []
    if args.cells:
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            for n_cells in sorted(args.cells):
                path = Path(tmp) / f"tiled-{n_cells}.h5ad"
                # in a process of its own: a child's peak RSS (ru_maxrss) starts from its parent's at fork, so a
                # parent that had just built a large file would show up as the embedding's peak
                _perf.run_isolated(write_tiled_h5ad, path, n_cells)
                cells_rows.append(_perf.run_isolated(cells_point, str(path), opts))
                path.unlink()
        print(f"\npf.tl.embed(backed h5ad), panfoma-tiny checkpoint, {args.cells_n_genes} genes/cell\n")
        cells_table = _perf.print_table(
            cells_rows, ["n_cells", "cells_per_s", "peak_mib", "peak_increase_mib", "host_peak_mib", "result_mib"]
        )
    # a cells-only run (--genes alone) does not replace a full run's files
    name = f"scaling-{args.architecture}-{args.device}" + ("" if lengths else "-cells")
    plot(
        genes_rows,
        cells_rows,
        f"{args.architecture} on {args.device} ({torch.get_num_threads()} thread(s)); "
        f"cells curve: pf.tl.embed, {args.cells_n_genes} genes/cell",
        _perf.RESULTS / f"{name}.png",
    )
    _perf.write_json(
        name,
        {
            "architecture": args.architecture,
            "arguments": vars(args),
            "machine": _perf.machine(args.device),
            "genes": genes_rows,
            "ratios": ratio_rows,
            "cells": cells_rows,
            "tables": [genes_table, ratio_table, cells_table if cells_rows else ""],
            "cells_peak_spread_mib": float(np.ptp([r["peak_mib"] for r in cells_rows])) if cells_rows else None,
        },
    )


if __name__ == "__main__":
    main()
