"""Spend alerts and budgets on SQLite and PostgreSQL: set through the API (audited), weighed
against the ledger, each threshold crossed once per period and sent over real HTTP to a
platform receiver on loopback, signed (the receiver checks the signature as a platform would),
retried with back-off when the platform fails, given up after the last attempt."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from billsync.api.app import create_app
from billsync.bootstrap import Billsync, build
from billsync.clock import ManualClock
from billsync.config import Settings
from billsync.core.alerts import MAX_ATTEMPTS, SIGNATURE_HEADER, verify_signature
from billsync.core.catalog import Catalog
from billsync.db.database import Database
from billsync.db.tables import audit_log
from tests.conftest import T0, TEST_TOKEN
from tests.factories import create_account, event
from tests.test_console import PASSWORD, sign_in

SECRET = "platform-test-secret"
EGRESS = "bandwidth.egress.na-eu.gb"  # $0.02 per GB
NOVEMBER = date(2026, 11, 1)


class Receiver:
    """The platform's webhook endpoint: answers with the next status of ``statuses`` (200 once
    they run out) and keeps what it was sent."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/billing-webhooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[dict[str, Any]]:
        """The bodies received, each checked as a platform would check it."""
        found = []
        for headers, body in self.received:
            assert verify_signature(SECRET, headers[SIGNATURE_HEADER], body, int(time.time()))
            assert not verify_signature("another secret", headers[SIGNATURE_HEADER], body, 0)
            payload = json.loads(body)
            assert headers["Billsync-Event-Id"] == payload["id"]
            found.append(payload)
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


@pytest.fixture
def billsync(
    tmp_path: Path,
    database: Database,
    clock: ManualClock,
    example_catalog: Catalog,
    receiver: Receiver,
) -> Billsync:
    settings = Settings(
        data_dir=tmp_path / "var", api_token=TEST_TOKEN,
        platform_webhook_url=receiver.url, platform_webhook_secret=SECRET,
    )  # fmt: skip
    built = build(settings, clock=clock, database=database, catalog=example_catalog)
    create_account(built)
    return built


@pytest.fixture
def api(billsync: Billsync) -> Iterator[TestClient]:
    with TestClient(
        create_app(billsync), headers={"Authorization": f"Bearer {TEST_TOKEN}"}
    ) as client:
        yield client


def egress(billsync: Billsync, gb: str, region: str = "iad", minutes: int = 0) -> None:
    at = T0 - timedelta(hours=1) + timedelta(minutes=minutes)
    assert billsync.ingest.ingest([event("acme", EGRESS, gb, at=at, region=region)]).accepted == 1


# --- the API --------------------------------------------------------------------------------


def test_alerts_are_set_listed_deleted_and_audited(billsync: Billsync, api: TestClient) -> None:
    made = api.post("/v1/accounts/acme/alerts", json={"name": "spend", "amount": "100.00"})
    assert made.status_code == 201, made.text
    assert made.json()["amount"] == 10000
    budget = api.post(
        "/v1/accounts/acme/alerts",
        json={"budget": "500", "percents": [100, 50, 80], "grouping": {"app": "web"}},
    ).json()
    assert (budget["budget"], budget["percents"], budget["grouping"]) == (
        50000,
        [50, 80, 100],
        {"app": "web"},
    )
    listed = api.get("/v1/accounts/acme/alerts").json()["data"]
    assert [a["id"] for a in listed] == [made.json()["id"], budget["id"]]
    assert api.delete(f"/v1/accounts/acme/alerts/{budget['id']}").status_code == 204
    assert api.delete(f"/v1/accounts/acme/alerts/{budget['id']}").status_code == 404
    assert len(api.get("/v1/accounts/acme/alerts").json()["data"]) == 1
    with billsync.database.read() as connection:
        actions = connection.execute(
            select(audit_log.c.action).where(audit_log.c.action.like("alert.%"))
        ).scalars().all()  # fmt: skip
    assert actions == ["alert.created", "alert.created", "alert.deleted"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "give one of amount, percent_of_commitment or budget"),
        ({"amount": "1", "budget": "2", "percents": [50]}, "give one of"),
        ({"budget": "100"}, "percents: the percentages of the budget"),
        ({"amount": "10", "percents": [50]}, "percents: only with a budget"),
        ({"amount": "0"}, "amount: a positive amount"),
        ({"amount": "10", "grouping": {"App": "web"}}, "'App' is not a dimension name"),
    ],
)
def test_an_alert_that_cannot_be_set_is_refused(
    billsync: Billsync, api: TestClient, body: dict[str, Any], message: str
) -> None:
    answer = api.post("/v1/accounts/acme/alerts", json=body)
    assert answer.status_code == 422, answer.text
    assert message in answer.json()["error"]["message"]
    assert api.get("/v1/accounts/acme/alerts").json()["data"] == []
    assert api.post("/v1/accounts/nobody/alerts", json={"amount": "1"}).status_code == 404


# --- crossing and telling the platform ------------------------------------------------------


