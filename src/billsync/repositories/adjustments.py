"""SQL of support's adjustments: which period takes one, and what that period's invoice totals."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime

from sqlalchemy import Connection, func, select, update

from billsync.core.periods import PeriodStatus
from billsync.db.tables import billing_periods, lines


def reserve_period(
    connection: Connection,
    account_id: str,
    start: date,
    statuses: Iterable[PeriodStatus],
    now: datetime,
) -> bool:
    """Keep the period from being finalized until this transaction ends, if it is still in one
    of ``statuses`` and its finalization has not been requested: a conditional update of its
    row. The decision to finalize (approval, the end of a review window) updates the same row,
    so it waits for this transaction on PostgreSQL (SQLite has one writer at a time): a line
    added here is in the final sync's snapshot, or the line is refused. False: not adjustable."""
    changed = connection.execute(
        update(billing_periods)
        .where(
            billing_periods.c.account_id == account_id,
            billing_periods.c.start == start,
            billing_periods.c.status.in_([status.value for status in statuses]),
            billing_periods.c.finalize_requested_at.is_(None),
        )
        .values(updated_at=now)
    )
    return changed.rowcount == 1


def period_total(connection: Connection, account_id: str, start: date) -> int:
    """What the period's invoice totals in the ledger: the sum of its lines, in minor units."""
    total = connection.execute(
        select(func.coalesce(func.sum(lines.c.amount), 0)).where(
            lines.c.account_id == account_id, lines.c.period_start == start
        )
    ).scalar_one()
    return int(total)
