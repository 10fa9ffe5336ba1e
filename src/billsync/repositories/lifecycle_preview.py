"""What ``billsync periods advance`` would do at a given time, read without changing anything:
the periods each lifecycle step would take, counted, with the first few of each."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import ColumnElement, Connection, func, select

from billsync.core.periods import PeriodStatus
from billsync.db.tables import billing_periods


@dataclass(frozen=True, slots=True)
class DueStep:
    count: int
    first: list[tuple[str, date]]  # (account, period start), at most the ``shown`` asked for


def _step(connection: Connection, condition: ColumnElement[bool], shown: int) -> DueStep:
    count = connection.execute(
        select(func.count()).select_from(billing_periods).where(condition)
    ).scalar_one()
    rows = connection.execute(
        select(billing_periods.c.account_id, billing_periods.c.start)
        .where(condition)
        .order_by(billing_periods.c.end, billing_periods.c.account_id)
        .limit(shown)
    )
    return DueStep(int(count), [(row[0], row[1]) for row in rows])


def ended_open(connection: Connection, ended_by: date, shown: int) -> DueStep:
    """Open periods that ended by then: they would start closing."""
    return _step(
        connection,
        (billing_periods.c.status == PeriodStatus.OPEN.value) & (billing_periods.c.end <= ended_by),
        shown,
    )


def grace_over(connection: Connection, ended_by: date, shown: int) -> DueStep:
    """Open or closing periods whose grace is over by then: they would stop taking usage and
    get their final sync."""
    statuses = [PeriodStatus.OPEN.value, PeriodStatus.CLOSING.value]
    return _step(
        connection,
        billing_periods.c.status.in_(statuses) & (billing_periods.c.end <= ended_by),
        shown,
    )


def review_over(connection: Connection, now: datetime, shown: int) -> DueStep:
    """Periods in review whose review window is over by then: they would be finalized."""
    return _step(
        connection,
        (billing_periods.c.status == PeriodStatus.REVIEW.value)
        & (billing_periods.c.review_ends_at <= now),
        shown,
    )


def drafts_to_complete(connection: Connection, shown: int) -> DueStep:
    """Periods in review whose draft is not complete yet: they would be synced."""
    return _step(
        connection,
        (billing_periods.c.status == PeriodStatus.REVIEW.value)
        & billing_periods.c.review_ends_at.is_(None),
        shown,
    )
