"""An account's terms in the console: its minimum commitment, its prepaid credit (every grant,
what is left) and its negotiated rates, shown to everyone; the commitment set and credit
granted by admins from the account's page — checked, audited and done once as through the API.
On SQLite and PostgreSQL; the forms also in a real browser."""

from __future__ import annotations

import html
import re
from datetime import UTC, date, datetime

from fastapi.testclient import TestClient
from playwright.sync_api import sync_playwright
from sqlalchemy import select

from billsync.api.app import create_app
from billsync.bootstrap import Billsync
from billsync.db.tables import audit_log
from billsync.repositories import credits as credit_repository
from billsync.repositories.accounts import get_account
from tests.served import serve
from tests.test_console import PASSWORD, console_as, support  # noqa: F401 - the fixture
from tests.test_customer_view import ARTIFACTS, CHROMIUM
from tests.test_requests_once import form_of

NOVEMBER = date(2026, 11, 1)
DECEMBER = date(2026, 12, 1)


def audit(billsync: Billsync, action: str) -> list[dict[str, object]]:
    with billsync.database.read() as connection:
        rows = connection.execute(
            select(audit_log).where(audit_log.c.action == action).order_by(audit_log.c.id)
        ).mappings()
        return [dict(row) for row in rows]


def grants(billsync: Billsync) -> list[credit_repository.GrantRecord]:
    with billsync.database.read() as connection:
        return credit_repository.grants_of(connection, "acme")


def flash(page: str) -> str:
    found = re.search(r'id="flash"[^>]*>([^<]*)<', page)
    assert found is not None, page[:300]
    return html.unescape(found.group(1))


def test_an_admin_grants_prepaid_credit_once_from_the_console(support: Billsync) -> None:  # noqa: F811
    with console_as(support, "ada") as (client, page):
        assert "No prepaid credit granted." in page
        form = form_of(page, "/credit_grants") | {
            "amount": "250.00", "confirm_amount": "250.00", "expires_on": "2027-06-30",
            "reason": "prepaid with the annual plan",
        }  # fmt: skip
        done = client.post("/console/accounts/acme/credit_grants", data=form)
        again = client.post("/console/accounts/acme/credit_grants", data=form)
    assert flash(done.text) == (
        "Prepaid credit of $250.00 granted, expiring 2027-06-30 00:00 UTC: each period's "
        "close draws on it."
    )
    assert "carried out once" in flash(again.text)
    (grant,) = grants(support)
    assert (grant.amount, grant.remaining, grant.created_by) == (25000, 25000, "ada")
    assert grant.expires_at == datetime(2027, 6, 30, tzinfo=UTC)
    assert grant.reason == "prepaid with the annual plan"
    (entry,) = audit(support, "credit_grant.created")
    assert (entry["actor"], entry["reason"]) == ("ada", "prepaid with the annual plan")
    assert re.search(r'id="credit-left">\$250\.00<', again.text)
    assert "prepaid with the annual plan" in again.text


def test_a_grant_form_is_refused_with_a_reason_a_person_can_act_on(
    support: Billsync,  # noqa: F811
) -> None:
    with console_as(support, "ada") as (client, page):
        base = form_of(page, "/credit_grants") | {"reason": "goodwill", "expires_on": "2027-01-01"}
        cases = {
            "the two amounts differ": {"amount": "10.00", "confirm_amount": "10.0"},
            "the expiry is a day, YYYY-MM-DD, not '31/12/2026'": {
                "amount": "10.00", "confirm_amount": "10.00", "expires_on": "31/12/2026",
            },
            "has passed": {"amount": "10.00", "confirm_amount": "10.00",
                           "expires_on": "2026-11-01"},
            "a grant is a positive amount": {"amount": "-5", "confirm_amount": "-5"},
            # The grant keeps its reason in 500 characters (PostgreSQL would refuse more).
            "reason: at most 500 characters": {"amount": "10.00", "confirm_amount": "10.00",
                                               "reason": "x" * 501},
        }  # fmt: skip
        for message, fields in cases.items():
            refused = client.post("/console/accounts/acme/credit_grants", data=base | fields)
            assert refused.status_code == 422, message
            assert message in html.unescape(refused.text), refused.text[-600:]
    assert grants(support) == []


def test_only_admins_see_and_use_the_terms_forms(support: Billsync) -> None:  # noqa: F811
    with console_as(support, "alex") as (client, page):
        assert 'id="terms"' in page  # the terms are shown to everyone
        assert "/credit_grants" not in page
        assert "/commitment" not in page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        for action in ("credit_grants", "commitment"):
            refused = client.post(
                f"/console/accounts/acme/{action}",
                data={"csrf": csrf.group(1), "amount": "1", "confirm_amount": "1",
                      "expires_on": "2027-01-01", "reason": "x"},
            )  # fmt: skip
            assert refused.status_code == 403
    assert grants(support) == []
    assert audit(support, "account.update") == []


