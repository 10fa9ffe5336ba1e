"""The sync engine against the emulator over HTTP, on SQLite and PostgreSQL: a full cycle, and
every fault — after each, Stripe equals the ledger to the cent and no line exists twice."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from billsync.bootstrap import Billsync
from billsync.clock import ManualClock
from billsync.core.periods import PeriodStatus
from billsync.core.sync_plan import AddLines, CreateCustomer, CreateInvoice, UpdateLines
from billsync.db.tables import sync_intents
from billsync.repositories import problems as problem_repository
from billsync.repositories import sync as sync_repository
from billsync.services.lifecycle import LifecycleService, LifecycleSettings
from billsync.services.sync import SyncService
from billsync.stripe_gateway import StripeGateway
from tests.conftest import T0
from tests.factories import create_account, event
from tests.stripe_peer import EMULATOR_KEY, RunningEmulator
from tests.waiting import wait_until

NOVEMBER = date(2026, 11, 1)


@pytest.fixture
def gateway(running_emulator: RunningEmulator) -> StripeGateway:
    return StripeGateway(
        EMULATOR_KEY, api_base=running_emulator.url, timeout=2.0, max_network_retries=0
    )


@pytest.fixture
def sync(billsync: Billsync, gateway: StripeGateway) -> SyncService:
    return SyncService(billsync.database, gateway, billsync.catalog, billsync.clock)


def stripe_get(emulator: RunningEmulator, path: str, **params: Any) -> Any:
    response = httpx.get(
        f"{emulator.url}{path}", params=params, headers={"Authorization": f"Bearer {EMULATOR_KEY}"}
    )
    response.raise_for_status()
    return response.json()


def assert_invariants(billsync: Billsync, emulator: RunningEmulator) -> None:
    """For every account-period with a Stripe invoice: its total equals the ledger's to the
    cent, every ledger line is on it once, and nothing else is."""
    with billsync.database.read() as connection:
        periods = sync_repository.periods_with_status(connection, list(PeriodStatus))
        for period in periods:
            if period.stripe_invoice_id is None:
                continue
            ledger = sync_repository.lines_of(connection, period.account_id, [period.start])
            invoice = stripe_get(emulator, f"/v1/invoices/{period.stripe_invoice_id}")
            lines = stripe_get(
                emulator, f"/v1/invoices/{period.stripe_invoice_id}/lines", limit=100
            )
            ids = Counter(line["metadata"]["billsync_line_id"] for line in lines["data"])
            assert all(count == 1 for count in ids.values()), f"a line exists twice: {ids}"
            assert set(ids) == {str(line.id) for line in ledger}
            by_id = {line["metadata"]["billsync_line_id"]: line["amount"] for line in lines["data"]}
            assert by_id == {str(line.id): line.amount for line in ledger}
            assert invoice["total"] == sum(line.amount for line in ledger)


def egress(quantity: str, region: str = "iad", **extra: Any) -> dict[str, Any]:
    return event("acme", "bandwidth.egress.na-eu.gb", quantity, at=T0, region=region, **extra)


def test_first_sync_creates_customer_draft_and_lines_then_only_changes(
    billsync: Billsync, sync: SyncService, running_emulator: RunningEmulator
) -> None:
    create_account(billsync)
    billsync.ingest.ingest(
        [egress("100"), egress("50", "cdg"), event("acme", quantity=3600, at=T0)]
    )
    planned = sync.plan_account("acme")
    assert [type(op) for op in planned] == [CreateCustomer, CreateInvoice, AddLines]
    outcome = sync.sync_account("acme")
    assert outcome.ok, outcome.error
    assert outcome.calls == 3
    assert_invariants(billsync, running_emulator)
    assert sync.plan_account("acme") == []
    assert sync.sync_account("acme").calls == 0  # nothing changed: no call at all

    billsync.ingest.ingest([egress("25"), egress("1", "fra")])
    planned = sync.plan_account("acme")
    assert [type(op) for op in planned] == [AddLines, UpdateLines]
    assert sync.sync_account("acme").calls == 2
    assert_invariants(billsync, running_emulator)
    writes = running_emulator.control("GET", "stats")["by_endpoint"]
    assert sum(n for endpoint, n in writes.items() if endpoint.startswith("POST")) == 5


def test_many_lines_are_bulk_and_complete(
    billsync: Billsync, sync: SyncService, running_emulator: RunningEmulator
) -> None:
    create_account(billsync)
    billsync.ingest.ingest([egress("1.5", f"r{n:02d}") for n in range(30)])
    outcome = sync.sync_account("acme")
    assert outcome.ok, outcome.error
    # customer + draft + one add_lines + one read of the lines beyond the 10 embedded
    assert outcome.calls == 4
    assert_invariants(billsync, running_emulator)
    billsync.ingest.ingest([egress("1", f"r{n:02d}") for n in range(30)])
    assert sync.sync_account("acme").calls == 1  # one update_lines for 30 lines
    assert_invariants(billsync, running_emulator)


@pytest.mark.parametrize("kind", ["500", "503", "429", "lock_timeout"])
def test_stripe_errors_leave_nothing_half_done(
    billsync: Billsync, sync: SyncService, running_emulator: RunningEmulator, kind: str
) -> None:
    create_account(billsync)
    billsync.ingest.ingest([egress("10")])
    assert sync.sync_account("acme").ok
    billsync.ingest.ingest([egress("5"), egress("7", "cdg")])
    running_emulator.control(
        "POST", "faults", {"endpoint": "POST /v1/invoices/*", "kind": kind, "count": 1}
    )
    first = sync.sync_account("acme")
    if kind in {"500", "503"}:
        # A write answered 5xx may have happened: read back, then retried within the run.
        assert first.ok, first.error
        assert first.recovered
    else:
        assert not first.ok  # nothing was written: the next run does it
        retried = sync.sync_account("acme")
        assert retried.ok, retried.error
    assert_invariants(billsync, running_emulator)
    with billsync.database.read() as connection:
        state = sync_repository.sync_row(connection, "acme")
    assert state is not None
    assert state["consecutive_failures"] == 0
    assert state["last_error"] is None


@pytest.mark.parametrize("kind", ["drop_after_commit", "hang"])
def test_lost_responses_are_recovered_by_reading_stripe(
    billsync: Billsync, gateway: StripeGateway, running_emulator: RunningEmulator, kind: str
) -> None:
    fast = StripeGateway(
        EMULATOR_KEY, api_base=running_emulator.url, timeout=0.5, max_network_retries=0
    )
    sync = SyncService(billsync.database, fast, billsync.catalog, billsync.clock)
    create_account(billsync)
    billsync.ingest.ingest([egress("10")])
    assert sync.sync_account("acme").ok
    billsync.ingest.ingest([egress("3", "cdg"), egress("4", "fra")])
    running_emulator.control(
        "POST",
        "faults",
        {"endpoint": "POST /v1/invoices/{id}/add_lines", "kind": kind, "count": 1, "seconds": 1.0},
    )
    outcome = sync.sync_account("acme")
    if kind == "hang":  # the write lands after the client gave up: let it land, then verify
        lines_path = f"/v1/invoices/{_invoice(billsync)}/lines"
        wait_until(lambda: len(stripe_get(running_emulator, lines_path)["data"]) >= 3)
        outcome = sync.sync_account("acme")
    assert outcome.ok, outcome.error
    assert_invariants(billsync, running_emulator)


def _invoice(billsync: Billsync) -> str:
    with billsync.database.read() as connection:
        period = sync_repository.get_period(connection, "acme", NOVEMBER)
    assert period is not None
    assert period.stripe_invoice_id is not None
    return period.stripe_invoice_id


def test_a_worker_dying_between_stripe_and_the_local_commit_creates_nothing_twice(
    billsync: Billsync,
    sync: SyncService,
    running_emulator: RunningEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    create_account(billsync)
    billsync.ingest.ingest([egress("10")])
    assert sync.sync_account("acme").ok
    billsync.ingest.ingest([egress("3", "cdg"), egress("4", "fra")])

    def die(*_args: object, **_kwargs: object) -> None:
        raise SystemExit("worker killed after Stripe answered")

    with monkeypatch.context() as patch:
        patch.setattr(sync_repository, "confirm_lines", die)
        with pytest.raises(SystemExit):
            sync.sync_account("acme")
    # Stripe has the lines, the ledger does not know: the pending intent makes the next run
    # read the draft before writing anything.
    with billsync.database.read() as connection:
        assert sync_repository.pending_intents(connection, "acme")
    outcome = sync.sync_account("acme")
    assert outcome.ok, outcome.error
    assert not [op for op in outcome.operations if isinstance(op, AddLines)]
    assert_invariants(billsync, running_emulator)


def test_full_cycle_to_finalized_and_paid(
    billsync: Billsync, sync: SyncService, running_emulator: RunningEmulator, clock: ManualClock
) -> None:
    create_account(billsync)
    lifecycle = LifecycleService(
        billsync.database,
        clock,
        sync,
        LifecycleSettings(grace=timedelta(hours=2), review_window=timedelta(hours=1)),
    )
    billsync.ingest.ingest([egress("1000"), event("acme", quantity=2_592_000, at=T0)])
    assert sync.sync_account("acme").ok
    with billsync.database.read() as connection:
        account = sync_repository.get_account(connection, "acme")
    assert account is not None
    assert account.stripe_customer_id is not None
    httpx.post(
        f"{running_emulator.url}/v1/customers/{account.stripe_customer_id}",
        data={"invoice_settings[default_payment_method]": "pm_card_visa"},
        headers={"Authorization": f"Bearer {EMULATOR_KEY}"},
    ).raise_for_status()

    clock.set(T0.replace(day=30, hour=23))
    billsync.ingest.ingest(
        [event("acme", "bandwidth.egress.na-eu.gb", "500", at=clock.now(), region="iad")]
    )
    report = lifecycle.advance(clock.now())
    assert report.closing == []
    clock.set(T0.replace(month=12, day=1, hour=0, minute=30))
    assert lifecycle.advance().closing == [("acme", NOVEMBER)]
    # within grace, late events still land on November
    within_grace = clock.now() - timedelta(hours=1)
    billsync.ingest.ingest(
        [event("acme", "bandwidth.egress.na-eu.gb", "1", at=within_grace, region="iad")]
    )
    clock.set(T0.replace(month=12, day=1, hour=2, minute=5))
    assert lifecycle.advance().review == [("acme", NOVEMBER)]
    assert_invariants(billsync, running_emulator)
    clock.advance(timedelta(minutes=61))
    assert lifecycle.advance().finalized == [("acme", NOVEMBER)]
    invoice = stripe_get(running_emulator, f"/v1/invoices/{_invoice(billsync)}")
    assert invoice["status"] == "paid"
    with billsync.database.read() as connection:
        ledger = sync_repository.lines_of(connection, "acme", [NOVEMBER])
    ledger_total = sum(line.amount for line in ledger)
    assert invoice["amount_paid"] == ledger_total > 0
    # usage for November arriving now is late usage: it lands on December, labelled
    billsync.ingest.ingest([event("acme", "bandwidth.egress.na-eu.gb", "2", at=T0, region="iad")])
    with billsync.database.read() as connection:
        december = sync_repository.lines_of(connection, "acme", [date(2026, 12, 1)])
    assert [line.late_from for line in december] == [NOVEMBER]


def test_a_line_removed_in_stripe_is_reported_and_does_not_block_the_account(
    billsync: Billsync, sync: SyncService, running_emulator: RunningEmulator
) -> None:
    create_account(billsync)
    billsync.ingest.ingest([egress("10"), egress("20", "cdg")])
    assert sync.sync_account("acme").ok
    with billsync.database.read() as connection:
        removed = next(
            line
            for line in sync_repository.lines_of(connection, "acme", [NOVEMBER])
            if "cdg" in line.key
        )
    httpx.post(
        f"{running_emulator.url}/v1/invoices/{_invoice(billsync)}/remove_lines",
        data={"lines[0][id]": removed.stripe_line_item_id, "lines[0][behavior]": "delete"},
        headers={"Authorization": f"Bearer {EMULATOR_KEY}"},
    ).raise_for_status()
    billsync.ingest.ingest([egress("5"), egress("1", "cdg")])
    outcome = sync.sync_account("acme")
    assert outcome.ok, outcome.error
    assert outcome.recovered
    with billsync.database.read() as connection:
        found = problem_repository.open_problems(connection, "acme")
        lines = sync_repository.lines_of(connection, "acme", [NOVEMBER])
    assert [(p.kind, p.line_id) for p in found] == [("removed_in_stripe", removed.id)]
    kept = next(line for line in lines if line.id != removed.id)
    assert kept.synced_version == kept.version  # the other line kept syncing
    remote = stripe_get(running_emulator, f"/v1/invoices/{_invoice(billsync)}/lines")["data"]
    assert [line["metadata"]["billsync_line_id"] for line in remote] == [str(kept.id)]
    assert sync.sync_account("acme").calls == 0  # left out until a person decides


def test_a_lines_period_ends_on_the_periods_last_second_as_stripe_reads_it_inclusive(
    billsync: Billsync, sync: SyncService, running_emulator: RunningEmulator
) -> None:
    """Stripe's ``lines[][period][end]`` is inclusive: November's lines end at 23:59:59 on
    November 30, not on December 1's first second (which belongs to December's invoice)."""
    create_account(billsync)
    billsync.ingest.ingest([egress("10")])
    assert sync.sync_account("acme").ok
    (line,) = stripe_get(running_emulator, f"/v1/invoices/{_invoice(billsync)}/lines")["data"]
    start = datetime(2026, 11, 1, tzinfo=UTC)
    december = datetime(2026, 12, 1, tzinfo=UTC)
    assert line["period"] == {
        "start": int(start.timestamp()),
        "end": int(december.timestamp()) - 1,
    }
    invoice = stripe_get(running_emulator, f"/v1/invoices/{_invoice(billsync)}")
    assert invoice["description"] == "Usage 2026-11-01 – 2026-11-30"


def test_a_500_stripe_stored_under_the_key_does_not_block_the_account_for_24_hours(
    billsync: Billsync, sync: SyncService, running_emulator: RunningEmulator
) -> None:
    """Stripe answered add_lines 500 after the endpoint started and stores that answer under
    the key for 24 h. billsync reads the draft back (the lines are not there), then adds them
    under a key of its own (``…:retry-1``): once, not a replayed 500 at every sync."""
    create_account(billsync)
    billsync.ingest.ingest([egress("10"), egress("20", "cdg")])
    running_emulator.control(
        "POST",
        "faults",
        {"endpoint": "POST /v1/invoices/{id}/add_lines", "kind": "500_stored", "count": 1},
    )
    outcome = sync.sync_account("acme")
    assert outcome.ok, outcome.error
    assert outcome.recovered
    remote = stripe_get(running_emulator, f"/v1/invoices/{_invoice(billsync)}/lines")["data"]
    assert len(remote) == 2  # added once
    with billsync.database.read() as connection:
        intents = connection.execute(
            select(sync_intents.c.operation, sync_intents.c.idempotency_key, sync_intents.c.status)
            .where(sync_intents.c.operation == "add_lines")
            .order_by(sync_intents.c.id)
        ).all()
    (first_key, first_status), (second_key, second_status) = [(k, st) for _, k, st in intents]
    assert (first_status, second_status) == ("answered_read", "applied")  # read back, then done
    assert second_key == f"{first_key}:retry-1"
    assert sync.sync_account("acme").calls == 0


def test_a_write_answered_5xx_is_read_back_even_by_the_next_sync(
    billsync: Billsync, sync: SyncService, running_emulator: RunningEmulator
) -> None:
    """Stored 500s twice in a row: the run gives up after its one read-back, with the second
    attempt's outcome unknown (a 500 may come after a write). The next sync reads Stripe back
    before it writes again, under ``…:retry-2``: nothing is added twice."""
    create_account(billsync)
    billsync.ingest.ingest([egress("10")])
    running_emulator.control(
        "POST",
        "faults",
        {"endpoint": "POST /v1/invoices/{id}/add_lines", "kind": "500_stored", "count": 2},
    )
    assert not sync.sync_account("acme").ok
    with billsync.database.read() as connection:
        assert [operation for _, operation, _ in sync_repository.pending_intents(
            connection, "acme")] == ["add_lines"]  # fmt: skip
    again = sync.sync_account("acme")
    assert again.ok, again.error
    assert again.calls == 2  # the draft read back first, then the lines added
    remote = stripe_get(running_emulator, f"/v1/invoices/{_invoice(billsync)}/lines")["data"]
    assert len(remote) == 1
    with billsync.database.read() as connection:
        keys = [
            key
            for (key,) in connection.execute(
                select(sync_intents.c.idempotency_key)
                .where(sync_intents.c.operation == "add_lines")
                .order_by(sync_intents.c.id)
            )
        ]
    assert [key.rsplit(":", 1)[-1] for key in keys][1:] == ["retry-1", "retry-2"]
