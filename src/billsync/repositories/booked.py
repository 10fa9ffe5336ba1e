"""Lines billsync books on a period itself (core.folding.BOOKED_METRICS): one per key."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import Connection, insert, select

from billsync.db.tables import lines


def has_line(connection: Connection, account_id: str, start: date, key: str) -> bool:
    return (
        connection.execute(
            select(lines.c.id).where(
                lines.c.account_id == account_id,
                lines.c.period_start == start,
                lines.c.line_key == key,
            )
        ).first()
        is not None
    )


def book_line(
    connection: Connection,
    *,
    account_id: str,
    start: date,
    key: str,
    metric: str,
    description: str,
    amount: int,
    currency: str,
    now: datetime,
) -> int:
    """A line of its own on the period's invoice, described for the customer, pushed like any
    (the caller marks the account behind); returns its id."""
    result = connection.execute(
        insert(lines).returning(lines.c.id),
        {
            "account_id": account_id,
            "period_start": start,
            "line_key": key,
            "metric": metric,
            "grouping": {"description": description},
            "late_from": None,
            "currency": currency,
            "quantity": Decimal(1),
            "amount": amount,
            "version": 1,
            "event_count": 0,
            "synced_version": 0,
            "created_at": now,
            "updated_at": now,
        },
    )
    return int(result.scalar_one())
