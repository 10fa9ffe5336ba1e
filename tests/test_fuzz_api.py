"""Schemathesis against billsync's own OpenAPI document: generated requests (valid and
invalid) to every documented route, as the platform (API token) and with no token, on each
store (SQLite, and PostgreSQL when BILLSYNC_TEST_DATABASE_URL is set). No answer is a 5xx,
every status and body is one the document declares, invalid input is refused with a 4xx, valid
input is accepted, and 405s name the allowed methods.

Schemathesis draws string characters from all of Unicode (UTF-8), NUL included (its
``allow_x00``, on by default), but seldom NUL, control or bidi-override characters: a third
test puts one of those into the strings of every generated request (path ids, query values,
body strings) and checks that no answer is a 5xx and that none of them is ever stored.
Schemathesis never draws lone surrogates (it excludes them: no UTF-8 carries them);
tests/test_hostile_input.py sends those, as JSON escapes."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import checks
from sqlalchemy import text
from starlette.types import ASGIApp, Receive, Scope, Send

from billsync.api.app import create_app
from billsync.bootstrap import build
from billsync.clock import ManualClock
from billsync.config import Settings
from billsync.db import migrate
from billsync.db.database import Database
from billsync.emulator.app import create_app as create_emulator
from billsync.emulator.state import EmulatorConfig
from tests.conftest import T0, TABLES, TEST_TOKEN
from tests.factories import create_account, event
from tests.ports import free_port
from tests.stripe_peer import EMULATOR_KEY, save_portal_settings
from tests.test_hostile_input import assert_nothing_refused_is_stored

# CI replays the same examples every run (a gate must not fail by chance); a run elsewhere
# draws new ones, and keeps exploring.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
# Checks a route is exempt from, and why. The webhook receiver's signature can only be made
# with the secret, so schema-valid requests are refused. A usage batch with invalid events is
# answered 200 with each event rejected on its own line, by design (the rest of the batch
# still counts), so the batch is not refused as a whole. The usage export's from and to must be
# in order and at most 400 days apart (45 with hourly rows): a relation between two
# parameters, which JSON Schema cannot state, so two schema-valid dates are most often refused
# (422, as documented; tests/test_usage_export.py holds the valid ones to 200). A rate card
# names metrics of the catalog, with prices the catalog's rules accept (tiers in ascending
# order): rules of the catalog loaded, not of a schema, so most schema-valid cards are refused
# (422 invalid_prices; tests/test_pricing.py holds the valid ones to 200). A credit grant is in
# the account's own currency and expires after billsync's clock: most schema-valid grants are
# refused (422; tests/test_credits.py holds the valid ones to 201).
# An alert is exactly one of three kinds, a budget needs its percents, and amounts are exact in
# the account's currency: relations JSON Schema does not state here, so most schema-valid
# alerts are refused (422; tests/test_alerts.py holds the valid ones to 201).
EXEMPT = {
    "POST /v1/accounts/{account_id}/credit-grants": [checks.positive_data_acceptance],
    "POST /v1/accounts/{account_id}/alerts": [checks.positive_data_acceptance],
    "PUT /v1/accounts/{account_id}/prices": [checks.positive_data_acceptance],
    "POST /v1/stripe/webhook": [checks.positive_data_acceptance],
    "POST /v1/usage": [checks.negative_data_rejection],
    "GET /v1/accounts/{account_id}/usage": [checks.positive_data_acceptance],
}


EMULATOR_URL = f"http://127.0.0.1:{free_port()}"


def _billsync_app(database: Database, directory: Path) -> ASGIApp:
    """billsync over ``database``, with a few accounts; the emulator it syncs to is started by
    a fixture before the first request."""
    billsync = build(
        Settings(
            data_dir=directory, api_token=TEST_TOKEN, stripe_api_key=EMULATOR_KEY,
            stripe_api_base=EMULATOR_URL, stripe_max_retries=0, stripe_rate=1000,
            stripe_webhook_secrets="whsec_fuzz", on_demand_wait_seconds=2,
        ),
        clock=ManualClock(T0),
        database=database,
    )  # fmt: skip
    for account in ("acme", "0", "globex"):  # ids schemathesis tends to try
        create_account(billsync, account)
    billsync.ingest.ingest([event("acme", at=T0)])
    return create_app(billsync)


def _sqlite() -> Database:
    directory = Path(tempfile.mkdtemp(prefix="billsync-fuzz-"))
    database = Database(f"sqlite:///{directory}/billsync.db")
    migrate.upgrade(database)
    return database


class StoreSwitch:
    """The app the fuzzer calls: billsync over the store the test runs on (the document is the
    same on every store, and schemathesis reads it once, while collecting)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


