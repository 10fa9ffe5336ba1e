"""An account's periods when its anchor day changes (core.periods.AnchorSchedule): pure, with
properties over any sequence of changes."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billsync.core.periods import AnchorChange, AnchorSchedule, Period, period_for_date


def d(month: int, day: int, year: int = 2026) -> date:
    return date(year, month, day)


pytestmark = pytest.mark.unit

DAYS = st.integers(min_value=1, max_value=28)


def test_without_changes_it_is_the_anchor_day() -> None:
    schedule = AnchorSchedule(15)
    assert schedule.period_for_date(date(2026, 11, 20)) == period_for_date(date(2026, 11, 20), 15)
    assert schedule.applies_from() is None


def test_a_change_keeps_the_current_period_and_shortens_the_next() -> None:
    changed = AnchorSchedule(1).changed_to(15, d(11, 15))
    assert changed == AnchorSchedule(15, (AnchorChange(d(12, 1), 1),))
    assert changed.period_for_date(d(11, 30)) == Period(d(11, 1), d(12, 1))
    assert changed.period_for_date(d(12, 1)) == Period(d(12, 1), d(12, 15))
    assert changed.period_for_date(d(12, 14)) == Period(d(12, 1), d(12, 15))
    assert changed.period_for_date(d(12, 15)) == Period(d(12, 15), d(1, 15, 2027))
    assert changed.next_period(Period(d(11, 1), d(12, 1))) == Period(d(12, 1), d(12, 15))
    # Moving the anchor earlier in the month: 15 → 1 on Nov 20 (period Nov 15 – Dec 15).
    earlier = AnchorSchedule(15).changed_to(1, d(11, 20))
    assert earlier.period_for_date(d(12, 14)) == Period(d(11, 15), d(12, 15))
    assert earlier.period_for_date(d(12, 20)) == Period(d(12, 15), d(1, 1, 2027))
    assert earlier.period_for_date(d(1, 1, 2027)) == Period(d(1, 1, 2027), d(2, 1, 2027))


def test_the_same_day_changes_nothing_and_a_pending_change_is_replaced() -> None:
    schedule = AnchorSchedule(1)
    assert schedule.changed_to(1, d(11, 15)) is schedule
    pending = schedule.changed_to(15, d(11, 15))
    assert pending.changed_to(10, d(11, 20)) == AnchorSchedule(10, pending.earlier)
    assert pending.changed_to(1, d(11, 20)) == AnchorSchedule(1)
    # A period that already began past the change (usage a little ahead of the clock) keeps
    # its dates: the change applies after it.
    begun = schedule.changed_to(15, d(11, 30), begun_until=d(1, 1, 2027))
    assert begun.applies_from() == d(1, 1, 2027)


@st.composite
def histories(draw: st.DrawFn) -> tuple[AnchorSchedule, list[tuple[date, AnchorSchedule]]]:
    """A schedule and each change made to it (when, and the schedule before)."""
    schedule = AnchorSchedule(draw(DAYS))
    today = date(2026, 1, 1) + timedelta(days=draw(st.integers(0, 60)))
    steps = []
    for _ in range(draw(st.integers(1, 6))):
        today += timedelta(days=draw(st.integers(0, 70)))
        steps.append((today, schedule))
        schedule = schedule.changed_to(draw(DAYS), today)
    return schedule, steps


@given(histories())
def test_periods_tile_time_and_never_move_once_begun(
    history: tuple[AnchorSchedule, list[tuple[date, AnchorSchedule]]],
) -> None:
    final, steps = history
    day = date(2025, 12, 1)
    period = final.period_for_date(day)
    while period.start < date(2027, 6, 1):
        following = final.next_period(period)
        assert following.start == period.end  # no gap, no overlap
        assert 1 <= (period.end - period.start).days <= 31  # never longer than a month
        for inside in (period.start, period.end - timedelta(days=1)):
            assert final.period_for_date(inside) == period
        period = following
    for today, before in steps:
        # What was current (or earlier) when a change was made keeps its dates.
        for offset in range(0, 40, 3):
            past = today - timedelta(days=offset)
            assert final.period_for_date(past) == before.period_for_date(past), (today, past)