def test_each_threshold_is_sent_once_signed_and_budgets_watch_their_grouping(
    billsync: Billsync, api: TestClient, receiver: Receiver, clock: ManualClock
) -> None:
    spend = api.post("/v1/accounts/acme/alerts", json={"amount": "2.00"}).json()
    iad = api.post(
        "/v1/accounts/acme/alerts",
        json={"name": "iad budget", "budget": "10", "percents": [50, 100],
              "grouping": {"region": "iad"}},
    ).json()  # fmt: skip
    egress(billsync, "99")  # $1.98: nothing crossed
    assert billsync.alerts.evaluate() == 0
    egress(billsync, "1", minutes=1)  # $2.00: the amount alert
    egress(billsync, "500", region="cdg", minutes=2)  # $10 elsewhere: not the iad budget's
    assert billsync.alerts.evaluate() == 1
    assert billsync.alerts.evaluate() == 0  # weighed again: nothing new
    assert billsync.alerts.deliver() == 1
    [sent] = receiver.events()
    assert sent["type"] == "billing.alert.crossed"
    assert sent["data"] == {
        "account": "acme",
        "alert": spend["id"],
        "name": None,
        "period": {"start": "2026-11-01", "end": "2026-12-01"},
        "threshold": 200,
        "threshold_label": "amount",
        "spent": 1200,
        "currency": "usd",
        "grouping": {},
    }
    clock.advance(timedelta(minutes=1))
    egress(billsync, "150", minutes=3)  # iad: $5.00 of its $10 budget
    assert billsync.alerts.evaluate() == 1
    assert billsync.alerts.deliver() == 1
    assert billsync.alerts.deliver() == 0  # nothing twice
    second = receiver.events()[1]["data"]
    assert (second["alert"], second["threshold_label"], second["spent"]) == (
        iad["id"],
        "50% of budget",
        500,
    )
    listed = {a["id"]: a for a in api.get("/v1/accounts/acme/alerts").json()["data"]}
    assert [c["webhook"] for c in listed[spend["id"]]["crossings"]] == ["delivered"]
    assert [c["threshold_label"] for c in listed[iad["id"]]["crossings"]] == ["50% of budget"]


def test_a_failed_webhook_is_retried_with_back_off_then_given_up(
    billsync: Billsync, api: TestClient, receiver: Receiver, clock: ManualClock
) -> None:
    api.post("/v1/accounts/acme/alerts", json={"amount": "1"})
    egress(billsync, "100")
    billsync.alerts.evaluate()
    receiver.statuses = [500]
    assert billsync.alerts.deliver() == 0
    assert billsync.alerts.deliver() == 0  # not due yet: 30 s later
    assert len(receiver.received) == 1
    clock.advance(timedelta(seconds=31))
    assert billsync.alerts.deliver() == 1
    assert len(receiver.events()) == 2  # the same event, again
    assert receiver.events()[0]["id"] == receiver.events()[1]["id"]
    # A platform that never answers well: given up after the last attempt.
    api.post("/v1/accounts/acme/alerts", json={"amount": "1.50"})
    billsync.alerts.evaluate()
    receiver.statuses = [503] * MAX_ATTEMPTS
    for _ in range(MAX_ATTEMPTS + 2):
        billsync.alerts.deliver()
        clock.advance(timedelta(hours=7))
    crossings = [
        c for a in api.get("/v1/accounts/acme/alerts").json()["data"] for c in a["crossings"]
    ]
    failed = [c for c in crossings if c["webhook"] == "failed"]
    assert len(failed) == 1
    assert failed[0]["attempts"] == MAX_ATTEMPTS
    assert failed[0]["last_error"] == "HTTP 503"


def test_a_percentage_of_the_commitment_is_weighed_against_the_periods_minimum(
    billsync: Billsync, api: TestClient, receiver: Receiver
) -> None:
    api.patch("/v1/accounts/acme", json={"minimum_amount": "10"})
    api.post("/v1/accounts/acme/alerts", json={"percent_of_commitment": 80})
    egress(billsync, "399")  # $7.98 of $10
    assert billsync.alerts.evaluate() == 0
    egress(billsync, "1", minutes=1)  # $8.00: 80 %
    assert billsync.alerts.evaluate() == 1
    billsync.alerts.deliver()
    [sent] = receiver.events()
    assert (sent["data"]["threshold_label"], sent["data"]["threshold"]) == (
        "80% of commitment",
        800,
    )


def test_the_customer_page_and_the_console_show_the_alerts(
    billsync: Billsync, api: TestClient
) -> None:
    api.post("/v1/accounts/acme/alerts", json={"name": "heads-up", "amount": "1"})
    api.post("/v1/accounts/acme/alerts", json={"budget": "100", "percents": [50, 80]})
    egress(billsync, "100")  # $2.00
    billsync.alerts.evaluate()
    billsync.alerts.deliver()
    token = api.post("/v1/accounts/acme/customer-tokens", json={}).json()["token"]
    bill = api.get("/v1/accounts/acme/billing").json()
    assert bill["alerts"] == [
        {"alert": "heads-up: $1.00 spent", "crossed": ["amount"]},
        {"alert": "budget $100.00 at 50%, 80%", "crossed": []},
    ]
    with TestClient(create_app(billsync)) as customer:
        page = customer.get(f"/billing/acme?token={token}").text
    assert "heads-up: $1.00 spent: <b>crossed</b> (amount)" in page
    assert 'budget $100.00 at 50%, 80%: <span class="muted">not reached this period' in page
    billsync.console.add_user("ada", PASSWORD, "admin")
    with TestClient(create_app(billsync)) as console:
        assert sign_in(console, "ada") == 303
        html = console.get("/console/accounts/acme").text
    assert 'id="alerts"' in html
    assert "heads-up: $1.00 spent" in html
    assert "amount ($1.00)" in html
    assert "delivered" in html
