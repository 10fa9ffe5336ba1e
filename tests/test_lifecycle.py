"""Hold, release, approve now, zero-total periods and the circuit breaker, against the emulator."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from billsync.bootstrap import Billsync
from billsync.cli.main import app as cli
from billsync.clock import ManualClock
from billsync.core.periods import PeriodStatus
from billsync.errors import Conflict
from billsync.repositories import problems as problem_repository
from billsync.repositories import sync as sync_repository
from billsync.services.lifecycle import LifecycleService, LifecycleSettings
from billsync.services.sync import SyncService
from billsync.stripe_gateway import StripeGateway
from billsync.sync.budget import CircuitBreaker, RateBudget
from billsync.sync.guard import StripeGuard
from tests.conftest import T0
from tests.factories import create_account, event
from tests.sql_trace import assert_lock_before_writes, statements_by_transaction
from tests.stripe_peer import EMULATOR_KEY, RunningEmulator
from tests.waiting import blocked_by, wait_until

NOVEMBER = date(2026, 11, 1)
AFTER_GRACE = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)


def make(
    billsync: Billsync, emulator: RunningEmulator, clock: ManualClock, *, delete_zero: bool = False
) -> tuple[SyncService, LifecycleService]:
    gateway = StripeGateway(EMULATOR_KEY, api_base=emulator.url, timeout=2, max_network_retries=0)
    sync = SyncService(
        billsync.database, gateway, billsync.catalog, clock, delete_zero_total=delete_zero
    )
    lifecycle = LifecycleService(
        billsync.database, clock, sync,
        LifecycleSettings(grace=timedelta(hours=1), review_window=timedelta(hours=2)),
    )  # fmt: skip
    return sync, lifecycle


def status(billsync: Billsync) -> PeriodStatus:
    with billsync.database.read() as connection:
        period = sync_repository.get_period(connection, "acme", NOVEMBER)
    assert period is not None
    return period.status


def invoice_status(billsync: Billsync, emulator: RunningEmulator) -> str:
    with billsync.database.read() as connection:
        period = sync_repository.get_period(connection, "acme", NOVEMBER)
    assert period is not None
    assert period.stripe_invoice_id is not None
    response = httpx.get(
        f"{emulator.url}/v1/invoices/{period.stripe_invoice_id}",
        headers={"Authorization": f"Bearer {EMULATOR_KEY}"},
    )
    return str(response.json()["status"])


def in_review(billsync: Billsync, lifecycle: LifecycleService, clock: ManualClock) -> None:
    """acme's November, 1,000 IP-hours (above Stripe's minimum charge, so the invoice waits
    for a payment), past its grace: in review."""
    create_account(billsync)
    billsync.ingest.ingest([event("acme", "ip.ipv4.hours", "1000", at=T0)])
    clock.set(AFTER_GRACE)
    lifecycle.advance()


def test_a_hold_stops_the_review_clock_and_release_restarts_it(
    billsync: Billsync, running_emulator: RunningEmulator, clock: ManualClock
) -> None:
    _, lifecycle = make(billsync, running_emulator, clock)
    create_account(billsync)
    # 1,000 IP-hours: above Stripe's minimum charge, so the invoice waits for a payment.
    billsync.ingest.ingest([event("acme", "ip.ipv4.hours", "1000", at=T0)])
    clock.set(AFTER_GRACE)
    lifecycle.advance()
    assert status(billsync) is PeriodStatus.REVIEW
    clock.advance(timedelta(minutes=30))
    lifecycle.hold("acme", NOVEMBER)
    assert status(billsync) is PeriodStatus.HELD
    clock.advance(timedelta(days=3))
    assert lifecycle.advance().finalized == []  # held: nothing moves
    assert invoice_status(billsync, running_emulator) == "draft"
    lifecycle.release("acme", NOVEMBER)
    assert status(billsync) is PeriodStatus.REVIEW
    clock.advance(timedelta(minutes=89))  # 90 minutes were left
    assert lifecycle.advance().finalized == []
    clock.advance(timedelta(minutes=2))
    assert lifecycle.advance().finalized == [("acme", NOVEMBER)]
    assert status(billsync) is PeriodStatus.FINALIZED
    assert invoice_status(billsync, running_emulator) == "open"  # no card: Stripe collects later
    with pytest.raises(Conflict):
        lifecycle.hold("acme", NOVEMBER)


def test_approve_now_finalizes_during_review(
    billsync: Billsync, running_emulator: RunningEmulator, clock: ManualClock
) -> None:
    _, lifecycle = make(billsync, running_emulator, clock)
    create_account(billsync)
    # 1,000 IP-hours: above Stripe's minimum charge, so the invoice waits for a payment.
    billsync.ingest.ingest([event("acme", "ip.ipv4.hours", "1000", at=T0)])
    clock.set(AFTER_GRACE)
    lifecycle.advance()
    with pytest.raises(Conflict):
        lifecycle.release("acme", NOVEMBER)
    assert lifecycle.approve_now("acme", NOVEMBER) is True
    assert status(billsync) is PeriodStatus.FINALIZED
    assert invoice_status(billsync, running_emulator) == "open"


def test_a_hold_that_lost_a_race_is_a_409_period_changed(
    billsync: Billsync, running_emulator: RunningEmulator, clock: ManualClock
) -> None:
    """Status changes are conditional, never read-then-write: support's hold reads the period
    in review while another process approves it (its transaction holds the account's ledger
    lock); once that commits, the hold's conditional change finds the period moved on and is
    answered ``period_changed`` — it does not overwrite the approval."""
    if billsync.database.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: a read and its write cannot interleave")
    _, lifecycle = make(billsync, running_emulator, clock)
    in_review(billsync, lifecycle, clock)
    assert status(billsync) is PeriodStatus.REVIEW
    outcome: list[BaseException | None] = []
    with billsync.database.transaction() as other:  # another process approves now
        lifecycle.approve_period(other, "acme", NOVEMBER, clock.now())
        approver = int(other.execute(text("SELECT pg_backend_pid()")).scalar_one())

        def hold() -> None:
            try:
                lifecycle.hold("acme", NOVEMBER)
                outcome.append(None)
            except BaseException as error:
                outcome.append(error)

        holder = threading.Thread(target=hold)
        holder.start()
        wait_until(
            lambda: blocked_by(billsync.database, approver),
            "the hold waits for the approval's lock",
        )
    holder.join(timeout=30)
    assert len(outcome) == 1
    assert isinstance(outcome[0], Conflict), outcome
    assert outcome[0].code == "period_changed"
    with billsync.database.read() as connection:
        period = sync_repository.get_period(connection, "acme", NOVEMBER)
    assert period is not None
    assert period.status is PeriodStatus.REVIEW
    assert period.finalize_requested_at is not None  # the approval stands


def test_an_approved_period_being_finalized_cannot_be_held(
    billsync: Billsync, running_emulator: RunningEmulator, clock: ManualClock
) -> None:
    """Approval is the last decision: between it and Stripe's finalization (the final sync),
    a hold is refused instead of leaving a held period whose finalization was requested."""
    _, lifecycle = make(billsync, running_emulator, clock)
    in_review(billsync, lifecycle, clock)
    with billsync.database.transaction() as connection:
        lifecycle.approve_period(connection, "acme", NOVEMBER, clock.now())
    with pytest.raises(Conflict) as refused:
        lifecycle.hold("acme", NOVEMBER)
    assert refused.value.code == "period_not_holdable"
    assert status(billsync) is PeriodStatus.REVIEW
    assert lifecycle.finalize_approved("acme", NOVEMBER) is True
    assert status(billsync) is PeriodStatus.FINALIZED


def test_a_finalize_stripe_refuses_is_shown_to_support_and_retried_under_a_key_of_its_own(
    billsync: Billsync, running_emulator: RunningEmulator, clock: ManualClock
) -> None:
    """Stripe can refuse to finalize a draft (a customer's tax location it cannot use, with
    automatic tax), and stores that answer under the idempotency key for 24 hours. The refusal
    is a problem support sees with Stripe's words; once the cause is fixed, the next sync
    finalizes under a key of its own (the old one would replay the refusal) and closes it."""
    sync, lifecycle = make(billsync, running_emulator, clock)
    in_review(billsync, lifecycle, clock)
    running_emulator.control("POST", "faults", {
        "endpoint": "POST /v1/invoices/{id}/finalize", "kind": "refuse", "count": 1,
        "code": "customer_tax_location_invalid",
        "message": "The customer's location isn't recognized.",
    })  # fmt: skip
    assert lifecycle.approve_now("acme", NOVEMBER) is False
    assert status(billsync) is PeriodStatus.REVIEW
    assert invoice_status(billsync, running_emulator) == "draft"
    with billsync.database.read() as connection:
        (problem,) = problem_repository.open_problems(connection, "acme")
    assert problem.kind == "finalization_failed"
    assert "location isn't recognized" in problem.detail
    assert "customer_tax_location_invalid" in problem.detail
    # Someone fixed the customer's address in Stripe: the next sync finalizes.
    assert sync.sync_account("acme").ok
    assert status(billsync) is PeriodStatus.FINALIZED
    assert invoice_status(billsync, running_emulator) == "open"
    with billsync.database.read() as connection:
        assert problem_repository.open_problems(connection, "acme") == []
        resolved = problem_repository.get(connection, problem.id)
    assert resolved is not None
    assert resolved.resolution == "finalized"


def test_finalized_is_recorded_once_whoever_reports_it_again(
    billsync: Billsync, running_emulator: RunningEmulator, clock: ManualClock
) -> None:
    """A period's finalization is a conditional change too: a second report of it (a recovery
    read, a webhook, the sweep) keeps the first ``finalized_at``."""
    _, lifecycle = make(billsync, running_emulator, clock)
    in_review(billsync, lifecycle, clock)
    assert lifecycle.approve_now("acme", NOVEMBER) is True
    with billsync.database.read() as connection:
        first = sync_repository.get_period(connection, "acme", NOVEMBER)
    assert first is not None and first.finalized_at is not None  # noqa: PT018
    clock.advance(timedelta(hours=5))
    with billsync.database.transaction() as connection:
        again = sync_repository.mark_finalized(connection, "acme", NOVEMBER, clock.now())
    assert again is False
    with billsync.database.read() as connection:
        later = sync_repository.get_period(connection, "acme", NOVEMBER)
    assert later is not None
    assert later.finalized_at == first.finalized_at


@pytest.mark.parametrize("delete_zero", [False, True])
def test_zero_total_periods_are_finalized_at_zero_or_deleted(
    billsync: Billsync, running_emulator: RunningEmulator, clock: ManualClock, delete_zero: bool
) -> None:
    _, lifecycle = make(billsync, running_emulator, clock, delete_zero=delete_zero)
    create_account(billsync)
    billsync.ingest.ingest([event("acme", "volume.gb_hours", "5", at=T0)])  # inside the free tier
    clock.set(AFTER_GRACE)
    lifecycle.advance()
    clock.advance(timedelta(hours=3))
    with statements_by_transaction(billsync.database) as transactions:
        assert lifecycle.advance().finalized == [("acme", NOVEMBER)]
    # The account's ledger lock before its rows, in every transaction that takes it.
    assert_lock_before_writes(transactions, "billing_periods", "lines")
    with billsync.database.read() as connection:
        period = sync_repository.get_period(connection, "acme", NOVEMBER)
    assert period is not None
    if delete_zero:
        assert period.stripe_invoice_id is None
    else:
        assert invoice_status(billsync, running_emulator) == "paid"  # Stripe marks $0 paid


def test_a_lost_answer_to_deleting_a_zero_draft_is_the_delete_done(
    billsync: Billsync, running_emulator: RunningEmulator, clock: ManualClock
) -> None:
    """Under the "delete" rule the DELETE goes through and its answer is lost. Stripe ignores
    idempotency keys on DELETE: a repeat, or a read, answers "no such invoice" — which is the
    result, not an error that blocks the account at every later sync."""
    sync, lifecycle = make(billsync, running_emulator, clock, delete_zero=True)
    create_account(billsync)
    billsync.ingest.ingest([event("acme", "volume.gb_hours", "5", at=T0)])  # inside the free tier
    clock.set(AFTER_GRACE)
    lifecycle.advance()
    clock.advance(timedelta(hours=3))
    running_emulator.control(
        "POST",
        "faults",
        {"endpoint": "DELETE /v1/invoices/{id}", "kind": "drop_after_commit", "count": 1},
    )
    assert lifecycle.advance().finalized == [("acme", NOVEMBER)]
    assert running_emulator.control("GET", "faults")["rules"][0]["fired"] == 1
    with billsync.database.read() as connection:
        period = sync_repository.get_period(connection, "acme", NOVEMBER)
        pending = sync_repository.pending_intents(connection, "acme")
    assert period is not None
    assert (period.status, period.stripe_invoice_id, pending) == (PeriodStatus.FINALIZED, None, [])
    again = sync.sync_account("acme")
    assert again.ok, again.error
    assert again.calls == 0


def test_the_circuit_breaker_stops_calls_while_stripe_is_down(
    billsync: Billsync, running_emulator: RunningEmulator, clock: ManualClock
) -> None:
    gateway = StripeGateway(EMULATOR_KEY, api_base=running_emulator.url, max_network_retries=0)
    breaker = CircuitBreaker(failure_threshold=3, cooldown=60)
    sync = SyncService(
        billsync.database, gateway, billsync.catalog, clock,
        guard=StripeGuard(RateBudget(1000), breaker),
    )  # fmt: skip
    create_account(billsync)
    billsync.ingest.ingest([event("acme", "ip.ipv4.hours", "1", at=T0)])
    running_emulator.control("POST", "faults", {"endpoint": "*", "kind": "503", "rate": 1.0})
    for _ in range(3):
        assert not sync.sync_account("acme").ok
    calls_when_open = running_emulator.control("GET", "stats")["total"]
    for _ in range(5):
        outcome = sync.sync_account("acme")
        assert outcome.error is not None
        assert "circuit open" in outcome.error
    assert running_emulator.control("GET", "stats")["total"] == calls_when_open
    assert breaker.state == "open"


def test_a_declined_card_leaves_the_finalized_invoice_open_for_stripe_to_dun(
    billsync: Billsync, running_emulator: RunningEmulator, clock: ManualClock
) -> None:
    sync, lifecycle = make(billsync, running_emulator, clock)
    create_account(billsync)
    billsync.ingest.ingest([event("acme", "ip.ipv4.hours", "1000", at=T0)])
    assert sync.sync_account("acme").ok
    with billsync.database.read() as connection:
        account = sync_repository.get_account(connection, "acme")
    assert account is not None
    httpx.post(
        f"{running_emulator.url}/v1/customers/{account.stripe_customer_id}",
        data={"invoice_settings[default_payment_method]": "pm_card_chargeDeclined"},
        headers={"Authorization": f"Bearer {EMULATOR_KEY}"},
    ).raise_for_status()
    clock.set(AFTER_GRACE)
    lifecycle.advance()
    assert lifecycle.approve_now("acme", NOVEMBER)
    assert status(billsync) is PeriodStatus.FINALIZED
    invoice = invoice_status(billsync, running_emulator)
    assert invoice == "open"
    failed = httpx.get(
        f"{running_emulator.url}/v1/events",
        params={"type": "invoice.payment_failed"},
        headers={"Authorization": f"Bearer {EMULATOR_KEY}"},
    ).json()["data"]
    assert len(failed) == 1
    assert failed[0]["data"]["object"]["amount_remaining"] == 274  # 1000 h × $0.00274


def test_periods_advance_cli_runs_transitions_as_of_a_given_time(
    tmp_path: Path, running_emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BILLSYNC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BILLSYNC_API_TOKEN", "test-token-0123456789")
    monkeypatch.setenv("BILLSYNC_STRIPE_API_KEY", EMULATOR_KEY)
    monkeypatch.setenv("BILLSYNC_STRIPE_API_BASE", running_emulator.url)
    runner = CliRunner()
    runner.invoke(cli, ["accounts", "create", "acme", "--currency", "usd"])
    now = datetime.now(UTC)
    source = tmp_path / "u.jsonl"
    source.write_text(
        '{"id": "e1", "account": "acme", "metric": "ip.ipv4.hours", "quantity": 5, '
        f'"timestamp": "{now.isoformat()}"}}\n'
    )
    assert runner.invoke(cli, ["ingest", str(source)]).exit_code == 0
    end = (now.replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=0)
    first = runner.invoke(
        cli, ["periods", "advance", "--yes", "--now", (end + timedelta(minutes=1)).isoformat()]
    )
    assert first.exit_code == 0, first.output
    assert "→ closing" in first.output
    second = runner.invoke(
        cli, ["periods", "advance", "--yes", "--now", (end + timedelta(hours=2)).isoformat()]
    )
    assert "→ review" in second.output
    third = runner.invoke(
        cli, ["periods", "advance", "--yes", "--now", (end + timedelta(hours=4)).isoformat()]
    )
    assert "→ finalized" in third.output
    bad = runner.invoke(cli, ["periods", "advance", "--now", "yesterday"])
    assert bad.exit_code == 2
