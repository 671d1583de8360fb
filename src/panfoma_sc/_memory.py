"""Hand memory that training freed back to the operating system."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable
from typing import TypeVar

__all__ = ["release_freed_memory", "returns_freed_memory"]

Function = TypeVar("Function", bound=Callable)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """Glibc's ``malloc_trim``, or ``None`` where the C library has none (macOS, Windows, musl)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the operating system.

    On CPU, torch keeps a training step's activations (gigabytes at batch 32) in the C heap. When they are
    freed, glibc keeps most of those pages mapped for later allocations, so after ``pf.tl.integrate`` the
    Python process still held about 4 GB of the 5 GB peak, for the rest of the session. ``malloc_trim(0)``
    gives every free page back (a few milliseconds). Elsewhere (no glibc) this does nothing. On a GPU, torch's
    caching allocator likewise keeps freed blocks reserved; they are emptied too.

    Returns
    -------
    Whether the C library had a way to do it.
    """
    torch = sys.modules.get("torch")  # imported by whatever trained; not imported here otherwise
    if torch is not None and torch.cuda.is_initialized():
        # the training peak, held by torch's caching allocator, back to the GPU; after a CUDA error this raises
        # again, and the error that the work raised is the one to report
        with contextlib.suppress(RuntimeError):
            torch.cuda.empty_cache()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def returns_freed_memory(function: Function) -> Function:
    """Decorate ``function`` to call :func:`release_freed_memory` once it has returned or raised.

    Its local variables (the network, optimizer state, activations) are gone by then.
    """

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        finally:
            release_freed_memory()

    return wrapper
