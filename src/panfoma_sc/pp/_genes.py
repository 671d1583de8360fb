"""Match the genes of an AnnData to a model's vocabulary."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from .._arguments import require_flag, require_number
from ..data.rows import GeneColumns, raw_values
from ..data.vocab import GeneVocabulary, dominant_ensembl_species

logger = logging.getLogger(__name__)

#: Fewer genes than this in the input is warned about: a whole transcriptome has many more, an HVG subset fewer.
FEW_GENES = 5000

__all__ = ["GeneMatch", "match_genes"]


@dataclass
class GeneMatch:
    """Which columns of an AnnData map to which vocabulary genes.

    Attributes
    ----------
    columns
        Indices of the used ``var`` columns, ascending.
    gene_ids
        Vocabulary id of each used column.
    n_genes
        Genes in the AnnData.
    duplicated
        Names whose vocabulary gene an earlier column also holds (e.g. ``C2ORF15`` after ``C2orf15``); the gene's
        value is the maximum over its columns (see :attr:`read_columns`).
    unmatched
        Names not found in the vocabulary.
    duplicate_columns
        Indices of the ``duplicated`` columns.
    duplicate_targets
        For each of ``duplicate_columns``, the position in ``columns`` of the gene it also holds.
    """

    columns: np.ndarray
    gene_ids: np.ndarray
    n_genes: int
    duplicated: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    duplicate_columns: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    duplicate_targets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def read_columns(self) -> np.ndarray | GeneColumns:
        """What the row readers take: ``columns``, or with duplicated genes a :class:`GeneColumns` merging them."""
        if not self.duplicate_columns.size:
            return self.columns
        return GeneColumns(self.columns, self.duplicate_columns, self.duplicate_targets)

    @property
    def n_matched(self) -> int:
        """Number of genes used."""
        return int(self.columns.size)

    @property
    def fraction(self) -> float:
        """Share of the AnnData's genes that are used."""
        return self.n_matched / max(self.n_genes, 1)

    def __repr__(self) -> str:
        # counts and a few names: the full lists run to tens of thousands of genes
        return (
            f"GeneMatch({self.n_matched} of {self.n_genes} genes matched ({self.fraction:.1%}), "
            f"{len(self.duplicated)} duplicated {_examples(self.duplicated)}, "
            f"{len(self.unmatched)} unmatched {_examples(self.unmatched)})"
        )

    def summary(self) -> dict[str, object]:
        """JSON-able report (stored in ``uns``; h5ad gives its lists back as arrays)."""
        return {
            "n_genes": self.n_genes,
            "n_matched": self.n_matched,
            "fraction_matched": round(self.fraction, 4),
            "n_duplicated": len(self.duplicated),
            "duplicated_examples": self.duplicated[:10],
            "unmatched_examples": self.unmatched[:10],
        }


def _examples(names: list[str], n: int = 3) -> str:
    return "[" + ", ".join(repr(name) for name in names[:n]) + (", ...]" if len(names) > n else "]")


def match_genes(
    adata: AnnData,
    vocab: GeneVocabulary | str | Path,
    *,
    gene_symbols: str | None = None,
    min_fraction: float = 0.1,
    adata_name: str = "adata",
    use_raw: bool = False,
) -> GeneMatch:
    """Match ``adata``'s genes to ``vocab`` by symbol (any case) or Ensembl ID (version suffix ignored).

    Every Ensembl ID the vocabulary lists for a symbol matches it. Outdated symbols are not translated to current
    ones (``H3F3A`` and ``H3-3A`` are separate vocabulary genes, learned from datasets using each name). Where
    several columns match one vocabulary gene (``C2orf15`` and ``C2ORF15``; a symbol and its Ensembl ID), the gene
    takes the maximum over them, whatever their order, and they are logged.

    Parameters
    ----------
    adata
        Data whose ``var_names`` (or ``var[gene_symbols]``) name the genes.
    vocab
        The model's vocabulary (``model.vocab``), or a model: loaded, registered name or checkpoint path.
    gene_symbols
        Column of ``adata.var`` holding gene symbols, when ``var_names`` are something else.
    min_fraction
        Raise when fewer than this share of the genes match (of the vocabulary's genes, when it holds fewer than
        ``adata``: a model trained on a few thousand genes matches all of them in a whole-transcriptome file).
    adata_name
        How messages call ``adata``: the argument it was passed as (e.g. ``"reference"``).
    use_raw
        Match the genes of ``adata.raw`` (``gene_symbols`` is then a column of ``adata.raw.var``).

    Returns
    -------
    The match; duplicated and unmatched genes are logged.

    Raises
    ------
    KeyError
        ``gene_symbols`` is not a column of ``adata.var``.
    ValueError
        ``adata`` has no genes, no gene matches, or too few; ``use_raw`` and ``adata.raw`` is empty.

    Examples
    --------
    >>> import panfoma_sc as pf
    >>> match = pf.pp.match_genes(adata, "panfoma-tiny")  # doctest: +SKIP
    >>> match.summary()["fraction_matched"]  # doctest: +SKIP
    """
    vocab = _vocabulary(vocab)
    require_number("min_fraction", min_fraction, 0, 1)
    require_flag("use_raw", use_raw)
    object_name = adata_name
    if use_raw:
        adata, adata_name = raw_values(adata, name=adata_name), f"{adata_name}.raw"
    if adata.n_vars == 0:
        msg = f"{adata_name} has no genes (0 columns in var): embed the object before its genes were filtered out."
        raise ValueError(msg)
    if gene_symbols is None:
        names = pd.Index(adata.var_names).astype(str)
        source = f"{adata_name}.var_names"
    else:
        if gene_symbols not in adata.var.columns:
            msg = (
                f"gene_symbols={gene_symbols!r} is not a column of {adata_name}.var "
                f"(columns: {list(adata.var.columns)})."
            )
            raise KeyError(msg)
        column = adata.var[gene_symbols]
        missing = column.isna().to_numpy()
        names = pd.Index(np.where(missing, "", column.astype(str)))  # a missing symbol matches nothing (not "nan")
        source = f"{adata_name}.var[{gene_symbols!r}]"
        if missing.any():
            logger.warning(
                "%d of %d genes have no symbol in %s (missing values): they are left out.",
                int(missing.sum()),
                len(missing),
                source,
            )

    match = match_names(
        names, vocab, source=source, min_fraction=min_fraction, obs_names=adata.obs_names, object_name=object_name
    )
    _warn_if_gene_subset(adata, adata_name)
    return match


