"""Credit notes in the emulator, as Stripe documents them, reached through billsync's gateway
and over raw HTTP: what they do to the invoice (pre- then post-payment), what they refuse, their
events and their listing; their shape against stripe-python and Stripe's example object. And the
gateway's payment retry (``POST /v1/invoices/{id}/pay``)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import stripe

from billsync.stripe_gateway import StripeGateway
from billsync.sync.port import CreditNoteLine, InvoiceActions, StripeCardDeclined, StripeRejected
from tests.emulator_wire import Json, Wire
from tests.stripe_peer import EMULATOR_KEY, RunningEmulator
from tests.test_emulator_conformance import FIXTURES, check_object, sdk_fields


def gateway_of(emulator: RunningEmulator) -> StripeGateway:
    return StripeGateway(EMULATOR_KEY, api_base=emulator.url, max_network_retries=0)


def finalized(wire: Wire, *, method: str | None = None, pay: bool = False) -> Json:
    """An open invoice of 1,000 + 125 (egress, 0.125 × 1000.5 rounded) + 1,250 (a pending
    item) = 2,375 cents; paid with the customer's card when ``pay``."""
    customer = wire.customer()
    if method is not None:
        wire.post(
            f"/v1/customers/{customer['id']}",
            {"invoice_settings[default_payment_method]": method},
        )
    invoice = wire.finalized(customer["id"])
    if pay:
        invoice = wire.post(f"/v1/invoices/{invoice['id']}/pay")
    return invoice


def invoice_of(wire: Wire, invoice_id: str) -> Json:
    return wire.get(f"/v1/invoices/{invoice_id}")


def events_since(wire: Wire, created_after: int, kind: str) -> list[Json]:
    page = wire.get("/v1/events", {"created[gte]": str(created_after), "limit": "100"})
    return [event for event in page["data"] if event["type"] == kind]


def test_a_credit_note_lowers_what_is_left_to_pay_then_settles_the_invoice(
    wire: Wire, running_emulator: RunningEmulator
) -> None:
    invoice = finalized(wire, method="pm_card_chargeDeclined")
    assert (invoice["status"], invoice["total"], invoice["amount_due"]) == ("open", 2375, 2375)
    gateway = gateway_of(running_emulator)
    first = gateway.create_credit_note(
        invoice["id"], amount=500, lines=(), reason="order_change", memo="Goodwill",
        refund_amount=0, credit_amount=0, metadata={"billsync_audit_entry": "7"},
        idempotency_key="cn-test-1",
    )  # fmt: skip
    assert (first.total, first.pre_payment_amount, first.post_payment_amount) == (500, 500, 0)
    assert (first.status, first.reason, first.memo) == ("issued", "order_change", "Goodwill")
    assert first.number == f"{invoice['number']}-CN-01"
    after = invoice_of(wire, invoice["id"])
    # The total stays; what is due and left to pay go down by the credit note.
    assert (after["total"], after["amount_due"], after["amount_remaining"]) == (2375, 1875, 1875)
    assert after["pre_payment_credit_notes_amount"] == 500
    assert after["status"] == "open"
    # The same key again: Stripe answers the first call's result, no second credit note.
    again = gateway.create_credit_note(
        invoice["id"], amount=500, lines=(), reason="order_change", memo="Goodwill",
        refund_amount=0, credit_amount=0, metadata={"billsync_audit_entry": "7"},
        idempotency_key="cn-test-1",
    )  # fmt: skip
    assert again.id == first.id
    rest = gateway.create_credit_note(
        invoice["id"], amount=1875, lines=(), reason=None, memo=None,
        refund_amount=0, credit_amount=0, metadata={}, idempotency_key="cn-test-2",
    )  # fmt: skip
    settled = invoice_of(wire, invoice["id"])
    # "if a credit note reduces the balance of an open invoice to 0, the invoice status
    # changes to paid" — without a payment.
    assert (settled["status"], settled["amount_paid"], settled["amount_remaining"]) == (
        "paid",
        0,
        0,
    )
    listed = gateway.list_credit_notes(invoice_id=invoice["id"])
    assert [note.id for note in listed] == [rest.id, first.id]  # newest first
    assert listed[1].metadata == {"billsync_audit_entry": "7"}


