"""Currencies and the one rounding rule.

The rule, in one place: a line's amount is computed exactly with ``Decimal`` (quantity × unit
price, tier by tier), converted to the currency's minor unit, and rounded **once per line** to a
whole number of minor units with ROUND_HALF_UP (halves go away from zero: 0.5¢ → 1¢, −0.5¢ → −1¢).
Nothing is rounded before that point and nothing after it, so the customer view, the console and
the Stripe invoice all show the same integer.
"""

from __future__ import annotations

from decimal import (
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
)

# ISO 4217 currencies Stripe treats as zero-decimal (amounts are whole units).
ZERO_DECIMAL_CURRENCIES = frozenset(
    {
        "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga",
        "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf",
    }
)  # fmt: skip
# Stripe's three-decimal currencies need amounts that are multiples of 10; billsync does not
# bill in them rather than round in a way the customer cannot see.
UNSUPPORTED_CURRENCIES = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})

# The largest amount Stripe accepts on one line, in minor units: 8 digits (99,999,999 — $999,999.99,
# ¥99,999,999). Stripe refuses more (https://docs.stripe.com/currencies#minimum-and-maximum-charge-amounts).
MAX_STRIPE_AMOUNT = 99_999_999
ROUNDING = ROUND_HALF_UP

# Ledger arithmetic runs in this context: wide enough for any quantity × price billsync accepts
# (quantities ≤ 10^15 with ≤ 12 decimals, summed over billions of events), and it *traps*
# Inexact, so an operation that would silently round raises instead.
EXACT = Context(
    prec=80,
    rounding=ROUNDING,
    traps=[InvalidOperation, DivisionByZero, Overflow, Inexact],
)


class CurrencyError(ValueError):
    """A currency code billsync cannot bill in."""


def normalize_currency(code: str) -> str:
    """Lower-case three-letter code, as Stripe spells it, or CurrencyError."""
    normalized = code.strip().lower()
    if len(normalized) != 3 or not normalized.isascii() or not normalized.isalpha():
        raise CurrencyError(f"'{code}' is not a three-letter ISO 4217 currency code")
    if normalized in UNSUPPORTED_CURRENCIES:
        raise CurrencyError(
            f"'{normalized}' is a three-decimal currency, which billsync does not bill in"
        )
    return normalized


def minor_unit_exponent(currency: str) -> int:
    """Digits after the decimal point of the currency's minor unit (2 for usd, 0 for jpy)."""
    return 0 if currency in ZERO_DECIMAL_CURRENCIES else 2


def to_minor_units(amount: Decimal, currency: str) -> int:
    """Round an exact major-unit amount to whole minor units: the one rounding of a line."""
    scaled = amount.scaleb(minor_unit_exponent(currency), context=EXACT)
    return int(scaled.to_integral_value(rounding=ROUNDING))


def format_minor(amount: int, currency: str) -> str:
    """Human form of a minor-unit amount: 1234 usd → '12.34'."""
    exponent = minor_unit_exponent(currency)
    return f"{Decimal(amount).scaleb(-exponent):.{exponent}f}"


def decimal_text(number: Decimal) -> str:
    """Plain positional notation, never scientific: Decimal('7.5E-7') → '0.00000075'."""
    return format(number, "f")
