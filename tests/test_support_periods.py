"""A credit or a charge goes on the invoice of the period it is made for — the one under dispute,
not the next open one — is pushed to that period's draft, and is on the invoice Stripe finalizes
when the period is approved. A credit never makes an invoice negative. Through the service, the
CLI and the console, on both stores."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
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
from billsync.core.periods import PeriodStatus
from billsync.db.database import Database
from billsync.errors import BillsyncError
from billsync.repositories import console as console_repository
from billsync.repositories import sync as sync_repository
from tests.conftest import cli_against_emulator, emulator_settings
from tests.stripe_peer import RunningEmulator
from tests.support_scenes import (
    DECEMBER,
    NOVEMBER,
    PASSWORD,
    disputed_account,
    draft_lines,
    period,
    stripe,
)


@pytest.fixture
def disputed(
    tmp_path: Path,
    database: Database,
    clock: ManualClock,
    example_catalog: Catalog,
    running_emulator: RunningEmulator,
) -> Iterator[Billsync]:
    """November (154.42) held in review, December open with 0.03."""
    settings = emulator_settings(tmp_path, running_emulator)
    billsync = build(settings, clock=clock, database=database, catalog=example_catalog)
    billsync.console.add_user("alex", PASSWORD, "agent")
    disputed_account(billsync, running_emulator, clock)
    yield billsync
    billsync.close()


def adjustments(billsync: Billsync) -> list[tuple[Any, str, int]]:
    """Every adjustment line: (period, key, amount)."""
    with billsync.database.read() as connection:
        lines = sync_repository.lines_of(connection, "acme", [NOVEMBER, DECEMBER])
    return sorted((line.period_start, line.key, line.amount) for line in lines
                  if line.metric == "adjustment")  # fmt: skip


def entries(billsync: Billsync, prefix: str = "adjustment.") -> list[dict[str, Any]]:
    with billsync.database.read() as connection:
        trail = console_repository.trail(connection, "acme")
    return [e for e in reversed(trail) if e["action"].startswith(prefix)]


def test_a_credit_goes_on_the_disputed_period_and_reaches_its_draft(
    disputed: Billsync, running_emulator: RunningEmulator
) -> None:
    """The case study's dispute: the credit used to land on December (0.03 → −4.97) and
    November was approved at 154.42. Without a period it now goes on the oldest period not
    finalized — November, held — and its draft shows it at once."""
    support = disputed.support
    adjusted = support.adjust(
        "acme", "5.00", kind="credit", description="Goodwill", actor="alex", reason="dispute"
    )
    assert (adjusted.period_start, adjusted.period_status) == (NOVEMBER, PeriodStatus.HELD)
    assert adjusted.pushed is True
    assert adjustments(disputed) == [(NOVEMBER, "adjustment[1]", -500)]
    assert (-500, "Credit: Goodwill") in draft_lines(disputed, running_emulator, NOVEMBER)
    invoice = stripe(running_emulator, "GET", f"/v1/invoices/{period(disputed).stripe_invoice_id}")
    assert invoice["total"] == 15442 - 500
    (entry,) = entries(disputed)
    assert (entry["action"], entry["period_start"]) == ("adjustment.credit", NOVEMBER)
    assert entry["detail"]["period"] == "2026-11-01"
    assert entry["detail"]["period_status"] == "held"
    assert entry["detail"]["outcome"]["pushed"] is True
    # A period named explicitly: December takes a charge.
    charge = support.adjust(
        "acme", "2.00", kind="charge", description="Setup", actor="alex", reason="onboarding",
        period="2026-12-01",
    )  # fmt: skip
    assert (charge.period_start, charge.period_status) == (DECEMBER, PeriodStatus.OPEN)
    assert adjustments(disputed)[-1] == (DECEMBER, "adjustment[1]", 200)


def test_approving_the_period_puts_its_credit_on_the_finalized_invoice(
    disputed: Billsync, running_emulator: RunningEmulator
) -> None:
    """A credit not in Stripe's draft yet (added with no sync after it) is pushed by the
    approval's own sync before Stripe finalizes: the finalized invoice carries it."""
    disputed.adjustments.add(
        "acme", amount=-500, description="Goodwill", actor="alex", reason="dispute",
        period_start=NOVEMBER,
    )  # fmt: skip
    assert (-500, "Credit: Goodwill") not in draft_lines(disputed, running_emulator, NOVEMBER)
    done = disputed.support.act("approve", "acme", actor="alex", reason="ok", period=NOVEMBER)
    assert done.outcome == {"finalized": True}
    invoice = stripe(running_emulator, "GET", f"/v1/invoices/{period(disputed).stripe_invoice_id}")
    assert invoice["status"] in ("open", "paid")
    assert invoice["total"] == 15442 - 500
    assert (-500, "Credit: Goodwill") in draft_lines(disputed, running_emulator, NOVEMBER)
    assert adjustments(disputed) == [(NOVEMBER, "adjustment[1]", -500)]  # December untouched


