"""Memory freed by training goes back to the operating system (glibc's malloc_trim)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from panfoma_sc._memory import release_freed_memory, returns_freed_memory

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or release_freed_memory() is False,
    reason="malloc_trim is glibc's (Linux); elsewhere release_freed_memory does nothing",
)

# Resident memory (MB) of the child process, read from /proc.
_RESIDENT = """
def resident_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024
"""


def _run(code: str) -> dict:
    """Run ``code`` in a fresh interpreter and return the JSON it prints last."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_RESIDENT) + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc_only
def test_freed_heap_pages_go_back_to_the_system():
    """Pages that glibc kept after free (its mmap threshold raised by a large free) are returned."""
    result = _run(
        """
        import json
        import torch
        from panfoma_sc._memory import release_freed_memory

        large = torch.empty(16 * 2**20, dtype=torch.uint8).fill_(1)
        del large  # freeing a 16 MB mapping raises glibc's mmap threshold to 16 MB
        blocks = [torch.empty(4 * 2**20, dtype=torch.uint8).fill_(1) for _ in range(150)]  # 600 MB from the heap
        pin = torch.empty(2**20, dtype=torch.uint8).fill_(1)  # above them: the heap top cannot shrink past it
        before = resident_mb()
        del blocks
        freed = resident_mb()
        released = release_freed_memory()
        print(json.dumps({"before": before, "freed": freed, "after": resident_mb(), "released": released}))
        """
    )
    assert result["released"] is True
    assert result["freed"] > result["before"] - 100  # glibc kept the pages: what this module is for
    assert result["after"] < result["before"] - 450


def test_the_decorator_releases_after_return_and_after_raise(monkeypatch):
    import panfoma_sc._memory as memory

    calls = []
    monkeypatch.setattr(memory, "release_freed_memory", lambda: calls.append("released"))

    @memory.returns_freed_memory
    def works(x):
        """Doubles."""
        calls.append("ran")
        return 2 * x

    @memory.returns_freed_memory
    def fails():
        calls.append("ran")
        raise RuntimeError("stop")

    assert works(3) == 6
    assert works.__doc__ == "Doubles."
    with pytest.raises(RuntimeError, match="stop"):
        fails()
    assert calls == ["ran", "released", "ran", "released"]
    assert returns_freed_memory is memory.returns_freed_memory


@glibc_only
def test_integrate_leaves_no_training_memory_behind():
    """pf.tl.integrate's training step takes gigabytes on CPU; the process gives them back when it returns."""
    result = _run(
        """
        import json, resource
        import scanpy as sc
        import panfoma_sc as pf

        adata = sc.datasets.pbmc68k_reduced()[:96].copy()
        before = resident_mb()
        pf.tl.integrate(adata, "phase", use_raw=True, max_steps=1, batch_size=32, progress=False, device="cpu")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"before": before, "peak": peak, "after": resident_mb()}))
        """
    )
    training = result["peak"] - result["before"]
    assert training > 500  # the step needed memory at all, else this test shows nothing
    assert result["after"] - result["before"] < 0.25 * training


def test_gpu_blocks_freed_by_training_go_back_to_the_gpu(monkeypatch):
    """torch's caching allocator keeps a training step's freed blocks reserved for the process: after
    pf.tl.integrate on a GPU they would stay out of reach of everything else in the session."""
    import torch

    emptied = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    release_freed_memory()
    assert emptied == [True]
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    release_freed_memory()
    assert emptied == [True]  # no CUDA context is created where there was none
