"""Input checks on expression values."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from anndata import AnnData
from scipy import sparse

from panfoma_sc.data import GeneColumns
from panfoma_sc.pp import check_expression


def _counts(n_cells: int = 20, n_genes: int = 30, *, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(1.0, size=(n_cells, n_genes)).astype(np.float32)
    counts[:, 0] += 1  # every cell expresses something
    return counts


def _log_normalized(counts: np.ndarray) -> np.ndarray:
    return np.log1p(counts / counts.sum(1, keepdims=True) * 1e4).astype(np.float32)


@pytest.mark.parametrize("to_matrix", [np.asarray, sparse.csr_matrix, sparse.csc_matrix], ids=["dense", "csr", "csc"])
def test_counts_detected(to_matrix):
    counts = _counts()
    report = check_expression(AnnData(X=to_matrix(counts)))
    assert report.kind == "counts"
    assert report.n_cells == 20
    assert report.n_genes == 30
    assert report.max_value == pytest.approx(counts.max())
    assert report.summary()["input_kind"] == "counts"


@pytest.mark.parametrize("to_matrix", [np.asarray, sparse.csr_matrix], ids=["dense", "csr"])
def test_log_normalized_detected(to_matrix):
    report = check_expression(AnnData(X=to_matrix(_log_normalized(_counts()))))
    assert report.kind == "log-normalized"


def test_tpm_like_scale_is_nonnegative():
    counts = _counts()
    tpm = counts / counts.sum(1, keepdims=True) * 1e6 + 0.5 * (counts > 0)
    assert check_expression(AnnData(X=tpm.astype(np.float32))).kind == "nonnegative"


@pytest.mark.parametrize("dtype", [bool, np.float32])
def test_a_binary_matrix_is_reported_and_warned_about(dtype, caplog):
    presence = _counts() > 0
    with caplog.at_level("WARNING", logger="panfoma_sc"):
        report = check_expression(AnnData(X=sparse.csr_matrix(presence.astype(dtype))))
    assert report.kind == "binary"
    assert "adata.X holds only 0 and 1" in caplog.text
    assert "arbitrary subset" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="panfoma_sc"):
        assert check_expression(AnnData(X=_counts())).kind == "counts"
    assert "only 0 and 1" not in caplog.text


def test_layer_is_used():
    counts = _counts()
    adata = AnnData(X=_log_normalized(counts), layers={"counts": sparse.csr_matrix(counts)})
    assert check_expression(adata, layer="counts").kind == "counts"
    assert check_expression(adata).kind == "log-normalized"
    with pytest.raises(KeyError, match="counts_raw"):
        check_expression(adata, layer="counts_raw")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("to_matrix", [np.asarray, sparse.csr_matrix], ids=["dense", "csr"])
def test_nan_or_inf_raise(bad: float, to_matrix):
    values = _counts()
    values[3, 4] = bad
    with pytest.raises(ValueError, match="NaN"):
        check_expression(AnnData(X=to_matrix(values)))


def test_nan_error_counts_and_locates_the_values_and_names_the_outer_join_fix():
    import anndata as ad

    first = AnnData(X=_counts())
    first.var_names = [f"G{i}" for i in range(30)]
    second = AnnData(X=_counts(n_genes=32, seed=1))
    second.var_names = [f"G{i}" for i in range(32)]
    second.obs_names = [f"other-{i}" for i in range(second.n_obs)]
    joined = ad.concat([first, second], join="outer")  # G30, G31 missing in `first`: NaN there
    before = joined.X.copy()
    with pytest.raises(ValueError, match="NaN or infinite values") as info:
        check_expression(joined)
    message = str(info.value)
    assert f"{2 * first.n_obs} values, e.g. in cells ['0', '1', '2'] and genes ['G30', 'G31']" in message
    assert "fill_value=0" in message
    np.testing.assert_array_equal(joined.X, before)


def test_negative_value_error_locates_a_single_corrupt_entry():
    values = _counts()
    values[5, 7] = -1.0
    adata = AnnData(X=sparse.csr_matrix(values))
    with pytest.raises(ValueError, match=r"1 value, e.g. in cells \['5'\] and genes \['7'\]; smallest -1\)"):
        check_expression(adata)


def test_bad_values_found_in_a_later_block_name_that_block():
    values = _counts()
    values[-1, 0] = np.inf
    adata = AnnData(X=values)
    last = adata.obs_names[-1]
    with pytest.raises(
        ValueError, match=rf"1 value in the block of \d+ cells where they were found, e.g. in cells \['{last}'\]"
    ):
        check_expression(adata, block_size=7)


@pytest.mark.parametrize("to_matrix", [np.asarray, sparse.csr_matrix], ids=["dense", "csr"])
def test_negative_values_raise(to_matrix):
    logged = _log_normalized(_counts())
    scaled = (logged - logged.mean(0)) / (logged.std(0) + 1e-6)
    with pytest.raises(ValueError, match=r"z-scored.*the counts of a layer") as info:
        check_expression(AnnData(X=to_matrix(scaled)))
    assert "scale" in str(info.value)


@pytest.mark.parametrize("max_value", [None, 10.0, 5.0, 2.0])
def test_genes_scaled_to_unit_variance_without_centring_raise(max_value):
    """sc.pp.scale(zero_center=False) leaves no negative value, but every gene's standard deviation is 1."""
    import scanpy as sc

    counts = np.random.default_rng(1).negative_binomial(1, 0.3, size=(200, 60)).astype(np.float32)
    counts[:, 0] += 1
    logged = AnnData(X=_log_normalized(counts))
    check_expression(logged)  # natural log values: standard deviations differ from gene to gene
    scaled = logged.copy()
    sc.pp.scale(scaled, zero_center=False, max_value=max_value)
    assert scaled.X.min() >= 0
    # no layer and no .raw to offer: the fix says where counts usually are, naming no layer that is not there
    generic = r"instead \(the counts of a layer, of adata\.raw, or of the file before scaling\)\.$"
    with pytest.raises(ValueError, match=rf"looks scaled per gene .* {generic}"):
        check_expression(scaled)
    with pytest.raises(ValueError, match=r"looks scaled per gene"):
        check_expression(scaled, block_size=7)  # the per-gene statistics add up across row blocks


