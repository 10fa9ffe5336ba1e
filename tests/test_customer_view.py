"""The customer's view: totals to the cent, pending labels, the portal with its on-demand sync,
customer tokens — and the page in a real browser (headless Chromium driven by Playwright)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import sync_playwright
from typer.testing import CliRunner

from billsync.api.app import create_app
from billsync.bootstrap import Billsync, build
from billsync.cli.main import app as cli
from billsync.clock import ManualClock
from billsync.core import customer_tokens
from billsync.core.catalog import Catalog
from billsync.db.database import Database
from billsync.repositories import sync as sync_repository
from tests.conftest import T0, TEST_TOKEN, emulator_settings
from tests.factories import create_account, event
from tests.served import serve
from tests.stripe_peer import EMULATOR_KEY, RunningEmulator

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = os.environ.get("BILLSYNC_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
def customer_billsync(
    tmp_path: Path,
    database: Database,
    clock: ManualClock,
    example_catalog: Catalog,
    running_emulator: RunningEmulator,
) -> Iterator[Billsync]:
    settings = emulator_settings(
        tmp_path, running_emulator, stripe_timeout_seconds=1.0, on_demand_wait_seconds=3.0
    )
    billsync = build(settings, clock=clock, database=database, catalog=example_catalog)
    yield billsync
    billsync.close()


@pytest.fixture
def platform(customer_billsync: Billsync) -> Iterator[TestClient]:
    with TestClient(
        create_app(customer_billsync), headers={"Authorization": f"Bearer {TEST_TOKEN}"}
    ) as client:
        yield client


def usage(billsync: Billsync) -> None:
    create_account(billsync, name="Acme Cloud")
    billsync.ingest.ingest(
        [
            event("acme", "bandwidth.egress.na-eu.gb", "123.4", at=T0, region="iad"),
            event(
                "acme", "bandwidth.egress.na-eu.gb", "10", at=T0 - timedelta(days=3), region="cdg"
            ),
            event("acme", "machine.performance-1x.seconds", 86_400, at=T0 - timedelta(days=1)),
            event("acme", "ip.ipv4.hours", "240", at=T0 - timedelta(days=2)),
        ]
    )


def draft_lines(billsync: Billsync, emulator: RunningEmulator) -> dict[str, int]:
    with billsync.database.read() as connection:
        period = sync_repository.periods_to_sync(connection, "acme")[0]
    response = httpx.get(
        f"{emulator.url}/v1/invoices/{period.stripe_invoice_id}/lines",
        headers={"Authorization": f"Bearer {EMULATOR_KEY}"},
    )
    return {
        line["metadata"]["billsync_line_id"]: line["amount"] for line in response.json()["data"]
    }


def test_the_bill_equals_the_ledger_and_labels_pending_lines(
    customer_billsync: Billsync, platform: TestClient, running_emulator: RunningEmulator
) -> None:
    usage(customer_billsync)
    bill = platform.get("/v1/accounts/acme/billing").json()
    ledger = platform.get("/v1/accounts/acme/lines").json()
    assert bill["total"] == ledger["total"] == sum(line["amount"] for line in ledger["lines"])
    assert {line["key"]: line["amount"] for line in bill["lines"]} == {
        line["key"]: line["amount"] for line in ledger["lines"]
    }
    assert all(line["sync"]["state"] == "pending" for line in bill["lines"])
    assert bill["pending_total"] == bill["total"]
    assert bill["projected_total"] >= bill["total"]
    assert customer_billsync.sync is not None
    assert customer_billsync.sync.service.sync_account("acme").ok
    after = platform.get("/v1/accounts/acme/billing").json()
    assert all(line["sync"]["state"] == "in_stripe" for line in after["lines"])
    assert after["lines"][0]["sync"]["label"].startswith("in Stripe as of")
    assert after["pending_total"] == 0
    assert sum(draft_lines(customer_billsync, running_emulator).values()) == after["total"]


def test_the_portal_flushes_pending_usage_first(
    customer_billsync: Billsync, platform: TestClient, running_emulator: RunningEmulator
) -> None:
    usage(customer_billsync)
    answer = platform.post("/v1/accounts/acme/portal", json={"return_url": "https://x.test/b"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["synced"] is True
    assert body["pending_lines"] == 0
    assert "/_emulator/portal/bps_" in body["url"]
    bill = platform.get("/v1/accounts/acme/billing").json()
    assert sum(draft_lines(customer_billsync, running_emulator).values()) == bill["total"]
    page = httpx.get(body["url"])
    assert "Billing portal" in page.text


def test_without_saved_portal_settings_the_portal_says_what_to_do(
    customer_billsync: Billsync, platform: TestClient, running_emulator: RunningEmulator
) -> None:
    """Stripe refuses portal sessions (test mode) until the Customer Portal's settings are
    saved: billsync answers 503 ``portal_not_configured`` saying where to save them, not a
    bare "Stripe did not open the portal"."""
    running_emulator.control("POST", "reset")  # a Stripe account never set up for the portal
    running_emulator.control("POST", "config", {"rate_limit_test": 0, "rate_limit_endpoint": 0})
    create_account(customer_billsync, "acme")
    answer = platform.post("/v1/accounts/acme/portal", json={})
    assert answer.status_code == 503, answer.text
    error = answer.json()["error"]
    assert error["code"] == "portal_not_configured"
    assert "dashboard.stripe.com/test/settings/billing/portal" in error["message"]
    assert "billsync doctor" in error["message"]


def test_the_portal_opens_for_an_account_with_no_usage_yet(
    customer_billsync: Billsync, platform: TestClient, running_emulator: RunningEmulator
) -> None:
    """Nothing to sync, so no sync made a Stripe customer: the portal makes it (once)."""
    create_account(customer_billsync, "acme")
    first = platform.post("/v1/accounts/acme/portal", json={})
    assert first.status_code == 200, first.text
    assert first.json()["pending_lines"] == 0
    second = platform.post("/v1/accounts/acme/portal", json={})
    assert second.status_code == 200, second.text
    customers = running_emulator.control("GET", "stats")["by_endpoint"]["POST /v1/customers"]
    assert customers == 1
    customer = platform.get("/v1/accounts/acme").json()["stripe_customer_id"]
    assert customer is not None
    assert customer.startswith("cus_")


def test_the_portal_still_opens_when_stripe_hangs(
    customer_billsync: Billsync, platform: TestClient, running_emulator: RunningEmulator
) -> None:
    usage(customer_billsync)
    assert customer_billsync.sync is not None
    assert customer_billsync.sync.service.sync_account("acme").ok
    customer_billsync.ingest.ingest(
        [event("acme", "bandwidth.egress.na-eu.gb", "5", at=T0, region="iad")]
    )
    running_emulator.control(
        "POST",
        "faults",
        {
            "endpoint": "POST /v1/invoices/{id}/update_lines",
            "kind": "hang",
            "count": 1,
            "seconds": 4,
        },
    )
    answer = platform.post("/v1/accounts/acme/portal", json={})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["synced"] is False
    assert body["pending_lines"] == 1
    assert "still on their way" in body["note"]
    assert "/_emulator/portal/" in body["url"]


def test_customer_tokens_open_one_account_only(
    customer_billsync: Billsync, platform: TestClient, clock: ManualClock
) -> None:
    usage(customer_billsync)
    create_account(customer_billsync, "globex")
    token = platform.post("/v1/accounts/acme/customer-tokens", json={"ttl_seconds": 600}).json()
    assert token["billing_url"] == f"/billing/acme?token={token['token']}"
    with TestClient(create_app(customer_billsync)) as customer:
        mine = {"Authorization": f"Bearer {token['token']}"}
        assert customer.get("/v1/accounts/acme/billing", headers=mine).status_code == 200
        for forbidden in (
            "/v1/accounts/globex/billing",
            "/v1/accounts/acme/lines",
            "/v1/accounts/acme",
            "/v1/catalog",
        ):
            answer = customer.get(forbidden, headers=mine)
            assert answer.status_code == 403, forbidden
            assert answer.json()["error"]["code"] == "forbidden"
        minted = customer.post("/v1/accounts/acme/customer-tokens", json={}, headers=mine)
        assert minted.status_code == 403
        tampered = token["token"][:-1] + ("0" if token["token"][-1] != "0" else "1")
        assert (
            customer.get(
                "/v1/accounts/acme/billing", headers={"Authorization": f"Bearer {tampered}"}
            ).status_code
            == 401
        )
        other = customer_tokens.issue("another-secret", "acme", clock.now(), timedelta(minutes=5))
        assert (
            customer.get(
                "/v1/accounts/acme/billing", headers={"Authorization": f"Bearer {other}"}
            ).status_code
            == 401
        )
        page = customer.get(f"/billing/acme?token={token['token']}")
        assert page.status_code == 200
        assert "Acme Cloud" in page.text
        assert customer.get(f"/billing/globex?token={token['token']}").status_code == 401
        clock.advance(timedelta(minutes=11))
        assert customer.get("/v1/accounts/acme/billing", headers=mine).status_code == 401
        assert customer.get(f"/billing/acme?token={token['token']}").status_code == 401


def test_the_tokens_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLSYNC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BILLSYNC_API_TOKEN", TEST_TOKEN)
    runner = CliRunner()
    runner.invoke(cli, ["accounts", "create", "acme", "--currency", "usd"])
    made = runner.invoke(cli, ["tokens", "customer", "acme", "--ttl", "15m"])
    assert made.exit_code == 0, made.output
    token = made.output.split()[0]
    secret = (tmp_path / "customer-token-secret").read_text().strip()
    opened = customer_tokens.read(secret, token, datetime.now(UTC))
    assert opened.account_id == "acme"
    assert runner.invoke(cli, ["tokens", "customer", "ghost"]).exit_code == 1
    assert runner.invoke(cli, ["tokens", "customer", "acme", "--ttl", "2d"]).exit_code == 2


@pytest.mark.skipif(
    shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists(),
    reason=f"browser tests skipped: Debian's chromium is not installed at {CHROMIUM} "
    "(apt-get install chromium; .ci/run does it)",
)
def test_the_billing_page_in_a_real_browser(
    customer_billsync: Billsync, running_emulator: RunningEmulator, clock: ManualClock
) -> None:
    usage(customer_billsync)
    token = customer_tokens.issue(
        customer_billsync.customer_token_secret, "acme", clock.now(), timedelta(minutes=15)
    )
    ARTIFACTS.mkdir(exist_ok=True)
    with serve(customer_billsync) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
        page.goto(f"{url}/billing/acme?token={token}")
        rows = page.locator("#lines tbody tr")
        assert rows.count() == 4
        assert page.locator("#lines").get_by_text("pending, not yet on the invoice").count() == 4
        assert page.locator("#charts .chart").count() == 3
        assert page.locator("#charts rect").count() >= 3
        total: Any = page.locator("#total").inner_text()
        with customer_billsync.database.read() as connection:
            account = customer_billsync.accounts.get(connection, "acme")
            expected = customer_billsync.lines.period_lines(connection, account, "current").total
        assert total == f"{expected / 100:.2f}"
        page.screenshot(path=str(ARTIFACTS / "billing-page.png"), full_page=True)
        page.locator("#portal").click()
        page.wait_for_url("**/_emulator/portal/**")
        assert page.locator("#portal-title").inner_text() == "Billing portal"
        page.screenshot(path=str(ARTIFACTS / "portal.png"))
        browser.close()
    assert sum(draft_lines(customer_billsync, running_emulator).values()) == expected
