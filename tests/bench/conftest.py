"""Fixtures of the benchmark tests."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

import pytest

from panfoma_sc.cli import EXIT_BAD_INPUT, main


@pytest.fixture
def refused_run(tmp_path, capsys) -> Callable[[Mapping], str]:
    """``refused_run(config)``: ``panfoma bench run`` of ``config`` exits 2 and writes nothing; returns stderr."""

    def run(config: Mapping) -> str:
        path = tmp_path / "bench.json"
        path.write_text(json.dumps(config))
        out = tmp_path / "out"
        assert main(["bench", "run", str(path), "--out", str(out)]) == EXIT_BAD_INPUT
        assert not out.exists()
        return capsys.readouterr().err

    return run
