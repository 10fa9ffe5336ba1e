"""Credit notes: lowering a finalized invoice, whole or line by line.

What Stripe documents (docs.stripe.com/api/credit_notes/create, the pinned version's
description of ``POST /v1/credit_notes``; docs.stripe.com/invoicing/dashboard/credit-notes):

- "Issue a credit note to adjust the amount of a finalized invoice": a draft or a void invoice
  takes none.
- "One of ``amount``, ``lines``, or ``shipping_cost`` must be provided." A line of type
  ``invoice_line_item`` credits (part of) a line of the invoice; ``custom_line_item`` credits
  ``unit_amount`` × ``quantity`` with a description of its own. Given both, ``amount`` is the
  lines' sum.
- "The sum of all credit notes issued for an invoice can't exceed the total amount of the
  invoice" (and a line cannot be credited beyond its amount).
- "A credit note will first reduce the invoice's ``amount_remaining`` (and ``amount_due``), but
  not below zero. This amount is indicated by the credit note's ``pre_payment_amount``. The
  excess amount is indicated by ``post_payment_amount``" — and "the sum of refunds, customer
  balance credits, and outside of Stripe credits must equal the ``post_payment_amount``"
  (``refund_amount``, ``credit_amount``, ``out_of_band_amount``).
- "Each credit note may increment the invoice's ``pre_payment_credit_notes_amount``,
  ``post_payment_credit_notes_amount``, or both."
- "A credit note reduces the amount due without recording any payment. However, if a credit note
  reduces the balance of an open invoice to 0, the invoice status changes to paid."
- ``credit_amount`` goes to the customer's balance (a ``credit_note`` balance transaction,
  docs.stripe.com/billing/customer/balance#types) for their next invoice.

The emulator has no charges: a refund is recorded on the credit note (``refunds``), at most what
the invoice was paid less what was refunded before. Events: ``credit_note.created``, then
``invoice.updated`` (and ``invoice.paid`` when the credit settles an open invoice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from billsync.emulator import balances, render
from billsync.emulator.billing import Context, invoice_state
from billsync.emulator.errors import StripeError, invalid, not_found
from billsync.emulator.metadata import merge_metadata
from billsync.emulator.state import State, created_filter, new_id, paginate

CREDITABLE = ("open", "paid", "uncollectible")


@dataclass(frozen=True)
class _Split:
    """How a credit note's total lowers its invoice (see the module's docstring)."""

    total: int
    pre: int  # off what is still to pay
    post: int  # the rest, as refund + credit + out of band
    refund: int
    credit: int
    out_of_band: int | None


def create_credit_note(state: State, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    invoice = state.invoice(params["invoice"], ctx.livemode, "invoice", in_body=True)
    if invoice["status"] not in CREDITABLE:
        raise invalid(
            f"You can only create a credit note for a finalized invoice that is not void; "
            f"invoice {invoice['id']} is {invoice['status']}.",
            param="invoice",
        )
    if "amount" not in params and "lines" not in params and "shipping_cost" not in params:
        raise invalid("One of `amount`, `lines`, or `shipping_cost` must be provided.")
    if "shipping_cost" in params:
        raise invalid("This invoice has no shipping cost to credit.", param="shipping_cost")
    lines = [
        _line(state, invoice, line, index) for index, line in enumerate(params.get("lines", []))
    ]
    split = _split(state, invoice, params, lines)
    # What invoice.updated reports as changed (previous_attributes).
    before = {
        **invoice_state(state, invoice),
        "status": invoice["status"],
        "pre_payment_credit_notes_amount": invoice["pre_payment_credit_notes_amount"],
        "post_payment_credit_notes_amount": invoice["post_payment_credit_notes_amount"],
    }
    note = _new_note(state, ctx, invoice, params, lines=lines, split=split)
    if split.refund:
        invoice["_refunded"] = invoice.get("_refunded", 0) + split.refund
        note["refunds"] = [
            {
                "amount_refunded": split.refund,
                "payment_record_refund": None,
                "refund": new_id("re"),
                "type": "refund",
            }
        ]
    if split.credit:
        customer = state.customers[invoice["customer"]]
        transaction = balances.record(
            state, ctx, customer, -split.credit,
            currency=invoice["currency"], kind="credit_note", invoice=invoice["id"],
        )  # fmt: skip
        transaction["credit_note"] = note["id"]
        note["customer_balance_transaction"] = transaction["id"]
    state.credit_notes[note["id"]] = note
    invoice["_amount_due"] = invoice["_amount_due"] - split.pre
    invoice["pre_payment_credit_notes_amount"] += split.pre
    invoice["post_payment_credit_notes_amount"] += split.post
    settled = (
        invoice["status"] in ("open", "uncollectible")
        and split.pre > 0
        and (render.totals(state, invoice)["amount_remaining"] == 0)
    )
    if settled:
        invoice["status"] = "paid"
        invoice["next_payment_attempt"] = None
        invoice["status_transitions"]["paid_at"] = note["created"]
    created = credit_note(note)
    state.emit("credit_note.created", created, livemode=ctx.livemode, request=ctx.request)
    after = render.invoice(state, invoice)
    previous = {key: value for key, value in before.items() if after[key] != value}
    state.emit(
        "invoice.updated", after, livemode=ctx.livemode, request=ctx.request, previous=previous
    )
    if settled:
        state.emit("invoice.paid", after, livemode=ctx.livemode, request=ctx.request)
    return created


def _split(
    state: State, invoice: dict[str, Any], params: dict[str, Any], lines: list[dict[str, Any]]
) -> _Split:
    """The credit note's total and how it lowers the invoice, or Stripe's refusal."""
    total = sum(line["amount"] for line in lines) if lines else params["amount"]
    if "amount" in params and lines and params["amount"] != total:
        raise invalid(
            f"The credit note amount ({params['amount']}) must equal the sum of its lines "
            f"({total}).",
            param="amount",
        )
    if total <= 0:
        raise invalid("The credit note amount must be greater than 0.", param="amount")
    rendered = render.invoice(state, invoice)
    credited = _credited(state, invoice["id"])
    if credited + total > rendered["total"]:
        raise invalid(
            f"The sum of credit notes ({credited + total}) can't exceed the invoice total "
            f"({rendered['total']}).",
            param="amount",
        )
    remaining = rendered["amount_remaining"] if invoice["status"] != "paid" else 0
    pre = min(total, remaining)
    post = total - pre
    refund = params.get("refund_amount", 0)
    credit = params.get("credit_amount", 0)
    out_of_band = params.get("out_of_band_amount")
    if refund + credit + (out_of_band or 0) != post:
        raise invalid(
            "The sum of refund_amount, credit_amount and out_of_band_amount "
            f"({refund + credit + (out_of_band or 0)}) must equal the credit note's "
            f"post_payment_amount ({post}): the invoice has {remaining} left to pay, which the "
            "credit note reduces first.",
            param="refund_amount" if refund else "credit_amount",
        )
    refundable = rendered["amount_paid"] - invoice.get("_refunded", 0)
    if refund > refundable:
        raise invalid(
            f"The refund_amount ({refund}) can't exceed what is left of the invoice's payment "
            f"({refundable}).",
            param="refund_amount",
        )
    return _Split(total, pre, post, refund, credit, out_of_band)


def _new_note(
    state: State,
    ctx: Context,
    invoice: dict[str, Any],
    params: dict[str, Any],
    *,
    lines: list[dict[str, Any]],
    split: _Split,
) -> dict[str, Any]:
    now = state.clock.now()
    note_id = new_id("cn")
    sequence = sum(1 for note in state.credit_notes.values() if note["invoice"] == invoice["id"])
    base = state.config.public_url.rstrip("/")
    return {
        "id": note_id,
        "object": "credit_note",
        "amount": split.total,
        "amount_shipping": 0,
        "created": now,
        "currency": invoice["currency"],
        "customer": invoice["customer"],
        "customer_account": None,
        "customer_balance_transaction": None,
        "discount_amount": 0,
        "discount_amounts": [],
        "effective_at": params.get("effective_at", now),
        "invoice": invoice["id"],
        "livemode": ctx.livemode,
        "memo": params.get("memo"),
        "metadata": merge_metadata({}, params.get("metadata", {})),
        "number": f"{invoice['number']}-CN-{sequence + 1:02d}",
        "out_of_band_amount": split.out_of_band,
        "pdf": f"{base}/_emulator/credit_notes/{note_id}/pdf",
        "post_payment_amount": split.post,
        "pre_payment_amount": split.pre,
        "pretax_credit_amounts": [],
        "reason": params.get("reason"),
        "refunds": [],
        "shipping_cost": None,
        "status": "issued",
        "subtotal": split.total,
        "subtotal_excluding_tax": split.total,
        "total": split.total,
        "total_excluding_tax": split.total,
        "total_taxes": [],
        "type": "pre_payment" if split.post == 0 else "post_payment" if split.pre == 0 else "mixed",
        "voided_at": None,
        "_lines": [{**line, "id": new_id("cnli"), "livemode": ctx.livemode} for line in lines],
        "_sequence": state.sequence(),
    }


def _line(
    state: State, invoice: dict[str, Any], line: dict[str, Any], index: int
) -> dict[str, Any]:
    """One line of the credit note, as it will be rendered (without its id)."""
    where = f"lines[{index}]"
    if line["type"] == "invoice_line_item":
        line_item_id = line.get("invoice_line_item")
        if line_item_id is None:
            raise StripeError(
                400,
                f"Missing required param: {where}[invoice_line_item].",
                code="parameter_missing",
                param=f"{where}[invoice_line_item]",
            )
        found = state.line_items.get(line_item_id)
        if found is None or found[0] != invoice["id"]:
            raise not_found("line item", line_item_id, f"{where}[invoice_line_item]", in_body=True)
        item = state.invoice_items[found[1]]
        already = sum(
            credited["amount"]
            for note in state.credit_notes.values()
            if note["invoice"] == invoice["id"] and note["status"] == "issued"
            for credited in note["_lines"]
            if credited.get("invoice_line_item") == line_item_id
        )
        if "amount" in line:
            amount = line["amount"]
        else:  # a quantity of the line's units, or the whole line
            quantity = line.get("quantity", item["quantity"])
            amount = item["amount"] * quantity // max(item["quantity"], 1)
        if amount <= 0 or already + amount > item["amount"]:
            raise invalid(
                f"The amount to credit on line item {line_item_id} ({amount}) must be greater "
                f"than 0 and at most what is left of the line ({item['amount'] - already}).",
                param=f"{where}[amount]",
            )
        return {
            "object": "credit_note_line_item",
            "amount": amount,
            "description": item["description"],
            "discount_amount": 0,
            "discount_amounts": [],
            "invoice_line_item": line_item_id,
            "metadata": merge_metadata({}, line.get("metadata", {})),
            "pretax_credit_amounts": [],
            "quantity": line.get("quantity", item["quantity"]),
            "tax_rates": [],
            "taxes": [],
            "type": "invoice_line_item",
            "unit_amount": None,
            "unit_amount_decimal": None,
        }
    quantity = line.get("quantity", 1)
    unit = line.get("unit_amount")
    if unit is None and "unit_amount_decimal" in line:
        unit = int(line["unit_amount_decimal"])
    if unit is None or unit <= 0 or quantity <= 0:
        raise invalid(
            f"A custom line needs a unit_amount and a quantity greater than 0 ({where}).",
            param=f"{where}[unit_amount]",
        )
    # No ``invoice_line_item`` at all: "When the type is ``invoice_line_item`` there is an
    # additional ``invoice_line_item`` property" (the description of CreditNoteLineItem.type).
    return {
        "object": "credit_note_line_item",
        "amount": unit * quantity,
        "description": line.get("description"),
        "discount_amount": 0,
        "discount_amounts": [],
        "metadata": merge_metadata({}, line.get("metadata", {})),
        "pretax_credit_amounts": [],
        "quantity": quantity,
        "tax_rates": [],
        "taxes": [],
        "type": "custom_line_item",
        "unit_amount": unit,
        "unit_amount_decimal": str(unit),
    }


def _credited(state: State, invoice_id: str) -> int:
    """What the invoice's issued credit notes credit already."""
    return sum(
        note["total"]
        for note in state.credit_notes.values()
        if note["invoice"] == invoice_id and note["status"] == "issued"
    )


def credit_note(note: dict[str, Any]) -> dict[str, Any]:
    """The credit note as Stripe renders it: its lines embedded as a list."""
    rendered = {key: value for key, value in note.items() if not key.startswith("_")}
    rendered["lines"] = {
        "object": "list",
        "data": [dict(line) for line in note["_lines"]],
        "has_more": False,
        "url": f"/v1/credit_notes/{note['id']}/lines",
    }
    return rendered


def retrieve_credit_note(state: State, ctx: Context, note_id: str) -> dict[str, Any]:
    note = state.credit_notes.get(note_id)
    if note is None or note["livemode"] != ctx.livemode:
        raise not_found("credit_note", note_id)
    return credit_note(note)


def list_credit_notes(state: State, ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """Newest first; ``invoice`` and ``customer`` keep one invoice's or one customer's."""
    created = created_filter(params)
    found = [
        note
        for note in state.credit_notes.values()
        if note["livemode"] == ctx.livemode
        and created(note["created"])
        and ("invoice" not in params or note["invoice"] == params["invoice"])
        and ("customer" not in params or note["customer"] == params["customer"])
    ]
    return paginate(found, params, "/v1/credit_notes", credit_note)
