"""Monthly billing periods in UTC, anchored on a day of the month, and their lifecycle states."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, date, datetime, time

MIN_ANCHOR_DAY = 1
# Every month has a 28th: anchoring on 29–31 would make period lengths depend on the month.
MAX_ANCHOR_DAY = 28


class PeriodStatus(enum.StrEnum):
    """Lifecycle of one account's billing period (see DESIGN.md, "Period / invoice lifecycle")."""

    OPEN = "open"
    CLOSING = "closing"
    REVIEW = "review"
    HELD = "held"
    FINALIZED = "finalized"

    @property
    def accepts_usage(self) -> bool:
        """Whether usage for this period still lands on this period's own invoice.

        ``open`` and ``closing`` (the grace window for late events) do. Once the draft is
        complete (``review``), held, or finalized, usage for the period is *late usage*: it lands
        on the account's next period that accepts usage, as a line labelled with its original
        period (see :func:`late_usage_target`).
        """
        return self in (PeriodStatus.OPEN, PeriodStatus.CLOSING)


@dataclass(frozen=True, slots=True)
class Period:
    """[start, end) in UTC, both at midnight of the anchor day."""

    start: date
    end: date

    @property
    def start_at(self) -> datetime:
        return datetime.combine(self.start, time(), tzinfo=UTC)

    @property
    def end_at(self) -> datetime:
        return datetime.combine(self.end, time(), tzinfo=UTC)

    def contains(self, moment: datetime) -> bool:
        return self.start_at <= moment < self.end_at


def validate_anchor_day(day: int) -> int:
    if not MIN_ANCHOR_DAY <= day <= MAX_ANCHOR_DAY:
        raise ValueError(f"billing anchor day must be between 1 and 28, got {day}")
    return day


def _shift_month(year: int, month: int, delta: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + delta
    return index // 12, index % 12 + 1


def period_starting(start: date) -> Period:
    year, month = _shift_month(start.year, start.month, 1)
    return Period(start, date(year, month, start.day))


def period_for_date(day: date, anchor_day: int) -> Period:
    """The period containing ``day`` (a UTC calendar date)."""
    if day.day >= anchor_day:
        start = date(day.year, day.month, anchor_day)
    else:
        year, month = _shift_month(day.year, day.month, -1)
        start = date(year, month, anchor_day)
    return period_starting(start)


def period_for(moment: datetime, anchor_day: int) -> Period:
    """The period containing an aware ``moment``."""
    if moment.tzinfo is None:
        raise ValueError("period_for needs an aware datetime")
    return period_for_date(moment.astimezone(UTC).date(), anchor_day)


def next_period(period: Period) -> Period:
    return period_starting(period.end)


def late_usage_target(
    original: Period, status_of: dict[date, PeriodStatus], *, limit: int = 120
) -> Period:
    """Where usage for ``original`` lands: itself while it accepts usage, else the next period
    that does. Periods absent from ``status_of`` have not started their lifecycle: they are open.
    """
    period = original
    for _ in range(limit):
        if status_of.get(period.start, PeriodStatus.OPEN).accepts_usage:
            return period
        period = next_period(period)
    raise ValueError(f"no period accepting usage within {limit} periods after {original.start}")
