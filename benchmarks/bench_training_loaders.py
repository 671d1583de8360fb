"""Pretraining data loaders: cells/s, peak memory and randomness of shuffled 32-cell batches from a backed h5ad.

DESIGN.md section 6 asks for this measurement before keeping our own loader. pbmc3k (raw counts, all 32,738
genes) is tiled to ``--cells`` rows and written once to a temporary CSR h5ad per ``--compression``; every loader
then delivers batches of ``--batch-size`` cells as CSR rows of the genes matched to the vocabulary (what the
trainer tokenizes), with no model. The cases:

- ``ours``: ``PretrainingCorpus.batches`` with its defaults (each batch = random rows of one file, sorted; the
  consecutive batches of a file read together, ``fetch_factor`` batches per read, with a boolean mask); ``one read
  per batch`` reads each batch alone (as releases before block reading did, then with integer rows); ``ours b=16
  f=64`` shuffles blocks of 16 rows in reads of 64 batches (``block_rows=16, cells_per_read=2048``), 4 reads
  dealt in turn (``interleave=4``, the default).
- ``anndata+DataLoader``: the backed ``X`` read with ``torch.utils.data.DataLoader`` over a ``BatchSampler`` of a
  ``RandomSampler`` (one batched read of random rows per batch).
- ``scdataset``: ``scDataset`` with ``BlockShuffling(block_size)`` and ``fetch_factor`` (one read of
  ``batch_size * fetch_factor`` rows, i.e. ``fetch_factor * batch_size / block_size`` blocks of consecutive rows,
  shuffled in memory and cut into batches). The fetch reads the backed ``X`` with a boolean mask, so that anndata
  reads each run of rows as one slice; ``index`` reads with the sorted integer rows instead (row by row), and
  ``mindex`` uses scdataset's documented AnnData transform (``adata_to_mindex``: whole AnnData fetch, dense).
- ``contiguous``: consecutive rows, one read per batch, what ``pf.tl.embed`` does (not shuffled); ``contiguous
  x16`` reads 16 batches at a time (the bound for reads of that size).

Each case runs in a fresh process, ``--repeats`` rounds interleaved, and the median cells/s is reported. Peak
memory is the peak resident set size after the file is opened (``/proc/self/clear_refs`` resets it) minus the
resident set size then. Randomness is measured on all batches of one epoch, taken from each loader's plan or
sampler with the seed of the timed run (whose rows are checked to follow it): the distinct file regions (aligned
windows of ``--region`` rows) per batch (about 32 for random rows, 1 for a contiguous batch), the share of a
batch's cell pairs that lie in one region, and cell types per batch with the file in barcode order (as tiled)
and as if it were sorted by cell type (as atlases that concatenate samples or annotations often are; same
rows, relabelled). ``rows_correct``: every timed batch holds the planned rows with their source cells' counts.

Usage::

    python benchmarks/bench_training_loaders.py
    python benchmarks/bench_training_loaders.py --cells 100000 --compression none gzip --repeats 2

Prints a table and writes ``benchmarks/results/training-loaders-cpu.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import _perf
import anndata as ad
import numpy as np
from scipy import sparse

#: ``(name, loader, block_size, fetch_factor, fetch read)`` of every case, in table order
CASES = [
    ("ours", "ours", 1, 64, ""),
    ("ours, one read per batch", "ours", 1, 1, ""),
    ("ours b=16 f=64", "ours", 16, 64, ""),
    ("ours b=64 f=64", "ours", 64, 64, ""),
    ("anndata+DataLoader", "dataloader", 1, 1, ""),
    ("scdataset b=1 f=16", "scdataset", 1, 16, "mask"),
    ("scdataset b=16 f=16", "scdataset", 16, 16, "mask"),
    ("scdataset b=64 f=16", "scdataset", 64, 16, "mask"),
    ("scdataset b=16 f=64", "scdataset", 16, 64, "mask"),
    ("scdataset b=64 f=64", "scdataset", 64, 64, "mask"),
    ("scdataset b=64 f=256", "scdataset", 64, 256, "mask"),
    ("scdataset b=64 f=16 index", "scdataset", 64, 16, "index"),
    ("scdataset b=64 f=16 mindex", "scdataset", 64, 16, "mindex"),
    ("contiguous", "contiguous", 1, 1, ""),
    ("contiguous x16", "contiguous", 1, 16, ""),
]


def write_tiled(source: ad.AnnData, n_cells: int, path: Path, compression: str | None) -> None:
    """Rows ``i % source.n_obs`` of ``source`` as a CSR h5ad of ``n_cells`` cells, unique cell names."""
    rows = np.arange(n_cells) % source.n_obs
    tile = np.arange(n_cells) // source.n_obs
    names = [f"{source.obs_names[r]}-{t}" for r, t in zip(rows, tile, strict=True)]
    tiled = ad.AnnData(X=sparse.csr_matrix(source.X[rows]), var=source.var[[]].copy())
    tiled.obs_names = names
    tiled.write_h5ad(path, compression=compression)


def peak_rss_mib() -> float:
    """Peak resident set size of this process since the last :func:`reset_peak_rss` (VmHWM)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def _no_collate(batch):
    return batch  # batches are already CSR rows; torch's default conversion would not know scipy matrices


