"""Invoices: drafts, bulk line edits, finalization, payment, void, uncollectible, previews."""

from __future__ import annotations

from typing import Any

from billsync.emulator import balances, discounts, render
from billsync.emulator.billing import (
    DECLINING_METHODS,
    MAX_INVOICE_ITEMS,
    SUCCEEDING_METHODS,
    Context,
    _apply_item_update,
    _attach,
    _changes,
    _delete_item,
    _detach,
    _invoice_updated,
    _new_item,
    _require_draft,
    invoice_state,
)
from billsync.emulator.errors import StripeError, invalid, not_found
from billsync.emulator.metadata import merge_metadata
from billsync.emulator.state import State, created_filter, new_id, paginate

UPDATABLE_WHEN_FINAL = {"metadata", "description", "footer", "auto_advance", "expand"}


# "You can pass up to 4 custom fields"; "The name of the custom field. This may be up to 40
# characters"; "The value of the custom field. This may be up to 140 characters"
# (docs.stripe.com/api/invoices/create#create_invoice-custom_fields).
MAX_CUSTOM_FIELDS = 4
MAX_CUSTOM_FIELD_NAME = 40
MAX_CUSTOM_FIELD_VALUE = 140


def custom_fields(raw: object) -> list[dict[str, str]] | None:
    """An invoice's ``custom_fields`` as Stripe checks them ("" clears them)."""
    if raw in ("", None):
        return None
    fields = list(raw.values()) if isinstance(raw, dict) else raw
    if not isinstance(fields, list) or len(fields) > MAX_CUSTOM_FIELDS:
        raise invalid(
            f"You can pass at most {MAX_CUSTOM_FIELDS} custom fields.", param="custom_fields"
        )
    found = []
    for index, field in enumerate(fields):
        name = field.get("name") if isinstance(field, dict) else None
        value = field.get("value") if isinstance(field, dict) else None
        if not isinstance(name, str) or not isinstance(value, str) or not name or not value:
            raise invalid(
                "Each custom field needs a name and a value.", param=f"custom_fields[{index}]"
            )
        if len(name) > MAX_CUSTOM_FIELD_NAME:
            raise invalid(
                f"Invalid custom_fields[{index}][name]: must be at most "
                f"{MAX_CUSTOM_FIELD_NAME} characters",
                param=f"custom_fields[{index}][name]",
            )
        if len(value) > MAX_CUSTOM_FIELD_VALUE:
            raise invalid(
                f"Invalid custom_fields[{index}][value]: must be at most "
                f"{MAX_CUSTOM_FIELD_VALUE} characters",
                param=f"custom_fields[{index}][value]",
            )
        found.append({"name": name, "value": value})
    return found


