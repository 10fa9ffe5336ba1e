"""What protects people using billsync through a browser and what protects its records:
security headers on the pages, Secure cookies behind a TLS proxy, the portal form's own token,
http(s)-only portal return addresses, a request rate per customer token, credentials kept out
of every log line, private files, and a projection that does not inflate one-off charges."""

from __future__ import annotations

import io
import logging
import os
import re
import stat
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from billsync.api.app import create_app
from billsync.bootstrap import Billsync, build, customer_secret
from billsync.cli.main import api_token
from billsync.clock import ManualClock
from billsync.config import Settings
from billsync.core import customer_tokens
from billsync.core.catalog import Catalog
from billsync.db.database import Database
from billsync.observability.logs import build_handler, redact
from billsync.repositories import sync as sync_repository
from tests.conftest import T0, TEST_TOKEN, emulator_settings
from tests.factories import create_account, event
from tests.stripe_peer import RunningEmulator

PASSWORD = "correct horse battery"
PAGE_HEADERS = ("content-security-policy", "x-frame-options", "referrer-policy", "cache-control")


@pytest.fixture
def web(
    tmp_path: Path,
    database: Database,
    clock: ManualClock,
    example_catalog: Catalog,
    running_emulator: RunningEmulator,
) -> Iterator[Billsync]:
    settings = emulator_settings(
        tmp_path, running_emulator, public_url="https://billing.example.com"
    )
    billsync = build(settings, clock=clock, database=database, catalog=example_catalog)
    billsync.console.add_user("ada", PASSWORD, "admin")
    create_account(billsync, "acme")
    create_account(billsync, "globex")
    yield billsync
    billsync.close()


def token_for(billsync: Billsync, account: str) -> str:
    return customer_tokens.issue(
        billsync.customer_token_secret, account, billsync.clock.now(), timedelta(minutes=15)
    )


def login_csrf(client: TestClient, prefix: str = "") -> str:
    form = client.get(f"{prefix}/console/login")
    found = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert found is not None
    return found.group(1)


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_pages_tell_the_browser_to_protect_them(web: Billsync, prefix: str) -> None:
    token = token_for(web, "acme")
    # https: the page's cookie is Secure (BILLSYNC_PUBLIC_URL is https), as a browser sees it.
    with TestClient(create_app(web), root_path=prefix, base_url="https://testserver") as client:
        pages = {
            "sign-in": client.get(f"{prefix}/console/login"),
            "console": client.get(f"{prefix}/console", follow_redirects=False),
            "refused bill": client.get(f"{prefix}/billing/acme"),
            # The token moves into the cookie on a redirect to the address without it.
            "bill's redirect": client.get(
                f"{prefix}/billing/acme", params={"token": token}, follow_redirects=False
            ),
            "bill": client.get(f"{prefix}/billing/acme"),
        }
        api = client.get(
            f"{prefix}/v1/accounts/acme/billing", headers={"Authorization": f"Bearer {token}"}
        )
    for name, page in pages.items():
        missing = [header for header in PAGE_HEADERS if header not in page.headers]
        assert missing == [], f"{name}: {missing}"
        policy = page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy
        assert "script-src" not in policy  # no script at all: default-src 'none' covers it
        assert "default-src 'none'" in policy
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["referrer-policy"] == "no-referrer"  # the URL carries a token
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["x-content-type-options"] == "nosniff"
    assert (pages["refused bill"].status_code, pages["bill's redirect"].status_code) == (401, 303)
    assert pages["bill"].status_code == 200
    # The portal button's redirect goes to Stripe (or the emulator): allowed as a form target.
    assert "https://billing.stripe.com" in pages["bill"].headers["content-security-policy"]
    assert api.status_code == 200
    assert api.headers["cache-control"] == "no-store"
    assert api.headers["x-content-type-options"] == "nosniff"


