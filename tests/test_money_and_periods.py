"""The pure core: the rounding rule, currencies, period arithmetic, rating."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billsync.core.catalog import Price, Tier
from billsync.core.money import (
    CurrencyError,
    decimal_text,
    format_minor,
    minor_unit_exponent,
    normalize_currency,
    to_minor_units,
)
from billsync.core.periods import (
    Period,
    PeriodStatus,
    late_usage_target,
    next_period,
    period_for,
    period_for_date,
    validate_anchor_day,
)
from billsync.core.rating import exact_amount, line_amount

pytestmark = pytest.mark.unit  # pure: no database, no network, no process


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("0.005", "usd", 1),  # half a cent rounds up
        ("0.0049999", "usd", 0),
        ("-0.005", "usd", -1),  # halves go away from zero, credits included
        ("12.345", "eur", 1235),
        ("99.5", "jpy", 100),  # JPY has no minor unit
        ("99.4999", "jpy", 99),
        ("0", "usd", 0),
    ],
)
def test_rounding_rule_is_half_up_once_to_minor_units(
    amount: str, currency: str, minor: int
) -> None:
    assert to_minor_units(Decimal(amount), currency) == minor


def test_currency_codes() -> None:
    assert normalize_currency(" USD ") == "usd"
    assert minor_unit_exponent("jpy") == 0
    assert minor_unit_exponent("usd") == 2
    assert format_minor(1234, "usd") == "12.34"
    assert format_minor(-5, "usd") == "-0.05"
    assert format_minor(1234, "jpy") == "1234"
    with pytest.raises(CurrencyError, match="three-letter"):
        normalize_currency("dollars")
    with pytest.raises(CurrencyError, match="three-decimal"):
        normalize_currency("kwd")


def test_decimal_text_is_never_scientific() -> None:
    assert decimal_text(Decimal("7.5E-7")) == "0.00000075"
    assert decimal_text(Decimal("1E+3")) == "1000"
    assert decimal_text(Decimal("0.10")) == "0.10"


def test_periods_anchor_on_the_configured_day() -> None:
    assert period_for_date(date(2026, 11, 26), 1) == Period(date(2026, 11, 1), date(2026, 12, 1))
    assert period_for_date(date(2026, 11, 14), 15) == Period(date(2026, 10, 15), date(2026, 11, 15))
    assert period_for_date(date(2026, 11, 15), 15) == Period(date(2026, 11, 15), date(2026, 12, 15))
    assert period_for_date(date(2027, 1, 3), 28) == Period(date(2026, 12, 28), date(2027, 1, 28))
    moment = datetime(2026, 12, 1, 0, 0, tzinfo=UTC) - timedelta(microseconds=1)
    assert period_for(moment, 1).start == date(2026, 11, 1)
    with pytest.raises(ValueError, match="between 1 and 28"):
        validate_anchor_day(29)


@given(
    moment=st.datetimes(
        min_value=datetime(2000, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive
        max_value=datetime(2100, 1, 1),  # noqa: DTZ001
        timezones=st.just(UTC),
    ),
    anchor=st.integers(1, 28),
)
def test_every_moment_is_in_exactly_one_period(moment: datetime, anchor: int) -> None:
    period = period_for(moment, anchor)
    assert period.contains(moment)
    assert period.start.day == anchor == period.end.day
    assert not next_period(period).contains(moment)
    # Consecutive periods tile time with no gap and no overlap.
    assert next_period(period).start == period.end
    assert 28 <= (period.end - period.start).days <= 31


def test_late_usage_lands_on_the_next_period_that_accepts_usage() -> None:
    october = Period(date(2026, 10, 1), date(2026, 11, 1))
    november = next_period(october)
    assert late_usage_target(october, {}) == october
    assert late_usage_target(october, {october.start: PeriodStatus.CLOSING}) == october
    for closed in (PeriodStatus.REVIEW, PeriodStatus.HELD, PeriodStatus.FINALIZED):
        assert late_usage_target(october, {october.start: closed}) == november
    statuses = {october.start: PeriodStatus.FINALIZED, november.start: PeriodStatus.FINALIZED}
    assert late_usage_target(october, statuses) == next_period(november)


TIERED = Price(
    tiers=(
        Tier(up_to=Decimal(100), unit_price=Decimal(0)),
        Tier(up_to=Decimal(1000), unit_price=Decimal("0.02")),
        Tier(up_to=None, unit_price=Decimal("0.01")),
    )
)


def test_graduated_tiers_charge_each_unit_at_its_tier() -> None:
    assert exact_amount(Decimal(50), TIERED) == 0
    assert exact_amount(Decimal(100), TIERED) == 0
    assert exact_amount(Decimal(150), TIERED) == Decimal("1.00")
    assert exact_amount(Decimal(1500), TIERED) == Decimal(900) * Decimal("0.02") + Decimal(5)
    assert line_amount(Decimal("100.25"), TIERED, "usd") == 1  # 0.005 → 1 cent
    assert TIERED.marginal_unit_price(Decimal(10)) == 0
    assert TIERED.marginal_unit_price(Decimal(100)) == Decimal("0.02")
    assert TIERED.marginal_unit_price(Decimal(5000)) == Decimal("0.01")


@given(
    a=st.decimals(min_value=0, max_value=10**9, places=6),
    b=st.decimals(min_value=0, max_value=10**9, places=6),
)
def test_rating_is_monotonic_and_flat_is_quantity_times_price(a: Decimal, b: Decimal) -> None:
    low, high = sorted((a, b))
    assert exact_amount(low, TIERED) <= exact_amount(high, TIERED)
    flat = Price(tiers=(Tier(up_to=None, unit_price=Decimal("0.00000075")),))
    assert exact_amount(a, flat) == a * Decimal("0.00000075")
