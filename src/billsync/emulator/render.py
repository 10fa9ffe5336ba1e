"""Objects as Stripe renders them (shapes of stripe-python's resources for the pinned version)."""

from __future__ import annotations

from typing import Any

from billsync.emulator.state import State, public

LINES_INLINE = 10  # an invoice embeds its first 10 lines, as Stripe does


def customer(obj: dict[str, Any]) -> dict[str, Any]:
    if obj.get("deleted"):
        return {"id": obj["id"], "object": "customer", "deleted": True}
    return public(obj)


def invoice_item(obj: dict[str, Any]) -> dict[str, Any]:
    return public(obj)


def line_item(state: State, line_id: str) -> dict[str, Any]:
    invoice_id, item_id = state.line_items[line_id]
    item = state.invoice_items[item_id]
    return {
        "id": line_id,
        "object": "line_item",
        "amount": item["amount"],
        "currency": item["currency"],
        "description": item["description"],
        "discount_amounts": [],
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


def totals(state: State, obj: dict[str, Any]) -> dict[str, int]:
    """Amounts of an invoice: the sum of its lines; no tax, no discounts, no balance."""
    subtotal = sum(
        state.invoice_items[state.line_items[line_id][1]]["amount"]
        for line_id in state.invoice_lines.get(obj["id"], [])
    )
    amount_due = max(subtotal, 0)
    amount_paid = obj["_amount_paid"]
    remaining = 0 if obj["status"] in ("paid", "void") else max(amount_due - amount_paid, 0)
    return {
        "subtotal": subtotal,
        "subtotal_excluding_tax": subtotal,
        "total": subtotal,
        "total_excluding_tax": subtotal,
        "amount_due": amount_due,
        "amount_paid": amount_paid,
        "amount_remaining": remaining,
    }


def invoice(state: State, obj: dict[str, Any]) -> dict[str, Any]:
    if obj.get("deleted"):
        return {"id": obj["id"], "object": "invoice", "deleted": True}
    rendered = public(obj)
    rendered.update(totals(state, obj))
    line_ids = state.invoice_lines.get(obj["id"], [])
    rendered["lines"] = {
        "object": "list",
        "data": [line_item(state, line_id) for line_id in line_ids[:LINES_INLINE]],
        "has_more": len(line_ids) > LINES_INLINE,
        "total_count": len(line_ids),
        "url": f"/v1/invoices/{obj['id']}/lines",
    }
    return rendered
