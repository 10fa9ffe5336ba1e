"""Amounts a person types (support's credits and charges): exact in the currency's minor unit,
or refused with a message — never rounded, never an exception other than AmountError."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from billsync.core.money import (
    AMOUNT_TEXT_LIMIT,
    MAX_STRIPE_AMOUNT,
    AmountError,
    format_minor,
    minor_unit_exponent,
    parse_amount,
)

pytestmark = pytest.mark.unit  # pure: no database, no network, no process

CURRENCIES = st.sampled_from(["usd", "eur", "jpy", "krw", "gbp"])
AMOUNTS = st.integers(min_value=-MAX_STRIPE_AMOUNT, max_value=MAX_STRIPE_AMOUNT)


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("12.50", "usd", 1250),
        ("12.5", "usd", 1250),
        ("-3", "usd", -300),
        ("+0.01", "usd", 1),
        ("5.000", "usd", 500),  # trailing zeros are still exact
        ("  7 ", "usd", 700),
        ("007.10", "eur", 710),
        ("0", "usd", 0),
        ("1200", "jpy", 1200),
        ("1200.0", "jpy", 1200),
        ("999999.99", "usd", MAX_STRIPE_AMOUNT),
        ("-999999.99", "usd", -MAX_STRIPE_AMOUNT),
        ("99999999", "jpy", MAX_STRIPE_AMOUNT),
    ],
)
def test_exact_amounts_are_read(text: str, currency: str, minor: int) -> None:
    assert parse_amount(text, currency) == minor


@pytest.mark.parametrize(
    ("text", "currency", "says"),
    [
        ("0.005", "usd", "at most 2 decimals"),  # half a cent: not rounded to 1 cent
        ("-0.001", "usd", "at most 2 decimals"),
        ("12.5", "jpy", "whole numbers"),
        ("1_000", "usd", "not an amount"),  # Decimal() reads underscores
        ("1e1000000", "usd", "not an amount"),  # Decimal() reads it; scaling it overflowed
        ("1E2", "usd", "not an amount"),
        ("0e999999999", "usd", "not an amount"),
        ("NaN", "usd", "not an amount"),
        ("sNaN", "usd", "not an amount"),
        ("Infinity", "usd", "not an amount"),
        ("-inf", "usd", "not an amount"),
        ("١٢", "usd", "not an amount"),  # Arabic-Indic digits: int() reads them as 12
        ("１", "usd", "not an amount"),  # a full-width digit
        ("1,000", "usd", "not an amount"),
        ("1 000", "usd", "not an amount"),
        ("12.", "usd", "not an amount"),
        (".5", "usd", "not an amount"),
        ("--1", "usd", "not an amount"),
        ("1.2.3", "usd", "not an amount"),
        ("0x10", "usd", "not an amount"),
        ("12\x00", "usd", "not an amount"),
        ("", "usd", "not an amount"),
        ("$5", "usd", "not an amount"),
        ("0" * (AMOUNT_TEXT_LIMIT + 1), "usd", "characters long"),
        ("1000000.00", "usd", "at most 99,999,999 minor units"),
        ("-100000000", "jpy", "at most 99,999,999 minor units"),
    ],
)
def test_anything_else_is_refused_with_a_reason(text: str, currency: str, says: str) -> None:
    with pytest.raises(AmountError) as refused:
        parse_amount(text, currency)
    assert says in str(refused.value)


@given(AMOUNTS, CURRENCIES)
def test_what_billsync_shows_reads_back_as_the_same_amount(minor: int, currency: str) -> None:
    """The console shows amounts with ``format_minor``: typing one back is the same amount."""
    assert parse_amount(format_minor(minor, currency), currency) == minor


@given(AMOUNTS, st.integers(min_value=1, max_value=9), st.integers(1, 6), CURRENCIES)
def test_an_amount_finer_than_the_minor_unit_is_refused_not_rounded(
    minor: int, digit: int, extra: int, currency: str
) -> None:
    exponent = minor_unit_exponent(currency)
    finer = Decimal(minor * 10**extra + digit).scaleb(-(exponent + extra))
    with pytest.raises(AmountError, match="exact"):
        parse_amount(format(finer, "f"), currency)


@given(st.text(max_size=40), CURRENCIES)
@example("1e1000000", "usd")
@example("1_000", "usd")
@example("٣", "usd")
def test_any_text_is_an_exact_amount_or_an_amount_error(text: str, currency: str) -> None:
    """Whatever is typed: AmountError, or an amount within Stripe's limit that is exactly
    what the text says (Decimal reads it to the same value, scaled to the minor unit)."""
    try:
        minor = parse_amount(text, currency)
    except AmountError:
        return
    assert abs(minor) <= MAX_STRIPE_AMOUNT
    assert text.strip().isascii()
    assert Decimal(text.strip()).scaleb(minor_unit_exponent(currency)) == minor


@given(
    st.decimals(allow_nan=True, allow_infinity=True)
    .map(lambda number: f"{number:e}")
    .filter(lambda text: any(mark in text.lower() for mark in ("e", "nan", "inf"))),
    CURRENCIES,
)
def test_scientific_notation_and_special_values_are_refused(text: str, currency: str) -> None:
    with pytest.raises(AmountError):
        parse_amount(text, currency)
