"""Streaming ingestion: usage events from a JetStream stream into the ledger, each counted once.

The loop pulls up to ``batch`` messages, decodes and validates their events
(:mod:`billsync.core.usage_messages`), stores them through the ingest service in **one**
transaction, and acks every message of the batch **only after the commit**. Whatever happens
in between, nothing is lost or counted twice:

- the process dies after the commit but before the acks: JetStream redelivers the messages
  after ``ack_wait``, and their events, whose ids are already in the ledger, come back as
  duplicates;
- an event is bad input (a per-event rejection: unknown metric, unknown account, ...): the
  verdict will not change on redelivery, so it goes to the rejects file and its message is
  acked; a message that is not JSON at all is *terminated* (JetStream never delivers it again);
- the database is down or refuses the transaction for a while (lost connection, lock timeout,
  deadlock): nothing is acked, no more is pulled, the same batch is retried with back-off, and
  its messages are kept from redelivery with ``in_progress`` meanwhile;
- any other error (a bug): the messages held are handed back (``nak``) and the error raised.

At most two batches are held at once: the one being committed, and the next one, pulled and
decoded while the commit runs (the commit waits on the database with the interpreter free).
Graceful stop: the batch being committed is finished (commit and acks); one pulled but not yet
started is handed back for immediate redelivery.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import IO

import orjson
import psycopg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from billsync.core.usage import Rejection, ValidEvent
from billsync.core.usage_messages import INVALID_JSON, DecodedMessage, decode_message
from billsync.jetstream import Delivery, DeliveryInfo, JetStreamError, JetStreamSource
from billsync.services.group_commit import is_retryable
from billsync.services.ingest import EventStatus, IngestReport, IngestService

log = logging.getLogger("billsync.stream")


@dataclass(frozen=True, slots=True)
class StreamOptions:
    batch: int = 2000  # messages per pull, and so per transaction
    fetch_wait: float = 1.0  # how long a pull waits for a first message when the stream is idle
    max_events: int | None = None  # stop once this many events were handled
    exit_when_idle: float | None = None  # stop after this many seconds without a message
    retry_first: float = 0.2  # back-off while the database refuses batches: first delay
    retry_max: float = 10.0  # ... doubling up to this
    progress_every: float = 5.0  # seconds between two progress reports

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError("batch must be at least 1")
        if self.retry_first <= 0 or self.retry_max < self.retry_first:
            raise ValueError("need 0 < retry_first <= retry_max")


@dataclass
class StreamStats:
    messages: int = 0
    events: int = 0  # handled: accepted + duplicates + rejected
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    malformed_messages: int = 0  # not JSON at all: terminated (their events count as rejected)
    batches: int = 0
    retries: int = 0  # transactions refused by the database and tried again
    behind: int | None = None  # messages of the stream not yet delivered, after the last batch
    waiting_for_database: str | None = None  # set while the database refuses the batch
    # Rejections by code: how many, and the first one's message (the rejects file has all).
    rejections: dict[str, tuple[int, str]] = field(default_factory=dict)
    first_pulled: float | None = None  # monotonic time of the first message
    last_committed: float | None = None  # ... and of the last commit

    def busy_seconds(self) -> float:
        """From the first message to the last commit: idle time before and after left out."""
        if self.first_pulled is None or self.last_committed is None:
            return 0.0
        return self.last_committed - self.first_pulled

    def rate(self) -> float:
        """Events per second over :meth:`busy_seconds`."""
        busy = self.busy_seconds()
        return self.events / busy if busy > 0 else 0.0

    def snapshot(self) -> StreamStats:
        return replace(self, rejections=dict(self.rejections))


def is_transient(error: BaseException) -> bool:
    """The database could not take the batch right now, through no fault of the batch: a lost
    or refused connection, a lock wait that timed out, a transaction rolled back to break a
    deadlock or a serialization conflict, an exhausted pool — the errors the API answers with
    503 ``database_unavailable``. Anything else (a violated constraint, a bug) would fail the
    same way again."""
    if is_retryable(error):
        return True
    if isinstance(error, DBAPIError):
        return error.connection_invalidated or isinstance(error, OperationalError | InterfaceError)
    return isinstance(error, PoolTimeout | psycopg.OperationalError | sqlite3.OperationalError)


class _Stopped(Exception):
    """Asked to stop while the database refused the batch: it is handed back, not finished."""


@dataclass(slots=True)
class _Batch:
    number: int
    deliveries: list[Delivery]
    messages: list[DecodedMessage]  # one per delivery
    starts: list[int]  # index in ``outcomes`` of each delivery's first event
    outcomes: list[ValidEvent | Rejection]
    now: datetime
    touched: float  # when its messages' ack timers last restarted (delivery or in_progress)


class RejectsLog:
    """Rejected events as JSON Lines: where each came from, why, and its text as sent.

    Written before the acks and synced to disk, so an acked rejection is never lost; a crash
    between the two can write the same rejection twice."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self._written = False

    def write(
        self, info: DeliveryInfo, position: int | None, code: str, message: str, raw: bytes
    ) -> None:
        self.out.write(
            orjson.dumps(
                {"stream_sequence": info.stream_sequence, "subject": info.subject,
                 "position": position, "error": {"code": code, "message": message},
                 "raw": raw.decode("utf-8", "replace")}
            ) + b"\n"
        )  # fmt: skip
        self._written = True

    def sync(self) -> None:
        if self._written:
            self.out.flush()
            os.fsync(self.out.fileno())
            self._written = False


