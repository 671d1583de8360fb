"""``panfoma`` command line: embed, annotate, integrate, models, pretrain, bench.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad input (clear message on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import shlex
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ._arguments import MAX_SEED
from ._paths import write_h5ad_atomically
from ._version import __version__
from .data.vocab import DEFAULT_MIN_CELLS

if TYPE_CHECKING:
    import pandas as pd

    from .train import TrainingConfig

__all__ = ["main"]

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
logger = logging.getLogger(__name__)


def _check_paths(inputs: Sequence[str | None], outputs: Sequence[str], save_model: str | None = None) -> None:
    """Refuse unreadable input files and output paths that cannot be written, before any work."""
    from ._paths import check_h5ad_input, check_writable

    for path in filter(None, inputs):
        check_h5ad_input(path)
    for path in outputs:
        check_writable(path, "output", suffix=".h5ad")
    if save_model is not None:
        check_writable(save_model, "--save-model", suffix=".safetensors")


def _open_input(path: str, layer: str | None, *, use_raw: bool = False):
    """``path`` with its matrices left on disk, so that the tools stream its cells and memory stays flat.

    ``X``, every layer and ``.raw``'s ``X`` are read a block of rows at a time (:func:`read_h5ad_lazily`; anndata's
    own backed mode would read every layer into memory). The one matrix the command reads (``X``, ``layer`` or
    ``raw/X``) is read into memory only when it is stored by column (CSC), which cannot be read cell by cell, with
    a warning that says how to store it so that it streams.
    """
    import anndata as ad

    from .data.lazy_h5ad import read_h5ad_lazily
    from .data.rows import csr_conversion, is_backed_column_major

    adata = read_h5ad_lazily(path)
    if use_raw:
        matrix, name = (adata.raw.X, "adata.raw.X") if adata.raw is not None else (None, "")
    elif layer is None:
        matrix, name = adata.X, "adata.X"
    else:
        matrix, name = adata.layers.get(layer), f"adata.layers[{layer!r}]"
    if matrix is not None and is_backed_column_major(matrix):
        logger.warning(
            "%s stores %s by column (CSC), which cannot be read cell by cell: reading all of it into memory. "
            "To stream it, store it as CSR once: adata = anndata.read_h5ad(path); %s; adata.write_h5ad(...).",
            path,
            name.removeprefix("adata."),
            csr_conversion(name),
        )
        in_memory = matrix.to_memory()
        if use_raw:
            adata.raw = ad.AnnData(X=in_memory, obs=adata.obs[[]], var=adata.raw.var)
        elif layer is None:
            adata.X = in_memory
        else:
            adata.layers[layer] = in_memory
    return adata


def _embed(args: argparse.Namespace) -> int:
    from . import tl
    from .tl._keys import embedding_keys

    _check_paths([args.input], [args.output])
    rank, world = _join_torchrun()
    adata = _open_input(args.input, args.layer, use_raw=args.use_raw)  # each process reads its cells from the file
    tl.embed(
        adata,
        args.model,
        layer=args.layer,
        use_raw=args.use_raw,
        gene_symbols=args.gene_symbols,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        n_genes=args.n_genes,
        key_added=args.key_added,
        seed=args.seed,
        progress=not args.quiet and rank == 0,
    )
    keys = embedding_keys(args.key_added)
    if rank == 0:
        results = [f"obsm/{keys.obsm}", f"uns/{keys.uns}"]
        _record_command(adata, keys.uns, args)
        write_h5ad_atomically(adata, args.output, results=results, source=args.input)
    _leave_torchrun(world)  # before the summary line, which may meet a closed pipe
    if rank == 0:
        processes = f" ({world} processes)" if world > 1 else ""
        print(f"Wrote {args.output}: obsm[{keys.obsm!r}] with shape {adata.obsm[keys.obsm].shape}{processes}.")
    return EXIT_OK


def _record_command(adata, key: str, args: argparse.Namespace) -> None:
    """Add the command line to the result's record (``uns[key]["params"]["command"]``), to rerun it as it was."""
    params = adata.uns[key].setdefault("params", {})
    params["command"] = args.command_line


