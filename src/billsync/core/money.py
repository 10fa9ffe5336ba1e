"""Currencies and the one rounding rule.

The rule, in one place: a line's amount is computed exactly with ``Decimal`` (quantity × unit
price, tier by tier), converted to the currency's minor unit, and rounded **once per line** to a
whole number of minor units with ROUND_HALF_UP (halves go away from zero: 0.5¢ → 1¢, −0.5¢ → −1¢).
Nothing is rounded before that point and nothing after it, so the customer view, the console and
the Stripe invoice all show the same integer.
"""

from __future__ import annotations

import re
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


class AmountError(ValueError):
    """Text that is not an exact amount of money in a currency."""


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


# An amount a person types: ASCII digits, at most one decimal point, an optional sign. Nothing
# else that ``Decimal()`` also reads: no exponent (1e1000000), NaN or Infinity, no underscores
# (1_000), no digits of other scripts (١٢), no thousands separators.
AMOUNT_PATTERN = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")
# Longer text is refused before it is read: the largest amount takes 10 characters
# ("-999999.99"), which leaves room for a few zeros a person may add.
AMOUNT_TEXT_LIMIT = 32


def parse_amount(text: str, currency: str, *, limit: int = MAX_STRIPE_AMOUNT) -> int:
    """An amount typed in major units ('12.50', '-3') as exact minor units (1250, -300).

    Exact or refused, never rounded: '0.005' is not an amount of usd (it is half a cent), '12.5'
    of jpy is not either; '5.000' is 500 cents. At most ``limit`` minor units either way (by
    default Stripe's largest amount on one line). Surrounding spaces are ignored. Raises
    AmountError with a message a person can act on; nothing else."""
    written = text.strip()
    if len(written) > AMOUNT_TEXT_LIMIT:
        raise AmountError(f"an amount is at most {AMOUNT_TEXT_LIMIT} characters long")
    if not AMOUNT_PATTERN.fullmatch(written):
        raise AmountError(
            f"{written!r} is not an amount: write digits 0-9 with at most one decimal point, "
            "like 12.50"
        )
    exponent = minor_unit_exponent(currency)
    whole, _, fraction = written.lstrip("+-").partition(".")
    significant = fraction.rstrip("0")
    if len(significant) > exponent:
        unit = (
            f"{currency.upper()} amounts are whole numbers"
            if exponent == 0
            else f"{currency.upper()} amounts have at most {exponent} decimals"
        )
        raise AmountError(f"{written} is not an exact amount: {unit} (nothing is rounded)")
    scale: int = 10**exponent
    minor = int(whole) * scale + int(significant.ljust(exponent, "0") or "0")
    if minor > limit:
        raise AmountError(
            f"{written} {currency.upper()} is too large: an amount is at most {limit:,} minor "
            f"units either way ({format_minor(limit, currency)} {currency.upper()}); split a "
            "larger one"
        )
    return -minor if written.startswith("-") else minor


def format_minor(amount: int, currency: str) -> str:
    """Human form of a minor-unit amount: 1234 usd → '12.34'."""
    exponent = minor_unit_exponent(currency)
    return f"{Decimal(amount).scaleb(-exponent):.{exponent}f}"


def decimal_text(number: Decimal) -> str:
    """Plain positional notation, never scientific: Decimal('7.5E-7') → '0.00000075'."""
    return format(number, "f")