class BackedRows:
    """Map-style dataset over a backed h5ad: ``dataset[list_of_rows]`` reads them in one batched call.

    The file is opened on first use, so each DataLoader worker process opens its own handle.
    """

    def __init__(self, path: str, columns: np.ndarray) -> None:
        self.path, self.columns = path, columns
        adata = ad.read_h5ad(path, backed="r")
        self.n_obs = adata.n_obs
        adata.file.close()
        self._matrix = None

    def __len__(self) -> int:
        return self.n_obs

    def __getitem__(self, rows):
        if self._matrix is None:
            self._matrix = ad.read_h5ad(self.path, backed="r").X
        rows = np.sort(np.asarray(rows))  # h5py reads need increasing indices
        return sparse.csr_matrix(self._matrix[rows])[:, self.columns], rows


def _corpus_options(case: dict, opts: dict) -> dict[str, int]:
    """``PretrainingCorpus`` settings of an ``ours`` case."""
    batch_size = opts["batch_size"]
    return {
        "batch_size": batch_size,
        "seed": opts["seed"],
        "block_rows": case["block"],
        "cells_per_read": batch_size * case["fetch"],
    }


def loader_batches(case: dict, path: str, symbols: list[str], opts: dict):
    """An iterator over ``(csr_rows, file_rows)`` batches of ``case``, set up (file opened, genes matched)."""
    import torch
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler

    from panfoma_sc.data.rows import iter_row_blocks
    from panfoma_sc.data.vocab import GeneVocabulary
    from panfoma_sc.pp import match_genes
    from panfoma_sc.train import PretrainingCorpus

    vocab = GeneVocabulary(symbols)
    batch_size, seed, workers = opts["batch_size"], opts["seed"], opts["workers"]
    if case["loader"] == "ours":
        corpus = PretrainingCorpus([path], vocab, **_corpus_options(case, opts))
        plan = corpus.epoch_plan(0)
        return ((batch.matrix, rows) for batch, (_, rows) in zip(corpus.batches(0), plan, strict=True))

    adata = ad.read_h5ad(path, backed="r")
    columns = match_genes(adata, vocab, min_fraction=0.0).columns
    if case["loader"] == "contiguous":  # fetch_factor batches per read, split in memory
        reads = iter_row_blocks(adata.X, batch_size * case["fetch"], columns=columns)
        return (
            (block[start : start + batch_size], rows[start : start + batch_size])
            for rows, block in reads
            for start in range(0, len(rows), batch_size)
        )
    if case["loader"] == "dataloader":
        dataset = BackedRows(path, columns)
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
        batches = BatchSampler(sampler, batch_size, drop_last=False)
        return iter(DataLoader(dataset, sampler=batches, batch_size=None, collate_fn=_no_collate, num_workers=workers))

    from scdataset import BlockShuffling, scDataset
    from scdataset.transforms import adata_to_mindex

    matrix = adata.X  # one handle: each access of a backed adata.X reads indptr again

    def fetch_by_mask(collection, rows):
        # a boolean mask makes anndata read each run of consecutive rows as one slice (integer rows: row by row)
        mask = np.zeros(collection.n_obs, dtype=bool)
        mask[rows] = True
        return sparse.csr_matrix(matrix[mask])[:, columns], rows

    def fetch_by_index(collection, rows):
        return sparse.csr_matrix(matrix[rows])[:, columns], rows

    def fetch_documented(collection, rows):  # scdataset's AnnData recipe: view, to_memory, dense X
        return adata_to_mindex(collection[rows]), rows

    def take(fetched, positions):
        values, rows = fetched
        if case["read"] == "mindex":  # dense, all genes: keep the matched genes, as CSR, as the trainer needs
            return sparse.csr_matrix(values[positions]["X"][:, columns]), rows[positions]
        return values[positions], rows[positions]

    fetch = {"mask": fetch_by_mask, "index": fetch_by_index, "mindex": fetch_documented}[case["read"]]
    dataset = scDataset(
        adata,
        BlockShuffling(block_size=case["block"]),
        batch_size=batch_size,
        fetch_factor=case["fetch"],
        fetch_callback=fetch,
        batch_callback=take,
        seed=seed,
    )
    return iter(DataLoader(dataset, batch_size=None, collate_fn=_no_collate, num_workers=workers))