def match_names(
    names: pd.Index,
    vocab: GeneVocabulary,
    *,
    source: str,
    min_fraction: float = 0.1,
    obs_names: pd.Index | None = None,
    object_name: str = "adata",
) -> GeneMatch:
    """Match gene ``names`` to ``vocab``, as :func:`match_genes` does, without its check of the object's gene count.

    Parameters
    ----------
    names
        The gene names, as strings.
    vocab
        The vocabulary.
    source
        Where the names come from, for messages (e.g. ``"adata.var_names"``).
    min_fraction
        Raise when fewer than this share of the genes match (of the vocabulary's genes, when it holds fewer).
    obs_names
        The object's cell names: a message says when they, not ``names``, look like genes (a transposed matrix).
    object_name
        How messages call the object.

    Returns
    -------
    The match; duplicated and unmatched genes are logged.
    """
    ids = vocab.lookup(names)
    found = ids >= 0
    first = ~pd.Series(ids).duplicated().to_numpy()
    use = found & first
    again = found & ~first
    columns = np.flatnonzero(use)
    unmatched = [name for name in names[~found] if name]  # "" stands for a missing symbol, reported apart
    match = GeneMatch(
        columns=columns,
        gene_ids=ids[use],
        n_genes=len(names),
        duplicated=names[again].tolist(),
        unmatched=unmatched,
        duplicate_columns=np.flatnonzero(again),
        # position among the used columns of the column that first holds the same vocabulary gene
        duplicate_targets=pd.Index(ids[use]).get_indexer(ids[again]),
    )
    if match.n_matched == 0:
        transposed = None if obs_names is None else _transposed_hint(obs_names, vocab, object_name)
        hint = transposed or _no_match_hint(names)
        msg = (
            f"None of the {len(names)} genes in {source} is in the model's vocabulary "
            f"(e.g. {names[:3].tolist()}). {hint}"
        )
        raise ValueError(msg)
    coverable = min(match.n_genes, len(vocab.symbols))  # a small vocabulary cannot match more of a large file
    if match.n_matched < min_fraction * coverable:
        msg = (
            f"Only {match.n_matched} of {match.n_genes} genes ({match.fraction:.1%}) in {source} are in the "
            f"model's vocabulary of {len(vocab.symbols)} genes (min_fraction={min_fraction} of the "
            f"{coverable} that could match). Check that they are gene symbols or Ensembl IDs (or pass "
            "gene_symbols=...), or lower min_fraction if this is expected."
        )
        raise ValueError(msg)
    _warn_if_mouse_symbols(names[use], source)
    if match.duplicated:
        logger.warning(
            "%d genes of %s map to a vocabulary gene that an earlier column also holds, e.g. %s: each such gene "
            "takes the maximum over its columns.",
            len(match.duplicated),
            source,
            match.duplicated[:5],
        )
    logger.info(
        "Matched %d of %d genes (%.1f%%) to the vocabulary.", match.n_matched, match.n_genes, 100 * match.fraction
    )
    return match


def _vocabulary(vocab: object) -> GeneVocabulary:
    """``vocab`` itself, or the vocabulary of a loaded model, a registered model name or a checkpoint path."""
    if isinstance(vocab, GeneVocabulary):
        return vocab
    if isinstance(getattr(vocab, "vocab", None), GeneVocabulary):
        return vocab.vocab
    if isinstance(vocab, str | Path):
        from ..models import load

        return load(vocab).vocab
    msg = (
        f"vocab must be a model's vocabulary, a loaded model, a registered model name or a checkpoint path, got "
        f"{type(vocab).__name__}: e.g. pf.pp.match_genes(adata, 'panfoma-tiny')."
    )
    raise ValueError(msg)


