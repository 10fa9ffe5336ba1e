"""Objects as Stripe renders them (shapes of stripe-python's resources for the pinned version)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from billsync.emulator import amounts
from billsync.emulator.state import State, public

LINES_INLINE = 10  # an invoice embeds its first 10 lines, as Stripe does


def customer(obj: dict[str, Any]) -> dict[str, Any]:
    if obj.get("deleted"):
        return {"id": obj["id"], "object": "customer", "deleted": True}
    return public(obj)


def invoice_item(obj: dict[str, Any]) -> dict[str, Any]:
    return public(obj)


def line_item(
    state: State, line_id: str, discounted: amounts.Breakdown | None = None
) -> dict[str, Any]:
    """A line; ``discounted``: its invoice's breakdown, when the caller has it already."""
    invoice_id, item_id = state.line_items[line_id]
    item = state.invoice_items[item_id]
    if discounted is None:
        discounted = breakdown(state, state.invoices[invoice_id])
    return {
        "id": line_id,
        "object": "line_item",
        "amount": item["amount"],
        "currency": item["currency"],
        "description": item["description"],
        "discount_amounts": [
            {"amount": amount, "discount": discount}
            for discount, amount in discounted.per_line.get(line_id, ())
        ],
        "discountable": item["discountable"],
        "discounts": [],
        "invoice": invoice_id,
        "livemode": item["livemode"],
        "metadata": dict(item["metadata"] or {}),
        "parent": {
            "type": "invoice_item_details",
            "invoice_item_details": {
                "invoice_item": item_id,
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": None,
            },
            "subscription_item_details": None,
        },
        "period": dict(item["period"]),
        "pretax_credit_amounts": [],
        "pricing": item["pricing"],
        "quantity": item["quantity"],
        "quantity_decimal": item["quantity_decimal"],
        "subscription": None,
        "subtotal": item["amount"],
        "taxes": [],
    }


def amount_off_in(coupon: dict[str, Any], currency: str) -> int | None:
    """An amount_off coupon's amount in ``currency`` (its own, or its ``currency_options``), or
    None when it has none there."""
    if coupon["currency"] == currency:
        amount: int = coupon["amount_off"]
        return amount
    option = (coupon["currency_options"] or {}).get(currency)
    return None if option is None else int(option["amount_off"])


def _product(item: dict[str, Any]) -> str | None:
    pricing = item["pricing"]
    return None if pricing is None else str(pricing["price_details"]["product"])


def breakdown(state: State, obj: dict[str, Any]) -> amounts.Breakdown:
    """The invoice's lines and discounts, through ``amounts.breakdown``."""
    items = [
        (line_id, state.invoice_items[state.line_items[line_id][1]])
        for line_id in state.invoice_lines.get(obj["id"], [])
    ]
    lines = [
        amounts.Line(line_id, item["amount"], bool(item["discountable"]), _product(item))
        for line_id, item in items
    ]
    reductions = []
    for discount_id in obj["discounts"]:
        coupon = state.discounts[discount_id]["_coupon"]
        products = (coupon["applies_to"] or {}).get("products")
        only = frozenset(products) if products else None
        if coupon["percent_off"] is not None:
            percent = Decimal(str(coupon["percent_off"]))
            reductions.append(amounts.Reduction(discount_id, percent_off=percent, products=only))
        else:
            amount = amount_off_in(coupon, obj["currency"]) or 0
            reductions.append(amounts.Reduction(discount_id, amount_off=amount, products=only))
    return amounts.breakdown(lines, reductions)


def balance_in(customer: dict[str, Any], currency: str) -> int:
    """The customer's balance that applies to an invoice in ``currency``: ``balance`` when it is
    the customer's currency (or the customer has none yet), else that currency's own balance
    (see ``balances``)."""
    if customer["currency"] in (None, currency):
        balance: int = customer["balance"]
        return balance
    return int(customer.get("_balances", {}).get(currency, 0))


def totals(
    state: State, obj: dict[str, Any], discounted: amounts.Breakdown | None = None
) -> dict[str, int]:
    """Amounts of an invoice: the sum of its lines, less its discounts, against the customer's
    balance. No tax. A draft follows the customer's current balance; from finalization on, the
    amount due and the balances are those finalization fixed (``balances``)."""
    discounted = discounted or breakdown(state, obj)
    subtotal, total = discounted.subtotal, discounted.total
    if obj["status"] == "draft":
        starting = balance_in(state.customers[obj["customer"]], obj["currency"])
        amount_due = max(total + starting, 0)
    else:
        starting = obj["starting_balance"]
        amount_due = obj["_amount_due"]
    amount_paid = obj["_amount_paid"]
    remaining = 0 if obj["status"] in ("paid", "void") else max(amount_due - amount_paid, 0)
    return {
        "subtotal": subtotal,
        "subtotal_excluding_tax": subtotal,
        "total": total,
        "total_excluding_tax": total,
        "starting_balance": starting,
        "amount_due": amount_due,
        "amount_paid": amount_paid,
        "amount_remaining": remaining,
    }


def invoice(state: State, obj: dict[str, Any]) -> dict[str, Any]:
    if obj.get("deleted"):
        return {"id": obj["id"], "object": "invoice", "deleted": True}
    rendered = public(obj)
    discounted = breakdown(state, obj)
    rendered.update(totals(state, obj, discounted))
    rendered["discounts"] = list(obj["discounts"])
    rendered["total_discount_amounts"] = [
        {"amount": amount, "discount": discount} for discount, amount in discounted.per_discount
    ]
    line_ids = state.invoice_lines.get(obj["id"], [])
    rendered["lines"] = {
        "object": "list",
        "data": [line_item(state, line_id, discounted) for line_id in line_ids[:LINES_INLINE]],
        "has_more": len(line_ids) > LINES_INLINE,
        "total_count": len(line_ids),
        "url": f"/v1/invoices/{obj['id']}/lines",
    }
    return rendered


def coupon_valid(state: State, obj: dict[str, Any]) -> bool:
    """Whether the coupon can still make a new discount: not deleted, not past ``redeem_by``,
    not redeemed ``max_redemptions`` times (docs.stripe.com/api/coupons/object: "Taking account
    of the above properties, whether this coupon can still be applied to a customer")."""
    if obj.get("deleted"):
        return False
    if obj["redeem_by"] is not None and obj["redeem_by"] <= state.clock.now():
        return False
    return obj["max_redemptions"] is None or obj["times_redeemed"] < obj["max_redemptions"]


def coupon(state: State, obj: dict[str, Any]) -> dict[str, Any]:
    """A coupon; ``applies_to`` and ``currency_options`` only when set (Stripe includes them
    only then)."""
    rendered = {key: value for key, value in public(obj).items() if key != "deleted"}
    for key in ("applies_to", "currency_options"):
        if rendered[key] is None:
            del rendered[key]
    rendered["valid"] = coupon_valid(state, obj)
    return rendered


def discount(obj: dict[str, Any]) -> dict[str, Any]:
    return public(obj)


def deleted_discount(obj: dict[str, Any]) -> dict[str, Any]:
    """What ``DELETE /v1/customers/{id}/discount`` answers: the discount, ``deleted``, without
    ``end`` (Stripe's example ``deleted_discount`` has none)."""
    rendered = {key: value for key, value in discount(obj).items() if key != "end"}
    return {**rendered, "deleted": True}


def balance_transaction(obj: dict[str, Any]) -> dict[str, Any]:
    return public(obj)
