"""Turn a pretraining run into the bundled ``panfoma-tiny`` checkpoint and its registry entry.

Writes float16 weights to ``src/panfoma_sc/models/weights/panfoma-tiny.safetensors`` (the run's float32
checkpoint is twice the size for no measurable change in embeddings) with the inference defaults (``n_genes``,
gene selection, value encoding) chosen on labelled files of the training corpus (never on the held-out
evaluation sets), and updates ``src/panfoma_sc/models/registry.json``.

With ``--metrics`` the held-out evaluation (``evaluate_panfoma_tiny.py``'s CSV) is stored in the checkpoint's
metadata (``info["metrics"]``, shown by ``pf.models.describe``). ``--metrics`` or ``--gene-table`` without a run
folder update the bundled checkpoint as it is: the weights are copied byte for byte, only the metadata and so the
sha256 change. ``--gene-table`` (a headerless ``ensembl_id,symbol`` CSV such as GENCODE's) records every Ensembl ID
of each vocabulary symbol, so that data indexed by any of them match.

Usage (from the repository root)::

    python docs/model_cards/package_panfoma_tiny.py runs/panfoma-tiny-v1 --n-genes 256 --version 1.1 \
        --metrics docs/model_cards/panfoma-tiny-eval.csv
    python docs/model_cards/package_panfoma_tiny.py --metrics docs/model_cards/panfoma-tiny-eval.csv
    python docs/model_cards/package_panfoma_tiny.py --gene-table ../shared/data/genes/GENCODEv44_gene_id_to_name.csv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from panfoma_sc.data.vocab import GeneVocabulary, normalize_gene_name
from panfoma_sc.models import read_checkpoint, sha256sum, write_checkpoint
from panfoma_sc.nn import PanFoMa
from panfoma_sc.train import ensembl_ids_by_symbol

PACKAGE = Path("src/panfoma_sc/models")
TARGET = PACKAGE / "weights" / "panfoma-tiny.safetensors"
EVALUATION = "docs/model_cards/evaluate_panfoma_tiny.py --n-genes 256 --max-cells 500 --subsample-seeds 0 1 2"
#: the evaluation's method labels, by the key they get in the metadata
METHODS = {
    "trained": "PanFoMa trained",
    "random_weights": "PanFoMa random weights",
    "pca_hvg": "PCA(50) on HVGs",
}


def held_out_metrics(table: Path) -> dict:
    """Held-out kNN accuracy and AvgBIO per dataset and method, from ``evaluate_panfoma_tiny.py``'s CSV."""
    rows = pd.read_csv(table)
    datasets = {}
    for dataset, group in rows.groupby("dataset", sort=False):
        scores = {}
        for key, label in METHODS.items():
            match = group[group["method"].str.startswith(label)]
            if len(match) != 1:
                msg = f"{table}: expected one {label!r} row for {dataset}, found {len(match)}."
                raise ValueError(msg)
            row = match.iloc[0]
            scores[key] = {
                "knn_accuracy": round(float(row["knn_accuracy"]), 3),
                "avg_bio": round(float(row["avg_bio"]), 3),
                "runs": int(row["runs"]),
            }
        first = group.iloc[0]
        n_reference = int(first["n_reference"]) if "n_reference" in group else 0
        datasets[str(dataset)] = {"n_cells": int(first["n_cells"]), "n_reference": n_reference, **scores}
    return {
        "held_out": datasets,
        "protocol": (
            "Cells never used in pretraining: whole datasets (n_reference 0; kNN folds within them) and held-out "
            "batches of datasets whose other batch was pretraining data without its labels (the kNN reference, "
            "n_reference cells; AvgBIO on the held-out batch). kNN (k=15) label-transfer accuracy and scib-metrics "
            "AvgBIO, mean over 500-cell subsamples (seeds 0, 1, 2; random weights: also 3 initialisations). See "
            "the model card."
        ),
        "command": f"python {EVALUATION}",
    }