def epoch_rows(case: dict, path: str, symbols: list[str], n_obs: int, opts: dict) -> list[np.ndarray]:
    """The file rows of every batch of epoch 0 of ``case``, from its plan or sampler alone (no reading)."""
    import torch
    from torch.utils.data import BatchSampler, RandomSampler

    from panfoma_sc.data.vocab import GeneVocabulary
    from panfoma_sc.train import PretrainingCorpus

    batch_size, seed = opts["batch_size"], opts["seed"]
    if case["loader"] == "ours":
        corpus = PretrainingCorpus([path], GeneVocabulary(symbols), **_corpus_options(case, opts))
        plan = [rows for _, rows in corpus.epoch_plan(0)]
        corpus.close()
        return plan
    if case["loader"] == "contiguous":
        return [np.arange(start, min(start + batch_size, n_obs)) for start in range(0, n_obs, batch_size)]
    if case["loader"] == "dataloader":
        sampler = RandomSampler(range(n_obs), generator=torch.Generator().manual_seed(seed))
        return [np.asarray(rows) for rows in BatchSampler(sampler, batch_size, drop_last=False)]
    from scdataset import BlockShuffling, scDataset

    # the same strategy and seed over the row numbers themselves: the batches are the rows the real run reads
    rows = scDataset(
        np.arange(n_obs), BlockShuffling(block_size=case["block"]), batch_size, fetch_factor=case["fetch"], seed=seed
    )
    return list(rows)


