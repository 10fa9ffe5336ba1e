"""All SQL about where raw usage events are kept: PostgreSQL's monthly partitions of
``usage_events``, and retention's deletes (both stores).

Creating partitions is serialized across processes by one advisory lock, and all partition DDL
is bounded by a short lock timeout: it never queues for long in front of ingest, and a run that
could not get its locks is simply retried by the next one (meanwhile rows of a month without a
partition go to the DEFAULT partition).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import ColumnElement, Connection, delete, func, select, text, tuple_

from billsync.core.event_storage import shift_months
from billsync.core.periods import PeriodStatus
from billsync.db.tables import billing_periods, lines, usage_events
from billsync.repositories.webhooks import get_cursor, set_cursor

PARENT = "usage_events"
# Partition DDL waits at most this long for a lock (ingest holds its locks for milliseconds).
LOCK_TIMEOUT = "3s"
# pg_advisory_xact_lock key serializing partition DDL across processes ("bsparts" in ASCII).
PARTITION_DDL_LOCK = 0x62_73_70_61_72_74_73
COLUMNS = (
    "id, account_id, metric, quantity, occurred_at, dimensions, period_start, line_id, received_at"
)
RETENTION_CURSOR = "usage_events.retention"
# The distinct values of unique_count metrics were released for usage periods starting before
# this date (services.event_retention): no event may be accepted into those periods again.
DISTINCT_RELEASE_CURSOR = "distinct_values.released_before"
_RANGE = re.compile(r"FOR VALUES FROM \('(\d{4}-\d\d-\d\d)'\) TO \('(\d{4}-\d\d-\d\d)'\)")


@dataclass(frozen=True, slots=True)
class Partition:
    name: str  # as PostgreSQL spells it in SQL (quoted or schema-qualified when it must be)
    start: date | None  # None: the DEFAULT partition; otherwise [start, end)
    end: date | None

    @property
    def is_default(self) -> bool:
        return self.start is None

    def contains(self, day: date) -> bool:
        return self.start is not None and self.end is not None and self.start <= day < self.end


def partition_name(month: date) -> str:
    return f"{PARENT}_{month:%Y_%m}"


def is_partitioned(connection: Connection) -> bool:
    if connection.dialect.name != "postgresql":
        return False
    kind = connection.execute(
        text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:parent)"), {"parent": PARENT}
    ).scalar()
    return kind == "p"


def partitions(connection: Connection) -> list[Partition]:
    """The partitions of ``usage_events``, months first (oldest first), DEFAULT last."""
    rows = connection.execute(
        text(
            "SELECT CAST(CAST(c.oid AS regclass) AS text), pg_get_expr(c.relpartbound, c.oid) "
            "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = CAST(:parent AS regclass)"
        ),
        {"parent": PARENT},
    )
    found = []
    for name, bound in rows:
        matched = _RANGE.fullmatch(bound)
        if matched is not None:
            found.append(
                Partition(name, date.fromisoformat(matched[1]), date.fromisoformat(matched[2]))
            )
        elif bound == "DEFAULT":
            found.append(Partition(name, None, None))
    return sorted(found, key=lambda p: (p.start is None, p.start or date.min))


def _serialize_ddl(connection: Connection) -> None:
    connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PARTITION_DDL_LOCK})


def default_rows(connection: Connection, default: Partition) -> dict[date, int]:
    """Rows in the DEFAULT partition by month: rows stored while their month had no partition."""
    rows = connection.execute(
        text(
            "SELECT CAST(date_trunc('month', period_start) AS date), count(*) "  # noqa: S608
            f"FROM {default.name} GROUP BY 1"
        )
    )
    return {month: int(count) for month, count in rows}


def create_month_partition(connection: Connection, month: date) -> int | None:
    """Create ``month``'s partition, moving that month's rows out of DEFAULT into it (PostgreSQL
    refuses a partition whose range has rows in DEFAULT); the number of rows moved, or None when
    the partition exists already.

    The table is created on its own and attached (which locks the parent only in SHARE UPDATE
    EXCLUSIVE mode, so ingest into other months goes on); DEFAULT is locked first, so no row of
    the month can land there between the move and the attach."""
    _serialize_ddl(connection)
    end = shift_months(month, 1)
    existing = partitions(connection)
    if any(p.start == month and p.end == end for p in existing):
        return None
    default = next((p for p in existing if p.is_default), None)
    name = partition_name(month)
    if default is not None:
        connection.execute(text(f"LOCK TABLE {default.name} IN ACCESS EXCLUSIVE MODE"))
    connection.execute(
        text(f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING STORAGE)")
    )
    moved = 0
    if default is not None:
        moved = connection.execute(
            text(
                f"WITH moved AS (DELETE FROM {default.name} "  # noqa: S608
                "WHERE period_start >= :start AND period_start < :end "
                f"RETURNING {COLUMNS}) INSERT INTO {name} ({COLUMNS}) SELECT {COLUMNS} FROM moved"
            ),
            {"start": month, "end": end},
        ).rowcount
    connection.execute(
        text(
            f"ALTER TABLE {PARENT} ATTACH PARTITION {name} "
            f"FOR VALUES FROM ('{month.isoformat()}') TO ('{end.isoformat()}')"
        )
    )
    return moved


def ensure_default_partition(connection: Connection) -> bool:
    """Create the DEFAULT partition if it is missing; whether it was."""
    _serialize_ddl(connection)
    if any(p.is_default for p in partitions(connection)):
        return False
    connection.execute(text(f"CREATE TABLE {PARENT}_default PARTITION OF {PARENT} DEFAULT"))
    return True


def partition_census(
    connection: Connection, partition: Partition, cutoff: datetime, *, lock: bool
) -> tuple[int, int]:
    """(events in ``partition``, those not retainable yet: their line's period is not finalized
    before ``cutoff``, or they point at no line). With ``lock``, no event can be added to the
    partition until the transaction ends (readers are not blocked)."""
    assert partition.start is not None
    if lock:
        connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        connection.execute(text(f"LOCK TABLE {partition.name} IN SHARE MODE"))
    total, kept = connection.execute(
        text(
            "SELECT count(*), count(*) FILTER (WHERE q.id IS NULL) "  # noqa: S608
            f"FROM {partition.name} e LEFT JOIN ("
            "SELECT l.id FROM lines l JOIN billing_periods p "
            "ON p.account_id = l.account_id AND p.start = l.period_start "
            "WHERE p.status = :finalized AND p.finalized_at < :cutoff "
            "AND l.period_start >= :start) AS q ON q.id = e.line_id"
        ),
        {"finalized": PeriodStatus.FINALIZED.value, "cutoff": cutoff, "start": partition.start},
    ).one()
    return int(total), int(kept)


def lines_keep_month(connection: Connection, month: Partition, cutoff: datetime) -> bool:
    """Whether any line that can hold events of ``month`` (its own period's lines, and late
    lines labelled with a period of that month) is in a period not finalized before
    ``cutoff``: a cheap test on lines only, before counting the partition's events."""
    assert month.start is not None
    assert month.end is not None
    not_retainable = (
        (billing_periods.c.status.is_(None))
        | (billing_periods.c.status != PeriodStatus.FINALIZED.value)
        | (billing_periods.c.finalized_at.is_(None))
        | (billing_periods.c.finalized_at >= cutoff)
    )
    query = (
        select(lines.c.id)
        .select_from(
            lines.outerjoin(
                billing_periods,
                (billing_periods.c.account_id == lines.c.account_id)
                & (billing_periods.c.start == lines.c.period_start),
            )
        )
        .where(
            ((lines.c.period_start >= month.start) & (lines.c.period_start < month.end))
            | ((lines.c.late_from >= month.start) & (lines.c.late_from < month.end)),
            not_retainable,
        )
        .limit(1)
    )
    return connection.execute(query).first() is not None


