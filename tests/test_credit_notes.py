"""After finalization the fix is a credit note in Stripe: issued by an agent (whole invoice or one
line, with a reason, the part already paid refunded or credited to the customer's balance),
audited, kept in billsync's record beside the invoice mirror (from the answer and from Stripe's
events), shown in the console, and not taken for drift by ``billsync verify``. Through the
service, the console and the CLI, against the emulator, on both stores."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from billsync.api.app import create_app
from billsync.bootstrap import Billsync, build
from billsync.cli.main import app as cli
from billsync.clock import ManualClock
from billsync.core.catalog import Catalog
from billsync.db.database import Database
from billsync.errors import BillsyncError
from billsync.repositories import console as console_repository
from billsync.repositories import credit_notes as credit_note_repository
from billsync.repositories import sync as sync_repository
from billsync.repositories import webhooks as webhook_repository
from billsync.services.verify import CREDIT_NOTED, Verifier
from tests.conftest import cli_against_emulator, emulator_settings
from tests.stripe_peer import RunningEmulator
from tests.support_scenes import (
    NOVEMBER,
    PASSWORD,
    disputed_account,
    finalized_november,
    mirrored,
    period,
    stripe,
)

TOTAL = 15442 + 274  # two lines: IPv4 addresses (154.42) and a shared-cpu-1x machine (2.74)


@pytest.fixture
def service(
    tmp_path: Path, database: Database, clock: ManualClock, example_catalog: Catalog,
    running_emulator: RunningEmulator,
) -> Iterator[Billsync]:  # fmt: skip
    settings = emulator_settings(tmp_path, running_emulator)
    billsync = build(settings, clock=clock, database=database, catalog=example_catalog)
    billsync.console.add_user("alex", PASSWORD, "agent")
    billsync.console.add_user("vera", PASSWORD, "viewer")
    yield billsync
    billsync.close()


def records(billsync: Billsync) -> list[credit_note_repository.CreditNoteRecord]:
    with billsync.database.read() as connection:
        return credit_note_repository.of_account(connection, "acme")


def trail(billsync: Billsync) -> list[dict[str, Any]]:
    with billsync.database.read() as connection:
        return [
            e for e in reversed(console_repository.trail(connection, "acme"))
            if e["action"] == "credit_note.issue"
        ]  # fmt: skip


def line_id(billsync: Billsync, amount: int) -> int:
    with billsync.database.read() as connection:
        lines = sync_repository.lines_of(connection, "acme", [NOVEMBER])
    return next(line.id for line in lines if line.amount == amount)


def test_a_credit_note_lowers_what_an_unpaid_invoice_still_owes(
    service: Billsync, running_emulator: RunningEmulator, clock: ManualClock
) -> None:
    invoice_id = finalized_november(service, running_emulator, clock, "pm_card_chargeDeclined")
    issued = service.support.issue_credit_note(
        "acme", "2026-11-01", actor="alex", reason="outage on the 12th", amount="5.00",
        reason_code="product_unsatisfactory", memo="Sorry for the outage",
    )  # fmt: skip
    assert (issued.split.total, issued.split.pre, issued.split.post) == (500, 500, 0)
    assert issued.summary() == (
        f"Credit note {issued.number} of $5.00 issued on invoice {issued.invoice_number}: "
        "$5.00 off what was still due."
    )
    invoice = stripe(running_emulator, "GET", f"/v1/invoices/{invoice_id}")
    assert (invoice["total"], invoice["amount_due"]) == (TOTAL, TOTAL - 500)
    assert invoice["pre_payment_credit_notes_amount"] == 500
    # billsync's record and mirror, at once (the answer), then Stripe's events (newer) win.
    (record,) = records(service)
    assert (record.stripe_credit_note_id, record.total, record.pre_payment_amount) == (
        issued.credit_note_id, 500, 500,
    )  # fmt: skip
    assert (record.reason, record.memo, record.period_start) == (
        "product_unsatisfactory", "Sorry for the outage", NOVEMBER,
    )  # fmt: skip
    assert record.last_event_created == 0
    with service.database.read() as connection:
        mirror = webhook_repository.get_mirror(connection, invoice_id)
    assert mirror is not None
    assert mirror["amount_remaining"] == TOTAL - 500
    mirrored(service)
    (record,) = records(service)
    assert record.last_event_created > 0  # credit_note.created applied over it
    (entry,) = trail(service)
    assert (entry["actor"], entry["period_start"], entry["reason"]) == (
        "alex", NOVEMBER, "outage on the 12th",
    )  # fmt: skip
    assert entry["detail"]["amount"] == 500
    assert entry["detail"]["outcome"] == {
        "credit_note": issued.credit_note_id, "number": issued.number, "total": 500,
    }  # fmt: skip
    # The rest of the invoice: all that can still be credited, when no amount is given; then
    # nothing is left, and the invoice is settled without a payment.
    rest = service.support.issue_credit_note("acme", NOVEMBER, actor="alex", reason="waived")
    assert rest.split.total == TOTAL - 500
    invoice = stripe(running_emulator, "GET", f"/v1/invoices/{invoice_id}")
    assert (invoice["status"], invoice["amount_paid"], invoice["amount_remaining"]) == (
        "paid", 0, 0,
    )  # fmt: skip
    with pytest.raises(BillsyncError) as nothing_left:
        service.support.issue_credit_note("acme", NOVEMBER, actor="alex", reason="again")
    assert (nothing_left.value.status_code, nothing_left.value.code) == (409, "nothing_to_credit")


def test_after_payment_a_line_is_credited_to_the_balance_or_refunded(
    service: Billsync, running_emulator: RunningEmulator, clock: ManualClock
) -> None:
    invoice_id = finalized_november(service, running_emulator, clock, "pm_card_visa")
    assert stripe(running_emulator, "GET", f"/v1/invoices/{invoice_id}")["status"] == "paid"
    small = line_id(service, 274)
    credited = service.support.issue_credit_note(
        "acme", NOVEMBER, actor="alex", reason="wrong region", line_id=small,
        destination="credit",
    )  # fmt: skip
    assert (credited.split.total, credited.split.credit, credited.split.refund) == (274, 274, 0)
    assert "$2.74 credited to the customer's balance" in credited.summary()
    customer = stripe(running_emulator, "GET", f"/v1/invoices/{invoice_id}")["customer"]
    assert stripe(running_emulator, "GET", f"/v1/customers/{customer}")["balance"] == -274
    with pytest.raises(BillsyncError) as line_done:
        service.support.issue_credit_note(
            "acme", NOVEMBER, actor="alex", reason="again", line_id=small, amount="0.01"
        )
    assert line_done.value.code == "nothing_to_credit"
    refunded = service.support.issue_credit_note(
        "acme", NOVEMBER, actor="alex", reason="outage", amount="10.00",
        line_id=line_id(service, 15442), destination="refund", reason_code="order_change",
    )  # fmt: skip
    assert (refunded.split.refund, refunded.split.credit) == (1000, 0)
    assert "$10.00 refunded" in refunded.summary()
    kept = records(service)
    assert sorted((r.total, r.credit_amount, r.refund_amount) for r in kept) == [
        (274, 274, 0), (1000, 0, 1000),
    ]  # fmt: skip
    assert {r.lines[0]["amount"] for r in kept} == {274, 1000}


def test_what_a_credit_note_refuses(
    service: Billsync, running_emulator: RunningEmulator, clock: ManualClock
) -> None:
    finalized_november(service, running_emulator, clock, "pm_card_chargeDeclined")

    def refused(**arguments: Any) -> BillsyncError:
        with pytest.raises(BillsyncError) as error:
            service.support.issue_credit_note(
                **({"account_id": "acme", "period": "2026-11-01", "actor": "alex",
                    "reason": "r"} | arguments)
            )  # fmt: skip
        return error.value

    too_much = refused(amount="1000.00")
    assert (too_much.status_code, too_much.code) == (422, "credit_exceeds_invoice")
    assert too_much.message.startswith("at most $157.16 can still be credited on invoice ")
    assert refused(amount="0.005").code == "invalid_amount"
    assert refused(amount="-1").code == "invalid_amount"
    assert refused(reason=" ").code == "reason_required"
    assert refused(reason_code="because").code == "invalid_credit_note_reason"
    assert refused(destination="cash").code == "invalid_destination"
    assert refused(line_id=999_999).code == "invalid_line"
    assert refused(memo="x\u202e").code == "invalid_memo"
    open_period = refused(period="2026-12-01")
    assert open_period.code == "period_not_found"
    assert refused(account_id="nobody").code == "account_not_found"
    assert records(service) == []
    assert trail(service) == []


def test_a_credit_note_is_refused_before_finalization(
    service: Billsync, running_emulator: RunningEmulator, clock: ManualClock
) -> None:
    disputed_account(service, running_emulator, clock)
    with pytest.raises(BillsyncError) as held:
        service.support.issue_credit_note("acme", NOVEMBER, actor="alex", reason="r")
    assert (held.value.status_code, held.value.code) == (409, "invoice_not_finalized")
    assert "add a credit to it instead" in held.value.message


def test_a_lost_answer_is_found_by_its_decision_not_issued_twice(
    service: Billsync, running_emulator: RunningEmulator, clock: ManualClock
) -> None:
    """The connection breaks after Stripe created the credit note: the service looks for the
    one carrying its audit entry's id before anyone issues another."""
    invoice_id = finalized_november(service, running_emulator, clock, "pm_card_chargeDeclined")
    running_emulator.control(
        "POST", "faults", {"endpoint": "POST /v1/credit_notes", "kind": "drop_after_commit",
                           "count": 1},
    )  # fmt: skip
    issued = service.support.issue_credit_note(
        "acme", NOVEMBER, actor="alex", reason="r", amount="3.00"
    )
    listed = stripe(running_emulator, "GET", f"/v1/credit_notes?invoice={invoice_id}")["data"]
    assert [note["id"] for note in listed] == [issued.credit_note_id]
    assert listed[0]["metadata"]["billsync_audit_entry"] == str(trail(service)[0]["id"])