def test_a_period_on_its_way_to_finalization_takes_no_adjustment(
    disputed: Billsync, running_emulator: RunningEmulator
) -> None:
    """Approved but not finalized yet (Stripe refused the finalize): its final sync may have
    read its lines already, so a credit now would never reach the invoice. Refused, with what to
    do instead; and once finalized, refused too."""
    running_emulator.control(
        "POST", "faults",
        {"rules": [{"kind": "500", "endpoint": "POST /v1/invoices/{id}/finalize", "count": 5}]},
    )  # fmt: skip
    done = disputed.support.act("approve", "acme", actor="alex", reason="ok", period=NOVEMBER)
    assert done.outcome == {"finalized": False}
    assert period(disputed).finalize_requested_at is not None
    with pytest.raises(BillsyncError) as finalizing:
        disputed.support.adjust(
            "acme", "1.00", kind="credit", description="Late", actor="alex", reason="r",
            period="2026-11-01",
        )  # fmt: skip
    assert (finalizing.value.status_code, finalizing.value.code) == (409, "period_finalizing")
    assert "credit note" in finalizing.value.message
    running_emulator.control("DELETE", "faults")
    assert disputed.sync is not None
    assert disputed.sync.lifecycle.finalize_approved("acme", NOVEMBER)
    with pytest.raises(BillsyncError) as finalized:
        disputed.support.adjust(
            "acme", "1.00", kind="credit", description="Late", actor="alex", reason="r",
            period="2026-11-01",
        )  # fmt: skip
    assert (finalized.value.status_code, finalized.value.code) == (409, "period_finalized")
    # Without a period, the oldest one not finalized is December now.
    moved = disputed.support.adjust(
        "acme", "0.02", kind="credit", description="Late", actor="alex", reason="r"
    )
    assert moved.period_start == DECEMBER
    assert [e["period_start"] for e in entries(disputed)] == [DECEMBER]


def test_a_credit_larger_than_the_invoice_is_refused(disputed: Billsync) -> None:
    with pytest.raises(BillsyncError) as refused:
        disputed.support.adjust(
            "acme", "5.00", kind="credit", description="Goodwill", actor="alex", reason="r",
            period="2026-12-01",
        )  # fmt: skip
    assert (refused.value.status_code, refused.value.code) == (422, "credit_exceeds_invoice")
    assert refused.value.message.startswith(
        "a credit of $5.00 is more than the invoice of the period starting 2026-12-01 ($0.03): "
        "credit at most $0.03 there"
    )
    with pytest.raises(BillsyncError) as unknown:
        disputed.support.adjust(
            "acme", "1.00", kind="charge", description="x", actor="alex", reason="r",
            period="2026-10-01",
        )  # fmt: skip
    assert unknown.value.code == "period_not_found"
    assert "2026-11-01 (held), 2026-12-01 (open)" in unknown.value.message
    assert adjustments(disputed) == []
    assert entries(disputed) == []
    # Exactly the invoice's total is not more than it: the invoice comes to zero.
    exact = disputed.support.adjust(
        "acme", "0.03", kind="credit", description="x", actor="alex", reason="r",
        period="2026-12-01",
    )  # fmt: skip
    assert exact.period_start == DECEMBER


