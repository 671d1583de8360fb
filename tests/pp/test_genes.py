"""Matching an AnnData's genes to a model vocabulary."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

from panfoma_sc.data import GeneColumns, iter_row_blocks
from panfoma_sc.data.vocab import SPECIAL_TOKENS, GeneVocabulary
from panfoma_sc.pp import match_genes

OFFSET = len(SPECIAL_TOKENS)
SYMBOLS = [f"GENE{i}" for i in range(20)]
ENSEMBL = [f"ENSG{i:011d}" for i in range(20)]


@pytest.fixture
def vocab() -> GeneVocabulary:
    return GeneVocabulary.from_genes(SYMBOLS, ENSEMBL)


def _adata(var_names: list[str], **var_columns: list[str]) -> AnnData:
    var = pd.DataFrame(var_columns, index=pd.Index(var_names))
    return AnnData(X=np.ones((3, len(var_names)), dtype=np.float32), var=var)


def test_match_by_var_names(vocab: GeneVocabulary):
    adata = _adata(["gene3", "UNKNOWN", "GENE0", "ENSG00000000007.4", "GENE19"])
    match = match_genes(adata, vocab)
    np.testing.assert_array_equal(match.columns, [0, 2, 3, 4])
    np.testing.assert_array_equal(match.gene_ids, np.array([3, 0, 7, 19]) + OFFSET)
    assert match.n_genes == 5
    assert match.n_matched == 4
    assert match.fraction == pytest.approx(0.8)
    assert match.unmatched == ["UNKNOWN"]
    assert match.duplicated == []
    summary = match.summary()
    assert summary["n_matched"] == 4
    assert summary["unmatched_examples"] == ["UNKNOWN"]
    assert repr(match) == "GeneMatch(4 of 5 genes matched (80.0%), 0 duplicated [], 1 unmatched ['UNKNOWN'])"


def test_the_repr_of_a_match_stays_short_whatever_the_number_of_genes(vocab: GeneVocabulary):
    match = match_genes(_adata([*SYMBOLS, *(f"OTHER{i}" for i in range(20_000))]), vocab)
    assert repr(match) == (
        "GeneMatch(20 of 20020 genes matched (0.1%), 0 duplicated [], 20000 unmatched ['OTHER0', 'OTHER1', "
        "'OTHER2', ...])"
    )


def test_match_by_gene_symbols_column(vocab: GeneVocabulary):
    adata = _adata(["id_a", "id_b", "id_c"], symbol=["GENE5", "nothing", "gene6"])
    match = match_genes(adata, vocab, gene_symbols="symbol")
    np.testing.assert_array_equal(match.columns, [0, 2])
    np.testing.assert_array_equal(match.gene_ids, np.array([5, 6]) + OFFSET)
    assert match.unmatched == ["nothing"]


def test_gene_symbols_categorical_column(vocab: GeneVocabulary):
    adata = _adata(["id_a", "id_b"], symbol=["GENE1", "GENE2"])
    adata.var["symbol"] = adata.var["symbol"].astype("category")
    match = match_genes(adata, vocab, gene_symbols="symbol")
    np.testing.assert_array_equal(match.gene_ids, np.array([1, 2]) + OFFSET)


def test_missing_symbols_match_nothing_and_are_counted(caplog: pytest.LogCaptureFixture):
    vocab = GeneVocabulary.from_genes([*SYMBOLS, "NAN"], [*ENSEMBL, "ENSG00000000099"])  # a gene called NAN
    adata = _adata(["id_a", "id_b", "id_c", "id_d"], symbol=["GENE5", None, "other", np.nan])
    with caplog.at_level(logging.WARNING, logger="panfoma_sc"):
        match = match_genes(adata, vocab, gene_symbols="symbol", min_fraction=0.0)
    np.testing.assert_array_equal(match.columns, [0])
    assert match.unmatched == ["other"]  # not "nan" or "None"
    assert "2 of 4 genes have no symbol in adata.var['symbol'] (missing values)" in caplog.text
    assert adata.var["symbol"].isna().sum() == 2  # the user's column is left as it was


def test_missing_gene_symbols_column(vocab: GeneVocabulary):
    adata = _adata(["GENE1", "GENE2"], feature_name=["GENE1", "GENE2"])
    with pytest.raises(KeyError, match=r"gene_symbols='symbols' is not a column of adata\.var.*feature_name"):
        match_genes(adata, vocab, gene_symbols="symbols")


def test_duplicated_genes_are_reported_and_merged(vocab: GeneVocabulary, caplog: pytest.LogCaptureFixture):
    # GENE4 three times (symbol, other case, Ensembl ID) and GENE9 once
    adata = _adata(["GENE9", "gene4", "GENE4", "ENSG00000000004.2", "x"])
    with caplog.at_level(logging.WARNING, logger="panfoma_sc"):
        match = match_genes(adata, vocab)
    np.testing.assert_array_equal(match.columns, [0, 1])
    np.testing.assert_array_equal(match.gene_ids, np.array([9, 4]) + OFFSET)
    assert match.duplicated == ["GENE4", "ENSG00000000004.2"]
    np.testing.assert_array_equal(match.duplicate_columns, [2, 3])
    np.testing.assert_array_equal(match.duplicate_targets, [1, 1])  # both hold GENE4, the second used column
    assert isinstance(match.read_columns, GeneColumns)
    assert match.unmatched == ["x"]
    assert match.summary()["n_duplicated"] == 2
    assert "maximum over its columns" in caplog.text
    assert np.unique(match.gene_ids).size == match.gene_ids.size


def test_without_duplicates_the_readers_take_the_plain_columns(vocab: GeneVocabulary):
    match = match_genes(_adata(["GENE1", "GENE2", "x"]), vocab)
    assert match.read_columns is match.columns


def test_a_duplicated_gene_reads_the_maximum_of_its_columns_in_any_column_order(vocab: GeneVocabulary):
    values = np.array([[1, 0, 5, 2, 7], [0, 3, 0, 0, 0], [4, 0, 0, 9, 1]], dtype=np.float32)
    names = ["GENE9", "gene4", "GENE4", "ENSG00000000004.2", "GENE1"]
    expected = {"GENE9": [1, 0, 4], "GENE4": [5, 3, 9], "GENE1": [7, 0, 1]}  # GENE4: max of columns 1-3
    for order in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 3, 1]):
        adata = AnnData(X=sparse.csr_matrix(values[:, order]), var=pd.DataFrame(index=[names[i] for i in order]))
        match = match_genes(adata, vocab)
        (_, block), *_ = iter_row_blocks(adata.X, 10, columns=match.read_columns)
        by_id = dict(zip(match.gene_ids.tolist(), block.toarray().T.tolist(), strict=True))
        for symbol, column in expected.items():
            assert by_id[vocab.lookup(np.array([symbol]))[0]] == column


def test_gene_columns_merge_several_copies_without_adding_them():
    block = sparse.csr_matrix(np.array([[1, 2, 3, 4, 0], [0, 0, 0, 0, 6]], dtype=np.int32))
    merged = GeneColumns(first=np.array([0, 4]), others=np.array([1, 2, 3]), targets=np.array([0, 0, 0])).take(block)
    np.testing.assert_array_equal(merged.toarray(), [[4, 0], [0, 6]])
    assert merged.dtype == np.int32


def test_no_overlap_raises(vocab: GeneVocabulary):
    adata = _adata(["foo", "bar", "baz"])
    with pytest.raises(ValueError, match="vocabulary") as info:
        match_genes(adata, vocab)
    assert "gene_symbols" in str(info.value)  # names the fix


def test_a_transposed_matrix_is_named_with_the_fix(vocab: GeneVocabulary):
    genes_by_cells = AnnData(
        X=np.ones((4, 3), dtype=np.float32),
        obs=pd.DataFrame(index=["GENE1", "gene2", "ENSG00000000003", "GENE4"]),
        var=pd.DataFrame(index=["AAACCTG-1", "AAACGGG-1", "AAAGATG-1"]),
    )
    with pytest.raises(ValueError, match=r"looks transposed .* reference = reference\.T\.copy\(\)") as info:
        match_genes(genes_by_cells, vocab, adata_name="reference")
    assert "obs_names are genes (['GENE1', 'gene2', 'ENSG00000000003'])" in str(info.value)
    with pytest.raises(ValueError, match="gene_symbols") as info:  # cell names that are not genes: the usual hint
        match_genes(_adata(["foo", "bar", "baz"]), vocab)
    assert "transposed" not in str(info.value)


def test_no_overlap_with_foreign_ensembl_ids_hints_species(vocab: GeneVocabulary):
    adata = _adata(["ENSMUSG00000000001", "ENSMUSG00000000003", "ENSMUSG00000000028"])
    with pytest.raises(ValueError, match="non-human species") as info:
        match_genes(adata, vocab)
    assert "ENSMUSG" in str(info.value)  # names the species
    assert "orthologs" in str(info.value)  # and the fix


def test_no_overlap_with_genome_prefixed_names_says_to_strip_the_prefix(vocab: GeneVocabulary):
    adata = _adata(["mm10___Actb", "hg19_CD3E", "hg19_MS4A1", "mm10___Cd19"])
    with pytest.raises(ValueError, match="genome prefix") as info:
        match_genes(adata, vocab)
    assert "removeprefix('hg19_')" in str(info.value)  # the human prefix, not the mouse one
    with pytest.raises(ValueError, match=r"mouse genome prefix .* human orthologs"):
        match_genes(_adata(["mm10___Actb", "mm10___Cd19", "mm10___Cd3e"]), vocab)


def test_no_overlap_with_unknown_human_ensembl_ids_says_so(vocab: GeneVocabulary):
    adata = _adata(["ENSG99999999991", "ENSG99999999992", "ENSG99999999993"])
    with pytest.raises(ValueError, match="human Ensembl IDs") as info:
        match_genes(adata, vocab)
    assert "orthologs" not in str(info.value)


def test_low_overlap_raises(vocab: GeneVocabulary):
    names = ["GENE1"] + [f"other{i}" for i in range(19)]  # 5 % known
    adata = _adata(names)
    with pytest.raises(ValueError, match=r"min_fraction=0\.1"):
        match_genes(adata, vocab)
    match = match_genes(adata, vocab, min_fraction=0.05)
    assert match.n_matched == 1


def test_a_small_vocabulary_matching_all_its_genes_is_not_low_overlap(vocab: GeneVocabulary):
    small = GeneVocabulary.from_genes(SYMBOLS[:3])  # e.g. a model pretrained on a targeted panel
    adata = _adata([*SYMBOLS[:3], *(f"other{i}" for i in range(97))])  # 3 % of the file's genes, all of the model's
    assert match_genes(adata, small).n_matched == 3
    with pytest.raises(ValueError, match=r"Only 2 of 100 genes \(2\.0%\) .* vocabulary of 3 genes"):
        match_genes(_adata([*SYMBOLS[:2], *(f"other{i}" for i in range(98))]), small, min_fraction=0.9)


def test_input_left_untouched(vocab: GeneVocabulary):
    adata = _adata(["gene3", "foo"], symbol=["GENE3", "bar"])
    before = adata.var.copy()
    match_genes(adata, vocab)
    with pytest.raises(KeyError):
        match_genes(adata, vocab, gene_symbols="missing")
    pd.testing.assert_frame_equal(adata.var, before)
    assert adata.var_names.tolist() == ["gene3", "foo"]


def test_gene_subset_is_warned_about_and_names_raw(vocab: GeneVocabulary, caplog: pytest.LogCaptureFixture):
    full = _adata(SYMBOLS)
    subset = full[:, :10].copy()
    subset.var["highly_variable"] = True
    subset.raw = full
    with caplog.at_level(logging.WARNING, logger="panfoma_sc"):
        match_genes(subset, vocab)
    assert "only 10 genes (all marked highly_variable)" in caplog.text
    assert "adata.raw holds 20 genes: pass use_raw=True to embed them" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="panfoma_sc"):
        match = match_genes(subset, vocab, use_raw=True)
    assert match.n_genes == 20
    assert "adata.raw holds only 20 genes" in caplog.text  # named as what was read


def test_whole_transcriptome_is_not_warned_about(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch):
    import panfoma_sc.pp._genes as genes

    monkeypatch.setattr(genes, "FEW_GENES", 20)  # the 20-gene vocabulary stands for a whole transcriptome
    vocab = GeneVocabulary.from_genes(SYMBOLS, ENSEMBL)
    with caplog.at_level(logging.WARNING, logger="panfoma_sc"):
        match_genes(_adata(SYMBOLS), vocab)
    assert "genes" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="panfoma_sc"):
        match_genes(_adata(SYMBOLS[:19]), vocab)
    assert "only 19 genes" in caplog.text
    assert "embed the object before gene filtering" in caplog.text


def test_mouse_style_symbols_are_matched_with_a_warning(caplog: pytest.LogCaptureFixture):
    """Mouse symbols match a human vocabulary by name (case ignored): say so, and what to do for mouse data."""
    human = ["CD3E", "ACTB", "RPL13A", "C1ORF112", "GAPDH"]
    vocab = GeneVocabulary.from_genes(human, [f"ENSG{i:011d}" for i in range(5)])
    with caplog.at_level(logging.WARNING, logger="panfoma_sc"):
        match = match_genes(_adata(["Cd3e", "Actb", "Rpl13a", "Gapdh", "Xist"]), vocab)
    assert match.n_matched == 4
    assert "4 of the 4 matched genes in adata.var_names are written like mouse (or rat) symbols" in caplog.text
    assert "human orthologs" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="panfoma_sc"):  # human symbols, the C1orf112 family included
        match_genes(_adata(["CD3E", "ACTB", "C1orf112", "Gapdh"]), vocab)
    assert "mouse" not in caplog.text


def test_a_model_name_stands_for_its_vocabulary_and_bad_arguments_are_named(vocab: GeneVocabulary):
    from panfoma_sc.models import load

    tiny = load("panfoma-tiny")
    adata = _adata(["CD3E", "ACTB", "NOT_A_GENE"])
    by_name, by_model = match_genes(adata, "panfoma-tiny"), match_genes(adata, tiny)
    expected = match_genes(adata, tiny.vocab)
    for match in (by_name, by_model):
        np.testing.assert_array_equal(match.gene_ids, expected.gene_ids)
    with pytest.raises(ValueError, match=r"vocab must be a model's vocabulary, .* got int"):
        match_genes(adata, 3)
    with pytest.raises(ValueError, match=r"min_fraction must be a number in \[0, 1\], got 2"):
        match_genes(adata, vocab, min_fraction=2)
    with pytest.raises(ValueError, match=r"adata has no genes \(0 columns in var\)"):
        match_genes(adata[:, []].copy(), vocab)
