"""Gene vocabulary: lookup rules, uniqueness, serialization."""

from __future__ import annotations

import numpy as np
import pytest

from panfoma_sc.data.vocab import SPECIAL_TOKENS, GeneVocabulary, ensembl_species_prefix, normalize_gene_name

SYMBOLS = ["TP53", "CD3E", "RP11-34P13.7", "MALAT1"]
ENSEMBL = ["ENSG00000141510", "ENSG00000198851", "", "ENSG00000251562"]
OFFSET = len(SPECIAL_TOKENS)


@pytest.fixture
def vocab() -> GeneVocabulary:
    return GeneVocabulary.from_genes(SYMBOLS, ENSEMBL)


def test_ids_follow_special_tokens(vocab: GeneVocabulary):
    assert len(vocab) == OFFSET + len(SYMBOLS)
    assert vocab.tokens[:OFFSET] == list(SPECIAL_TOKENS)
    assert vocab.tokens[vocab.pad_id] == "<pad>"
    np.testing.assert_array_equal(vocab.lookup(SYMBOLS), np.arange(len(SYMBOLS)) + OFFSET)


def test_lookup_ignores_case_and_whitespace(vocab: GeneVocabulary):
    ids = vocab.lookup(["tp53", "Cd3e", " MALAT1 ", "rp11-34p13.7"])
    np.testing.assert_array_equal(ids, [OFFSET + 0, OFFSET + 1, OFFSET + 3, OFFSET + 2])
    assert vocab.lookup(["TP53"]).dtype == np.int64


def test_lookup_by_ensembl_id_with_and_without_version(vocab: GeneVocabulary):
    ids = vocab.lookup(["ENSG00000141510", "ENSG00000141510.16", "ensg00000198851.3", "ENSG00000251562.1"])
    np.testing.assert_array_equal(ids, [OFFSET + 0, OFFSET + 0, OFFSET + 1, OFFSET + 3])


def test_every_ensembl_id_of_a_symbol_matches_it():
    vocab = GeneVocabulary.from_genes(["MATR3", "TP53"], ["ENSG00000015479;ENSG00000280987", "ENSG00000141510"])
    ids = vocab.lookup(["ENSG00000015479.20", "ENSG00000280987", "MATR3", "ENSG00000141510", "ENSG00000015479;"])
    np.testing.assert_array_equal(ids, [OFFSET, OFFSET, OFFSET, OFFSET + 1, -1])
    again = GeneVocabulary.from_json(vocab.to_json())
    np.testing.assert_array_equal(again.lookup(["ENSG00000280987"]), [OFFSET])


def test_ensembl_ids_by_symbol_keeps_every_id_of_a_symbol(tmp_path):
    from panfoma_sc.train import ensembl_ids_by_symbol

    table = tmp_path / "genes.csv"
    table.write_text(
        "ENSG00000280987.4,MATR3\nENSG00000015479.20,MATR3\nENSG00000141510.18,TP53\nENSG00000015479.20,MATR3\n"
    )
    assert ensembl_ids_by_symbol(table) == {
        "MATR3": "ENSG00000280987;ENSG00000015479",
        "TP53": "ENSG00000141510",
    }


def test_ensembl_ids_need_the_ensembl_column():
    plain = GeneVocabulary.from_genes(SYMBOLS)
    assert plain.lookup(["ENSG00000141510.16"]).tolist() == [-1]


def test_symbol_dots_are_kept(vocab: GeneVocabulary):
    assert normalize_gene_name("RP11-34P13.7") == "RP11-34P13.7"
    assert normalize_gene_name("ENSG00000141510.16") == "ENSG00000141510"
    assert normalize_gene_name("ENST00000269305.9") == "ENST00000269305"
    # the dot belongs to the symbol: neither the stripped form nor another suffix matches
    assert vocab.lookup(["RP11-34P13", "RP11-34P13.8"]).tolist() == [-1, -1]
    dotted = GeneVocabulary.from_genes(["RP11-34P13.7", "RP11-34P13.8", "AC000061.1"])
    assert dotted.lookup(["RP11-34P13.8", "RP11-34P13.7", "ac000061.1"]).tolist() == [OFFSET + 1, OFFSET, OFFSET + 2]


def test_unknown_is_minus_one(vocab: GeneVocabulary):
    assert vocab.lookup(["NOT_A_GENE", "", "ENSG00000000001", "<pad>"]).tolist() == [-1, -1, -1, -1]
    assert vocab.lookup([]).shape == (0,)


@pytest.mark.parametrize("symbols", [["TP53", "tp53"], ["A", "B", "a "], ["ENSG00000141510.1", "ENSG00000141510.2"]])
def test_duplicate_symbols_raise(symbols: list[str]):
    with pytest.raises(ValueError, match="unique"):
        GeneVocabulary.from_genes(symbols)


def test_ensembl_ids_length_checked():
    with pytest.raises(ValueError, match="ensembl_ids"):
        GeneVocabulary.from_genes(["A", "B"], ["ENSG00000141510"])


@pytest.mark.parametrize("ensembl", [ENSEMBL, None])
def test_json_round_trip(ensembl: list[str] | None):
    vocab = GeneVocabulary.from_genes(SYMBOLS, ensembl)
    again = GeneVocabulary.from_json(vocab.to_json())
    assert again == vocab
    assert again.symbols == SYMBOLS
    assert again.ensembl_ids == ensembl
    queries = ["tp53", "ENSG00000141510.16", "RP11-34P13.7", "unknown"]
    np.testing.assert_array_equal(again.lookup(queries), vocab.lookup(queries))


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("ENSG00000141510", ""),
        ("ensg00000141510.17", ""),
        ("ENSMUSG00000059552", "MUS"),
        ("ENSDARG00000035559", "DAR"),
        ("TP53", None),
        ("ENSG123", None),
    ],
)
def test_ensembl_species_prefix(name: str, prefix: str | None):
    assert ensembl_species_prefix(name) == prefix


@pytest.mark.parametrize(
    ("name", "spike_in"),
    [
        ("ERCC-00002", True),
        ("ercc-00171", True),
        ("ERCC_00130 ", True),
        ("ERCC1", False),  # the DNA-repair genes are genes
        ("ERCC6L", False),
        ("BIVM-ERCC5", False),
        ("ERCC6-PGBD3", False),
        ("CD3E", False),
    ],
)
def test_is_spike_in_tells_ercc_controls_from_ercc_genes(name: str, spike_in: bool):
    from panfoma_sc.data.vocab import is_spike_in

    assert is_spike_in(name) is spike_in
