"""Each kind of problem gets the actions that fit it: a failed payment is retried now, its
customer noted as contacted, or it is resolved with a note — never offered drift's "accept
Stripe's version" (which used to answer "Not done — no drift problem 1"); drift keeps accept and
re-push. The failed payment reads as a person would say it: attempts count from 1, amounts in the
currency. Through the service, the console and the CLI, on both stores."""

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
from billsync.repositories import problems
from billsync.repositories.problems import ProblemRecord
from billsync.services.support import problem_actions
from billsync.services.webhooks import payment_failure
from tests.conftest import cli_against_emulator, emulator_settings
from tests.stripe_peer import RunningEmulator
from tests.support_scenes import PASSWORD, finalized_november, mirrored, pay_with, stripe

DUE = "$157.16"


@pytest.fixture
def declined(
    tmp_path: Path, database: Database, clock: ManualClock, example_catalog: Catalog,
    running_emulator: RunningEmulator,
) -> Iterator[tuple[Billsync, str]]:  # fmt: skip
    """acme's November invoice finalized, its payment declined: an open payment_failed
    problem. Yields billsync and the invoice id."""
    settings = emulator_settings(tmp_path, running_emulator)
    billsync = build(settings, clock=clock, database=database, catalog=example_catalog)
    billsync.console.add_user("alex", PASSWORD, "agent")
    billsync.console.add_user("vera", PASSWORD, "viewer")
    invoice = finalized_november(billsync, running_emulator, clock, "pm_card_chargeDeclined")
    yield billsync, invoice
    billsync.close()


def open_problems(billsync: Billsync) -> list[ProblemRecord]:
    with billsync.database.read() as connection:
        return problems.open_problems(connection, "acme")


def entries(billsync: Billsync) -> list[dict[str, Any]]:
    with billsync.database.read() as connection:
        trail = console_repository.trail(connection, "acme")
    return [e for e in reversed(trail) if e["action"].startswith(("problem.", "payment."))]


@pytest.mark.unit
def test_each_kind_of_problem_has_its_actions() -> None:
    assert problem_actions("payment_failed") == ("retry_payment", "contacted", "resolve")
    assert problem_actions("extra_in_stripe") == ("accept", "repush")  # keep it, or remove it
    assert problem_actions("amount_differs") == ("accept", "repush")
    assert problem_actions("missing_in_stripe") == ("repush",)  # billsync's own: repair it
    assert problem_actions("total_differs") == ("accept",)  # finalized: no re-push
    assert problem_actions("customer_deleted") == ("resolve",)
    assert payment_failure(1) == "payment attempt 1 failed"
    assert payment_failure(0) == "a payment attempt failed"


def test_a_failed_payment_reads_as_people_say_it(declined: tuple[Billsync, str]) -> None:
    billsync, invoice = declined
    (problem,) = open_problems(billsync)
    assert problem.kind == "payment_failed"
    number = stripe_number(billsync, invoice)
    assert problem.detail == (
        f"invoice {number}: payment attempt 1 failed, {DUE} still due (Stripe retries and "
        "dunning apply)"
    )


def stripe_number(billsync: Billsync, invoice: str) -> str:
    from billsync.repositories import webhooks  # noqa: PLC0415

    with billsync.database.read() as connection:
        mirror = webhooks.get_mirror(connection, invoice)
    assert mirror is not None
    return str(mirror["number"])


def test_drift_actions_do_not_apply_to_a_failed_payment(declined: tuple[Billsync, str]) -> None:
    billsync, _ = declined
    (problem,) = open_problems(billsync)
    for decision in ("accept", "repush"):
        with pytest.raises(BillsyncError) as refused:
            billsync.support.problem_action(problem.id, decision, actor="alex", reason="r")
        assert (refused.value.status_code, refused.value.code) == (409, "action_not_for_problem")
        assert refused.value.message == (
            f"problem {problem.id} is payment failed: "
            f"{'accept stripe' if decision == 'accept' else 're-push the ledger'}"
            f"{chr(39) + 's version' if decision == 'accept' else ''} does not apply to it (what "
            "does: retry the payment now, mark the customer contacted, resolve with a note)"
        )
    assert entries(billsync) == []


def test_retry_the_payment_now(
    declined: tuple[Billsync, str], running_emulator: RunningEmulator
) -> None:
    billsync, invoice = declined
    (problem,) = open_problems(billsync)
    again = billsync.support.problem_action(
        problem.id, "retry_payment", actor="alex", reason="customer says the card works now"
    )
    assert (again.resolved, again.message) == (False, "Declined: Your card was declined.")
    assert [p.id for p in open_problems(billsync)] == [problem.id]
    assert stripe(running_emulator, "GET", f"/v1/invoices/{invoice}")["attempt_count"] == 2
    mirrored(billsync)
    (problem,) = open_problems(billsync)
    assert "payment attempt 2 failed" in problem.detail
    pay_with(running_emulator, billsync, "pm_card_visa")
    paid = billsync.support.problem_action(
        problem.id, "retry_payment", actor="alex", reason="new card on file"
    )
    assert (paid.resolved, paid.message) == (True, f"Paid: {DUE}.")
    assert open_problems(billsync) == []
    retries = entries(billsync)
    assert [(e["action"], e["detail"]["outcome"]["paid"]) for e in retries] == [
        ("payment.retry", False), ("payment.retry", True),
    ]  # fmt: skip
    assert retries[0]["detail"]["outcome"]["error"] == "Your card was declined."
    with pytest.raises(BillsyncError) as resolved:
        billsync.support.problem_action(problem.id, "retry_payment", actor="alex", reason="r")
    assert resolved.value.code == "resolved"


