"""All SQL about the ledger: raw usage events, billing periods and lines.

The ingest path calls these a fixed number of times per batch (never per event), and every
bulk write is a single executemany.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, localcontext
from typing import Any, NamedTuple

from sqlalchemy import Connection, func, insert, select, text, update

from billsync.core.folding import LineRef
from billsync.core.money import EXACT
from billsync.core.periods import Period, PeriodStatus
from billsync.db.tables import billing_periods, lines, usage_events

# Row-value IN lists are chunked to stay far below every driver's bound-parameter limit.
CHUNK = 500


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# The rows the ingest hot path builds by the thousand are named tuples: as immutable as a
# frozen dataclass, and several times cheaper to create.
class LineState(NamedTuple):
    id: int
    quantity: Decimal
    version: int
    event_count: int


@dataclass(frozen=True, slots=True)
class LineRecord:
    id: int
    account_id: str
    period_start: date
    key: str
    metric: str
    grouping: Mapping[str, str]
    late_from: date | None
    currency: str
    quantity: Decimal
    amount: int
    version: int
    event_count: int
    updated_at: datetime


class NewLine(NamedTuple):
    ref: LineRef
    metric: str
    grouping: Mapping[str, str]
    late_from: date | None
    currency: str
    quantity: Decimal
    amount: int
    event_count: int


class LineChange(NamedTuple):
    id: int
    quantity: Decimal
    amount: int
    version: int
    event_count: int


def lock_accounts(connection: Connection, account_ids: Iterable[str]) -> None:
    """Serialize ledger writes per account for the rest of the transaction.

    PostgreSQL: transaction-scoped advisory locks, taken in sorted order so that two batches
    touching the same accounts queue instead of deadlocking. SQLite: the transaction already
    holds the database's single write lock (BEGIN IMMEDIATE).
    """
    if connection.dialect.name != "postgresql":
        return
    ids = sorted(set(account_ids))
    if ids:
        connection.execute(
            text(
                "SELECT count(pg_advisory_xact_lock(hashtextextended(a, 0))) "
                "FROM (SELECT unnest(CAST(:ids AS text[])) AS a ORDER BY 1) AS ordered"
            ),
            {"ids": ids},
        )


def insert_periods(
    connection: Connection, periods: Iterable[tuple[str, Period]], now: datetime
) -> None:
    rows = [
        {
            "account_id": account_id,
            "start": period.start,
            "end": period.end,
            "status": PeriodStatus.OPEN.value,
            "created_at": now,
            "updated_at": now,
        }
        for account_id, period in periods
    ]
    if rows:
        connection.execute(insert(billing_periods), rows)


def set_period_status(
    connection: Connection, account_id: str, start: date, status: PeriodStatus, now: datetime
) -> None:
    connection.execute(
        update(billing_periods)
        .where(billing_periods.c.account_id == account_id, billing_periods.c.start == start)
        .values(status=status.value, updated_at=now)
    )


def _line_record(row: Any) -> LineRecord:
    return LineRecord(
        id=row.id,
        account_id=row.account_id,
        period_start=row.period_start,
        key=row.line_key,
        metric=row.metric,
        grouping=row.grouping,
        late_from=row.late_from,
        currency=row.currency,
        quantity=row.quantity,
        amount=row.amount,
        version=row.version,
        event_count=row.event_count,
        updated_at=row.updated_at,
    )


def lines_of_period(
    connection: Connection, account_id: str, period_start: date
) -> list[LineRecord]:
    rows = connection.execute(
        select(lines)
        .where(lines.c.account_id == account_id, lines.c.period_start == period_start)
        .order_by(lines.c.late_from.is_not(None), lines.c.line_key)
    )
    return [_line_record(row) for row in rows]


def event_quantity_totals(connection: Connection) -> dict[tuple[str, date, str], Decimal]:
    """Σ raw event quantity per line (account, period, key): the audit check of folding."""
    rows = connection.execute(
        select(
            lines.c.account_id, lines.c.period_start, lines.c.line_key, usage_events.c.quantity
        ).join(usage_events, usage_events.c.line_id == lines.c.id)
    )
    totals: dict[tuple[str, date, str], Decimal] = {}
    with localcontext(EXACT):
        for account_id, period_start, key, quantity in rows:
            slot = (account_id, period_start, key)
            totals[slot] = totals.get(slot, Decimal(0)) + quantity
    return totals


def count_events(connection: Connection) -> int:
    return int(connection.execute(select(func.count()).select_from(usage_events)).scalar_one())
