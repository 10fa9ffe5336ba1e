"""Scenarios with the real stripe SDK over HTTP: against the emulator by default, and against
real Stripe test mode when BILLSYNC_TEST_STRIPE_KEY is set (emulator-only parts skip there)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Literal, cast

import httpx
import pytest
import stripe
from hypothesis import given
from hypothesis import strategies as st
from stripe.params import (
    InvoiceAddLinesParamsLine,
    InvoiceCreateParams,
    InvoiceCreateParamsDiscount,
)

from billsync.emulator import amounts
from tests.stripe_peer import EMULATOR_KEY, StripePeer
from tests.waiting import wait_until
from tests.webhook_receiver import Receiver


def make_customer(peer: StripePeer, method: str = "pm_card_visa") -> stripe.Customer:
    return peer.client.v1.customers.create(
        params={
            "name": "Acme Cloud",
            "email": "billing@acme.test",
            "payment_method": method,
            "invoice_settings": {"default_payment_method": method},
        }
        if peer.is_real
        else {
            "name": "Acme Cloud",
            "email": "billing@acme.test",
            "invoice_settings": {"default_payment_method": method},
        }
    )


def draft(peer: StripePeer, customer: stripe.Customer) -> stripe.Invoice:
    return peer.client.v1.invoices.create(
        params={
            "customer": customer.id,
            "auto_advance": False,
            "collection_method": "charge_automatically",
            "pending_invoice_items_behavior": "exclude",
            "currency": "usd",
            "metadata": {"billsync_period": "2026-11-01"},
        }
    )


def lines(count: int, amount: int = 100) -> list[InvoiceAddLinesParamsLine]:
    return [
        {
            "amount": amount + index,
            "description": f"usage line {index}",
            "metadata": {"billsync_line_id": str(index)},
        }
        for index in range(count)
    ]


def test_draft_lines_finalize_and_pay(stripe_peer: StripePeer) -> None:
    client = stripe_peer.client
    customer = make_customer(stripe_peer)
    invoice = draft(stripe_peer, customer)
    assert invoice.status == "draft"
    assert invoice.total == 0
    invoice = client.v1.invoices.add_lines(invoice.id, params={"lines": lines(3)})
    assert invoice.total == 100 + 101 + 102
    listed = client.v1.invoices.line_items.list(invoice.id, params={"limit": 100}).data
    assert [line.metadata["billsync_line_id"] for line in listed] == ["0", "1", "2"]
    assert all(line.id.startswith("il_") for line in listed)
    item_ids = [line.parent.invoice_item_details.invoice_item for line in listed]  # type: ignore[union-attr]
    assert all(item_id.startswith("ii_") for item_id in item_ids)

    invoice = client.v1.invoices.update_lines(
        invoice.id,
        params={
            "lines": [{"id": listed[0].id, "amount": 5000, "metadata": {"billsync_version": "2"}}]
        },
    )
    assert invoice.total == 5000 + 101 + 102
    invoice = client.v1.invoices.remove_lines(
        invoice.id, params={"lines": [{"id": listed[2].id, "behavior": "delete"}]}
    )
    assert invoice.total == 5000 + 101
    assert invoice.amount_due == invoice.total

    invoice = client.v1.invoices.finalize_invoice(invoice.id, params={"auto_advance": False})
    assert invoice.status == "open"
    assert invoice.number
    assert invoice.hosted_invoice_url
    assert invoice.invoice_pdf
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.add_lines(invoice.id, params={"lines": lines(1)})
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.delete(invoice.id)

    paid = client.v1.invoices.pay(invoice.id)
    assert paid.status == "paid"
    assert paid.amount_paid == 5101
    assert paid.amount_remaining == 0
    assert paid.status_transitions.paid_at is not None


def test_declined_card_leaves_the_invoice_open_and_emits_payment_failed(
    stripe_peer: StripePeer,
) -> None:
    client = stripe_peer.client
    customer = make_customer(stripe_peer, "pm_card_chargeDeclined")
    invoice = draft(stripe_peer, customer)
    client.v1.invoices.add_lines(invoice.id, params={"lines": lines(1, 2500)})
    client.v1.invoices.finalize_invoice(invoice.id, params={"auto_advance": False})
    with pytest.raises(stripe.CardError) as declined:
        client.v1.invoices.pay(invoice.id)
    assert declined.value.http_status == 402
    assert declined.value.code == "card_declined"
    after = client.v1.invoices.retrieve(invoice.id)
    assert after.status == "open"
    assert after.attempt_count == 1
    assert after.amount_remaining == 2500
    if not stripe_peer.is_real:
        events = client.v1.events.list(params={"type": "invoice.payment_failed"}).data
        assert [event.data.object["id"] for event in events] == [invoice.id]
    voided = client.v1.invoices.void_invoice(invoice.id)
    assert voided.status == "void"
    assert voided.amount_remaining == 0


def test_delete_draft_and_mark_uncollectible(stripe_peer: StripePeer) -> None:
    client = stripe_peer.client
    customer = make_customer(stripe_peer)
    first = draft(stripe_peer, customer)
    client.v1.invoices.add_lines(first.id, params={"lines": lines(2)})
    deleted = client.v1.invoices.delete(first.id)
    assert deleted.deleted is True
    second = draft(stripe_peer, customer)
    client.v1.invoices.add_lines(second.id, params={"lines": lines(1)})
    client.v1.invoices.finalize_invoice(second.id, params={"auto_advance": False})
    assert client.v1.invoices.mark_uncollectible(second.id).status == "uncollectible"


def test_an_uncollectible_invoice_can_still_be_paid(stripe_peer: StripePeer) -> None:
    """Stripe keeps collecting an invoice marked uncollectible: ``pay`` is allowed on it."""
    client = stripe_peer.client
    invoice = draft(stripe_peer, make_customer(stripe_peer))
    client.v1.invoices.add_lines(invoice.id, params={"lines": lines(1, 700)})
    client.v1.invoices.finalize_invoice(invoice.id, params={"auto_advance": False})
    client.v1.invoices.mark_uncollectible(invoice.id)
    paid = client.v1.invoices.pay(invoice.id)
    assert (paid.status, paid.amount_paid) == ("paid", 700)


def auto_collected(peer: StripePeer, customer: stripe.Customer) -> stripe.Invoice:
    invoice = draft(peer, customer)
    peer.client.v1.invoices.add_lines(invoice.id, params={"lines": lines(1, 1234)})
    return peer.client.v1.invoices.finalize_invoice(invoice.id, params={"auto_advance": True})


def event_types(peer: StripePeer, invoice_id: str) -> list[str]:
    events = peer.client.v1.events.list(params={"limit": 100}).data
    return [e.type for e in reversed(events) if e.data.object.to_dict().get("id") == invoice_id]


def test_finalize_answers_open_and_payment_follows_on_its_own(stripe_peer: StripePeer) -> None:
    """Finalizing is not paying: the answer is the invoice ``open``; Stripe attempts the
    payment afterwards and says so with ``invoice.paid`` (docs.stripe.com/invoicing/
    integration/workflow-transitions: "finalized … open … Stripe automatically attempts
    payment")."""
    emulator = stripe_peer.need_emulator()
    emulator.control("POST", "config", {"collection_delay": 3600})
    customer = make_customer(stripe_peer)
    finalized = auto_collected(stripe_peer, customer)
    assert (finalized.status, finalized.attempt_count, finalized.amount_paid) == ("open", 0, 0)
    assert "invoice.paid" not in event_types(stripe_peer, finalized.id)
    emulator.control("POST", "clock", {"advance": 3600})
    wait_until(
        lambda: stripe_peer.client.v1.invoices.retrieve(finalized.id).status == "paid",
        "the payment attempted after finalization",
    )
    assert event_types(stripe_peer, finalized.id)[-3:] == [
        "invoice.finalized", "invoice.paid", "invoice.payment_succeeded"
    ]  # fmt: skip


def test_a_customer_without_a_payment_method_is_attempted_and_retried(
    stripe_peer: StripePeer,
) -> None:
    """No payment method is a failed attempt (``invoice.payment_failed``, retried on the
    account's schedule), not an invoice Stripe never tries to collect."""
    emulator = stripe_peer.need_emulator()
    client = stripe_peer.client
    customer = client.v1.customers.create(params={"name": "No card"})
    invoice = auto_collected(stripe_peer, customer)
    wait_until(
        lambda: client.v1.invoices.retrieve(invoice.id).attempt_count == 1, "the first attempt"
    )
    failed = client.v1.invoices.retrieve(invoice.id)
    assert failed.status == "open"
    assert failed.next_payment_attempt is not None
    assert event_types(stripe_peer, invoice.id).count("invoice.payment_failed") == 1
    emulator.control("POST", "clock", {"advance": 3 * 86400})
    wait_until(lambda: client.v1.invoices.retrieve(invoice.id).attempt_count == 2, "the retry")
    assert event_types(stripe_peer, invoice.id).count("invoice.payment_failed") == 2


def test_an_automatic_finalization_that_fails_says_so(stripe_peer: StripePeer) -> None:
    """A draft Stripe was to finalize on its own and could not (here: its customer was
    deleted) stays a draft, with ``invoice.finalization_failed`` and the error on it."""
    emulator = stripe_peer.need_emulator()
    client = stripe_peer.client
    customer = make_customer(stripe_peer)
    invoice = client.v1.invoices.create(
        params={"customer": customer.id, "auto_advance": True, "currency": "usd",
                "pending_invoice_items_behavior": "exclude"}
    )  # fmt: skip
    client.v1.invoices.add_lines(invoice.id, params={"lines": lines(1)})
    client.v1.customers.delete(customer.id)
    emulator.control("POST", "clock", {"advance": 3600})
    wait_until(
        lambda: "invoice.finalization_failed" in event_types(stripe_peer, invoice.id),
        "invoice.finalization_failed",
    )
    after = emulator.control("GET", f"peek/invoices/{invoice.id}")
    assert after["status"] == "draft"
    assert after["last_finalization_error"]["message"]


def test_pending_items_unassign_and_preview(stripe_peer: StripePeer) -> None:
    client = stripe_peer.client
    customer = make_customer(stripe_peer)
    pending = client.v1.invoice_items.create(
        params={"customer": customer.id, "amount": 700, "currency": "usd", "description": "p"}
    )
    assert pending.invoice is None
    preview = client.v1.invoices.create_preview(params={"customer": customer.id})
    assert preview.total == 700
    invoice = draft(stripe_peer, customer)
    invoice = client.v1.invoices.add_lines(
        invoice.id, params={"lines": [{"invoice_item": pending.id}]}
    )
    assert invoice.total == 700
    line = invoice.lines.data[0]
    invoice = client.v1.invoices.remove_lines(
        invoice.id, params={"lines": [{"id": line.id, "behavior": "unassign"}]}
    )
    assert invoice.total == 0
    assert client.v1.invoice_items.retrieve(pending.id).invoice is None
    listed = client.v1.invoice_items.list(params={"customer": customer.id, "pending": True})
    assert [item.id for item in listed.data] == [pending.id]


def test_update_lines_takes_line_item_ids_not_invoice_item_ids(stripe_peer: StripePeer) -> None:
    client = stripe_peer.client
    invoice = draft(stripe_peer, make_customer(stripe_peer))
    invoice = client.v1.invoices.add_lines(invoice.id, params={"lines": lines(1)})
    item_id = invoice.lines.data[0].parent.invoice_item_details.invoice_item  # type: ignore[union-attr]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.update_lines(
            invoice.id, params={"lines": [{"id": item_id, "amount": 1}]}
        )


