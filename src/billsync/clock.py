"""The one clock. Everything that asks "what time is it" gets a Clock passed in."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, aware, in UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to: for tests, benchmarks and the accelerated demo."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, moment: datetime) -> None:
        if moment.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        with self._lock:
            self._now = moment.astimezone(UTC)

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._now += delta
            return self._now


class FileClock:
    """The time written in a file (ISO 8601), shared by several processes: the chaos suite
    moves one simulated month through an API process and a worker it keeps killing. Re-read
    whenever the file changes; never goes backwards. Never for production
    (``BILLSYNC_CLOCK_FILE``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen: int | None = None
        self._now = self._read()

    def _read(self) -> datetime:
        with open(self.path, encoding="utf-8") as handle:
            moment = datetime.fromisoformat(handle.read().strip())
        if moment.tzinfo is None:
            raise ValueError(f"{self.path}: the time needs a UTC offset")
        return moment.astimezone(UTC)

    def now(self) -> datetime:
        with self._lock:
            try:
                stamp = os.stat(self.path).st_mtime_ns
                if stamp != self._seen:
                    self._seen = stamp
                    self._now = max(self._now, self._read())
            except (OSError, ValueError):
                pass  # mid-write or gone: keep the last time read
            return self._now

    @staticmethod
    def write(path: str, moment: datetime) -> None:
        """Set the time for every process reading ``path`` (atomically: write, then rename).
        The temporary file is this thread's own: two writers in one process (a clock moved
        forward in the background and jumped meanwhile) never rename each other's file."""
        temporary = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(moment.astimezone(UTC).isoformat())
        os.replace(temporary, path)
