import io
import sys

from panfoma_sc import _progress
from panfoma_sc._progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_whole_lines_first_and_last(monkeypatch):
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    log = io.StringIO()
    with progress_bar(total=1000, desc="embed", unit="cells", file=log) as bar:
        for _ in range(10):
            bar.update(100)
            bar.set_postfix(loss="0.5")  # refreshes the bar at every call
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    # the interval (30 s) lets through only the first refresh and the one written at close
    assert len(lines) == 2
    assert lines[0].startswith("embed:   0%")
    assert lines[-1].startswith("embed: 100%")
    assert "1000/1000" in lines[-1]


def test_refreshes_after_the_interval_get_their_line(monkeypatch):
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.setattr(_progress, "LOG_INTERVAL_SECONDS", 0.0)
    log = io.StringIO()
    with progress_bar(total=3, desc="steps", file=log, mininterval=0) as bar:
        for _ in range(3):
            bar.update(1)
    shown = [line.split("|")[0].strip() for line in log.getvalue().splitlines()]
    # every refresh, the one at close included (it repeats 100% with the final rate)
    assert list(dict.fromkeys(shown)) == ["steps:   0%", "steps:  33%", "steps:  67%", "steps: 100%"]


def test_a_terminal_keeps_tqdms_carriage_returns(monkeypatch):
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    terminal = _Terminal()
    with progress_bar(total=2, desc="embed", file=terminal) as bar:
        bar.update(2)
    assert "\r" in terminal.getvalue()


def test_disabled_writes_nothing():
    log = io.StringIO()
    with progress_bar(total=2, enabled=False, file=log) as bar:
        bar.update(2)
    assert log.getvalue() == ""


def test_a_log_file_keeps_the_last_line_of_a_bar_that_would_vanish(monkeypatch):
    """leave=False clears a terminal's bar once the work is done; a log would keep its last refresh (4 of 10),
    which reads as if the work stopped there."""
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    log = io.StringIO()
    with progress_bar(total=10, desc="checking values", file=log, leave=False) as bar:
        for _ in range(10):
            bar.update(1)
    assert log.getvalue().splitlines()[-1].startswith("checking values: 100%")
