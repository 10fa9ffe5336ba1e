"""Minimum commitments on SQLite and PostgreSQL, against the emulator over HTTP: set through
``PATCH /v1/accounts/{id}``; a period that used less is topped up by one line when its usage
becomes final (it enters review), synced like any line, so Stripe's invoice totals the
minimum; the customer sees "committed / used so far" from the first day; verify checks it."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from billsync.api.app import create_app
from billsync.bootstrap import Billsync
from billsync.clock import ManualClock
from billsync.core.periods import PeriodStatus
from billsync.db.tables import audit_log, lines
from billsync.repositories import sync as sync_repository
from billsync.services.verify import COMMITMENT_DIFFERS, Verifier
from billsync.stripe_gateway import StripeGateway
from tests.conftest import T0
from tests.factories import create_account, event
from tests.stripe_peer import EMULATOR_KEY, RunningEmulator
from tests.test_lifecycle import AFTER_GRACE, make

NOVEMBER = date(2026, 11, 1)
IP_HOURS = "ip.ipv4.hours"  # $0.00274 an hour


def commitment_lines(billsync: Billsync) -> dict[tuple[str, date], tuple[int, str]]:
    with billsync.database.read() as connection:
        rows = connection.execute(
            select(lines.c.account_id, lines.c.period_start, lines.c.amount, lines.c.grouping)
            .where(lines.c.metric == "commitment")
        ).all()  # fmt: skip
    return {(r[0], r[1]): (r[2], r[3]["description"]) for r in rows}


def invoice_total(billsync: Billsync, emulator: RunningEmulator, account: str) -> Any:
    gateway = StripeGateway(EMULATOR_KEY, api_base=emulator.url, timeout=5, max_network_retries=0)
    with billsync.database.read() as connection:
        period = sync_repository.get_period(connection, account, NOVEMBER)
    assert period is not None
    assert period.stripe_invoice_id is not None
    return gateway.get_invoice(period.stripe_invoice_id, with_lines=False)


def test_a_minimum_is_set_shown_and_audited(billsync: Billsync, client: TestClient) -> None:
    create_account(billsync)
    answer = client.patch("/v1/accounts/acme", json={"minimum_amount": "500.00"})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["minimum_amount"], answer.json()["minimum_amount_from"]) == (
        "500.00",
        "2026-11-01",
    )
    later = client.patch(
        "/v1/accounts/acme", json={"minimum_amount": "750", "minimum_amount_from": "2026-12-01"}
    )
    assert later.json()["minimum_amount"] == "500.00"  # still November's
    with billsync.database.read() as connection:
        audit = connection.execute(
            select(audit_log.c.detail).where(audit_log.c.action == "account.update")
        ).scalars().all()  # fmt: skip
    assert [(d["minimum_amount"], d["minimum_amount_from"]) for d in audit] == [
        ("500.00", "2026-11-01"),
        ("750.00", "2026-12-01"),
    ]
    assert (
        client.patch("/v1/accounts/acme", json={"minimum_amount": None}).json()["minimum_amount"]
        is None
    )


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"minimum_amount": "5.001"}, 422, "invalid_request"),
        ({"minimum_amount": "-5"}, 422, "invalid_request"),
        ({"minimum_amount": "five"}, 422, "invalid_request"),
        ({"minimum_amount": "5", "minimum_amount_from": "2026-10-01"}, 409, "period_not_open"),
        (
            {"minimum_amount": "5", "minimum_amount_from": "2026-12-02"},
            409, "not_a_period_start",
        ),
    ],
)  # fmt: skip
def test_a_minimum_that_cannot_be_set_is_refused(
    billsync: Billsync, client: TestClient, body: dict[str, Any], status: int, code: str
) -> None:
    create_account(billsync)
    answer = client.patch("/v1/accounts/acme", json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
    assert client.get("/v1/accounts/acme").json()["minimum_amount"] is None


def test_a_minimum_is_an_exact_amount_of_the_account_currency(
    billsync: Billsync, client: TestClient
) -> None:
    create_account(billsync, "tanaka", currency="jpy")
    answer = client.patch("/v1/accounts/tanaka", json={"minimum_amount": "5000.5"})
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "invalid_amount"
    assert "JPY amounts are whole numbers" in answer.json()["error"]["message"]
    assert (
        client.patch("/v1/accounts/tanaka", json={"minimum_amount": "5000"}).json()[
            "minimum_amount"
        ]
        == "5000"
    )


def test_a_period_under_its_minimum_is_topped_up_when_it_closes_and_stripe_agrees(
    billsync: Billsync, running_emulator: RunningEmulator, clock: ManualClock, client: TestClient
) -> None:
    sync, lifecycle = make(billsync, running_emulator, clock)
    create_account(billsync, "acme")
    create_account(billsync, "globex")
    for account in ("acme", "globex"):
        assert (
            client.patch(f"/v1/accounts/{account}", json={"minimum_amount": "50"}).status_code
            == 200
        )
    # acme uses $2.74 of its $50; globex $54.80, more than its minimum.
    billsync.ingest.ingest(
        [event("acme", IP_HOURS, "1000", at=T0), event("globex", IP_HOURS, "20000", at=T0)]
    )
    shown = client.get("/v1/accounts/acme/billing").json()["commitment"]
    assert shown == {"minimum_amount": 5000, "used": 274, "shortfall": 4726}
    token = client.post("/v1/accounts/acme/customer-tokens", json={}).json()["token"]
    with TestClient(create_app(billsync)) as customer:
        page = customer.get(f"/billing/acme?token={token}").text
    assert "Minimum commitment: $50.00 committed, $2.74 used so far" in page
    assert "$47.26 to go" in page
    assert commitment_lines(billsync) == {}  # nothing booked while the period takes usage
    clock.set(AFTER_GRACE)
    lifecycle.advance()
    booked = commitment_lines(billsync)
    assert booked == {
        ("acme", NOVEMBER): (4726, "Minimum commitment: 50.00 USD committed, 2.74 USD used")
    }
    # The line is on Stripe's draft like any other: the invoice totals the minimum.
    assert sync.sync_account("acme").ok
    assert invoice_total(billsync, running_emulator, "acme").total == 5000
    assert invoice_total(billsync, running_emulator, "globex").total == 5480
    report = Verifier(
        billsync.database,
        StripeGateway(EMULATOR_KEY, api_base=running_emulator.url, timeout=5),
        catalog=billsync.catalog,
    ).verify()
    assert report.violations == []
    # Late usage of November now lands on December: the top-up stays as booked.
    billsync.ingest.ingest([event("acme", IP_HOURS, "1000", at=T0 + timedelta(hours=1))])
    assert commitment_lines(billsync) == booked


def test_approving_a_closing_period_books_its_top_up_once(
    billsync: Billsync, running_emulator: RunningEmulator, clock: ManualClock, client: TestClient
) -> None:
    _, lifecycle = make(billsync, running_emulator, clock)
    create_account(billsync)
    client.patch("/v1/accounts/acme", json={"minimum_amount": "10"})
    billsync.ingest.ingest([event("acme", IP_HOURS, "1000", at=T0)])
    clock.set(AFTER_GRACE - timedelta(hours=1, minutes=30))  # Dec 1, 00:30: in its grace
    lifecycle.advance()  # ended, in its grace: closing
    with billsync.database.read() as connection:
        period = sync_repository.get_period(connection, "acme", NOVEMBER)
    assert period is not None
    assert period.status is PeriodStatus.CLOSING
    assert lifecycle.approve_now("acme", NOVEMBER) is True
    assert commitment_lines(billsync) == {
        ("acme", NOVEMBER): (726, "Minimum commitment: 10.00 USD committed, 2.74 USD used")
    }
    assert invoice_total(billsync, running_emulator, "acme").total == 1000


def test_verify_reports_a_top_up_that_differs_from_the_rule(
    billsync: Billsync, running_emulator: RunningEmulator, clock: ManualClock, client: TestClient
) -> None:
    _, lifecycle = make(billsync, running_emulator, clock)
    create_account(billsync)
    client.patch("/v1/accounts/acme", json={"minimum_amount": "50"})
    billsync.ingest.ingest([event("acme", IP_HOURS, "1000", at=T0)])
    clock.set(AFTER_GRACE)
    lifecycle.advance()
    with billsync.database.transaction() as connection:
        connection.execute(update(lines).where(lines.c.metric == "commitment").values(amount=5000))
    report = Verifier(billsync.database, None, catalog=billsync.catalog).verify()
    found = [v for v in report.violations if v.kind == COMMITMENT_DIFFERS]
    assert len(found) == 1
    assert "tops up 50.00 to its minimum commitment; the rule gives 47.26" in found[0].detail
