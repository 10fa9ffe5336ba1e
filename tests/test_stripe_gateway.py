"""The Stripe gateway against the emulator over real HTTP: every port method, idempotency, and
how each failure Stripe (or the network) can produce reaches billsync as a StripeFailure."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import stripe

from billsync import stripe_gateway
from billsync.stripe_gateway import STRIPE_API_VERSION, StripeGateway
from billsync.sync.budget import CircuitBreaker, EndpointPacer, Lane, RateBudget
from billsync.sync.guard import StripeGuard, guarded
from billsync.sync.port import (
    LineChange,
    NewLine,
    RemoteInvoice,
    StripeAmbiguous,
    StripeFailure,
    StripeRateLimited,
    StripeRejected,
    StripeUnavailable,
)
from tests.ports import free_port
from tests.stripe_peer import EMULATOR_KEY, RunningEmulator
from tests.waiting import wait_until

ADD_LINES = "POST /v1/invoices/{id}/add_lines"
LIST_LINES = "GET /v1/invoices/{id}/lines"
LIST_INVOICES = "GET /v1/invoices"
PERIOD_START = 1_793_491_200  # 2026-11-01T00:00:00Z
PERIOD_END = 1_796_083_199  # 2026-11-30T23:59:59Z


def make_gateway(emulator: RunningEmulator, **options: Any) -> StripeGateway:
    return StripeGateway(EMULATOR_KEY, api_base=emulator.url, **options)


def new_lines(count: int, first: int = 0) -> list[NewLine]:
    return [
        NewLine(
            line_id=index,
            amount=100 + index,
            description=f"usage line {index}",
            period_start=PERIOD_START,
            period_end=PERIOD_END,
            metadata={"billsync_line_id": str(index)},
        )
        for index in range(first, first + count)
    ]


def make_draft(
    gateway: StripeGateway, *, customer: str | None = None, period: str = "2026-11-01"
) -> RemoteInvoice:
    if customer is None:
        customer = gateway.create_customer(
            name="Acme Cloud",
            email="billing@acme.test",
            metadata={"billsync_account": "acme"},
            idempotency_key=f"customer:acme:{time.monotonic_ns()}",
        )
    return gateway.create_draft_invoice(
        customer=customer,
        currency="usd",
        description=f"Usage {period}",
        metadata={"billsync_period": period},
        idempotency_key=f"draft:{customer}:{period}",
    )


def inject(emulator: RunningEmulator, kind: str, count: int, **extra: Any) -> None:
    emulator.control(
        "POST", "faults", {"endpoint": ADD_LINES, "kind": kind, "count": count, **extra}
    )


def requests_to(emulator: RunningEmulator, endpoint: str) -> int:
    count: int = emulator.control("GET", "stats")["by_endpoint"].get(endpoint, 0)
    return count


def lines_on(emulator: RunningEmulator, invoice_id: str) -> int:
    """How many lines the emulator holds for the invoice (seen past the gateway)."""
    return len(emulator.emulator.state.invoice_lines[invoice_id])


def wait_for_lines(emulator: RunningEmulator, invoice_id: str, expected: int) -> None:
    wait_until(lambda: lines_on(emulator, invoice_id) == expected, "the write lands")


@pytest.mark.unit
def test_the_pinned_api_version_is_the_sdks() -> None:
    assert stripe.api_version == STRIPE_API_VERSION


# --- the happy path of every method ---------------------------------------------------------


def test_create_customer_and_draft_invoice(running_emulator: RunningEmulator) -> None:
    gateway = make_gateway(running_emulator)
    customer = gateway.create_customer(
        name="Acme Cloud",
        email="billing@acme.test",
        metadata={"billsync_account": "acme"},
        idempotency_key="customer:acme",
    )
    assert customer.startswith("cus_")
    stored = running_emulator.emulator.state.customers[customer]
    assert (stored["name"], stored["email"]) == ("Acme Cloud", "billing@acme.test")
    assert stored["metadata"] == {"billsync_account": "acme"}
    no_email = gateway.create_customer(
        name="Nobody", email=None, metadata={}, idempotency_key="customer:nobody"
    )
    assert running_emulator.emulator.state.customers[no_email]["email"] is None

    invoice = make_draft(gateway, customer=customer)
    assert invoice.id.startswith("in_")
    assert invoice.customer == customer
    assert invoice.status == "draft"
    assert invoice.currency == "usd"
    assert (invoice.total, invoice.amount_due, invoice.amount_paid) == (0, 0, 0)
    assert invoice.number is None
    assert invoice.metadata == {"billsync_period": "2026-11-01"}
    assert invoice.lines == ()
    draft = running_emulator.emulator.state.invoices[invoice.id]
    assert draft["auto_advance"] is False
    assert draft["collection_method"] == "charge_automatically"
    assert draft["description"] == "Usage 2026-11-01"


def test_get_invoice_with_lines_returns_all_fifteen(running_emulator: RunningEmulator) -> None:
    gateway = make_gateway(running_emulator)
    invoice = make_draft(gateway)
    added = gateway.add_lines(invoice.id, new_lines(15), idempotency_key="add:1")
    assert added.total == sum(100 + index for index in range(15))
    assert added.lines == ()  # a write's answer embeds only a first page: not passed on

    fetched = gateway.get_invoice(invoice.id, with_lines=True)
    assert fetched.total == added.total
    assert len(fetched.lines) == 15
    assert [line.metadata for line in fetched.lines] == [
        {"billsync_line_id": str(index)} for index in range(15)
    ]
    assert [line.amount for line in fetched.lines] == [100 + index for index in range(15)]
    assert [line.description for line in fetched.lines] == [f"usage line {i}" for i in range(15)]
    assert all(line.currency == "usd" for line in fetched.lines)
    assert all(line.line_item_id.startswith("il_") for line in fetched.lines)
    items = [line.invoice_item_id for line in fetched.lines]
    assert all(item is not None and item.startswith("ii_") for item in items)
    assert len(set(items)) == 15
    state = running_emulator.emulator.state
    assert state.invoice_items[str(items[0])]["period"] == {
        "start": PERIOD_START,
        "end": PERIOD_END,
    }
    assert gateway.get_invoice(invoice.id, with_lines=False).lines == ()


def test_lines_are_paged_only_when_the_invoice_has_more(
    running_emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = make_gateway(running_emulator)
    invoice = make_draft(gateway)
    gateway.add_lines(invoice.id, new_lines(10), idempotency_key="add:10")
    assert len(gateway.get_invoice(invoice.id, with_lines=True).lines) == 10
    assert requests_to(running_emulator, LIST_LINES) == 0  # all 10 came embedded

    gateway.add_lines(invoice.id, new_lines(5, first=10), idempotency_key="add:5")
    monkeypatch.setattr(stripe_gateway, "PAGE_LIMIT", 4)
    lines = gateway.get_invoice(invoice.id, with_lines=True).lines
    assert [line.metadata["billsync_line_id"] for line in lines] == [str(i) for i in range(15)]
    assert requests_to(running_emulator, LIST_LINES) == 4  # 4 + 4 + 4 + 3


def test_update_and_remove_lines(running_emulator: RunningEmulator) -> None:
    gateway = make_gateway(running_emulator)
    invoice = make_draft(gateway)
    gateway.add_lines(invoice.id, new_lines(3), idempotency_key="add:1")
    first, second, third = gateway.get_invoice(invoice.id, with_lines=True).lines

    updated = gateway.update_lines(
        invoice.id,
        [
            LineChange(first.line_item_id, 5000, "usage line 0 (v2)", {"billsync_version": "2"}),
            LineChange(third.line_item_id, 7, "usage line 2 (v2)", {"billsync_version": "2"}),
        ],
        idempotency_key="update:1",
    )
    assert updated.total == 5000 + 101 + 7
    lines = gateway.get_invoice(invoice.id, with_lines=True).lines
    assert [line.amount for line in lines] == [5000, 101, 7]
    assert [line.description for line in lines] == [
        "usage line 0 (v2)",
        "usage line 1",
        "usage line 2 (v2)",
    ]
    assert lines[0].metadata == {"billsync_line_id": "0", "billsync_version": "2"}
    assert lines[0].invoice_item_id == first.invoice_item_id

    removed = gateway.remove_lines(invoice.id, [second.line_item_id], idempotency_key="remove:1")
    assert removed.total == 5007
    remaining = gateway.get_invoice(invoice.id, with_lines=True).lines
    assert [line.line_item_id for line in remaining] == [first.line_item_id, third.line_item_id]
    assert running_emulator.emulator.state.invoice_items[str(second.invoice_item_id)]["deleted"]


def test_empty_edits_make_no_write(running_emulator: RunningEmulator) -> None:
    gateway = make_gateway(running_emulator)
    invoice = make_draft(gateway)
    assert gateway.add_lines(invoice.id, [], idempotency_key="add:none").id == invoice.id
    assert gateway.update_lines(invoice.id, [], idempotency_key="update:none").total == 0
    assert gateway.remove_lines(invoice.id, [], idempotency_key="remove:none").total == 0
    by_endpoint = running_emulator.control("GET", "stats")["by_endpoint"]
    assert not any("_lines" in endpoint for endpoint in by_endpoint)


def test_finalize(running_emulator: RunningEmulator) -> None:
    gateway = make_gateway(running_emulator)
    invoice = make_draft(gateway)
    gateway.add_lines(invoice.id, new_lines(2), idempotency_key="add:1")
    final = gateway.finalize(invoice.id, auto_advance=False, idempotency_key="finalize:1")
    assert final.status == "open"
    assert final.number is not None
    assert final.hosted_invoice_url is not None
    assert final.invoice_pdf is not None
    assert final.total == final.amount_due == final.amount_remaining == 201
    assert final.amount_paid == 0
    assert running_emulator.emulator.state.invoices[invoice.id]["auto_advance"] is False
    with pytest.raises(StripeRejected) as refused:
        gateway.add_lines(invoice.id, new_lines(1), idempotency_key="add:late")
    assert refused.value.status == 400


def test_delete_draft(running_emulator: RunningEmulator) -> None:
    gateway = make_gateway(running_emulator)
    invoice = make_draft(gateway)
    gateway.add_lines(invoice.id, new_lines(2), idempotency_key="add:1")
    gateway.delete_draft(invoice.id, idempotency_key="delete:1")
    with pytest.raises(StripeRejected) as missing:
        gateway.get_invoice(invoice.id, with_lines=False)
    assert (missing.value.status, missing.value.code) == (404, "resource_missing")
    found = gateway.find_draft_invoices(
        customer=invoice.customer, metadata_key="billsync_period", value="2026-11-01"
    )
    assert found == []


def test_find_draft_invoices_filters_on_metadata_across_pages(
    running_emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = make_gateway(running_emulator)
    november = make_draft(gateway, period="2026-11-01")
    customer = november.customer
    for period in ("2026-09-01", "2026-10-01", "2026-12-01"):
        make_draft(gateway, customer=customer, period=period)
    finalized = gateway.create_draft_invoice(
        customer=customer,
        currency="usd",
        description="Usage 2026-11-01, finalized",
        metadata={"billsync_period": "2026-11-01"},
        idempotency_key="draft:finalized",
    )
    gateway.finalize(finalized.id, auto_advance=False, idempotency_key="finalize:1")
    make_draft(gateway, period="2026-11-01")  # another customer's draft
    monkeypatch.setattr(stripe_gateway, "PAGE_LIMIT", 2)

    found = gateway.find_draft_invoices(
        customer=customer, metadata_key="billsync_period", value="2026-11-01"
    )
    assert [invoice.id for invoice in found] == [november.id]
    assert found[0].status == "draft"
    assert found[0].metadata == {"billsync_period": "2026-11-01"}
    assert requests_to(running_emulator, LIST_INVOICES) == 2  # 4 drafts, 2 a page
    assert (
        gateway.find_draft_invoices(customer=customer, metadata_key="billsync_period", value="x")
        == []
    )


# --- idempotency -------------------------------------------------------------------------


def test_the_same_key_twice_has_one_effect(running_emulator: RunningEmulator) -> None:
    gateway = make_gateway(running_emulator)
    state = running_emulator.emulator.state
    first = gateway.create_customer(
        name="Acme", email=None, metadata={}, idempotency_key="customer:once"
    )
    again = gateway.create_customer(
        name="Acme", email=None, metadata={}, idempotency_key="customer:once"
    )
    assert first == again
    assert len(state.customers) == 1

    invoice = make_draft(gateway, customer=first)
    assert make_draft(gateway, customer=first).id == invoice.id
    assert len(state.invoices) == 1

    once = gateway.add_lines(invoice.id, new_lines(3), idempotency_key="add:once")
    twice = gateway.add_lines(invoice.id, new_lines(3), idempotency_key="add:once")
    assert once.total == twice.total == 303
    assert lines_on(running_emulator, invoice.id) == 3
    assert gateway.get_invoice(invoice.id, with_lines=False).total == 303
    assert running_emulator.control("GET", "stats")["idempotent_replays"] == 3


def test_a_key_reused_with_other_parameters_is_rejected(running_emulator: RunningEmulator) -> None:
    gateway = make_gateway(running_emulator)
    invoice = make_draft(gateway)
    gateway.add_lines(invoice.id, new_lines(2), idempotency_key="add:1")
    with pytest.raises(StripeRejected) as refused:
        gateway.add_lines(invoice.id, new_lines(3), idempotency_key="add:1")
    assert (refused.value.status, refused.value.code) == (400, "idempotency_error")
    assert "add:1" in refused.value.message
    assert lines_on(running_emulator, invoice.id) == 2


# --- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["500", "503"])
def test_persistent_server_errors_leave_a_write_undetermined_and_a_read_unavailable(
    running_emulator: RunningEmulator, kind: str
) -> None:
    """Stripe can answer 5xx after an endpoint started (and stores that answer under the
    key): a write answered 5xx may have happened — read before writing again. A read answered
    5xx simply failed."""
    gateway = make_gateway(running_emulator, max_network_retries=1)
    invoice = make_draft(gateway)
    inject(running_emulator, kind, count=5)
    with pytest.raises(StripeAmbiguous) as failed:
        gateway.add_lines(invoice.id, new_lines(2), idempotency_key="add:1")
    assert failed.value.status == int(kind)
    assert failed.value.answered
    assert requests_to(running_emulator, ADD_LINES) == 2  # the first try and the SDK's retry
    assert lines_on(running_emulator, invoice.id) == 0
    running_emulator.control(
        "POST", "faults", {"endpoint": "GET /v1/invoices/{id}", "kind": kind, "count": 5}
    )
    with pytest.raises(StripeUnavailable):
        gateway.get_invoice(invoice.id, with_lines=False)


def test_a_500_stored_under_the_key_is_replayed_to_every_retry_with_it(
    running_emulator: RunningEmulator,
) -> None:
    """As Stripe does: the endpoint started and failed; the 500 is the key's result for 24 h,
    whatever the retries — only a new key runs the write."""
    gateway = make_gateway(running_emulator, max_network_retries=2)
    invoice = make_draft(gateway)
    inject(running_emulator, "500_stored", count=1)
    with pytest.raises(StripeAmbiguous):
        gateway.add_lines(invoice.id, new_lines(2), idempotency_key="add:1")
    assert running_emulator.control("GET", "stats")["idempotent_replays"] == 2
    with pytest.raises(StripeAmbiguous):
        gateway.add_lines(invoice.id, new_lines(2), idempotency_key="add:1")
    assert lines_on(running_emulator, invoice.id) == 0
    gateway.add_lines(invoice.id, new_lines(2), idempotency_key="add:1:retry-1")
    assert lines_on(running_emulator, invoice.id) == 2


def test_server_errors_within_the_retry_budget_succeed_once(
    running_emulator: RunningEmulator,
) -> None:
    gateway = make_gateway(running_emulator, max_network_retries=2)
    invoice = make_draft(gateway)
    inject(running_emulator, "500", count=2)
    added = gateway.add_lines(invoice.id, new_lines(2), idempotency_key="add:1")
    assert added.total == 201
    assert requests_to(running_emulator, ADD_LINES) == 3
    assert lines_on(running_emulator, invoice.id) == 2


def test_rate_limit_is_rate_limited(running_emulator: RunningEmulator) -> None:
    gateway = make_gateway(running_emulator, max_network_retries=2)
    invoice = make_draft(gateway)
    inject(running_emulator, "429", count=3)
    with pytest.raises(StripeRateLimited) as limited:
        gateway.add_lines(invoice.id, new_lines(1), idempotency_key="add:1")
    assert (limited.value.code, limited.value.status) == ("rate_limit", 429)
    assert requests_to(running_emulator, ADD_LINES) == 1  # the SDK does not retry rate_limit
    assert lines_on(running_emulator, invoice.id) == 0


def test_lock_timeout_is_rate_limited_and_retried_by_the_sdk(
    running_emulator: RunningEmulator,
) -> None:
    invoice = make_draft(make_gateway(running_emulator))
    inject(running_emulator, "lock_timeout", count=1)
    with pytest.raises(StripeRateLimited) as limited:
        make_gateway(running_emulator, max_network_retries=0).add_lines(
            invoice.id, new_lines(1), idempotency_key="add:1"
        )
    assert (limited.value.code, limited.value.status) == ("lock_timeout", 429)
    assert lines_on(running_emulator, invoice.id) == 0

    inject(running_emulator, "lock_timeout", count=1)  # Stripe-Should-Retry: the SDK retries
    retrying = make_gateway(running_emulator, max_network_retries=1)
    assert retrying.add_lines(invoice.id, new_lines(1), idempotency_key="add:1").total == 100
    assert lines_on(running_emulator, invoice.id) == 1


def test_latency_within_the_timeout_is_no_failure(running_emulator: RunningEmulator) -> None:
    gateway = make_gateway(running_emulator, timeout=5.0, max_network_retries=0)
    invoice = make_draft(gateway)
    inject(running_emulator, "latency", count=1, seconds=0.2)
    assert gateway.add_lines(invoice.id, new_lines(1), idempotency_key="add:1").total == 100


def test_a_hang_past_the_timeout_is_ambiguous_and_the_write_lands(
    running_emulator: RunningEmulator,
) -> None:
    gateway = make_gateway(running_emulator, timeout=0.5, max_network_retries=0)
    invoice = make_draft(gateway)
    inject(running_emulator, "hang", count=1, seconds=1.5)
    with pytest.raises(StripeAmbiguous):
        gateway.add_lines(invoice.id, new_lines(2), idempotency_key="add:1")
    wait_for_lines(running_emulator, invoice.id, 2)
    assert gateway.get_invoice(invoice.id, with_lines=False).total == 201


def test_a_retry_meeting_the_hung_write_in_flight_is_ambiguous(
    running_emulator: RunningEmulator,
) -> None:
    """The SDK's retry reuses the key while the first request still runs: Stripe answers 409
    (idempotency key in use). That is no proof that nothing was written."""
    gateway = make_gateway(running_emulator, timeout=0.5, max_network_retries=1)
    invoice = make_draft(gateway)
    # The retry comes after the 0.5 s timeout and the SDK's 0.5 s backoff: well within 2.5 s.
    inject(running_emulator, "hang", count=1, seconds=2.5)
    with pytest.raises(StripeAmbiguous) as unsure:
        gateway.add_lines(invoice.id, new_lines(2), idempotency_key="add:1")
    assert unsure.value.status == 409
    wait_for_lines(running_emulator, invoice.id, 2)
    assert gateway.add_lines(invoice.id, new_lines(2), idempotency_key="add:1").total == 201
    assert lines_on(running_emulator, invoice.id) == 2


def test_a_response_dropped_after_commit_is_ambiguous_and_the_write_landed(
    running_emulator: RunningEmulator,
) -> None:
    gateway = make_gateway(running_emulator, max_network_retries=0)
    invoice = make_draft(gateway)
    inject(running_emulator, "drop_after_commit", count=1)
    with pytest.raises(StripeAmbiguous):
        gateway.add_lines(invoice.id, new_lines(2), idempotency_key="add:1")
    wait_for_lines(running_emulator, invoice.id, 2)
    assert gateway.get_invoice(invoice.id, with_lines=False).total == 201


def test_a_dropped_response_is_replayed_by_the_sdks_retry(
    running_emulator: RunningEmulator,
) -> None:
    gateway = make_gateway(running_emulator, max_network_retries=2)
    invoice = make_draft(gateway)
    inject(running_emulator, "drop_after_commit", count=1)
    added = gateway.add_lines(invoice.id, new_lines(2), idempotency_key="add:1")
    assert added.total == 201
    assert requests_to(running_emulator, ADD_LINES) == 2
    assert running_emulator.control("GET", "stats")["idempotent_replays"] == 1
    assert lines_on(running_emulator, invoice.id) == 2


def test_an_unknown_line_is_rejected(running_emulator: RunningEmulator) -> None:
    gateway = make_gateway(running_emulator)
    invoice = make_draft(gateway)
    gateway.add_lines(invoice.id, new_lines(1), idempotency_key="add:1")
    (line,) = gateway.get_invoice(invoice.id, with_lines=True).lines
    assert line.invoice_item_id is not None
    with pytest.raises(StripeRejected) as refused:
        gateway.update_lines(  # an ii_ id where Stripe wants the line's il_ id
            invoice.id,
            [LineChange(line.invoice_item_id, 1, "wrong id", {})],
            idempotency_key="update:1",
        )
    # An id in the body Stripe cannot find: 400 resource_missing (404 is for the URL's object).
    assert (refused.value.status, refused.value.code) == (400, "resource_missing")
    assert refused.value.missing
    assert line.invoice_item_id in refused.value.message
    assert gateway.get_invoice(invoice.id, with_lines=False).total == 100


def test_a_bad_api_key_is_rejected(running_emulator: RunningEmulator) -> None:
    gateway = StripeGateway("sk_test_bad", api_base=running_emulator.url)
    with pytest.raises(StripeRejected) as refused:
        gateway.create_customer(name="x", email=None, metadata={}, idempotency_key="customer:x")
    assert refused.value.status == 401


def test_nobody_listening_is_ambiguous() -> None:
    gateway = StripeGateway(
        EMULATOR_KEY, api_base=f"http://127.0.0.1:{free_port()}", max_network_retries=0
    )
    with pytest.raises(StripeAmbiguous):
        gateway.get_invoice("in_missing", with_lines=True)


def test_calls_outside_syncs_spend_the_same_budget(running_emulator: RunningEmulator) -> None:
    """Webhook re-reads, the events sweep and the portal go through the process's guard."""
    seen: list[tuple[str, object]] = []
    endpoints: list[str | None] = []

    class Recording:
        @contextmanager
        def call(self, lane: int, endpoint: str | None = None) -> Iterator[None]:
            seen.append(("before", lane))
            endpoints.append(endpoint)
            try:
                yield
            except StripeFailure as failure:
                seen.append(("after", type(failure).__name__))
                raise
            seen.append(("after", None))

    gateway = StripeGateway(EMULATOR_KEY, api_base=running_emulator.url, max_network_retries=0)
    reads = guarded(gateway, Recording(), Lane.INTERVAL)
    assert reads.list_events(created_gte=0).events == ()
    with pytest.raises(StripeFailure):
        reads.get_invoice("in_missing", with_lines=False)
    assert seen == [
        ("before", Lane.INTERVAL), ("after", None),
        ("before", Lane.INTERVAL), ("after", "StripeRejected"),
    ]  # fmt: skip
    # Each call names the endpoint Stripe counts it against (its own per-endpoint limit).
    assert endpoints == ["GET /v1/events", "GET /v1/invoices/{id}"]


def test_calls_paced_per_endpoint_stay_within_stripes_endpoint_limit(
    running_emulator: RunningEmulator,
) -> None:
    """With the emulator limiting one endpoint to 5/s as Stripe limits each (25/s by default),
    a burst through the guard's per-endpoint pacing is never refused, while the same burst
    without it is: pacing spaces the calls, so a slower machine only spaces them more."""
    running_emulator.control("POST", "config", {"rate_limit_endpoint": 5})
    gateway = StripeGateway(EMULATOR_KEY, api_base=running_emulator.url, max_network_retries=0)
    paced = guarded(
        gateway,
        StripeGuard(RateBudget(1000.0, burst=100), CircuitBreaker(), endpoints=EndpointPacer(5.0)),
        Lane.INTERVAL,
    )
    for _ in range(12):
        paced.list_events(created_gte=0)
    assert running_emulator.control("GET", "stats")["rate_limited"] == 0
    unpaced = guarded(
        gateway, StripeGuard(RateBudget(1000.0, burst=100), CircuitBreaker()), Lane.INTERVAL
    )

    def burst() -> None:
        for _ in range(12):
            unpaced.list_events(created_gte=0)

    with pytest.raises(StripeRateLimited):
        burst()