def test_cookies_are_secure_when_the_public_address_is_https(web: Billsync) -> None:
    """A TLS-terminating proxy talks plain http to billsync: the cookies are still Secure,
    because customers and agents reach billsync at BILLSYNC_PUBLIC_URL (https)."""
    with TestClient(create_app(web), base_url="http://internal:8080") as client:
        form = client.get("/console/login")
        assert "secure" in form.headers["set-cookie"].lower()
        csrf = login_csrf(client)
        # The proxy's client speaks https, so the browser sends the Secure cookie back.
        signed = client.post(
            "/console/login",
            data={"name": "ada", "password": PASSWORD, "csrf": csrf},
            headers={"Cookie": f"billsync_console_login={csrf}"},
            follow_redirects=False,
        )
        assert signed.status_code == 303
        session = [c for c in signed.headers.get_list("set-cookie") if "billsync_console=" in c]
        assert session
        assert "secure" in session[0].lower()
        page = client.get(
            "/billing/acme", params={"token": token_for(web, "acme")}, follow_redirects=False
        )
        assert page.status_code == 303  # the cookie is set on the redirect that drops the token
        assert "secure" in page.headers["set-cookie"].lower()


def test_cookies_follow_the_request_scheme_without_a_public_address(
    tmp_path: Path, database: Database, clock: ManualClock
) -> None:
    billsync = build(Settings(data_dir=tmp_path, api_token=TEST_TOKEN), database=database,
                     clock=clock)  # fmt: skip
    try:
        with TestClient(create_app(billsync), base_url="http://localhost") as client:
            assert "secure" not in client.get("/console/login").headers["set-cookie"].lower()
    finally:
        billsync.close()


def test_the_portal_form_must_carry_its_own_valid_token(web: Billsync) -> None:
    """The page's cookie alone does not open the portal (another site can make a browser send
    it): the form's token must itself open this account."""
    own = token_for(web, "acme")
    with TestClient(create_app(web), follow_redirects=False) as client:
        assert client.get("/billing/acme", params={"token": own}).status_code == 303
        assert "billsync_customer" in client.cookies  # the page's cookie is set
        for forged in ("bct_forged.1.00", "garbage", token_for(web, "globex")):
            answer = client.post("/billing/acme/portal", data={"token": forged})
            assert answer.status_code == 401, forged
        opened = client.post("/billing/acme/portal", data={"token": own})
        assert opened.status_code == 303
        assert opened.headers["location"].startswith(web.settings.stripe_api_base or "")


@pytest.mark.parametrize(
    "return_url",
    ["javascript:alert(document.cookie)", "data:text/html,<script>1</script>",
     "//evil.example", "https://ok.example/\x00", "ftp://files.example/", "https:///no-host"],
)  # fmt: skip
def test_a_portal_return_url_is_an_http_address(web: Billsync, return_url: str) -> None:
    with TestClient(create_app(web), headers={"Authorization": f"Bearer {TEST_TOKEN}"}) as client:
        refused = client.post("/v1/accounts/acme/portal", json={"return_url": return_url})
        assert refused.status_code in (400, 422), refused.text
        assert refused.json()["error"]["code"] in ("invalid_return_url", "invalid_request")
        accepted = client.post(
            "/v1/accounts/acme/portal", json={"return_url": "https://app.example.com/billing"}
        )
        assert accepted.status_code == 200, accepted.text


def test_a_customer_token_has_a_request_rate(web: Billsync, clock: ManualClock) -> None:
    own = token_for(web, "acme")
    rate = web.settings.customer_requests_per_minute
    with TestClient(create_app(web)) as client:
        customer = {"Authorization": f"Bearer {own}"}
        answers = [
            client.get("/v1/accounts/acme/billing", headers=customer).status_code
            for _ in range(rate)
        ]
        assert set(answers) == {200}
        limited = client.get("/v1/accounts/acme/billing", headers=customer)
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limited"
        assert int(limited.headers["retry-after"]) >= 1
        # The page counts the same token, however it is presented; so do the usage export and
        # the page's CSV.
        assert client.get("/billing/acme", params={"token": own}).status_code == 429
        assert client.get("/v1/accounts/acme/usage", headers=customer).status_code == 429
        assert client.get("/billing/acme/usage.csv", params={"token": own}).status_code == 429
        # Another customer's token and the platform's token are not affected.
        other = {"Authorization": f"Bearer {token_for(web, 'globex')}"}
        assert client.get("/v1/accounts/globex/billing", headers=other).status_code == 200
        platform = {"Authorization": f"Bearer {TEST_TOKEN}"}
        assert client.get("/v1/accounts/acme/billing", headers=platform).status_code == 200
        clock.advance(timedelta(seconds=int(limited.headers["retry-after"])))
        assert client.get("/v1/accounts/acme/billing", headers=customer).status_code == 200