def test_the_cli_adjusts_the_period_it_names(
    disputed: Billsync,
    database: Database,
    running_emulator: RunningEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cli_against_emulator(monkeypatch, tmp_path / "cli", database, running_emulator)
    runner = CliRunner()

    def adjust(*options: str) -> Any:
        return runner.invoke(cli, [
            "support", "adjust", "acme", "--description", "Goodwill", "--reason", "dispute",
            "--actor", "ci", *options,
        ])  # fmt: skip

    held = adjust("--amount", "-5.00")
    assert held.exit_code == 0, held.output
    assert "credit of $5.00 added to the invoice of the period starting 2026-11-01 (held)" in (
        held.output
    )
    assert "in the Stripe draft now" in held.output
    named = adjust("--amount", "1.00", "--period", "2026-12-01")
    assert named.exit_code == 0, named.output
    assert "period starting 2026-12-01 (open)" in named.output
    too_much = adjust("--amount", "-2.00", "--period", "2026-12-01")
    assert too_much.exit_code == 2
    assert "is more than the invoice of the period starting 2026-12-01 ($1.03)" in " ".join(
        too_much.output.split()
    )
    bad = adjust("--amount", "-1.00", "--period", "December")
    assert bad.exit_code == 2
    assert "YYYY-MM-DD" in bad.output
    help_text = runner.invoke(cli, ["support", "adjust", "--help"]).output
    assert "oldest period not finalized" in " ".join(help_text.split())
    assert adjustments(disputed) == [
        (NOVEMBER, "adjustment[1]", -500),
        (DECEMBER, "adjustment[1]", 100),
    ]


def test_the_console_form_says_which_period_and_targets_it(
    disputed: Billsync, running_emulator: RunningEmulator, clock: ManualClock
) -> None:
    with TestClient(create_app(disputed)) as client:
        login = client.get("/console/login").text
        token = re.search(r'name="csrf" value="([^"]+)"', login)
        assert token is not None
        client.post(
            "/console/login",
            data={"name": "alex", "password": PASSWORD, "csrf": token.group(1)},
        )
        page = client.get("/console/accounts/acme").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        # Every period whose invoice can change is offered; the oldest is chosen by default,
        # the one looked at (?period=) when there is one.
        assert 'value="2026-11-01" selected' in page
        assert "2026-11-01 – 2026-12-01 (held)" in page
        assert "2026-12-01 – 2027-01-01 (open)" in page
        assert "Add to the selected period's invoice" in page
        looked_at = client.get("/console/accounts/acme", params={"period": "2026-12-01"}).text
        assert 'value="2026-12-01" selected' in looked_at
        form = {
            "csrf": csrf.group(1), "kind": "credit", "amount": "5.00", "confirm_amount": "5.00",
            "description": "Goodwill", "reason": "dispute", "period": "2026-11-01",
        }  # fmt: skip
        done = client.post("/console/accounts/acme/adjustments", data=form)
        assert done.status_code == 200
        said = re.search(r'<p class="flash" id="flash" role="status">([^<]+)</p>', done.text)
        assert said is not None
        assert said.group(1) == (
            "Credit of $5.00 added to the invoice of the period starting 2026-11-01 (held). "
            "Stripe&#39;s draft shows it now."
        )
        refused = client.post(
            "/console/accounts/acme/adjustments", data=form | {"period": "2026-12-01"}
        )
        assert refused.status_code == 422
        assert "is more than the invoice" in refused.text
    assert (-500, "Credit: Goodwill") in draft_lines(disputed, running_emulator, NOVEMBER)
    clock.set(datetime(2026, 12, 2, tzinfo=UTC))
    assert adjustments(disputed) == [(NOVEMBER, "adjustment[1]", -500)]
