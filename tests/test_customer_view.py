"""The customer's view: totals to the cent, pending labels, the portal with its on-demand sync,
customer tokens, any past period with its invoice and payments, the usage CSV, the clean URL
after the token — and the page in a real browser (headless Chromium driven by Playwright)."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, Playwright, sync_playwright
from sqlalchemy import update
from typer.testing import CliRunner

from billsync.api.app import create_app
from billsync.bootstrap import Billsync, build
from billsync.cli.main import app as cli
from billsync.clock import ManualClock
from billsync.core import customer_tokens
from billsync.core.catalog import Catalog
from billsync.core.periods import PeriodStatus
from billsync.core.rating import line_amount
from billsync.db.database import Database
from billsync.db.tables import billing_periods
from billsync.repositories import sync as sync_repository
from billsync.services.event_partitions import EventPartitions
from billsync.services.event_retention import EventRetention
from tests.conftest import T0, TEST_TOKEN, emulator_settings
from tests.factories import create_account, event
from tests.served import serve
from tests.stripe_peer import EMULATOR_KEY, RunningEmulator

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = os.environ.get("BILLSYNC_CHROMIUM", "/usr/bin/chromium")
OCTOBER = date(2026, 10, 1)
MACHINE = "machine.performance-1x.seconds"
EGRESS = "bandwidth.egress.na-eu.gb"
IPV4 = "ip.ipv4.hours"
needs_chromium = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists(),
    reason=f"browser tests skipped: Debian's chromium is not installed at {CHROMIUM} "
    "(apt-get install chromium; .ci/run does it)",
)


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


@needs_chromium
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
        assert total == f"${expected / 100:.2f}"  # in the currency, with its symbol
        page.screenshot(path=str(ARTIFACTS / "billing-page.png"), full_page=True)
        page.locator("#portal").click()
        page.wait_for_url("**/_emulator/portal/**")
        assert page.locator("#portal-title").inner_text() == "Billing portal"
        page.screenshot(path=str(ARTIFACTS / "portal.png"))
        browser.close()
    assert sum(draft_lines(customer_billsync, running_emulator).values()) == expected


# --- any past period, its invoice, the usage CSV, the clean URL ------------------------------


def stripe_call(emulator: RunningEmulator, method: str, path: str, **data: str) -> Any:
    answer = httpx.request(
        method, f"{emulator.url}{path}", data=data or None,
        headers={"Authorization": f"Bearer {EMULATOR_KEY}"}, timeout=10,
    )  # fmt: skip
    answer.raise_for_status()
    return answer.json()


def invoiced_october(
    billsync: Billsync, emulator: RunningEmulator, clock: ManualClock
) -> dict[str, Any]:
    """acme's October: usage, synced, closed, reviewed, finalized and paid in Stripe, and the
    invoice mirrored from Stripe's events (the sweep) — then November under way. Stripe's
    October invoice."""
    assert billsync.sync is not None
    create_account(billsync, name="Acme Cloud")
    clock.set(datetime(2026, 10, 20, 12, tzinfo=UTC))
    billsync.ingest.ingest(
        [
            event("acme", MACHINE, 107_652, at=datetime(2026, 10, 10, 9, tzinfo=UTC)),
            event("acme", EGRESS, "50", at=datetime(2026, 10, 12, 9, tzinfo=UTC), region="iad"),
            event("acme", EGRESS, "0.25", at=datetime(2026, 10, 12, 10, tzinfo=UTC), region="iad"),
            event("acme", IPV4, "240", at=datetime(2026, 10, 14, 9, tzinfo=UTC)),
        ]
    )
    assert billsync.sync.service.sync_account("acme").ok
    clock.set(datetime(2026, 11, 1, 2, 5, tzinfo=UTC))  # the grace is over: review
    billsync.sync.lifecycle.advance()
    clock.advance(timedelta(hours=2))  # the review window is over: finalized
    billsync.sync.lifecycle.advance()
    with billsync.database.read() as connection:
        october = sync_repository.get_period(connection, "acme", OCTOBER)
    assert october is not None
    assert october.status is PeriodStatus.FINALIZED
    invoice_id = october.stripe_invoice_id
    stripe_call(emulator, "POST", f"/v1/invoices/{invoice_id}/pay", payment_method="pm_card_visa")
    clock.set(T0)
    billsync.ingest.ingest([event("acme", IPV4, "12", at=T0 - timedelta(days=1))])
    billsync.sync.sweep.run()  # Stripe's events about the invoice, into the mirror
    billsync.processor.process()
    invoice: dict[str, Any] = stripe_call(emulator, "GET", f"/v1/invoices/{invoice_id}")
    assert invoice["status"] == "paid"
    return invoice


def launch(playwright: Playwright, downloads: bool = False) -> Browser:
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    )  # fmt: skip


def rated(billsync: Billsync, rows: list[dict[str, str]], currency: str = "usd") -> int:
    """The CSV's quantities summed per line and rated with the catalog: the invoice's amount."""
    per_line: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for row in rows:
        per_line[(row["metric"], row["dimensions"])] += Decimal(row["quantity"])
    return sum(
        line_amount(quantity, billsync.catalog.metrics[metric].prices[currency], currency)
        for (metric, _), quantity in per_line.items()
    )


@needs_chromium
def test_a_past_month_is_readable_and_its_usage_downloads_in_a_real_browser(
    customer_billsync: Billsync, running_emulator: RunningEmulator, clock: ManualClock,
    tmp_path: Path,
) -> None:  # fmt: skip
    """October, finalized and paid, read line by line with its invoice (number, status, PDF
    and hosted links, payment); its usage as a CSV whose quantities, rated, are the invoice's
    total; the token gone from the address bar and the history; amounts with the currency's
    symbol, machine seconds in hours; the charts with their days and scale."""
    stripe_invoice = invoiced_october(customer_billsync, running_emulator, clock)
    token = customer_tokens.issue(
        customer_billsync.customer_token_secret, "acme", clock.now(), timedelta(minutes=15)
    )
    ARTIFACTS.mkdir(exist_ok=True)
    with serve(customer_billsync) as url, sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport={"width": 390, "height": 844}, accept_downloads=True)
        page.goto(f"{url}/billing/acme?token={token}")
        assert page.url == f"{url}/billing/acme"  # the token left the address bar
        assert page.locator("#total").inner_text() == "$0.03"  # November so far: 12 IPv4 hours
        page.locator("#periods a", has_text="Oct 2026").click()
        page.wait_for_url(f"{url}/billing/acme?period=2026-10-01")
        assert page.locator("#periods a[aria-current=page]").inner_text().startswith("Oct 2026")
        rows = page.locator("#lines tbody tr")
        assert rows.count() == 3
        quantities = {
            rows.nth(i).get_attribute("data-key"): rows.nth(i).locator("td.num").first.inner_text()
            for i in range(rows.count())
        }
        assert quantities == {
            f"{EGRESS}[region=iad]": "50.25 GB",
            IPV4: "240 hours",
            MACHINE: "29.90 hours",  # 107,652 seconds
        }
        machine = page.locator("#lines tr", has_text="performance-1x")
        assert machine.locator("td.num.wide").inner_text() == "$0.0432 per hour"
        total = stripe_invoice["total"]
        assert page.locator("#total").inner_text() == f"${total / 100:,.2f}"
        invoice = page.locator("#invoice")
        assert page.locator("#invoice-number").inner_text() == stripe_invoice["number"]
        assert "paid" in invoice.inner_text()
        assert f"Paid ${stripe_invoice['amount_paid'] / 100:,.2f}" in invoice.inner_text()
        assert page.locator("#invoice-pdf").get_attribute("href") == stripe_invoice["invoice_pdf"]
        assert (
            page.locator("#invoice-hosted").get_attribute("href")
            == stripe_invoice["hosted_invoice_url"]
        )
        # The charts: a bar per day, the days labelled, a value scale in the display unit.
        chart = page.locator(f"#charts .chart[data-metric='{MACHINE}']")
        assert "hours per day" in chart.inner_text()
        assert chart.locator("rect").count() == 31
        labels = chart.locator("text.day").all_text_contents()  # SVG: no inner text
        assert labels[0] == "Oct 1"
        assert {"6", "11", "16", "21", "26", "31"} <= set(labels)
        assert chart.locator("text.scale").all_text_contents() == ["0", "25", "50"]
        assert chart.locator("rect title").nth(9).text_content() == "2026-10-10: 29.90 hours"
        page.screenshot(path=str(ARTIFACTS / "billing-october.png"), full_page=True)
        with page.expect_download() as waiting:
            page.locator("#download-csv").click()
        download = waiting.value
        assert download.suggested_filename == ("usage-acme-20261001T0000Z-20261101T0000Z.csv")
        saved = tmp_path / download.suggested_filename
        download.save_as(saved)
        table = list(csv.DictReader(io.StringIO(saved.read_text(encoding="utf-8"))))
        assert {(r["metric"], r["day"], r["quantity"], r["unit"]) for r in table} == {
            (MACHINE, "2026-10-10", "107652", "second"),  # the catalog's unit, exact
            (EGRESS, "2026-10-12", "50.25", "GB"),
            (IPV4, "2026-10-14", "240", "hour"),
        }
        assert {r["invoice_period"] for r in table} == {"2026-10-01"}
        assert rated(customer_billsync, table) == total  # to the cent
        # Back in the history: the clean address, never the one that carried the token.
        page.go_back()
        assert page.url == f"{url}/billing/acme"
        page.go_back()
        assert "token" not in page.url
        browser.close()


@needs_chromium
def test_currency_symbols_display_units_and_credits_in_a_real_browser(
    customer_billsync: Billsync, clock: ManualClock
) -> None:
    """A yen account: amounts with ¥ and no decimals; machine seconds in hours; a credit
    labelled "Credit" with a minus sign; the projection grows usage only."""
    create_account(customer_billsync, "tokyo", currency="jpy", name="Tokyo Labs")
    customer_billsync.ingest.ingest(
        [
            event("tokyo", MACHINE, 3_600_000, at=T0 - timedelta(days=2)),  # 1,000 hours
            event("tokyo", EGRESS, "1000", at=T0 - timedelta(days=1), region="nrt"),
        ]
    )
    with customer_billsync.database.transaction() as connection:
        sync_repository.add_adjustment_line(
            connection, account_id="tokyo", period_start=date(2026, 11, 1), key="adjustment[1]",
            description="Credit: Outage on Nov 3", amount=-500, currency="jpy", now=T0,
        )  # fmt: skip
    token = customer_tokens.issue(
        customer_billsync.customer_token_secret, "tokyo", clock.now(), timedelta(minutes=15)
    )
    with serve(customer_billsync) as url, sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page()
        page.goto(f"{url}/billing/tokyo?token={token}")
        assert page.url == f"{url}/billing/tokyo"
        # 3,600,000 s × ¥0.0018 = ¥6,480; 1,000 GB × ¥3 = ¥3,000; less the ¥500 credit.
        assert page.locator("#total").inner_text() == "¥8,980"
        credit = page.locator("#lines tr.credit")
        assert credit.locator(".tag.credit").inner_text() == "Credit"
        assert "Outage on Nov 3" in credit.inner_text()
        assert credit.locator("td.amount").inner_text() == "\u2212¥500"
        machine = page.locator("#lines tr", has_text="performance-1x")
        assert machine.locator("td.num").first.inner_text() == "1,000.00 hours"
        assert machine.locator("td.num.wide").inner_text() == "¥6.48 per hour"
        assert machine.locator("td.amount").inner_text() == "¥6,480"
        # The projection extrapolates usage only; the credit counts once.
        bill = httpx.get(
            f"{url}/v1/accounts/tokyo/billing", headers={"Authorization": f"Bearer {TEST_TOKEN}"}
        ).json()
        assert {line["key"]: line["kind"] for line in bill["lines"]}["adjustment[1]"] == "credit"
        elapsed = Decimal((T0 - datetime(2026, 11, 1, tzinfo=UTC)).total_seconds())
        month = Decimal(30 * 86_400)
        usage_only = (Decimal(9480) * month / elapsed).to_integral_value(ROUND_HALF_UP) - 500
        assert bill["projected_total"] == usage_only
        assert page.locator("#projected").inner_text() == f"¥{usage_only:,}"
        page.screenshot(path=str(ARTIFACTS / "billing-yen.png"), full_page=True)
        browser.close()


def test_the_token_leaves_the_address_on_a_redirect_that_sets_the_cookie(
    customer_billsync: Billsync, clock: ManualClock
) -> None:
    usage(customer_billsync)
    token = customer_tokens.issue(
        customer_billsync.customer_token_secret, "acme", clock.now(), timedelta(minutes=15)
    )
    for prefix in ("", "/api"):
        with TestClient(
            create_app(customer_billsync), follow_redirects=False, root_path=prefix
        ) as browser:
            first = browser.get(f"{prefix}/billing/acme?period=2026-10-01&token={token}")
            assert first.status_code == 303
            assert first.headers["location"] == f"{prefix}/billing/acme?period=2026-10-01"
            cookie = first.headers["set-cookie"]
            assert cookie.startswith(f"billsync_customer={token};")
            assert f"Path={prefix}/billing/acme" in cookie
            assert "HttpOnly" in cookie
            assert "SameSite=strict" in cookie
            assert "Max-Age=900" in cookie
            clean = browser.get(first.headers["location"])
            assert clean.status_code == 200
            assert "Acme Cloud" in clean.text
            assert token not in clean.headers.get("location", "")
            # Without a period the address is the page's own.
            again = browser.get(f"{prefix}/billing/acme?token={token}")
            assert again.headers["location"] == f"{prefix}/billing/acme"
    with TestClient(create_app(customer_billsync), follow_redirects=False) as stranger:
        assert stranger.get("/billing/acme?token=not-a-token").status_code == 401
        assert stranger.get("/billing/acme").status_code == 401
        assert "set-cookie" not in stranger.get("/billing/acme?token=x").headers


def test_the_bill_of_any_period_by_api_and_page(
    customer_billsync: Billsync, running_emulator: RunningEmulator, clock: ManualClock,
    platform: TestClient,
) -> None:  # fmt: skip
    stripe_invoice = invoiced_october(customer_billsync, running_emulator, clock)
    october = platform.get("/v1/accounts/acme/billing", params={"period": "2026-10-15"})
    assert october.status_code == 200, october.text
    bill = october.json()
    assert bill["current"] is False
    assert bill["period"] == {
        "start": "2026-10-01T00:00:00+00:00", "end": "2026-11-01T00:00:00+00:00",
        "status": "finalized",
    }  # fmt: skip
    assert bill["total"] == stripe_invoice["total"] == bill["projected_total"]
    assert {line["metric"]: line["display"]["quantity"] for line in bill["lines"]} == {
        MACHINE: "29.90", EGRESS: "50.25", IPV4: "240"
    }  # fmt: skip
    assert {line["kind"] for line in bill["lines"]} == {"usage"}
    invoice = bill["invoice"]
    assert (invoice["number"], invoice["status"], invoice["amount_paid"]) == (
        stripe_invoice["number"], "paid", stripe_invoice["amount_paid"]
    )  # fmt: skip
    assert invoice["invoice_pdf"] == stripe_invoice["invoice_pdf"]
    assert invoice["amount_remaining"] == 0
    periods = bill["periods"]
    assert [(p["start"], p["status"], p["current"], p["invoice_status"]) for p in periods] == [
        ("2026-11-01", "open", True, None),
        ("2026-10-01", "finalized", False, "paid"),
    ]  # fmt: skip
    current = platform.get("/v1/accounts/acme/billing").json()  # unchanged without ?period=
    assert (current["current"], current["period"]["start"]) == (True, "2026-11-01T00:00:00+00:00")
    assert [i["number"] for i in current["invoices"]] == [stripe_invoice["number"]]
    refused = platform.get("/v1/accounts/acme/billing", params={"period": "October"})
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "invalid_period"
    page = platform.get("/billing/acme", params={"period": "2026-10-01"})
    assert page.status_code == 200
    assert stripe_invoice["number"] in page.text
    assert 'href="/billing/acme/usage.csv?period=2026-10-01"' in page.text
    assert platform.get("/billing/acme", params={"period": "soon"}).status_code == 422


def test_the_pages_csv_opens_with_the_pages_cookie_and_says_when_usage_was_removed(
    customer_billsync: Billsync, clock: ManualClock
) -> None:
    usage(customer_billsync)
    token = customer_tokens.issue(
        customer_billsync.customer_token_secret, "acme", clock.now(), timedelta(minutes=15)
    )
    with TestClient(create_app(customer_billsync)) as browser:
        assert browser.get("/billing/acme/usage.csv").status_code == 401
        browser.get(f"/billing/acme?token={token}")  # the cookie
        answer = browser.get("/billing/acme/usage.csv")
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "text/csv; charset=utf-8"
        table = list(csv.DictReader(io.StringIO(answer.text)))
        assert (
            rated(customer_billsync, table)
            == browser.get(
                "/v1/accounts/acme/billing", headers={"Authorization": f"Bearer {token}"}
            ).json()["total"]
        )
        # A period whose raw events retention removed: said so, not a short file.
        browser.cookies.clear()
        with customer_billsync.database.transaction() as connection:
            connection.execute(
                update(billing_periods)
                .where(billing_periods.c.account_id == "acme")
                .values(status="finalized", finalized_at=T0 - timedelta(days=30))
            )
        EventRetention(
            customer_billsync.database, clock,
            EventPartitions(customer_billsync.database, horizon=timedelta(days=45)),
            retention_days=7,
        ).run()  # fmt: skip
        removed = browser.get(f"/billing/acme/usage.csv?period=2026-11-01&token={token}")
        assert removed.status_code == 410
        assert "removed by retention" in removed.text
        page = browser.get(f"/billing/acme?token={token}")  # redirected, with the cookie
        assert page.status_code == 200
        assert "no longer kept" in page.text
        assert 'id="download-csv"' not in page.text
        assert re.search(r"usage\.csv", page.text) is None
