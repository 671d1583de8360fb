"""Training-step time and peak memory (forward, backward, AdamW step) of PanFoMa and the equal-size baselines.

Every model gets the same masked-value objective: 15% of the value tokens are replaced by the mask bin and a
:class:`~panfoma_sc.nn.ValueHead` predicts their bins from the per-gene states. Each model runs in its own
process (so peak memories do not mix); ratios are to PanFoMa in the same run.

Usage::

    python benchmarks/bench_training.py --threads 1
    python benchmarks/bench_training.py --threads 2 --batch-size 32 --activation-checkpointing
    python benchmarks/bench_training.py --device cuda --architecture panfoma-base --batch-size 32 --dtype bf16

Prints a table and writes ``benchmarks/results/training-<architecture>-<device>.json``.
"""

from __future__ import annotations

import _perf
import torch
import torch.nn.functional as F

from panfoma_sc.nn import ValueHead


def measure_step(name: str, architecture: str, n_genes: int, batch_size: int, opts: dict) -> dict:
    """Median time and peak memory of one training step of one model, in this fresh process."""
    device = opts["device"]
    _perf.set_threads(opts["threads"])
    config = _perf.config_for(architecture)
    model = _perf.build(name, config, device).train()
    if opts.get("checkpointing"):
        model.activation_checkpointing = True
    head = ValueHead(config).to(device)
    optimizer = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=1e-4)
    ids, bins, padding = _perf.random_tokens(config, batch_size, n_genes, device)
    generator = torch.Generator().manual_seed(1)
    masked = (torch.rand(bins.shape, generator=generator) < 0.15).to(device)
    inputs = bins.masked_fill(masked, config.n_bins)  # the mask bin

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _perf.autocast(device, opts["dtype"]):
            states = model(ids, inputs, padding).gene_states  # (B, N, D)
            logits = head(states)[masked.reshape(batch_size, -1)]
        F.cross_entropy(logits.float(), bins.reshape(batch_size, -1)[masked.reshape(batch_size, -1)]).backward()
        optimizer.step()

    baseline = _perf.current_rss_mib()
    with _perf.PeakMemory(device, baseline=baseline) as memory:
        seconds = _perf.median_seconds(step, repeats=opts["repeats"], device=device, warmup=1)
    return {
        "model": name + (", activation checkpointing" if opts.get("checkpointing") else ""),
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds_per_step": seconds,
        "cells_per_s": batch_size / seconds,
        "peak_mib": memory.peak,
        "peak_increase_mib": memory.increase,
    }


def main() -> None:
    parser = _perf.model_parser(__doc__.splitlines()[0], batch_size=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--activation-checkpointing", action="store_true", help="also PanFoMa with activation checkpointing"
    )
    args = parser.parse_args()
    _perf.set_threads(args.threads)
    n_genes = args.n_genes or _perf.config_for(args.architecture).n_genes
    opts = {"device": args.device, "dtype": args.dtype, "threads": args.threads, "repeats": args.repeats}
    rows = [
        _perf.run_isolated(measure_step, name, args.architecture, n_genes, args.batch_size, opts)
        for name in _perf.MODELS
    ]
    if args.activation_checkpointing:
        checkpointed = opts | {"checkpointing": True}
        shape = (args.architecture, n_genes, args.batch_size)
        rows.append(_perf.run_isolated(measure_step, "panfoma", *shape, checkpointed))
    for row in rows:
        row["time_ratio_to_panfoma"] = row["seconds_per_step"] / rows[0]["seconds_per_step"]
        row["memory_ratio_to_panfoma"] = row["peak_increase_mib"] / max(rows[0]["peak_increase_mib"], 1e-9)
    shape = f"{args.batch_size} cells x {n_genes} genes"
    print(f"\n{args.architecture} training step, {shape}, {args.device} {args.dtype}\n")
    columns = ["model", "seconds_per_step", "time_ratio_to_panfoma", "peak_increase_mib", "memory_ratio_to_panfoma"]
    table = _perf.print_table(rows, columns)
    _perf.write_json(
        f"training-{args.architecture}-{args.device}"
        + (f"-checkpointing-{n_genes}genes" if args.activation_checkpointing else ""),
        {
            "architecture": args.architecture,
            "n_genes": n_genes,
            "arguments": vars(args),
            "machine": _perf.machine(args.device),
            "results": rows,
            "table": table,
        },
    )


if __name__ == "__main__":
    main()
