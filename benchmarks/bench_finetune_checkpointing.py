"""Fine-tuning end to end with and without activation checkpointing: wall time and peak memory.

``pf.tl.integrate`` (150 lung cell-line cells, two batches, batch 32, 4 epochs) and
``pf.tl.annotate(method="finetune")`` (256 pbmc3k reference cells, 64 query cells, batch 32, 2 epochs), each call
in a fresh process; ``--rounds`` rounds, the order of the two settings alternating between rounds. Peak memory is
the increase of the process's peak RSS over the loaded model and data (CPU) or ``torch.cuda.max_memory_allocated``;
on CPU, ``held_after_mib`` is how much of it the process still holds once the call has returned.

Usage::

    python benchmarks/bench_finetune_checkpointing.py --threads 2 --rounds 2

Prints a table and writes ``benchmarks/results/finetune-checkpointing-<device>.json``.
"""

from __future__ import annotations

import argparse
import logging
import time

import _perf
import numpy as np

LUNG = "lung_celllines_3cl_celseq2_dropseq.h5ad"
PBMC = "pbmc3k_allgenes_celltypes.h5ad"


def measure(task: str, checkpointing: bool, opts: dict) -> dict:
    """One tool call in this fresh process."""
    import anndata as ad

    import panfoma_sc as pf

    logging.disable(logging.WARNING)
    _perf.set_threads(opts["threads"])
    pf.settings.activation_checkpointing = checkpointing
    rng = np.random.default_rng(0)
    model = pf.models.load("panfoma-tiny")
    if task == "integrate":
        cells = ad.read_h5ad(_perf.data_path(LUNG))
        cells = cells[rng.choice(cells.n_obs, 150, replace=False)].copy()

        def call() -> None:
            pf.tl.integrate(cells, "batch", model=model, batch_size=32, device=opts["device"], progress=False)
    else:
        cells = ad.read_h5ad(_perf.data_path(PBMC))
        order = rng.permutation(cells.n_obs)
        reference, query = cells[order[:256]].copy(), cells[order[256:320]].copy()

        def call() -> None:
            options = {"max_epochs": 2, "batch_size": 32, "device": opts["device"], "progress": False}
            pf.tl.annotate(query, reference, labels_key="cell_type", model=model, method="finetune", **options)

    baseline = _perf.current_rss_mib()
    with _perf.PeakMemory(opts["device"], baseline=baseline) as memory:
        start = time.perf_counter()
        call()
        _perf.synchronize(opts["device"])
        seconds = time.perf_counter() - start
    row = {
        "task": task,
        "checkpointing": checkpointing,
        "seconds": round(seconds, 1),
        "peak_increase_mib": round(memory.increase),
    }
    if opts["device"] == "cpu":  # what the process still holds once the call has returned
        row["held_after_mib"] = round(_perf.current_rss_mib() - baseline)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    opts = {"device": args.device, "threads": args.threads}
    rows = []
    for round_ in range(args.rounds):
        for task in ("integrate", "annotate"):
            for checkpointing in (False, True) if round_ % 2 == 0 else (True, False):
                row = _perf.run_isolated(measure, task, checkpointing, opts) | {"round": round_}
                rows.append(row)
                print(row, flush=True)
    print()
    columns = ["task", "checkpointing", "round", "seconds", "peak_increase_mib"]
    table = _perf.print_table(rows, columns + (["held_after_mib"] if args.device == "cpu" else []))
    _perf.set_threads(args.threads)
    _perf.write_json(
        f"finetune-checkpointing-{args.device}",
        {"arguments": vars(args), "machine": _perf.machine(args.device), "rows": rows, "table": table},
    )


if __name__ == "__main__":
    main()