class StreamConsumer:
    """Consumes a JetStream durable consumer into the ledger (see the module's docstring)."""

    def __init__(
        self,
        ingest: IngestService,
        source: JetStreamSource,
        options: StreamOptions | None = None,
        *,
        rejects: RejectsLog | None = None,
        on_progress: Callable[[StreamStats], None] | None = None,
        after_commit: Callable[[int], None] | None = None,
    ) -> None:
        self.ingest = ingest
        self.source = source
        self.options = options or StreamOptions()
        self.rejects = rejects
        self.on_progress = on_progress
        # Called with the batch's number between its commit and its acks (fault injection).
        self.after_commit = after_commit
        self.stats = StreamStats()
        self._held: list[_Batch] = []
        self._seen_events = 0  # pulled and decoded, committed or not
        self._batches = 0
        self._last_progress = time.monotonic()

    # -- the loop --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> StreamStats:
        """Consume until ``stop`` is set, ``max_events`` were handled or the stream stayed idle
        ``exit_when_idle`` seconds; returns the tally."""
        stop = stop or asyncio.Event()
        limit = self.source.max_ack_pending
        if 0 < limit < 2 * self.options.batch:
            # Two batches are held at once: a lower limit makes every other pull wait.
            log.warning(
                "stream.max_ack_pending.low",
                extra={"max_ack_pending": limit, "batch": self.options.batch},
            )
        keeper = asyncio.create_task(self._keep_alive())
        committing: asyncio.Task[None] | None = None
        pulled: list[Delivery] = []  # pulled, not yet part of a batch
        last_delivery = time.monotonic()
        try:
            while not stop.is_set() and self._room() > 0:
                pulled = await self.source.pull(self._room(), self.options.fetch_wait)
                if committing is not None and committing.done():
                    await committing  # raises its error, if it failed
                    committing = None
                if not pulled:
                    idle = time.monotonic() - last_delivery
                    idle_limit = self.options.exit_when_idle
                    if committing is None and idle_limit is not None and idle >= idle_limit:
                        break
                    self._progress()
                    continue
                last_delivery = time.monotonic()
                if stop.is_set():
                    break  # pulled, not started: handed back below
                batch = self._decode(pulled)
                pulled = []
                if committing is not None:
                    await committing
                committing = asyncio.create_task(self._store(batch, stop))
                self._progress()
            if committing is not None:
                await committing
                committing = None
        except _Stopped:
            pass
        finally:
            keeper.cancel()
            if committing is not None and not committing.done():
                # An error elsewhere: let the commit in flight finish (a thread cannot be
                # interrupted), so that its acks are sent or its messages handed back.
                await asyncio.gather(committing, return_exceptions=True)
            if pulled:
                await self._nak_quietly(pulled)
            await self._hand_back()
        self._progress(force=True)
        return self.stats

    async def run_once(self) -> StreamStats | None:
        """Pull one batch, commit it, ack it: no overlap between batches, for tests and tools.
        Returns the tally, or None if no message came within ``fetch_wait``."""
        deliveries = await self.source.pull(self._room(), self.options.fetch_wait)
        if not deliveries:
            return None
        keeper = asyncio.create_task(self._keep_alive())
        try:
            await self._store(self._decode(deliveries), asyncio.Event())
        finally:
            keeper.cancel()
            await self._hand_back()
        return self.stats

    async def consume_batches(self, count: int) -> StreamStats:
        """Run :meth:`run_once` ``count`` times (fewer if the stream runs dry)."""
        for _ in range(count):
            if await self.run_once() is None:
                break
        return self.stats

    def _room(self) -> int:
        """How many messages the next pull may take: a batch, or what is left of max_events."""
        if self.options.max_events is None:
            return self.options.batch
        return max(0, min(self.options.batch, self.options.max_events - self._seen_events))

    # -- one batch -------------------------------------------------------------------------

    def _decode(self, deliveries: list[Delivery]) -> _Batch:
        if self.stats.first_pulled is None:
            self.stats.first_pulled = time.monotonic()
        rules = self.ingest.rules()
        messages: list[DecodedMessage] = []
        starts: list[int] = []
        outcomes: list[ValidEvent | Rejection] = []
        for delivery in deliveries:
            message = decode_message(delivery.data, rules)
            messages.append(message)
            starts.append(len(outcomes))
            outcomes.extend(message.outcomes)
            self._seen_events += len(message.outcomes) + len(message.unreadable)
        self._batches += 1
        batch = _Batch(
            self._batches, deliveries, messages, starts, outcomes, rules.now, time.monotonic()
        )
        self._held.append(batch)
        return batch

    async def _store(self, batch: _Batch, stop: asyncio.Event) -> None:
        report = await self._commit(batch, stop)
        if self.after_commit is not None:
            self.after_commit(batch.number)
        self._record_rejections(batch, report)
        malformed = [
            d for d, m in zip(batch.deliveries, batch.messages, strict=True) if m.malformed
        ]
        if malformed:
            await self.source.term(malformed)
            readable = [
                d for d, m in zip(batch.deliveries, batch.messages, strict=True) if not m.malformed
            ]
            await self.source.ack(readable)
        else:
            await self.source.ack(batch.deliveries)
        self._held.remove(batch)
        self._tally(batch, report, len(malformed))

    async def _commit(self, batch: _Batch, stop: asyncio.Event) -> IngestReport:
        """Store the batch in one transaction; while the database refuses it for a transient
        reason, wait (doubling the delay) and try again, until it succeeds or ``stop``."""
        delay = self.options.retry_first
        while True:
            try:
                report = await asyncio.to_thread(self.ingest.record, batch.outcomes, batch.now)
            except Exception as error:
                if not is_transient(error):
                    log.exception("stream.batch.failed", extra={"messages": len(batch.deliveries)})
                    raise
                self._refused(batch, error, delay)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                except TimeoutError:
                    delay = min(delay * 2, self.options.retry_max)
                    continue
                raise _Stopped from None
            if self.stats.waiting_for_database is not None:
                log.warning("stream.database.available", extra={"retries": self.stats.retries})
                self.stats.waiting_for_database = None
                self._progress(force=True)
            return report

    def _refused(self, batch: _Batch, error: Exception, delay: float) -> None:
        cause = getattr(error, "orig", None) or error
        first = self.stats.waiting_for_database is None
        self.stats.retries += 1
        self.stats.waiting_for_database = f"{type(cause).__name__}: {cause}".strip()[:300]
        log.warning(
            "stream.database.unavailable",
            extra={
                "error": type(cause).__name__,
                "messages_held": len(batch.deliveries),
                "retry_in_seconds": delay,
            },
        )
        if first:
            self._progress(force=True)

    def _record_rejections(self, batch: _Batch, report: IngestReport) -> None:
        """Rejected events and unreadable messages to the rejects file (synced before the
        acks), the log and the summary."""
        describe = self.source.describe
        codes: Counter[str] = Counter()
        for index, result in enumerate(report.results):
            if result.status is not EventStatus.REJECTED:
                continue
            assert result.error is not None
            owner = bisect.bisect_right(batch.starts, index) - 1
            delivery = batch.deliveries[owner]
            position, text = batch.messages[owner].part(index - batch.starts[owner], delivery.data)
            code, message = result.error.code.value, result.error.message
            codes[code] += 1
            self._note_rejection(code, message)
            if self.rejects is not None:
                self.rejects.write(describe(delivery), position, code, message, text)
        for delivery, decoded in zip(batch.deliveries, batch.messages, strict=True):
            for unreadable in decoded.unreadable:
                codes[INVALID_JSON] += 1
                self._note_rejection(INVALID_JSON, unreadable.reason)
                if self.rejects is not None:
                    self.rejects.write(
                        describe(delivery),
                        unreadable.position,
                        INVALID_JSON,
                        unreadable.reason,
                        unreadable.text,
                    )
        if self.rejects is not None:
            self.rejects.sync()
        if codes:
            log.info("stream.events.rejected", extra={"by_code": dict(codes)})

    def _note_rejection(self, code: str, message: str) -> None:
        count, first = self.stats.rejections.get(code, (0, message))
        self.stats.rejections[code] = (count + 1, first)

    def _tally(self, batch: _Batch, report: IngestReport, malformed: int) -> None:
        stats = self.stats
        counts = Counter(result.status for result in report.results)
        unreadable = sum(len(message.unreadable) for message in batch.messages)
        rejected = counts[EventStatus.REJECTED] + unreadable
        stats.batches += 1
        stats.last_committed = time.monotonic()
        stats.messages += len(batch.deliveries)
        stats.accepted += counts[EventStatus.ACCEPTED]
        stats.duplicates += counts[EventStatus.DUPLICATE]
        stats.rejected += rejected
        stats.events += len(report.results) + unreadable
        stats.malformed_messages += malformed
        stats.behind = self.source.describe(batch.deliveries[-1]).pending

    # -- holding and handing back -------------------------------------------------------------

    async def _keep_alive(self) -> None:
        """Restart the ack timers of the batches held (``in_progress``) well before
        ``ack_wait`` runs out: a commit that waits on a slow or absent database must not see
        its messages redelivered to another consumer meanwhile."""
        every = self.source.ack_wait / 3
        while True:
            await asyncio.sleep(every / 2)
            now = time.monotonic()
            for batch in list(self._held):
                if now - batch.touched >= every:
                    batch.touched = now
                    try:
                        await self.source.in_progress(batch.deliveries)
                    except JetStreamError as error:
                        log.warning("stream.in_progress.failed", extra={"error": str(error)})

    async def _hand_back(self) -> None:
        """Messages held but not committed go back to JetStream, for immediate redelivery."""
        held, self._held = self._held, []
        for batch in held:
            await self._nak_quietly(batch.deliveries)

    async def _nak_quietly(self, deliveries: list[Delivery]) -> None:
        try:
            await self.source.nak(deliveries)
        except JetStreamError as error:  # the connection is gone: ack_wait redelivers them
            log.warning("stream.hand_back.failed", extra={"error": str(error)})

    def _progress(self, *, force: bool = False) -> None:
        if self.on_progress is None:
            return
        now = time.monotonic()
        if force or now - self._last_progress >= self.options.progress_every:
            self._last_progress = now
            self.on_progress(self.stats.snapshot())
