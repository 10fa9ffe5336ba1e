"""Prepaid credit grants on SQLite and PostgreSQL, against the emulator over HTTP: granted
through the API (audited), drawn down when a period's usage is final — the grant expiring first
first, never more than the period's total — as one credit line synced like any other; expiry
audited once; the balance on the customer's page; verify checks the draw-down."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from billsync.api.app import create_app
from billsync.bootstrap import Billsync
from billsync.clock import ManualClock
from billsync.core.credits import Grant, draw_down
from billsync.db.tables import audit_log, credit_grants, lines
from billsync.repositories import sync as sync_repository
from billsync.services.verify import CREDIT_DIFFERS, Verifier
from billsync.stripe_gateway import StripeGateway
from billsync.sync.lanes import CLOSING
from tests.conftest import T0
from tests.factories import create_account, event
from tests.stripe_peer import EMULATOR_KEY, RunningEmulator
from tests.test_lifecycle import AFTER_GRACE, make

NOVEMBER = date(2026, 11, 1)
IP_HOURS = "ip.ipv4.hours"  # $0.00274 an hour
NEW_YEAR = "2027-01-01T00:00:00Z"


def grant(client: TestClient, amount: str, expires: str, **extra: Any) -> Any:
    body = {"amount": amount, "currency": "usd", "expires_at": expires, **extra}
    return client.post("/v1/accounts/acme/credit-grants", json=body)


def at(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


# --- the rule ------------------------------------------------------------------------------


def test_the_grant_expiring_first_is_drawn_first_and_never_more_than_the_total() -> None:
    grants = [
        Grant(1, 500, 500, at("2027-03-01"), at("2026-10-01")),
        Grant(2, 100, 100, at("2026-12-31"), at("2026-11-02")),
        Grant(3, 900, 900, at("2026-11-01"), at("2026-09-01")),  # expired as November began
        Grant(4, 300, 0, at("2026-12-01"), at("2026-09-01")),  # spent
    ]
    november = at("2026-11-01")
    assert draw_down(grants, november, 274) == [(2, 100), (1, 174)]
    assert draw_down(grants, november, 10_000) == [(2, 100), (1, 500)]
    assert draw_down(grants, november, 0) == []
    assert draw_down(grants, november, -50) == []  # an invoice is never negative
    assert draw_down(grants, at("2026-10-01"), 1000) == [(3, 900), (2, 100)]


# --- the API --------------------------------------------------------------------------------


def test_a_grant_is_created_listed_and_audited(billsync: Billsync, client: TestClient) -> None:
    create_account(billsync)
    answer = grant(client, "100.00", "2027-06-30T00:00:00Z", reason="launch promotion")
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert (body["amount"], body["remaining"], body["expired"], body["uses"]) == (
        10000,
        10000,
        False,
        [],
    )
    assert body["created_by"] == "api"
    listed = client.get("/v1/accounts/acme/credit-grants").json()
    assert listed["balance"] == 10000
    assert [g["id"] for g in listed["data"]] == [body["id"]]
    with billsync.database.read() as connection:
        audit = connection.execute(
            select(audit_log.c.reason, audit_log.c.detail).where(
                audit_log.c.action == "credit_grant.created"
            )
        ).all()
    assert audit[0][0] == "launch promotion"
    assert audit[0][1]["amount"] == "100.00"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"amount": "10", "currency": "eur", "expires_at": NEW_YEAR}, 422, "currency_mismatch"),
        ({"amount": "10", "currency": "usd", "expires_at": "2026-11-01T00:00:00Z"},
         422, "invalid_expiry"),
        ({"amount": "0", "currency": "usd", "expires_at": NEW_YEAR}, 422, "invalid_amount"),
        ({"amount": "1.234", "currency": "usd", "expires_at": NEW_YEAR}, 422, "invalid_request"),
    ],
)  # fmt: skip
def test_a_grant_that_cannot_be_made_is_refused(
    billsync: Billsync, client: TestClient, body: dict[str, Any], status: int, code: str
) -> None:
    create_account(billsync)
    answer = client.post("/v1/accounts/acme/credit-grants", json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
    assert client.get("/v1/accounts/acme/credit-grants").json() == {"data": [], "balance": 0}
    assert client.post(
        "/v1/accounts/nobody/credit-grants", json={**body, "currency": "usd"}
    ).status_code in (404, 422)
    assert client.get("/v1/accounts/nobody/credit-grants").status_code == 404


# --- the draw-down ---------------------------------------------------------------------------


def test_a_closing_period_draws_its_credit_down_and_stripe_agrees(
    billsync: Billsync, running_emulator: RunningEmulator, clock: ManualClock, client: TestClient
) -> None:
    sync, lifecycle = make(billsync, running_emulator, clock)
    create_account(billsync)
    later = grant(client, "2.00", "2027-03-01T00:00:00Z").json()
    sooner = grant(client, "1.00", "2026-12-31T00:00:00Z").json()
    billsync.ingest.ingest([event("acme", IP_HOURS, "1000", at=T0)])  # $2.74
    token = client.post("/v1/accounts/acme/customer-tokens", json={}).json()["token"]
    with TestClient(create_app(billsync)) as customer:
        page = customer.get(f"/billing/acme?token={token}").text
    assert "Prepaid credit left: $3.00" in page
    clock.set(AFTER_GRACE)
    lifecycle.advance()
    with billsync.database.read() as connection:
        credit = connection.execute(
            select(lines.c.amount, lines.c.grouping).where(lines.c.metric == "prepaid_credit")
        ).one()
    assert credit[0] == -274
    assert credit[1]["description"] == "Prepaid credit applied: 2.74 USD"
    grants = {g["id"]: g for g in client.get("/v1/accounts/acme/credit-grants").json()["data"]}
    assert grants[sooner["id"]]["remaining"] == 0  # expires first: drawn first
    assert grants[later["id"]]["remaining"] == 26
    assert grants[later["id"]]["uses"] == [{"period_start": "2026-11-01", "amount": 174}]
    assert sync.sync_account("acme").ok
    gateway = StripeGateway(EMULATOR_KEY, api_base=running_emulator.url, timeout=5)
    with billsync.database.read() as connection:
        period = sync_repository.get_period(connection, "acme", NOVEMBER)
    assert period is not None
    assert period.stripe_invoice_id is not None
    assert gateway.get_invoice(period.stripe_invoice_id, with_lines=False).total == 0
    assert Verifier(billsync.database, gateway, catalog=billsync.catalog).verify().violations == []
    # The sooner grant's expiry passes: audited once; the later one keeps its 26 cents.
    clock.set(at("2026-12-31") + timedelta(hours=1))
    lifecycle.advance()
    lifecycle.advance()
    with billsync.database.read() as connection:
        expired = connection.execute(
            select(audit_log.c.detail).where(audit_log.c.action == "credit_grant.expired")
        ).scalars().all()  # fmt: skip
    assert expired == []  # the sooner one had nothing left
    assert client.get("/v1/accounts/acme/credit-grants").json()["balance"] == 26


def test_expiry_with_credit_left_is_audited_once(
    billsync: Billsync, running_emulator: RunningEmulator, clock: ManualClock, client: TestClient
) -> None:
    _, lifecycle = make(billsync, running_emulator, clock)
    create_account(billsync)
    grant(client, "5.00", "2026-11-20T00:00:00Z")
    clock.set(at("2026-11-21"))
    lifecycle.advance()
    lifecycle.advance()
    with billsync.database.read() as connection:
        expired = connection.execute(
            select(audit_log.c.detail).where(audit_log.c.action == "credit_grant.expired")
        ).scalars().all()  # fmt: skip
    assert len(expired) == 1
    assert expired[0]["remaining"] == 500
    listed = client.get("/v1/accounts/acme/credit-grants").json()
    assert listed["balance"] == 0
    assert listed["data"][0]["expired"] is True


def test_verify_reports_credit_that_does_not_add_up(
    billsync: Billsync, running_emulator: RunningEmulator, clock: ManualClock, client: TestClient
) -> None:
    _, lifecycle = make(billsync, running_emulator, clock)
    create_account(billsync)
    grant(client, "1.00", "2027-01-01T00:00:00Z")
    billsync.ingest.ingest([event("acme", IP_HOURS, "1000", at=T0)])
    clock.set(AFTER_GRACE)
    lifecycle.advance()
    with billsync.database.transaction() as connection:
        connection.execute(update(credit_grants).values(remaining=50))  # 50 cents appear
        connection.execute(
            update(lines).where(lines.c.metric == "prepaid_credit").values(amount=-150)
        )
    found = [
        v.detail
        for v in Verifier(billsync.database, None, catalog=billsync.catalog).verify().violations
        if v.kind == CREDIT_DIFFERS
    ]
    assert any("has 0.50 left; its uses leave 0.00" in v for v in found), found
    assert any("credits 1.50 of prepaid credit; its grants say it drew 1.00" in v for v in found)


def test_a_commitment_and_a_credit_cost_one_add_lines_call_at_close(
    billsync: Billsync, running_emulator: RunningEmulator, clock: ManualClock, client: TestClient
) -> None:
    """The lines billsync books at close are invoice lines like any other, not Stripe objects
    of their own (no coupon, credit note or balance transaction): an account with a minimum
    commitment and a prepaid credit closes with one call more than one without — the
    ``add_lines`` that carries both lines."""
    sync, lifecycle = make(billsync, running_emulator, clock)
    create_account(billsync, "acme")
    create_account(billsync, "globex")
    client.patch("/v1/accounts/globex", json={"minimum_amount": "20"})
    client.post(
        "/v1/accounts/globex/credit-grants",
        json={"amount": "5.00", "currency": "usd", "expires_at": NEW_YEAR},
    )
    for account in ("acme", "globex"):
        billsync.ingest.ingest([event(account, IP_HOURS, "1000", at=T0)])
        assert sync.sync_account(account).ok  # the draft, as the interval policy makes it
    clock.set(AFTER_GRACE)
    lifecycle.advance(sync=False)  # usage stops: globex's top-up and credit are booked
    stats = running_emulator.emulator.state.stats
    calls = {}
    for account in ("acme", "globex"):
        before = stats.total
        assert sync.sync_account(account, lane=CLOSING).ok
        calls[account] = stats.total - before
    assert calls["globex"] == calls["acme"] + 1
    gateway = StripeGateway(EMULATOR_KEY, api_base=running_emulator.url, timeout=5)
    with billsync.database.read() as connection:
        period = sync_repository.get_period(connection, "globex", NOVEMBER)
    assert period is not None
    assert period.stripe_invoice_id is not None
    assert gateway.get_invoice(period.stripe_invoice_id, with_lines=False).total == 1500
    with billsync.database.read() as connection:
        amounts = dict(
            connection.execute(
                select(lines.c.line_key, lines.c.amount).where(lines.c.account_id == "globex")
            ).all()
        )
    assert amounts == {IP_HOURS: 274, "commitment": 1726, "credits": -500}
