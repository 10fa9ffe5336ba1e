"""How amounts and quantities read to a person: money with its currency's symbol and minor
unit, quantities in the catalog's display unit. Display only — the ledger, Stripe and every
export keep integer minor units and the catalog's own unit; what is shown here is converted
exactly (``Decimal``) and rounded once, for the eye, at the end.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal

from billsync.core.catalog import Metric
from billsync.core.money import format_minor, minor_unit_exponent

# The symbols people read for the currencies billsync bills in most; any other currency is
# written with its code after the amount ("12.34 CHF").
CURRENCY_SYMBOLS = {
    "usd": "$", "eur": "€", "jpy": "¥", "gbp": "£", "inr": "₹", "krw": "₩",
    "cad": "CA$", "aud": "A$", "nzd": "NZ$", "hkd": "HK$", "sgd": "S$", "mxn": "MX$",
    "brl": "R$", "cny": "CN¥",
}  # fmt: skip
MINUS = "\u2212"  # the minus sign, not a hyphen: a credit reads "−$5.00"
# Wide enough for any quantity the ledger holds divided by any display factor; the result is
# rounded for display right after.
_DIVISION = Context(prec=60, rounding=ROUND_HALF_UP)
_PLAIN_WORD_END = re.compile(r"[a-z]{2,}$")


def currency_symbol(currency: str) -> str | None:
    return CURRENCY_SYMBOLS.get(currency.lower())


def format_money(amount: int, currency: str) -> str:
    """An amount in minor units as a person reads it: 123456 usd → '$1,234.56', -500 eur →
    '−€5.00', 1235 jpy → '¥1,235' (no decimals: yen has no minor unit)."""
    whole, _, fraction = format_minor(abs(amount), currency).partition(".")
    digits = f"{int(whole):,}" + (f".{fraction}" if fraction else "")
    symbol = currency_symbol(currency)
    text = f"{symbol}{digits}" if symbol else f"{digits} {currency.upper()}"
    return MINUS + text if amount < 0 else text


def unit_label(unit: str, quantity: Decimal | None = None) -> str:
    """The unit after a quantity: 'hour' → 'hours' unless the quantity is exactly one. Only a
    unit ending in a lower-case word is made plural ('GB-hour' → 'GB-hours'; 'GB' stays)."""
    if quantity is not None and quantity == 1:
        return unit
    if _PLAIN_WORD_END.search(unit) and not unit.endswith("s"):
        return unit + "s"
    return unit


@dataclass(frozen=True, slots=True)
class ShownQuantity:
    value: Decimal  # in the display unit, exact (to 60 significant digits)
    text: str  # rounded for display, with thousands separators
    unit: str  # the display unit (singular, as the catalog writes it)

    @property
    def label(self) -> str:
        """'29.90 hours'"""
        return f"{self.text} {unit_label(self.unit, self.value)}".rstrip()


def plain(number: Decimal, places: int | None = None) -> str:
    """A decimal with thousands separators, never in exponent form; rounded half up to
    ``places`` decimals when given, else as exact as it is (trailing zeros dropped)."""
    if places is not None:
        number = number.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
        return f"{number:,.{places}f}"
    if number == number.to_integral_value():
        return f"{number.to_integral_value():,f}"
    return f"{number.normalize():,f}"


def in_display_unit(quantity: Decimal, metric: Metric | None) -> Decimal:
    """``quantity`` (in the catalog's unit) in the metric's display unit, exactly."""
    if metric is None or metric.display_unit is None or metric.display_per_unit is None:
        return quantity
    return _DIVISION.divide(quantity, metric.display_per_unit)


def shown_quantity(quantity: Decimal, metric: Metric | None) -> ShownQuantity:
    """A ledger quantity as the customer reads it: 107652 seconds of a metric shown in hours
    (``display_per_unit = "3600"``) → '29.90 hours'; a metric without a display unit is shown
    in its own unit, exact ('133.4 GB')."""
    if metric is None:
        return ShownQuantity(quantity, plain(quantity), "")
    if metric.display_unit is None or metric.display_per_unit is None:
        return ShownQuantity(quantity, plain(quantity), metric.unit)
    value = in_display_unit(quantity, metric)
    return ShownQuantity(value, plain(value, metric.display_decimals), metric.display_unit)


def display_unit_price(unit_price: Decimal, metric: Metric | None) -> tuple[Decimal, str]:
    """The price of one display unit (exact: a multiplication) and that unit: $0.00000075 per
    second is $0.0027 per hour."""
    if metric is None:
        return unit_price, ""
    if metric.display_unit is None or metric.display_per_unit is None:
        return unit_price, metric.unit
    return _DIVISION.multiply(unit_price, metric.display_per_unit), metric.display_unit


def format_price(unit_price: Decimal, currency: str) -> str:
    """A unit price in major units with the currency's symbol, every significant digit kept
    (prices have up to 12 decimals): '$0.0027', '¥0.41'."""
    digits = plain(abs(unit_price))
    whole, _, fraction = digits.partition(".")
    places = max(len(fraction), minor_unit_exponent(currency))
    if places:
        digits = f"{whole}.{fraction.ljust(places, '0')}"
    symbol = currency_symbol(currency)
    text = f"{symbol}{digits}" if symbol else f"{digits} {currency.upper()}"
    return MINUS + text if unit_price < 0 else text