def test_clipped_scaling_names_the_common_maximum():
    import scanpy as sc

    counts = np.random.default_rng(2).negative_binomial(1, 0.3, size=(200, 60)).astype(np.float32)
    clipped = AnnData(X=_log_normalized(counts))
    sc.pp.scale(clipped, zero_center=False, max_value=2.0)
    assert 0.1 < np.mean(clipped.X == 2.0) < 0.5  # clipped in part: the genes still vary
    with pytest.raises(ValueError, match=r"scaled per gene and clipped .*same maximum, 2,"):
        check_expression(clipped)


def test_empty_cell_raises():
    counts = _counts()
    counts[7] = 0
    adata = AnnData(X=sparse.csr_matrix(counts))
    with pytest.raises(ValueError, match=r"1 cell has no expressed gene.*'7'"):
        check_expression(adata)


def test_empty_cell_among_matched_columns_raises():
    counts = _counts()
    counts[2, 1:] = 0  # only gene 0 expressed
    adata = AnnData(X=counts)
    assert check_expression(adata).kind == "counts"
    with pytest.raises(ValueError, match="among the genes known to the model"):
        check_expression(adata, columns=np.arange(1, 30))


def test_empty_cells_found_across_blocks():
    counts = _counts(25)
    counts[[1, 13, 24]] = 0
    with pytest.raises(ValueError, match="3 cells"):
        check_expression(AnnData(X=counts), block_size=4)


def test_no_cells_raises():
    with pytest.raises(ValueError, match="no cells"):
        check_expression(AnnData(X=np.zeros((0, 5), dtype=np.float32)))


def test_no_genes_raises():
    with pytest.raises(ValueError, match="no genes"):
        check_expression(AnnData(X=np.zeros((5, 0), dtype=np.float32)))


