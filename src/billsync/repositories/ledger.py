"""All SQL about the ledger: raw usage events, billing periods and lines.

The ingest path calls these a fixed number of times per batch (never per event), and every
bulk write is a single executemany.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, localcontext
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, text, tuple_, update

from billsync.core.folding import LineRef
from billsync.core.money import EXACT
from billsync.core.periods import Period, PeriodStatus
from billsync.core.usage import ValidEvent
from billsync.db.tables import billing_periods, lines, usage_events

# Row-value IN lists are chunked to stay far below every driver's bound-parameter limit.
CHUNK = 500


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True, slots=True)
class LineState:
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


@dataclass(frozen=True, slots=True)
class NewLine:
    ref: LineRef
    metric: str
    grouping: Mapping[str, str]
    late_from: date | None
    currency: str
    quantity: Decimal
    amount: int
    event_count: int


@dataclass(frozen=True, slots=True)
class LineChange:
    id: int
    quantity: Decimal
    amount: int
    version: int
    event_count: int


@dataclass(frozen=True, slots=True)
class EventRow:
    event: ValidEvent
    period_start: date
    line_id: int


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


def stored_events(connection: Connection, event_ids: Sequence[str]) -> dict[str, ValidEvent]:
    """Events already in the ledger among ``event_ids``, as they were accepted."""
    found: dict[str, ValidEvent] = {}
    columns = (
        usage_events.c.id,
        usage_events.c.account_id,
        usage_events.c.metric,
        usage_events.c.quantity,
        usage_events.c.occurred_at,
        usage_events.c.dimensions,
    )
    for chunk in _chunks(sorted(set(event_ids)), 2000):
        for row in connection.execute(select(*columns).where(usage_events.c.id.in_(chunk))):
            found[row.id] = ValidEvent(
                id=row.id,
                account=row.account_id,
                metric=row.metric,
                quantity=row.quantity,
                timestamp=row.occurred_at,
                dimensions=row.dimensions,
            )
    return found


def period_statuses(
    connection: Connection, account_ids: Iterable[str], since: date
) -> dict[str, dict[date, PeriodStatus]]:
    """Every known period of these accounts starting on or after ``since``."""
    ids = sorted(set(account_ids))
    statuses: dict[str, dict[date, PeriodStatus]] = {account: {} for account in ids}
    if not ids:
        return statuses
    query = select(billing_periods.c.account_id, billing_periods.c.start, billing_periods.c.status)
    for chunk in _chunks(ids):
        rows = connection.execute(
            query.where(billing_periods.c.account_id.in_(chunk), billing_periods.c.start >= since)
        )
        for account_id, start, status in rows:
            statuses[account_id][start] = PeriodStatus(status)
    return statuses


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


def line_states(connection: Connection, refs: Iterable[LineRef]) -> dict[LineRef, LineState]:
    """Current quantity and version of the given lines (those that exist)."""
    wanted = sorted({(ref.account, ref.period_start, ref.key) for ref in refs})
    states: dict[LineRef, LineState] = {}
    key_columns = tuple_(lines.c.account_id, lines.c.period_start, lines.c.line_key)
    query = select(
        lines.c.id,
        lines.c.account_id,
        lines.c.period_start,
        lines.c.line_key,
        lines.c.quantity,
        lines.c.version,
        lines.c.event_count,
    )
    for chunk in _chunks(wanted):
        for row in connection.execute(query.where(key_columns.in_(chunk))):
            states[LineRef(row.account_id, row.period_start, row.line_key)] = LineState(
                id=row.id, quantity=row.quantity, version=row.version, event_count=row.event_count
            )
    return states


def insert_lines(
    connection: Connection, new_lines: Sequence[NewLine], now: datetime
) -> dict[LineRef, int]:
    if not new_lines:
        return {}
    rows = [
        {
            "account_id": line.ref.account,
            "period_start": line.ref.period_start,
            "line_key": line.ref.key,
            "metric": line.metric,
            "grouping": dict(line.grouping),
            "late_from": line.late_from,
            "currency": line.currency,
            "quantity": line.quantity,
            "amount": line.amount,
            "version": 1,
            "event_count": line.event_count,
            "created_at": now,
            "updated_at": now,
        }
        for line in new_lines
    ]
    result = connection.execute(
        insert(lines).returning(
            lines.c.id, lines.c.account_id, lines.c.period_start, lines.c.line_key,
            sort_by_parameter_order=True,
        ),
        rows,
    )  # fmt: skip
    return {LineRef(r.account_id, r.period_start, r.line_key): r.id for r in result}


def update_lines(connection: Connection, changes: Sequence[LineChange], now: datetime) -> None:
    if not changes:
        return
    connection.execute(
        update(lines)
        .where(lines.c.id == bindparam("line_id"))
        .values(
            quantity=bindparam("new_quantity"),
            amount=bindparam("new_amount"),
            version=bindparam("new_version"),
            event_count=bindparam("new_event_count"),
            updated_at=now,
        ),
        [
            {
                "line_id": change.id,
                "new_quantity": change.quantity,
                "new_amount": change.amount,
                "new_version": change.version,
                "new_event_count": change.event_count,
            }
            for change in changes
        ],
    )


def insert_events(connection: Connection, rows: Sequence[EventRow], received_at: datetime) -> None:
    if not rows:
        return
    connection.execute(
        insert(usage_events),
        [
            {
                "id": row.event.id,
                "account_id": row.event.account,
                "metric": row.event.metric,
                "quantity": row.event.quantity,
                "occurred_at": row.event.timestamp,
                "dimensions": row.event.dimensions,
                "period_start": row.period_start,
                "line_id": row.line_id,
                "received_at": received_at,
            }
            for row in rows
        ],
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
