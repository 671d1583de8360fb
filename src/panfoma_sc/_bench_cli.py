"""``panfoma bench run|report``: the benchmark from the command line."""

from __future__ import annotations

import argparse
import shlex
import sys

__all__ = ["add_bench_parser"]


def _run(args: argparse.Namespace) -> int:
    import pandas as pd

    from .bench._harness import run

    command = "panfoma " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if args.record_command else None
    canonical = f"panfoma bench run {shlex.quote(str(args.config))} --out {shlex.quote(str(args.out))}"
    results = run(args.config, args.out, command=command or canonical)
    status = results["status"] if "status" in results else pd.Series(dtype=object)
    ok = int((status == "ok").sum())
    print(f"Wrote {args.out}: results.csv ({ok} of {len(results)} rows ok), report.md, figures/.")
    failed = results[status == "failed"]
    if len(failed):
        rows = ", ".join(f"{row.dataset}/{row.task}/{row.method}" for row in failed.itertuples())
        print(f"{len(failed)} rows failed (their reason is in results.csv): {rows}", file=sys.stderr)
        if args.strict:
            return 1
    return 0


def _report(args: argparse.Namespace) -> int:
    from .bench._report import render_report

    print(render_report(args.folder))
    return 0


def add_bench_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``bench run CONFIG --out DIR`` and ``bench report DIR`` to the ``panfoma`` parser."""
    bench = commands.add_parser("bench", help="PanFoMaBench: run a benchmark config, render its report")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    run = bench_commands.add_parser(
        "run",
        help="build the datasets of CONFIG, run its tasks and methods, write results and figures",
        description="Run a benchmark config (.toml/.json/.yaml) and write results.csv, results.md, report.md, "
        "per_class_f1.csv, run.json, manifests/ and figures/ into --out.",
    )
    run.add_argument(
        "config",
        help="benchmark config file, or the name of a config that ships with panfoma-sc: panfomabench (the docs' "
        "run, sized for a 2-core CPU) or panfomabench-gpu",
    )
    run.add_argument("--out", required=True, help="output folder")
    run.add_argument(
        "--record-command", action="store_true", help="record the exact command line (default: a canonical one)"
    )
    run.add_argument(
        "--strict", action="store_true", help="exit with status 1 when a method failed (default: 0, failures noted)"
    )
    run.set_defaults(func=_run)
    report = bench_commands.add_parser("report", help="render the markdown report and figures of a run's folder")
    report.add_argument("folder", help="output folder of `panfoma bench run`")
    report.set_defaults(func=_report)