def test_what_a_credit_note_may_not_do(wire: Wire, running_emulator: RunningEmulator) -> None:
    gateway = gateway_of(running_emulator)
    customer = wire.customer()
    draft = wire.draft_with_lines(customer["id"])
    invoice = finalized(wire, method="pm_card_chargeDeclined")

    def refused(invoice_id: str, **changes: Any) -> str:
        arguments: dict[str, Any] = {
            "amount": 100, "lines": (), "reason": None, "memo": None, "refund_amount": 0,
            "credit_amount": 0, "metadata": {}, "idempotency_key": f"refused-{len(seen)}",
        }  # fmt: skip
        seen.append(1)
        with pytest.raises(StripeRejected) as error:
            gateway.create_credit_note(invoice_id, **(arguments | changes))
        return error.value.message

    seen: list[int] = []
    assert "finalized invoice" in refused(draft["id"])
    assert "can't exceed the invoice total" in refused(invoice["id"], amount=2376)
    # Unpaid: all of it comes off what is left to pay, none of it can be refunded.
    assert "post_payment_amount (0)" in refused(invoice["id"], refund_amount=100)
    line = invoice["lines"]["data"][0]
    assert "at most what is left of the line" in refused(
        invoice["id"], amount=None, lines=[CreditNoteLine(line["id"], line["amount"] + 1)]
    )
    assert invoice_of(wire, invoice["id"])["pre_payment_credit_notes_amount"] == 0


def test_after_payment_a_credit_note_refunds_or_credits_the_balance(
    wire: Wire, running_emulator: RunningEmulator
) -> None:
    invoice = finalized(wire, pay=True)
    assert invoice["status"] == "paid"
    gateway = gateway_of(running_emulator)
    line = invoice["lines"]["data"][0]  # 1,000: compute
    credit = gateway.create_credit_note(
        invoice["id"], amount=None, lines=[CreditNoteLine(line["id"], 400)], reason=None,
        memo=None, refund_amount=0, credit_amount=400, metadata={}, idempotency_key="paid-1",
    )  # fmt: skip
    assert (credit.pre_payment_amount, credit.post_payment_amount) == (0, 400)
    assert credit.credit_amount == 400
    assert [(cn.line_item_id, cn.amount) for cn in credit.lines] == [(line["id"], 400)]
    customer = wire.get(f"/v1/customers/{invoice['customer']}")
    assert customer["balance"] == -400  # a credit for the next invoice
    (entry,) = wire.get(
        f"/v1/customers/{invoice['customer']}/balance_transactions", {"invoice": invoice["id"]}
    )["data"]
    assert (entry["type"], entry["amount"], entry["credit_note"]) == (
        "credit_note",
        -400,
        credit.id,
    )
    refund = gateway.create_credit_note(
        invoice["id"], amount=600, lines=(), reason="product_unsatisfactory", memo=None,
        refund_amount=600, credit_amount=0, metadata={}, idempotency_key="paid-2",
    )  # fmt: skip
    assert (refund.refund_amount, refund.credit_amount) == (600, 0)
    after = invoice_of(wire, invoice["id"])
    assert (after["status"], after["total"], after["post_payment_credit_notes_amount"]) == (
        "paid",
        2375,
        1000,
    )
    with pytest.raises(StripeRejected, match="at most what is left of the line"):
        gateway.create_credit_note(
            invoice["id"], amount=None, lines=[CreditNoteLine(line["id"], 601)], reason=None,
            memo=None, refund_amount=601, credit_amount=0, metadata={}, idempotency_key="paid-3",
        )  # fmt: skip