def test_list_pagination_and_expand(stripe_peer: StripePeer) -> None:
    emulator = stripe_peer.need_emulator()
    client = stripe_peer.client
    customers = [client.v1.customers.create(params={"name": f"c{n}"}) for n in range(5)]
    page = client.v1.customers.list(params={"limit": 2})
    seen = [c.id for c in page.data]
    more, pages = page.has_more, 1
    while more:
        page = client.v1.customers.list(params={"limit": 2, "starting_after": seen[-1]})
        seen += [c.id for c in page.data]
        more, pages = page.has_more, pages + 1
    assert sorted(seen) == sorted(c.id for c in customers)
    assert len(set(seen)) == 5
    assert pages == 3
    invoice = client.v1.invoices.create(params={"customer": customers[0].id})
    expanded = client.v1.invoices.retrieve(invoice.id, params={"expand": ["customer"]})
    assert isinstance(expanded.customer, stripe.Customer)
    assert expanded.customer.name == "c0"
    assert emulator.control("GET", "stats")["by_endpoint"]["GET /v1/customers"] == 3


def test_invoice_item_cap_is_250(stripe_peer: StripePeer) -> None:
    stripe_peer.need_emulator()
    client = stripe_peer.client
    invoice = draft(stripe_peer, make_customer(stripe_peer))
    client.v1.invoices.add_lines(invoice.id, params={"lines": lines(250)})
    with pytest.raises(stripe.InvalidRequestError, match="at most 250"):
        client.v1.invoices.add_lines(invoice.id, params={"lines": lines(1)})
    assert client.v1.invoices.retrieve(invoice.id).lines.total_count == 250  # type: ignore[attr-defined]


