"""What each endpoint does to the emulated account: customers, invoice items, invoices, the
billing portal, events and webhook endpoints. Each operation returns the response object and
emits the events Stripe emits."""

from __future__ import annotations

import secrets
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from billsync.emulator import discounts, render
from billsync.emulator.errors import StripeError, invalid, not_found
from billsync.emulator.metadata import merge_metadata
from billsync.emulator.state import State, created_filter, new_id, paginate

MAX_INVOICE_ITEMS = 250
SUCCEEDING_METHODS = {"pm_card_visa", "pm_card_mastercard", "pm_card_amex", "pm_card_us"}
DECLINING_METHODS = {
    "pm_card_chargeDeclined": "generic_decline",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
    "pm_card_chargeDeclinedExpiredCard": "expired_card",
}


class Context:
    """Who is asking: the mode of the API key and the request, for events' ``request``."""

    def __init__(self, livemode: bool, request_id: str, idempotency_key: str | None) -> None:
        self.livemode = livemode
        self.request = {"id": request_id, "idempotency_key": idempotency_key}


def _changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``previous_attributes``: the old values of top-level fields that changed."""
    return {
        key: before.get(key)
        for key in after
        if not key.startswith("_") and before.get(key) != after.get(key)
    }


# --- customers -------------------------------------------------------------------------


def _legacy_coupon(state: State, ctx: Context, params: dict[str, Any]) -> str | None:
    """The ``coupon`` a request with an older ``Stripe-Version`` may give (see
    ``discounts``), checked before anything changes."""
    coupon = params.get("coupon")
    if coupon is not None:
        discounts.redeemable(state, ctx, coupon, "coupon")
    return coupon


def create_customer(state: State, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    coupon = _legacy_coupon(state, ctx, params)
    settings = params.get("invoice_settings", {})
    # business_name and individual_name are absent until set: Stripe's description types them
    # as strings, never null.
    customer = {
        "id": new_id("cus"),
        "object": "customer",
        "address": None,
        "balance": params.get("balance", 0),
        "created": state.clock.now(),
        "currency": None,
        "customer_account": None,
        "default_source": None,
        "delinquent": False,
        "description": params.get("description"),
        "discount": None,
        "email": params.get("email"),
        "invoice_prefix": params.get("invoice_prefix") or secrets.token_hex(4).upper(),
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": settings.get("default_payment_method"),
            "footer": settings.get("footer"),
            "rendering_options": None,
        },
        "livemode": ctx.livemode,
        "metadata": merge_metadata({}, params.get("metadata", {})),
        "name": params.get("name"),
        "next_invoice_sequence": params.get("next_invoice_sequence", 1),
        "phone": params.get("phone"),
        "preferred_locales": params.get("preferred_locales", []),
        "shipping": None,
        "tax_exempt": params.get("tax_exempt", "none"),
        "test_clock": None,
        "_sequence": state.sequence(),
    }
    state.customers[customer["id"]] = customer
    # Created with its discount: the customer's event, then the discount's.
    discounted = None if coupon is None else discounts.give_customer(state, ctx, customer, coupon)
    state.emit(
        "customer.created", render.customer(customer), livemode=ctx.livemode, request=ctx.request
    )
    if discounted is not None:
        state.emit(*discounted, livemode=ctx.livemode, request=ctx.request)
    return render.customer(customer)


def retrieve_customer(state: State, ctx: Context, customer_id: str) -> dict[str, Any]:
    customer = state.customers.get(customer_id)
    if customer is None or customer["livemode"] != ctx.livemode:
        raise not_found("customer", customer_id)
    return render.customer(customer)


def update_customer(
    state: State, ctx: Context, customer_id: str, params: dict[str, Any]
) -> dict[str, Any]:
    customer = state.customer(customer_id, ctx.livemode, "id")
    coupon = _legacy_coupon(state, ctx, params)
    before = render.customer(customer)
    for key in (
        "name",
        "email",
        "description",
        "phone",
        "balance",
        "tax_exempt",
        "preferred_locales",
        "invoice_prefix",
        "next_invoice_sequence",
    ):
        if key in params:
            customer[key] = params[key] if params[key] != "" else None
    if "metadata" in params:
        customer["metadata"] = merge_metadata(customer["metadata"], params["metadata"])
    if "invoice_settings" in params:
        settings = params["invoice_settings"]
        for key in ("default_payment_method", "footer"):
            if key in settings:
                customer["invoice_settings"][key] = settings[key] or None
    if coupon is not None:
        event, discount = discounts.give_customer(state, ctx, customer, coupon)
        state.emit(event, discount, livemode=ctx.livemode, request=ctx.request)
    after = render.customer(customer)
    changed = _changes(before, after)
    if changed:
        state.emit(
            "customer.updated", after, livemode=ctx.livemode, request=ctx.request, previous=changed
        )
    return after


def delete_customer(state: State, ctx: Context, customer_id: str) -> dict[str, Any]:
    customer = state.customer(customer_id, ctx.livemode, "id")
    snapshot = render.customer(customer)
    customer["deleted"] = True
    state.emit("customer.deleted", snapshot, livemode=ctx.livemode, request=ctx.request)
    return {"id": customer_id, "object": "customer", "deleted": True}


def list_customers(state: State, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    created = created_filter(params)
    found = [
        c
        for c in state.customers.values()
        if c["livemode"] == ctx.livemode
        and not c.get("deleted")
        and created(c["created"])
        and ("email" not in params or c["email"] == params["email"])
    ]
    return paginate(found, params, "/v1/customers", render.customer)


# --- invoice items ---------------------------------------------------------------------


def _item_amount(params: dict[str, Any], param_prefix: str = "") -> tuple[int, int, str, Any]:
    """(amount, quantity, quantity_decimal, pricing) from an item's parameters."""
    quantity_decimal = params.get("quantity_decimal")
    quantity = params.get("quantity")
    if quantity_decimal is None:
        quantity_decimal = Decimal(quantity if quantity is not None else 1)
    price_data = params.get("price_data")
    unit = params.get("unit_amount_decimal")
    if price_data is not None:
        unit = price_data.get("unit_amount_decimal")
        if unit is None and "unit_amount" in price_data:
            unit = Decimal(price_data["unit_amount"])
    if "amount" in params:
        if unit is not None:
            raise invalid(
                "You may only specify one of these parameters: amount, price_data, "
                "unit_amount_decimal.",
                param=f"{param_prefix}amount",
                code="parameters_exclusive",
            )
        amount = params["amount"]
        pricing = None
    elif unit is not None:
        amount = int((Decimal(unit) * quantity_decimal).to_integral_value(rounding=ROUND_HALF_UP))
        pricing = {
            "type": "price_details",
            "price_details": {
                "price": new_id("price"),
                "product": (price_data or {}).get("product", new_id("prod")),
            },
            "unit_amount_decimal": str(unit),
        }
    else:
        raise invalid(
            "You must specify either amount, price_data or pricing.", param=f"{param_prefix}amount"
        )
    if abs(amount) > MAX_AMOUNT:
        # Stripe takes amounts of at most 8 digits in the currency's minor unit.
        raise invalid(
            f"Amount must be no more than {MAX_AMOUNT:,} in the currency's smallest unit.",
            param=f"{param_prefix}amount",
            code="amount_too_large",
        )
    return amount, int(quantity_decimal), format(quantity_decimal, "f"), pricing


