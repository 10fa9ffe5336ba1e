"""Security, table-driven: every route of the app × every kind of caller, with the answer each
must get; CSRF and sessions in the console; secrets never in the logs; oversized and slow
requests bounded; SQL and header injection harmless.

The route inventory is read from the app itself: a route added without a row in the table
fails ``test_every_route_is_in_the_table``, so nothing ships unclassified."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from billsync.api import console as console_routes
from billsync.api import pages as pages_routes
from billsync.api.app import create_app
from billsync.bootstrap import Billsync, build
from billsync.clock import ManualClock
from billsync.core import customer_tokens
from billsync.core.catalog import Catalog
from billsync.db.database import Database
from billsync.db.tables import accounts as accounts_table
from tests.conftest import T0, TEST_TOKEN, emulator_settings
from tests.factories import create_account, event
from tests.served import serve
from tests.stripe_peer import EMULATOR_KEY, RunningEmulator

PASSWORD = "correct horse battery"
WEBHOOK_SECRET = "whsec_securityTestSecret0123456789"
CALLERS = ("anonymous", "wrong_token", "other_customer", "own_customer", "platform",
           "viewer", "agent", "admin")  # fmt: skip

# What each kind of route answers each caller: "ok" means the caller got through
# (any status but 401/403 and not the sign-in redirect), a number is the exact status.
API = {"anonymous": 401, "wrong_token": 401, "other_customer": 403, "own_customer": 403,
       "platform": "ok", "viewer": 401, "agent": 401, "admin": 401}  # fmt: skip
API_CUSTOMER = {**API, "own_customer": "ok"}  # the customer's own billing and portal
WEBHOOK = dict.fromkeys(CALLERS, 400)  # signed by Stripe, not by a token: no signature, 400
PUBLIC = dict.fromkeys(CALLERS, "ok")
CONSOLE_PAGE = {**dict.fromkeys(CALLERS, 303), "viewer": "ok", "agent": "ok", "admin": "ok"}
CONSOLE_ADMIN_PAGE = {**CONSOLE_PAGE, "viewer": 403, "agent": 403}
CONSOLE_ACT = {**dict.fromkeys(CALLERS, 401), "viewer": 403, "agent": "ok", "admin": "ok"}
CONSOLE_ADMIN_ACT = {**CONSOLE_ACT, "agent": 403}
BILLING_PAGE = {**dict.fromkeys(CALLERS, 401), "own_customer": "ok", "platform": "ok"}

Expected = dict[str, int | str] | dict[str, int] | dict[str, str] | dict[str, object]
TABLE: dict[tuple[str, str], Expected] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,  # scraped on the internal network, like the health checks
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    ("POST", "/v1/accounts"): API,
    ("GET", "/v1/accounts"): API,
    ("GET", "/v1/accounts/{account_id}"): API,
    ("PATCH", "/v1/accounts/{account_id}"): API,
    ("GET", "/v1/accounts/{account_id}/lines"): API,
    ("GET", "/v1/accounts/{account_id}/prices"): API,
    ("PUT", "/v1/accounts/{account_id}/prices"): API,
    ("POST", "/v1/accounts/{account_id}/credit-grants"): API,
    ("GET", "/v1/accounts/{account_id}/credit-grants"): API,
    ("POST", "/v1/accounts/{account_id}/alerts"): API,
    ("GET", "/v1/accounts/{account_id}/alerts"): API,
    ("DELETE", "/v1/accounts/{account_id}/alerts/{alert_id}"): API,
    ("POST", "/v1/usage"): API,
    ("GET", "/v1/catalog"): API,
    ("GET", "/v1/accounts/{account_id}/sync"): API,
    ("POST", "/v1/accounts/{account_id}/sync"): API,
    ("POST", "/v1/stripe/webhook"): WEBHOOK,
    ("GET", "/v1/accounts/{account_id}/billing"): API_CUSTOMER,
    ("POST", "/v1/accounts/{account_id}/portal"): API_CUSTOMER,
    ("GET", "/v1/accounts/{account_id}/usage"): API_CUSTOMER,
    ("POST", "/v1/accounts/{account_id}/customer-tokens"): API,
    ("GET", "/billing/{account_id}"): BILLING_PAGE,
    ("POST", "/billing/{account_id}/portal"): BILLING_PAGE,
    ("GET", "/billing/{account_id}/usage.csv"): BILLING_PAGE,
    ("GET", "/billing/{account_id}/statement.csv"): BILLING_PAGE,
    ("GET", "/console/login"): PUBLIC,
    # Without the sign-in form's own CSRF token: refused (a wrong password is tested below).
    ("POST", "/console/login"): dict.fromkeys(CALLERS, 403),
    ("POST", "/console/logout"): dict.fromkeys(CALLERS, 303),  # back to sign-in, always
    ("GET", "/console"): CONSOLE_PAGE,
    ("GET", "/console/accounts/{account_id}"): CONSOLE_PAGE,
    ("GET", "/console/health"): CONSOLE_PAGE,
    ("GET", "/console/users"): CONSOLE_ADMIN_PAGE,
    ("POST", "/console/accounts/{account_id}/actions/{action}"): CONSOLE_ACT,
    ("POST", "/console/accounts/{account_id}/adjustments"): CONSOLE_ACT,
    ("POST", "/console/accounts/{account_id}/credit_notes"): CONSOLE_ACT,
    ("POST", "/console/problems/{problem_id}/{action}"): CONSOLE_ACT,
    ("GET", "/console/timezone"): CONSOLE_PAGE,
    ("POST", "/console/accounts/{account_id}/policy"): CONSOLE_ADMIN_ACT,
    ("POST", "/console/accounts/{account_id}/commitment"): CONSOLE_ADMIN_ACT,
    ("POST", "/console/accounts/{account_id}/credit_grants"): CONSOLE_ADMIN_ACT,
    ("POST", "/console/users"): CONSOLE_ADMIN_ACT,
    ("POST", "/console/users/{name}/disable"): CONSOLE_ADMIN_ACT,
}
# Concrete requests for each route: harmless ones (an unknown problem, a disabled nobody,
# an action on acme that changes nothing lasting) so the matrix can run every cell.
PATH_VALUES = {"account_id": "acme", "action": "sync", "problem_id": "999999",
               "decision": "accept", "name": "nobody", "alert_id": "999999"}  # fmt: skip
FORMS = {
    "/console/accounts/acme/adjustments": {"amount": "1.00", "description": "test",
                                           "reason": "matrix", "confirm": "1.00"},
    "/console/accounts/acme/policy": {"policy": "interval", "reason": "matrix"},
    "/console/accounts/acme/commitment": {"amount": "", "reason": "matrix"},
    "/console/accounts/acme/credit_grants": {"amount": "x", "confirm_amount": "x",
                                             "expires_on": "2027-01-01", "reason": "matrix"},
    "/console/accounts/acme/credit_notes": {"period": "2026-11-01", "reason": "matrix"},
    "/console/users": {"name": "matrix-user", "role": "viewer", "password": PASSWORD},
    "/console/login": {"name": "nobody", "password": "wrong"},
}  # fmt: skip
JSON_BODIES = {"/v1/accounts": {"id": "matrix", "currency": "usd"}, "/v1/usage": {"events": []},
               "/v1/accounts/acme/portal": {}, "/v1/accounts/acme/customer-tokens": {}}  # fmt: skip


def inventory() -> set[tuple[str, str]]:
    """Every (method, path) the app serves, from the app itself."""
    found: set[tuple[str, str]] = set()
    app = create_app_for_inventory()
    for path, operations in app.openapi()["paths"].items():
        found |= {(method.upper(), path) for method in operations}
    for router, prefix in ((console_routes.router, ""), (pages_routes.router, "")):
        for route in router.routes:
            for method in getattr(route, "methods", set()) - {"HEAD"}:
                found.add((method, prefix + route.path))  # type: ignore[attr-defined]
    for route in app.routes:  # the app's own routes: health, readiness, the documentation
        path = getattr(route, "path", None)
        if path is not None:
            found |= {(method, path) for method in set(getattr(route, "methods", ())) - {"HEAD"}}
    return found


def create_app_for_inventory() -> FastAPI:
    import tempfile  # noqa: PLC0415

    from billsync.config import Settings  # noqa: PLC0415

    billsync = build(Settings(data_dir=Path(tempfile.mkdtemp()), api_token=TEST_TOKEN))
    return create_app(billsync)


@pytest.mark.unit
def test_every_route_is_in_the_table() -> None:
    served = inventory()
    assert served - set(TABLE) == set(), "routes without a row in the security table"
    assert set(TABLE) - served == set(), "rows for routes that no longer exist"


@dataclass
class World:
    billsync: Billsync
    clients: dict[str, TestClient]
    csrf: dict[str, str]
    prefix: str = ""  # served under this prefix (``--root-path``), or none


@pytest.fixture
def world(  # noqa: PLR0917 - pytest passes fixtures by name
    request: pytest.FixtureRequest,
    tmp_path: Path,
    database: Database,
    clock: ManualClock,
    example_catalog: Catalog,
    running_emulator: RunningEmulator,
) -> Iterator[World]:
    settings = emulator_settings(tmp_path, running_emulator, stripe_webhook_secrets=WEBHOOK_SECRET)
    billsync = build(settings, clock=clock, database=database, catalog=example_catalog)
    for name, role in (("vera", "viewer"), ("alex", "agent"), ("ada", "admin")):
        billsync.console.add_user(name, PASSWORD, role)
    create_account(billsync, "acme")
    create_account(billsync, "globex")
    billsync.ingest.ingest([event("acme", "ip.ipv4.hours", "100", at=T0)])
    secret, now = billsync.customer_token_secret, clock.now()
    own = customer_tokens.issue(secret, "acme", now, timedelta(minutes=15))
    other = customer_tokens.issue(secret, "globex", now, timedelta(minutes=15))
    prefix: str = getattr(request, "param", "")
    app = create_app(billsync)
    bearer = {"anonymous": None, "wrong_token": "not-a-token-0123456789",
              "other_customer": other, "own_customer": own, "platform": TEST_TOKEN}  # fmt: skip
    clients: dict[str, TestClient] = {}
    csrf: dict[str, str] = {}
    for caller in CALLERS:
        client = TestClient(app, follow_redirects=False, root_path=prefix)
        client.__enter__()
        token = bearer.get(caller)
        if token:
            client.headers["Authorization"] = f"Bearer {token}"
        clients[caller] = client
    for caller, name in (("viewer", "vera"), ("agent", "alex"), ("admin", "ada")):
        client = clients[caller]
        form = client.get(f"{prefix}/console/login")
        login_csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert login_csrf is not None
        form_data = {"name": name, "password": PASSWORD, "csrf": login_csrf.group(1)}
        signed = client.post(f"{prefix}/console/login", data=form_data)
        assert signed.status_code == 303, signed.text
        assert signed.headers["location"] == f"{prefix}/console"
        page = client.get(f"{prefix}/console/accounts/acme")
        found = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert found is not None
        csrf[caller] = found.group(1)
    yield World(billsync, clients, csrf, prefix)
    for client in clients.values():
        client.__exit__(None, None, None)
    billsync.close()


def call(world: World, caller: str, method: str, template: str) -> Any:
    path = template.format(**PATH_VALUES)
    served = world.prefix + path
    client = world.clients[caller]
    if method == "GET":
        params = {"token": client.headers["Authorization"][7:]} if (
            path.startswith("/billing/") and caller.endswith("customer")
        ) else None  # fmt: skip
        return client.get(served, params=params)
    if path.startswith(("/console", "/billing")):
        form = dict(FORMS.get(path, {}))
        if caller in world.csrf:
            form["csrf"] = world.csrf[caller]
        if path.startswith("/billing/") and caller.endswith("customer"):
            form["token"] = client.headers["Authorization"][7:]
        return client.post(served, data=form)
    return client.request(method, served, json=JSON_BODIES.get(path))


# The same table behind a prefix (``uvicorn … --root-path /api``): ASGI's path then carries the
# prefix while the router matches what follows it — the token check once looked at the former.
@pytest.mark.parametrize("world", ["", "/api"], indirect=True)
def test_every_route_answers_every_caller_as_the_table_says(world: World) -> None:
    wrong: list[str] = []
    rows = sorted(TABLE.items(), key=lambda row: row[0][1] == "/console/logout")  # sign out last
    for (method, template), expected_by_caller in rows:
        for caller in CALLERS:
            expected = expected_by_caller[caller]
            answer = call(world, caller, method, template)
            status = answer.status_code
            if expected == "ok":
                through = status not in (401, 403) and not (
                    status == 303
                    and answer.headers.get("location") == f"{world.prefix}/console/login"
                )
                passed = through and status < 500
            else:
                passed = status == expected
            if not passed:
                wrong.append(f"{method} {template} as {caller}: {status}, expected {expected}")
    assert wrong == [], "\n".join(wrong)


def test_console_forms_need_their_csrf_token_and_sessions_end_at_sign_out(world: World) -> None:
    admin = world.clients["admin"]
    refused = admin.post("/console/accounts/acme/actions/sync", data={"reason": "x"})
    assert refused.status_code == 403
    assert "security token" in refused.text
    forged = admin.post("/console/accounts/acme/actions/sync",
                        data={"reason": "x", "csrf": world.csrf["agent"]})  # fmt: skip
    assert forged.status_code == 403  # another session's token does not open this one
    cookie = admin.cookies.get("billsync_console") or next(iter(admin.cookies.values()))
    assert admin.post("/console/logout", data={"csrf": world.csrf["admin"]}).status_code == 303
    # The old cookie, replayed after sign-out, opens nothing: the session is gone server-side.
    replay = TestClient(admin.app, follow_redirects=False)
    replay.cookies.set("billsync_console", cookie)
    assert replay.get("/console").status_code == 303


def test_a_wrong_password_is_refused_and_the_session_cookie_is_locked_down(world: World) -> None:
    client = TestClient(world.clients["anonymous"].app, follow_redirects=False)
    form = client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    token = csrf.group(1)
    wrong = client.post("/console/login", data={"name": "ada", "password": "guess", "csrf": token})
    assert wrong.status_code == 401
    right = client.post("/console/login", data={"name": "ada", "password": PASSWORD, "csrf": token})
    cookie = right.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie


def test_secrets_and_tokens_never_reach_the_logs(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    own = world.clients["own_customer"].headers["Authorization"][7:]
    secrets = [TEST_TOKEN, EMULATOR_KEY, WEBHOOK_SECRET, PASSWORD, own,
               world.billsync.customer_token_secret]  # fmt: skip
    platform = world.clients["platform"]
    platform.post("/v1/usage", json={"events": [event("acme", at=T0)]})
    platform.post("/v1/accounts/acme/sync")
    platform.post("/v1/accounts/acme/customer-tokens", json={})
    world.clients["own_customer"].post("/v1/accounts/acme/portal", json={})
    world.clients["wrong_token"].get("/v1/catalog")
    world.clients["other_customer"].get("/v1/accounts/acme/billing")
    platform.post("/v1/stripe/webhook", content=b"{}", headers={"Stripe-Signature": "t=1,v1=00"})
    anonymous = TestClient(platform.app)
    form = anonymous.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    anonymous.post("/console/login", data={"name": "ada", "password": PASSWORD + "x",
                                           "csrf": csrf.group(1)})  # fmt: skip
    assert world.billsync.sync is not None
    assert world.billsync.sync.service.sync_account("acme").ok
    assert caplog.records, "nothing was logged: the check would prove nothing"
    text = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    leaked = [secret[:6] + "…" for secret in secrets if secret in text]
    assert leaked == [], f"secrets in the logs: {leaked}"


def test_sql_and_header_injection_are_harmless(world: World, database: Database) -> None:
    platform = world.clients["platform"]
    for hostile in ("acme'; DROP TABLE accounts;--", "x' OR '1'='1", "acme\r\nX-Injected: 1"):
        created = platform.post("/v1/accounts", json={"id": hostile, "currency": "usd"})
        assert created.status_code == 422, created.text
        looked_up = platform.get(f"/v1/accounts/{quote(hostile, safe='')}")
        assert looked_up.status_code in (400, 404, 422)  # 400: CR LF is refused in any path
        assert "x-injected" not in looked_up.headers
    named = platform.post("/v1/accounts", json={
        "id": "quoted", "currency": "usd", "name": "Robert'); DROP TABLE accounts;--",
    })  # fmt: skip
    assert named.status_code == 201
    assert platform.get("/v1/accounts/quoted").json()["name"].startswith("Robert');")
    searched = world.clients["viewer"].get("/console", params={"q": "' OR 1=1 --"})
    assert searched.status_code == 200
    assert "acme" not in searched.text.split("</form>", 1)[-1]  # no row matched the injection
    with database.read() as connection:
        assert connection.execute(select(func.count()).select_from(accounts_table)).scalar() == 3


def test_an_oversized_body_is_refused_before_it_is_read(world: World) -> None:
    platform = world.clients["platform"]
    limit = world.billsync.settings.max_body_bytes
    huge = b'{"events": [' + b" " * (limit + 1) + b"]}"
    answer = platform.post("/v1/usage", content=huge, headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "body_too_large"


def test_a_slow_body_is_cut_off_at_the_body_timeout(
    tmp_path: Path, database: Database, example_catalog: Catalog
) -> None:
    from billsync.config import Settings  # noqa: PLC0415

    billsync = build(
        Settings(data_dir=tmp_path, api_token=TEST_TOKEN, body_timeout_seconds=1.0),
        database=database,
        catalog=example_catalog,
    )
    with serve(billsync) as base_url:
        host, port = base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/usage HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer " + TEST_TOKEN.encode() + b"\r\n"
                b"Content-Length: 1000\r\n\r\n{"
            )
            answer = b""
            sent = 1
            # A byte every 0.1 s: the connection is never idle, and the body would take 100 s
            # to complete. Only a deadline on the whole body can answer before it is complete.
            while sent < 999 and not answer:
                try:
                    sock.sendall(b" ")
                except OSError:
                    break
                sent += 1
                time.sleep(0.1)
                sock.settimeout(0.01)
                with contextlib.suppress(TimeoutError, BlockingIOError):
                    answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"request_timeout" in answer
    assert sent < 999, "the body was complete before billsync answered"


def test_the_token_is_checked_on_the_path_the_router_matches_behind_a_prefix(
    world: World,
) -> None:
    """Served under a prefix (``uvicorn … --root-path /api``), ASGI's path carries the prefix
    and the router matches what follows it: the token check must look at that, or every /v1
    route is open to anyone behind a prefix."""
    with TestClient(create_app(world.billsync), root_path="/api") as prefixed:
        anonymous = prefixed.get("/api/v1/accounts/acme")
        assert anonymous.status_code == 401, anonymous.text
        assert (
            prefixed.post("/api/v1/accounts", json={"id": "x", "currency": "usd"}).status_code
            == 401
        )
        assert prefixed.post("/api/v1/usage", json={"events": []}).status_code == 401
        allowed = prefixed.get(
            "/api/v1/accounts/acme", headers={"Authorization": f"Bearer {TEST_TOKEN}"}
        )
        assert allowed.status_code == 200, allowed.text
