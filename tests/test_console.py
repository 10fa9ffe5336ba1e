"""The support console: sign-in, sessions, CSRF, roles, search, the account page, actions with
their audit trail — through HTTP, and in headless Chromium."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import sync_playwright
from typer.testing import CliRunner

from billsync.api.app import create_app
from billsync.bootstrap import Billsync, build
from billsync.cli.main import app as cli
from billsync.clock import ManualClock
from billsync.config import Settings
from billsync.core.catalog import Catalog
from billsync.core.periods import PeriodStatus
from billsync.db.database import Database
from billsync.repositories import console as console_repository
from billsync.repositories import problems
from billsync.repositories import sync as sync_repository
from tests.conftest import T0, TEST_TOKEN, emulator_settings
from tests.factories import create_account, event
from tests.served import serve
from tests.stripe_peer import EMULATOR_KEY, RunningEmulator
from tests.test_customer_view import ARTIFACTS, CHROMIUM

NOVEMBER = date(2026, 11, 1)
PASSWORD = "correct horse battery"


@pytest.fixture
def support(
    tmp_path: Path,
    database: Database,
    clock: ManualClock,
    example_catalog: Catalog,
    running_emulator: RunningEmulator,
) -> Iterator[Billsync]:
    settings = emulator_settings(tmp_path, running_emulator)
    billsync = build(settings, clock=clock, database=database, catalog=example_catalog)
    for name, role in (("vera", "viewer"), ("alex", "agent"), ("ada", "admin")):
        billsync.console.add_user(name, PASSWORD, role)
    create_account(billsync, name="Acme Cloud", email="billing@acme.test")
    billsync.ingest.ingest([event("acme", "ip.ipv4.hours", "100", at=T0)])
    assert billsync.sync is not None
    assert billsync.sync.service.sync_account("acme").ok
    yield billsync
    billsync.close()


def sign_in(client: TestClient, name: str, password: str = PASSWORD) -> int:
    form = client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    answer = client.post(
        "/console/login",
        data={"name": name, "password": password, "csrf": csrf.group(1)},
        follow_redirects=False,
    )
    status: int = answer.status_code
    return status


def csrf_of(client: TestClient, path: str) -> str:
    page = client.get(path)
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, page.text[:500]
    return found.group(1)


def period_status(billsync: Billsync) -> PeriodStatus:
    with billsync.database.read() as connection:
        period = sync_repository.get_period(connection, "acme", NOVEMBER)
    assert period is not None
    return period.status


def test_sign_in_out_and_throttling(support: Billsync) -> None:
    with TestClient(create_app(support)) as client:
        assert client.get("/console", follow_redirects=False).status_code == 303
        assert sign_in(client, "alex", "wrong password!") == 401
        assert sign_in(client, "alex") == 303
        home = client.get("/console")
        assert "alex · agent" in home.text
        csrf = csrf_of(client, "/console")
        client.post("/console/logout", data={"csrf": csrf}, follow_redirects=False)
        assert client.get("/console", follow_redirects=False).status_code == 303
    with TestClient(create_app(support)) as client:
        for _ in range(5):
            assert sign_in(client, "vera", "not the password") == 401
        assert sign_in(client, "vera") == 429  # locked out, even with the right password
    with TestClient(create_app(support)) as client:
        form = client.get("/console/login")
        assert (
            client.post(
                "/console/login", data={"name": "ada", "password": PASSWORD, "csrf": "forged"}
            ).status_code
            == 403
        )
        del form


def test_search_finds_by_id_name_email_customer_and_invoice(support: Billsync) -> None:
    with support.database.read() as connection:
        customer = sync_repository.get_account(connection, "acme")
    assert customer is not None
    with TestClient(create_app(support)) as client:
        sign_in(client, "vera")
        for query in ("acme", "Acme Cl", "billing@acme", str(customer.stripe_customer_id)):
            page = client.get("/console", params={"q": query})
            assert 'href="/console/accounts/acme"' in page.text, query
        assert "Nothing matches" in client.get("/console", params={"q": "nobody"}).text


def test_the_account_page_shows_ledger_and_stripe_side_by_side(support: Billsync) -> None:
    support.ingest.ingest([event("acme", "ip.ipv4.hours", "50", at=T0)])  # not synced yet
    with TestClient(create_app(support)) as client:
        sign_in(client, "vera")
        page = client.get("/console/accounts/acme").text
    assert "Acme Cloud" in page
    assert "state pending" in page
    assert "dashboard.stripe.com/test/customers/cus_" in page
    assert "0.27" in page  # 100 h in Stripe …
    assert "0.41" in page  # … 150 h in the ledger


def test_viewers_cannot_act_and_forms_need_their_csrf_token(support: Billsync) -> None:
    with TestClient(create_app(support)) as client:
        sign_in(client, "vera")
        csrf = csrf_of(client, "/console/accounts/acme")
        refused = client.post(
            "/console/accounts/acme/actions/hold",
            data={"csrf": csrf, "reason": "x", "period": NOVEMBER.isoformat()},
        )
        assert refused.status_code == 403
        assert "Viewers" in refused.text
    with TestClient(create_app(support)) as client:
        sign_in(client, "alex")
        no_token = client.post(
            "/console/accounts/acme/actions/hold",
            data={"reason": "x", "period": NOVEMBER.isoformat()},
        )
        assert no_token.status_code == 403
        no_reason = client.post(
            "/console/accounts/acme/actions/hold",
            data={
                "csrf": csrf_of(client, "/console/accounts/acme"),
                "reason": " ",
                "period": NOVEMBER.isoformat(),
            },
        )
        assert no_reason.status_code == 422
    assert period_status(support) is PeriodStatus.OPEN


def test_agent_actions_change_state_and_are_audited(support: Billsync, clock: ManualClock) -> None:
    with TestClient(create_app(support)) as client:
        sign_in(client, "alex")

        def act(action: str, reason: str) -> int:
            csrf = csrf_of(client, "/console/accounts/acme")
            answer = client.post(
                f"/console/accounts/acme/actions/{action}",
                data={"csrf": csrf, "reason": reason, "period": NOVEMBER.isoformat()},
                follow_redirects=False,
            )
            status: int = answer.status_code
            return status

        assert act("hold", "customer disputes egress") == 303
        assert period_status(support) is PeriodStatus.HELD
        assert act("release", "checked with the customer") == 303
        assert period_status(support) is PeriodStatus.OPEN
        assert act("sync", "customer asked") == 303
        clock.set(datetime(2026, 12, 1, 3, tzinfo=UTC))
        assert support.sync is not None
        support.sync.lifecycle.advance()
        assert act("approve", "stale session") == 401  # 8 hours later the session is over
        sign_in(client, "alex")
        assert act("approve", "reviewed, all good") == 303
        assert period_status(support) is PeriodStatus.FINALIZED
        assert act("hold", "too late") == 409
    with support.database.read() as connection:
        trail = console_repository.trail(connection, "acme")
    assert [(e["actor"], e["action"], e["reason"]) for e in reversed(trail)] == [
        ("alex", "period.hold", "customer disputes egress"),
        ("alex", "period.release", "checked with the customer"),
        ("alex", "account.sync", "customer asked"),
        ("alex", "period.approve", "reviewed, all good"),
    ]


def test_users_add_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLSYNC_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    added = runner.invoke(
        cli, ["users", "add", "sam", "--role", "agent"], input=f"{PASSWORD}\n{PASSWORD}\n"
    )
    assert added.exit_code == 0, added.output
    again = runner.invoke(cli, ["users", "add", "sam", "--role", "agent", "--password", PASSWORD])
    assert again.exit_code == 1
    weak = runner.invoke(cli, ["users", "add", "kim", "--role", "agent", "--password", "short"])
    assert weak.exit_code == 1
    bad = runner.invoke(cli, ["users", "add", "kim", "--role", "boss", "--password", PASSWORD])
    assert bad.exit_code == 1


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="browser tests need Debian's chromium")
def test_console_in_a_real_browser(support: Billsync) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with serve(support) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{url}/console")
        page.fill("#name", "alex")
        page.fill("#password", PASSWORD)
        page.click("#sign-in")
        page.fill("#q", "acme")
        page.click("#search")
        page.click("#results a")
        assert page.locator("#account-name").inner_text().startswith("Acme Cloud")
        hold = page.locator("form[action$='/actions/hold']")
        hold.locator("input[name=reason]").fill("checking a dispute")
        hold.locator("button").click()
        assert page.locator(f".status[data-period='{NOVEMBER.isoformat()}']").inner_text() == "held"
        approve = page.locator("form[action$='/actions/approve']")
        approve.locator("input[name=reason]").fill("resolved")
        approve.locator("button").click()
        assert (
            page.locator(f".status[data-period='{NOVEMBER.isoformat()}']").inner_text()
            == "finalized"
        )
        assert page.locator("#audit tbody tr").count() == 2
        page.screenshot(path=str(ARTIFACTS / "console-account.png"), full_page=True)
        page.click("#health-link")
        assert page.locator("#sync-health").count() == 1
        page.screenshot(path=str(ARTIFACTS / "console-health.png"), full_page=True)
        browser.close()


def test_a_credit_becomes_a_line_on_the_stripe_draft(
    support: Billsync, running_emulator: RunningEmulator
) -> None:
    support.ingest.ingest([event("acme", "ip.ipv4.hours", "5000", at=T0)])  # $13.97 in all
    with TestClient(create_app(support)) as client:
        sign_in(client, "alex")
        csrf = csrf_of(client, "/console/accounts/acme")
        form = {
            "csrf": csrf,
            "kind": "credit",
            "amount": "5.00",
            "confirm_amount": "5.0",
            "description": "Goodwill",
            "reason": "outage on the 12th",
        }
        assert client.post("/console/accounts/acme/adjustments", data=form).status_code == 422
        form["confirm_amount"] = "5.00"
        done = client.post("/console/accounts/acme/adjustments", data=form, follow_redirects=False)
        assert done.status_code == 303
    assert support.sync is not None
    assert support.sync.service.sync_account("acme").ok
    with support.database.read() as connection:
        period = sync_repository.get_period(connection, "acme", NOVEMBER)
        trail = console_repository.trail(connection, "acme")
    assert period is not None
    lines = httpx.get(
        f"{running_emulator.url}/v1/invoices/{period.stripe_invoice_id}/lines",
        headers={"Authorization": f"Bearer {EMULATOR_KEY}"},
    ).json()["data"]
    assert sorted((line["amount"], line["description"]) for line in lines)[0] == (
        -500,
        "Credit: Goodwill",
    )
    assert trail[0]["action"] == "adjustment.credit"
    assert trail[0]["reason"] == "outage on the 12th"


def test_drift_is_resolved_from_the_console_and_health_is_shown(
    support: Billsync, running_emulator: RunningEmulator
) -> None:
    with support.database.read() as connection:
        period = sync_repository.get_period(connection, "acme", NOVEMBER)
    assert period is not None
    httpx.post(
        f"{running_emulator.url}/v1/invoices/{period.stripe_invoice_id}/add_lines",
        data={"lines[0][amount]": "999", "lines[0][description]": "added in the Dashboard"},
        headers={"Authorization": f"Bearer {EMULATOR_KEY}"},
    ).raise_for_status()
    assert support.sync is not None
    assert support.sync.reconciler is not None
    report = support.sync.reconciler.reconcile("acme", repair=False)
    assert [item.kind for item in report.items] == ["extra_in_stripe"]
    with support.database.read() as connection:
        problem = next(p for p in problems.open_problems(connection, "acme"))
    with TestClient(create_app(support)) as client:
        sign_in(client, "alex")
        health = client.get("/console/health")
        assert health.status_code == 200
        assert "extra_in_stripe" in health.text
        # The platform at a glance: the due queue, the interval achieved, periods by status.
        assert 'id="platform"' in health.text
        assert "accounts, 1 with usage in an open period" in health.text
        assert "(configured 900 s)" in health.text
        csrf = csrf_of(client, "/console/accounts/acme")
        decided = client.post(
            f"/console/problems/{problem.id}/accept",
            data={
                "csrf": csrf,
                "reason": "the customer agreed to the setup fee",
                "account": "acme",
            },
            follow_redirects=False,
        )
        assert decided.status_code == 303
    with support.database.read() as connection:
        assert problems.open_problems(connection, "acme") == []
        assert console_repository.trail(connection, "acme")[0]["action"] == "drift.accept"


def test_admins_manage_users_and_others_cannot(support: Billsync) -> None:
    with TestClient(create_app(support)) as client:
        sign_in(client, "alex")
        assert client.get("/console/users").status_code == 403
        csrf = csrf_of(client, "/console")
        refused = client.post(
            "/console/users",
            data={
                "csrf": csrf,
                "name": "eve",
                "role": "admin",
                "password": PASSWORD,
                "reason": "x",
            },
        )
        assert refused.status_code == 403
    with TestClient(create_app(support)) as client:
        sign_in(client, "ada")
        assert "vera" in client.get("/console/users").text
        csrf = csrf_of(client, "/console/users")
        added = client.post(
            "/console/users",
            data={
                "csrf": csrf,
                "name": "sam",
                "role": "agent",
                "password": PASSWORD,
                "reason": "new hire",
            },
            follow_redirects=False,
        )
        assert added.status_code == 303
        disabled = client.post(
            "/console/users/vera/disable",
            data={"csrf": csrf, "reason": "left the team"},
            follow_redirects=False,
        )
        assert disabled.status_code == 303
    with TestClient(create_app(support)) as client:
        assert sign_in(client, "sam") == 303
    with TestClient(create_app(support)) as client:
        assert sign_in(client, "vera") == 401


def test_the_account_page_shows_sync_history_and_stripe_events(support: Billsync) -> None:
    with TestClient(create_app(support)) as client:
        sign_in(client, "vera")
        page = client.get("/console/accounts/acme").text
    assert "create_customer" in page
    assert "add_lines" in page
    assert ":add:" in page  # an intent's idempotency key: billsync:<namespace>:add:…


def test_the_support_cli_acts_and_audits(
    tmp_path: Path, running_emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BILLSYNC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BILLSYNC_API_TOKEN", TEST_TOKEN)
    monkeypatch.setenv("BILLSYNC_STRIPE_API_KEY", EMULATOR_KEY)
    monkeypatch.setenv("BILLSYNC_STRIPE_API_BASE", running_emulator.url)
    runner = CliRunner()
    assert runner.invoke(cli, ["accounts", "create", "acme", "--currency", "usd"]).exit_code == 0
    period = datetime.now(UTC).date().replace(day=1).isoformat()

    def run(*args: str) -> str:
        result = runner.invoke(cli, ["support", *args, "--actor", "script"])
        assert result.exit_code == 0, result.output
        return result.output

    assert "line" in run(
        "adjust", "acme", "--amount", "12.50", "--description", "Setup", "--reason", "onboarding"
    )
    too_large = runner.invoke(cli, [
        "support", "adjust", "acme", "--amount", "1000000.00", "--description", "Typo",
        "--reason", "a slip", "--actor", "script",
    ])  # fmt: skip
    assert too_large.exit_code != 0
    assert "at most 99,999,999 minor units" in too_large.output
    run("sync", "acme", "--reason", "push the setup fee")
    run("hold", "acme", "--period", period, "--reason", "waiting for a PO")
    run("release", "acme", "--period", period, "--reason", "PO received")
    missing = runner.invoke(cli, ["support", "hold", "acme", "--period", period])
    assert missing.exit_code == 2  # no reason
    settings = Settings(data_dir=tmp_path)
    billsync = build(settings)
    with billsync.database.read() as connection:
        trail = console_repository.trail(connection, "acme")
    billsync.close()
    assert [e["action"] for e in reversed(trail)] == [
        "adjustment.charge",
        "account.sync",
        "period.hold",
        "period.release",
    ]
    assert {e["actor"] for e in trail} == {"script"}


def test_admins_set_an_accounts_sync_policy(support: Billsync) -> None:
    with TestClient(create_app(support)) as client:
        sign_in(client, "ada")
        csrf = csrf_of(client, "/console/accounts/acme")
        bad = client.post(
            "/console/accounts/acme/policy", data={"csrf": csrf, "policy": "hourly", "reason": "x"}
        )
        assert bad.status_code == 422
        done = client.post(
            "/console/accounts/acme/policy",
            data={"csrf": csrf, "policy": "threshold", "threshold": "5000", "reason": "big user"},
            follow_redirects=False,
        )
        assert done.status_code == 303
    with support.database.read() as connection:
        account = sync_repository.get_account(connection, "acme")
    assert account is not None
    assert account.sync_policy == {"policy": "threshold", "threshold": 5000}
    with TestClient(create_app(support)) as client:
        sign_in(client, "alex")
        csrf = csrf_of(client, "/console/accounts/acme")
        assert (
            client.post(
                "/console/accounts/acme/policy", data={"csrf": csrf, "policy": "", "reason": "x"}
            ).status_code
            == 403
        )


# --- console polish: what a viewer sees, what an action says, names and times -------------------


@contextmanager
def console_as(support: Billsync, name: str = "alex") -> Iterator[tuple[TestClient, str]]:
    """Signed in as ``name``: the client, and the account page it sees."""
    with TestClient(create_app(support)) as client:
        assert sign_in(client, name) == 303
        yield client, client.get("/console/accounts/acme").text


def account_page_as(support: Billsync, name: str = "alex") -> str:
    with console_as(support, name) as (_, page):
        return page


def test_viewers_see_no_forms_they_cannot_use(support: Billsync) -> None:
    page = account_page_as(support, "vera")
    for action in ("/actions/sync", "/actions/hold", "/adjustments", "/policy", "Why (audit log)"):
        assert action not in page, action
    assert "Dedicated IPv4 address" in page  # the account itself is all there
    page = account_page_as(support, "alex")
    for action in ("/actions/sync", "/actions/hold", "/adjustments"):
        assert action in page, action
    assert "/policy" not in page  # admins set the policy


def test_every_action_says_what_it_did(support: Billsync) -> None:
    with console_as(support) as (client, _):
        csrf = csrf_of(client, "/console/accounts/acme")
        held = client.post(
            "/console/accounts/acme/actions/hold",
            data={"csrf": csrf, "reason": "dispute", "period": NOVEMBER.isoformat()},
        )
        said = re.search(r'id="flash" role="status">([^<]+)<', held.text)
        assert said is not None
        assert said.group(1) == (
            "The period starting 2026-11-01 is held: it will not finalize until released."
        )
        # Said once: the next page does not repeat it.
        assert 'id="flash"' not in client.get("/console/accounts/acme").text
        synced = client.post(
            "/console/accounts/acme/actions/sync", data={"csrf": csrf, "reason": "asked"}
        )
        assert "Synced: 0 Stripe call(s)." in synced.text
        # A confirmation is the session's own: another session's (or a forged) one is not shown.
        client.post(
            "/console/accounts/acme/actions/release",
            data={"csrf": csrf, "reason": "ok", "period": NOVEMBER.isoformat()},
            follow_redirects=False,
        )
        sealed = client.cookies.get("billsync_console_flash")
        assert sealed is not None
    with console_as(support, "ada") as (other, _):
        other.cookies.set("billsync_console_flash", sealed)
        assert 'id="flash"' not in other.get("/console/accounts/acme").text
        other.cookies.set("billsync_console_flash", "0" * 32 + ".VGhlIHBlcmlvZA")
        assert 'id="flash"' not in other.get("/console/accounts/acme").text


def test_reason_boxes_are_labelled(support: Billsync) -> None:
    page = account_page_as(support, "ada")
    boxes = re.findall(r'<input[^>]*name="reason"', page)
    labelled = re.findall(r'<label class="field">[^<]*<input[^>]*name="reason"', page)
    assert len(boxes) >= 4
    assert len(labelled) == len(boxes)
    assert 'placeholder="reason"' not in page


def test_lines_read_as_people_name_them_and_a_credit_as_a_credit(support: Billsync) -> None:
    support.ingest.ingest([event("acme", "ip.ipv4.hours", "5000", at=T0)])
    support.support.adjust(
        "acme", "2.00", kind="credit", description="Goodwill", actor="alex", reason="outage"
    )
    page = account_page_as(support)
    lines = page.split('class="lines"', 1)[1].split("</table>", 1)[0]
    assert '<span class="line-name">Dedicated IPv4 address</span>' in lines
    assert "5,100 hours" in lines  # in the catalog's unit, with its name
    assert "ip.ipv4.hours" not in lines
    assert "adjustment[1]" not in lines
    assert '<span class="tag credit">credit</span> <span class="line-name">Credit: Goodwill' in (
        lines
    )
    assert "\u2212$2.00" in lines  # an amount in the currency: a credit reads negative
    audit = page.split('id="audit"', 1)[1]
    assert "Credit of $2.00 (Goodwill); in the Stripe draft" in audit


def test_times_are_shown_to_the_second_in_the_viewers_zone(
    support: Billsync, clock: ManualClock
) -> None:
    clock.set(datetime(2026, 7, 1, 12, 30, 5, tzinfo=UTC))
    support.support.act("hold", "acme", actor="alex", reason="r", period=NOVEMBER)
    with console_as(support) as (client, page):
        assert "2026-07-01 12:30:05 UTC" in page.split('id="audit"', 1)[1]
        moved = client.get(
            "/console/timezone", params={"tz": "America/New_York", "next": "/console/accounts/acme"}
        )
        assert moved.status_code == 200
        assert moved.url.path == "/console/accounts/acme"
        assert "Times are now in America/New_York." in moved.text
        assert "2026-07-01 08:30:05 EDT (UTC-04:00)" in moved.text.split('id="audit"', 1)[1]
        assert client.get("/console/timezone", params={"tz": "Mars/Olympus"}).status_code == 422
        away = client.get(
            "/console/timezone",
            params={"tz": "Asia/Kolkata", "next": "https://evil.test/"},
            follow_redirects=False,
        )
        assert away.headers["location"] == "/console"
        home = client.get("/console").text
        assert "2026-07-01 18:00:05 IST (UTC+05:30)" in home


def test_a_finalized_period_does_not_say_when_its_review_ends(
    support: Billsync, clock: ManualClock
) -> None:
    assert support.sync is not None
    clock.set(datetime(2026, 12, 1, 3, tzinfo=UTC))
    support.sync.lifecycle.advance()
    assert period_status(support) is PeriodStatus.REVIEW
    page = account_page_as(support)
    assert "(review ends 2026-12-01 04:00:00 UTC)" in page
    clock.advance(timedelta(hours=2))
    support.sync.lifecycle.advance()
    assert period_status(support) is PeriodStatus.FINALIZED
    page = account_page_as(support)
    assert "review ends" not in page
    assert "(finalized 2026-12-01 05:00:00 UTC)" in page
