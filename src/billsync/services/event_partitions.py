"""The monthly partitions of ``usage_events`` on PostgreSQL: created before they are needed,
and the DEFAULT partition drained into them.

Every month a new event can still be stored under (back to the usage horizon) and the next
few months have a partition of their own. :meth:`EventPartitions.maintain` makes it so — from
the retention job, idempotently — and ingest calls :meth:`EventPartitions.ensure_for_usage`
before a batch in case a month came due without it. Whatever happens, ingest never fails for
want of a partition: a row of a month without one lands in DEFAULT, and the next maintenance
creates that month's partition and moves the row there. SQLite stores events in a plain table:
nothing to do there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import partial
from typing import TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from billsync.core.event_storage import (
    month_of,
    months,
    months_for_usage,
    shift_months,
    writable_from,
)
from billsync.db.database import Database
from billsync.repositories import event_storage as repository

log = logging.getLogger("billsync.event_storage")
T = TypeVar("T")

MONTHS_AHEAD = 3
# After a failed attempt (a lock not granted in time), ingest leaves a month to DEFAULT this
# long before trying again; maintenance tries on every run.
RETRY_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class PartitionChange:
    name: str
    month: date | None  # None: the DEFAULT partition
    rows_from_default: int = 0


@dataclass
class MaintenanceReport:
    created: list[PartitionChange] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _default_partition(connection: Connection) -> bool:
    return repository.ensure_default_partition(connection)


def _month_partition(connection: Connection, *, month: date) -> int | None:
    return repository.create_month_partition(connection, month)


class EventPartitions:
    def __init__(
        self,
        database: Database,
        *,
        horizon: timedelta,
        months_ahead: int = MONTHS_AHEAD,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.database = database
        self.horizon = horizon
        self.months_ahead = months_ahead
        self._monotonic = monotonic
        self._enabled = not database.is_sqlite
        self._known: frozenset[date] | None = None
        self._failed_at: dict[date, float] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether events are stored in monthly partitions (PostgreSQL, schema 0006 on)."""
        return self._enabled

    def maintain(self, now: datetime, *, dry_run: bool = False) -> MaintenanceReport:
        """Create the partitions of every month new events can still be stored under, of the
        next ``months_ahead`` months, and of any month whose rows sit in DEFAULT (moving them
        into it). Idempotent; with ``dry_run``, only reports what it would create."""
        report = MaintenanceReport()
        if not self._enabled:
            return report
        with self.database.read() as connection:
            if not repository.is_partitioned(connection):
                self._enabled = False
                return report
            existing = repository.partitions(connection)
            default = next((p for p in existing if p.is_default), None)
            in_default = {} if default is None else repository.default_rows(connection, default)
        if default is None:
            done, made = (True, True) if dry_run else self._ddl(report, None, _default_partition)
            if done and made:
                report.created.append(PartitionChange(f"{repository.PARENT}_default", None))
        have = {p.start for p in existing if not p.is_default}
        window = months(writable_from(now, self.horizon), self._last_month(now))
        for month in sorted((set(window) | set(in_default)) - have):
            name = repository.partition_name(month)
            if dry_run:
                report.created.append(PartitionChange(name, month, in_default.get(month, 0)))
                continue
            done, moved = self._ddl(report, month, partial(_month_partition, month=month))
            if done and moved is not None:
                report.created.append(PartitionChange(name, month, moved))
        if not dry_run:
            self._forget()
            for change in report.created:
                log.info(
                    "events.partition.created",
                    extra={"partition": change.name, "rows_from_default": change.rows_from_default},
                )
        return report

    def ensure_for_usage(self, oldest: datetime, newest: datetime) -> None:
        """Before ingest stores events timestamped in [oldest, newest]: create the partitions
        they need if maintenance has not. Costs nothing once the months are known. A month
        whose partition cannot be created now is left to DEFAULT (ingest goes on) and tried
        again after ``RETRY_SECONDS``."""
        if not self._enabled:
            return
        known = self._known_months()
        needed = [month for month in months_for_usage(oldest, newest) if month not in known]
        if not needed:
            return
        with self._lock:
            report = MaintenanceReport()
            attempted = False
            for month in needed:
                if month not in self._known_months() and self._may_try(month):
                    attempted = True
                    self._ddl(report, month, partial(_month_partition, month=month))
            if attempted:
                self._forget()

    def _last_month(self, now: datetime) -> date:
        return shift_months(month_of(now.date()), self.months_ahead)

    def _ddl(
        self, report: MaintenanceReport, month: date | None, ddl: Callable[[Connection], T]
    ) -> tuple[bool, T | None]:
        """One DDL transaction: (done, its outcome). A failure — typically a lock not granted
        in time — is logged and reported, never raised."""
        try:
            with self.database.transaction() as connection:
                outcome = ddl(connection)
        except DBAPIError as error:
            what = f"{repository.PARENT}_default" if month is None else f"{month:%Y-%m}"
            report.errors.append(f"partition {what}: {error.orig or error}")
            log.warning("events.partition.failed", extra={"month": what, "error": str(error)})
            if month is not None:
                self._failed_at[month] = self._monotonic()
            return False, None
        if month is not None:
            self._failed_at.pop(month, None)
        return True, outcome

    def _may_try(self, month: date) -> bool:
        failed = self._failed_at.get(month)
        return failed is None or self._monotonic() - failed >= RETRY_SECONDS

    def _known_months(self) -> frozenset[date]:
        known = self._known
        if known is None:
            with self.database.read() as connection:
                if not repository.is_partitioned(connection):
                    self._enabled = False
                    known = frozenset()
                else:
                    known = frozenset(
                        p.start for p in repository.partitions(connection) if p.start is not None
                    )
            self._known = known
        return known

    def _forget(self) -> None:
        """Read the partitions again next time (after creating some)."""
        self._known = None
