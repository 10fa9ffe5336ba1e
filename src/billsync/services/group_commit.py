"""Group commit: batches that arrive while a transaction is running share the next one.

Many producers post at once. Committing their batches one transaction each repeats the fixed
work of a transaction (locks, look-ups, the commit's fsync) and rewrites a line once per batch
that touches it. The writer thread instead takes every batch waiting when it becomes free and
stores them in **one** transaction, as if they had arrived back to back: each batch is still
committed whole before its caller gets an answer, and an event id sent in two of them counts
once. If a group fails as a whole, its batches are retried one by one, so that one batch can
never sink another.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime

import psycopg

from billsync.core.usage import Rejection, ValidEvent
from billsync.observability.instruments import batches_in_transaction
from billsync.services.ingest import IngestReport

log = logging.getLogger("billsync.ingest")

Outcomes = Sequence[ValidEvent | Rejection]
Record = Callable[[Outcomes, datetime], IngestReport]


@dataclass
class _Batch:
    outcomes: Outcomes
    now: datetime
    result: Future[IngestReport]


class GroupCommitter:
    def __init__(self, record: Record, *, max_group_events: int = 20_000) -> None:
        self._record = record
        self._max_group_events = max_group_events
        self._queue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.groups = 0
        self.batches = 0

    def submit(self, outcomes: Outcomes, now: datetime) -> IngestReport:
        """Store one validated batch; returns once it is committed (or raises)."""
        self._ensure_started()
        batch = _Batch(outcomes, now, Future())
        self._queue.put(batch)
        return batch.result.result()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="billsync-group-commit", daemon=True
                )
                self._thread.start()

    def _take_group(self, first: _Batch) -> tuple[list[_Batch], bool]:
        group = [first]
        size = len(first.outcomes)
        while size < self._max_group_events:
            try:
                batch = self._queue.get_nowait()
            except queue.Empty:
                break
            if batch is None:
                return group, True
            group.append(batch)
            size += len(batch.outcomes)
        return group, False

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group, stopping = self._take_group(first)
            self._store(group)
            if stopping:
                return

    def _store(self, group: list[_Batch]) -> None:
        self.groups += 1
        self.batches += len(group)
        if len(group) == 1:
            self._store_alone(group[0])
            return
        combined = [outcome for batch in group for outcome in batch.outcomes]
        try:
            with batches_in_transaction(len(group)):
                report = self._record(combined, max(batch.now for batch in group))
        except Exception:
            log.warning("ingest.group_commit.retry_alone", extra={"batches": len(group)})
            for batch in group:
                self._store_alone(batch)
            return
        offset = 0
        for batch in group:
            count = len(batch.outcomes)
            batch.result.set_result(IngestReport(report.results[offset : offset + count]))
            offset += count

    def _store_alone(self, batch: _Batch) -> None:
        for attempt in range(1, RETRIES + 1):
            try:
                batch.result.set_result(self._record(batch.outcomes, batch.now))
                return
            except Exception as error:  # the caller's request fails with it
                if attempt < RETRIES and is_retryable(error):
                    log.warning("ingest.retry", extra={"attempt": attempt, "error": str(error)})
                    time.sleep(0.05 * attempt)
                    continue
                batch.result.set_exception(error)
                return


RETRIES = 3  # a transaction the database rolled back to break a deadlock is simply run again


def is_retryable(error: BaseException) -> bool:
    """A deadlock or serialization failure (SQLSTATE class 40): the database rolled the whole
    transaction back, so running it again is safe and usually succeeds."""
    cause = getattr(error, "orig", None)
    cause = error if cause is None else cause
    state = getattr(cause, "sqlstate", None) if isinstance(cause, psycopg.Error) else None
    return isinstance(state, str) and state.startswith("40")
