"""A request that changes money is carried out once, however often it is sent: the console's
forms (a double click, the browser sending a form again) by the one-time ``submission`` each
rendered form carries, the API's credit grants and alerts by the client's ``Idempotency-Key``.
The key is written on the action's audit entry in the action's own transaction, unique per
actor; on SQLite and PostgreSQL, against the emulator over HTTP."""

# ruff: noqa: F811
# (pytest fixtures imported from tests.test_credit_notes are named as test parameters)

from __future__ import annotations

import re
import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from billsync.api.app import create_app
from billsync.bootstrap import Billsync
from billsync.clock import ManualClock
from billsync.core.request_keys import RequestKey
from billsync.db.tables import audit_log, credit_grants, lines, spend_alerts
from billsync.errors import DuplicateRequest
from billsync.repositories import console as console_repository
from billsync.repositories import credit_notes as credit_note_repository
from tests.conftest import T0
from tests.factories import create_account, event
from tests.stripe_peer import RunningEmulator
from tests.support_scenes import PASSWORD, finalized_november, stripe
from tests.test_credit_notes import service  # noqa: F401  (the fixture: agent "alex")
from tests.waiting import blocked_by, wait_until

SUBMISSION = re.compile(r'name="submission" value="([^"]+)"')


def signed_in(client: TestClient) -> None:
    login = client.get("/console/login").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', login)
    assert csrf is not None
    answer = client.post(
        "/console/login",
        data={"name": "alex", "password": PASSWORD, "csrf": csrf.group(1)},
        follow_redirects=False,
    )
    assert answer.status_code == 303


def form_of(page: str, action: str) -> dict[str, str]:
    """The hidden fields (csrf, submission) of the page's form posting to ``action``."""
    form = re.search(rf'<form[^>]*action="[^"]*{re.escape(action)}"[^>]*>(.*?)</form>', page, re.S)
    assert form is not None, action
    hidden = re.findall(r'<input type="hidden" name="([a-z]+)" value="([^"]*)"', form.group(1))
    return dict(hidden)


def count(billsync: Billsync, table: Any, *where: Any) -> int:
    with billsync.database.read() as connection:
        return int(connection.execute(select(func.count()).select_from(table).where(*where))
                   .scalar_one())  # fmt: skip


def with_usage(billsync: Billsync) -> None:
    """acme, with $13.70 of usage this period: room for a few credits."""
    create_account(billsync)
    billsync.ingest.ingest([event("acme", "ip.ipv4.hours", "5000", at=T0)])


def credit_form(client: TestClient, amount: str) -> dict[str, str]:
    """The adjustment form of a fresh look at acme's page, filled in for a credit."""
    return form_of(client.get("/console/accounts/acme").text, "/adjustments") | {
        "kind": "credit", "amount": amount, "confirm_amount": amount,
        "description": "Goodwill", "reason": "outage",
    }  # fmt: skip


def adjustment_lines(billsync: Billsync) -> int:
    adjustment = lines.c.line_key.like("adjustment%")
    return count(billsync, lines, lines.c.account_id == "acme", adjustment)


# --- the console ----------------------------------------------------------------------------


def test_each_rendered_form_carries_a_submission_of_its_own(service: Billsync) -> None:
    create_account(service)
    service.ingest.ingest([event("acme", "ip.ipv4.hours", "100", at=T0)])
    with TestClient(create_app(service)) as client:
        signed_in(client)
        first = client.get("/console/accounts/acme").text
        second = client.get("/console/accounts/acme").text
    tokens = SUBMISSION.findall(first)
    assert len(tokens) == len(re.findall(r"<form[^>]*method=\"post\"", first)) - 1  # sign-out
    assert len(set(tokens)) == len(tokens)  # one per form
    assert not set(tokens) & set(SUBMISSION.findall(second))  # and new on every load


