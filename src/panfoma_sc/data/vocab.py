"""Gene vocabulary: the genes a model knows, in embedding order, with special tokens first."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "DEFAULT_MIN_CELLS",
    "ENSEMBL_ID_SEPARATOR",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "GeneVocabulary",
    "normalize_gene_name",
]

PAD_TOKEN = "<pad>"
CLS_TOKEN = "<cls>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, CLS_TOKEN)

#: genes a vocabulary keeps by default: those expressed in at least this many training cells (as panfoma-tiny's)
DEFAULT_MIN_CELLS = 20

#: separates the Ensembl IDs of a symbol that has several in :attr:`GeneVocabulary.ensembl_ids`
ENSEMBL_ID_SEPARATOR = ";"

_ENSEMBL_VERSIONED = re.compile(r"^(ENS[A-Z]*[GT]\d{6,})\.\d+$", re.IGNORECASE)
_ENSEMBL = re.compile(r"^ENS([A-Z]*)G\d{6,}$", re.IGNORECASE)
#: ERCC spike-in controls (``ERCC-00002``); the human genes ERCC1 ... ERCC8 have no dash and five digits
_ERCC_SPIKE_IN = re.compile(r"^ERCC[-_]\d{5}$", re.IGNORECASE)


def normalize_gene_name(name: str) -> str:
    """Canonical key of a gene name: stripped, upper case, Ensembl version suffix (``.12``) removed.

    Symbols such as ``RP11-34P13.7`` keep their dot: only Ensembl IDs carry version suffixes.
    """
    name = str(name).strip()
    match = _ENSEMBL_VERSIONED.match(name)
    if match:
        name = match.group(1)
    return name.upper()


def is_ensembl_id(name: str) -> bool:
    """Whether ``name`` looks like an Ensembl gene ID (with or without version suffix)."""
    return ensembl_species_prefix(name) is not None


def is_spike_in(name: str) -> bool:
    """Whether ``name`` is an ERCC spike-in control (``ERCC-00002``, ``ERCC_00002``), not a gene.

    The DNA-repair genes ``ERCC1`` ... ``ERCC8`` (and ``ERCC6L``, ``BIVM-ERCC5``) are genes and do not count.
    """
    return _ERCC_SPIKE_IN.match(normalize_gene_name(name)) is not None


def ensembl_species_prefix(name: str) -> str | None:
    """The species part of an Ensembl gene ID (``""`` for human ``ENSG``, ``"MUS"`` for ``ENSMUSG``), else None."""
    match = _ENSEMBL.match(normalize_gene_name(name))
    return match.group(1) if match else None


def dominant_ensembl_species(names: Sequence[str], sample: int = 200) -> str | None:
    """The species prefix most of ``names`` carry when more than half of the first ``sample`` are Ensembl IDs.

    ``""`` for human ``ENSG`` IDs, e.g. ``"MUS"`` for mouse; ``None`` when the names are mostly not Ensembl IDs.
    """
    prefixes = [ensembl_species_prefix(str(name)) for name in names[:sample]]
    ensembl = [prefix for prefix in prefixes if prefix is not None]
    if len(ensembl) <= len(prefixes) / 2:
        return None
    return max(set(ensembl), key=ensembl.count)


@dataclass
class GeneVocabulary:
    """Ordered gene symbols of a model, special tokens first.

    Parameters
    ----------
    symbols
        Gene symbols in embedding order, without special tokens.
    ensembl_ids
        Optional Ensembl gene IDs of each symbol (same length; empty string where unknown), so that data
        indexed by Ensembl IDs can be matched. A symbol with several IDs (GENCODE gives 147 of them two, e.g.
        ``MATR3``) lists them all, separated by ``;``: data naming any of them match the symbol.
    """

    symbols: list[str]
    ensembl_ids: list[str] | None = None
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.symbols = [str(s) for s in self.symbols]
        keys = [normalize_gene_name(s) for s in self.symbols]
        if len(set(keys)) != len(keys):
            seen: set[str] = set()
            dupes = sorted({k for k in keys if k in seen or seen.add(k)})
            msg = f"Vocabulary symbols must be unique ignoring case; duplicated: {dupes[:10]}."
            raise ValueError(msg)
        if self.ensembl_ids is not None and len(self.ensembl_ids) != len(self.symbols):
            msg = "ensembl_ids must have one entry per symbol."
            raise ValueError(msg)
        offset = len(SPECIAL_TOKENS)
        self._index = {key: i + offset for i, key in enumerate(keys)}
        if self.ensembl_ids is not None:
            for i, ids in enumerate(self.ensembl_ids):
                for ensembl_id in str(ids).split(ENSEMBL_ID_SEPARATOR):
                    if ensembl_id:
                        self._index.setdefault(normalize_gene_name(ensembl_id), i + offset)

    @classmethod
    def from_genes(cls, symbols: Iterable[str], ensembl_ids: Sequence[str] | None = None) -> GeneVocabulary:
        """Build from gene symbols (and optional matching Ensembl IDs)."""
        return cls(list(symbols), None if ensembl_ids is None else list(ensembl_ids))

    def __len__(self) -> int:
        return len(SPECIAL_TOKENS) + len(self.symbols)

    @property
    def pad_id(self) -> int:
        """Id of the padding token."""
        return SPECIAL_TOKENS.index(PAD_TOKEN)

    @property
    def tokens(self) -> list[str]:
        """All tokens in embedding order, special tokens first."""
        return [*SPECIAL_TOKENS, *self.symbols]

    def lookup(self, names: Iterable[str]) -> np.ndarray:
        """Vocabulary ids of ``names`` (symbols or Ensembl IDs, any case); ``-1`` where unknown."""
        return np.fromiter((self._index.get(normalize_gene_name(n), -1) for n in names), dtype=np.int64)

    def to_json(self) -> str:
        """Serialize (the checkpoint's ``vocab`` metadata)."""
        payload: dict[str, list[str]] = {"symbols": self.symbols}
        if self.ensembl_ids is not None:
            payload["ensembl_ids"] = self.ensembl_ids
        return json.dumps(payload)

    @classmethod
    def from_json(cls, text: str) -> GeneVocabulary:
        """Inverse of :meth:`to_json`."""
        payload = json.loads(text)
        return cls(payload["symbols"], payload.get("ensembl_ids"))
