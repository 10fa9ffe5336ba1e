"""Hypothesis against the webhook receiver: arbitrary bytes, arbitrary signature headers, and
validly signed payloads of any JSON shape. Every answer is 200 (a stored event) or a 400 with
``invalid_signature`` or ``invalid_payload``; never a 5xx; nothing unsigned reaches the inbox;
the inbox and the mirror hold only what was acknowledged."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billsync.api.app import create_app
from billsync.bootstrap import build
from billsync.clock import ManualClock
from billsync.config import Settings
from billsync.core.webhook_signature import compute
from billsync.db import migrate
from billsync.db.database import Database
from billsync.repositories import webhooks
from tests.conftest import T0, TEST_TOKEN

# CI replays the same examples every run (a gate must not fail by chance); a run elsewhere
# draws new ones, and keeps exploring.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SECRET = "whsec_fuzz_0123456789abcdef"
NOW = int(T0.timestamp())
PATH = "/v1/stripe/webhook"


def _client() -> tuple[TestClient, Database]:
    directory = Path(tempfile.mkdtemp(prefix="billsync-webhook-fuzz-"))
    database = Database(f"sqlite:///{directory}/billsync.db")
    migrate.upgrade(database)
    billsync = build(
        Settings(data_dir=directory, api_token=TEST_TOKEN, stripe_webhook_secrets=SECRET),
        clock=ManualClock(T0),
        database=database,
    )
    return TestClient(create_app(billsync)), database


CLIENT, DATABASE = _client()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
event_like = st.fixed_dictionaries(
    {"id": st.one_of(st.text(max_size=40), st.integers(), st.none()),
     "type": st.one_of(st.sampled_from(["invoice.paid", "invoice.payment_failed",
                                        "invoice.finalized", "customer.deleted",
                                        "invoiceitem.deleted", "made.up"]), st.text()),
     "created": st.one_of(st.integers(min_value=-(2**40), max_value=2**40), st.text()),
     "object": st.one_of(st.just("event"), st.text(max_size=8)),
     "livemode": st.one_of(st.booleans(), st.text(max_size=3)),
     "data": st.one_of(st.fixed_dictionaries({"object": json_values}), json_values)},
)  # fmt: skip


def received() -> int:
    with DATABASE.read() as connection:
        return webhooks.counts(connection)["received"]


def check(answer: Any) -> None:
    assert answer.status_code in (200, 400), (answer.status_code, answer.text)
    if answer.status_code == 400:
        assert answer.json()["error"]["code"] in ("invalid_signature", "invalid_payload")


@settings(
    max_examples=150, deadline=None, derandomize=IN_CI, suppress_health_check=[HealthCheck.too_slow]
)
@given(body=st.binary(max_size=300), header=st.one_of(st.none(), st.text(max_size=120)))
def test_unsigned_or_badly_signed_bodies_are_refused_and_never_stored(
    body: bytes, header: str | None
) -> None:
    before = received()
    headers = {} if header is None else {"Stripe-Signature": header}
    try:
        answer = CLIENT.post(PATH, content=body, headers=headers)
    except (UnicodeEncodeError, ValueError):
        return  # the HTTP client refuses to send this header at all
    check(answer)
    assert answer.status_code == 400
    assert received() == before


@settings(
    max_examples=150, deadline=None, derandomize=IN_CI, suppress_health_check=[HealthCheck.too_slow]
)
@given(payload=st.one_of(json_values, event_like), skew=st.integers(-400, 400))
def test_signed_payloads_of_any_shape_are_stored_once_or_refused(payload: Any, skew: int) -> None:
    body = json.dumps(payload).encode()
    stamp = NOW + skew
    header = f"t={stamp},v1={compute(body, SECRET, stamp)}"
    before = received()
    answer = CLIENT.post(PATH, content=body, headers={"Stripe-Signature": header})
    check(answer)
    if abs(skew) > 300:  # outside the tolerance: a replay, whatever it carries
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "invalid_signature"
    if answer.status_code == 400:
        assert received() == before
        return
    stored = answer.json()
    assert received() == before + (0 if stored["duplicate"] else 1)
    again = CLIENT.post(PATH, content=body, headers={"Stripe-Signature": header})
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert received() == before + (0 if stored["duplicate"] else 1)