SQLITE = _sqlite()
ON_SQLITE = _billsync_app(SQLITE, Path(SQLITE.engine.url.database or "").parent)
APP = StoreSwitch(ON_SQLITE)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"], autouse=True)
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    """Every test of the module runs on each store."""
    if request.param == "sqlite":
        APP.app = ON_SQLITE
        yield SQLITE
        return
    database = Database(request.getfixturevalue("postgres_schema_url"))
    with database.engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        connection.execute(text("UPDATE installation SET stripe_mode = NULL"))
    APP.app = _billsync_app(database, tmp_path_factory.mktemp("fuzz-postgresql"))
    yield database
    APP.app = ON_SQLITE
    database.dispose()


@pytest.fixture(scope="module", autouse=True)
def emulator() -> Iterator[None]:
    port = int(EMULATOR_URL.rsplit(":", 1)[1])
    app = create_emulator(EmulatorConfig(public_url=EMULATOR_URL, rate_limit_test=0))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    save_portal_settings(EMULATOR_URL, EMULATOR_KEY)  # a Stripe account set up for billsync
    yield
    server.should_exit = True
    thread.join(timeout=10)


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    derandomize=IN_CI,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_documented_behaviour_with_the_api_token(case: Any) -> None:
    operation = f"{case.method} {case.path}"
    response = case.call_and_validate(
        headers=AUTH,
        additional_checks=[
            checks.negative_data_rejection,
            checks.positive_data_acceptance,
            checks.unsupported_method,
        ],
        excluded_checks=EXEMPT.get(operation, []),
    )
    if operation == "POST /v1/usage" and response.status_code == 200:
        body, answer = case.body, response.json()
        assert len(answer["results"]) == len(body["events"])  # one verdict per event
        assert answer["accepted"] + answer["duplicates"] + answer["rejected"] == len(body["events"])


@schema.parametrize()
@settings(
    max_examples=10, deadline=None, derandomize=IN_CI, suppress_health_check=[HealthCheck.too_slow]
)
def test_without_a_token_every_route_answers_401_and_nothing_else(case: Any) -> None:
    response = case.call()
    if case.path == "/v1/stripe/webhook":  # signed instead: 400 without a valid signature
        assert response.status_code in (400, 405), response.text
        return
    assert response.status_code == 401, (case.method, case.path, response.text)
    assert response.json()["error"]["code"] == "missing_token"


# NUL, C0 and C1 controls, a line separator, bidi embeddings, overrides and isolates.
HOSTILE = "\x00\x01\x1b\x1f\x7f\x85\x9b\u2028\u202a\u202e\u2066\u2069"


@st.composite
def with_hostile_text(draw: st.DrawFn, value: Any, keys: bool = True) -> Any:
    """``value`` with a hostile character put into some of its strings (and of its keys, with
    ``keys``; a parameter's name is the schema's, not data)."""
    if isinstance(value, str):
        if not draw(st.booleans()):
            return value
        at = draw(st.integers(0, len(value)))
        return value[:at] + draw(st.sampled_from(HOSTILE)) + value[at:]
    if isinstance(value, list):
        return [draw(with_hostile_text(item)) for item in value]
    if isinstance(value, dict):
        return {(draw(with_hostile_text(key)) if keys else key): draw(with_hostile_text(item))
                for key, item in value.items()}  # fmt: skip
    return value


def flatmap_body(_context: Any, body: Any) -> st.SearchStrategy[Any]:
    return with_hostile_text(body)


def flatmap_path_parameters(_context: Any, parameters: Any) -> st.SearchStrategy[Any]:
    return with_hostile_text(parameters, keys=False)


def flatmap_query(_context: Any, query: Any) -> st.SearchStrategy[Any]:
    return with_hostile_text(query, keys=False)


@schema.hooks.apply(flatmap_body)
@schema.hooks.apply(flatmap_path_parameters)
@schema.hooks.apply(flatmap_query)
@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=IN_CI,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_hostile_text_in_any_string_is_refused_and_never_stored(case: Any, store: Database) -> None:
    response = case.call(headers=AUTH)
    assert response.status_code < 500, (case.method, case.path, response.text)
    assert_nothing_refused_is_stored(store)
