"""Schemathesis against billsync's own OpenAPI document: generated requests (valid and
invalid) to every documented route, as the platform (API token) and with no token. No answer
is a 5xx, every status and body is one the document declares, invalid input is refused with a
4xx, valid input is accepted, and 405s name the allowed methods."""

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
from schemathesis import checks

from billsync.api.app import create_app
from billsync.bootstrap import build
from billsync.clock import ManualClock
from billsync.config import Settings
from billsync.db import migrate
from billsync.db.database import Database
from billsync.emulator.app import create_app as create_emulator
from billsync.emulator.state import EmulatorConfig
from tests.conftest import T0, TEST_TOKEN
from tests.factories import create_account, event
from tests.ports import free_port
from tests.stripe_peer import EMULATOR_KEY, save_portal_settings

# CI replays the same examples every run (a gate must not fail by chance); a run elsewhere
# draws new ones, and keeps exploring.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
# Checks a route is exempt from, and why. The webhook receiver's signature can only be made
# with the secret, so schema-valid requests are refused. A usage batch with invalid events is
# answered 200 with each event rejected on its own line, by design (the rest of the batch
# still counts), so the batch is not refused as a whole.
EXEMPT = {
    "POST /v1/stripe/webhook": [checks.positive_data_acceptance],
    "POST /v1/usage": [checks.negative_data_rejection],
}


def _billsync_app() -> tuple[Any, str]:
    """Built at import (schemathesis reads the document while collecting); the emulator it
    syncs to is started by a fixture before the first request."""
    directory = Path(tempfile.mkdtemp(prefix="billsync-fuzz-"))
    database = Database(f"sqlite:///{directory}/billsync.db")
    migrate.upgrade(database)
    url = f"http://127.0.0.1:{free_port()}"
    billsync = build(
        Settings(
            data_dir=directory, api_token=TEST_TOKEN, stripe_api_key=EMULATOR_KEY,
            stripe_api_base=url, stripe_max_retries=0, stripe_rate=1000,
            stripe_webhook_secrets="whsec_fuzz", on_demand_wait_seconds=2,
        ),
        clock=ManualClock(T0),
        database=database,
    )  # fmt: skip
    for account in ("acme", "0", "globex"):  # ids schemathesis tends to try
        create_account(billsync, account)
    billsync.ingest.ingest([event("acme", at=T0)])
    return create_app(billsync), url


APP, EMULATOR_URL = _billsync_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


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
