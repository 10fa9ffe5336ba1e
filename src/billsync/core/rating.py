"""Rating: what a line's quantity costs, exactly, rounded once (see :mod:`billsync.core.money`)."""

from __future__ import annotations

from decimal import Decimal, localcontext

from billsync.core.catalog import Price
from billsync.core.money import EXACT, to_minor_units


def exact_amount(quantity: Decimal, price: Price) -> Decimal:
    """Σ over tiers of (units in the tier × the tier's unit price), in major units, unrounded.

    Tiers are graduated: each unit is charged at the price of the tier it falls in. A negative
    quantity (a correction, only allowed on flat prices) is charged at the flat price.
    """
    with localcontext(EXACT):
        if quantity < 0:
            return quantity * price.tiers[0].unit_price
        total = Decimal(0)
        lower = Decimal(0)
        for tier in price.tiers:
            if quantity <= lower:
                break
            upper = quantity if tier.up_to is None else min(quantity, tier.up_to)
            total += (upper - lower) * tier.unit_price
            if tier.up_to is None:
                break
            lower = tier.up_to
        return total


def line_amount(quantity: Decimal, price: Price, currency: str) -> int:
    """The line's amount in minor units: exact rating, then the one rounding."""
    return to_minor_units(exact_amount(quantity, price), currency)