MAX_AMOUNT = 99_999_999


def _new_item(  # noqa: PLR0917 - internal helper shared by three endpoints
    state: State,
    ctx: Context,
    customer: dict[str, Any],
    currency: str,
    params: dict[str, Any],
    invoice: dict[str, Any] | None,
    param_prefix: str = "",
) -> dict[str, Any]:
    amount, quantity, quantity_decimal, pricing = _item_amount(params, param_prefix)
    now = state.clock.now()
    period = params.get("period") or {"start": now, "end": now}
    item = {
        "id": new_id("ii"),
        "object": "invoiceitem",
        "amount": amount,
        "currency": currency,
        "customer": customer["id"],
        "customer_account": None,
        "date": now,
        "description": params.get("description"),
        "discountable": params.get("discountable", amount >= 0),
        "discounts": [],
        "invoice": None,
        "livemode": ctx.livemode,
        "metadata": merge_metadata({}, params.get("metadata", {})),
        "net_amount": amount,
        "parent": None,
        "period": {"start": period["start"], "end": period["end"]},
        "pricing": pricing,
        "proration": False,
        "proration_details": {"credited_items": None, "discount_amounts": []},
        "quantity": quantity,
        "quantity_decimal": quantity_decimal,
        "tax_rates": [],
        "test_clock": None,
        "_sequence": state.sequence(),
    }
    state.invoice_items[item["id"]] = item
    if invoice is not None:
        _attach(state, invoice, item)
    state.emit(
        "invoiceitem.created", render.invoice_item(item), livemode=ctx.livemode, request=ctx.request
    )
    return item


