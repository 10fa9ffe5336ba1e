"""Support actions through their one service, as the console and ``billsync support`` reach it:
an action commits with its audit entry or not at all, a drift decision is audited under its
problem's account, concurrent adjustments all land, and typed amounts are exact or refused."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from billsync.api.app import create_app
from billsync.bootstrap import Billsync, build
from billsync.cli.main import app as cli
from billsync.clock import ManualClock
from billsync.core.catalog import Catalog
from billsync.core.periods import PeriodStatus
from billsync.db.database import Database
from billsync.errors import BillsyncError, InvalidRequest
from billsync.repositories import console as console_repository
from billsync.repositories import problems
from billsync.repositories import sync as sync_repository
from tests.conftest import T0, cli_against_emulator, emulator_settings
from tests.factories import create_account, event
from tests.served import serve
from tests.stripe_peer import EMULATOR_KEY, RunningEmulator

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
    billsync.console.add_user("alex", PASSWORD, "agent")
    for account in ("acme", "globex"):
        create_account(billsync, account)
        billsync.ingest.ingest([event(account, "ip.ipv4.hours", "100", at=T0)])
        assert billsync.sync is not None
        assert billsync.sync.service.sync_account(account).ok
    yield billsync
    billsync.close()


def signed_in(client: TestClient | httpx.Client) -> str:
    """Sign alex in; returns the session's CSRF token."""
    form = client.get("/console/login").text
    login_csrf = form.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    answer = client.post(
        "/console/login",
        data={"name": "alex", "password": PASSWORD, "csrf": login_csrf},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text[:300]
    page = client.get("/console/accounts/acme").text
    return page.split('name="csrf" value="', 1)[1].split('"', 1)[0]


def trail(billsync: Billsync, account: str | None = None) -> list[dict[str, Any]]:
    """The audit entries of support actions (not sign-ins), oldest first."""
    with billsync.database.read() as connection:
        entries = reversed(console_repository.trail(connection, account))
    return [e for e in entries if not e["action"].startswith("console.")]


def period_status(billsync: Billsync, account: str = "acme") -> PeriodStatus:
    with billsync.database.read() as connection:
        period = sync_repository.get_period(connection, account, NOVEMBER)
    assert period is not None
    return period.status


def adjustment_lines(billsync: Billsync, account: str = "acme") -> list[tuple[str, int]]:
    """The account's adjustment lines, in every period (the CLI runs on the real clock)."""
    with billsync.database.read() as connection:
        periods = sync_repository.periods_with_status(connection, PeriodStatus, account_id=account)
        lines = sync_repository.lines_of(connection, account, [p.start for p in periods])
    return sorted((line.key, line.amount) for line in lines if line.metric == "adjustment")


def drift_problem(billsync: Billsync, emulator: RunningEmulator, account: str) -> int:
    """A line added to the account's draft in the Dashboard: an open extra_in_stripe problem."""
    with billsync.database.read() as connection:
        period = sync_repository.get_period(connection, account, NOVEMBER)
    assert period is not None
    httpx.post(
        f"{emulator.url}/v1/invoices/{period.stripe_invoice_id}/add_lines",
        data={"lines[0][amount]": "999", "lines[0][description]": "added in the Dashboard"},
        headers={"Authorization": f"Bearer {EMULATOR_KEY}"},
    ).raise_for_status()
    assert billsync.sync is not None
    assert billsync.sync.reconciler is not None
    billsync.sync.reconciler.reconcile(account, repair=False)
    with billsync.database.read() as connection:
        (problem,) = problems.open_problems(connection, account)
    return problem.id


# --- an action and its audit entry commit together --------------------------------------------


def test_an_action_whose_audit_entry_fails_is_not_done(
    support: Billsync, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit entry is written in the action's transaction: if writing it fails, the period
    is not held (it used to be held, then the separate audit transaction failed)."""

    def broken(*args: object, **kwargs: object) -> int:
        raise RuntimeError("the audit log is unavailable")

    with TestClient(create_app(support), raise_server_exceptions=False) as client:
        csrf = signed_in(client)
        monkeypatch.setattr(console_repository, "record", broken)
        answer = client.post(
            "/console/accounts/acme/actions/hold",
            data={"csrf": csrf, "reason": "dispute", "period": NOVEMBER.isoformat()},
            follow_redirects=False,
        )
    assert answer.status_code == 500
    assert period_status(support) is PeriodStatus.OPEN


def test_a_reason_the_audit_log_cannot_hold_is_refused_before_acting(support: Billsync) -> None:
    """PostgreSQL refused a 2,001-character reason only after the period was held (a 500 and an
    unaudited hold); now every store refuses it first, and control characters with it."""
    with TestClient(create_app(support)) as client:
        csrf = signed_in(client)
        for reason in ("x" * 2001, "dispute\x00", "dispute \u202eesrever"):
            answer = client.post(
                "/console/accounts/acme/actions/hold",
                data={"csrf": csrf, "reason": reason, "period": NOVEMBER.isoformat()},
                follow_redirects=False,
            )
            assert answer.status_code == 422, reason
    assert period_status(support) is PeriodStatus.OPEN
    assert [e for e in trail(support) if e["action"].startswith("period.")] == []


def test_console_and_cli_write_the_same_audit_entries(
    support: Billsync,
    database: Database,
    running_emulator: RunningEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One service: the same action names, period and detail whoever asks; actions that call
    Stripe carry what Stripe answered (``outcome``) on the same entry."""
    with TestClient(create_app(support)) as client:
        csrf = signed_in(client)
        for action in ("sync", "hold", "release"):
            answer = client.post(
                f"/console/accounts/acme/actions/{action}",
                data={"csrf": csrf, "reason": f"console {action}", "period": "2026-11-01"},
                follow_redirects=False,
            )
            assert answer.status_code == 303, answer.text[:300]
    cli_against_emulator(monkeypatch, tmp_path / "cli", database, running_emulator)
    runner = CliRunner()
    for action in ("sync", "hold", "release"):
        options = ["--period", "2026-11-01"] if action != "sync" else []
        result = runner.invoke(
            cli,
            ["support", action, "globex", *options, "--reason", f"cli {action}", "--actor", "ci"],
        )
        assert result.exit_code == 0, result.output
    by_console = [
        (e["action"], e["period_start"], sorted(e["detail"])) for e in trail(support, "acme")
    ]
    by_cli = [
        (e["action"], e["period_start"], sorted(e["detail"])) for e in trail(support, "globex")
    ]
    assert (
        by_console
        == by_cli
        == [
            ("account.sync", None, ["outcome"]),
            ("period.hold", NOVEMBER, []),
            ("period.release", NOVEMBER, []),
        ]
    )
    assert trail(support, "acme")[0]["detail"]["outcome"] == {"calls": 0, "error": None}


def test_the_cli_refuses_what_the_console_refuses(
    support: Billsync,
    database: Database,
    running_emulator: RunningEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cli_against_emulator(monkeypatch, tmp_path / "cli", database, running_emulator)
    runner = CliRunner()
    for args, code in [
        (["hold", "acme", "--period", "2026-11-01"], 2),  # no reason
        (["hold", "acme", "--period", "November", "--reason", "x"], 2),
        (["hold", "acme", "--period", "2026-11-01", "--reason", "x\x00"], 2),
        (["hold", "nobody", "--period", "2026-11-01", "--reason", "x"], 1),  # no such period
        (["decide", "1", "maybe", "--reason", "x"], 2),
        (["decide", "999999", "accept", "--reason", "x"], 1),  # no such problem
    ]:
        result = runner.invoke(cli, ["support", *args])
        assert result.exit_code == code, (args, result.output)
    assert period_status(support) is PeriodStatus.OPEN
    assert trail(support) == []


# --- drift decisions are audited under the problem's account -----------------------------------


def test_a_drift_decision_is_audited_under_its_problems_account(
    support: Billsync, running_emulator: RunningEmulator
) -> None:
    problem_id = drift_problem(support, running_emulator, "acme")
    with TestClient(create_app(support)) as client:
        csrf = signed_in(client)
        # The form names another account: refused, nothing decided, nothing audited.
        refused = client.post(
            f"/console/problems/{problem_id}/accept",
            data={"csrf": csrf, "reason": "setup fee agreed", "account": "globex"},
            follow_redirects=False,
        )
        assert refused.status_code == 422
        assert "is about account &#39;acme&#39;" in refused.text
        with support.database.read() as connection:
            assert [p.id for p in problems.open_problems(connection, "acme")] == [problem_id]
        assert trail(support) == []
        decided = client.post(
            f"/console/problems/{problem_id}/accept",
            data={"csrf": csrf, "reason": "setup fee agreed", "account": "acme"},
            follow_redirects=False,
        )
        assert decided.status_code == 303
        assert decided.headers["location"] == "/console/accounts/acme"
    (entry,) = trail(support)
    assert (entry["action"], entry["account_id"], entry["period_start"]) == (
        "drift.accept",
        "acme",
        NOVEMBER,
    )
    assert entry["detail"]["problem"] == problem_id
    assert entry["detail"]["resolved"] is True


def test_the_cli_audits_a_drift_decision_under_its_problems_account(
    support: Billsync,
    database: Database,
    running_emulator: RunningEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``billsync support decide`` names no account: the entry used to have none."""
    problem_id = drift_problem(support, running_emulator, "globex")
    cli_against_emulator(monkeypatch, tmp_path / "cli", database, running_emulator)
    result = CliRunner().invoke(
        cli, ["support", "decide", str(problem_id), "repush", "--reason", "not ours"]
    )
    assert result.exit_code == 0, result.output
    assert f"problem {problem_id}: resolved" in result.output
    (entry,) = trail(support, "globex")
    assert (entry["action"], entry["period_start"]) == ("drift.repush", NOVEMBER)
    # Re-pushing calls Stripe: the decision is committed first, the outcome settled after.
    assert entry["detail"]["outcome"] == {"resolved": True, "error": None}


# --- adjustments ---------------------------------------------------------------------------------


def test_concurrent_console_adjustments_all_land(support: Billsync) -> None:
    """16 agents adding a credit at the same moment: each is numbered in turn (on PostgreSQL
    half of them used to collide on the line key adjustment[n] and answer 500)."""
    count = 16
    # A charge first: the credits (136.00 in all) never take the invoice below zero.
    support.adjustments.add(
        "acme", amount=20_000, description="Setup", actor="test", reason="onboarding"
    )
    with serve(support) as url, httpx.Client(base_url=url) as client:
        csrf = signed_in(client)
        barrier = threading.Barrier(count)
        answers: list[int] = []

        def credit(number: int) -> None:
            barrier.wait()
            answer = client.post(
                "/console/accounts/acme/adjustments",
                data={
                    "csrf": csrf,
                    "kind": "credit",
                    "amount": f"{number}.00",
                    "confirm_amount": f"{number}.00",
                    "description": f"Goodwill {number}",
                    "reason": "outage",
                },
            )
            answers.append(answer.status_code)

        threads = [threading.Thread(target=credit, args=(n,)) for n in range(1, count + 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert sorted(answers) == [303] * count
    lines = adjustment_lines(support)
    assert sorted(key for key, _ in lines) == sorted(f"adjustment[{n}]" for n in range(1, 18))
    assert sorted(amount for _, amount in lines) == sorted(
        [20_000] + [-100 * n for n in range(1, 17)]
    )
    assert len([e for e in trail(support, "acme") if e["action"] == "adjustment.credit"]) == 16


@pytest.mark.parametrize(
    "amount",
    [
        "1e1000000",  # was a 500 (decimal.Overflow)
        "0.005",  # was booked as 1 cent without a word
        "1_000",  # Python's Decimal reads underscores
        "NaN",
        "Infinity",
        "1E2",
        "١٢",  # Arabic-Indic digits
        "１",  # a full-width digit
        "1,000",
        "1000000.00",  # more than Stripe takes on one line
        "-5.00",  # the kind says which way
        "0",
    ],
)
def test_console_amounts_are_exact_or_refused(support: Billsync, amount: str) -> None:
    with TestClient(create_app(support)) as client:
        csrf = signed_in(client)
        answer = client.post(
            "/console/accounts/acme/adjustments",
            data={
                "csrf": csrf,
                "kind": "credit",
                "amount": amount,
                "confirm_amount": amount,
                "description": "Goodwill",
                "reason": "outage",
            },
            follow_redirects=False,
        )
    assert answer.status_code == 422, answer.text[:300]
    assert adjustment_lines(support) == []
    assert trail(support) == []


def test_the_cli_takes_the_same_amounts(
    support: Billsync,
    database: Database,
    running_emulator: RunningEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cli_against_emulator(monkeypatch, tmp_path / "cli", database, running_emulator)
    runner = CliRunner()

    def adjust(amount: str) -> Any:
        return runner.invoke(cli, [
            "support", "adjust", "acme", "--amount", amount, "--description", "Setup",
            "--reason", "onboarding",
        ])  # fmt: skip

    for refused in ("0.005", "1_000", "1e1000000", "١٢", "-0.001"):
        result = adjust(refused)
        assert result.exit_code == 2, (refused, result.output)
    assert "at most 2 decimals" in adjust("0.005").output
    assert adjust("30").exit_code == 0
    assert adjust("-12.50").exit_code == 0
    assert adjustment_lines(support) == [("adjustment[1]", 3000), ("adjustment[2]", -1250)]


def test_the_service_refuses_in_its_own_terms(support: Billsync) -> None:
    """What an API route would get: BillsyncErrors with a status and a stable code."""
    service = support.support
    with pytest.raises(InvalidRequest) as amount:
        service.adjust("acme", "0.005", description="x", actor="api", reason="r", kind="credit")
    assert amount.value.code == "invalid_amount"
    with pytest.raises(BillsyncError) as unknown:
        service.act("delete", "acme", actor="api", reason="r")
    assert (unknown.value.status_code, unknown.value.code) == (404, "unknown_action")
    with pytest.raises(BillsyncError) as missing:
        service.act("hold", "acme", actor="api", reason="r", period=date(2026, 1, 1))
    assert (missing.value.status_code, missing.value.code) == (404, "period_not_found")
    done = service.act("hold", "acme", actor="api", reason="r", period=NOVEMBER)
    assert (done.action, done.account_id, done.period_start) == ("period.hold", "acme", NOVEMBER)
    with pytest.raises(BillsyncError) as again:
        service.act("hold", "acme", actor="api", reason="r", period=NOVEMBER)
    assert (again.value.status_code, again.value.code) == (409, "period_not_holdable")
    assert [e["action"] for e in trail(support)] == ["period.hold"]


def test_a_policy_set_by_support_has_the_apis_bounds(support: Billsync) -> None:
    """A policy with an interval past a period's length overflowed the scheduler's arithmetic
    (a 500) when set through the console; it is refused like the API refuses it."""
    with pytest.raises(InvalidRequest) as refused:
        support.support.set_policy(
            "acme", {"policy": "interval", "interval_seconds": 10**15}, actor="ada", reason="r"
        )
    assert refused.value.code == "invalid_policy"
    assert "at most" in refused.value.message
    assert trail(support) == []
