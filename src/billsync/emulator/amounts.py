"""The arithmetic of an invoice's amounts, with no state: discounts over its lines, and what the
customer's balance and Stripe's minimum charge make of its total. The emulator's objects are
rendered from these results; they are pure so that every rule is decided in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

# Stripe's minimum charge per currency, in the currency's minor units (cents; yen for JPY),
# from https://docs.stripe.com/currencies#minimum-and-maximum-charge-amounts: an invoice whose
# amount due is above 0 and below it is marked paid at finalization and the amount is carried to
# the customer's balance (https://docs.stripe.com/api/invoices/object: "If the amount due for
# the invoice is less than Stripe's minimum allowed charge per currency, the invoice is
# automatically marked paid, and we add the amount due to the customer's credit balance which is
# applied to the next invoice"). Stripe states other currencies' minimums as the equivalent of
# the settlement currency's; the emulator does not convert currencies, and enforces none there.
MINIMUM_CHARGE: dict[str, int] = {
    "usd": 50,
    "aed": 200,
    "aud": 50,
    "bgn": 100,
    "brl": 50,
    "cad": 50,
    "chf": 50,
    "czk": 1500,
    "dkk": 250,
    "eur": 50,
    "gbp": 30,
    "hkd": 400,
    "huf": 17500,
    "inr": 50,
    "jpy": 50,
    "mxn": 1000,
    "myr": 200,
    "nok": 300,
    "nzd": 50,
    "pln": 200,
    "ron": 200,
    "sek": 300,
    "sgd": 50,
    "thb": 1000,
}


def minimum_charge(currency: str) -> int:
    return MINIMUM_CHARGE.get(currency.lower(), 0)


@dataclass(frozen=True)
class Line:
    """An invoice line as the discounts see it."""

    id: str
    amount: int
    discountable: bool
    product: str | None = None


@dataclass(frozen=True)
class Reduction:
    """One invoice-level discount: its id, its coupon's terms (a percentage or an amount), and
    the products it is limited to (its coupon's ``applies_to``; None: every line)."""

    discount: str
    percent_off: Decimal | None = None
    amount_off: int | None = None
    products: frozenset[str] | None = None

    def covers(self, line: Line) -> bool:
        return self.products is None or line.product in self.products


@dataclass(frozen=True)
class Breakdown:
    """What the discounts take off: per discount (in the invoice's order) and per line."""

    subtotal: int
    per_discount: tuple[tuple[str, int], ...]
    per_line: dict[str, tuple[tuple[str, int], ...]]

    @property
    def discount_total(self) -> int:
        return sum(amount for _, amount in self.per_discount)

    @property
    def total(self) -> int:
        return self.subtotal - self.discount_total


def _round_half_up(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_HALF_UP))


def _allocate(amount: int, weights: Sequence[tuple[str, int]]) -> dict[str, int]:
    """``amount`` spread over the lines in proportion to their weights, each share rounded half
    up on the running total, so the shares add up to ``amount`` exactly and the last line takes
    what the rounding left. No share exceeds its line's weight when ``amount`` does not exceed
    their sum."""
    whole = sum(weight for _, weight in weights)
    shares: dict[str, int] = {}
    if whole <= 0:
        return {line: 0 for line, _ in weights}
    running, given = 0, 0
    for line, weight in weights:
        running += weight
        upto = _round_half_up(Decimal(amount) * running / whole)
        shares[line] = upto - given
        given = upto
    return shares


def breakdown(lines: Sequence[Line], reductions: Sequence[Reduction]) -> Breakdown:
    """The invoice's discounts, computed as the emulator renders them.

    Stripe documents what the fields mean (``total_discount_amounts``: "the aggregate amounts
    calculated per discount across all line items"; a line's ``discount_amounts``: "the amount
    of discount calculated per discount for this line item"; ``subtotal``: before any invoice
    level discount) and that an ``amount_off`` coupon takes its amount off the subtotal, never
    below 0 (docs.stripe.com/api/coupons/create: "an invoice with a subtotal of 100 will have a
    final total of 0 if a coupon with an amount_off of 200 is applied to it"). It does not
    document the rounding, so the emulator's rule is:

    - only ``discountable`` lines with a positive amount form the base (and, for a coupon
      limited to products, only lines of those products);
    - discounts apply in the invoice's order, each on what the earlier ones left of the base;
    - a percentage is taken of that whole base and rounded half up once, on the invoice (not
      line by line);
    - a discount never exceeds what is left of the base, nor takes the total below 0;
    - each discount is spread over the lines in proportion to what is left of each, the shares
      rounded on the running total so they add up exactly (the last line takes the remainder).
    """
    subtotal = sum(line.amount for line in lines)
    left = {line.id: max(line.amount, 0) if line.discountable else 0 for line in lines}
    headroom = max(subtotal, 0)
    per_discount: list[tuple[str, int]] = []
    per_line: dict[str, list[tuple[str, int]]] = {
        line.id: [] for line in lines if line.discountable
    }
    for reduction in reductions:
        covered = [(line.id, left[line.id]) for line in lines if reduction.covers(line)]
        base = sum(weight for _, weight in covered)
        if reduction.percent_off is not None:
            wanted = _round_half_up(Decimal(base) * reduction.percent_off / 100)
        else:
            wanted = reduction.amount_off or 0
        amount = max(0, min(wanted, base, headroom))
        shares = _allocate(amount, covered)
        for line_id, discounts in per_line.items():
            share = shares.get(line_id, 0)
            discounts.append((reduction.discount, share))
            left[line_id] -= share
        headroom -= amount
        per_discount.append((reduction.discount, amount))
    return Breakdown(
        subtotal=subtotal,
        per_discount=tuple(per_discount),
        per_line={line_id: tuple(amounts) for line_id, amounts in per_line.items()},
    )


@dataclass(frozen=True)
class Settlement:
    """What finalizing an invoice does with the customer's balance (negative: a credit)."""

    starting_balance: int
    applied: int  # the change the invoice makes to the balance (applied_to_invoice)
    carried: int  # an amount due under the minimum charge, moved to the balance
    amount_due: int
    ending_balance: int


def settle(total: int, balance: int, minimum: int) -> Settlement:
    """Stripe's finalization of an invoice's total against the customer's balance
    (docs.stripe.com/billing/customer/balance: "The invoice balance automatically applies toward
    the next invoice finalized to a customer"; docs.stripe.com/api/invoices/object: "Stripe
    applies any customer credit on the account before determining the amount due"):

    - a credit reduces the amount due down to 0 and what it does not use stays on the balance;
    - a debit (a positive balance) is added to the amount due in full;
    - a negative total is credited to the balance;
    - then, an amount due above 0 and below ``minimum`` is not charged: the invoice owes 0 and
      the amount is carried to the balance as a debit (type ``invoice_too_small``), so
      ``ending_balance`` includes it.
    """
    owed = total + balance
    amount_due = max(owed, 0)
    ending = min(owed, 0)
    applied = ending - balance
    carried = 0
    if 0 < amount_due < minimum:
        carried, amount_due = amount_due, 0
        ending += carried
    return Settlement(
        starting_balance=balance,
        applied=applied,
        carried=carried,
        amount_due=amount_due,
        ending_balance=ending,
    )