def randomness(batches: list[np.ndarray], type_codes: dict[str, np.ndarray], region: int) -> dict[str, float]:
    """How far the batches are from random draws: file regions per batch, pairs in one region, cell types."""
    regions, same_region_pairs, distinct_cells = [], [], []
    types: dict[str, list[int]] = {layout: [] for layout in type_codes}
    period = len(next(iter(type_codes.values())))
    for rows in batches:
        _, counts = np.unique(rows // region, return_counts=True)  # cells per aligned window of `region` rows
        regions.append(len(counts))
        pairs = len(rows) * (len(rows) - 1) / 2
        same_region_pairs.append(float((counts * (counts - 1) / 2).sum() / pairs) if pairs else 1.0)
        distinct_cells.append(len(np.unique(rows % period)))
        for layout, codes in type_codes.items():
            types[layout].append(len(np.unique(codes[rows % period])))
    result = {
        "regions_per_batch": float(np.mean(regions)),
        "same_region_pair_fraction": float(np.mean(same_region_pairs)),
        "distinct_source_cells_per_batch": float(np.mean(distinct_cells)),
    }
    result |= {f"cell_types_per_batch_{layout}": float(np.mean(v)) for layout, v in types.items()}
    return result


def whole_fetches(batches: int, case: dict) -> int:
    """``batches`` rounded up to whole fetches of ``case``, so that every timed fetch is read in the timed window.

    Our block-shuffled reads are made ``interleave`` (4) at a time and their batches dealt in turn, so a fetch
    there is 4 reads.
    """
    unit = case["fetch"] * (4 if case["loader"] == "ours" and case["block"] > 1 else 1)
    return -(-batches // unit) * unit


def measure(case: dict, path: str, symbols: list[str], checks: dict, opts: dict) -> dict[str, Any]:
    """Throughput, peak memory and correctness of one case, in this fresh process, and the rows it read."""
    logging.disable(logging.WARNING)
    rss_start = _perf.current_rss_mib()
    start = time.perf_counter()
    batches = loader_batches(case, path, symbols, opts)
    setup_s = time.perf_counter() - start
    baseline = _perf.current_rss_mib()
    reset_peak_rss()
    warmup, timed = whole_fetches(opts["warmup"], case), whole_fetches(opts["batches"], case)
    for _ in range(warmup):
        next(batches)
    rows_seen, sums = [], []
    start = time.perf_counter()
    # whole fetches until both `timed` batches and `min_seconds` are reached (or the epoch ends), so that fast
    # cases are not timed over a fraction of a second
    for matrix, rows in batches:
        rows_seen.append(np.asarray(rows))
        sums.append(np.asarray(matrix.sum(axis=1)).ravel())
        done = len(rows_seen) >= timed and time.perf_counter() - start >= opts["min_seconds"]
        if done and len(rows_seen) % case["fetch"] == 0:
            break
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    cells = sum(len(r) for r in rows_seen)
    # every row must hold its source cell's counts on the matched genes (row i of the file = pbmc3k row i % 2700)
    expected = checks["row_sums"]
    correct = all(np.allclose(s, expected[r % len(expected)]) for s, r in zip(sums, rows_seen, strict=True))
    return {
        "cells_per_s": cells / seconds,
        "seconds": seconds,
        "cells": cells,
        "setup_s": setup_s,
        "setup_mib": baseline - rss_start,
        "peak_increase_mib": max(0.0, peak - baseline),
        "rows_hold_expected_counts": bool(correct),
        "rows": rows_seen,
        "load_average_1": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000, help="rows of the tiled h5ad")
    parser.add_argument("--compression", nargs="+", default=["none"], choices=["none", "gzip"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=320, help="timed batches per case (rounded up to whole fetches)")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="time each case at least this long")
    parser.add_argument("--warmup", type=int, default=32, help="batches read before timing (at least one fetch)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the median is reported")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--region", type=int, default=64, help="rows per file region of the randomness measures")
    parser.add_argument("--out", default=str(_perf.RESULTS / "training-loaders-cpu.json"), help="JSON file written")
    parser.add_argument("--cases", nargs="+", default=[c[0] for c in CASES], choices=[c[0] for c in CASES])
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    from panfoma_sc.pp import match_genes
    from panfoma_sc.train import build_vocabulary

    source_path = _perf.data_path(_perf.PBMC3K)
    source = ad.read_h5ad(source_path)
    vocab = build_vocabulary([source_path])  # what pretraining on this file would use
    columns = match_genes(source, vocab, min_fraction=0.0).columns
    labels = source.obs["cell_type"].astype(str).to_numpy()
    _, codes = np.unique(labels, return_inverse=True)
    checks = {
        "row_sums": np.asarray(source.X[:, columns].sum(axis=1)).ravel(),
        "type_codes": {"barcode_order": codes, "sorted_by_type": np.sort(codes)},
    }
    cases = [dict(zip(["name", "loader", "block", "fetch", "read"], c, strict=True)) for c in CASES]
    cases = [c for c in cases if c["name"] in args.cases]
    for case in cases:
        needed = (whole_fetches(args.warmup, case) + whole_fetches(args.batches, case)) * args.batch_size
        if needed > args.cells:
            parser.error(f"{case['name']} needs --cells >= {needed} (warm-up and timed batches in one epoch).")
    options = ("batch_size", "batches", "min_seconds", "warmup", "seed", "workers", "region")
    opts = {k: getattr(args, k) for k in options}

    results: dict[tuple[str, str], list[dict]] = {}
    files, plans = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for compression in args.compression:
            path = Path(folder) / f"tiled-{compression}.h5ad"
            write_tiled(source, args.cells, path, None if compression == "none" else compression)
            files[compression] = {"size_mib": path.stat().st_size / 2**20}
            path.read_bytes()  # every case starts with the file in the page cache
            for case in cases:
                key = (case["loader"], case["block"], case["fetch"])
                if key not in plans:
                    plans[key] = epoch_rows(case, str(path), vocab.symbols, args.cells, opts)
            for _ in range(args.repeats):
                for case in cases:
                    result = _perf.run_isolated(measure, case, str(path), vocab.symbols, checks, opts)
                    planned = plans[case["loader"], case["block"], case["fetch"]][whole_fetches(args.warmup, case) :]
                    seen = result.pop("rows")
                    result["rows_follow_plan"] = all(
                        np.array_equal(np.sort(a), np.sort(b)) for a, b in zip(seen, planned, strict=False)
                    )
                    results.setdefault((compression, case["name"]), []).append(result)
                    print(f"{compression:5s} {case['name']:28s} {result['cells_per_s']:9.0f} cells/s", flush=True)

    rows = []
    for (compression, name), runs in results.items():
        case = next(c for c in cases if c["name"] == name)
        ours = results.get((compression, "ours"))
        mixing = randomness(plans[case["loader"], case["block"], case["fetch"]], checks["type_codes"], args.region)
        rows.append(
            {
                "file": compression,
                "loader": name,
                "block_size": case["block"] if case["loader"] in ("scdataset", "ours") else None,
                "fetch_factor": case["fetch"] if case["loader"] in ("scdataset", "ours") else None,
                "cells_per_s": statistics.median(r["cells_per_s"] for r in runs),
                "vs_ours": statistics.median(r["cells_per_s"] for r in runs)
                / statistics.median(r["cells_per_s"] for r in ours)
                if ours
                else None,
                "peak_increase_mib": max(r["peak_increase_mib"] for r in runs),
                "setup_s": statistics.median(r["setup_s"] for r in runs),
                "regions_per_batch": mixing["regions_per_batch"],
                "same_region_pairs": mixing["same_region_pair_fraction"],
                "types_sorted_by_type": mixing["cell_types_per_batch_sorted_by_type"],
                "types_barcode_order": mixing["cell_types_per_batch_barcode_order"],
                "distinct_source_cells": mixing["distinct_source_cells_per_batch"],
                "rows_correct": all(r["rows_hold_expected_counts"] and r["rows_follow_plan"] for r in runs),
                "runs": runs,
            }
        )
    print(
        f"\n{args.cells} cells (pbmc3k tiled), {len(columns)} matched genes, batches of {args.batch_size}, "
        f"at least {args.batches} timed batches and {args.min_seconds} s per case (whole fetches), median of "
        f"{args.repeats} fresh processes"
    )
    columns_shown = [
        "file",
        "loader",
        "cells_per_s",
        "vs_ours",
        "peak_increase_mib",
        "regions_per_batch",
        "same_region_pairs",
        "types_sorted_by_type",
        "types_barcode_order",
        "rows_correct",
    ]
    table = _perf.print_table(rows, columns_shown)
    payload = {
        "command": "python benchmarks/bench_training_loaders.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k not in ("cases", "out") or v != parser.get_default(k)
        ),
        "data": {
            "source": _perf.PBMC3K,
            "cells": args.cells,
            "genes": source.n_vars,
            "matched_genes": len(columns),
            "nnz_per_cell": source.X.nnz / source.n_obs,
            "files": files,
        },
        "versions": {
            "anndata": version("anndata"),
            "h5py": version("h5py"),
            "scipy": version("scipy"),
            "scdataset": version("scdataset"),
            "annbatch": "not installable: every release requires Python >= 3.12",
        },
        "machine": _perf.machine("cpu"),
        "results": rows,
        "table": table,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
