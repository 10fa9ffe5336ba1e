"""Rating: what a line's quantity costs, exactly, rounded once (see :mod:`billsync.core.money`)."""

from __future__ import annotations

from decimal import Decimal

from billsync.core.catalog import Price
from billsync.core.money import EXACT, to_minor_units


def exact_amount(quantity: Decimal, price: Price) -> Decimal:
    """Σ over tiers of (units in the tier × the tier's unit price), in major units, unrounded.

    Tiers are graduated: each unit is charged at the price of the tier it falls in. A negative
    quantity (a correction, only allowed on flat prices) is charged at the flat price.

    Every operation is one of the EXACT context's own (it traps Inexact): called once per line
    on the ingest path, this spares entering a local context each time, and no thread's
    current context can round it.
    """
    if quantity < 0:
        return EXACT.multiply(quantity, price.tiers[0].unit_price)
    total = Decimal(0)
    lower = Decimal(0)
    for tier in price.tiers:
        if quantity <= lower:
            break
        upper = quantity if tier.up_to is None else min(quantity, tier.up_to)
        total = EXACT.add(total, EXACT.multiply(EXACT.subtract(upper, lower), tier.unit_price))
        if tier.up_to is None:
            break
        lower = tier.up_to
    return total


def line_amount(quantity: Decimal, price: Price, currency: str) -> int:
    """The line's amount in minor units: exact rating, then the one rounding."""
    return to_minor_units(exact_amount(quantity, price), currency)


def late_line_amount(quantity: Decimal, billed_before: Decimal, price: Price, currency: str) -> int:
    """A line's amount when ``billed_before`` units of its metric (same grouping) were already
    billed for the same period — its own line, and the late lines of that period on earlier
    invoices: exact(before + quantity) − exact(before), rounded once. Late usage is charged at
    the marginal rates of its original period, so graduated tiers are never granted twice,
    however many invoices the late usage is spread over. With nothing billed before, this is
    :func:`line_amount`."""
    if billed_before == 0:
        return line_amount(quantity, price, currency)
    exact = EXACT.subtract(
        exact_amount(EXACT.add(billed_before, quantity), price), exact_amount(billed_before, price)
    )
    return to_minor_units(exact, currency)