#: a symbol written the mouse/rat way (``Cd3e``, ``Rpl13a``, ``H2-K1``): capital first letter, lower-case letters
#: after it. Human symbols are upper case except the ``C1orf112`` family, which is left out.
_MOUSE_STYLE = re.compile(r"^[A-Z][A-Za-z0-9.-]*[a-z]")
_HUMAN_ORF = re.compile(r"^C\d+orf\d+$|^CXorf\d+$|^CYorf\d+$")


def _warn_if_mouse_symbols(matched: pd.Index, source: str) -> None:
    """Warn when most matched names are written like mouse symbols: they matched the human vocabulary by name."""
    if matched.empty:
        return
    mouse_style = [n for n in matched if _MOUSE_STYLE.match(n) and not _HUMAN_ORF.match(n)]
    if len(mouse_style) <= matched.size / 2:
        return
    logger.warning(
        "%d of the %d matched genes in %s are written like mouse (or rat) symbols, e.g. %s, and the model's "
        "vocabulary is human. They were matched by name with case ignored: right for orthologs that share their "
        "symbol, missed or wrong for the others. For mouse data, map the genes to their human orthologs first "
        "(e.g. with pybiomart) for a more faithful embedding; if these are human genes, ignore this warning.",
        len(mouse_style),
        matched.size,
        source,
        mouse_style[:3],
    )


def _warn_if_gene_subset(adata: AnnData, adata_name: str = "adata") -> None:
    """Log a warning when ``adata`` (called ``adata_name``) holds too few genes to be a whole transcriptome.

    Such an object is often a highly-variable-gene subset.
    """
    if adata.n_vars >= FEW_GENES:
        return
    marked = "highly_variable" in adata.var.columns and bool(adata.var["highly_variable"].all())
    raw = getattr(adata, "raw", None)
    use_raw = "use_raw" if adata_name == "adata" else f"{adata_name}_use_raw"  # the tools' argument names
    fix = (
        f"{adata_name}.raw holds {raw.n_vars} genes: pass {use_raw}=True to embed them (or embed the object before "
        "gene filtering)"
        if raw is not None and raw.n_vars > adata.n_vars
        else "embed the object before gene filtering"
    )
    logger.warning(
        "%s holds only %d genes%s. PanFoMa reads each cell's most expressed genes and was trained on whole "
        "transcriptomes: a highly-variable-gene subset gives poorer embeddings (pbmc3k: kNN label accuracy 0.80 "
        "with its 2,000 HVGs, 0.87 with all genes). If this is a gene subset, %s. If the assay measures only "
        "these genes (a targeted panel), ignore this warning.",
        adata_name,
        adata.n_vars,
        " (all marked highly_variable)" if marked else "",
        fix,
    )


#: genome prefix of multi-genome references (10x "barnyard": ``hg19_CD3E``, ``GRCh38-CD3E``, ``mm10___Actb``)
_GENOME_PREFIX = re.compile(r"^((?:hg|mm)\d\d|GRC[hm]\d\d)[_-]+", re.IGNORECASE)


def _transposed_hint(obs_names: pd.Index, vocab: GeneVocabulary, name: str) -> str | None:
    """The fix for a genes x cells matrix (text tables often are), when most cell names are vocabulary genes."""
    sample = pd.Index(obs_names[:1000]).astype(str)
    if len(sample) == 0 or (vocab.lookup(sample) >= 0).mean() <= 0.5:
        return None
    return (
        f"Its obs_names are genes ({sample[:3].tolist()}): {name} looks transposed (genes x cells, as text tables "
        f"often are). Make it cells x genes first: {name} = {name}.T.copy()."
    )


def _no_match_hint(names: np.ndarray) -> str:
    """What to do when no gene matched, guessed from what the names look like."""
    symbols_hint = "Pass gene_symbols='<var column with gene symbols>' if the symbols are in a var column."
    genomes = [m.group(0) for m in map(_GENOME_PREFIX.match, map(str, names)) if m is not None]
    if len(genomes) > len(names) / 4:
        human = [g for g in genomes if g.lower().startswith(("hg", "grch"))]
        if not human:
            return (
                f"The names carry a mouse genome prefix ({genomes[0]!r}) and the model's vocabulary is human: "
                "map the genes to their human orthologs first, then embed."
            )
        prefix = max(set(human), key=human.count)
        return (
            f"The names carry a genome prefix ({prefix!r}, a multi-genome reference). Keep the human genes and "
            f"strip it first, e.g. adata = adata[:, adata.var_names.str.startswith({prefix!r})].copy(); "
            f"adata.var_names = adata.var_names.str.removeprefix({prefix!r})."
        )
    prefix = dominant_ensembl_species(names)
    if prefix is None:
        return symbols_hint
    if not prefix:
        return f"They are human Ensembl IDs of genes the vocabulary does not hold. {symbols_hint}"
    return (
        f"They are Ensembl IDs of a non-human species (ENS{prefix}G...), and the model's vocabulary is human: "
        f"map the genes to their human orthologs first (e.g. with pybiomart), then embed. {symbols_hint}"
    )
