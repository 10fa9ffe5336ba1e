"""The support console and the customer's page in headless Chromium, as an agent and a customer
use them: a credit on the held period under dispute reaches that period's Stripe draft and the
invoice Stripe finalizes when it is approved; a credit note issued on a finalized invoice shows
on the customer's page. Each page confirms what was done; times are in the viewer's zone."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from billsync.bootstrap import Billsync, build
from billsync.clock import ManualClock
from billsync.core import customer_tokens
from billsync.core.catalog import Catalog
from billsync.db.database import Database
from tests.conftest import emulator_settings
from tests.served import serve
from tests.stripe_peer import RunningEmulator
from tests.support_scenes import (
    NOVEMBER,
    PASSWORD,
    disputed_account,
    draft_lines,
    finalized_november,
    period,
    stripe,
)
from tests.test_customer_view import ARTIFACTS, CHROMIUM

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="browser tests need Debian's chromium"
)


@pytest.fixture
def support(
    tmp_path: Path, database: Database, clock: ManualClock, example_catalog: Catalog,
    running_emulator: RunningEmulator,
) -> Iterator[Billsync]:  # fmt: skip
    settings = emulator_settings(tmp_path, running_emulator)
    billsync = build(settings, clock=clock, database=database, catalog=example_catalog)
    billsync.console.add_user("alex", PASSWORD, "agent")
    yield billsync
    billsync.close()


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"],
        )  # fmt: skip
        yield launched
        launched.close()


def signed_in(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{url}/console")
    page.fill("#name", "alex")
    page.fill("#password", PASSWORD)
    page.click("#sign-in")
    page.goto(f"{url}/console/accounts/acme")
    return page


def test_a_credit_on_the_held_period_reaches_its_draft_and_the_approved_invoice(
    support: Billsync, running_emulator: RunningEmulator, clock: ManualClock, browser: Browser
) -> None:
    disputed_account(support, running_emulator, clock)  # November 154.42, held; December 0.03
    ARTIFACTS.mkdir(exist_ok=True)
    with serve(support) as url:
        page = signed_in(browser, url)
        # The form says which invoice it changes: the held period, chosen by default.
        assert page.locator("#adjust-period").input_value() == NOVEMBER.isoformat()
        assert "(held)" in page.locator("#adjust-period option:checked").inner_text()
        page.select_option("#adjust-kind", "credit")
        page.fill("#adjust-amount", "5.00")
        page.fill("#adjust-confirm", "5.00")
        page.fill("#adjust-description", "Goodwill")
        page.fill("#adjust-reason", "outage on the 12th, customer disputes")
        page.click("#adjust-submit")
        assert page.locator("#flash").inner_text() == (
            "Credit of $5.00 added to the invoice of the period starting 2026-11-01 (held). "
            "Stripe's draft shows it now."
        )
        november = page.locator(f".lines[data-period='{NOVEMBER.isoformat()}']")
        credit = november.locator("tr", has_text="Goodwill")
        assert credit.locator(".tag").inner_text() == "credit"
        assert credit.locator(".line-name").inner_text() == "Credit: Goodwill"
        assert november.locator(".line-name", has_text="Dedicated IPv4 address").count() == 1
        assert (-500, "Credit: Goodwill") in draft_lines(support, running_emulator, NOVEMBER)
        # Times in the viewer's zone, to the second, with the zone said.
        page.fill("#zone", "Europe/Paris")
        page.click("#zone-set")
        assert page.locator("#flash").inner_text() == "Times are now in Europe/Paris."
        assert page.locator("#audit tbody tr").first.locator("td").first.inner_text() == (
            "2026-12-01 03:00:00 CET (UTC+01:00)"
        )
        approve = page.locator("form[action$='/actions/approve']").first
        approve.locator("input[name=reason]").fill("credit agreed with the customer")
        approve.locator("button").click()
        assert page.locator("#flash").inner_text() == (
            "The period starting 2026-11-01 is approved: Stripe finalized its invoice."
        )
        status = page.locator(f".status[data-period='{NOVEMBER.isoformat()}']")
        assert status.inner_text() == "finalized"
        assert page.locator(".review-ends").count() == 0
        page.screenshot(path=str(ARTIFACTS / "console-credit-approved.png"), full_page=True)
    invoice = stripe(running_emulator, "GET", f"/v1/invoices/{period(support).stripe_invoice_id}")
    assert invoice["status"] in ("open", "paid")
    assert invoice["total"] == 15442 - 500
    assert (-500, "Credit: Goodwill") in draft_lines(support, running_emulator, NOVEMBER)


def test_a_credit_note_appears_on_the_customers_page(
    support: Billsync, running_emulator: RunningEmulator, clock: ManualClock, browser: Browser
) -> None:
    finalized_november(support, running_emulator, clock, "pm_card_chargeDeclined")
    ARTIFACTS.mkdir(exist_ok=True)
    token = customer_tokens.issue(
        support.customer_token_secret, "acme", clock.now(), timedelta(minutes=15)
    )
    with serve(support) as url:
        page = signed_in(browser, url)
        form = page.locator("form.credit-note")
        form.locator("select[name=line]").select_option(label="Dedicated IPv4 address ($154.42)")
        form.locator("input[name=amount]").fill("12.00")
        form.locator("select[name=stripe_reason]").select_option("order_change")
        form.locator("input[name=memo]").fill("Billing error on the IPv4 line")
        form.locator("input[name=reason]").fill("customer called")
        form.locator("button").click()
        said = page.locator("#flash").inner_text()
        assert said.startswith("Credit note ")
        assert said.endswith(": $12.00 off what was still due.")
        number = said.split()[2]
        assert page.locator("#credit-notes tbody tr").first.locator("td").first.inner_text() == (
            number
        )
        page.screenshot(path=str(ARTIFACTS / "console-credit-note.png"), full_page=True)
        customer = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
        customer.goto(f"{url}/billing/acme?token={token}")
        row = customer.locator("#credit-notes tbody tr")
        assert row.count() == 1
        cells = row.locator("td")
        assert cells.nth(0).inner_text() == f"{number}\nBilling error on the IPv4 line"
        assert cells.nth(2).inner_text() == "\u2212$12.00"
        assert cells.nth(3).inner_text() == "$12.00 off the amount due"
        # What a credit note took off is not taken for an amount carried to the next invoice.
        assert customer.get_by_text("minimum charge").count() == 0
        assert customer.locator("#due").inner_text() == "$145.16"
        assert cells.nth(0).locator("a").get_attribute("href", timeout=1000) is not None
        customer.screenshot(path=str(ARTIFACTS / "billing-credit-note.png"), full_page=True)