def test_an_amount_above_eight_digits_is_refused_and_nothing_is_written(
    stripe_peer: StripePeer,
) -> None:
    """Stripe takes amounts of at most 8 digits in the minor unit (billsync refuses larger
    lines before sending them: core.money.MAX_STRIPE_AMOUNT)."""
    client = stripe_peer.client
    invoice = draft(stripe_peer, make_customer(stripe_peer))
    for too_large in (100_000_000, -100_000_000):
        with pytest.raises(stripe.InvalidRequestError) as refused:
            client.v1.invoices.add_lines(invoice.id, params={"lines": lines(1, too_large)})
        assert refused.value.http_status == 400
        if not stripe_peer.is_real:
            assert refused.value.code == "amount_too_large"
    invoice = client.v1.invoices.add_lines(invoice.id, params={"lines": lines(1, 99_999_999)})
    (line,) = invoice.lines.data
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.update_lines(
            invoice.id, params={"lines": [{"id": line.id, "amount": 100_000_000}]}
        )
    assert client.v1.invoices.retrieve(invoice.id).total == 99_999_999


def test_bad_api_key_is_refused(stripe_peer: StripePeer) -> None:
    emulator = stripe_peer.need_emulator()
    bad = stripe.StripeClient("sk_test_x", base_addresses={"api": emulator.url})
    with pytest.raises(stripe.AuthenticationError):
        bad.v1.customers.list()
    response = httpx.get(f"{emulator.url}/v1/customers")
    assert response.status_code == 401
    live = emulator.client().v1.customers.list()
    assert live.data == []


# --- idempotency -----------------------------------------------------------------------


def test_idempotency_replays_refuses_other_params_and_expires_after_24h(
    stripe_peer: StripePeer,
) -> None:
    client = stripe_peer.client
    customer = make_customer(stripe_peer)
    invoice = draft(stripe_peer, customer)
    options: Any = {"idempotency_key": f"billsync:line:{invoice.id}:v1"}
    first = client.v1.invoices.add_lines(invoice.id, params={"lines": lines(2)}, options=options)
    again = client.v1.invoices.add_lines(invoice.id, params={"lines": lines(2)}, options=options)
    assert again.total == first.total == 201
    assert client.v1.invoices.retrieve(invoice.id).total == 201  # not applied twice
    with pytest.raises(stripe.IdempotencyError):
        client.v1.invoices.add_lines(invoice.id, params={"lines": lines(3)}, options=options)
    emulator = stripe_peer.need_emulator()
    emulator.control("POST", "clock", {"advance": 24 * 3600 + 1})
    client.v1.invoices.add_lines(invoice.id, params={"lines": lines(2)}, options=options)
    assert client.v1.invoices.retrieve(invoice.id).total == 402  # the old key ran again


def test_idempotency_key_in_flight_gets_409(stripe_peer: StripePeer) -> None:
    emulator = stripe_peer.need_emulator()
    client = stripe_peer.client
    invoice = draft(stripe_peer, make_customer(stripe_peer))
    add_lines = "POST /v1/invoices/{id}/add_lines"
    emulator.control(
        "POST", "faults", {"endpoint": add_lines, "kind": "latency", "count": 1, "seconds": 1}
    )
    results: list[Any] = []

    def slow() -> None:
        results.append(
            client.v1.invoices.add_lines(
                invoice.id, params={"lines": lines(1)}, options={"idempotency_key": "same"}
            )
        )

    thread = threading.Thread(target=slow)
    thread.start()
    wait_until(
        lambda: any(k[1] == "same" for k in emulator.emulator.state.idempotency),
        "the first request holds its idempotency key",
    )
    with pytest.raises(stripe.StripeError) as conflict:
        client.v1.invoices.add_lines(
            invoice.id, params={"lines": lines(1)}, options={"idempotency_key": "same"}
        )
    thread.join()
    assert conflict.value.http_status == 409
    assert results[0].total == 100


# --- rate limits and lock_timeout -----------------------------------------------------


def test_rate_limit_answers_429_rate_limit(stripe_peer: StripePeer) -> None:
    emulator = stripe_peer.need_emulator()
    emulator.control("POST", "config", {"rate_limit_test": 5})
    outcomes, refusals, elapsed = burst(stripe_peer.client.v1.customers.list, 20)
    assert all(error.http_status == 429 for error in refusals)
    assert all(
        cast(dict[str, Any], error.json_body)["error"]["code"] == "rate_limit" for error in refusals
    )
    # A full bucket lets a second's worth through, then the rate: never more than that for the
    # time the burst took, however slow or fast the machine made it.
    assert outcomes[:4] == ["ok"] * 4
    assert outcomes.count("ok") <= 5 + 5 * elapsed + 1
    assert emulator.control("GET", "stats")["rate_limited"] == outcomes.count("429")


def burst(
    call: Callable[[], object], count: int
) -> tuple[list[str], list[stripe.RateLimitError], float]:
    outcomes: list[str] = []
    refusals: list[stripe.RateLimitError] = []
    began = time.monotonic()
    for _ in range(count):
        try:
            call()
            outcomes.append("ok")
        except stripe.RateLimitError as error:
            refusals.append(error)
            outcomes.append("429")
    return outcomes, refusals, time.monotonic() - began


def test_every_endpoint_has_its_own_limit_as_in_stripe(stripe_peer: StripePeer) -> None:
    """Besides the global limit, each endpoint (method and path template) has its own, 25/s
    by default (docs.stripe.com/rate-limits: "API endpoints have a default limit of 25 requests
    per second"): a burst on one is refused while another endpoint still answers."""
    emulator = stripe_peer.need_emulator()
    emulator.control("POST", "config", {"rate_limit_endpoint": 1})
    client = stripe_peer.client
    outcomes, refusals, elapsed = burst(client.v1.customers.list, 12)
    assert outcomes[0] == "ok"
    assert outcomes.count("ok") <= 1 + 1 * elapsed + 1
    assert refusals  # twelve calls at 1/s: refused unless each took most of a second
    assert all(
        cast(dict[str, Any], error.json_body)["error"]["code"] == "rate_limit" for error in refusals
    )
    client.v1.invoices.list()  # another endpoint: its own bucket is full
    assert emulator.control("GET", "config")["rate_limit_endpoint"] == 1
    emulator.control(
        "POST", "config", {"endpoint_rates": {"GET /v1/customers": 0}}
    )  # raised (0: no limit) for that one endpoint
    assert burst(client.v1.customers.list, 10)[0] == ["ok"] * 10


