"""Prepare the next items of an iterator in a background thread while the caller works on the current one.

Inference uses it to read and tokenize batch ``i + 1`` while the model runs batch ``i``. The whole source
iterator, row reads included, runs in the one worker thread, in order, so a backed (h5py) file is only ever
read from one thread at a time: h5py is safe to call from any thread (it serializes every call behind its
global lock), and the caller does not touch the file while the worker runs. numpy's sorting and torch's
kernels release the GIL, so the two threads really overlap.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["Prefetcher"]

T = TypeVar("T")

#: Name of the worker thread (tests look for leftovers by it).
THREAD_NAME = "panfoma-prefetch"
#: How often a waiting thread checks whether it should stop (seconds).
_POLL_S = 0.05

_ITEM, _ERROR, _DONE = "item", "error", "done"


class Prefetcher(Generic[T]):
    """Iterate ``items`` with up to ``depth`` items prepared ahead in a background thread.

    Use it as a context manager: leaving the ``with`` block, normally or by an exception (``KeyboardInterrupt``
    included), stops the worker and joins it, so no thread outlives the block. An exception raised by
    ``items`` is re-raised by the caller's ``next()``, the same object (type, message and traceback).

    Parameters
    ----------
    items
        The source; it is iterated (and closed, when it is a generator) in the worker thread only.
    depth
        Items prepared ahead of the one the caller holds: at most ``depth + 1`` exist at a time (the worker
        waits for the caller to take one before it starts the next). ``0`` iterates in the caller's thread,
        with no worker.

    Examples
    --------
    >>> with Prefetcher(range(3), depth=1) as items:
    ...     list(items)
    [0, 1, 2]
    """

    def __init__(self, items: Iterable[T], depth: int = 1) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            msg = f"prefetch depth must be a non-negative integer (0 = no background thread), got {depth!r}."
            raise ValueError(msg)
        self.depth = depth
        self._items = items
        self._inline: Iterator[T] | None = None
        self._thread: threading.Thread | None = None
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._slots = threading.Semaphore(depth)  # one per item prepared but not yet taken
        self._stop = threading.Event()
        self._finished = False

    def __enter__(self) -> Prefetcher[T]:
        if self.depth == 0:
            self._inline = iter(self._items)
        else:
            self._thread = threading.Thread(target=self._work, name=THREAD_NAME, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._inline is not None:
            return next(self._inline)
        if self._thread is None:
            msg = "Prefetcher is used outside its `with` block."
            raise RuntimeError(msg)
        if self._finished:
            raise StopIteration
        while True:
            try:  # a timeout keeps the wait interruptible (Ctrl-C) on every platform
                kind, payload = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                continue
        if kind == _ITEM:
            self._slots.release()
            return payload
        self._finished = True
        self.close()
        if kind == _ERROR:
            raise payload
        raise StopIteration

    def close(self) -> None:
        """Stop the worker and wait for it; it finishes the item it is preparing (at most one) first."""
        if self._inline is not None:
            close = getattr(self._inline, "close", None)
            if close is not None:
                close()
            return
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        while not self._queue.empty():  # drop prepared items now, not when the Prefetcher is collected
            self._queue.get_nowait()

    def _work(self) -> None:
        """Worker thread: take a slot, prepare an item, hand it over; stop when asked or at the end."""
        iterator = None
        try:
            iterator = iter(self._items)
            while self._take_slot():
                try:
                    item = next(iterator)
                except StopIteration:
                    self._queue.put((_DONE, None))
                    return
                self._queue.put((_ITEM, item))
        except BaseException as error:  # handed to the caller, who re-raises it
            self._queue.put((_ERROR, error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # runs a generator's cleanup here, in the thread that iterated it

    def _take_slot(self) -> bool:
        """Wait until fewer than ``depth`` items wait for the caller; ``False`` when told to stop."""
        while not self._stop.is_set():
            if self._slots.acquire(timeout=_POLL_S):
                return not self._stop.is_set()
        return False