def test_credit_note_events_and_listing_over_http(wire: Wire) -> None:
    invoice = finalized(wire, method="pm_card_chargeDeclined")
    note = wire.post(
        "/v1/credit_notes",
        {"invoice": invoice["id"], "amount": "2375", "memo": "all of it"},
    )
    created = events_since(wire, note["created"], "credit_note.created")
    assert note["id"] in [event["data"]["object"]["id"] for event in created]
    updates = [
        event
        for event in events_since(wire, note["created"], "invoice.updated")
        if event["data"]["object"]["id"] == invoice["id"]
    ]
    assert updates[0]["data"]["previous_attributes"]["pre_payment_credit_notes_amount"] == 0
    assert updates[0]["data"]["previous_attributes"]["status"] == "open"
    paid = events_since(wire, note["created"], "invoice.paid")
    assert invoice["id"] in [event["data"]["object"]["id"] for event in paid]
    listed = wire.get("/v1/credit_notes", {"invoice": invoice["id"]})
    assert [item["id"] for item in listed["data"]] == [note["id"]]
    assert wire.get(f"/v1/credit_notes/{note['id']}")["total"] == 2375
    missing = wire.request("POST", "/v1/credit_notes", {"invoice": invoice["id"]})
    assert missing.status_code == 400
    unknown = wire.request("POST", "/v1/credit_notes", {"invoice": "in_nope", "amount": "1"})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (400, "resource_missing")
    wrong_reason = wire.request(
        "POST", "/v1/credit_notes", {"invoice": invoice["id"], "amount": "1", "reason": "oops"}
    )
    assert wrong_reason.status_code == 400


def test_credit_notes_have_stripes_shape(wire: Wire) -> None:
    """Against the SDK class that types them (every declared field, with its JSON type) and
    Stripe's example object (every top-level key)."""
    invoice = finalized(wire, pay=True)
    line = invoice["lines"]["data"][0]
    samples = [
        wire.post(
            "/v1/credit_notes",
            {
                "invoice": invoice["id"],
                "lines[0][type]": "invoice_line_item",
                "lines[0][invoice_line_item]": line["id"],
                "lines[0][amount]": "300",
                "lines[1][type]": "custom_line_item",
                "lines[1][unit_amount]": "200",
                "lines[1][description]": "Service credit",
                "refund_amount": "500",
                "reason": "duplicate",
            },
        ),
        wire.post(
            "/v1/credit_notes", {"invoice": invoice["id"], "amount": "100", "credit_amount": "100"}
        ),
    ]
    samples += wire.get("/v1/credit_notes", {"invoice": invoice["id"]})["data"]
    errors: list[str] = []
    for index, sample in enumerate(samples):
        check_object(sample, stripe.CreditNote, f"credit_note[{index}]", errors)
        extra = set(sample) - set(sdk_fields(stripe.CreditNote))
        if extra:
            errors.append(f"credit_note[{index}]: keys the SDK does not declare: {sorted(extra)}")
    assert not errors, "\n".join(errors)
    resources = json.loads(FIXTURES.read_text())["resources"]
    example, line_example = resources["credit_note"], resources["credit_note_line_item"]
    for sample in samples:
        assert set(example) <= set(sample), set(example) - set(sample)
        for line in sample["lines"]["data"]:
            # Stripe's example line credits an invoice line; a custom line has no
            # invoice_line_item (as the custom line of Stripe's example credit note).
            wanted = set(line_example) - (
                {"invoice_line_item"} if line["type"] == "custom_line_item" else set()
            )
            assert wanted <= set(line), wanted - set(line)


def test_the_gateway_retries_a_payment_now(wire: Wire, running_emulator: RunningEmulator) -> None:
    gateway = gateway_of(running_emulator)
    assert isinstance(gateway, InvoiceActions)
    declined = finalized(wire, method="pm_card_chargeDeclined")
    with pytest.raises(StripeCardDeclined):
        gateway.pay_invoice(declined["id"], idempotency_key="pay-1")
    assert gateway.get_invoice(declined["id"], with_lines=False).attempt_count == 1
    wire.post(
        f"/v1/customers/{declined['customer']}",
        {"invoice_settings[default_payment_method]": "pm_card_visa"},
    )
    paid = gateway.pay_invoice(declined["id"], idempotency_key="pay-2")
    assert (paid.status, paid.amount_remaining, paid.attempt_count) == ("paid", 0, 2)