def _join_torchrun() -> tuple[int, int]:
    """``(rank, world_size)``: joins the process group when ``torchrun`` started several processes."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    from .train import init_distributed

    rank, world = init_distributed()
    if rank > 0:  # the checks warn alike in every process: say it once
        logging.getLogger("panfoma_sc").setLevel(logging.ERROR)
    return rank, world


def _leave_torchrun(world: int) -> None:
    """Wait for every process (rank 0 may still be writing), then leave the process group."""
    if world > 1:
        from .train import finish_distributed

        finish_distributed()


def _annotate(args: argparse.Namespace) -> int:
    from . import tl

    if args.reference is None and args.labels_key is not None:
        msg = (
            f"--labels-key {args.labels_key} names a column of the reference, but only two files were given "
            f"(query {args.query}, output {args.output}): pass QUERY REFERENCE OUTPUT, or drop --labels-key to "
            "label with a fine-tuned --model's classes."
        )
        raise ValueError(msg)
    if args.reference is not None and Path(args.output).resolve() == Path(args.reference).resolve():
        msg = f"The output {args.output} is the reference file: it would be overwritten. Name another output file."
        raise ValueError(msg)
    output = Path(args.output)
    if args.reference is None and output.exists() and output.resolve() != Path(args.query).resolve():
        # QUERY REFERENCE with the output forgotten reads as QUERY OUTPUT: never overwrite what may be the reference
        msg = (
            f"Two files were given (query {args.query}, output {args.output}) and the output exists. If "
            f"{args.output} is the reference, pass QUERY REFERENCE OUTPUT; to label with a fine-tuned --model's "
            "classes into that file, remove it first (or name the query itself as the output)."
        )
        raise ValueError(msg)
    method = args.method or ("finetune" if args.reference is None else "knn")
    method_options = {"n_neighbors": (args.n_neighbors, "knn"), "max_epochs": (args.max_epochs, "finetune")}
    for name, (value, used_by) in method_options.items():
        if value is not None and method != used_by:
            logger.warning(
                "--%s applies to --method %s only: ignored with --method %s.", name.replace("_", "-"), used_by, method
            )
    method_settings = {name: value for name, (value, _) in method_options.items() if value is not None}
    _check_paths([args.query, args.reference], [args.output], args.save_model)
    query = _open_input(args.query, args.layer, use_raw=args.use_raw)
    reference = (
        _open_input(args.reference, args.reference_layer, use_raw=args.reference_use_raw) if args.reference else None
    )
    tl.annotate(
        query,
        reference,
        labels_key=args.labels_key,
        model=args.model,
        method=method,
        **method_settings,
        save_model=args.save_model,
        unknown_threshold=args.unknown_threshold,
        layer=args.layer,
        use_raw=args.use_raw,
        reference_layer=args.reference_layer,
        reference_use_raw=args.reference_use_raw,
        gene_symbols=args.gene_symbols,
        batch_size=args.batch_size,
        device=args.device,
        n_genes=args.n_genes,
        key_added=args.key_added,
        seed=args.seed,
        progress=not args.quiet,
    )
    _record_command(query, args.key_added, args)
    write_h5ad_atomically(query, args.output, results=["obs", f"uns/{args.key_added}"], source=args.query)
    counts = query.obs[args.key_added].value_counts()
    unknown = int(counts.get("Unknown", 0))
    used = int((counts.drop("Unknown", errors="ignore") > 0).sum())  # categories no cell got are not counted
    print(
        f"Wrote {args.output}: obs[{args.key_added!r}]: {query.n_obs - unknown} cells labelled with {used} "
        f"labels, {unknown} Unknown."
    )
    return EXIT_OK


def _integrate(args: argparse.Namespace) -> int:
    from . import tl

    _check_paths([args.input], [args.output], args.save_model)
    adata = _open_input(args.input, args.layer, use_raw=args.use_raw)
    tl.integrate(
        adata,
        args.batch_key,
        model=args.model,
        layer=args.layer,
        use_raw=args.use_raw,
        gene_symbols=args.gene_symbols,
        batch_size=args.batch_size,
        device=args.device,
        n_genes=args.n_genes,
        max_epochs=args.max_epochs,
        max_steps=args.max_steps,
        adversarial_weight=args.adversarial_weight,
        mmd_weight=args.mmd_weight,
        learning_rate=args.learning_rate,
        key_added=args.key_added,
        save_model=args.save_model,
        seed=args.seed,
        progress=not args.quiet,
    )
    results = [f"obsm/{args.key_added}", f"uns/{args.key_added}"]
    _record_command(adata, args.key_added, args)
    write_h5ad_atomically(adata, args.output, results=results, source=args.input)
    print(f"Wrote {args.output}: obsm[{args.key_added!r}] with shape {adata.obsm[args.key_added].shape}.")
    return EXIT_OK


def _checked(convert: type, check, **bounds):
    """An argparse ``type`` that converts the text and checks it as the Python API does, before any file is read."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            kind = "an integer" if convert is int else "a number"
            raise argparse.ArgumentTypeError(f"{kind} is expected, got {text!r}") from None
        try:
            check("value", value, **bounds)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix("value ")) from None
        return value

    return parse