def drop_partition(connection: Connection, partition: Partition) -> None:
    """Drop a month's partition and its events. PostgreSQL locks ``usage_events`` (and DEFAULT)
    exclusively for the drop — there is no lighter way while a DEFAULT partition exists — so
    it waits at most ``LOCK_TIMEOUT`` for the batches in flight, and ingest waits for the drop
    itself, a matter of milliseconds."""
    connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    connection.execute(text(f"DROP TABLE {partition.name}"))


# --- retention (both stores) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetentionMark:
    """How far retention has gone. ``retained_before``: raw events of periods finalized before
    it may be gone (recorded before anything is deleted; what ``verify`` and the console read).
    ``completed_before``: every such event is gone (where the next run starts looking)."""

    retained_before: datetime | None = None
    completed_before: datetime | None = None


def retention_mark(connection: Connection) -> RetentionMark:
    value = get_cursor(connection, RETENTION_CURSOR)
    if value is None:
        return RetentionMark()
    data = json.loads(value)

    def moment(key: str) -> datetime | None:
        return None if data.get(key) is None else datetime.fromisoformat(data[key])

    return RetentionMark(moment("retained_before"), moment("completed_before"))


def set_retention_mark(connection: Connection, mark: RetentionMark, now: datetime) -> None:
    value = {
        name: None if moment is None else moment.isoformat()
        for name, moment in (
            ("retained_before", mark.retained_before),
            ("completed_before", mark.completed_before),
        )
    }
    set_cursor(connection, RETENTION_CURSOR, json.dumps(value, sort_keys=True), now)