def test_block_size_must_be_a_positive_integer():
    with pytest.raises(ValueError, match=r"block_size must be an integer >= 1, got 0"):
        check_expression(AnnData(X=np.ones((5, 3), dtype=np.float32)), block_size=0)


def test_input_left_untouched():
    values = _log_normalized(_counts())
    values[0, 0] = -1.0
    adata = AnnData(X=sparse.csr_matrix(values))
    before = adata.X.toarray()
    with pytest.raises(ValueError, match="negative"):
        check_expression(adata)
    np.testing.assert_array_equal(adata.X.toarray(), before)


@pytest.mark.parametrize("to_matrix", [np.asarray, sparse.csr_matrix], ids=["dense", "csr"])
def test_backed(tmp_path, to_matrix):
    counts = _counts(30)
    path = tmp_path / "counts.h5ad"
    AnnData(X=to_matrix(counts)).write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        assert backed.isbacked
        report = check_expression(backed, block_size=7)
        assert report.kind == "counts"
        assert report.max_value == pytest.approx(counts.max())
    finally:
        backed.file.close()


def test_backed_errors(tmp_path):
    counts = _counts(30)
    counts[29] = 0
    path = tmp_path / "empty_cell.h5ad"
    AnnData(X=sparse.csr_matrix(counts)).write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        with pytest.raises(ValueError, match="1 cell has no expressed gene"):
            check_expression(backed, block_size=8)
    finally:
        backed.file.close()


def test_the_raw_fix_is_offered_where_raw_exists_and_works_backed_too(tmp_path):
    """Scaled X with a log-normalized ``.raw`` (scanpy's usual object): ``use_raw=True`` is offered and passes."""
    import scanpy as sc

    sc.datasets.pbmc68k_reduced()[:40].copy().write_h5ad(tmp_path / "scaled.h5ad")  # X scaled, .raw log-normalized
    backed = ad.read_h5ad(tmp_path / "scaled.h5ad", backed="r")
    try:
        with pytest.raises(ValueError, match=r"instead, e\.g\. use_raw=True \(adata\.raw\)\.$"):
            check_expression(backed)  # no layers: only .raw is offered
        report = check_expression(backed, use_raw=True)  # read in row blocks from the file
        assert (report.kind, report.n_cells, report.n_genes) == ("log-normalized", 40, backed.raw.n_vars)
    finally:
        backed.file.close()
    in_memory = ad.read_h5ad(tmp_path / "scaled.h5ad")
    assert check_expression(in_memory, use_raw=True).kind == "log-normalized"
    with pytest.raises(ValueError, match=r"has negative values.*use_raw=True"):
        check_expression(in_memory)


