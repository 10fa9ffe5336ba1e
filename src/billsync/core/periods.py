"""Monthly billing periods in UTC, anchored on a day of the month, and their lifecycle states."""

from __future__ import annotations

import enum
from collections.abc import Callable
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
    original: Period,
    status_of: dict[date, PeriodStatus],
    *,
    limit: int = 120,
    following: Callable[[Period], Period] = next_period,
) -> Period:
    """Where usage for ``original`` lands: itself while it accepts usage, else the next period
    that does (``following``: the account's next period, ``AnchorSchedule.next_period`` when
    its anchor day changed). Periods absent from ``status_of`` have not started their
    lifecycle: they are open.
    """
    period = original
    for _ in range(limit):
        if status_of.get(period.start, PeriodStatus.OPEN).accepts_usage:
            return period
        period = following(period)
    raise ValueError(f"no period accepting usage within {limit} periods after {original.start}")


@dataclass(frozen=True, slots=True)
class AnchorChange:
    """Periods before ``until`` started on ``anchor_day`` (an account's earlier anchor)."""

    until: date
    anchor_day: int


@dataclass(frozen=True, slots=True)
class AnchorSchedule:
    """An account's periods when its anchor day may have changed: ``anchor_day`` applies from
    the last change's ``until`` on (from the beginning when there is none), each earlier anchor
    before its ``until``.

    A change applies to future periods only: the period running when it was made keeps its
    dates, and ``until`` is that period's end. The first period after it starts there and ends
    on the next occurrence of the new anchor day (a short period: 1 → 15 gives Nov 1–Dec 1, then
    Dec 1–Dec 15, then Dec 15–Jan 15), so no period is ever longer than a month and usage late
    for an earlier period still lands in that period's own dates."""

    anchor_day: int
    earlier: tuple[AnchorChange, ...] = ()

    def _rule(self, day: date) -> tuple[int, date | None, date | None]:
        """The anchor day in force on ``day``, and the bounds of the span it rules."""
        begins: date | None = None
        for change in self.earlier:
            if day < change.until:
                return change.anchor_day, begins, change.until
            begins = change.until
        return self.anchor_day, begins, None

    def period_for_date(self, day: date) -> Period:
        """The period containing ``day`` (a UTC calendar date)."""
        anchor_day, begins, ends = self._rule(day)
        period = period_for_date(day, anchor_day)
        start = period.start if begins is None else max(period.start, begins)
        end = period.end if ends is None else min(period.end, ends)
        return Period(start, end)

    def period_for(self, moment: datetime) -> Period:
        if moment.tzinfo is None:
            raise ValueError("period_for needs an aware datetime")
        return self.period_for_date(moment.astimezone(UTC).date())

    def next_period(self, period: Period) -> Period:
        return self.period_for_date(period.end)

    def changed_to(
        self, anchor_day: int, today: date, *, begun_until: date | None = None
    ) -> AnchorSchedule:
        """This schedule once the anchor day is set to ``anchor_day`` on ``today``: the period
        containing today keeps its dates — and so does any later one that has already begun
        (``begun_until``: the end of the latest period the ledger holds) — and the new anchor
        applies from the end of those. A change made before an earlier one took effect
        replaces it."""
        validate_anchor_day(anchor_day)
        pending = self.earlier[-1] if self.earlier else None
        if (
            pending is not None
            and today < pending.until
            and (begun_until is None or begun_until <= pending.until)
        ):
            if anchor_day == pending.anchor_day:  # back to the anchor in force: no change
                return AnchorSchedule(anchor_day, self.earlier[:-1])
            return AnchorSchedule(anchor_day, self.earlier)
        if anchor_day == self.anchor_day:
            return self
        effective = self.period_for_date(today).end
        if begun_until is not None and begun_until > effective:
            effective = begun_until
        return AnchorSchedule(anchor_day, (*self.earlier, AnchorChange(effective, self.anchor_day)))

    def applies_from(self) -> date | None:
        """The date the current anchor day applies from (None: always has)."""
        return self.earlier[-1].until if self.earlier else None