def test_an_adjustment_form_sent_twice_adds_one_credit(service: Billsync) -> None:
    with_usage(service)
    with TestClient(create_app(service)) as client:
        signed_in(client)
        page = client.get("/console/accounts/acme").text
        form = form_of(page, "/adjustments") | {
            "kind": "credit", "amount": "5.00", "confirm_amount": "5.00",
            "description": "Goodwill", "reason": "outage on the 12th",
        }  # fmt: skip
        first = client.post("/console/accounts/acme/adjustments", data=form, follow_redirects=False)
        again = client.post("/console/accounts/acme/adjustments", data=form)
        assert first.status_code == 303
        # The second goes back to the account's page, saying the first was the one.
        assert again.status_code == 200
        assert re.search(r'id="flash"[^>]*>This form was sent more than once: it was carried '
                         r"out once, at .* \(audit entry \d+, adjustment.credit\), and not again",
                         again.text)  # fmt: skip
        # A new load of the page is a new form: the same credit again is a second credit.
        fresh = form_of(client.get("/console/accounts/acme").text, "/adjustments")
        client.post("/console/accounts/acme/adjustments", data=form | fresh)
    assert adjustment_lines(service) == 2
    assert count(service, audit_log, audit_log.c.action == "adjustment.credit") == 2


def test_a_form_sent_again_with_other_values_does_nothing_and_says_so(
    service: Billsync,
) -> None:
    with_usage(service)
    with TestClient(create_app(service)) as client:
        signed_in(client)
        form = credit_form(client, "5.00")
        client.post("/console/accounts/acme/adjustments", data=form)
        other = form | {"amount": "7.00", "confirm_amount": "7.00"}
        refused = client.post("/console/accounts/acme/adjustments", data=other)
    assert refused.status_code == 409
    assert "This form was already used for another request" in refused.text
    assert "nothing was done with these values" in refused.text
    assert adjustment_lines(service) == 1


def test_a_form_refused_for_its_input_can_be_corrected_and_sent_again(service: Billsync) -> None:
    with_usage(service)
    with TestClient(create_app(service)) as client:
        signed_in(client)
        form = credit_form(client, "5.001")
        refused = client.post("/console/accounts/acme/adjustments", data=form)
        assert refused.status_code == 422
        corrected = form | {"amount": "5.00", "confirm_amount": "5.00"}
        done = client.post("/console/accounts/acme/adjustments", data=corrected)
        assert done.status_code == 200
        assert "Credit of $5.00 added" in done.text
    assert adjustment_lines(service) == 1


def test_a_credit_note_form_sent_twice_issues_one_credit_note(
    service: Billsync, running_emulator: RunningEmulator, clock: ManualClock
) -> None:
    invoice_id = finalized_november(service, running_emulator, clock, "pm_card_chargeDeclined")
    with TestClient(create_app(service)) as client:
        signed_in(client)
        form = form_of(client.get("/console/accounts/acme").text, "/credit_notes") | {
            "line": "", "amount": "5.00", "destination": "credit",
            "stripe_reason": "", "memo": "", "reason": "customer called",
        }  # fmt: skip
        sent = [client.post("/console/accounts/acme/credit_notes", data=form) for _ in range(3)]
    assert [s.status_code for s in sent] == [200, 200, 200]
    assert "issued on invoice" in sent[0].text
    assert "carried out once" in sent[1].text
    assert "credit_note.issue" in sent[2].text
    notes = stripe(running_emulator, "GET", f"/v1/credit_notes?invoice={invoice_id}")["data"]
    assert [note["total"] for note in notes] == [500]
    with service.database.read() as connection:
        assert len(credit_note_repository.of_account(connection, "acme")) == 1


def test_two_sends_at_the_same_moment_carry_out_one(service: Billsync) -> None:
    """Both past the early look-up before either commits: the audit entry's unique key decides
    (on PostgreSQL the second insert waits for the first's commit, then is refused)."""
    with_usage(service)
    start = threading.Barrier(4)
    outcomes: list[str] = []

    def send() -> None:
        start.wait()
        try:
            service.support.adjust(
                "acme", "1.00", kind="credit", description="Goodwill", actor="alex",
                reason="outage", submission="form-7f3a",
            )  # fmt: skip
            outcomes.append("done")
        except DuplicateRequest:
            outcomes.append("duplicate")

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["done", "duplicate", "duplicate", "duplicate"]
    assert adjustment_lines(service) == 1