def test_concurrent_writes_to_one_invoice_get_lock_timeout(stripe_peer: StripePeer) -> None:
    emulator = stripe_peer.need_emulator()
    client = stripe_peer.client
    invoice = draft(stripe_peer, make_customer(stripe_peer))
    add_lines = "POST /v1/invoices/{id}/add_lines"
    emulator.control(
        "POST", "faults", {"endpoint": add_lines, "kind": "latency", "count": 1, "seconds": 1}
    )
    thread = threading.Thread(
        target=lambda: client.v1.invoices.add_lines(invoice.id, params={"lines": lines(1)})
    )
    thread.start()
    wait_until(lambda: invoice.id in emulator.emulator.locked_invoices, "the invoice is locked")
    response = httpx.post(
        f"{emulator.url}/v1/invoices/{invoice.id}/add_lines",
        data={"lines[0][amount]": "5"},
        headers={"Authorization": f"Bearer {EMULATOR_KEY}"},
    )
    thread.join()
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "lock_timeout"
    assert response.headers["Stripe-Should-Retry"] == "true"
    # The SDK retries a lock_timeout on its own (Stripe-Should-Retry) and then succeeds.
    retrying = emulator.client(max_network_retries=2)
    emulator.control(
        "POST",
        "faults",
        {"endpoint": "POST /v1/invoices/{id}/add_lines", "kind": "lock_timeout", "count": 1},
    )
    assert retrying.v1.invoices.add_lines(invoice.id, params={"lines": lines(1)}).total == 200


# --- faults ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["500", "503"])
def test_server_errors_are_retried_by_the_sdk_and_converge(
    stripe_peer: StripePeer, kind: str
) -> None:
    emulator = stripe_peer.need_emulator()
    invoice = draft(stripe_peer, make_customer(stripe_peer))
    emulator.control(
        "POST", "faults", {"endpoint": "POST /v1/invoices/{id}/add_lines", "kind": kind, "count": 2}
    )
    with pytest.raises(stripe.APIError):
        stripe_peer.client.v1.invoices.add_lines(invoice.id, params={"lines": lines(1)})
    retrying = emulator.client(max_network_retries=3)
    assert retrying.v1.invoices.add_lines(invoice.id, params={"lines": lines(1)}).total == 100


def test_response_lost_after_commit_is_recovered_by_the_same_idempotency_key(
    stripe_peer: StripePeer,
) -> None:
    emulator = stripe_peer.need_emulator()
    client = stripe_peer.client
    invoice = draft(stripe_peer, make_customer(stripe_peer))
    emulator.control(
        "POST",
        "faults",
        {"endpoint": "POST /v1/invoices/{id}/add_lines", "kind": "drop_after_commit", "count": 1},
    )
    options: Any = {"idempotency_key": "billsync:add:1"}
    with pytest.raises(stripe.APIConnectionError):
        client.v1.invoices.add_lines(invoice.id, params={"lines": lines(2)}, options=options)
    # The write happened although the client saw a failure ...
    assert client.v1.invoices.retrieve(invoice.id).total == 201
    # ... and repeating the call with its key replays it instead of adding the lines again.
    replayed = client.v1.invoices.add_lines(invoice.id, params={"lines": lines(2)}, options=options)
    assert replayed.total == 201
    assert client.v1.invoices.retrieve(invoice.id).lines.total_count == 2  # type: ignore[attr-defined]
    assert emulator.control("GET", "stats")["idempotent_replays"] == 1


def test_a_hang_past_the_client_timeout_still_commits(stripe_peer: StripePeer) -> None:
    emulator = stripe_peer.need_emulator()
    invoice = draft(stripe_peer, make_customer(stripe_peer))
    emulator.control(
        "POST",
        "faults",
        {
            "endpoint": "POST /v1/invoices/{id}/add_lines",
            "kind": "hang",
            "count": 1,
            "seconds": 1.5,
        },
    )
    impatient = emulator.client(http_client=stripe.RequestsClient(timeout=0.5))
    with pytest.raises(stripe.APIConnectionError):
        impatient.v1.invoices.add_lines(invoice.id, params={"lines": lines(1)})
    wait_until(
        lambda: stripe_peer.client.v1.invoices.retrieve(invoice.id).total == 100,
        "the hung write lands",
        every=0.1,
    )


def test_rate_based_faults_are_reproducible_from_a_seed(stripe_peer: StripePeer) -> None:
    emulator = stripe_peer.need_emulator()

    def run() -> list[str]:
        emulator.control("POST", "reset")
        emulator.control("POST", "config", {"rate_limit_test": 0, "rate_limit_endpoint": 0})
        emulator.control(
            "POST",
            "faults",
            {"seed": 7, "rules": [{"endpoint": "GET /v1/customers", "kind": "500", "rate": 0.3}]},
        )
        outcomes = []
        for _ in range(30):
            try:
                stripe_peer.client.v1.customers.list()
                outcomes.append("ok")
            except stripe.APIError:
                outcomes.append("500")
        return outcomes

    first = run()
    assert first == run()
    assert 3 <= first.count("500") <= 18


# --- auto_advance and the clock -------------------------------------------------------


def test_auto_advance_draft_finalizes_and_charges_after_the_delay(stripe_peer: StripePeer) -> None:
    emulator = stripe_peer.need_emulator()
    client = stripe_peer.client
    # The clock stands still between the calls: a busy machine's real seconds must not eat
    # the one-second margin below.
    emulator.control("POST", "clock", {"set": time.time(), "freeze": True})
    customer = make_customer(stripe_peer)
    invoice = client.v1.invoices.create(params={"customer": customer.id, "auto_advance": True})
    client.v1.invoices.add_lines(invoice.id, params={"lines": lines(1, 999)})
    emulator.control("POST", "clock", {"advance": 3599})
    assert client.v1.invoices.retrieve(invoice.id).status == "draft"
    emulator.control("POST", "clock", {"advance": 2})
    assert client.v1.invoices.retrieve(invoice.id).status in ("open", "paid")
    # Then Stripe attempts the payment, on its own.
    wait_until(lambda: client.v1.invoices.retrieve(invoice.id).status == "paid", "the payment")
    assert client.v1.invoices.retrieve(invoice.id).amount_paid == 999


