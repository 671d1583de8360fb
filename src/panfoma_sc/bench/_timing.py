"""Wall time and peak memory of one benchmark method."""

from __future__ import annotations

import ctypes
import gc
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

__all__ = ["MEMORY_MEASURE", "measure"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``).

    Without this, memory an earlier method freed stays in the process and a later method that reuses it shows
    no rise in RSS, so the measure would depend on the order the methods run in.
    """
    gc.collect()
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _maxrss_kib() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


#: How ``peak_memory_mb`` is measured, for the report.
MEMORY_MEASURE = (
    "peak resident set size (RSS) of the process during the method minus the RSS at its start, in MB: "
    "Linux VmHWM after resetting it through /proc/self/clear_refs, with freed heap returned to the OS first "
    "(glibc malloc_trim) so that earlier methods do not mask the rise (elsewhere the lifetime ru_maxrss, an "
    "upper bound); counts numpy and torch memory alike"
)


@contextmanager
def measure() -> Iterator[dict[str, float]]:
    """Measure the block: ``seconds`` (wall clock) and ``peak_memory_mb`` (see :data:`MEMORY_MEASURE`).

    Examples
    --------
    >>> with measure() as cost:  # doctest: +SKIP
    ...     run_method()
    >>> cost["seconds"], cost["peak_memory_mb"]  # doctest: +SKIP
    """
    result: dict[str, float] = {}
    _release_free_memory()
    start_rss = _status_kib("VmRSS")
    exact = start_rss is not None and _reset_peak()
    start = time.perf_counter()
    try:
        yield result
    finally:
        result["seconds"] = time.perf_counter() - start
        peak = _status_kib("VmHWM") if exact else _maxrss_kib()
        base = start_rss if start_rss is not None else 0
        result["peak_memory_mb"] = max(0.0, ((peak or 0) - base) / 1024)