def test_the_unique_key_decides_between_two_uncommitted_sends(
    service: Billsync, clock: ManualClock
) -> None:
    """Neither send has committed when the other looks: the look-up sees no key, and the
    audit entry's unique index is what refuses the second (PostgreSQL makes its insert wait
    for the first's commit, then refuses it). Alerts take no account lock, so this is their
    only guard against two sends at once."""
    if service.database.is_sqlite:
        pytest.skip("SQLite has one writer: the second send begins after the first commits")
    key = RequestKey("alert-form-1", "digest")
    outcome: list[str] = []

    def second() -> None:
        try:
            with service.database.transaction() as connection:
                console_repository.record(
                    connection, actor="api", action="alert.created", now=clock.now(),
                    request=key,
                )  # fmt: skip
            outcome.append("recorded")
        except DuplicateRequest:
            outcome.append("duplicate")

    with service.database.transaction() as connection:
        console_repository.record(
            connection, actor="api", action="alert.created", now=clock.now(), request=key
        )
        holder = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        sender = threading.Thread(target=second)
        sender.start()
        wait_until(lambda: blocked_by(service.database, holder), "the second insert waits")
        assert outcome == []
    sender.join(timeout=30)
    assert outcome == ["duplicate"]
    assert count(service, audit_log, audit_log.c.request_key == "alert-form-1") == 1


def test_keys_are_per_person(service: Billsync) -> None:
    with_usage(service)
    for actor in ("alex", "sam"):
        service.support.adjust(
            "acme", "1.00", kind="credit", description="Goodwill", actor=actor,
            reason="outage", submission="same-token",
        )  # fmt: skip
    assert adjustment_lines(service) == 2


# --- the API --------------------------------------------------------------------------------


def grant(client: TestClient, amount: str, key: str | None, **extra: Any) -> Any:
    body = {"amount": amount, "currency": "usd", "expires_at": "2027-06-30T00:00:00Z", **extra}
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.post("/v1/accounts/acme/credit-grants", json=body, headers=headers)


def test_a_grant_sent_again_with_its_key_is_granted_once(
    billsync: Billsync, client: TestClient
) -> None:
    create_account(billsync)
    first = grant(client, "100.00", "9b2f0c1e-6a1d-4c55-8f0e-2b7d1f3c9a10")
    again = grant(client, "100.00", "9b2f0c1e-6a1d-4c55-8f0e-2b7d1f3c9a10")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert client.get("/v1/accounts/acme/credit-grants").json()["balance"] == 10000
    # Without a key, each request is a grant of its own (as before).
    grant(client, "1.00", None)
    grant(client, "1.00", None)
    assert count(billsync, credit_grants) == 3


def test_a_key_sent_with_another_request_is_refused(billsync: Billsync, client: TestClient) -> None:
    create_account(billsync)
    assert grant(client, "100.00", "key-1").status_code == 201
    other = grant(client, "250.00", "key-1")
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert "a new request needs a new key" in other.json()["error"]["message"]
    assert count(billsync, credit_grants) == 1


def test_a_request_refused_for_its_input_keeps_no_key(
    billsync: Billsync, client: TestClient
) -> None:
    create_account(billsync)
    refused = grant(client, "100.001", "key-2")
    assert refused.status_code == 422
    assert grant(client, "100.00", "key-2").status_code == 201
    assert count(billsync, credit_grants) == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "two words"])
def test_a_key_is_visible_ascii_up_to_255_characters(
    billsync: Billsync, client: TestClient, key: str
) -> None:
    create_account(billsync)
    answer = client.post(
        "/v1/accounts/acme/credit-grants",
        json={"amount": "1.00", "currency": "usd", "expires_at": "2027-06-30T00:00:00Z"},
        headers={"Idempotency-Key": key.encode()},  # UTF-8 bytes, as sent
    )
    if key == "":  # an empty header is no key
        assert answer.status_code == 201
    else:
        assert answer.status_code == 422
        assert answer.json()["error"]["code"] == "invalid_idempotency_key"
    assert count(billsync, credit_grants) == (1 if key == "" else 0)


def test_an_alert_sent_again_with_its_key_is_created_once(
    billsync: Billsync, client: TestClient
) -> None:
    create_account(billsync)
    body = {"amount": "50.00", "name": "half a hundred"}
    headers = {"Idempotency-Key": "alert-1"}
    first = client.post("/v1/accounts/acme/alerts", json=body, headers=headers)
    again = client.post("/v1/accounts/acme/alerts", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert count(billsync, spend_alerts) == 1
    client.delete(f"/v1/accounts/acme/alerts/{first.json()['id']}")
    gone = client.post("/v1/accounts/acme/alerts", json=body, headers=headers)
    assert gone.status_code == 409
    assert gone.json()["error"]["code"] == "alert_deleted"
    assert count(billsync, spend_alerts) == 0
