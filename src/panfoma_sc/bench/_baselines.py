"""Methods of the benchmark: classical baselines and PanFoMa, run on the same cells and splits.

Two kinds: *classifiers* fit on training cells and predict test cells (annotation, pan-cancer); *embedders*
embed every cell of a dataset (integration). Each is a plain function registered in :data:`CLASSIFIERS` or
:data:`EMBEDDERS`; a method that cannot run here raises :class:`MethodSkipped` with the reason. The multi-omics
methods live in ``_multiomics.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData

from ._embedding_eval import pca_embedding
from ._timing import measure

logger = logging.getLogger(__name__)

__all__ = ["CLASSIFIERS", "EMBEDDERS", "MethodContext", "MethodSkipped", "method_label"]


class MethodSkipped(RuntimeError):
    """A method cannot run here (e.g. its package is not installed); the message is the recorded reason."""


@dataclass
class MethodContext:
    """What the methods of one dataset share.

    Attributes
    ----------
    adata
        The benchmark dataset (from :func:`panfoma_sc.bench.build`; for the multi-omics task the MuData of
        :func:`panfoma_sc.bench.build_paired`); ``obs["x_kind"]`` says what ``X`` (the RNA) holds.
    model
        PanFoMa model (registry name, path or loaded model).
    options
        Method settings: ``n_neighbors`` (15), ``n_comps`` (50), ``n_top_genes`` (2000),
        ``finetune_max_epochs`` (1), ``integrate_max_epochs`` (1), ``integrate_max_steps`` (None),
        ``joint_max_epochs`` (2), ``joint_max_steps`` (None), ``multiomics_rna_comps`` (30),
        ``multiomics_protein_comps`` (10), ``scvi_max_epochs`` (50), ``batch_size``, ``n_genes``, ``seed``.
    cache
        Embeddings computed once per dataset (with their cost), reused by several methods and tasks.
    used
        Settings as the methods applied them, e.g. ``{"n_comps": {20}}`` when PCA components were capped by
        the number of training cells; the tasks empty it before each method and copy it into its row.
    """

    adata: AnnData  # or a MuData (multi-omics task)
    model: object = "panfoma-tiny"
    options: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    used: dict = field(default_factory=dict)

    def option(self, name: str, default: object) -> object:
        """A method setting, or its default."""
        value = self.options.get(name)
        return default if value is None else value

    def cached(self, key: str, compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, dict[str, float]]:
        """``compute()`` once per dataset; returns the result and what it cost the first time."""
        if key not in self.cache:
            with measure() as cost:
                value = compute()
            self.cache[key] = (value, dict(cost))
        return self.cache[key]

    def record(self, name: str, value: object) -> None:
        """Note a setting as a method applied it (see :attr:`used`)."""
        self.used.setdefault(name, set()).add(value)


def log_normalized(adata: AnnData) -> AnnData:
    """Log-normalized copy of ``X``, per cell by what it holds (``obs["x_kind"]``).

    Counts and linear values (TPM, RPKM) are scaled to 10,000 per cell and log1p-transformed; log-scale
    values are used as they are.
    """
    kinds = adata.obs["x_kind"].astype(str).to_numpy() if "x_kind" in adata.obs else np.full(adata.n_obs, "counts")
    transform = kinds != "log"
    x = sp.csr_matrix(adata.X, dtype=np.float32)
    totals = np.asarray(x.sum(1)).ravel()
    factor = np.where(transform & (totals > 0), 1e4 / np.maximum(totals, 1e-12), 1.0).astype(np.float32)
    x = sp.csr_matrix(sp.diags(factor) @ x)
    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    x.data = np.where(transform[rows], np.log1p(x.data), x.data).astype(np.float32)
    return AnnData(x, obs=adata.obs[[]].copy(), var=adata.var[[]].copy())


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)


def _hvg_features(ctx: MethodContext, train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log-normalized highly variable genes, chosen on the training cells only."""
    work = log_normalized(ctx.adata)
    n_top = int(ctx.option("n_top_genes", 2000))
    x_train = work[train].copy()
    if work.n_vars > n_top:
        hvg = sc.pp.highly_variable_genes(x_train, n_top_genes=n_top, inplace=False)["highly_variable"].to_numpy()
    else:
        hvg = np.ones(work.n_vars, dtype=bool)
    return _dense(work.X[train][:, hvg]), _dense(work.X[test][:, hvg])


