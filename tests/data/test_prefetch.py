"""The background loader: same items in order, errors reach the caller intact, no thread outlives its block."""

from __future__ import annotations

import threading
import time

import pytest

from panfoma_sc.data import Prefetcher
from panfoma_sc.data.prefetch import THREAD_NAME


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


@pytest.fixture(autouse=True)
def _no_worker_left():
    assert not _workers()
    yield
    assert not _workers(), "a prefetch thread outlived its `with` block"


@pytest.mark.parametrize("depth", [0, 1, 2, 5])
def test_same_items_in_order(depth):
    with Prefetcher((i * i for i in range(20)), depth) as items:
        assert list(items) == [i * i for i in range(20)]
        assert next(items, "end") == "end"


def test_empty_source():
    with Prefetcher(iter(()), 1) as items:
        assert list(items) == []


def test_items_are_prepared_in_the_worker_thread():
    def source():
        for _ in range(3):
            yield threading.current_thread().name

    with Prefetcher(source(), 1) as items:
        assert list(items) == [THREAD_NAME] * 3
    with Prefetcher(source(), 0) as items:
        assert list(items) == [threading.current_thread().name] * 3


class _BadBlockError(KeyError):
    """An error type the caller would not expect from a loader, to check that the type survives."""


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_worker_error_reaches_the_caller_with_its_type_and_message(depth):
    def source():
        yield 1
        yield 2
        raise _BadBlockError("row block 2 is unreadable")

    received = []
    with pytest.raises(_BadBlockError, match="row block 2 is unreadable") as caught, Prefetcher(source(), depth) as it:
        received.extend(it)
    assert received == [1, 2]
    assert any(frame.name == "source" for frame in caught.traceback)  # the worker's frames are kept


def test_error_at_the_start_of_the_source():
    class Unreadable:
        def __iter__(self):
            msg = "cannot open the file"
            raise OSError(msg)

    with pytest.raises(OSError, match="cannot open the file"), Prefetcher(Unreadable(), 1) as items:
        list(items)


@pytest.mark.parametrize("depth", [1, 2])
def test_interrupt_in_the_caller_stops_and_joins_the_worker(depth):
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    with pytest.raises(KeyboardInterrupt), Prefetcher(endless(), depth) as items:  # noqa: PT012
        for i in items:
            if i == 3:
                raise KeyboardInterrupt
    assert closed.is_set(), "the source generator was not closed"


def test_worker_busy_on_a_slow_item_is_still_joined():
    started = threading.Event()

    def slow():
        yield 0
        started.set()
        time.sleep(0.3)  # the worker is in here when the caller gives up
        yield 1

    with pytest.raises(RuntimeError, match="caller gave up"), Prefetcher(slow(), 1) as items:  # noqa: PT012
        next(items)
        started.wait(5)
        msg = "caller gave up"
        raise RuntimeError(msg)


@pytest.mark.parametrize("depth", [1, 3])
def test_at_most_depth_items_wait_beyond_the_one_in_use(depth):
    produced = []

    def source():
        for i in range(12):
            produced.append(i)
            yield i

    with Prefetcher(source(), depth) as items:
        for taken, item in enumerate(items, start=1):
            time.sleep(0.02)  # give the worker every chance to run ahead
            assert len(produced) <= taken + depth, f"{len(produced)} items made after {taken} were taken"
            assert item == taken - 1


@pytest.mark.parametrize("depth", [-1, 1.5, True, "1"])
def test_invalid_depth(depth):
    with pytest.raises(ValueError, match="non-negative integer"):
        Prefetcher(range(3), depth)


def test_iterating_outside_the_block_is_an_error():
    with pytest.raises(RuntimeError, match="outside its `with` block"):
        next(Prefetcher(range(3), 1))
