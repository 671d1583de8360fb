"""Progress bars that read well both in a terminal or notebook and in a log file.

In a terminal or a Jupyter notebook this is tqdm as usual. When standard error is a file or a pipe (a batch job's
log), tqdm would write every refresh after a carriage return, which a log shows as one ever-growing line; there
refreshes are written as lines instead: the first, then at most one every 30 seconds, and the last.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm.auto import tqdm

__all__ = ["LOG_INTERVAL_SECONDS", "progress_bar"]

#: seconds between two progress lines in a log file
LOG_INTERVAL_SECONDS = 30.0


class _LineWriter:
    """A text stream wrapper that writes tqdm's carriage-return refreshes as lines, at most one per ``interval``.

    The first refresh and the last one (written when the bar closes) always get their line.
    """

    def __init__(self, stream: TextIO, interval: float) -> None:
        self._stream, self._interval = stream, interval
        self._pending: str | None = None
        self._last_written = -math.inf

    @property
    def encoding(self) -> str | None:
        return getattr(self._stream, "encoding", None)

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()
        if line:
            self._pending = line
        if self._pending is not None and ("\n" in text or time.monotonic() - self._last_written >= self._interval):
            self._stream.write(self._pending + "\n")
            self._pending, self._last_written = None, time.monotonic()
        return len(text)

    def flush(self) -> None:
        self._stream.flush()


def _writes_to_a_log(stream: TextIO) -> bool:
    """Whether ``stream`` is neither a terminal nor a notebook's output (where tqdm draws a widget)."""
    if "ipykernel" in sys.modules:
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return not (isatty is not None and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **options: Any) -> tqdm:
    """A tqdm progress bar (``options`` as tqdm's) that writes whole lines when standard error is a log file.

    Parameters
    ----------
    iterable
        Wrapped iterable, as tqdm's first argument.
    enabled
        Show the bar at all (``progress=`` of the public functions).
    **options
        tqdm's options (``total``, ``desc``, ``unit``, ``initial``, ...).

    Returns
    -------
    The bar; use it as tqdm's (a context manager, ``update``, ``set_postfix``).
    """
    options.setdefault("disable", not enabled)
    stream = options.get("file") or sys.stderr
    if enabled and _writes_to_a_log(stream):
        options["file"] = _LineWriter(stream, LOG_INTERVAL_SECONDS)
        options["leave"] = True  # a log keeps every line: the last one should say where the work ended
        options.setdefault("ncols", 100)
        options.setdefault("ascii", True)
    return tqdm(iterable, **options)
