"""All SQL of the usage export (and of the customer page's daily chart): an account's raw usage
events over a time range, summed per line and per UTC day or hour.

Both reads are indexed, whatever the account's size. The lines come first: the account's lines
whose events are stored under a period overlapping the range (each line's events are stored
under one period: its own, or for a late line the period the usage happened in), a handful of
rows. Then each line's events through the ``line_id`` index, restricted to the period they are
stored under — on PostgreSQL that is also the one monthly partition to look in — and to the
range. PostgreSQL sums them (NUMERIC is exact); SQLite keeps quantities as decimal text, which
its SQL cannot add exactly, so their sums are folded here, row by row, never holding more than
one line's days or hours.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal, localcontext
from typing import Any, Literal

from sqlalchemy import ColumnElement, Connection, Select, String, func, literal, select

from billsync.core.money import EXACT
from billsync.core.periods import PeriodStatus
from billsync.db.tables import billing_periods, lines, usage_events

Bucket = Literal["day", "hour"] | None


@dataclass(frozen=True, slots=True)
class ExportLine:
    """A line whose raw events may fall in the range."""

    id: int
    metric: str
    grouping: dict[str, str]
    invoice_period: date  # the period whose invoice carries the line
    late_from: date | None
    stored_under: date  # the period the line's events happened in (their partition key)
    stored_until: date  # that period's end
    invoice_status: PeriodStatus
    invoice_finalized_at: datetime | None


def _day_after(moment: datetime) -> date:
    """The first date whose midnight is at or after ``moment``."""
    if moment.time() == time():
        return moment.date()
    try:
        return moment.date() + timedelta(days=1)
    except OverflowError:
        return date.max


def lines_in_range(
    connection: Connection, account_id: str, start: datetime, end: datetime
) -> list[ExportLine]:
    """The account's usage lines with events stored under a period that overlaps [start, end),
    ordered by metric, key and invoice."""
    stored = billing_periods.alias("stored")
    invoiced = billing_periods.alias("invoiced")
    stored_under = func.coalesce(lines.c.late_from, lines.c.period_start)
    query = (
        select(
            lines.c.id,
            lines.c.metric,
            lines.c.grouping,
            lines.c.period_start,
            lines.c.late_from,
            stored.c.start,
            stored.c.end,
            invoiced.c.status,
            invoiced.c.finalized_at,
        )
        .select_from(
            lines.join(
                stored,
                (stored.c.account_id == lines.c.account_id) & (stored.c.start == stored_under),
            ).join(
                invoiced,
                (invoiced.c.account_id == lines.c.account_id)
                & (invoiced.c.start == lines.c.period_start),
            )
        )
        .where(
            lines.c.account_id == account_id,
            lines.c.event_count > 0,
            stored.c.start < _day_after(end),
            stored.c.end > start.date(),
        )
        .order_by(lines.c.metric, lines.c.line_key, lines.c.period_start)
    )
    return [
        ExportLine(
            id=int(row[0]),
            metric=row[1],
            grouping=dict(row[2] or {}),
            invoice_period=row[3],
            late_from=row[4],
            stored_under=row[5],
            stored_until=row[6],
            invoice_status=PeriodStatus(row[7]),
            invoice_finalized_at=row[8],
        )
        for row in connection.execute(query)
    ]


def _bucket_of(connection: Connection, bucket: Bucket) -> ColumnElement[str] | None:
    """The UTC day ('2026-11-15') or hour ('2026-11-15 12') of an event, as text."""
    if bucket is None:
        return None
    if connection.dialect.name == "postgresql":
        pattern = "YYYY-MM-DD" if bucket == "day" else "YYYY-MM-DD HH24"
        return func.to_char(
            func.timezone("UTC", usage_events.c.occurred_at), pattern, type_=String()
        )
    # SQLite keeps UTC moments as 'YYYY-MM-DD HH:MM:SS.ffffff'.
    return func.substr(usage_events.c.occurred_at, 1, 10 if bucket == "day" else 13, type_=String())


def line_usage_query(
    connection: Connection, line: ExportLine, start: datetime, end: datetime, bucket: Bucket
) -> Select[str, Any]:
    """The statement :func:`line_usage` runs: (bucket, quantity) of the line's events in
    [start, end) — summed per bucket on PostgreSQL, one row per event on SQLite."""
    column = _bucket_of(connection, bucket)
    key = literal("", String()) if column is None else column
    of_line = (
        usage_events.c.line_id == line.id,
        usage_events.c.period_start == line.stored_under,  # the partition they live in
        usage_events.c.occurred_at >= start,
        usage_events.c.occurred_at < end,
    )
    if connection.dialect.name != "postgresql":
        return select(key, usage_events.c.quantity).where(*of_line)
    query = select(key, func.sum(usage_events.c.quantity)).where(*of_line)
    return query if column is None else query.group_by(column).order_by(column)


def line_usage(
    connection: Connection, line: ExportLine, start: datetime, end: datetime, bucket: Bucket
) -> Iterator[tuple[str, Decimal]]:
    """(bucket, exact quantity) of one line's events in [start, end), oldest first; the bucket
    is '' without one. Buckets with no event are left out."""
    rows = connection.execute(line_usage_query(connection, line, start, end, bucket))
    if connection.dialect.name == "postgresql":
        for key, quantity in rows:
            if quantity is not None:  # a sum over no event
                yield str(key), Decimal(quantity)
        return
    folded: dict[str, Decimal] = {}
    with localcontext(EXACT):
        for key, quantity in rows:
            folded[key] = folded.get(key, Decimal(0)) + quantity
    yield from sorted(folded.items())
