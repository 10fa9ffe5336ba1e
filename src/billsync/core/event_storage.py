"""Where raw usage events live over time: the months they are stored under, and when they may
be removed. Pure: the store-specific work is in ``services.event_partitions`` and
``services.event_retention``.

Raw events are stored under the month of their ``period_start`` (the period the usage happened
in): one partition per month on PostgreSQL. Usage is refused once older than the usage horizon,
so the months a new event can still land in are bounded below; months before that bound are
closed for good, and only they may be dropped whole.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from billsync.core.periods import PeriodStatus


def month_of(day: date) -> date:
    """The first day of ``day``'s calendar month."""
    return day.replace(day=1)


def shift_months(month: date, delta: int) -> date:
    index = month.year * 12 + (month.month - 1) + delta
    return date(index // 12, index % 12 + 1, 1)


def months(first: date, last: date) -> list[date]:
    """Every month from ``first``'s to ``last``'s, both included."""
    found = []
    month = month_of(first)
    while month <= last:
        found.append(month)
        month = shift_months(month, 1)
    return found


def writable_from(now: datetime, horizon: timedelta) -> date:
    """The oldest month a newly accepted event can be stored under.

    The oldest event accepted is ``now - horizon``; its period may have started in the month
    before (a period runs from an anchor day to the next month's)."""
    return shift_months(month_of((now - horizon).date()), -1)


def months_for_usage(oldest: datetime, newest: datetime) -> list[date]:
    """The months that events timestamped between ``oldest`` and ``newest`` can be stored
    under, whatever their accounts' anchor days."""
    return months(shift_months(month_of(oldest.date()), -1), newest.date())


def released_floor(released_before: date | None) -> datetime | None:
    """The oldest usage ingest may take once the distinct values of the usage periods starting
    before ``released_before`` were released (:func:`writable_from` of the horizon then): older
    usage, under a horizon lengthened since, could land in such a period, where a value counted
    once already would be counted again. An event at or after the month after
    ``released_before`` is stored under a period that starts on or after it."""
    if released_before is None:
        return None
    return datetime.combine(shift_months(released_before, 1), time.min, tzinfo=UTC)


def retention_cutoff(now: datetime, retention_days: int) -> datetime | None:
    """Raw events of periods finalized before this may be removed; None: kept forever."""
    if retention_days <= 0:
        return None
    return now - timedelta(days=retention_days)


def events_retained(
    status: PeriodStatus, finalized_at: datetime | None, retained_before: datetime | None
) -> bool:
    """Whether retention may have removed the raw events of a period's lines: the period was
    finalized before the newest cutoff retention has worked to."""
    return (
        retained_before is not None
        and status is PeriodStatus.FINALIZED
        and finalized_at is not None
        and finalized_at < retained_before
    )
