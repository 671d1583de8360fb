"""The README's first commands run as written, offline, and warn only as the README says they do."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import scanpy as sc

README = Path(__file__).parents[1] / "README.md"


def _intro_and_first_python_block() -> tuple[str, str]:
    text = README.read_text()
    start = text.index("```python\n")
    return text[:start], text[start + len("```python\n") : text.index("```\n", start + 1)]


def _one_line_install_and_embed() -> tuple[str, str]:
    """The sentence before the install-and-embed command, and the Python code of its ``python -c "..."``."""
    text = README.read_text()
    found = re.search(r'\n([^\n]*\n[^\n]*)\n\n```bash\npip install [^\n]*python -c "(.*)"\n```', text)
    assert found, "the README lost its one-line install-and-embed command"
    return found.group(1), found.group(2).replace('\\"', '"')


@pytest.fixture
def small_pbmc68k(monkeypatch):
    """scanpy's pbmc68k_reduced cut to 64 cells (all 765 genes), so that the README's code runs in seconds."""
    full = sc.datasets.pbmc68k_reduced()
    monkeypatch.setattr(sc.datasets, "pbmc68k_reduced", lambda: full[:64].copy())
    return full.raw.n_vars


def _panfoma_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("panfoma")]


def test_the_one_line_install_and_embed_command_prints_what_it_embedded(small_pbmc68k, caplog, capsys):
    sentence, code = _one_line_install_and_embed()
    n_genes = small_pbmc68k
    assert f"{n_genes} genes" in sentence
    assert "warning" in sentence
    with caplog.at_level(logging.WARNING):
        exec(compile(code, str(README), "exec"), {})
    printed = capsys.readouterr().out.strip()
    shape = r"adata.obsm\['X_panfoma'\] \(64, \d+\)"
    assert re.fullmatch(rf"embedded 64 cells with panfoma-tiny: {shape}, \d+/{n_genes} genes matched", printed), printed
    warnings = _panfoma_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"adata holds only {n_genes} genes")


def test_the_first_readme_command_runs_and_warns_only_as_announced(small_pbmc68k, caplog):
    intro, code = _intro_and_first_python_block()
    assert "sc.datasets.pbmc68k_reduced().raw.to_adata()" in code
    n_genes = small_pbmc68k
    assert f"only {n_genes} genes" in intro  # the README says why the first run warns
    namespace: dict[str, object] = {}
    with caplog.at_level(logging.WARNING):
        exec(compile(code, str(README), "exec"), namespace)
    adata = namespace["adata"]
    assert adata.obsm["X_panfoma"].shape[0] == adata.obsm["X_umap"].shape[0] == 64
    warnings = _panfoma_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"adata holds only {n_genes} genes")