def _attach(state: State, invoice: dict[str, Any], item: dict[str, Any]) -> str:
    lines = state.invoice_lines.setdefault(invoice["id"], [])
    if len(lines) >= MAX_INVOICE_ITEMS:
        raise invalid(
            f"An invoice can contain at most {MAX_INVOICE_ITEMS} invoice items.",
            param="invoice",
        )
    if item["currency"] != invoice["currency"]:
        raise invalid(
            f"The currency of the invoice item ({item['currency']}) must match the invoice's "
            f"({invoice['currency']}).",
            param="currency",
        )
    line_id = new_id("il")
    lines.append(line_id)
    state.line_items[line_id] = (invoice["id"], item["id"])
    item["invoice"] = invoice["id"]
    item["_line"] = line_id
    return line_id


def _detach(state: State, item: dict[str, Any]) -> None:
    line_id = item.pop("_line", None)
    if line_id is not None:
        invoice_id, _ = state.line_items.pop(line_id)
        state.invoice_lines[invoice_id].remove(line_id)
    item["invoice"] = None


def invoice_state(state: State, invoice: dict[str, Any]) -> dict[str, Any]:
    """The fields a line edit can change: what ``previous_attributes`` reports."""
    return {**render.totals(state, invoice), "metadata": dict(invoice["metadata"] or {})}


def _invoice_updated(
    state: State, ctx: Context, invoice: dict[str, Any], before: dict[str, Any] | None
) -> dict[str, Any]:
    """Emit ``invoice.updated`` (with the changed fields when ``before`` is known, from
    :func:`invoice_state`); returns the rendered invoice."""
    after = render.invoice(state, invoice)
    previous = None if before is None else {k: v for k, v in before.items() if after[k] != v}
    state.emit(
        "invoice.updated", after, livemode=ctx.livemode, request=ctx.request, previous=previous
    )
    return after


def _require_draft(invoice: dict[str, Any], what: str) -> None:
    if invoice["status"] != "draft":
        raise invalid(
            f"You can only {what} on draft invoices; invoice {invoice['id']} is "
            f"{invoice['status']}.",
            param="invoice",
        )