def test_an_admin_sets_the_minimum_commitment_from_this_period_or_the_next(
    support: Billsync,  # noqa: F811
) -> None:
    with console_as(support, "ada") as (client, page):
        assert re.search(r'id="minimum-now">none<', page)
        assert 'value="2026-11-01">starting 2026-11-01 (this one)' in page
        form = form_of(page, "/commitment") | {"amount": "500.00", "reason": "enterprise deal"}
        from_next = client.post(
            "/console/accounts/acme/commitment", data=form | {"effective_from": "2026-12-01"}
        )
        assert flash(from_next.text) == (
            "Minimum commitment from the period starting 2026-12-01: $500.00 a period."
        )
        assert re.search(r'id="minimum-now">none<', from_next.text)  # this period: none yet
        # Another look at the page, another form: this period on, $300.00.
        again = form_of(from_next.text, "/commitment") | {"reason": "enterprise deal"}
        now = client.post(
            "/console/accounts/acme/commitment",
            data=again | {"amount": "300.00", "effective_from": "2026-11-01"},
        )
        assert re.search(r'id="minimum-now">\$300\.00<', now.text)
        wrong = client.post(
            "/console/accounts/acme/commitment",
            data=form_of(now.text, "/commitment")
            | {"amount": "1.00", "effective_from": "2026-11-15", "reason": "typo"},
        )
        assert wrong.status_code == 409
        assert "must be the start of one of the account's periods" in html.unescape(wrong.text)
        # The first form sent again (the browser re-posting it): it does not put $500.00 back
        # over the $300.00 set since.
        stale = client.post(
            "/console/accounts/acme/commitment", data=form | {"effective_from": "2026-12-01"}
        )
        assert "carried out once" in flash(stale.text)
    with support.database.read() as connection:
        account = get_account(connection, "acme")
    assert account is not None
    assert [(c.effective_from, c.amount) for c in account.commitments] == [(NOVEMBER, 30000)]
    entries = audit(support, "account.update")
    assert [(e["actor"], e["reason"]) for e in entries] == [("ada", "enterprise deal")] * 2
    details = [e["detail"] for e in entries]
    assert [(d["minimum_amount"], d["minimum_amount_from"]) for d in details] == [  # type: ignore[index]
        ("500.00", "2026-12-01"),
        ("300.00", "2026-11-01"),
    ]


def test_the_terms_forms_in_a_real_browser(support: Billsync) -> None:  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    with serve(support) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{url}/console/login")
        page.fill("#name", "ada")
        page.fill("#password", PASSWORD)
        page.click("#sign-in")
        page.goto(f"{url}/console/accounts/acme")
        page.fill("#grant-amount", "75.50")
        page.fill("#grant-confirm", "75.50")
        page.fill("#grant-expires", "2027-03-31")
        page.fill("#grant-reason", "migration credit")
        page.click("#grant-submit")
        assert "Prepaid credit of $75.50 granted" in page.locator("#flash").inner_text()
        assert page.locator("#credit-left").inner_text() == "$75.50"
        assert page.locator("#credit-grants tbody tr[data-grant]").count() == 1
        page.fill("#commitment-amount", "300.00")
        page.select_option("#commitment-from", "2026-11-01")
        page.fill("#commitment-reason", "signed contract")
        page.click("#commitment-submit")
        assert page.locator("#minimum-now").inner_text() == "$300.00"
        assert page.locator("#audit tbody tr td:nth-child(3)").all_inner_texts() == [
            "Minimum commitment 300.00 USD from the period starting 2026-11-01",
            "Prepaid credit of 75.50 USD granted, expiring 2027-03-31",
        ]
        page.screenshot(path=str(ARTIFACTS / "console-terms.png"), full_page=True)
        browser.close()
    assert [g.amount for g in grants(support)] == [7550]


def test_the_page_lists_negotiated_rates(support: Billsync) -> None:  # noqa: F811
    with TestClient(create_app(support)) as client:
        client.headers["Authorization"] = f"Bearer {support.settings.api_token}"
        answer = client.put(
            "/v1/accounts/acme/prices",
            json={"prices": {"ip.ipv4.hours": "0.002"}},
        )
        assert answer.status_code == 200, answer.text
    with console_as(support, "vera") as (_, page):
        terms = re.search(r'<div class="box" id="terms">(.*?)</div>', page, re.S)
        assert terms is not None
        assert "Negotiated rates: from 2026-11-01 for ip.ipv4.hours" in terms.group(1)