def test_tokens_in_a_logged_url_are_redacted(web: Billsync) -> None:
    """uvicorn's access log writes the request's path with its query: the customer page's
    ``?token=bct_…`` (valid up to a day) must not reach the log."""
    token = token_for(web, "acme")
    stream = io.StringIO()
    for log_format in ("json", "text"):
        handler = build_handler(log_format, stream)
        record = logging.LogRecord(
            "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
            ("127.0.0.1:5000", "GET", f"/billing/acme?token={token}&x=1", "1.1", 200), None,
        )  # fmt: skip
        handler.emit(record)
        failure = logging.LogRecord(
            "billsync", logging.ERROR, __file__, 1, "stripe said %s",
            ("Invalid API Key provided: sk_test_abcdefghijklmnop1234",), None,
        )  # fmt: skip
        handler.emit(failure)
    output = stream.getvalue()
    assert token not in output
    assert token.split(".")[2] not in output  # not even the signature
    assert "sk_test_abcdefghijklmnop1234" not in output
    assert "token=[redacted]&x=1" in output
    assert redact("key bsk_generatedToken123 ok") == "key bsk_[redacted] ok"
    assert redact("secret whsec_abcdefgh12345678") == "secret whsec_[redacted]"


def test_the_ledger_and_the_secrets_are_created_private(tmp_path: Path) -> None:
    previous = os.umask(0o022)  # a common default: new files readable by everyone
    try:
        database = Database(f"sqlite:///{tmp_path / 'var' / 'billsync.db'}")
        with database.transaction():  # the file is created, and its WAL
            pass
        database.dispose()
        settings = Settings(data_dir=tmp_path / "secrets")
        api_token(settings)
        customer_secret(settings)
    finally:
        os.umask(previous)
    for path in (
        tmp_path / "var" / "billsync.db",
        tmp_path / "secrets" / "api-token",
        tmp_path / "secrets" / "customer-token-secret",
    ):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o600, f"{path.name}: {oct(mode)}"
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700


def test_serve_prints_the_api_token_only_when_billsync_made_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from billsync.cli.main import announce_token  # noqa: PLC0415

    operators = Settings(data_dir=tmp_path, api_token="bsk_operators-own-secret-token")
    announce_token(operators, "bsk_operators-own-secret-token", "http://127.0.0.1:8080")
    generated_settings = Settings(data_dir=tmp_path / "fresh")
    generated = api_token(generated_settings)
    announce_token(generated_settings, generated, "http://127.0.0.1:8080")
    output = capsys.readouterr().out
    assert "bsk_operators-own-secret-token" not in output
    assert "BILLSYNC_API_TOKEN" in output
    assert generated in output


def test_the_projection_grows_usage_only_not_one_off_charges(
    web: Billsync, clock: ManualClock
) -> None:
    """A $100 charge added mid-period is owed once: the projection must not extrapolate it."""
    clock.set(T0)
    web.ingest.ingest([event("acme", "ip.ipv4.hours", "1000", at=T0 - timedelta(days=1))])
    with web.database.read() as connection:
        account = web.accounts.get(connection, "acme")
        before = web.billing.bill(connection, account)
    with web.database.transaction() as connection:
        sync_repository.add_adjustment_line(
            connection, account_id="acme", period_start=before.period.start,
            key="adjustment[1]", description="Support charge", amount=10_000, currency="usd",
            now=T0,
        )  # fmt: skip
    with web.database.read() as connection:
        after = web.billing.bill(connection, account)
    assert after.total == before.total + 10_000
    assert after.projected_total == before.projected_total + 10_000
    elapsed = (T0 - before.period.start_at) / (before.period.end_at - before.period.start_at)
    assert 0 < elapsed < 1
    assert before.total > 0
    assert abs(Decimal(before.projected_total) - Decimal(before.total) / Decimal(elapsed)) <= 1
