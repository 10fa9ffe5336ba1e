"""The file clock that processes share (``BILLSYNC_CLOCK_FILE``): written atomically, also by
two threads of one process at once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from billsync.clock import FileClock

pytestmark = pytest.mark.unit


def test_two_threads_writing_the_clock_at_once_never_trip_over_each_other(
    tmp_path: Path,
) -> None:
    """A clock moved forward in the background and jumped meanwhile (bench.scale's month end)
    shared one temporary file name per process: one thread's rename took the other's file and
    the other failed with FileNotFoundError. Each thread now writes a file of its own."""
    path = str(tmp_path / "clock")
    start = datetime(2026, 11, 20, 12, tzinfo=UTC)
    errors: list[BaseException] = []
    go = threading.Barrier(4)

    def writer(offset: int) -> None:
        go.wait()
        try:
            for step in range(300):
                FileClock.write(path, start + timedelta(seconds=offset * 1000 + step))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    read = FileClock(path).now()
    assert start <= read <= start + timedelta(seconds=3299)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clock"]  # no temporary left behind