@dataclass(frozen=True, slots=True)
class DistinctRelease:
    """Distinct values are (being) released for usage periods starting before ``before``;
    ``done``: every one of them is gone."""

    before: date
    done: bool


def distinct_release(connection: Connection) -> DistinctRelease | None:
    value = get_cursor(connection, DISTINCT_RELEASE_CURSOR)
    if value is None:
        return None
    data = json.loads(value)
    return DistinctRelease(date.fromisoformat(data["before"]), bool(data["done"]))


def set_distinct_release(connection: Connection, release: DistinctRelease, now: datetime) -> None:
    value = json.dumps({"before": release.before.isoformat(), "done": release.done})
    set_cursor(connection, DISTINCT_RELEASE_CURSOR, value, now)


def finalized_periods(
    connection: Connection, before: datetime, since: datetime | None
) -> list[tuple[str, date]]:
    """(account, start) of the periods finalized in [since, before)."""
    query = select(billing_periods.c.account_id, billing_periods.c.start).where(
        billing_periods.c.status == PeriodStatus.FINALIZED.value,
        billing_periods.c.finalized_at < before,
    )
    if since is not None:
        query = query.where(billing_periods.c.finalized_at >= since)
    rows = connection.execute(query.order_by(billing_periods.c.account_id, billing_periods.c.start))
    return [(row.account_id, row.start) for row in rows]


# One line's events are all stored under one period: the line's own, or for a late line the
# period the usage happened in (its late_from).
StoredLine = tuple[int, date]


def lines_with_events(
    connection: Connection, periods: Sequence[tuple[str, date]]
) -> list[StoredLine]:
    """The lines of these periods that count events (adjustments have none), each with the
    period its events are stored under."""
    if not periods:
        return []
    rows = connection.execute(
        select(lines.c.id, func.coalesce(lines.c.late_from, lines.c.period_start))
        .where(
            tuple_(lines.c.account_id, lines.c.period_start).in_(list(periods)),
            lines.c.event_count > 0,
        )
        .order_by(lines.c.id)
    )
    return [(int(line_id), stored_under) for line_id, stored_under in rows]


def _of_lines(stored: Iterable[StoredLine]) -> list[ColumnElement[bool]]:
    chosen = list(stored)
    return [
        usage_events.c.line_id.in_(sorted({line_id for line_id, _ in chosen})),
        # Lets PostgreSQL look in those months' partitions only.
        usage_events.c.period_start.in_(sorted({start for _, start in chosen})),
    ]


def count_events_of_lines(connection: Connection, stored: Sequence[StoredLine]) -> int:
    if not stored:
        return 0
    query = select(func.count()).select_from(usage_events).where(*_of_lines(stored))
    return int(connection.execute(query).scalar_one())


def delete_events_of_lines(connection: Connection, stored: Sequence[StoredLine], limit: int) -> int:
    """Delete at most ``limit`` raw events of these lines; how many were deleted."""
    if not stored:
        return 0
    conditions = _of_lines(stored)
    chunk = select(usage_events.c.id, usage_events.c.period_start).where(*conditions).limit(limit)
    result = connection.execute(
        delete(usage_events).where(
            tuple_(usage_events.c.id, usage_events.c.period_start).in_(chunk),
            conditions[1],
        )
    )
    return int(result.rowcount)