def _pca_features(ctx: MethodContext, train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.decomposition import PCA

    x_train, x_test = _hvg_features(ctx, train, test)
    n_comps = min(int(ctx.option("n_comps", 50)), x_train.shape[0] - 1, x_train.shape[1] - 1)
    pca = PCA(n_components=n_comps, random_state=int(ctx.option("seed", 0))).fit(x_train)
    ctx.record("n_comps", int(pca.n_components_))
    return pca.transform(x_train), pca.transform(x_test)


def _knn(ctx: MethodContext, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    from sklearn.neighbors import KNeighborsClassifier

    k = min(int(ctx.option("n_neighbors", 15)), x_train.shape[0])
    return KNeighborsClassifier(n_neighbors=k, weights="distance").fit(x_train, y_train).predict(x_test)


def _logistic(ctx: MethodContext, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    from ..tl._linear_probe import LinearProbe

    probe = LinearProbe.fit(x_train, y_train, inverse_regularization=float(ctx.option("logreg_c", 1.0)))
    return probe.predict(x_test)


# -- classifiers: (ctx, train cells, test cells, training labels) -> predicted labels of the test cells


def pca_knn(ctx: MethodContext, train: np.ndarray, test: np.ndarray, y_train: np.ndarray) -> np.ndarray:
    """Baseline: kNN (distance-weighted, k=15) in a PCA (``n_comps``) of log-normalized HVGs of the training cells."""
    x_train, x_test = _pca_features(ctx, train, test)
    return _knn(ctx, x_train, y_train, x_test)


def pca_logreg(ctx: MethodContext, train: np.ndarray, test: np.ndarray, y_train: np.ndarray) -> np.ndarray:
    """Logistic regression on the same PCA of HVGs."""
    x_train, x_test = _pca_features(ctx, train, test)
    return _logistic(ctx, x_train, y_train, x_test)


def logreg_genes(ctx: MethodContext, train: np.ndarray, test: np.ndarray, y_train: np.ndarray) -> np.ndarray:
    """CellTypist-like: L2 logistic regression on scaled log-normalized genes.

    Genes expressed in at least 1% of the training cells, standardized and clipped at ±10.
    """
    work = log_normalized(ctx.adata)
    x_train, x_test = work.X[train], work.X[test]
    detected = np.asarray((x_train > 0).mean(0)).ravel() >= 0.01
    return _logistic(ctx, _dense(x_train[:, detected]), y_train, _dense(x_test[:, detected]))


def _panfoma_embedding(ctx: MethodContext) -> tuple[np.ndarray, dict[str, float]]:
    from ..tl import embed

    def compute() -> np.ndarray:
        result = embed(
            ctx.adata,
            ctx.model,
            batch_size=ctx.options.get("batch_size"),
            n_genes=ctx.options.get("n_genes"),
            seed=int(ctx.option("seed", 0)),
            progress=False,
            copy=True,
        )
        return result.obsm["X_panfoma"]

    return ctx.cached("panfoma", compute)


def panfoma_knn(ctx: MethodContext, train: np.ndarray, test: np.ndarray, y_train: np.ndarray) -> np.ndarray:
    """PanFoMa zero-shot: kNN (k=15, distance-weighted, as ``pf.tl.annotate(method="knn")``) in the embedding."""
    embedding, _ = _panfoma_embedding(ctx)
    return _knn(ctx, embedding[train], y_train, embedding[test])


def panfoma_logreg(ctx: MethodContext, train: np.ndarray, test: np.ndarray, y_train: np.ndarray) -> np.ndarray:
    """PanFoMa zero-shot linear probe: logistic regression on the frozen embedding."""
    embedding, _ = _panfoma_embedding(ctx)
    return _logistic(ctx, embedding[train], y_train, embedding[test])


def panfoma_finetune(ctx: MethodContext, train: np.ndarray, test: np.ndarray, y_train: np.ndarray) -> np.ndarray:
    """PanFoMa fine-tuned: ``pf.tl.annotate(method="finetune")`` with the training cells as reference."""
    from ..tl import annotate

    reference = ctx.adata[train].copy()
    reference.obs["_bench_label"] = y_train
    query = ctx.adata[test].copy()
    annotate(
        query,
        reference,
        labels_key="_bench_label",
        model=ctx.model,
        method="finetune",
        max_epochs=int(ctx.option("finetune_max_epochs", 1)),
        unknown_threshold=0,
        batch_size=ctx.options.get("batch_size"),
        n_genes=ctx.options.get("n_genes"),
        seed=int(ctx.option("seed", 0)),
        progress=False,
    )
    return query.obs["panfoma_label"].astype(str).to_numpy()


def scanvi(ctx: MethodContext, train: np.ndarray, test: np.ndarray, y_train: np.ndarray) -> np.ndarray:
    """Baseline scANVI (scvi-tools, ``bench`` extra): semi-supervised VAE on raw counts, test cells unlabelled."""
    scvi = _import_scvi(ctx)
    if (ctx.adata.obs["x_kind"] != "counts").any():
        msg = "scANVI models raw counts and X here is not counts"
        raise MethodSkipped(msg)
    cells = np.concatenate([train, test])
    work = AnnData(ctx.adata.X[cells].copy(), obs=ctx.adata.obs.iloc[cells][["split_group"]].copy())
    work.obs["label"] = np.concatenate([y_train, np.full(test.size, "Unknown")])
    scvi.model.SCVI.setup_anndata(work, batch_key="split_group", labels_key="label")
    vae = scvi.model.SCVI(work)
    vae.train(max_epochs=int(ctx.option("scvi_max_epochs", 50)))
    model = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category="Unknown")
    model.train(max_epochs=int(ctx.option("scvi_max_epochs", 50)) // 2)
    return np.asarray(model.predict(work))[train.size :]


CLASSIFIERS: dict[str, Callable[..., np.ndarray]] = {
    "pca_knn": pca_knn,
    "pca_logreg": pca_logreg,
    "logreg_genes": logreg_genes,
    "scanvi": scanvi,
    "panfoma_knn": panfoma_knn,
    "panfoma_logreg": panfoma_logreg,
    "panfoma_finetune": panfoma_finetune,
}


# -- embedders: (ctx, batch column) -> (n_cells, d) embedding of every cell


def pca(ctx: MethodContext, batch_key: str) -> np.ndarray:
    """PCA (``n_comps``, 50) of log-normalized HVGs (all cells; computed once per dataset)."""

    def compute() -> np.ndarray:
        return pca_embedding(
            log_normalized(ctx.adata),
            n_comps=int(ctx.option("n_comps", 50)),
            n_top_genes=int(ctx.option("n_top_genes", 2000)),
            counts=False,
        )

    embedding = ctx.cached("pca", compute)[0]
    ctx.record("n_comps", embedding.shape[1])
    return embedding


def harmony(ctx: MethodContext, batch_key: str) -> np.ndarray:
    """Harmony (harmonypy) on the PCA, correcting ``batch_key``."""
    try:
        import harmonypy
    except ImportError as err:
        msg = "harmonypy is not installed: pip install 'panfoma-sc[bench]'"
        raise MethodSkipped(msg) from err
    embedding = pca(ctx, batch_key)
    obs = pd.DataFrame({"batch": ctx.adata.obs[batch_key].astype(str).to_numpy()})
    result = harmonypy.run_harmony(embedding, obs, ["batch"], random_state=int(ctx.option("seed", 0)), verbose=False)
    corrected = np.asarray(result.Z_corr)
    return (corrected.T if corrected.shape[0] != embedding.shape[0] else corrected).astype(np.float32)


def _import_scvi(ctx: MethodContext):
    """``scvi`` seeded with the run's seed (torch, numpy and Python RNGs), or :class:`MethodSkipped`."""
    try:
        import scvi
    except ImportError as err:
        msg = "scvi-tools is not installed: pip install 'panfoma-sc[bench]'"
        raise MethodSkipped(msg) from err
    scvi.settings.seed = int(ctx.option("seed", 0))
    return scvi


def scvi_latent(ctx: MethodContext, batch_key: str) -> np.ndarray:
    """Baseline scVI latent space (scvi-tools, ``bench`` extra) with ``batch_key`` as batch covariate."""
    scvi = _import_scvi(ctx)
    if (ctx.adata.obs["x_kind"] != "counts").any():
        msg = "scVI models raw counts and X here is not counts"
        raise MethodSkipped(msg)
    work = AnnData(ctx.adata.X.copy(), obs=ctx.adata.obs[[batch_key]].astype(str).copy())
    scvi.model.SCVI.setup_anndata(work, batch_key=batch_key)
    model = scvi.model.SCVI(work)
    model.train(max_epochs=int(ctx.option("scvi_max_epochs", 50)))
    return np.asarray(model.get_latent_representation(), dtype=np.float32)


def panfoma(ctx: MethodContext, batch_key: str) -> np.ndarray:
    """PanFoMa zero-shot embedding (``pf.tl.embed``)."""
    return _panfoma_embedding(ctx)[0]


def panfoma_integrated(ctx: MethodContext, batch_key: str) -> np.ndarray:
    """PanFoMa fine-tuned with batch removal (``pf.tl.integrate``)."""
    from ..tl import integrate

    result = integrate(
        ctx.adata,
        batch_key,
        model=ctx.model,
        max_epochs=int(ctx.option("integrate_max_epochs", 1)),
        max_steps=ctx.options.get("integrate_max_steps"),
        batch_size=ctx.options.get("batch_size"),
        n_genes=ctx.options.get("n_genes"),
        seed=int(ctx.option("seed", 0)),
        progress=False,
        copy=True,
    )
    return result.obsm["X_panfoma_integrated"]


EMBEDDERS: dict[str, Callable[..., np.ndarray]] = {
    "pca": pca,
    "harmony": harmony,
    "scvi": scvi_latent,
    "panfoma": panfoma,
    "panfoma_integrated": panfoma_integrated,
}

#: Methods whose label states the number of PCA components they used.
PCA_METHODS = frozenset({"pca_knn", "pca_logreg", "pca", "rna_pca"})
#: Human-readable names for tables and figures (:func:`method_label` adds the PCA components a run used).
METHOD_LABELS: dict[str, str] = {
    "pca_knn": "PCA HVG + kNN",
    "pca_logreg": "PCA HVG + LogReg",
    "logreg_genes": "LogReg on genes (CellTypist-like)",
    "scanvi": "scANVI",
    "panfoma_knn": "PanFoMa zero-shot + kNN",
    "panfoma_logreg": "PanFoMa zero-shot + LogReg",
    "panfoma_finetune": "PanFoMa fine-tuned",
    "pca": "PCA HVG",
    "harmony": "Harmony",
    "scvi": "scVI",
    "panfoma": "PanFoMa zero-shot",
    "panfoma_integrated": "PanFoMa integrated",
    "rna_pca": "RNA PCA",
    "pca_concat": "PCA concat. (RNA + protein)",
    "wnn": "WNN (muon, graph)",
    "totalvi": "totalVI",
    "multivi": "MultiVI (RNA + protein)",
    "panfoma_joint": "PanFoMa joint RNA+protein",
    "panfoma_late_fusion": "PanFoMa late fusion (+ protein PCA)",
}


def method_label(method: str, n_comps: Iterable[object] = ()) -> str:
    """Human-readable name of a method, with the PCA components it used: ``PCA(20) HVG + kNN``.

    Parameters
    ----------
    method
        Method name (``pca_knn``).
    n_comps
        The ``n_comps`` values of its result rows: numbers, or ``"19-20"`` where folds differed; missing values
        are ignored, and without any the label names no number.

    Returns
    -------
    The label.
    """
    label = METHOD_LABELS.get(method, method)
    if method not in PCA_METHODS:
        return label
    counts = sorted({int(float(part)) for value in n_comps if pd.notna(value) for part in str(value).split("-")})
    if not counts:
        return label
    used = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return label.replace("PCA", f"PCA({used})", 1)