# --- webhooks ---------------------------------------------------------------------------


def register(peer: StripePeer, receiver: Receiver, events: list[str]) -> str:
    endpoint = peer.client.v1.webhook_endpoints.create(
        params={"url": receiver.url, "enabled_events": events}  # type: ignore[typeddict-item]
    )
    assert endpoint.secret
    return endpoint.secret


def test_webhooks_are_signed_as_stripe_signs_them(
    stripe_peer: StripePeer, webhook_receiver: Receiver
) -> None:
    stripe_peer.need_emulator()
    secret = register(stripe_peer, webhook_receiver, ["invoice.created", "invoice.finalized"])
    invoice = draft(stripe_peer, make_customer(stripe_peer))
    stripe_peer.client.v1.invoices.finalize_invoice(invoice.id)
    deliveries = webhook_receiver.wait_for(2)
    events = [stripe.Webhook.construct_event(d.body, d.signature, secret) for d in deliveries]
    assert [event.type for event in events] == ["invoice.created", "invoice.finalized"]
    assert {event.data.object["id"] for event in events} == {invoice.id}
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(deliveries[0].body, deliveries[0].signature, "whsec_other")


def test_failed_deliveries_are_retried_with_backoff(
    stripe_peer: StripePeer, webhook_receiver: Receiver
) -> None:
    emulator = stripe_peer.need_emulator()
    emulator.control("POST", "config", {"webhook_retry_base_seconds": 0.05})
    webhook_receiver.statuses = [500, 503]
    register(stripe_peer, webhook_receiver, ["customer.created"])
    customer = stripe_peer.client.v1.customers.create(params={"name": "retry"})
    (delivery,) = webhook_receiver.wait_for(1)
    assert customer.id.encode() in delivery.body
    stats = emulator.control("GET", "stats")["webhooks"]
    assert stats["failed_attempts"] == 2
    assert stats["delivered"] == 1
    wait_until(
        lambda: stripe_peer.client.v1.events.list().data[0].pending_webhooks == 0,
        "the event has no webhook pending",
    )


def test_webhook_chaos_duplicates_reorders_and_fails_first_attempts(
    stripe_peer: StripePeer, webhook_receiver: Receiver
) -> None:
    emulator = stripe_peer.need_emulator()
    emulator.control("POST", "config", {"webhook_retry_base_seconds": 0.02})
    emulator.control(
        "POST",
        "webhooks/chaos",
        {"duplicate_rate": 1.0, "reorder_window": 6, "fail_first": 1, "seed": 3},
    )
    register(stripe_peer, webhook_receiver, ["customer.created"])
    created = [
        stripe_peer.client.v1.customers.create(params={"name": f"n{n}"}).id for n in range(3)
    ]
    deliveries = webhook_receiver.wait_for(6)
    received = [json.loads(d.body)["data"]["object"]["id"] for d in deliveries]
    assert sorted(received) == sorted(created * 2)  # every event twice, nothing lost
    assert emulator.control("GET", "stats")["webhooks"]["failed_attempts"] == 6


def test_webhook_chaos_drops_and_duplicates_the_next_events_on_demand(
    stripe_peer: StripePeer, webhook_receiver: Receiver
) -> None:
    """``drop_next`` / ``duplicate_next``: a test meets each kind of chaos, whatever the rates
    would have drawn (here none: the rates are 0)."""
    emulator = stripe_peer.need_emulator()
    emulator.control("POST", "webhooks/chaos", {"drop_next": 1, "duplicate_next": 1, "seed": 5})
    register(stripe_peer, webhook_receiver, ["customer.created"])
    created = [
        stripe_peer.client.v1.customers.create(params={"name": f"n{n}"}).id for n in range(3)
    ]
    deliveries = webhook_receiver.wait_for(3)
    received = sorted(json.loads(d.body)["data"]["object"]["id"] for d in deliveries)
    assert received == sorted([created[1], created[1], created[2]])  # the first one lost
    chaos = emulator.control("GET", "stats")["webhooks"]["chaos"]
    assert (chaos["dropped"], chaos["duplicated"]) == (1, 1)
    assert emulator.control("GET", "webhooks/chaos")["chaos"]["drop_next"] == 0


def test_peeking_at_totals_costs_no_request_of_the_limit(stripe_peer: StripePeer) -> None:
    """``/_emulator/peek/totals``: many drafts' totals in one request, outside the limit and
    the counters (a benchmark's way to watch Stripe without taking billsync's share)."""
    emulator = stripe_peer.need_emulator()
    customer = make_customer(stripe_peer)
    first = stripe_peer.client.v1.invoices.add_lines(
        draft(stripe_peer, customer).id, params={"lines": lines(2)}
    )
    second = draft(stripe_peer, customer)
    counted = emulator.control("GET", "stats")["total"]
    emulator.control("POST", "config", {"rate_limit_test": 1})
    peeked = emulator.control(
        "POST", "peek/totals", {"invoices": [first.id, second.id, "in_missing"]}
    )
    assert peeked == {"totals": {first.id: 100 + 101, second.id: 0}}
    assert emulator.control("GET", "stats")["total"] == counted


def test_portal_sessions_need_the_portals_settings_saved(stripe_peer: StripePeer) -> None:
    """In test mode Stripe refuses Customer Portal sessions until the portal's settings are
    saved (a default configuration exists); then sessions use that configuration."""
    emulator = stripe_peer.need_emulator()
    emulator.control("POST", "reset")
    emulator.control("POST", "config", {"rate_limit_test": 0, "rate_limit_endpoint": 0})
    client = stripe_peer.client
    customer = client.v1.customers.create(params={"name": "Portal"})
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.billing_portal.sessions.create(params={"customer": customer.id})
    assert refused.value.http_status == 400
    assert "save your customer portal settings in test mode" in str(refused.value.user_message)
    saved = client.v1.billing_portal.configurations.create(
        params={"features": {"invoice_history": {"enabled": True}}}
    )
    assert saved.is_default
    session = client.v1.billing_portal.sessions.create(params={"customer": customer.id})
    assert session.configuration == saved.id