def update_bundled(metrics: Path | None, gene_table: Path | None) -> str:
    """Store ``held_out_metrics(metrics)`` and/or the vocabulary's Ensembl IDs from ``gene_table`` in the bundled
    checkpoint's metadata, weights untouched; returns its sha256."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(TARGET), framework="numpy") as handle:
        metadata = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open has no iterator)
    if metrics is not None:
        info = json.loads(metadata["info"])
        info["metrics"] = held_out_metrics(metrics)
        metadata["info"] = json.dumps(info)
    if gene_table is not None:
        vocab = GeneVocabulary.from_json(metadata["vocab"])
        ids_of = ensembl_ids_by_symbol(gene_table)
        ensembl_ids = [ids_of.get(normalize_gene_name(symbol), "") for symbol in vocab.symbols]
        metadata["vocab"] = GeneVocabulary(vocab.symbols, ensembl_ids).to_json()
    partial = TARGET.with_suffix(".partial")
    save_file(tensors, str(partial), metadata=metadata)
    partial.replace(TARGET)
    return sha256sum(TARGET)


def update_registry(digest: str, **changes: object) -> dict:
    """Set the bundled entry's sha256 and size (and ``changes``) in ``registry.json``; returns the entry."""
    registry = PACKAGE / "registry.json"
    entries = json.loads(registry.read_text())
    entry = next(e for e in entries if e["name"] == "panfoma-tiny")
    entry.update(changes, sha256=digest, size=TARGET.stat().st_size)
    registry.write_text(json.dumps(entries, indent=2) + "\n")
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, nargs="?", help="pretraining output folder (model.safetensors, history.csv)")
    parser.add_argument("--n-genes", type=int, help="default genes per cell at inference (with a run)")
    parser.add_argument("--gene-selection", default="top", choices=["top", "random"], help="default at inference")
    parser.add_argument("--value-encoding", default="presence", choices=["presence", "rank"], help="at inference")
    parser.add_argument("--version", default="1")
    parser.add_argument("--metrics", type=Path, help="evaluate_panfoma_tiny.py's CSV, stored in the metadata")
    parser.add_argument("--gene-table", type=Path, help="ensembl_id,symbol CSV: every Ensembl ID of each symbol")
    args = parser.parse_args()
    if args.run is None:
        if args.metrics is None and args.gene_table is None:
            parser.error("pass a run folder to package, or --metrics / --gene-table to update the bundled checkpoint")
        entry = update_registry(update_bundled(args.metrics, args.gene_table))
        print(json.dumps({k: v for k, v in entry.items() if k != "config"}, indent=2))
        return
    if args.n_genes is None:
        parser.error("--n-genes is required with a run folder")

    checkpoint = read_checkpoint(args.run / "model.safetensors")
    config = checkpoint.config.replace(
        n_genes=args.n_genes, gene_selection=args.gene_selection, value_encoding=args.value_encoding
    )
    network = PanFoMa(config)
    network.load_state_dict(checkpoint.state_dict)
    history = pd.read_csv(args.run / "history.csv")
    tail = history.tail(10)
    info = {
        **checkpoint.info,
        "name": "panfoma-tiny",
        "version": args.version,
        "final_loss": {
            "value": round(float(tail["loss_value"].mean()), 4),
            "mvc": round(float(tail["loss_mvc"].mean()), 4),
        },
        "wall_time_s": round(float(history["elapsed_s"].max()), 1),
    }
    if args.metrics is not None:
        info["metrics"] = held_out_metrics(args.metrics)
    info.pop("panfoma_sc_version", None)
    target = TARGET
    digest = write_checkpoint(target, network, checkpoint.vocab, info=info, half_precision=True)
    entry = {
        "name": "panfoma-tiny",
        "version": args.version,
        "sha256": digest,
        "resource": "weights/panfoma-tiny.safetensors",
        "size": target.stat().st_size,
        "description": (
            "PanFoMa tiny (d_model 128), pretrained on CPU on 18 public human scRNA-seq datasets (2 of them in part: "
            "their held-out batch is evaluation data)"
        ),
        "config": config.to_dict(),
    }
    (PACKAGE / "registry.json").write_text(json.dumps([entry], indent=2) + "\n")
    print(json.dumps({k: v for k, v in entry.items() if k != "config"}, indent=2), sha256sum(target))


if __name__ == "__main__":
    main()