def create_invoice_item(state: State, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    if "customer" not in params:
        raise StripeError(
            400, "Missing required param: customer.", code="parameter_missing", param="customer"
        )
    customer = state.customer(params["customer"], ctx.livemode)
    invoice = None
    if "invoice" in params:
        invoice = state.invoice(params["invoice"], ctx.livemode, in_body=True)
        _require_draft(invoice, "add invoice items")
        if invoice["customer"] != customer["id"]:
            raise invalid("The invoice belongs to another customer.", param="invoice")
    currency = params.get("currency") or (invoice or {}).get("currency") or customer["currency"]
    if currency is None:
        raise StripeError(
            400, "Missing required param: currency.", code="parameter_missing", param="currency"
        )
    if invoice is not None and len(state.invoice_lines.get(invoice["id"], [])) >= MAX_INVOICE_ITEMS:
        raise invalid(
            f"An invoice can contain at most {MAX_INVOICE_ITEMS} invoice items.", param="invoice"
        )
    item = _new_item(state, ctx, customer, currency.lower(), params, invoice)
    if invoice is not None:
        _invoice_updated(state, ctx, invoice, None)
    return render.invoice_item(item)


def retrieve_invoice_item(state: State, ctx: Context, item_id: str) -> dict[str, Any]:
    return render.invoice_item(state.invoice_item(item_id, ctx.livemode))


def _editable_item(state: State, ctx: Context, item_id: str) -> dict[str, Any]:
    item = state.invoice_item(item_id, ctx.livemode)
    if item["invoice"] is not None and state.invoices[item["invoice"]]["status"] != "draft":
        raise invalid(
            "You can only update or delete invoice items that are pending or on a draft invoice.",
            param="id",
        )
    return item


def _apply_item_update(
    item: dict[str, Any], params: dict[str, Any], param_prefix: str = ""
) -> None:
    if {"amount", "unit_amount_decimal", "price_data", "quantity", "quantity_decimal"} & set(
        params
    ):
        merged = {"quantity_decimal": Decimal(item["quantity_decimal"]), **params}
        if not {"amount", "unit_amount_decimal", "price_data"} & set(params):
            if item["pricing"] is None:
                merged["amount"] = item["amount"]
            else:
                merged["unit_amount_decimal"] = Decimal(item["pricing"]["unit_amount_decimal"])
        amount, quantity, quantity_decimal, pricing = _item_amount(merged, param_prefix)
        item.update(
            amount=amount,
            net_amount=amount,
            quantity=quantity,
            quantity_decimal=quantity_decimal,
            pricing=pricing,
        )
    for key in ("description", "discountable"):
        if key in params:
            item[key] = params[key]
    if "period" in params:
        item["period"] = {"start": params["period"]["start"], "end": params["period"]["end"]}
    if "metadata" in params:
        item["metadata"] = merge_metadata(item["metadata"], params["metadata"])


def update_invoice_item(
    state: State, ctx: Context, item_id: str, params: dict[str, Any]
) -> dict[str, Any]:
    item = _editable_item(state, ctx, item_id)
    _apply_item_update(item, params)
    if item["invoice"] is not None:
        _invoice_updated(state, ctx, state.invoices[item["invoice"]], None)
    return render.invoice_item(item)


def _delete_item(state: State, ctx: Context, item: dict[str, Any]) -> None:
    snapshot = render.invoice_item(item)
    _detach(state, item)
    item["deleted"] = True
    state.emit("invoiceitem.deleted", snapshot, livemode=ctx.livemode, request=ctx.request)


def delete_invoice_item(state: State, ctx: Context, item_id: str) -> dict[str, Any]:
    item = _editable_item(state, ctx, item_id)
    invoice_id = item["invoice"]
    _delete_item(state, ctx, item)
    if invoice_id is not None:
        _invoice_updated(state, ctx, state.invoices[invoice_id], None)
    return {"id": item_id, "object": "invoiceitem", "deleted": True}


def list_invoice_items(state: State, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    created = created_filter(params)
    found = [
        item
        for item in state.invoice_items.values()
        if item["livemode"] == ctx.livemode
        and not item.get("deleted")
        and created(item["date"])
        and ("customer" not in params or item["customer"] == params["customer"])
        and ("invoice" not in params or item["invoice"] == params["invoice"])
        and ("pending" not in params or (item["invoice"] is None) == params["pending"])
    ]
    return paginate(found, params, "/v1/invoiceitems", render.invoice_item)
