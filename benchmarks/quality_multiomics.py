"""Multi-omics quality: PanFoMa joint RNA + protein embedding vs RNA-only PanFoMa, PCA concatenation, WNN, totalVI.

Data: the real 10x CITE-seq PBMCs (5k and 10k PBMC protein v3 runs, 200 cells each: RNA + 29 ADTs, of which the
10k panel measured 14). There are no author labels, so cells are labelled by protein-marker gating on the 14
shared antibodies (``pf.bench.build_paired``: CLR per cell, positive/negative per marker and run by a
two-component Gaussian mixture, rules ``pf.bench.PBMC_CITESEQ_GATES``); ungated cells are embedded but not
scored. Because the labels come from the proteins, methods that read the proteins have an advantage by
construction: compare the joint embedding with the other protein-using methods (PCA concatenation, WNN, late
fusion, totalVI) first.

The methods and scores are PanFoMaBench's ``multiomics`` task (``pf.bench.MULTIOMICS_METHODS``; the same code
runs in ``panfoma bench run benchmarks/panfomabench.toml``), here on all 400 cells without QC filtering and with a
larger fine-tuning budget:

- Embeddings: AvgBIO = mean(NMI, ARI, ASW_label) from ``pf.bench.bio_conservation`` (scib-metrics; NMI/ARI of
  k-means clusters), and batch mixing from ``pf.bench.batch_correction``.
- Graphs (every method, so WNN can be compared): Leiden on the method's 15-NN graph (WNN: muon's multimodal graph)
  at resolutions 0.1-2.0; NMI and ARI at the resolution with the best NMI (scib's protocol). WNN has no embedding,
  so it has no ASW and no embedding AvgBIO; ``avg_bio_graph`` = mean(NMI_graph, ARI_graph) is comparable across all.

totalVI runs when scvi-tools (the ``bench`` extra) is installed and is reported as skipped otherwise. Writes
``benchmarks/results/multiomics.csv`` and ``.md``.

Usage (from the repository root)::

    PANFOMA_DATA_DIR=../shared/data python benchmarks/quality_multiomics.py
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import pandas as pd

import panfoma_sc as pf
from panfoma_sc.bench._baselines import METHOD_LABELS, MethodContext

DATASET = "pbmc_citeseq_10x_5k_10k_400cells.h5mu"
#: every cell of the file, as in the published table (all 400 pass the benchmark's QC; only its gene filter differs)
NO_QC = pf.bench.QCThresholds(min_genes=None, max_counts_mads=None, max_mito_fraction=None, min_cells=None)
NOTES = """
Notes
- Labels: protein-marker gating on the 14 antibodies of both panels (`pf.bench.build_paired`,
  `pf.bench.gate_cells`); methods that read the proteins are favoured by construction. Ungated cells are not scored.
- avg_bio = mean(NMI, ARI, ASW_label) (scib-metrics, k-means clusters); avg_bio_graph = mean(NMI, ARI) of Leiden
  clusters on the method's 15-NN graph (WNN: muon's multimodal graph) at the best-NMI resolution in 0.1-2.0.
  WNN has no embedding, hence no ASW or avg_bio. avg_batch = mean(ASW_batch, graph connectivity).
- PanFoMa rows use {model}; fine-tuned rows ran {epochs} epochs (32 cells per step{steps}). Seconds are wall time
  (a method reusing the RNA or protein PCA is charged it); WNN's include muon's one-off numba compilation.
- {skipped}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="panfoma-tiny")
    parser.add_argument("--max-epochs", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None, help="cap on fine-tuning steps (smoke runs)")
    parser.add_argument("--scvi-max-epochs", type=int, default=400, help="totalVI epochs (scvi-tools' default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/multiomics.csv")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.filterwarnings("ignore", category=FutureWarning)

    mdata = pf.bench.build_paired(pf.datasets.path(DATASET), qc=NO_QC, seed=args.seed)
    labels = mdata.obs["gated_label"].astype(str)
    print(labels.value_counts().to_string(), flush=True)
    options = {
        "seed": args.seed,
        "integrate_max_epochs": args.max_epochs,
        "integrate_max_steps": args.max_steps,
        "joint_max_epochs": args.max_epochs,
        "joint_max_steps": args.max_steps,
        "scvi_max_epochs": args.scvi_max_epochs,
    }
    ctx = MethodContext(mdata, model=pf.models.load(args.model), options=options)
    spec = {"label_key": "gated_label", "batch_key": "batch"}
    result = pf.bench.TASKS["multiomics"](ctx, spec, list(pf.bench.MULTIOMICS_METHODS))

    table = pd.DataFrame(result.rows)
    table.insert(0, "dataset", DATASET)
    table["method"] = table["method"].map(lambda m: METHOD_LABELS.get(m, m))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    columns = [
        "method",
        "avg_bio",
        "nmi",
        "ari",
        "asw_label",
        "avg_bio_graph",
        "nmi_graph",
        "ari_graph",
        "avg_batch",
        "seconds",
    ]
    ok = table[table["status"] == "ok"].assign(seconds=lambda t: t["seconds"].round(1))
    not_run = table[table["status"] != "ok"]
    skipped = "; ".join(f"{r.method} {r.status}: {r.reason}" for r in not_run.itertuples()) or "Every method ran."
    counts_line = ", ".join(f"{k} {v}" for k, v in labels.value_counts().items())
    steps = "" if args.max_steps is None else f", at most {args.max_steps} in all"
    command = f"--model {args.model} --max-epochs {args.max_epochs} --seed {args.seed}"
    if args.max_steps is not None:
        command += f" --max-steps {args.max_steps}"
    if args.scvi_max_epochs != parser.get_default("scvi_max_epochs"):
        command += f" --scvi-max-epochs {args.scvi_max_epochs}"
    text = (
        f"# Multi-omics: {DATASET} ({int((labels != 'ungated').sum())} gated cells of {mdata.n_obs}; "
        f"{counts_line})\n\n"
        f"`python benchmarks/quality_multiomics.py {command}`\n\n"
        + ok.reindex(columns=columns).round(3).to_markdown(index=False)
        + "\n"
        + NOTES.format(model=args.model, epochs=args.max_epochs, steps=steps, skipped=skipped)
    )
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