def _integer(minimum: int, maximum: int | None = None):
    from ._arguments import require_integer

    return _checked(int, require_integer, minimum=minimum, maximum=maximum)


def _number(low: float, high: float | None = None, *, low_open: bool = False):
    from ._arguments import require_number

    return _checked(float, require_number, low=low, high=high, low_open=low_open)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="panfoma-tiny", help="registry name or checkpoint path")
    parser.add_argument("--layer", help="layer holding expression (default: X)")
    parser.add_argument("--use-raw", action="store_true", help="read expression and genes from .raw instead of X")
    parser.add_argument("--gene-symbols", help="var column with gene symbols")
    parser.add_argument("--batch-size", type=_integer(1), help="cells per forward pass")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: auto, a CUDA GPU if there is one)")
    parser.add_argument("--n-genes", type=_integer(1), help="genes per cell given to the model")
    parser.add_argument("--seed", type=_integer(0, MAX_SEED), default=0, help="random seed (gene draws, fine-tuning)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _fit_to_terminal(table: pd.DataFrame, *, column: str) -> str:
    """``table`` as text, ``column``'s entries shortened (ending in "...") so that each line fits the terminal."""
    width = shutil.get_terminal_size().columns
    text = table.to_string(index=False)
    widest = max(map(len, text.splitlines()))
    if widest <= width or column not in table:
        return text
    entries = table[column].astype(str)
    room = max(len(column), entries.str.len().max() - (widest - width))
    shortened = entries.where(entries.str.len() <= room, entries.str.slice(0, room - 3) + "...")
    return table.assign(**{column: shortened}).to_string(index=False)


def _models(args: argparse.Namespace) -> int:
    from . import models

    if args.models_command == "list":
        print(_fit_to_terminal(models.available(), column="description"))
    elif args.models_command == "describe":
        print(json.dumps(models.describe(args.name), indent=2, default=str))
    elif args.models_command == "register":
        entry = models.register(
            args.name, args.path_or_url, sha256=args.sha256, description=args.description, overwrite=args.overwrite
        )
        print(f"Registered {entry.name!r} (sha256 {entry.sha256}).")
    return EXIT_OK


def _pretrain(args: argparse.Namespace) -> int:
    from ._settings import settings
    from .data.vocab import GeneVocabulary
    from .train import (
        InvalidSettingError,
        build_vocabulary,
        check_resumable,
        default_excluded_cells,
        default_pretraining_files,
        finish_distributed,
        init_distributed,
        pretrain,
    )

    files = [Path(f) for f in args.files]
    _check_paths(args.files, [])
    if args.data_dir:
        if not Path(args.data_dir).is_dir():
            msg = f"--data-dir {args.data_dir!r} is not a folder."
            raise FileNotFoundError(msg)
        files += default_pretraining_files(args.data_dir)
    if args.gene_table and not Path(args.gene_table).is_file():
        msg = f"--gene-table {args.gene_table!r} is not a file: give a headerless ensembl_id,symbol CSV (GENCODE's)."
        raise FileNotFoundError(msg)
    if not files:
        msg = "No training files: pass .h5ad files and/or a --data-dir that holds some."
        raise ValueError(msg)
    exclude_cells = default_excluded_cells(files) if args.data_dir else {}
    for stem, columns in _parse_excluded_cells(args.exclude_cells).items():
        exclude_cells.setdefault(stem, {}).update(columns)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        msg = f"--out {args.out!r} is a file: give a folder for the run (it is created when missing)."
        raise ValueError(msg)
    vocab_file = out / "vocab.json"
    init_from = None
    if args.init_from:  # continue training a checkpoint: its vocabulary and architecture
        from .models import load

        start = load(args.init_from)
        init_from = str(start.path)
    try:
        config = _training_config(args, init_from, exclude_cells)  # validates the settings before anything is written
    except InvalidSettingError as err:
        flag = _PRETRAIN_FLAGS.get(err.setting, "--" + err.setting.replace("_", "-"))
        msg = f"{flag} must be {err.expected}, got {err.value!r}."
        raise ValueError(msg) from err
    settings.resolve_device(args.device)  # a device this machine lacks is refused before the vocabulary is written
    if not args.restart:
        check_resumable(out, config, files)  # before the vocabulary too
    rank, _ = init_distributed()
    resuming = not args.restart and (out / "state.pt").is_file()
    if args.init_from:
        vocab = start.vocab
    elif resuming and vocab_file.is_file():  # the run's own vocabulary, as --min-cells and --gene-table made it
        vocab = GeneVocabulary.from_json(vocab_file.read_text())
        _warn_of_unused_vocabulary_options(out / VOCAB_OPTIONS_FILE, args.min_cells, args.gene_table)
    else:  # a new run or --restart: built from these files and options, never an earlier run's vocab.json
        min_cells = DEFAULT_MIN_CELLS if args.min_cells is None else args.min_cells
        vocab = build_vocabulary(
            files, min_cells=min_cells, gene_table=args.gene_table, exclude_cells=config.exclude_cells
        )
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            vocab_file.write_text(vocab.to_json())
            options = {"min_cells": min_cells, "gene_table": args.gene_table}
            (out / VOCAB_OPTIONS_FILE).write_text(json.dumps(options, indent=2) + "\n")
    summary = pretrain(files, out, vocab=vocab, config=config, resume=not args.restart, progress=not args.quiet)
    finish_distributed()
    if rank == 0:
        print(json.dumps(summary, indent=2))
    return EXIT_OK


#: the ``panfoma pretrain`` options its vocabulary was built with, beside ``vocab.json``
VOCAB_OPTIONS_FILE = "vocab_options.json"


def _warn_of_unused_vocabulary_options(saved: Path, min_cells: int | None, gene_table: str | None) -> None:
    """Say so when a resumed run is given other ``--min-cells`` / ``--gene-table`` than it was started with.

    ``None``: the option was not given.
    """
    if not saved.is_file():  # a run of an earlier release
        logger.info("Resuming with the run's vocab.json (--min-cells, --gene-table unused).")
        return
    then = json.loads(saved.read_text())
    changed = [
        f"{flag} {now!r} (the run's: {then.get(key)!r})"
        for flag, key, now in (("--min-cells", "min_cells", min_cells), ("--gene-table", "gene_table", gene_table))
        if now is not None and now != then.get(key)
    ]
    if changed:
        logger.warning(
            "Resuming keeps the run's vocabulary (vocab.json, the model's gene table), so %s has no effect. "
            "Pass --restart to build a new vocabulary and start over.",
            " and ".join(changed),
        )


#: ``TrainingConfig`` fields whose ``panfoma pretrain`` flag is not the field name with dashes
_PRETRAIN_FLAGS = {
    "max_steps": "--steps",
    "learning_rate": "--lr",
    "warmup_steps": "--warmup",
    "contrastive_weight": "--contrastive",
}


def _parse_excluded_cells(entries: list[str]) -> dict[str, dict[str, list[str]]]:
    """``--exclude-cells FILE:COLUMN=VALUE[,VALUE...]`` entries as ``{file: {column: values}}``."""
    parsed: dict[str, dict[str, list[str]]] = {}
    for entry in entries:
        stem, _, selection = entry.partition(":")
        column, _, values = selection.partition("=")
        if not (stem and column and values):
            msg = (
                f"--exclude-cells {entry!r}: write FILE:COLUMN=VALUE[,VALUE...], the file name without .h5ad, e.g. "
                "--exclude-cells lung_celllines:batch=Drop-seq."
            )
            raise ValueError(msg)
        parsed.setdefault(Path(stem).stem if stem.endswith(".h5ad") else stem, {})[column] = values.split(",")
    return parsed


def _training_config(
    args: argparse.Namespace, init_from: str | None, exclude_cells: dict[str, dict[str, list[str]]]
) -> TrainingConfig:
    from .train import TrainingConfig

    return TrainingConfig(
        architecture=args.architecture,
        n_genes=args.n_genes,
        batch_size=args.batch_size,
        block_rows=args.block_rows,
        cells_per_read=args.cells_per_read,
        interleave=args.interleave,
        exclude_cells=exclude_cells,
        grad_accumulation=args.grad_accumulation,
        activation_checkpointing=args.activation_checkpointing or None,
        max_steps=args.steps,
        learning_rate=args.lr,
        warmup_steps=args.warmup,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        seed=args.seed,
        device=args.device,
        max_minutes=args.max_minutes,
        mvc_genes=args.mvc_genes,
        contrastive_weight=args.contrastive,
        value_encoding=args.value_encoding,
        gene_selection=args.gene_selection,
        init_from=init_from,
        gene_init=args.gene_init,
        gene_init_steps=args.gene_init_steps,
        freeze_gene_embedding=args.freeze_gene_embedding,
        model_overrides={
            name: value
            for name, value in (("cell_readout", args.cell_readout), ("mvc_head", args.mvc_head))
            if value is not None
        },
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``panfoma``."""
    parser = argparse.ArgumentParser(prog="panfoma", description="PanFoMa single-cell foundation model.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    embed = commands.add_parser(
        "embed", help="embed the cells of an .h5ad file into obsm (torchrun: processes share the cells)"
    )
    embed.add_argument("input", help="input .h5ad (raw counts or log1p-normalized)")
    embed.add_argument("output", help="output .h5ad (input plus the embedding)")
    _add_model_options(embed)
    embed.add_argument("--key-added", help="obsm/uns key (default X_panfoma / panfoma)")
    embed.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        help="auto: bf16 autocast on CUDA GPUs of compute capability 8.0+, fp32 elsewhere (default)",
    )
    embed.set_defaults(func=_embed)

    annotate = commands.add_parser(
        "annotate",
        help="transfer cell labels from a labelled reference .h5ad",
        description="Label the query's cells from a labelled reference (kNN in the embedding, or a fine-tuned "
        "classifier). Writes obs[KEY] and obs[KEY_confidence].",
    )
    annotate.add_argument("query", help="query .h5ad to label")
    annotate.add_argument("reference", nargs="?", help="labelled reference .h5ad (omit with a fine-tuned --model)")
    annotate.add_argument("output", help="output .h5ad (query plus the labels)")
    annotate.add_argument("--labels-key", help="reference obs column with the labels")
    annotate.add_argument(
        "--method",
        choices=["knn", "logreg", "finetune"],
        help="knn (default with a reference), logreg, or finetune (the default without one: a fine-tuned --model)",
    )
    annotate.add_argument("--n-neighbors", type=_integer(1), help="reference neighbours per cell (knn; default 15)")
    annotate.add_argument("--max-epochs", type=_integer(1), help="fine-tuning epochs at most (finetune; default 15)")
    annotate.add_argument("--save-model", help="write the fine-tuned model to this .safetensors file (finetune)")
    annotate.add_argument("--unknown-threshold", type=_number(0, 1), default=0.5, help="below this confidence: Unknown")
    annotate.add_argument("--reference-layer", help="reference layer holding expression (default: X)")
    annotate.add_argument("--reference-use-raw", action="store_true", help="read the reference from its .raw")
    annotate.add_argument("--key-added", default="panfoma_label", help="obs column of the labels")
    _add_model_options(annotate)
    annotate.set_defaults(func=_annotate)

    integrate = commands.add_parser(
        "integrate",
        help="batch-corrected embedding of an .h5ad with a batch column",
        description="Fine-tune the model on the data with batch removal and write the integrated embedding.",
    )
    integrate.add_argument("input", help="input .h5ad with a batch column in obs")
    integrate.add_argument("output", help="output .h5ad (input plus the integrated embedding)")
    integrate.add_argument("--batch-key", required=True, help="obs column with each cell's batch")
    integrate.add_argument("--max-epochs", type=_integer(1), default=4, help="fine-tuning passes over the cells")
    integrate.add_argument("--max-steps", type=_integer(1), help="cap on fine-tuning steps")
    weight, rate = _number(0), _number(0, low_open=True)
    integrate.add_argument(
        "--adversarial-weight", type=weight, default=1.0, help="weight of the batch discriminator's terms (0: off)"
    )
    integrate.add_argument(
        "--mmd-weight",
        type=weight,
        default=10.0,
        help="weight of the batch-MMD term, which pulls batches together; lower it (or 0) when the batches hold "
        "different cell populations",
    )
    integrate.add_argument("--learning-rate", type=rate, default=1e-4, help="fine-tuning learning rate")
    integrate.add_argument("--key-added", default="X_panfoma_integrated", help="obsm key of the result")
    integrate.add_argument("--save-model", help="write the fine-tuned model to this .safetensors file")
    _add_model_options(integrate)
    integrate.set_defaults(func=_integrate)

    models = commands.add_parser("models", help="list, describe or register checkpoints")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    models_commands.add_parser("list", help="registered checkpoints")
    describe = models_commands.add_parser("describe", help="config, parameter count and training summary")
    describe.add_argument("name", nargs="?", default="panfoma-tiny")
    register = models_commands.add_parser("register", help="add a checkpoint file or URL to your registry")
    register.add_argument("name")
    register.add_argument("path_or_url")
    register.add_argument("--sha256", help="expected checksum of the file (required for a URL)")
    register.add_argument("--description", default="", help="one line shown by models list")
    register.add_argument("--overwrite", action="store_true", help="replace a checkpoint registered under this name")
    models.set_defaults(func=_models)

    pre = commands.add_parser("pretrain", help="pretrain a model on .h5ad files (torchrun for several processes)")
    pre.add_argument("files", nargs="*", help=".h5ad training files")
    pre.add_argument(
        "--data-dir",
        help="also use every file of this folder not held out for evaluation (their evaluation cells left out)",
    )
    pre.add_argument(
        "--exclude-cells",
        action="append",
        default=[],
        metavar="FILE:COLUMN=VALUE[,VALUE]",
        help="never train on the cells of FILE (name without .h5ad) with these obs[COLUMN] values; repeatable",
    )
    pre.add_argument("--out", required=True, help="output folder (resumed when it holds state.pt)")
    pre.add_argument(
        "--architecture",
        default="panfoma-tiny",
        help="width and depth of a new model (the bundled panfoma-tiny checkpoint also changed some defaults: see "
        "its model card)",
    )
    pre.add_argument(
        "--n-genes",
        type=int,
        default=256,
        help="genes per cell while training (embedding with the checkpoint reads the architecture's n_genes, 1024 "
        "for panfoma-tiny, unless embed is given --n-genes)",
    )
    pre.add_argument("--batch-size", type=int, default=32, help="cells per optimizer step and process")
    pre.add_argument(
        "--block-rows",
        type=int,
        default=1,
        help="shuffle blocks of this many consecutive rows (1: single rows); 16 reads gzip files ~8x faster",
    )
    pre.add_argument("--cells-per-read", type=int, default=2048, help="cells read from a file at once, at most")
    pre.add_argument(
        "--interleave", type=int, default=4, help="with --block-rows > 1: reads whose batches are dealt in turn"
    )
    pre.add_argument("--grad-accumulation", type=int, default=1, help="batches summed into one optimizer step")
    pre.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="recompute layer activations in the backward pass: about a third of the memory, up to 1.2x the time",
    )
    pre.add_argument("--steps", type=int, default=1000, help="optimizer steps (the LR schedule spans them)")
    pre.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine decay after the warm-up)")
    pre.add_argument("--warmup", type=int, default=100, help="warm-up steps of the learning rate")
    pre.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (state.pt)")
    pre.add_argument("--log-every", type=int, default=10, help="steps per line of the loss history")
    pre.add_argument(
        "--min-cells", type=int, help=f"vocabulary: genes expressed in >= this many cells (default {DEFAULT_MIN_CELLS})"
    )
    pre.add_argument("--gene-table", help="headerless CSV ensembl_id,symbol to record Ensembl IDs in the vocabulary")
    pre.add_argument(
        "--mvc-genes",
        type=int,
        help="MVC targets: this many extra genes per cell, half not expressed (default: masked)",
    )
    pre.add_argument(
        "--contrastive",
        type=float,
        default=0.0,
        help="weight of the two-view InfoNCE term on cell embeddings (0 = off)",
    )
    pre.add_argument("--value-encoding", choices=["rank", "presence"], default="rank", help="value tokens")
    pre.add_argument("--gene-selection", choices=["random", "top"], default="random", help="genes kept per cell")
    pre.add_argument(
        "--cell-readout",
        choices=["decoder", "decoder+tokens", "decoder+expressed"],
        help=(
            "cell embedding from the decoder alone, or also from the mean of all or of the expressed input tokens "
            "(default: the architecture's)"
        ),
    )
    pre.add_argument(
        "--mvc-head",
        choices=["concat", "bilinear"],
        help="MVC head: MLP on [cell, gene] or bilinear in cell and gene (default: the architecture's)",
    )
    pre.add_argument(
        "--gene-init",
        choices=["random", "corpus-svd", "corpus-contrastive"],
        default="random",
        help="gene-embedding start: random, TF-IDF SVD loadings of the training cells' top-gene sets, or a "
        "bag-of-genes encoder trained contrastively to tell those cells apart",
    )
    pre.add_argument(
        "--gene-init-steps", type=int, default=8000, help="optimizer steps of the corpus-contrastive gene table"
    )
    pre.add_argument("--freeze-gene-embedding", action="store_true", help="keep the gene-embedding table fixed")
    pre.add_argument("--init-from", help="continue from this checkpoint (registry name or path) and its vocabulary")
    pre.add_argument("--max-minutes", type=float, help="stop and checkpoint after this wall time")
    pre.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: auto, a CUDA GPU if there is one)")
    pre.add_argument("--seed", type=_integer(0, MAX_SEED), default=0, help="seed of weights, data order and masks")
    pre.add_argument(
        "--restart", action="store_true", help="start over: ignore an existing state.pt and rebuild the vocabulary"
    )
    pre.add_argument("--quiet", action="store_true", help="no progress bar")
    pre.set_defaults(func=_pretrain)

    from ._bench_cli import add_bench_parser

    add_bench_parser(commands)
    _accept_verbose_after_subcommands(parser)
    _show_defaults(parser)
    return parser


class _HelpWithDefaults(argparse.HelpFormatter):
    """Help that ends an option's text with its default, unless there is none or the text gives it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default in (None, False, [], argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every (sub)command's help shows its options' defaults."""
    parser.formatter_class = _HelpWithDefaults
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                _show_defaults(subparser)


def _accept_verbose_after_subcommands(parser: argparse.ArgumentParser) -> None:
    """Let ``-v`` follow any (sub)command too: ``panfoma embed in.h5ad out.h5ad -v``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                subparser.add_argument(
                    "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log progress details"
                )
                _accept_verbose_after_subcommands(subparser)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    A reader that closes the output early (``panfoma models describe NAME | head -3``) ends the command
    quietly with exit code 0, as the output it asked for was written. Ctrl-C and SIGTERM (``timeout``, a batch
    scheduler, ``docker stop``) stop it as an error does: no output file is left half written, and the exit code
    is 128 + the signal's number (130, 143).
    """
    try:
        try:
            with _sigterm_as_exit():
                return _dispatch(argv)
        finally:
            # buffered output is written here, not at interpreter exit, so that a closed pipe is caught below
            sys.stdout.flush()
    except KeyboardInterrupt:
        print("panfoma: interrupted", file=sys.stderr)
        return 128 + 2
    except BrokenPipeError:
        if not _stdout_is_closed_pipe():
            print("panfoma: failed: BrokenPipeError: a pipe other than the output closed", file=sys.stderr)
            return EXIT_FAILURE
        import os

        # the rest of the output has no reader: send it (and the flush at exit) to devnull
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM raises ``SystemExit(143)`` meanwhile, so that cleanup runs (a half-written output is removed)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return

    def stop(signum: int, frame: object) -> None:
        print("panfoma: terminated", file=sys.stderr)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _dispatch(argv: Sequence[str] | None) -> int:
    """Parse the arguments and run the command; input errors exit 2, other failures 1 (a closed pipe propagates)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["panfoma", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    options = _command_options(parser, args)
    wording = _OptionWording(options)
    handlers = logging.getLogger().handlers
    for handler in handlers:
        handler.addFilter(wording)
    try:
        return args.func(args)
    except BrokenPipeError:
        raise
    except (ValueError, KeyError, FileNotFoundError, PermissionError, ModuleNotFoundError) as err:
        message = str(err.args[0] if isinstance(err, KeyError) and err.args else err)
        print(f"panfoma: error: {_as_options(_as_register_command(message), options)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:
        print(f"panfoma: failed: {type(err).__name__}: {_as_register_command(str(err))}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        for handler in handlers:
            handler.removeFilter(wording)


class _OptionWording(logging.Filter):
    """Words the tools' logged hints (``key_added='<name>'``) as the command's options, as their errors are."""

    def __init__(self, options: set[str]) -> None:
        super().__init__()
        self.options = options

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("panfoma_sc"):
            record.msg, record.args = _as_options(record.getMessage(), self.options), None
        return True


def _command_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> set[str]:
    """The long options of the command that ran (``--layer``, ``--gene-symbols``, ...), subcommands' included."""
    options = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(args, action.dest, None))
            if chosen is not None:  # e.g. models -> register: --sha256, --overwrite
                options |= _command_options(chosen, args)
    return {option for option in options if option.startswith("--")}


#: ``name='value'`` or ``name=value`` in a message written for Python callers
_PYTHON_ARGUMENT = re.compile(r"\b([a-z][a-z0-9_]*)=(?:'([^']*)'|([^\s,;)']+))")


#: a snake_case argument name on its own (``n_neighbors``), not an attribute (``adata.obs_names``), key or call
_PYTHON_NAME = re.compile(r"(?<![\w.'\"\[-])([a-z][a-z0-9]*(?:_[a-z0-9]+)+)(?![\w('\"\]=-])")


def _as_options(message: str, options: set[str]) -> str:
    """Python-style hints of the tools' messages (``layer='counts'``, ``n_neighbors``) worded as the command's options.

    Only names that are options of the command are reworded; snake_case argument names standing alone are too.
    """

    def option(match: re.Match) -> str:
        flag = "--" + match.group(1).replace("_", "-")
        if flag not in options:
            return match.group(0)
        text = match.group(0)
        end = text[len(text.rstrip(".")) :]  # a sentence's full stop after an unquoted value stays
        value = match.group(2) if match.group(2) is not None else match.group(3).rstrip(".")
        if value in ("None", "False"):
            return f"no {flag}{end}"
        if value == "True":  # a switch
            return f"{flag}{end}"
        placeholder = value == "" or (value.startswith("<") and value.endswith(">"))  # '<another name>', ''...
        return f"{flag} {value if placeholder else shlex.quote(value)}{end}"  # as a shell takes it ('my layer')

    message = _PYTHON_ARGUMENT.sub(option, message)

    def bare(match: re.Match) -> str:
        flag = "--" + match.group(1).replace("_", "-")
        named = flag in options and flag not in message  # a message naming both already ("min_cells (--min-cells)")
        return flag if named else match.group(0)

    return _PYTHON_NAME.sub(bare, message)


#: the registry's advice for Python callers: ``pf.models.register('name', 'path', sha256='...', overwrite=True)``
_REGISTER_CALL = re.compile(r"pf\.models\.register\(([^()]*)\)")


def _as_register_command(message: str) -> str:
    """The registry's ``pf.models.register(...)`` advice worded as the ``panfoma models register`` command."""
    import shlex

    def command(match: re.Match) -> str:
        words = ["panfoma models register"]
        for argument in (part.strip() for part in match.group(1).split(", ")):
            key, equals, value = argument.partition("=")
            if not equals:  # positional: a quoted value, or a placeholder such as name / path_or_url
                quoted = len(key) > 1 and key[0] == key[-1] == "'"
                words.append(shlex.quote(key[1:-1]) if quoted else key.upper())
            elif key == "overwrite":
                words.append("--overwrite")
            else:  # sha256='...' or the placeholder sha256=...
                value = value.strip("'")
                words.append(f"--{key.replace('_', '-')} {key.upper() if value == '...' else value}")
        return " ".join(words)

    return _REGISTER_CALL.sub(command, message)


def _stdout_is_closed_pipe() -> bool:
    """Whether stdout is a pipe whose reader has gone (``| head``), as opposed to another broken pipe."""
    import select

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without a file descriptor
        return False
    if not hasattr(select, "poll"):  # Windows: no poll() to ask; stdout is by far the likeliest pipe
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))


if __name__ == "__main__":
    sys.exit(main())