def test_use_raw_without_raw_or_with_a_layer_is_refused():
    adata = AnnData(X=np.ones((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"use_raw=True, but adata\.raw is empty: pass use_raw=False to read adata\.X"):
        check_expression(adata, use_raw=True)
    adata.raw = adata.copy()
    adata.layers["counts"] = adata.X.copy()
    with pytest.raises(ValueError, match=r"pass layer='counts' or use_raw=True, not both"):
        check_expression(adata, layer="counts", use_raw=True)


@pytest.mark.parametrize("progress", [True, False])
def test_slow_checks_show_progress_only_when_asked(progress, monkeypatch):
    """The checks read every value before any model work: on a large or backed file that takes a while, so a bar
    counts the cells (tqdm's delay hides it when the check is quick; forced to 0 here)."""
    import io

    from panfoma_sc._progress import progress_bar
    from panfoma_sc.pp import _checks

    stream = io.StringIO()

    def immediate_bar(*args, **options):
        options.update(delay=0, file=stream, leave=True)
        return progress_bar(*args, **options)

    monkeypatch.setattr(_checks, "progress_bar", immediate_bar)
    adata = AnnData(sparse.csr_matrix(_counts(n_cells=50)))
    check_expression(adata, block_size=8, progress=progress)
    text = stream.getvalue()
    if progress:
        assert "checking values" in text
        assert "50/50" in text
    else:
        assert text == ""


def _two_copies_of_gene_1(values: np.ndarray) -> tuple[AnnData, GeneColumns]:
    """Columns 0-3 are genes 0-3; column 4 holds gene 1 again (as C2ORF15 beside C2orf15)."""
    adata = AnnData(X=sparse.csr_matrix(values))
    adata.var_names = ["G0", "G1", "G2", "G3", "g1"]
    return adata, GeneColumns(first=np.arange(4), others=np.array([4]), targets=np.array([1]))


@pytest.mark.parametrize(("row", "column"), [(2, 3), (5, 1), (7, 4)], ids=["other gene", "first copy", "second copy"])
@pytest.mark.parametrize("bad", [-1.0, np.nan])
def test_bad_values_are_found_in_any_column_when_genes_are_merged(row, column, bad):
    values = _counts(n_genes=5)
    values[:, 4] = 3.0  # the second copy is the larger one: a merged read would hide the first copy's values
    values[row, column] = bad
    adata, columns = _two_copies_of_gene_1(values)
    with pytest.raises(ValueError, match=r"NaN or infinite|negative") as info:
        check_expression(adata, columns=columns)
    assert f"in cells ['{row}'] and genes ['{adata.var_names[column]}']" in str(info.value)


def test_merged_genes_are_checked_as_the_model_reads_them():
    values = _counts(n_genes=5)
    values[:, 1] = 0.0  # gene 1's first copy is empty in every cell, its second copy is not
    values[:, 4] = 2.0
    values[:, [0, 2, 3]] = 0.0
    adata, columns = _two_copies_of_gene_1(values)
    assert check_expression(adata, columns=columns).kind == "counts"  # no cell is empty on the model's genes
    with pytest.raises(ValueError, match="no expressed gene"):
        check_expression(adata, columns=np.arange(4))  # without the second copy every cell is empty


def test_the_fix_for_scaled_values_names_the_layers_there_are():
    scaled = AnnData(X=np.array([[-1.0, 2.0], [1.0, -2.0]], dtype=np.float32))
    scaled.layers["umi"] = np.array([[1.0, 5.0], [3.0, 0.0]], dtype=np.float32)
    scaled.layers["spliced"] = scaled.layers["umi"].copy()
    with pytest.raises(ValueError, match=r"instead, e\.g\. layer='umi' or layer='spliced'\.$"):
        check_expression(scaled)
    assert check_expression(scaled, layer="umi").kind == "counts"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (np.array([True, False, True]), r"not a boolean mask: pass np\.flatnonzero\(mask\)"),
        (np.array([0, 5]), r"positions between 0 and 2 \(adata has 3 cells\)"),
        (np.array([2, 0]), r"ascending and without repeats: pass np\.unique\(rows\)"),
        (np.array([1, 1]), r"ascending and without repeats"),
        (np.array([2, 0], dtype=np.uint64), r"ascending and without repeats"),  # no wrap-around of the difference
        (np.array([0.0, 1.0]), r"integer row positions, got float64"),
    ],
)
def test_rows_that_are_not_ascending_cell_positions_are_refused(rows, message):
    adata = AnnData(X=np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]], dtype=np.float32))
    with pytest.raises(ValueError, match=message):
        check_expression(adata, rows=rows)
    assert check_expression(adata, rows=np.array([0, 2])).n_cells == 2


def test_with_use_raw_the_fix_names_the_layers_of_the_callers_object():
    adata = AnnData(X=np.array([[1.0, 5.0], [3.0, 1.0]], dtype=np.float32))
    adata.layers["counts"] = adata.X.copy()
    adata.raw = AnnData(X=np.array([[-1.0, 2.0], [1.0, -2.0]], dtype=np.float32))  # a scaled .raw
    with pytest.raises(ValueError, match=r"adata\.raw\.X has negative values .* instead, e\.g\. layer='counts'\.$"):
        check_expression(adata, use_raw=True)