# --- what changes a total besides its lines: discounts, the customer's balance --------------
#
# Each scenario runs against real Stripe test mode as well: what it asserts is what Stripe
# documents (cited in the emulator's modules: discounts, balances, amounts).

# The last API version whose customer endpoints take `coupon`: 2025-03-31.basil removed it
# (docs.stripe.com/changelog/basil/2025-03-31/deprecate-singular-coupon-promotion-code), and
# nothing replaced it on customers. A request may still ask for the older version.
LEGACY_VERSION = "2025-02-24.acacia"


def give_coupon(peer: StripePeer, customer: stripe.Customer, coupon: stripe.Coupon) -> None:
    """The customer's discount, made from ``coupon``, the one way the API still allows."""
    peer.client.raw_request(
        "post", f"/v1/customers/{customer.id}", coupon=coupon.id, stripe_version=LEGACY_VERSION
    )


def percent_coupon(peer: StripePeer, percent: float) -> stripe.Coupon:
    return peer.client.v1.coupons.create(
        params={"percent_off": percent, "duration": "forever", "name": f"{percent}% off"}
    )


def amount_coupon(peer: StripePeer, amount: int, currency: str = "usd") -> stripe.Coupon:
    return peer.client.v1.coupons.create(
        params={"amount_off": amount, "currency": currency, "duration": "once"}
    )


def usd_draft(
    peer: StripePeer,
    customer: stripe.Customer,
    discounts: Literal[""] | list[InvoiceCreateParamsDiscount] | None = None,
) -> stripe.Invoice:
    """A draft with no lines; ``discounts`` not given: the parameter is not sent."""
    params: InvoiceCreateParams = {
        "customer": customer.id,
        "auto_advance": False,
        "collection_method": "charge_automatically",
        "pending_invoice_items_behavior": "exclude",
        "currency": "usd",
    }
    if discounts is not None:
        params["discounts"] = discounts
    return peer.client.v1.invoices.create(params=params)


def with_lines(peer: StripePeer, invoice: stripe.Invoice, *amounts: int) -> stripe.Invoice:
    return peer.client.v1.invoices.add_lines(
        invoice.id,
        params={
            "lines": [{"amount": amount, "description": f"usage {amount}"} for amount in amounts]
        },
    )


def discount_totals(invoice: stripe.Invoice) -> list[tuple[str, int]]:
    """(discount id, amount) of ``total_discount_amounts``, in order."""
    return [
        (cast(str, part.discount), part.amount) for part in invoice.total_discount_amounts or []
    ]


def line_discounts(invoice: stripe.Invoice) -> list[int]:
    """Each line's discount, all discounts together, in line order."""
    return [sum(part.amount for part in line.discount_amounts or []) for line in invoice.lines.data]


def balance_entries(peer: StripePeer, customer: stripe.Customer) -> list[tuple[str, int, Any]]:
    """(type, amount, invoice) of the customer's balance transactions, oldest first."""
    listed = peer.client.v1.customers.balance_transactions.list(
        customer.id, params={"limit": 100}
    ).data
    return [(entry.type, entry.amount, entry.invoice) for entry in reversed(listed)]


def test_a_customers_discount_is_inherited_unless_discounts_is_empty(
    stripe_peer: StripePeer,
) -> None:
    """A new invoice given no ``discounts`` inherits the customer's discount; ``""`` means
    none (docs.stripe.com/api/invoices/create: "If not specified, inherits the discount from
    the invoice's customer. Pass an empty string to avoid inheriting any discounts"). The SDK
    sends nothing at all for ``discounts=[]``, so an empty list inherits."""
    client = stripe_peer.client
    coupon = percent_coupon(stripe_peer, 20)
    customer = make_customer(stripe_peer)
    give_coupon(stripe_peer, customer, coupon)
    customer = client.v1.customers.retrieve(customer.id)
    assert customer.discount is not None
    assert customer.discount.source.coupon == coupon.id
    assert customer.discount.end is None  # a forever coupon
    discount = customer.discount.id

    inherited = with_lines(stripe_peer, usd_draft(stripe_peer, customer), 1000, 2000)
    assert inherited.discounts == [discount]
    assert (inherited.subtotal, inherited.total, inherited.amount_due) == (3000, 2400, 2400)
    assert discount_totals(inherited) == [(discount, 600)]
    assert line_discounts(inherited) == [200, 400]

    none = with_lines(stripe_peer, usd_draft(stripe_peer, customer, discounts=""), 1000, 2000)
    assert none.discounts == []
    assert (none.subtotal, none.total, none.amount_due) == (3000, 3000, 3000)
    assert discount_totals(none) == []

    empty_list = usd_draft(stripe_peer, customer, discounts=[])
    assert empty_list.discounts == [discount]  # `[]` never reaches Stripe

    renamed = client.v1.customers.update(customer.id, params={"name": "Acme"})
    assert renamed.discount is not None  # an update of the pinned version keeps it
    gone = client.v1.customers.delete_discount(customer.id)
    assert gone.deleted is True
    assert client.v1.customers.retrieve(customer.id).discount is None
    assert usd_draft(stripe_peer, customer).discounts == []
    # An invoice already made keeps the discount it inherited.
    assert client.v1.invoices.retrieve(inherited.id).total == 2400


def test_the_pinned_version_refuses_a_customers_coupon(stripe_peer: StripePeer) -> None:
    """``coupon`` is not a parameter of the customer endpoints since 2025-03-31.basil."""
    coupon = percent_coupon(stripe_peer, 10)
    customer = make_customer(stripe_peer)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        stripe_peer.client.raw_request("post", f"/v1/customers/{customer.id}", coupon=coupon.id)
    assert refused.value.code == "parameter_unknown"
    assert stripe_peer.client.v1.customers.retrieve(customer.id).discount is None


