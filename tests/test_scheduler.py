"""Policies, the scheduler's lanes, on-demand syncs, and the sync API — against the emulator."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select
from typer.testing import CliRunner

from billsync.api.app import create_app
from billsync.bootstrap import Billsync, build
from billsync.cli.main import app as cli
from billsync.clock import ManualClock
from billsync.core.catalog import Catalog
from billsync.core.periods import PeriodStatus
from billsync.core.policy import AccountSyncView, Policy, PolicyError, SyncPolicy, due, window_start
from billsync.db.database import Database
from billsync.db.tables import account_sync, accounts, lines
from billsync.repositories import sync as sync_repository
from billsync.services.sync import SyncOutcome
from billsync.sync.budget import Lane
from billsync.sync.leases import Leases
from tests.conftest import T0, TEST_TOKEN, emulator_settings
from tests.factories import create_account
from tests.factories import event as usage_event
from tests.sql_trace import assert_lock_before_writes, statements_by_transaction
from tests.stripe_peer import EMULATOR_KEY, RunningEmulator
from tests.waiting import wait_until


@pytest.mark.unit
def test_interval_policy_syncs_at_most_once_per_window() -> None:
    policy = SyncPolicy(Policy.INTERVAL, timedelta(minutes=15))
    now = datetime(2026, 11, 15, 12, 7, tzinfo=UTC)
    assert window_start(now, policy.interval) == datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
    assert due(policy, AccountSyncView(None, 0), now)
    assert not due(policy, AccountSyncView(now - timedelta(minutes=5), 0), now)
    assert due(policy, AccountSyncView(now - timedelta(minutes=8), 0), now)


@pytest.mark.unit
def test_threshold_on_demand_and_cycle_end_policies() -> None:
    now = T0
    threshold = SyncPolicy(Policy.THRESHOLD, threshold=500)
    assert not due(threshold, AccountSyncView(None, 499), now)
    assert due(threshold, AccountSyncView(None, 500), now)
    for policy in (Policy.ON_DEMAND, Policy.CYCLE_END):
        assert not due(SyncPolicy(policy), AccountSyncView(None, 10**9), now)


@pytest.mark.unit
def test_account_overrides_are_validated() -> None:
    base = SyncPolicy()
    assert base.merged({"policy": "threshold", "threshold": 99}).threshold == 99
    assert base.merged({"interval_seconds": 60}).interval == timedelta(minutes=1)
    for bad in ({"policy": "hourly"}, {"threshold": 0}, {"interval_seconds": "x"}, {"every": 1}):
        with pytest.raises(PolicyError):
            base.merged(bad)


@pytest.fixture
def synced(
    tmp_path: Path,
    database: Database,
    clock: ManualClock,
    example_catalog: Catalog,
    running_emulator: RunningEmulator,
) -> Iterator[Billsync]:
    settings = emulator_settings(tmp_path, running_emulator, stripe_timeout_seconds=1.0)
    billsync = build(settings, clock=clock, database=database, catalog=example_catalog)
    yield billsync
    billsync.close()


def egress(account: str, quantity: str, at: datetime = T0) -> dict[str, object]:
    return usage_event(account, "bandwidth.egress.na-eu.gb", quantity, at=at, region="iad")


def test_due_accounts_follow_each_accounts_policy(synced: Billsync, clock: ManualClock) -> None:
    assert synced.sync is not None
    create_account(synced, "steady")
    create_account(synced, "big-spender")
    create_account(synced, "quiet")
    with synced.database.transaction() as connection:
        connection.execute(
            accounts.update()
            .where(accounts.c.id == "big-spender")
            .values(sync_policy={"policy": "threshold", "threshold": 100})
        )
        connection.execute(
            accounts.update()
            .where(accounts.c.id == "quiet")
            .values(sync_policy={"policy": "cycle_end"})
        )
    synced.ingest.ingest(
        [egress("steady", "1"), egress("big-spender", "100"), egress("quiet", "500")]
    )
    due_now = dict(synced.sync.scheduler.due_accounts())
    assert due_now == {"steady": Lane.INTERVAL, "big-spender": Lane.THRESHOLD}
    synced.sync.scheduler.tick()
    outcomes = synced.sync.scheduler.drain()
    assert sorted(o.account_id for o in outcomes) == ["big-spender", "steady"]
    assert all(o.ok for o in outcomes)
    # Within the same 15-minute window, new usage waits for the next window.
    synced.ingest.ingest([egress("steady", "2")])
    assert synced.sync.scheduler.due_accounts() == []
    clock.advance(timedelta(minutes=15))
    assert dict(synced.sync.scheduler.due_accounts()) == {"steady": Lane.INTERVAL}


def test_the_queue_serves_on_demand_before_interval(synced: Billsync) -> None:
    assert synced.sync is not None
    scheduler = synced.sync.scheduler
    for name in ("a", "b", "c"):
        create_account(synced, name)
    synced.ingest.ingest([egress(name, "1") for name in ("a", "b", "c")])
    scheduler.enqueue("a", Lane.INTERVAL)
    scheduler.enqueue("b", Lane.INTERVAL)
    scheduler.enqueue("c", Lane.ON_DEMAND)
    scheduler.enqueue("a", Lane.CLOSING)  # promoted, not queued twice
    assert scheduler.depth() == {"on_demand": 1, "closing": 1, "threshold": 0, "interval": 1}
    assert [o.account_id for o in scheduler.drain()] == ["c", "a", "b"]


def test_sync_api_flushes_pending_usage_and_reports_state(
    synced: Billsync, running_emulator: RunningEmulator
) -> None:
    create_account(synced)
    synced.ingest.ingest([egress("acme", "12.5")])
    with TestClient(
        create_app(synced), headers={"Authorization": f"Bearer {TEST_TOKEN}"}
    ) as client:
        before = client.get("/v1/accounts/acme/sync").json()
        assert before["pending_lines"] == 1
        assert before["unsynced_amount"] == 25
        answer = client.post("/v1/accounts/acme/sync").json()
        assert answer["status"] == "synced"
        assert answer["pending_lines"] == 0
        assert answer["unsynced_amount"] == 0
        assert answer["periods"][0]["stripe_invoice_id"].startswith("in_")
        assert client.post("/v1/accounts/ghost/sync").status_code == 404
    assert (
        running_emulator.control("GET", "stats")["by_endpoint"]["POST /v1/invoices/{id}/add_lines"]
        == 1
    )


def test_on_demand_sync_still_answers_when_stripe_hangs(
    synced: Billsync, running_emulator: RunningEmulator
) -> None:
    create_account(synced)
    synced.ingest.ingest([egress("acme", "1")])
    running_emulator.control(
        "POST",
        "faults",
        {"endpoint": "POST /v1/customers", "kind": "hang", "count": 1, "seconds": 3},
    )
    with TestClient(
        create_app(synced), headers={"Authorization": f"Bearer {TEST_TOKEN}"}
    ) as client:
        answer = client.post("/v1/accounts/acme/sync").json()
    # The customer's creation hangs past the client's timeout: the request still answers. Whether
    # the hung write had landed when the sync looked again depends on the machine's speed, so
    # both honest answers are right — and either way Stripe ends with the customer once.
    if answer["status"] == "synced":
        assert answer["pending_lines"] == 0
    else:
        assert answer["status"] in ("failed", "pending")
        assert answer["pending_lines"] == 1
        assert answer["error"]
    state = running_emulator.emulator.state
    wait_until(lambda: len(state.customers) >= 1, "the hung write lands")
    assert len(state.customers) == 1


def test_sync_api_without_stripe_is_a_clear_503(client: TestClient, billsync: Billsync) -> None:
    create_account(billsync)
    answer = client.post("/v1/accounts/acme/sync")
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "stripe_not_configured"
    assert client.get("/v1/accounts/acme/sync").status_code == 200


def test_cli_dry_run_prints_a_readable_plan(
    tmp_path: Path, running_emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BILLSYNC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BILLSYNC_API_TOKEN", TEST_TOKEN)
    monkeypatch.setenv("BILLSYNC_STRIPE_API_KEY", EMULATOR_KEY)
    monkeypatch.setenv("BILLSYNC_STRIPE_API_BASE", running_emulator.url)
    runner = CliRunner()
    assert runner.invoke(cli, ["accounts", "create", "acme", "--currency", "usd"]).exit_code == 0
    path = tmp_path / "usage.jsonl"
    now = datetime.now(UTC)
    path.write_text(
        json.dumps(
            {
                "id": "e1",
                "account": "acme",
                "metric": "bandwidth.egress.na-eu.gb",
                "quantity": "2",
                "timestamp": now.isoformat(),
                "dimensions": {"region": "iad"},
            }
        )
        + "\n"
    )
    assert runner.invoke(cli, ["ingest", str(path)]).exit_code == 0
    dry = runner.invoke(cli, ["sync", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "acme: 3 Stripe call(s)" in dry.output
    assert "create the Stripe customer" in dry.output
    assert "add 1 line(s), 4 minor units" in dry.output
    assert running_emulator.control("GET", "stats")["total"] == 0
    real = runner.invoke(cli, ["sync", "--account", "acme"])
    assert real.exit_code == 0, real.output
    assert "acme: 3 call(s), ok" in real.output
    status = runner.invoke(cli, ["status"])
    assert "acme" in status.output


def behind(billsync: Billsync) -> set[str]:
    with billsync.database.read() as connection:
        rows = connection.execute(select(account_sync.c.account_id).where(account_sync.c.behind))
        return {row[0] for row in rows}


def test_the_due_queue_is_kept_by_the_writers_and_read_most_overdue_first(
    synced: Billsync, clock: ManualClock
) -> None:
    assert synced.sync is not None
    scheduler = synced.sync.scheduler
    for name in ("a", "b", "c", "d", "e"):
        create_account(synced, name)
    assert behind(synced) == set()
    synced.ingest.ingest([egress(name, "1") for name in ("c", "b", "a")])
    assert behind(synced) == {"a", "b", "c"}  # ingest marks, in its own transaction
    # Never synced first, then by name; no more than asked for.
    assert scheduler.due_accounts(limit=2) == [("a", Lane.INTERVAL), ("b", Lane.INTERVAL)]
    assert synced.sync.service.sync_account("b").ok
    assert behind(synced) == {"a", "c"}  # a sync that leaves nothing behind clears the mark
    synced.ingest.ingest([egress("b", "2")])
    assert "b" in behind(synced)
    assert [a for a, _ in scheduler.due_accounts()] == ["a", "c"]  # b: synced in this window
    clock.advance(timedelta(minutes=15))
    assert [a for a, _ in scheduler.due_accounts()] == ["a", "c", "b"]  # least recently last
    # A support adjustment marks its account too.
    synced.adjustments.add("d", amount=500, description="setup fee", actor="t", reason="test")
    assert "d" in behind(synced)
    # A change made behind billsync's back (no writer marked it) is found by the backstop.
    with synced.database.transaction() as connection:
        connection.execute(
            lines.update().where(lines.c.account_id == "b").values(version=lines.c.version + 5)
        )
        connection.execute(account_sync.update().values(behind=False))
    assert scheduler.due_accounts() == []
    writes: list[str] = []

    def count(*args: Any) -> None:
        if not str(args[2]).lstrip().upper().startswith("SELECT"):
            writes.append(str(args[2]))

    event.listen(synced.database.engine, "before_cursor_execute", count)
    try:
        assert sorted(scheduler.backstop()) == ["a", "b", "c", "d"]
    finally:
        event.remove(synced.database.engine, "before_cursor_execute", count)
    # Found and marked in one statement (one snapshot): an account whose sync settled between
    # two reads is not taken for a forgotten one (seen under load, bench.scale).
    assert len([w for w in writes if "account_sync" in w]) == 1
    assert sorted(scheduler.backstop()) == []  # in step with its mark: nothing forgotten now
    assert [a for a, _ in scheduler.due_accounts()] == ["a", "c", "d", "b"]


def test_each_worker_is_offered_the_due_accounts_no_other_worker_holds(
    synced: Billsync, clock: ManualClock
) -> None:
    """N workers read the same due queue. Accounts another worker's live lease holds are
    stepped over, so the second worker's tick claims the next accounts instead of finding the
    head of the queue taken and claiming nothing until the first drains it (seen as a
    worker that never synced while two others did). A lease that ran out is offered again."""
    assert synced.sync is not None
    scheduler = synced.sync.scheduler
    names = [f"acct-{n:02}" for n in range(30)]
    for name in names:
        create_account(synced, name)
    synced.ingest.ingest([egress(name, "1") for name in names])
    other = Leases(synced.database, ttl=60, owner="another-worker")
    theirs = other.claim([a for a, _ in scheduler.due_accounts(limit=12)], limit=12)
    assert theirs == names[:12]
    offered = [a for a, _ in scheduler.due_accounts(limit=12)]
    assert offered == names[12:24]  # the next twelve, in the queue's order
    # The claims of a worker that stopped renewing (its expiry passed) are offered again.
    stale = Leases(
        synced.database, ttl=60, owner="crashed-worker",
        wall=lambda: datetime.now(UTC) - timedelta(minutes=5),
    )  # fmt: skip
    assert stale.claim(names[12:20], limit=8) == names[12:20]
    assert [a for a, _ in scheduler.due_accounts(limit=12)] == names[12:24]
    # Its own claims are still offered to a worker (it counts them as busy, not as new).
    mine = scheduler.leases.claim(names[12:16], limit=4) if scheduler.leases else []
    assert mine == names[12:16]
    assert [a for a, _ in scheduler.due_accounts(limit=4)] == names[12:16]


def test_a_tick_reads_what_it_claims_not_every_account_behind(
    synced: Billsync, clock: ManualClock
) -> None:
    """The cost of finding due accounts does not grow with how many are behind: at most four
    statements (the periods to complete or finalize, the accounts with a policy of their own,
    then the never-synced range and the synced-longest-ago range of the due queue, each
    limited), whether 3 or 300 accounts have usage Stripe does not hold. (Its time at 100,000
    accounts: bench/scale.py.)"""
    assert synced.sync is not None
    scheduler = synced.sync.scheduler
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    for total in (3, 300):
        names = [f"acct-{total}-{n:03}" for n in range(total)]
        for name in names:
            create_account(synced, name)
        synced.ingest.ingest([egress(name, "1") for name in names])
        event.listen(synced.database.engine, "before_cursor_execute", count)
        try:
            statements.clear()
            due_now = scheduler.due_accounts(limit=10)
        finally:
            event.remove(synced.database.engine, "before_cursor_execute", count)
        assert len(due_now) == min(10, len(behind(synced)))
        selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
        assert len(selects) <= 4
        limited = [s for s in selects if "sync_policy IS NOT NULL" not in s]
        assert all(" LIMIT " in s.upper() for s in limited), selects


def test_the_threshold_policy_as_the_default_weighs_the_queue_in_one_statement(
    synced: Billsync,
) -> None:
    """With the threshold policy as the platform's default, the accounts behind are weighed
    by their unsynced amounts in one grouped statement — the largest first, at most ``limit``
    — not a read per account behind (which, at 100,000 accounts, was 100,000 reads a tick)."""
    assert synced.sync is not None
    scheduler = synced.sync.scheduler
    names = [f"acct-{n:03}" for n in range(40)]
    for name in names:
        create_account(synced, name)
    # acct-000 owes the least, acct-039 the most; the first ten stay under the threshold.
    synced.ingest.ingest([egress(name, str(10 * (n + 1))) for n, name in enumerate(names)])
    with synced.database.read() as connection:
        owed = {name: sync_repository.unsynced_amount(connection, name) for name in names}
    threshold = owed["acct-010"]
    assert owed["acct-009"] < threshold < owed["acct-039"]
    scheduler.policy = SyncPolicy(Policy.THRESHOLD, threshold=threshold)
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    event.listen(synced.database.engine, "before_cursor_execute", count)
    try:
        due_now = scheduler.due_accounts(limit=12)
    finally:
        event.remove(synced.database.engine, "before_cursor_execute", count)
    assert due_now == [(name, Lane.THRESHOLD) for name in reversed(names[28:])]
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) <= 3, selects  # closing, own policies, the grouped read
    everything = dict(scheduler.due_accounts(limit=100))
    assert set(everything) == {n for n in names if owed[n] >= threshold}
    assert len(everything) == 30


def test_the_month_ends_in_as_many_statements_for_300_periods_as_for_3(
    synced: Billsync, clock: ManualClock
) -> None:
    """At the month's end the lifecycle's step is set-based: stopping usage, starting the
    windows of drafts already complete and requesting the finalizes take the same statements
    whether 3 or 300 periods close at once (bounded by ``limit`` each)."""
    assert synced.sync is not None
    lifecycle = synced.sync.lifecycle
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    def advance() -> int:
        event.listen(synced.database.engine, "before_cursor_execute", count)
        try:
            statements.clear()
            lifecycle.advance(sync=False)
        finally:
            event.remove(synced.database.engine, "before_cursor_execute", count)
        return len(statements)

    counts = []
    for total, month in ((3, 11), (300, 12)):
        clock.set(datetime(2026, month, 20, tzinfo=UTC))
        names = [f"acct-{total}-{n:03}" for n in range(total)]
        for name in names:
            create_account(synced, name)
        synced.ingest.ingest([usage_event(name, at=clock.now()) for name in names])
        end = (
            datetime(2026, month + 1, 1, 2, tzinfo=UTC)
            if month < 12
            else datetime(2027, 1, 1, 2, tzinfo=UTC)
        )
        clock.set(end)
        lifecycle.advance(sync=False)  # open → closing (one statement)
        stop = advance()  # grace over: review; no draft is complete (never synced)
        with synced.database.read() as connection:
            in_review = sync_repository.periods_with_status(connection, [PeriodStatus.REVIEW])
        assert len([p for p in in_review if p.account_id in names]) == total
        with synced.database.transaction() as connection:
            for name in names:  # the closing lane's syncs would start the windows
                assert sync_repository.start_review_window(
                    connection, name, date(2026, month, 1), end, end
                )
        clock.set(end + timedelta(hours=2))
        request = advance()  # the windows are over: every finalize requested
        with synced.database.read() as connection:
            assert set(names) <= set(sync_repository.due_for_closing(connection, 1000))
        counts.append((stop, request))
    assert counts[0] == counts[1]


def test_an_account_queued_for_its_interval_moves_to_the_closing_lane_when_its_period_closes(
    synced: Billsync, clock: ManualClock
) -> None:
    """Claimed and queued as an interval sync, an account whose period then needs its draft
    completed is moved up to the closing lane (and its sync starts the review window), not left
    behind the interval backlog it was claimed with."""
    assert synced.sync is not None
    scheduler = synced.sync.scheduler
    create_account(synced, "acme")
    synced.ingest.ingest([egress("acme", "1")])
    scheduler.tick()
    assert scheduler.depth()["interval"] == 1
    clock.set(datetime(2026, 12, 1, 1, 0, tzinfo=UTC))  # the end of grace
    scheduler.tick()
    assert scheduler.depth() == {"on_demand": 0, "closing": 1, "threshold": 0, "interval": 0}
    assert [outcome.ok for outcome in scheduler.drain()] == [True]
    with synced.database.read() as connection:
        period = sync_repository.get_period(connection, "acme", date(2026, 11, 1))
    assert period is not None
    assert period.status is PeriodStatus.REVIEW
    assert period.review_ends_at is not None  # the closing-lane sync started the window


def test_a_sync_takes_the_ledger_lock_before_it_writes_the_accounts_rows(
    synced: Billsync,
) -> None:
    """The order ingest uses (the account's ledger lock, then its rows), in every transaction
    of a sync: the reverse order deadlocks with a concurrent ingest on PostgreSQL (found under
    load: ``DeadlockDetected`` at the end of a sync)."""
    if synced.database.engine.dialect.name != "postgresql":
        pytest.skip("the ledger lock is PostgreSQL's advisory lock; SQLite has one writer")
    assert synced.sync is not None
    create_account(synced, "acme")
    synced.ingest.ingest([egress("acme", "1")])
    with statements_by_transaction(synced.database) as transactions:
        assert synced.sync.service.sync_account("acme").ok
    assert assert_lock_before_writes(transactions, "account_sync") >= 1


def test_a_slow_periodic_job_does_not_hold_up_the_tick(synced: Billsync) -> None:
    """Running, the periodic jobs (webhooks, sweep, reconciliation: some call Stripe) have a
    thread of their own: ticks go on claiming due accounts while one of them is stuck."""
    assert synced.sync is not None
    scheduler = synced.sync.scheduler
    inside, release = threading.Event(), threading.Event()

    def stuck() -> None:
        inside.set()
        release.wait(600)

    scheduler.every(timedelta(0), "stuck", stuck)
    ticks: list[object] = []
    original = scheduler.tick

    def counted() -> Any:
        ticks.append(None)
        return original()

    scheduler.tick = counted  # type: ignore[method-assign]
    scheduler.start(workers=1, tick_seconds=0.01)
    try:
        wait_until(inside.is_set, "the periodic job runs")
        seen = len(ticks)
        wait_until(lambda: len(ticks) >= seen + 5, "ticks go on while the job is stuck")
    finally:
        release.set()
        scheduler.stop()


def test_a_customer_hammering_on_demand_syncs_cannot_spend_the_budget(
    synced: Billsync, clock: ManualClock, running_emulator: RunningEmulator
) -> None:
    """Requests for one account share one sync, and an account synced less than
    BILLSYNC_ON_DEMAND_MIN_SECONDS ago is answered as it is: no Stripe call."""
    assert synced.sync is not None
    scheduler = synced.sync.scheduler
    create_account(synced)
    synced.ingest.ingest([egress("acme", "1")])
    first = scheduler.request("acme", wait=60)
    assert first is not None
    assert first.ok
    assert not first.spaced
    synced.ingest.ingest([egress("acme", "2")])
    running_emulator.control("DELETE", "stats")
    for _ in range(16):  # a reload loop, within the spacing
        again = scheduler.request("acme", wait=60)
        assert again is not None
        assert again.spaced
        assert again.calls == 0
    assert running_emulator.control("GET", "stats")["total"] == 0
    clock.advance(timedelta(seconds=10))
    outcomes: list[SyncOutcome | None] = []
    threads = [
        threading.Thread(target=lambda: outcomes.append(scheduler.request("acme", wait=60)))
        for _ in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(o is not None and o.ok for o in outcomes)
    # Sixteen at once: one sync (the rest joined it, or came after it and were spaced).
    assert running_emulator.control("GET", "stats")["total"] == 1


def test_month_end_is_the_workers_work_and_the_tick_only_changes_state(
    synced: Billsync, clock: ManualClock, running_emulator: RunningEmulator
) -> None:
    """In the scheduler the lifecycle only changes periods' state; completing drafts and
    finalizing are syncs in the closing lane that every worker claims, paced by the budget —
    not one after another inside the tick."""
    assert synced.sync is not None
    scheduler, lifecycle = synced.sync.scheduler, synced.sync.lifecycle
    for name in ("a", "b", "c"):
        create_account(synced, name)
    synced.ingest.ingest([egress(name, "1") for name in ("a", "b", "c")])
    scheduler.tick()
    assert all(outcome.ok for outcome in scheduler.drain())
    clock.set(datetime(2026, 12, 1, 0, 30, tzinfo=UTC))
    synced.ingest.ingest([egress("a", "5")])  # within the grace: a's draft is behind
    clock.set(datetime(2026, 12, 1, 1, 0, tzinfo=UTC))  # the end of grace
    running_emulator.control("DELETE", "stats")

    def periods() -> dict[str, tuple[str, bool]]:
        with synced.database.read() as connection:
            rows = sync_repository.periods_with_status(connection, list(PeriodStatus))
        return {
            p.account_id: (str(p.status), p.review_ends_at is not None)
            for p in rows
            if p.start == date(2026, 11, 1)
        }

    report = lifecycle.advance(sync=False)
    assert running_emulator.control("GET", "stats")["total"] == 0  # no call in the tick
    assert periods() == {"a": ("review", False), "b": ("review", True), "c": ("review", True)}
    assert sorted(report.review) == [("b", date(2026, 11, 1)), ("c", date(2026, 11, 1))]
    assert scheduler.due_accounts() == [("a", Lane.CLOSING)]
    scheduler.tick()
    assert [o.account_id for o in scheduler.drain()] == ["a"]  # a worker completes a's draft
    assert periods()["a"] == ("review", True)  # and its review window starts at once
    clock.advance(timedelta(hours=1, minutes=1))
    running_emulator.control("DELETE", "stats")
    lifecycle.advance(sync=False)  # the windows are over: the finalizes are requested
    assert running_emulator.control("GET", "stats")["total"] == 0
    assert sorted(scheduler.due_accounts()) == [
        ("a", Lane.CLOSING), ("b", Lane.CLOSING), ("c", Lane.CLOSING)
    ]  # fmt: skip
    scheduler.tick()
    assert all(outcome.ok for outcome in scheduler.drain())
    assert {status for status, _ in periods().values()} == {"finalized"}
    assert scheduler.due_accounts() == []


def writes(emulator: RunningEmulator) -> dict[str, int]:
    """The writes Stripe received (the tick's periodic reads — the events sweep — aside)."""
    calls: dict[str, int] = emulator.control("GET", "stats")["by_endpoint"]
    return {endpoint: n for endpoint, n in calls.items() if endpoint.startswith("POST")}


def test_a_month_end_sync_completes_the_closed_draft_and_leaves_the_new_one_to_its_interval(
    synced: Billsync, clock: ManualClock, running_emulator: RunningEmulator
) -> None:
    """Closing N accounts is N ``update_lines`` then N ``finalize`` on the closing lane's
    priority, and nothing more: the new period's first draft (a create and an ``add_lines``)
    waits for the account's interval, which the closing sync leaves due (still behind)."""
    assert synced.sync is not None
    scheduler = synced.sync.scheduler
    create_account(synced, "acme")
    synced.ingest.ingest([egress("acme", "1")])
    scheduler.tick()
    assert all(outcome.ok for outcome in scheduler.drain())
    clock.set(datetime(2026, 12, 1, 0, 30, tzinfo=UTC))  # in the grace window
    november, december = datetime(2026, 11, 30, 23, 0, tzinfo=UTC), clock.now()
    synced.ingest.ingest([egress("acme", "5", at=november), egress("acme", "7", at=december)])
    clock.set(datetime(2026, 12, 1, 1, 0, tzinfo=UTC))  # the end of grace
    synced.sync.lifecycle.advance(sync=False)
    running_emulator.control("DELETE", "stats")

    scheduler.tick()
    assert [(o.account_id, o.ok) for o in scheduler.drain()] == [("acme", True)]
    calls = writes(running_emulator)
    assert calls == {"POST /v1/invoices/{id}/update_lines": 1}  # November's draft, whole
    with synced.database.read() as connection:
        closed = sync_repository.get_period(connection, "acme", date(2026, 11, 1))
        new = sync_repository.get_period(connection, "acme", date(2026, 12, 1))
        behind = connection.execute(
            select(account_sync.c.behind).where(account_sync.c.account_id == "acme")
        ).scalar_one()
    assert closed is not None
    assert closed.review_ends_at is not None
    assert new is not None
    assert new.stripe_invoice_id is None
    assert behind  # December's line is still to go

    clock.advance(synced.sync.scheduler.policy.interval)  # the account's next interval
    running_emulator.control("DELETE", "stats")
    assert dict(scheduler.due_accounts()) == {"acme": Lane.INTERVAL}
    scheduler.tick()
    assert all(outcome.ok for outcome in scheduler.drain())
    assert writes(running_emulator) == {
        "POST /v1/invoices": 1, "POST /v1/invoices/{id}/add_lines": 1
    }  # fmt: skip


def test_an_account_whose_syncs_keep_failing_is_retried_less_and_less_often(
    synced: Billsync, clock: ManualClock
) -> None:
    """A poison account (here a line above Stripe's 8 digits) must not take a worker and the
    shared budget at every tick: after each failure it waits 5 s, then 10 s, … before the
    background lanes try again; the others go on; a person's on-demand sync does not wait."""
    assert synced.sync is not None
    scheduler = synced.sync.scheduler
    create_account(synced, "poison")
    create_account(synced, "fine")
    synced.ingest.ingest([egress("poison", "10000000000"), egress("fine", "1")])
    scheduler.tick()
    outcomes = {o.account_id: o for o in scheduler.drain()}
    assert outcomes["fine"].ok
    assert "Stripe takes at most" in (outcomes["poison"].error or "")

    def due() -> set[str]:
        return {account for account, _ in scheduler.due_accounts()}

    for wait in (5, 10, 20):
        assert "poison" not in due()
        clock.advance(timedelta(seconds=wait - 1))
        assert "poison" not in due()
        clock.advance(timedelta(seconds=1))
        assert "poison" in due()
        scheduler.tick()
        assert [o.account_id for o in scheduler.drain()] == ["poison"]
    with synced.database.read() as connection:
        row = sync_repository.sync_row(connection, "poison")
    assert row is not None
    assert row["consecutive_failures"] == 4
    assert row["retry_at"] == clock.now() + timedelta(seconds=40)
    clock.advance(timedelta(seconds=10))  # past the on-demand spacing, inside the back-off
    assert "poison" not in due()
    asked = scheduler.request("poison", wait=5)  # a person asking: tried now
    assert asked is not None
    assert "Stripe takes at most" in (asked.error or "")