def test_contacted_then_resolved_with_a_note(declined: tuple[Billsync, str]) -> None:
    billsync, _ = declined
    (problem,) = open_problems(billsync)
    noted = billsync.support.problem_action(
        problem.id, "contacted", actor="alex", reason="emailed billing@acme.test"
    )
    assert noted.message == f"Noted: the customer was contacted about problem {problem.id}."
    assert [p.id for p in open_problems(billsync)] == [problem.id]  # still open
    done = billsync.support.problem_action(
        problem.id, "resolve", actor="alex", reason="paid by bank transfer, settled in Stripe"
    )
    assert done.resolved
    assert open_problems(billsync) == []
    with billsync.database.read() as connection:
        closed = problems.get(connection, problem.id)
    assert closed is not None
    assert closed.resolution == "resolved by alex: paid by bank transfer, settled in Stripe"
    assert [
        (e["action"], e["detail"]["problem"], e["period_start"]) for e in entries(billsync)
    ] == [
        ("problem.contacted", problem.id, problem.period_start),
        ("problem.resolve", problem.id, problem.period_start),
    ]
    with pytest.raises(BillsyncError) as unknown:
        billsync.support.problem_action(problem.id, "forget", actor="alex", reason="r")
    assert (unknown.value.status_code, unknown.value.code) == (404, "unknown_action")


def test_the_console_offers_what_fits_and_says_what_it_did(
    declined: tuple[Billsync, str],
) -> None:
    billsync, invoice = declined
    (problem,) = open_problems(billsync)
    with TestClient(create_app(billsync)) as viewer:
        sign_in(viewer, "vera")
        page = viewer.get("/console/accounts/acme").text
        assert f"dashboard.stripe.com/test/invoices/{invoice}" in page  # a link, not an action
        assert f"/console/problems/{problem.id}/" not in page
    with TestClient(create_app(billsync)) as client:
        csrf = sign_in(client, "alex")
        page = client.get("/console/accounts/acme").text
        row = page.split(f'data-problem="{problem.id}"', 1)[1].split("</tr>", 1)[0]
        assert "Retry the payment now" in row
        assert "Mark the customer contacted" in row
        assert "Resolve with a note" in row
        assert "Open in the Stripe Dashboard" in row
        assert "Accept Stripe" not in row
        assert "Re-push" not in row
        assert f"payment attempt 1 failed, {DUE} still due" in row
        contacted = client.post(
            f"/console/problems/{problem.id}/contacted",
            data={"csrf": csrf, "reason": "called the CFO", "account": "acme"},
        )
        assert contacted.status_code == 200
        assert f"Noted: the customer was contacted about problem {problem.id}." in contacted.text
        assert "Customer contacted by alex" in contacted.text
        assert "called the CFO" in contacted.text
        refused = client.post(
            f"/console/problems/{problem.id}/accept",
            data={"csrf": csrf, "reason": "x", "account": "acme"},
        )
        assert refused.status_code == 409
        assert "does not apply to it" in refused.text
        assert "no drift problem" not in refused.text


def sign_in(client: TestClient, name: str) -> str:
    login = client.get("/console/login").text
    token = re.search(r'name="csrf" value="([^"]+)"', login)
    assert token is not None
    client.post("/console/login", data={"name": name, "password": PASSWORD,
                                        "csrf": token.group(1)})  # fmt: skip
    page = client.get("/console").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    return csrf.group(1)


def test_the_cli_acts_on_problems(
    *,
    declined: tuple[Billsync, str],
    database: Database,
    running_emulator: RunningEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    billsync, _ = declined
    (problem,) = open_problems(billsync)
    cli_against_emulator(monkeypatch, tmp_path / "cli", database, running_emulator)
    runner = CliRunner()

    def support(*args: str) -> Any:
        return runner.invoke(cli, ["support", *args, "--actor", "ci"])

    retried = support("retry-payment", str(problem.id), "--reason", "try again")
    assert retried.exit_code == 1  # declined again
    assert f"problem {problem.id}: Declined: Your card was declined." in retried.output
    wrong = support("decide", str(problem.id), "accept", "--reason", "x")
    assert wrong.exit_code == 1
    assert "does not apply to it" in wrong.output
    contacted = support("contacted", str(problem.id), "--reason", "left a voicemail")
    assert contacted.exit_code == 0, contacted.output
    no_note = support("resolve", str(problem.id))
    assert no_note.exit_code == 2
    resolved = support("resolve", str(problem.id), "--reason", "written off with finance")
    assert resolved.exit_code == 0, resolved.output
    assert f"problem {problem.id}: Problem {problem.id} resolved: written off" in resolved.output
    assert open_problems(billsync) == []
