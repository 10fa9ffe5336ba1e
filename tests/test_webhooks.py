"""Webhooks end to end: the emulator delivers signed events to billsync over HTTP; billsync
stores each once, processes them in any order, mirrors invoices, and sweeps what was lost."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from billsync.api.app import create_app
from billsync.bootstrap import Billsync, build
from billsync.clock import ManualClock
from billsync.core.catalog import Catalog
from billsync.core.webhook_signature import compute
from billsync.db.database import Database
from billsync.repositories import problems, webhooks
from billsync.repositories import sync as sync_repository
from billsync.sync.port import StripeUnavailable
from tests.conftest import T0, TEST_TOKEN, emulator_settings
from tests.factories import create_account, event
from tests.ports import free_port
from tests.stripe_peer import EMULATOR_KEY, RunningEmulator
from tests.waiting import BACKSTOP_SECONDS, wait_until

SECRET = "whsec_test_billsync_0123456789"


@dataclass
class Served:
    billsync: Billsync
    url: str
    clock: ManualClock


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:
        pass


@pytest.fixture
def served(
    tmp_path: Path,
    database: Database,
    example_catalog: Catalog,
    running_emulator: RunningEmulator,
) -> Iterator[Served]:
    """billsync's API on a real port, on the emulator's clock (signatures are timed)."""
    clock = ManualClock(T0)
    running_emulator.control("POST", "clock", {"set": T0.timestamp()})
    settings = emulator_settings(tmp_path, running_emulator, stripe_webhook_secrets=SECRET)
    billsync = build(settings, clock=clock, database=database, catalog=example_catalog)
    port = free_port()
    server = _Server(
        uvicorn.Config(create_app(billsync), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, "billsync's API starts")
    yield Served(billsync, f"http://127.0.0.1:{port}", clock)
    server.should_exit = True
    thread.join(timeout=10)
    billsync.close()


def register(emulator: RunningEmulator, served: Served) -> str:
    """A webhook endpoint in the emulator pointing at billsync; returns its secret."""
    response = httpx.post(
        f"{emulator.url}/v1/webhook_endpoints",
        data={"url": f"{served.url}/v1/stripe/webhook", "enabled_events[0]": "*"},
        headers={"Authorization": f"Bearer {EMULATOR_KEY}"},
    )
    response.raise_for_status()
    secret: str = response.json()["secret"]
    served.billsync.webhooks.secrets.append(secret)
    return secret


def inbox(billsync: Billsync) -> dict[str, int]:
    with billsync.database.read() as connection:
        return webhooks.counts(connection)


def emulator_events(emulator: RunningEmulator) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{emulator.url}/v1/events", params={"limit": 100},
        headers={"Authorization": f"Bearer {EMULATOR_KEY}"},
    )  # fmt: skip
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def bill_and_pay(served: Served, emulator: RunningEmulator, method: str = "pm_card_visa") -> str:
    """Usage → sync → finalize → payment: the invoice events billsync must hear."""
    billsync = served.billsync
    assert billsync.sync is not None
    create_account(billsync)
    billsync.ingest.ingest([event("acme", "ip.ipv4.hours", "1000", at=T0)])
    assert billsync.sync.service.sync_account("acme").ok
    with billsync.database.read() as connection:
        account = sync_repository.get_account(connection, "acme")
        period = sync_repository.periods_to_sync(connection, "acme")[0]
    assert account is not None
    assert period.stripe_invoice_id is not None
    headers = {"Authorization": f"Bearer {EMULATOR_KEY}"}
    httpx.post(
        f"{emulator.url}/v1/customers/{account.stripe_customer_id}",
        data={"invoice_settings[default_payment_method]": method}, headers=headers,
    ).raise_for_status()  # fmt: skip
    httpx.post(
        f"{emulator.url}/v1/invoices/{period.stripe_invoice_id}/finalize",
        data={"auto_advance": "true"}, headers=headers,
    ).raise_for_status()  # fmt: skip
    return period.stripe_invoice_id


def mirror(billsync: Billsync, invoice_id: str) -> dict[str, Any]:
    with billsync.database.read() as connection:
        found = webhooks.get_mirror(connection, invoice_id)
    assert found is not None
    return found


def test_signed_deliveries_are_stored_once_and_mirror_the_invoice(
    served: Served, running_emulator: RunningEmulator
) -> None:
    register(running_emulator, served)
    invoice_id = bill_and_pay(served, running_emulator)
    sent = emulator_events(running_emulator)
    wait_until(lambda: inbox(served.billsync)["received"] == len(sent))
    report = served.billsync.processor.process()
    assert report.failed == 0
    assert report.handled == len(sent)
    view = mirror(served.billsync, invoice_id)
    assert view["status"] == "paid"
    assert view["amount_paid"] == 274
    assert view["number"]
    assert view["hosted_invoice_url"].endswith(invoice_id)
    assert view["account_id"] == "acme"
    assert inbox(served.billsync)["pending"] == 0


def test_duplicates_and_shuffled_order_converge_on_the_final_state(
    served: Served, running_emulator: RunningEmulator
) -> None:
    secret = register(running_emulator, served)
    running_emulator.control(
        "POST", "webhooks/chaos", {"duplicate_rate": 1.0, "reorder_window": 4, "seed": 11}
    )
    invoice_id = bill_and_pay(served, running_emulator)
    running_emulator.control("POST", "webhooks/chaos", {"flush": True})
    sent = emulator_events(running_emulator)
    wait_until(lambda: inbox(served.billsync)["received"] == len(sent))
    # A third copy of every event, sent by hand with a fresh signature.
    for sent_event in sent:
        body = json.dumps(sent_event).encode()
        stamp = int(served.clock.now().timestamp())
        answer = httpx.post(
            f"{served.url}/v1/stripe/webhook", content=body,
            headers={"Stripe-Signature": f"t={stamp},v1={compute(body, secret, stamp)}"},
        )  # fmt: skip
        assert answer.status_code == 200
        assert answer.json()["duplicate"] is True
    assert inbox(served.billsync)["received"] == len(sent)
    served.billsync.processor.process()
    assert mirror(served.billsync, invoice_id)["status"] == "paid"


def test_bad_signatures_replays_and_malformed_payloads_are_refused(served: Served) -> None:
    body = json.dumps(
        {"id": "evt_x", "object": "event", "type": "invoice.paid", "created": int(T0.timestamp()),
         "livemode": False, "data": {"object": {"id": "in_x"}}}
    ).encode()  # fmt: skip
    now = int(served.clock.now().timestamp())
    cases = {
        "no header": {},
        "wrong secret": {"Stripe-Signature": f"t={now},v1={compute(body, 'whsec_other', now)}"},
        "replayed": {"Stripe-Signature": f"t={now - 600},v1={compute(body, SECRET, now - 600)}"},
        "garbage": {"Stripe-Signature": "nonsense"},
    }
    for name, headers in cases.items():
        answer = httpx.post(f"{served.url}/v1/stripe/webhook", content=body, headers=headers)
        assert answer.status_code == 400, name
        assert answer.json()["error"]["code"] == "invalid_signature", name
    not_an_event = b'{"hello": "world"}'
    signed = {"Stripe-Signature": f"t={now},v1={compute(not_an_event, SECRET, now)}"}
    answer = httpx.post(f"{served.url}/v1/stripe/webhook", content=not_an_event, headers=signed)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_payload"
    assert inbox(served.billsync)["received"] == 0


def test_unknown_types_are_stored_and_ignored(served: Served) -> None:
    body = json.dumps(
        {"id": "evt_unknown1", "object": "event", "type": "radar.early_fraud_warning.created",
         "created": int(T0.timestamp()), "livemode": False, "data": {"object": {"id": "issfr_1"}}}
    ).encode()  # fmt: skip
    now = int(served.clock.now().timestamp())
    answer = httpx.post(
        f"{served.url}/v1/stripe/webhook", content=body,
        headers={"Stripe-Signature": f"t={now},v1={compute(body, SECRET, now)}"},
    )  # fmt: skip
    assert answer.status_code == 200
    report = served.billsync.processor.process()
    assert report.outcomes == {"ignored: not a type billsync follows": 1}


def test_a_failing_handler_is_retried_later(
    served: Served, running_emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(running_emulator, served)
    invoice_id = bill_and_pay(served, running_emulator)
    sent = emulator_events(running_emulator)
    wait_until(lambda: inbox(served.billsync)["received"] == len(sent))
    original = served.billsync.processor.handle
    calls = {"n": 0}

    def flaky(connection: Any, inbox_event: Any, *rest: Any) -> str:
        calls["n"] += 1
        if inbox_event.type == "invoice.paid" and calls["n"] < 50:
            calls["n"] = 50
            raise RuntimeError("database hiccup")
        return original(connection, inbox_event, *rest)

    monkeypatch.setattr(served.billsync.processor, "handle", flaky)
    first = served.billsync.processor.process()
    assert first.failed == 1
    assert inbox(served.billsync)["pending"] == 1
    assert served.billsync.processor.process().handled == 0  # not before its retry time
    served.clock.advance(timedelta(seconds=6))
    assert served.billsync.processor.process().handled == 1
    assert mirror(served.billsync, invoice_id)["status"] == "paid"


def test_lost_webhooks_are_recovered_by_the_sweep(
    served: Served, running_emulator: RunningEmulator
) -> None:
    register(running_emulator, served)
    running_emulator.control("POST", "webhooks/chaos", {"drop_rate": 1.0})
    invoice_id = bill_and_pay(served, running_emulator)
    assert inbox(served.billsync)["received"] == 0
    assert served.billsync.sync is not None
    added = served.billsync.sync.sweep.run()
    assert added == len(emulator_events(running_emulator))
    assert served.billsync.sync.sweep.run() == 0  # nothing new the second time
    served.billsync.processor.process()
    assert mirror(served.billsync, invoice_id)["status"] == "paid"


def test_the_sweep_reads_every_event_since_its_cursor_however_many_arrived(
    served: Served, running_emulator: RunningEmulator
) -> None:
    """Webhooks down while 1,050 events happened: the sweep pages (Stripe lists newest first,
    100 a page) all the way back to its cursor — none skipped — and a sweep cut short by
    Stripe failing part-way leaves the cursor where it was, so the next one reads them all."""
    billsync = served.billsync
    assert billsync.sync is not None
    with httpx.Client(headers={"Authorization": f"Bearer {EMULATOR_KEY}"}) as stripe_api:
        for n in range(1050):  # each one a customer.created event
            stripe_api.post(
                f"{running_emulator.url}/v1/customers", data={"name": f"c{n}"}
            ).raise_for_status()
    # Cut short: the third page fails, the SDK's retries too.
    running_emulator.control(
        "POST", "faults", {"endpoint": "GET /v1/events", "kind": "503", "count": 10, "skip": 2}
    )
    with billsync.database.read() as connection:
        before = webhooks.get_cursor(connection, "stripe_events_created")
    with pytest.raises(StripeUnavailable):
        billsync.sync.sweep.run()
    assert inbox(billsync)["received"] == 200  # the pages read before the failure are kept
    with billsync.database.read() as connection:
        assert webhooks.get_cursor(connection, "stripe_events_created") == before
    running_emulator.control("DELETE", "faults")
    assert billsync.sync.sweep.run() == 850
    assert inbox(billsync)["received"] == 1050
    with billsync.database.read() as connection:
        assert webhooks.get_cursor(connection, "stripe_events_created") != before
    assert billsync.sync.sweep.run() == 0


def test_a_failed_payment_is_a_problem_until_paid(
    served: Served, running_emulator: RunningEmulator
) -> None:
    register(running_emulator, served)
    invoice_id = bill_and_pay(served, running_emulator, method="pm_card_chargeDeclined")
    wait_until(lambda: inbox(served.billsync)["received"] == len(emulator_events(running_emulator)))
    served.billsync.processor.process()
    with served.billsync.database.read() as connection:
        open_ones = problems.open_problems(connection, "acme")
    assert [p.kind for p in open_ones] == ["payment_failed"]
    assert mirror(served.billsync, invoice_id)["last_payment_error"]
    httpx.post(
        f"{running_emulator.url}/v1/invoices/{invoice_id}/pay",
        data={"payment_method": "pm_card_visa"},
        headers={"Authorization": f"Bearer {EMULATOR_KEY}"},
    ).raise_for_status()
    wait_until(lambda: inbox(served.billsync)["received"] == len(emulator_events(running_emulator)))
    served.billsync.processor.process()
    with served.billsync.database.read() as connection:
        assert problems.open_problems(connection, "acme") == []
    assert mirror(served.billsync, invoice_id)["status"] == "paid"


def test_deleted_customers_and_invoice_items_are_drift(
    served: Served, running_emulator: RunningEmulator
) -> None:
    register(running_emulator, served)
    billsync = served.billsync
    assert billsync.sync is not None
    create_account(billsync)
    billsync.ingest.ingest([event("acme", "ip.ipv4.hours", "10", at=T0)])
    assert billsync.sync.service.sync_account("acme").ok
    with billsync.database.read() as connection:
        account = sync_repository.get_account(connection, "acme")
        line = sync_repository.lines_of(connection, "acme", [T0.date().replace(day=1)])[0]
    assert account is not None
    headers = {"Authorization": f"Bearer {EMULATOR_KEY}"}
    httpx.delete(f"{running_emulator.url}/v1/invoiceitems/{line.stripe_invoice_item_id}",
                 headers=headers).raise_for_status()  # fmt: skip
    httpx.delete(f"{running_emulator.url}/v1/customers/{account.stripe_customer_id}",
                 headers=headers).raise_for_status()  # fmt: skip
    wait_until(lambda: inbox(billsync)["received"] == len(emulator_events(running_emulator)))
    billsync.processor.process()
    with billsync.database.read() as connection:
        kinds = sorted(p.kind for p in problems.open_problems(connection, "acme"))
    assert kinds == ["customer_deleted", "removed_in_stripe"]


class HeldStripe:
    """The processor's gateway, with each invoice read held open until the test lets it go:
    while it is held, the test looks at what the database allows."""

    def __init__(self, real: Any, database: Database) -> None:
        self.real = real
        self.in_flight = threading.Event()
        self.release = threading.Event()
        self.open_transactions_seen: list[int] = []
        self.open_transactions = 0
        original = database.transaction

        @contextmanager
        def counted() -> Iterator[Any]:
            with original() as connection:
                self.open_transactions += 1
                try:
                    yield connection
                finally:
                    self.open_transactions -= 1

        database.transaction = counted  # type: ignore[method-assign]

    def get_invoice(self, invoice_id: str, *, with_lines: bool) -> Any:
        self.open_transactions_seen.append(self.open_transactions)
        self.in_flight.set()
        self.release.wait(timeout=2 * BACKSTOP_SECONDS)
        return self.real.get_invoice(invoice_id, with_lines=with_lines)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def events_of_one_second(served: Served, emulator: RunningEmulator) -> str:
    """An invoice's events, all of the same second (the emulator's clock stands still), in the
    inbox: after the first, each must be settled by reading the invoice from Stripe."""
    register(emulator, served)
    invoice_id = bill_and_pay(served, emulator)
    wait_until(lambda: inbox(served.billsync)["received"] == len(emulator_events(emulator)))
    return invoice_id


def test_stripe_is_read_with_no_transaction_open_and_ingest_goes_on_meanwhile(
    served: Served, running_emulator: RunningEmulator
) -> None:
    """Settling two events of one second reads the invoice from Stripe. That read happens
    before the write transaction opens: on SQLite an open write transaction holds the only
    writer lock, and usage arriving meanwhile would wait for the Stripe round trip."""
    invoice_id = events_of_one_second(served, running_emulator)
    billsync = served.billsync
    held = HeldStripe(billsync.processor.gateway, billsync.database)
    billsync.processor.gateway = held
    processing = threading.Thread(target=billsync.processor.process, daemon=True)
    processing.start()
    try:
        assert held.in_flight.wait(BACKSTOP_SECONDS), "no event was settled by reading Stripe"
        try:
            answer = httpx.post(
                f"{served.url}/v1/usage",
                json={"events": [event("acme", "ip.ipv4.hours", "5", at=T0)]},
                headers={"Authorization": f"Bearer {TEST_TOKEN}"},
                timeout=BACKSTOP_SECONDS,
            )
        except httpx.TimeoutException:
            pytest.fail("ingest waited for the webhook processor's Stripe read")
        assert answer.status_code == 200, answer.text
        assert answer.json()["accepted"] == 1
    finally:
        held.release.set()
        processing.join(BACKSTOP_SECONDS)
    assert not processing.is_alive()
    assert held.open_transactions_seen, "Stripe was never read"
    assert set(held.open_transactions_seen) == {0}, "a transaction was open during a Stripe read"
    assert inbox(billsync)["pending"] == 0
    assert mirror(billsync, invoice_id)["status"] == "paid"


def test_events_settled_by_reading_stripe_keep_when_the_invoice_was_finalized_and_paid(
    served: Served, running_emulator: RunningEmulator
) -> None:
    """Events of one second are settled with Stripe's copy of the invoice; that copy carries
    its status transitions, so the mirror (and the customer's page) knows when it was paid."""
    invoice_id = events_of_one_second(served, running_emulator)
    report = served.billsync.processor.process()
    assert report.failed == 0
    view = mirror(served.billsync, invoice_id)
    assert view["status"] == "paid"
    assert view["finalized_at"] is not None
    assert view["paid_at"] is not None
    assert view["paid_at"] >= view["finalized_at"]


def test_an_event_applied_during_the_stripe_read_is_not_rolled_back(
    served: Served, running_emulator: RunningEmulator
) -> None:
    """While the processor reads Stripe for one event, a newer one is applied to the mirror
    (another process, say). The write transaction checks again and leaves the newer one."""
    invoice_id = events_of_one_second(served, running_emulator)
    billsync = served.billsync
    held = HeldStripe(billsync.processor.gateway, billsync.database)
    billsync.processor.gateway = held
    processing = threading.Thread(target=billsync.processor.process, daemon=True)
    processing.start()
    try:
        assert held.in_flight.wait(BACKSTOP_SECONDS), "no event was settled by reading Stripe"
        later = int(T0.timestamp()) + 60
        newer = {**mirror(billsync, invoice_id), "status": "void", "last_event_id": "evt_later",
                 "last_event_created": later}  # fmt: skip
        newer.pop("stripe_invoice_id")
        writer = threading.Thread(target=_put_mirror, args=(billsync, invoice_id, newer))
        writer.start()
        writer.join(BACKSTOP_SECONDS)
        assert not writer.is_alive(), "the mirror could not be written during the Stripe read"
    finally:
        held.release.set()
        processing.join(BACKSTOP_SECONDS)
    view = mirror(billsync, invoice_id)
    assert (view["status"], view["last_event_id"]) == ("void", "evt_later")
    assert inbox(billsync)["pending"] == 0


def _put_mirror(billsync: Billsync, invoice_id: str, values: dict[str, Any]) -> None:
    with billsync.database.transaction() as connection:
        webhooks.put_mirror(connection, invoice_id, values)


def test_the_sweep_skips_an_event_the_stores_cannot_keep_and_goes_on(
    served: Served, running_emulator: RunningEmulator
) -> None:
    """An event carrying a NUL character, refused as a delivery, is skipped by the sweep too
    (PostgreSQL cannot store it): on both stores the sweep keeps the others and moves on."""
    billsync = served.billsync
    assert billsync.sync is not None
    with httpx.Client(headers={"Authorization": f"Bearer {EMULATOR_KEY}"}) as stripe_api:
        for name in ("before", "a\x00b", "after"):
            stripe_api.post(
                f"{running_emulator.url}/v1/customers", data={"name": name}
            ).raise_for_status()
    assert billsync.sync.sweep.run() == 2
    assert inbox(billsync)["received"] == 2
    assert billsync.sync.sweep.run() == 0
