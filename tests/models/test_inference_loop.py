"""Block-wise inference with the background loader: worker errors and interrupts leave no thread behind."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import panfoma_sc as pf
from panfoma_sc.data import cell_keys_from_names, iter_row_blocks
from panfoma_sc.data.prefetch import THREAD_NAME
from panfoma_sc.models import PretrainedModel


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


@pytest.fixture
def model(tiny_checkpoint) -> PretrainedModel:
    return PretrainedModel.from_file(tiny_checkpoint)


@pytest.fixture
def stream(pbmc_sorted, model):
    """``embed_blocks`` arguments over 48 real cells, in blocks of 8."""
    cells = pbmc_sorted[:48]
    match = pf.pp.match_genes(cells, model.vocab)

    def arguments(**overrides):
        return {
            "blocks": iter_row_blocks(cells.X, 8, columns=match.columns),
            "n_cells": cells.n_obs,
            "gene_ids": match.gene_ids,
            "cell_keys": cell_keys_from_names(cells.obs_names),
            "device": "cpu",
            "progress": False,
        } | overrides

    return arguments


@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_prefetch_and_precision_do_not_change_the_result(model, stream, prefetch):
    reference = model.embed_blocks(**stream(prefetch=0, precision="fp32"))
    np.testing.assert_array_equal(model.embed_blocks(**stream(prefetch=prefetch)), reference)
    np.testing.assert_array_equal(model.embed_blocks(**stream(prefetch=prefetch, precision="auto")), reference)
    assert not _workers()


@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_reading_error_reaches_the_caller_and_no_thread_is_left(model, stream, prefetch):
    def failing_blocks(blocks):
        for i, block in enumerate(blocks):
            if i == 2:
                msg = "Unable to read data (truncated file)"
                raise OSError(msg)
            yield block

    arguments = stream(prefetch=prefetch)
    arguments["blocks"] = failing_blocks(arguments["blocks"])
    with pytest.raises(OSError, match=r"Unable to read data \(truncated file\)"):
        model.embed_blocks(**arguments)
    assert not _workers()


def test_tokenizer_error_in_the_worker_keeps_its_type_and_message(model, stream):
    with pytest.raises(ValueError, match="selection must be 'random' or 'top', got 'best'"):
        model.embed_blocks(**stream(prefetch=1, gene_selection="best"))
    assert not _workers()


@pytest.mark.parametrize("prefetch", [1, 2])
def test_interrupt_during_the_forward_stops_the_loader(model, stream, monkeypatch, prefetch):
    network = model.network("cpu")
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread, mid-run
        return network(*args, **kwargs)

    monkeypatch.setattr(model, "network", lambda device=None: interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.embed_blocks(**stream(prefetch=prefetch))
    assert len(calls) == 3
    assert not _workers()


def test_bf16_is_refused_on_cpu(model, stream):
    with pytest.raises(ValueError, match="runs on CUDA only"):
        model.embed_blocks(**stream(precision="bf16"))
    assert not _workers()


@pytest.mark.parametrize(("prefetch", "reader"), [(None, "caller"), (0, "caller"), (1, THREAD_NAME)])
def test_rows_are_read_by_the_worker_only_when_prefetching(model, stream, prefetch, reader):
    readers = set()

    def recording(blocks):
        for block in blocks:
            readers.add(threading.current_thread().name)
            yield block

    arguments = stream(prefetch=prefetch)  # None: pf.settings.prefetch, which is 0 on CPU
    arguments["blocks"] = recording(arguments["blocks"])
    model.embed_blocks(**arguments)
    assert readers == {threading.current_thread().name if reader == "caller" else reader}