def create_invoice(state: State, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    if "customer" not in params:
        raise StripeError(
            400, "Missing required param: customer.", code="parameter_missing", param="customer"
        )
    customer = state.customer(params["customer"], ctx.livemode)
    method = params.get("collection_method", "charge_automatically")
    if method == "send_invoice" and "days_until_due" not in params and "due_date" not in params:
        raise invalid(
            "Invoices with collection_method=send_invoice need days_until_due or due_date.",
            param="days_until_due",
        )
    now = state.clock.now()
    currency = (params.get("currency") or customer["currency"] or "usd").lower()
    invoice: dict[str, Any] = {
        "id": new_id("in"),
        "object": "invoice",
        "account_country": "US",
        "account_name": "billsync emulator",
        "account_tax_ids": None,
        "amount_overpaid": 0,
        "amount_paid_off_stripe": 0,
        "amount_shipping": 0,
        "application": None,
        "attempt_count": 0,
        "attempted": False,
        "auto_advance": params.get("auto_advance", False),
        "automatic_tax": {
            "disabled_reason": None,
            "enabled": False,
            "liability": None,
            "provider": None,
            "status": None,
        },
        "automatically_finalizes_at": None,
        "billing_reason": "manual",
        "collection_method": method,
        "confirmation_secret": None,
        "created": now,
        "currency": currency,
        "custom_fields": custom_fields(params.get("custom_fields")),
        "customer": customer["id"],
        "customer_account": None,
        "customer_address": None,
        "customer_email": customer["email"],
        "customer_name": customer["name"],
        "customer_phone": customer["phone"],
        "customer_shipping": None,
        "customer_tax_exempt": customer["tax_exempt"],
        "customer_tax_ids": [],
        "default_payment_method": params.get("default_payment_method"),
        "default_source": None,
        "default_tax_rates": [],
        "description": params.get("description"),
        "discounts": [],
        "due_date": params.get("due_date")
        or (now + 86400 * params["days_until_due"] if "days_until_due" in params else None),
        "effective_at": None,
        "ending_balance": None,
        "footer": params.get("footer"),
        "from_invoice": None,
        "hosted_invoice_url": None,
        "invoice_pdf": None,
        "issuer": {"type": "self"},  # issuer.account only when type is "account"
        "last_finalization_error": None,
        "latest_revision": None,
        "livemode": ctx.livemode,
        "metadata": merge_metadata({}, params.get("metadata", {})),
        "next_payment_attempt": None,
        "number": None,
        "on_behalf_of": None,
        "parent": None,
        "payment_settings": {
            "default_mandate": None,
            "payment_method_options": None,
            "payment_method_types": None,
        },
        "period_end": now,
        "period_start": now,
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "receipt_number": None,
        "rendering": None,
        "shipping_cost": None,
        "shipping_details": None,
        "starting_balance": 0,
        "statement_descriptor": None,
        "status": "draft",
        "status_transitions": {
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        "test_clock": None,  # threshold_reason: only on threshold invoices, never null
        "total_discount_amounts": [],
        "total_pretax_credit_amounts": [],
        "total_taxes": [],
        "webhooks_delivered_at": None,
        "_amount_paid": 0,
        "_sequence": state.sequence(),
    }
    if invoice["auto_advance"]:
        invoice["automatically_finalizes_at"] = now + state.config.auto_advance_delay
    # Not given: the customer's discount; "": none. stripe-python sends nothing at all for
    # `discounts=[]`, so an empty list inherits the customer's discount, on Stripe as here.
    if "discounts" in params:
        invoice["discounts"] = discounts.resolve(state, ctx, invoice, params["discounts"])
    else:
        invoice["discounts"] = discounts.inherited(customer, currency, state)
    state.invoices[invoice["id"]] = invoice
    state.invoice_lines[invoice["id"]] = []
    if params.get("pending_invoice_items_behavior", "exclude") == "include":
        pending = [
            item
            for item in state.invoice_items.values()
            if item["customer"] == customer["id"]
            and item["invoice"] is None
            and not item.get("deleted")
            and item["currency"] == currency
        ]
        for item in sorted(pending, key=lambda i: i["_sequence"])[:MAX_INVOICE_ITEMS]:
            _attach(state, invoice, item)
    rendered = render.invoice(state, invoice)
    state.emit("invoice.created", rendered, livemode=ctx.livemode, request=ctx.request)
    return rendered


def retrieve_invoice(state: State, ctx: Context, invoice_id: str) -> dict[str, Any]:
    return render.invoice(state, state.invoice(invoice_id, ctx.livemode, "id"))


def update_invoice(
    state: State, ctx: Context, invoice_id: str, params: dict[str, Any]
) -> dict[str, Any]:
    invoice = state.invoice(invoice_id, ctx.livemode, "id")
    if invoice["status"] != "draft":
        refused = sorted(set(params) - UPDATABLE_WHEN_FINAL)
        if refused:
            raise invalid(
                f"Finalized invoices can't be updated in this way: {', '.join(refused)}",
                param=refused[0],
            )
    before = render.invoice(state, invoice)
    if "discounts" in params:  # "" removes them all
        invoice["discounts"] = discounts.resolve(state, ctx, invoice, params["discounts"])
    for key in (
        "description",
        "footer",
        "auto_advance",
        "collection_method",
        "default_payment_method",
        "due_date",
    ):
        if key in params:
            invoice[key] = params[key] if params[key] != "" else None
    if "custom_fields" in params:
        invoice["custom_fields"] = custom_fields(params["custom_fields"])
    if "days_until_due" in params:
        invoice["due_date"] = invoice["created"] + 86400 * params["days_until_due"]
    if "metadata" in params:
        invoice["metadata"] = merge_metadata(invoice["metadata"], params["metadata"])
    if "auto_advance" in params and invoice["status"] == "draft":
        invoice["automatically_finalizes_at"] = (
            state.clock.now() + state.config.auto_advance_delay if params["auto_advance"] else None
        )
    after = render.invoice(state, invoice)
    if _changes(before, after):
        state.emit(
            "invoice.updated",
            after,
            livemode=ctx.livemode,
            request=ctx.request,
            previous=_changes(before, after),
        )
    return after


def delete_invoice(state: State, ctx: Context, invoice_id: str) -> dict[str, Any]:
    invoice = state.invoice(invoice_id, ctx.livemode, "id")
    if invoice["status"] != "draft":
        raise invalid("You can only delete draft invoices.", param="id")
    snapshot = render.invoice(state, invoice)
    for line_id in list(state.invoice_lines.get(invoice_id, [])):
        _delete_item(state, ctx, state.invoice_items[state.line_items[line_id][1]])
    invoice["deleted"] = True
    state.emit("invoice.deleted", snapshot, livemode=ctx.livemode, request=ctx.request)
    return {"id": invoice_id, "object": "invoice", "deleted": True}


def list_invoices(state: State, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    created = created_filter(params)
    found = [
        invoice
        for invoice in state.invoices.values()
        if invoice["livemode"] == ctx.livemode
        and not invoice.get("deleted")
        and created(invoice["created"])
        and ("customer" not in params or invoice["customer"] == params["customer"])
        and ("status" not in params or invoice["status"] == params["status"])
        and (
            "collection_method" not in params
            or invoice["collection_method"] == params["collection_method"]
        )
    ]
    return paginate(found, params, "/v1/invoices", lambda i: render.invoice(state, i))


def list_lines(
    state: State, ctx: Context, invoice_id: str, params: dict[str, Any]
) -> dict[str, Any]:
    invoice = state.invoice(invoice_id, ctx.livemode, "invoice")
    discounted = render.breakdown(state, invoice)
    rendered = [
        {**render.line_item(state, line_id, discounted), "created": 0, "_sequence": -index}
        for index, line_id in enumerate(state.invoice_lines.get(invoice["id"], []))
    ]  # lines list in invoice order: the sort key keeps it
    return paginate(rendered, params, f"/v1/invoices/{invoice_id}/lines", _strip)


def _strip(line: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in line.items() if key not in ("created", "_sequence")}


# --- bulk line edits -------------------------------------------------------------------


def add_lines(
    state: State, ctx: Context, invoice_id: str, params: dict[str, Any]
) -> dict[str, Any]:
    invoice = state.invoice(invoice_id, ctx.livemode, "invoice")
    _require_draft(invoice, "add lines")
    lines = params["lines"]
    if len(state.invoice_lines[invoice_id]) + len(lines) > MAX_INVOICE_ITEMS:
        raise invalid(
            f"An invoice can contain at most {MAX_INVOICE_ITEMS} invoice items; it has "
            f"{len(state.invoice_lines[invoice_id])} and {len(lines)} were added.",
            param="lines",
        )
    before = invoice_state(state, invoice)
    customer = state.customers[invoice["customer"]]
    for index, line in enumerate(lines):
        prefix = f"lines[{index}]["
        if "invoice_item" in line:
            item = state.invoice_item(
                line["invoice_item"], ctx.livemode, f"lines[{index}][invoice_item]", in_body=True
            )
            if item["invoice"] is not None or item["customer"] != invoice["customer"]:
                raise invalid(
                    f"Invoice item {item['id']} is not a pending item of this customer.",
                    param=f"lines[{index}][invoice_item]",
                )
            _attach(state, invoice, item)
            rest = {k: v for k, v in line.items() if k != "invoice_item"}
            _apply_item_update(item, rest, prefix)
        else:
            _new_item(state, ctx, customer, invoice["currency"], line, invoice, prefix)
    if "invoice_metadata" in params:
        invoice["metadata"] = merge_metadata(invoice["metadata"], params["invoice_metadata"])
    return _invoice_updated(state, ctx, invoice, before)


def _line_of(state: State, invoice_id: str, line_id: str, index: int) -> dict[str, Any]:
    found = state.line_items.get(line_id)
    if found is None or found[0] != invoice_id:
        raise StripeError(  # an id in the body: 400, as Stripe answers (not 404)
            400,
            f"No such line item: '{line_id}' on invoice {invoice_id}",
            code="resource_missing",
            param=f"lines[{index}][id]",
        )
    return state.invoice_items[found[1]]


def update_lines(
    state: State, ctx: Context, invoice_id: str, params: dict[str, Any]
) -> dict[str, Any]:
    invoice = state.invoice(invoice_id, ctx.livemode, "invoice")
    _require_draft(invoice, "update lines")
    before = invoice_state(state, invoice)
    items = [_line_of(state, invoice_id, line["id"], i) for i, line in enumerate(params["lines"])]
    for index, (item, line) in enumerate(zip(items, params["lines"], strict=True)):
        _apply_item_update(item, {k: v for k, v in line.items() if k != "id"}, f"lines[{index}][")
    if "invoice_metadata" in params:
        invoice["metadata"] = merge_metadata(invoice["metadata"], params["invoice_metadata"])
    return _invoice_updated(state, ctx, invoice, before)


def remove_lines(
    state: State, ctx: Context, invoice_id: str, params: dict[str, Any]
) -> dict[str, Any]:
    invoice = state.invoice(invoice_id, ctx.livemode, "invoice")
    _require_draft(invoice, "remove lines")
    before = invoice_state(state, invoice)
    items = [_line_of(state, invoice_id, line["id"], i) for i, line in enumerate(params["lines"])]
    for item, line in zip(items, params["lines"], strict=True):
        if line["behavior"] == "delete":
            _delete_item(state, ctx, item)
        else:
            _detach(state, item)
    if "invoice_metadata" in params:
        invoice["metadata"] = merge_metadata(invoice["metadata"], params["invoice_metadata"])
    return _invoice_updated(state, ctx, invoice, before)


# --- lifecycle -------------------------------------------------------------------------


def _finalize(state: State, ctx: Context, invoice: dict[str, Any]) -> None:
    now = state.clock.now()
    customer = state.customers[invoice["customer"]]
    invoice["number"] = f"{customer['invoice_prefix']}-{customer['next_invoice_sequence']:04d}"
    customer["next_invoice_sequence"] += 1
    balances.settle_at_finalization(state, ctx, invoice)
    base = state.config.public_url.rstrip("/")
    invoice["status"] = "open"
    invoice["hosted_invoice_url"] = f"{base}/_emulator/invoices/{invoice['id']}"
    invoice["invoice_pdf"] = f"{base}/_emulator/invoices/{invoice['id']}/pdf"
    invoice["status_transitions"]["finalized_at"] = now
    invoice["effective_at"] = now
    invoice["automatically_finalizes_at"] = None
    if invoice["collection_method"] == "charge_automatically" and invoice["auto_advance"]:
        # Collection is Stripe's, afterwards and asynchronously: finalize answers "open".
        invoice["next_payment_attempt"] = now + state.config.collection_delay
    state.emit(
        "invoice.finalized",
        render.invoice(state, invoice),
        livemode=ctx.livemode,
        request=ctx.request,
    )
    # Nothing to charge (a zero total, a balance that covers it, or an amount under the
    # minimum charge carried to the balance): paid at once.
    if render.totals(state, invoice)["amount_due"] == 0:
        _mark_paid(state, ctx, invoice)


def _mark_paid(state: State, ctx: Context, invoice: dict[str, Any]) -> None:
    due = render.totals(state, invoice)["amount_due"]
    invoice["_amount_paid"] = due
    invoice["status"] = "paid"
    invoice["next_payment_attempt"] = None
    invoice["status_transitions"]["paid_at"] = state.clock.now()
    rendered = render.invoice(state, invoice)
    state.emit("invoice.paid", rendered, livemode=ctx.livemode, request=ctx.request)
    state.emit("invoice.payment_succeeded", rendered, livemode=ctx.livemode, request=ctx.request)


def _charge(
    state: State, ctx: Context, invoice: dict[str, Any], method: str | None
) -> StripeError | None:
    """One payment attempt; returns the card error when it is declined."""
    customer = state.customers[invoice["customer"]]
    method = (
        method
        or invoice["default_payment_method"]
        or customer["invoice_settings"]["default_payment_method"]
    )
    if method is None:
        raise invalid(
            "This customer has no attached payment source or default payment method.",
            param="payment_method",
        )
    if method not in SUCCEEDING_METHODS and method not in DECLINING_METHODS:
        raise not_found("PaymentMethod", method, "payment_method", in_body=True)
    invoice["attempt_count"] += 1
    invoice["attempted"] = True
    if method in SUCCEEDING_METHODS:
        _mark_paid(state, ctx, invoice)
        return None
    decline = DECLINING_METHODS[method]
    invoice["next_payment_attempt"] = (
        state.clock.now() + 3 * 86400 if invoice["auto_advance"] else None
    )
    state.emit(
        "invoice.payment_failed",
        render.invoice(state, invoice),
        livemode=ctx.livemode,
        request=ctx.request,
    )
    return StripeError(
        402,
        "Your card was declined.",
        type="card_error",
        code="card_declined",
        extra={"decline_code": decline},
    )


def finalize_invoice(
    state: State, ctx: Context, invoice_id: str, params: dict[str, Any]
) -> dict[str, Any]:
    invoice = state.invoice(invoice_id, ctx.livemode, "invoice")
    if invoice["status"] != "draft":
        raise invalid(
            f"This invoice is already finalized (status {invoice['status']}).", param="invoice"
        )
    if "auto_advance" in params:
        invoice["auto_advance"] = params["auto_advance"]
    # The answer is the invoice open (or paid at $0): payment is attempted afterwards,
    # asynchronously (invoice.paid / invoice.payment_failed; ``collect_due``), as Stripe does
    # (docs.stripe.com/invoicing/integration/workflow-transitions).
    _finalize(state, ctx, invoice)
    return render.invoice(state, invoice)


def pay_invoice(
    state: State, ctx: Context, invoice_id: str, params: dict[str, Any]
) -> dict[str, Any]:
    invoice = state.invoice(invoice_id, ctx.livemode, "invoice")
    if invoice["status"] == "paid":
        raise invalid("Invoice is already paid", param="invoice")
    if invoice["status"] not in ("open", "uncollectible"):  # Stripe collects uncollectible ones
        raise invalid(
            f"You can only pay an open or uncollectible invoice; this one is {invoice['status']}.",
            param="invoice",
        )
    if params.get("paid_out_of_band"):
        _mark_paid(state, ctx, invoice)
        return render.invoice(state, invoice)
    declined = _charge(state, ctx, invoice, params.get("payment_method"))
    if declined is not None:
        raise declined
    return render.invoice(state, invoice)


def _close(
    state: State, ctx: Context, invoice: dict[str, Any], *, status: str, transition: str, event: str
) -> dict[str, Any]:
    """An open invoice leaves collection: void or uncollectible."""
    invoice["status"] = status
    invoice["next_payment_attempt"] = None
    invoice["status_transitions"][transition] = state.clock.now()
    if status == "void":
        balances.give_back(state, ctx, invoice)
    rendered = render.invoice(state, invoice)
    state.emit(event, rendered, livemode=ctx.livemode, request=ctx.request)
    return rendered


def void_invoice(state: State, ctx: Context, invoice_id: str) -> dict[str, Any]:
    invoice = state.invoice(invoice_id, ctx.livemode, "invoice")
    if invoice["status"] not in ("open", "uncollectible"):
        raise invalid(
            f"You can only void an open or uncollectible invoice; this one is {invoice['status']}."
        )
    return _close(
        state, ctx, invoice, status="void", transition="voided_at", event="invoice.voided"
    )


def mark_uncollectible(state: State, ctx: Context, invoice_id: str) -> dict[str, Any]:
    invoice = state.invoice(invoice_id, ctx.livemode, "invoice")
    if invoice["status"] != "open":
        raise invalid(
            f"You can only mark an open invoice uncollectible; this one is {invoice['status']}."
        )
    return _close(
        state,
        ctx,
        invoice,
        status="uncollectible",
        transition="marked_uncollectible_at",
        event="invoice.marked_uncollectible",
    )


def create_preview(state: State, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """The invoice the customer's pending items would make; nothing is stored."""
    if "customer" not in params:
        raise StripeError(
            400, "Missing required param: customer.", code="parameter_missing", param="customer"
        )
    customer = state.customer(params["customer"], ctx.livemode)
    pending = [
        item
        for item in state.invoice_items.values()
        if item["customer"] == customer["id"]
        and item["invoice"] is None
        and not item.get("deleted")
    ]
    currency = (
        params.get("currency")
        or (pending[0]["currency"] if pending else None)
        or customer["currency"]
        or "usd"
    )
    saved_invoices, saved_lines = dict(state.invoices), dict(state.invoice_lines)
    saved_line_items = dict(state.line_items)
    outbox, events, order = list(state.outbox), dict(state.events), list(state.event_order)
    items = {k: dict(v) for k, v in state.invoice_items.items()}
    coupons = {k: dict(v) for k, v in state.coupons.items()}
    saved_discounts = dict(state.discounts)
    wanted: dict[str, Any] = {"customer": customer["id"], "currency": currency}
    if "discounts" in params:
        wanted["discounts"] = params["discounts"]
    try:
        draft = create_invoice(state, ctx, wanted)
        invoice = state.invoices[draft["id"]]
        for item in sorted(pending, key=lambda i: i["_sequence"]):
            if item["currency"] == currency:
                _attach(state, invoice, item)
        for index, extra in enumerate(params.get("invoice_items", [])):
            _new_item(state, ctx, customer, currency, extra, invoice, f"invoice_items[{index}][")
        preview = render.invoice(state, invoice)
    finally:
        state.invoices, state.invoice_lines = saved_invoices, saved_lines
        state.line_items = saved_line_items
        state.invoice_items = items
        state.coupons, state.discounts = coupons, saved_discounts
        state.outbox, state.events, state.event_order = outbox, events, order
    preview["id"] = f"upcoming_{preview['id']}"
    preview["lines"]["url"] = "/v1/invoices/create_preview/lines"
    return preview


# Automatic collection: a failed attempt is retried this long after, at most this many times
# in all (then the invoice stays open, past due: the default of Stripe's retry settings).
RETRY_AFTER = 3 * 86400
MAX_ATTEMPTS = 4


def advance_due_drafts(state: State) -> None:
    """What Stripe does on its own once the time comes on the emulator clock: customers'
    discounts reach their end, drafts with ``auto_advance`` finalize (or fail to:
    ``invoice.finalization_failed``), and open invoices collected automatically get their
    payment attempts."""
    discounts.expire_due(state)
    now = state.clock.now()
    for invoice in list(state.invoices.values()):
        due = invoice.get("automatically_finalizes_at")
        if (
            invoice["status"] == "draft"
            and not invoice.get("deleted")
            and due is not None
            and due <= now
        ):
            ctx = Context(invoice["livemode"], new_id("req"), None)
            if state.customers[invoice["customer"]].get("deleted"):
                _finalization_failed(state, ctx, invoice)
            else:
                finalize_invoice(state, ctx, invoice["id"], {})
        attempt = invoice.get("next_payment_attempt")
        if invoice["status"] == "open" and attempt is not None and attempt <= now:
            _collect(state, Context(invoice["livemode"], new_id("req"), None), invoice)


def _finalization_failed(state: State, ctx: Context, invoice: dict[str, Any]) -> None:
    invoice["automatically_finalizes_at"] = None
    invoice["last_finalization_error"] = {
        "type": "invalid_request_error",
        "message": "The invoice's customer has been deleted.",
    }
    state.emit(
        "invoice.finalization_failed",
        render.invoice(state, invoice),
        livemode=ctx.livemode,
        request=ctx.request,
    )


def _collect(state: State, ctx: Context, invoice: dict[str, Any]) -> None:
    """One automatic payment attempt: the default payment method charged, or the attempt
    failed (declined, or no payment method at all) and retried later."""
    customer = state.customers[invoice["customer"]]
    method = (
        invoice["default_payment_method"] or customer["invoice_settings"]["default_payment_method"]
    )
    if method in SUCCEEDING_METHODS:
        invoice["attempt_count"] += 1
        invoice["attempted"] = True
        _mark_paid(state, ctx, invoice)
        return
    invoice["attempt_count"] += 1
    invoice["attempted"] = True
    more = invoice["attempt_count"] < MAX_ATTEMPTS
    invoice["next_payment_attempt"] = state.clock.now() + RETRY_AFTER if more else None
    state.emit(
        "invoice.payment_failed",
        render.invoice(state, invoice),
        livemode=ctx.livemode,
        request=ctx.request,
    )
