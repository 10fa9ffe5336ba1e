"""Retention of raw usage events once their invoice is final, and partition maintenance.

``BILLSYNC_EVENT_RETENTION_DAYS`` (0: keep forever) removes the raw events of every line whose
billing period was finalized more than that many days ago. Lines — the compiled totals, what
was invoiced — are never touched, and the events' ids stay in ``usage_event_ids``, so a
re-sent old event is still answered ``duplicate`` and never counted again.

How (one run, :meth:`EventRetention.run`):

1. partition maintenance (PostgreSQL): the coming months' partitions, DEFAULT drained;
2. the cutoff is recorded first (the ``usage_events.retention`` cursor), so ``billsync verify``
   and the console know these periods' events may be gone, even if the run stops half-way;
3. PostgreSQL: a month's partition that can no longer receive events (older than the usage
   horizon allows) and whose every event qualifies is dropped whole — no row-by-row delete;
4. the rest is deleted in bounded chunks, one short transaction each, period by period; the
   next run starts from the periods finalized after this run's cutoff.

Whatever the retention setting, the distinct values ``unique_count`` metrics keep to count each
value once per period (``distinct_values``) are released for the usage periods no event can
reach any more (they start before :func:`writable_from` of the usage horizon): once a month,
one pass over the table's key, chunk by chunk. The date is recorded, and ingest never accepts
usage into those periods again, even under a horizon lengthened since
(:func:`billsync.core.event_storage.released_floor`): a value counted there would be counted
twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TypeVar

from sqlalchemy.exc import DBAPIError

from billsync.clock import Clock
from billsync.config import Settings
from billsync.core.event_storage import retention_cutoff, writable_from
from billsync.db.database import Database
from billsync.repositories import aggregates
from billsync.repositories import event_storage as repository
from billsync.repositories.event_storage import DistinctRelease, Partition, RetentionMark
from billsync.services.event_partitions import EventPartitions, PartitionChange

log = logging.getLogger("billsync.event_storage")
T = TypeVar("T")

CHUNK_EVENTS = 5_000  # raw events deleted per transaction
CHUNK_PERIODS = 200  # periods whose lines are looked up at once
CHUNK_LINES = 500  # lines whose events one delete statement targets
CHUNK_ACCOUNTS = 500  # accounts whose released distinct values one transaction deletes


@dataclass(frozen=True, slots=True)
class DroppedPartition:
    name: str
    events: int


@dataclass
class RetentionReport:
    dry_run: bool
    retention_days: int
    cutoff: datetime | None = None
    partitions_created: list[PartitionChange] = field(default_factory=list)
    partitions_dropped: list[DroppedPartition] = field(default_factory=list)
    # Closed months whose partition stays, because some of its events do not qualify yet.
    partitions_kept: list[str] = field(default_factory=list)
    # Periods finalized before the cutoff that no earlier run had finished with.
    periods: int = 0
    events_deleted: int = 0  # by chunks, besides the dropped partitions' events
    errors: list[str] = field(default_factory=list)
    # unique_count's distinct values released, of usage periods starting before this date.
    distinct_released_before: date | None = None
    distinct_values_released: int = 0

    @property
    def events_removed(self) -> int:
        return self.events_deleted + sum(p.events for p in self.partitions_dropped)


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class EventRetention:
    def __init__(
        self,
        database: Database,
        clock: Clock,
        partitions: EventPartitions,
        *,
        retention_days: int,
        chunk_events: int = CHUNK_EVENTS,
    ) -> None:
        self.database = database
        self.clock = clock
        self.partitions = partitions
        self.retention_days = retention_days
        self.chunk_events = chunk_events

    @classmethod
    def from_settings(cls, settings: Settings, database: Database, clock: Clock) -> EventRetention:
        partitions = EventPartitions(database, horizon=timedelta(days=settings.usage_horizon_days))
        return cls(database, clock, partitions, retention_days=settings.event_retention_days)

    def run(self, *, dry_run: bool = False) -> RetentionReport:
        """Maintain the partitions, then remove the raw events that retention allows. With
        ``dry_run``, nothing changes: the report says what would be created and removed."""
        now = self.clock.now()
        report = RetentionReport(dry_run, self.retention_days)
        maintenance = self.partitions.maintain(now, dry_run=dry_run)
        report.partitions_created = maintenance.created
        report.errors += maintenance.errors
        self._release_distinct_values(now, report)
        cutoff = retention_cutoff(now, self.retention_days)
        if cutoff is None:
            return report
        report.cutoff = cutoff
        with self.database.read() as connection:
            mark = repository.retention_mark(connection)
        if not dry_run and (mark.retained_before is None or mark.retained_before < cutoff):
            with self.database.transaction() as connection:
                repository.set_retention_mark(
                    connection, RetentionMark(cutoff, mark.completed_before), now
                )
        dropped = self._drop_partitions(now, cutoff, report) if self.partitions.enabled else []
        self._delete_in_chunks(cutoff, mark.completed_before, dropped, report)
        if not dry_run and not report.errors:
            with self.database.transaction() as connection:
                latest = repository.retention_mark(connection)
                repository.set_retention_mark(
                    connection,
                    RetentionMark(
                        max(cutoff, latest.retained_before or cutoff),
                        max(cutoff, latest.completed_before or cutoff),
                    ),
                    now,
                )
        log.info(
            "events.retention.done",
            extra={
                "dry_run": dry_run,
                "cutoff": cutoff.isoformat(),
                "partitions_dropped": [p.name for p in report.partitions_dropped],
                "events_removed": report.events_removed,
                "errors": len(report.errors),
            },
        )
        return report

    def _release_distinct_values(self, now: datetime, report: RetentionReport) -> None:
        """Delete the distinct values of usage periods no event can reach any more, once per
        month (when :func:`writable_from` moves past the date released before)."""
        before = writable_from(now, self.partitions.horizon)
        with self.database.read() as connection:
            released = repository.distinct_release(connection)
        if released is not None and released.done and released.before >= before:
            return
        if released is not None and released.before > before:  # the horizon was lengthened
            before = released.before
        report.distinct_released_before = before
        after: str | None = None
        try:
            if not report.dry_run:  # first: ingest is held off these periods from now on
                with self.database.transaction() as connection:
                    repository.set_distinct_release(
                        connection, DistinctRelease(before, done=False), now
                    )
            while True:
                with self.database.read() as connection:
                    accounts = aggregates.accounts_with_distinct_before(
                        connection, before, after, CHUNK_ACCOUNTS
                    )
                    if report.dry_run and accounts:
                        report.distinct_values_released += aggregates.count_distinct_before(
                            connection, accounts, before
                        )
                if not accounts:
                    break
                if not report.dry_run:
                    with self.database.transaction() as connection:
                        report.distinct_values_released += aggregates.delete_distinct_before(
                            connection, accounts, before
                        )
                after = accounts[-1]
            if not report.dry_run:
                with self.database.transaction() as connection:
                    repository.set_distinct_release(
                        connection, DistinctRelease(before, done=True), now
                    )
        except DBAPIError as error:  # the next run starts over; what was deleted stays so
            report.errors.append(f"releasing distinct values: {error.orig or error}")
        log.info(
            "distinct_values.released",
            extra={"before": before.isoformat(), "rows": report.distinct_values_released,
                   "dry_run": report.dry_run},
        )  # fmt: skip

    def _drop_partitions(
        self, now: datetime, cutoff: datetime, report: RetentionReport
    ) -> list[Partition]:
        """Drop each closed month's partition whose every event qualifies; those dropped (or,
        in a dry run, that would be)."""
        dropped: list[Partition] = []
        closed_before = writable_from(now, self.partitions.horizon)
        with self.database.read() as connection:
            closed = [
                p
                for p in repository.partitions(connection)
                if p.end is not None and p.end <= closed_before
            ]
        for partition in closed:
            with self.database.read() as connection:
                if repository.lines_keep_month(connection, partition, cutoff):
                    report.partitions_kept.append(partition.name)
                    continue
                if report.dry_run:
                    events, kept = repository.partition_census(
                        connection, partition, cutoff, lock=False
                    )
            if report.dry_run:
                if kept:
                    report.partitions_kept.append(partition.name)
                else:
                    dropped.append(partition)
                    report.partitions_dropped.append(DroppedPartition(partition.name, events))
                continue
            try:
                with self.database.transaction() as connection:
                    # Counted under a lock that keeps new rows out until the drop commits.
                    events, kept = repository.partition_census(
                        connection, partition, cutoff, lock=True
                    )
                    if not kept:
                        repository.drop_partition(connection, partition)
            except DBAPIError as error:
                report.errors.append(f"dropping {partition.name}: {error.orig or error}")
                log.warning(
                    "events.partition.drop_failed",
                    extra={"partition": partition.name, "error": str(error)},
                )
                continue
            if kept:
                report.partitions_kept.append(partition.name)
            else:
                dropped.append(partition)
                report.partitions_dropped.append(DroppedPartition(partition.name, events))
                log.info(
                    "events.partition.dropped",
                    extra={"partition": partition.name, "events": events},
                )
        return dropped

    def _delete_in_chunks(
        self,
        cutoff: datetime,
        since: datetime | None,
        dropped: list[Partition],
        report: RetentionReport,
    ) -> None:
        """Delete the raw events of the lines of periods finalized in [since, cutoff), at most
        ``chunk_events`` per transaction (lines whose events were in a dropped partition are
        already done)."""
        with self.database.read() as connection:
            periods = repository.finalized_periods(connection, cutoff, since)
        report.periods = len(periods)
        for period_batch in _chunks(periods, CHUNK_PERIODS):
            with self.database.read() as connection:
                stored = [
                    (line_id, stored_under)
                    for line_id, stored_under in repository.lines_with_events(
                        connection, period_batch
                    )
                    if not any(p.contains(stored_under) for p in dropped)
                ]
            for line_batch in _chunks(stored, CHUNK_LINES):
                if report.dry_run:
                    with self.database.read() as connection:
                        report.events_deleted += repository.count_events_of_lines(
                            connection, line_batch
                        )
                    continue
                while True:
                    with self.database.transaction() as connection:
                        deleted = repository.delete_events_of_lines(
                            connection, line_batch, self.chunk_events
                        )
                    report.events_deleted += deleted
                    if deleted < self.chunk_events:
                        break
