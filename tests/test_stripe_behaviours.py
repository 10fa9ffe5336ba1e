"""Stripe's behaviours billsync depends on, as scenarios against the Stripe peer: the emulator by
default, real Stripe test mode when BILLSYNC_TEST_STRIPE_KEY is set — so that the emulator is
checked against Stripe wherever a key is at hand, and billsync's assumptions with it."""

from __future__ import annotations

import pytest
import stripe

from tests.stripe_peer import StripePeer
from tests.test_emulator_scenarios import draft, lines, make_customer


def test_a_missing_object_is_a_404_in_the_path_and_a_400_in_the_body(
    stripe_peer: StripePeer,
) -> None:
    """Decided on the error's code (resource_missing), not its status: Stripe answers 404 for
    the object of the URL and 400 for an id among the parameters (docs.stripe.com/error-codes,
    resource_missing)."""
    client = stripe_peer.client
    with pytest.raises(stripe.InvalidRequestError) as in_path:
        client.v1.invoices.retrieve("in_doesNotExist000000")
    assert (in_path.value.http_status, in_path.value.code) == (404, "resource_missing")
    invoice = draft(stripe_peer, make_customer(stripe_peer))
    with pytest.raises(stripe.InvalidRequestError) as in_body:
        client.v1.invoices.update_lines(
            invoice.id, {"lines": [{"id": "il_doesNotExist0000000", "amount": 5}]}
        )
    assert (in_body.value.http_status, in_body.value.code) == (400, "resource_missing")


def test_deleting_a_draft_twice_answers_the_second_with_resource_missing(
    stripe_peer: StripePeer,
) -> None:
    """Stripe does not replay a DELETE under its idempotency key: the repeat of a delete whose
    answer was lost is an error, and billsync counts it as the delete done."""
    client = stripe_peer.client
    invoice = draft(stripe_peer, make_customer(stripe_peer))
    options: stripe.RequestOptions = {"idempotency_key": f"billsync:delete:{invoice.id}"}
    assert client.v1.invoices.delete(invoice.id, options=options).deleted
    with pytest.raises(stripe.InvalidRequestError) as again:
        client.v1.invoices.delete(invoice.id, options=options)
    assert again.value.code == "resource_missing"


def test_a_lines_period_end_is_kept_as_sent_inclusive(stripe_peer: StripePeer) -> None:
    """``lines[][period][end]`` is inclusive (docs.stripe.com/api/invoices/add_lines): billsync
    sends a period's last second, and Stripe keeps it."""
    client = stripe_peer.client
    invoice = draft(stripe_peer, make_customer(stripe_peer))
    start, end = 1793491200, 1796083199  # 2026-11-01T00:00:00Z … 2026-11-30T23:59:59Z
    line = lines(1)[0]
    line["period"] = {"start": start, "end": end}
    added = client.v1.invoices.add_lines(invoice.id, {"lines": [line]})
    (item,) = added.lines.data
    assert (item.period.start, item.period.end) == (start, end)


def test_an_invoice_custom_field_holds_140_characters_and_refuses_more(
    stripe_peer: StripePeer,
) -> None:
    """The link to the detailed statement goes in a custom field when it fits — "The value of
    the custom field. This may be up to 140 characters" (docs.stripe.com/api/invoices/create
    #create_invoice-custom_fields) — and in the footer otherwise (stripe_gateway)."""
    customer = make_customer(stripe_peer)
    link = "https://platform.example/billing/" + "a" * (140 - 33)
    assert len(link) == 140
    invoice = stripe_peer.client.v1.invoices.create(
        params={
            "customer": customer.id,
            "auto_advance": False,
            "currency": "usd",
            "custom_fields": [{"name": "Detailed statement", "value": link}],
        }
    )
    assert [(f.name, f.value) for f in invoice.custom_fields or []] == [
        ("Detailed statement", link)
    ]
    with pytest.raises(stripe.InvalidRequestError) as refused:
        stripe_peer.client.v1.invoices.create(
            params={
                "customer": customer.id,
                "auto_advance": False,
                "currency": "usd",
                "custom_fields": [{"name": "Detailed statement", "value": link + "a"}],
            }
        )
    assert refused.value.http_status == 400