def test_percent_and_amount_discounts_to_the_cent(stripe_peer: StripePeer) -> None:
    """Discounts given on the invoice, in order: a percentage, then an amount. An amount off
    more than what is left takes the total to 0, not below; finalized at 0, the invoice is
    paid at once."""
    client = stripe_peer.client
    customer = make_customer(stripe_peer)
    tenth = percent_coupon(stripe_peer, 10)
    five_dollars = amount_coupon(stripe_peer, 500)
    invoice = usd_draft(
        stripe_peer, customer, discounts=[{"coupon": tenth.id}, {"coupon": five_dollars.id}]
    )
    assert len(invoice.discounts) == 2
    first, second = (cast(str, discount) for discount in invoice.discounts)
    invoice = with_lines(stripe_peer, invoice, 4000, 6000)
    # 10% of 10000, then 500 off the 9000 left.
    assert discount_totals(invoice) == [(first, 1000), (second, 500)]
    assert (invoice.subtotal, invoice.total, invoice.amount_due) == (10000, 8500, 8500)
    assert line_discounts(invoice) == [400 + 200, 600 + 300]
    assert invoice.total_excluding_tax == 8500

    updated = client.v1.invoices.update(invoice.id, params={"discounts": [{"coupon": tenth.id}]})
    assert (updated.total, updated.amount_due) == (9000, 9000)
    cleared = client.v1.invoices.update(invoice.id, params={"discounts": ""})
    assert (cleared.discounts, cleared.total) == ([], 10000)

    covered = with_lines(
        stripe_peer, usd_draft(stripe_peer, customer, discounts=[{"coupon": five_dollars.id}]), 300
    )
    assert discount_totals(covered)[0][1] == 300
    assert (covered.subtotal, covered.total, covered.amount_due) == (300, 0, 0)
    finalized = client.v1.invoices.finalize_invoice(covered.id, params={"auto_advance": False})
    assert (finalized.status, finalized.amount_paid, finalized.amount_remaining) == ("paid", 0, 0)


def test_a_percentage_is_rounded_half_up_once_on_the_invoice(stripe_peer: StripePeer) -> None:
    """Stripe's docs do not say how a percentage discount is rounded; the emulator takes it of
    the discountable total and rounds half up once (``amounts.breakdown``), then spreads it
    over the lines in proportion. Line by line, 12.5% of these lines would round to 437, not
    438: against real Stripe this scenario checks the emulator's choice."""
    customer = make_customer(stripe_peer)
    eighth = percent_coupon(stripe_peer, 12.5)
    invoice = usd_draft(stripe_peer, customer, discounts=[{"coupon": eighth.id}])
    invoice = with_lines(stripe_peer, invoice, 1001, 2003, 499)
    assert invoice.subtotal == 3503
    assert discount_totals(invoice)[0][1] == 438  # 437.875
    assert invoice.total == 3503 - 438
    assert sum(line_discounts(invoice)) == 438


def test_a_credit_balance_reduces_what_finalization_charges(stripe_peer: StripePeer) -> None:
    """A credit on the customer's balance is applied when the invoice is finalized: the draft
    shows the current balance as ``starting_balance`` and no ``ending_balance``; finalized, the
    invoice owes the rest, the balance is used up (``applied_to_invoice``), and voiding it gives
    the credit back (``unapplied_from_invoice``)."""
    client = stripe_peer.client
    customer = make_customer(stripe_peer)
    credit = client.v1.customers.balance_transactions.create(
        customer.id,
        params={
            "amount": -400,
            "currency": "usd",
            "description": "goodwill",
            "metadata": {"n": "1"},
        },
    )
    assert (credit.type, credit.amount, credit.ending_balance) == ("adjustment", -400, -400)
    assert client.v1.customers.retrieve(customer.id).balance == -400

    draft_invoice = with_lines(stripe_peer, usd_draft(stripe_peer, customer), 1000)
    assert (draft_invoice.starting_balance, draft_invoice.ending_balance) == (-400, None)
    assert (draft_invoice.total, draft_invoice.amount_due) == (1000, 600)
    assert client.v1.customers.retrieve(customer.id).balance == -400  # nothing applied yet

    finalized = client.v1.invoices.finalize_invoice(
        draft_invoice.id, params={"auto_advance": False}
    )
    assert finalized.status == "open"
    assert (finalized.starting_balance, finalized.ending_balance) == (-400, 0)
    assert (finalized.total, finalized.amount_due, finalized.amount_remaining) == (1000, 600, 600)
    assert client.v1.customers.retrieve(customer.id).balance == 0
    assert balance_entries(stripe_peer, customer) == [
        ("adjustment", -400, None), ("applied_to_invoice", 400, finalized.id)
    ]  # fmt: skip

    voided = client.v1.invoices.void_invoice(finalized.id)
    assert voided.status == "void"
    assert client.v1.customers.retrieve(customer.id).balance == -400
    assert balance_entries(stripe_peer, customer)[-1] == (
        "unapplied_from_invoice", -400, finalized.id
    )  # fmt: skip

    paid = client.v1.invoices.pay(
        client.v1.invoices.finalize_invoice(
            with_lines(stripe_peer, usd_draft(stripe_peer, customer), 1000).id,
            params={"auto_advance": False},
        ).id
    )
    assert (paid.status, paid.amount_paid, paid.ending_balance) == ("paid", 600, 0)


def test_a_credit_larger_than_the_total_pays_the_invoice(stripe_peer: StripePeer) -> None:
    """What the invoice does not use stays on the balance: ``ending_balance``."""
    client = stripe_peer.client
    customer = make_customer(stripe_peer)
    client.v1.customers.balance_transactions.create(
        customer.id, params={"amount": -1500, "currency": "usd"}
    )
    invoice = with_lines(stripe_peer, usd_draft(stripe_peer, customer), 1000)
    finalized = client.v1.invoices.finalize_invoice(invoice.id, params={"auto_advance": False})
    assert (finalized.status, finalized.amount_due, finalized.amount_paid) == ("paid", 0, 0)
    assert (finalized.starting_balance, finalized.ending_balance) == (-1500, -500)
    assert client.v1.customers.retrieve(customer.id).balance == -500


