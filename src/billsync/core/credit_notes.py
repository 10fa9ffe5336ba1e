"""How a credit note lowers a finalized invoice, decided once (pure: no I/O).

Stripe's rule (docs.stripe.com/api/credit_notes/create): "A credit note will first reduce the
invoice's ``amount_remaining`` (and ``amount_due``), but not below zero. This amount is
indicated by the credit note's ``pre_payment_amount``. The excess amount is indicated by
``post_payment_amount``" — which must be refunded, credited to the customer's balance, or
credited outside of Stripe, in full. And "the sum of all credit notes issued for an invoice
can't exceed the total amount of the invoice" (docs.stripe.com/invoicing/dashboard/credit-notes).
Support chooses where the part already paid goes: back to the customer's card (a refund) or to
their balance for the next invoice (a credit).
"""

from __future__ import annotations

from dataclasses import dataclass

# Stripe's reasons for a credit note, with the words the console shows.
REASONS = {
    "order_change": "Order change (the bill was wrong)",
    "product_unsatisfactory": "Product unsatisfactory (an outage, poor service)",
    "duplicate": "Duplicate charge",
    "fraudulent": "Fraudulent",
}
# Where the part of a credit note the customer has already paid goes.
DESTINATIONS = {
    "credit": "credit the customer's balance (taken off their next invoice)",
    "refund": "refund it to the customer's payment method",
}
# Invoice statuses that take a credit note: finalized and not void.
CREDITABLE_STATUSES = ("open", "paid", "uncollectible")


@dataclass(frozen=True, slots=True)
class CreditSplit:
    """What a credit note of ``total`` does: ``pre`` off what is still to pay, ``post`` (the
    rest) as a refund or a credit to the balance."""

    total: int
    pre: int
    post: int
    refund: int
    credit: int


def split_credit(total: int, *, amount_remaining: int, paid: bool, destination: str) -> CreditSplit:
    """The parts of a credit note of ``total`` minor units on an invoice with
    ``amount_remaining`` still to pay (nothing when it is ``paid``)."""
    if total <= 0:
        raise ValueError("a credit note credits a positive amount")
    if destination not in DESTINATIONS:
        raise ValueError(f"the destination is one of {', '.join(DESTINATIONS)}")
    pre = 0 if paid else min(total, max(amount_remaining, 0))
    post = total - pre
    refund = post if destination == "refund" else 0
    return CreditSplit(total, pre, post, refund, post - refund)


def creditable(invoice_total: int, credited: int) -> int:
    """What credit notes can still take off an invoice that totals ``invoice_total`` after
    ``credited`` (the credit notes issued on it so far)."""
    return max(invoice_total - credited, 0)
