"""Inference shared among torchrun processes: the slices, and a two-process ``panfoma embed`` run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

import panfoma_sc as pf
from panfoma_sc.models._sharding import combine_shards, inference_world, rank_device, shard_rows


@pytest.mark.parametrize("n_rows", [0, 1, 7, 100, 257])
@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shards_cover_every_row_once_in_near_equal_contiguous_slices(n_rows, world):
    shards = [shard_rows(n_rows, rank, world) for rank in range(world)]
    np.testing.assert_array_equal(np.concatenate(shards), np.arange(n_rows))
    sizes = [s.size for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert all(np.all(np.diff(s) == 1) for s in shards)


def test_without_a_process_group_one_process_does_everything():
    assert inference_world() == (0, 1)
    output = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert combine_shards(output) is output
    np.testing.assert_array_equal(output, np.arange(12, dtype=np.float32).reshape(4, 3))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_embed_with_two_processes_matches_one_process(pbmc68k, tiny_checkpoint, tmp_path):
    adata = pbmc68k[:257].copy()  # an odd number: the two slices differ in size, and neither is a whole batch
    source = tmp_path / "in.h5ad"
    adata.write_h5ad(source)
    out = tmp_path / "out.h5ad"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}"]
    command += ["-m", "panfoma_sc.cli", "embed", str(source), str(out), "--model", str(tiny_checkpoint)]
    command += ["--batch-size", "16", "--quiet"]
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(2 processes)" in result.stdout

    pf.tl.embed(adata, tiny_checkpoint, batch_size=16, progress=False)
    written = ad.read_h5ad(out)
    np.testing.assert_array_equal(written.obs_names, adata.obs_names)
    assert np.all(np.abs(written.obsm["X_panfoma"]).sum(axis=1) > 0)  # every cell embedded by some process
    np.testing.assert_allclose(written.obsm["X_panfoma"], adata.obsm["X_panfoma"], atol=1e-5)
    written_params = dict(written.uns["panfoma"]["params"])
    # the command line adds itself to the record; the rest is the one-process record
    expected = f"panfoma embed {source} {out} --model {tiny_checkpoint} --batch-size 16 --quiet"
    assert written_params.pop("command") == expected
    assert written_params == adata.uns["panfoma"]["params"]


def test_each_process_of_a_job_takes_its_local_gpu(monkeypatch):
    """A bare "cuda" would put every process of a torchrun job on the current GPU, the same one for all."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "1")  # second node: rank 5 is the node's second process
    assert rank_device("cuda", 5, 8) == "cuda:1"
    assert rank_device("cuda", 0, 1) == "cuda"  # one process
    assert rank_device("cuda:0", 5, 8) == "cuda:0"  # named by the user: kept
    assert rank_device("cpu", 5, 8) == "cpu"
    # each process sees only its own GPU (CUDA_VISIBLE_DEVICES per process): cuda:1 does not exist there
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert rank_device("cuda", 5, 8) == "cuda"
    monkeypatch.delenv("LOCAL_RANK")  # another launcher: the current GPU, as set by the user
    assert rank_device("cuda", 5, 8) == "cuda"