def test_an_amount_under_the_minimum_charge_moves_to_the_next_invoice(
    stripe_peer: StripePeer,
) -> None:
    """USD 0.30 is under Stripe's USD 0.50 minimum charge: finalized, the invoice is paid
    without a charge and the 30 cents go to the customer's balance (``invoice_too_small``),
    which the next invoice collects (docs.stripe.com/currencies#minimum-and-maximum-charge-
    amounts; docs.stripe.com/billing/customer/balance)."""
    client = stripe_peer.client
    customer = make_customer(stripe_peer)
    small = with_lines(stripe_peer, usd_draft(stripe_peer, customer), 30)
    assert small.amount_due == 30  # a draft is charged nothing yet
    small = client.v1.invoices.finalize_invoice(small.id, params={"auto_advance": False})
    assert small.status == "paid"
    assert (small.total, small.amount_due, small.amount_paid, small.amount_remaining) == (
        30, 0, 0, 0
    )  # fmt: skip
    assert (small.starting_balance, small.ending_balance) == (0, 30)
    assert client.v1.customers.retrieve(customer.id).balance == 30
    assert balance_entries(stripe_peer, customer) == [("invoice_too_small", 30, small.id)]
    carried = client.v1.customers.balance_transactions.list(
        customer.id, params={"invoice": small.id}
    ).data
    assert [(entry.type, entry.ending_balance) for entry in carried] == [("invoice_too_small", 30)]
    if not stripe_peer.is_real:
        assert "invoice.paid" in event_types(stripe_peer, small.id)

    following = with_lines(stripe_peer, usd_draft(stripe_peer, customer), 1000)
    assert (following.starting_balance, following.amount_due) == (30, 1030)
    following = client.v1.invoices.finalize_invoice(following.id, params={"auto_advance": False})
    assert (following.total, following.amount_due) == (1000, 1030)
    assert (following.starting_balance, following.ending_balance) == (30, 0)
    assert client.v1.customers.retrieve(customer.id).balance == 0
    assert balance_entries(stripe_peer, customer)[-1] == (
        "applied_to_invoice", -30, following.id
    )  # fmt: skip
    assert client.v1.invoices.pay(following.id).amount_paid == 1030


def test_coupons_are_created_read_and_deleted(stripe_peer: StripePeer) -> None:
    """A deleted coupon can no longer be redeemed; a discount made from it still applies."""
    client = stripe_peer.client
    coupon = client.v1.coupons.create(
        params={
            "amount_off": 250,
            "currency": "usd",
            "duration": "repeating",
            "duration_in_months": 3,
            "metadata": {"campaign": "spring"},
        }
    )
    assert (coupon.amount_off, coupon.percent_off, coupon.currency) == (250, None, "usd")
    assert (coupon.duration, coupon.duration_in_months, coupon.valid) == ("repeating", 3, True)
    assert client.v1.coupons.retrieve(coupon.id).to_dict()["metadata"] == {"campaign": "spring"}
    customer = make_customer(stripe_peer)
    kept = with_lines(
        stripe_peer, usd_draft(stripe_peer, customer, discounts=[{"coupon": coupon.id}]), 1000
    )
    assert client.v1.coupons.retrieve(coupon.id).times_redeemed == 1
    assert client.v1.coupons.delete(coupon.id).deleted is True
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.coupons.retrieve(coupon.id)
    assert missing.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as refused:
        usd_draft(stripe_peer, customer, discounts=[{"coupon": coupon.id}])
    assert refused.value.code == "resource_missing"
    assert client.v1.invoices.retrieve(kept.id).total == 750
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.coupons.create(params={"percent_off": 10, "amount_off": 5, "currency": "usd"})


def test_a_repeating_discount_ends_with_its_months(stripe_peer: StripePeer) -> None:
    """A customer's discount from a repeating coupon ends ``duration_in_months`` after it
    starts; invoices created later inherit nothing."""
    emulator = stripe_peer.need_emulator()
    client = stripe_peer.client
    coupon = client.v1.coupons.create(
        params={"percent_off": 50, "duration": "repeating", "duration_in_months": 1}
    )
    customer = make_customer(stripe_peer)
    give_coupon(stripe_peer, customer, coupon)
    discount = client.v1.customers.retrieve(customer.id).discount
    assert discount is not None
    assert discount.end is not None
    assert 28 * 86400 <= discount.end - discount.start <= 31 * 86400
    assert len(usd_draft(stripe_peer, customer).discounts) == 1
    emulator.control("POST", "clock", {"advance": discount.end - discount.start})
    assert client.v1.customers.retrieve(customer.id).discount is None
    assert usd_draft(stripe_peer, customer).discounts == []
    assert "customer.discount.deleted" in [
        event.type for event in client.v1.events.list(params={"limit": 10}).data
    ]


# --- the arithmetic behind those totals, on its own -------------------------------------------

AMOUNT = st.integers(min_value=-5_000, max_value=50_000)


@st.composite
def invoices_to_discount(draw: st.DrawFn) -> tuple[list[amounts.Line], list[amounts.Reduction]]:
    lines = [
        amounts.Line(f"il_{index}", draw(AMOUNT), draw(st.booleans()))
        for index in range(draw(st.integers(min_value=0, max_value=8)))
    ]
    reductions = [
        amounts.Reduction(f"di_{index}", percent_off=Decimal(draw(st.integers(1, 1000))) / 10)
        if draw(st.booleans())
        else amounts.Reduction(f"di_{index}", amount_off=draw(st.integers(1, 60_000)))
        for index in range(draw(st.integers(min_value=0, max_value=3)))
    ]
    return lines, reductions


@pytest.mark.unit
@given(invoices_to_discount())
def test_discounts_add_up_to_the_cent(
    invoice: tuple[list[amounts.Line], list[amounts.Reduction]],
) -> None:
    """Each discount is the sum of its lines' shares; no line gives more than its amount; only
    discountable lines give; the total never goes below 0 because of discounts."""
    lines, reductions = invoice
    result = amounts.breakdown(lines, reductions)
    assert result.subtotal == sum(line.amount for line in lines)
    for discount, total in result.per_discount:
        shares = [dict(parts)[discount] for parts in result.per_line.values()]
        assert sum(shares) == total
        assert all(share >= 0 for share in shares)
    for line in lines:
        if line.discountable:
            given_up = sum(amount for _, amount in result.per_line[line.id])
            assert 0 <= given_up <= max(line.amount, 0)
        else:
            assert line.id not in result.per_line
    assert result.total >= min(result.subtotal, 0)


@pytest.mark.unit
@given(AMOUNT, st.integers(min_value=-20_000, max_value=20_000), st.sampled_from([0, 30, 50]))
def test_finalization_moves_every_cent_between_invoice_and_balance(
    total: int, balance: int, minimum: int
) -> None:
    """What the invoice does not charge stays on (or goes to) the balance: amount due plus
    ending balance is always total plus starting balance, and nothing under the minimum is
    charged."""
    settled = amounts.settle(total, balance, minimum)
    assert settled.amount_due + settled.ending_balance == total + balance
    assert settled.amount_due == 0 or settled.amount_due >= minimum
    assert settled.starting_balance + settled.applied + settled.carried == settled.ending_balance
    assert settled.amount_due >= 0