def test_verify_explains_a_credit_noted_invoice(
    service: Billsync, running_emulator: RunningEmulator, clock: ManualClock
) -> None:
    finalized_november(service, running_emulator, clock, "pm_card_chargeDeclined")
    service.support.issue_credit_note("acme", NOVEMBER, actor="alex", reason="r", amount="5.00")
    assert service.sync is not None
    report = Verifier(service.database, service.sync.gateway, catalog=service.catalog).verify()
    assert report.ok, report.violations
    (explained,) = [v for v in report.explained if v.kind == CREDIT_NOTED]
    assert explained.detail.endswith(
        "credit notes of 5.00 lowered it after finalization (5.00 off what was due, 0.00 "
        "refunded or credited to the customer's balance)"
    )
    assert (explained.ledger_amount, explained.stripe_amount) == (TOTAL, TOTAL - 500)


def test_the_console_issues_a_credit_note_and_shows_it(
    service: Billsync, running_emulator: RunningEmulator, clock: ManualClock
) -> None:
    finalized_november(service, running_emulator, clock, "pm_card_chargeDeclined")
    with TestClient(create_app(service)) as client:
        login = client.get("/console/login").text
        token = re.search(r'name="csrf" value="([^"]+)"', login)
        assert token is not None
        client.post("/console/login", data={"name": "vera", "password": PASSWORD,
                                            "csrf": token.group(1)})  # fmt: skip
        assert "Issue a credit note" not in client.get("/console/accounts/acme").text
    with TestClient(create_app(service)) as client:
        login = client.get("/console/login").text
        token = re.search(r'name="csrf" value="([^"]+)"', login)
        assert token is not None
        client.post("/console/login", data={"name": "alex", "password": PASSWORD,
                                            "csrf": token.group(1)})  # fmt: skip
        page = client.get("/console/accounts/acme").text
        assert "Issue a credit note on invoice" in page
        assert "Dedicated IPv4 address ($154.42)" in page  # a line to credit, by its name
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        form = {
            "csrf": csrf.group(1), "period": "2026-11-01", "line": str(line_id(service, 15442)),
            "amount": "12.00", "destination": "credit", "stripe_reason": "order_change",
            "memo": "Billing error", "reason": "customer called",
        }  # fmt: skip
        done = client.post("/console/accounts/acme/credit_notes", data=form)
        assert done.status_code == 200
        assert re.search(
            r'id="flash"[^>]*>Credit note [^ ]+ of \$12\.00 issued on invoice', done.text
        )
        assert 'id="credit-notes"' in done.text
        assert "$12.00 off what was due" in done.text
        assert "Order change (the bill was wrong) · Billing error" in done.text
        refused = client.post("/console/accounts/acme/credit_notes", data=form | {"amount": "999"})
        assert refused.status_code == 422
        assert "can still be credited" in refused.text
    assert [r.total for r in records(service)] == [1200]


def test_the_cli_issues_a_credit_note(
    *,
    service: Billsync,
    database: Database,
    running_emulator: RunningEmulator,
    clock: ManualClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    finalized_november(service, running_emulator, clock, "pm_card_visa")
    cli_against_emulator(monkeypatch, tmp_path / "cli", database, running_emulator)
    runner = CliRunner()
    result = runner.invoke(cli, [
        "support", "credit-note", "acme", "--period", "2026-11-01", "--amount", "2.50",
        "--destination", "refund", "--stripe-reason", "duplicate", "--reason", "double charge",
        "--actor", "ci",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "of $2.50 issued on invoice" in result.output
    assert "$2.50 refunded" in result.output
    wrong = runner.invoke(cli, [
        "support", "credit-note", "acme", "--period", "2026-11-01", "--amount", "2.50",
        "--destination", "cash", "--reason", "x",
    ])  # fmt: skip
    assert wrong.exit_code == 2
    assert "choose where the part already paid goes" in wrong.output
    assert [(r.total, r.refund_amount) for r in records(service)] == [(250, 250)]
    assert period(service).status.value == "finalized"
