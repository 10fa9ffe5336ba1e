"""Syncing while usage never stops arriving, on SQLite and PostgreSQL, against the emulator.

Usage here arrives *during* every Stripe call (the port is wrapped so that each call first
ingests an event, as a platform reporting every few milliseconds would): deterministic, whatever
the machine's speed.

- A sync pushes the snapshot it read and finishes; what arrived meanwhile is the next sync's
  work. It never fails for "not converging", and an account with continuous usage costs one
  `update_lines` per sync once its invoice exists.
- A period stops taking usage at one conditional status change under the ingest's account lock
  (end of grace, approve now): usage accepted while the final sync or the finalize call is in
  flight is a late line on the next period — ``billsync verify`` finds nothing missing.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, cast

import pytest

from billsync.bootstrap import Billsync
from billsync.clock import ManualClock
from billsync.core.periods import PeriodStatus
from billsync.core.sync_plan import UpdateLines
from billsync.repositories import sync as sync_repository
from billsync.services.lifecycle import LifecycleService, LifecycleSettings
from billsync.services.sync import SyncService
from billsync.services.verify import Verifier
from billsync.stripe_gateway import StripeGateway
from billsync.sync.port import StripePort
from tests.conftest import T0
from tests.factories import create_account, event
from tests.stripe_peer import EMULATOR_KEY, RunningEmulator

NOVEMBER = date(2026, 11, 1)
DECEMBER = date(2026, 12, 1)


class UsageDuringCalls:
    """The real gateway, with the platform reporting usage while each chosen call is in
    flight: ``arrive(call_name)`` runs before the call goes out."""

    def __init__(self, gateway: StripeGateway, arrive: Callable[[str], None]) -> None:
        self._gateway = gateway
        self._arrive = arrive
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._gateway, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            self._arrive(name)
            return target(*args, **kwargs)

        return call


class Platform:
    """Reports 1 GB of egress for ``acme`` at ``at()`` each time it is asked."""

    def __init__(self, billsync: Billsync, at: Callable[[], datetime]) -> None:
        self.billsync = billsync
        self.at = at
        self.sent = 0
        self._ids = itertools.count()

    def report(self) -> None:
        ingested = self.billsync.ingest.ingest(
            [
                event("acme", "bandwidth.egress.na-eu.gb", "1", at=self.at(), region="iad",
                      event_id=f"steady-{next(self._ids)}")
            ]
        )  # fmt: skip
        assert ingested.accepted == 1
        self.sent += 1


@pytest.fixture
def gateway(running_emulator: RunningEmulator) -> StripeGateway:
    return StripeGateway(
        EMULATOR_KEY, api_base=running_emulator.url, timeout=5.0, max_network_retries=0
    )


def service(billsync: Billsync, port: StripePort | UsageDuringCalls) -> SyncService:
    return SyncService(billsync.database, cast(StripePort, port), billsync.catalog, billsync.clock)


def last_synced_at(billsync: Billsync) -> datetime | None:
    with billsync.database.read() as connection:
        row = sync_repository.sync_row(connection, "acme") or {}
    value = row.get("last_synced_at")
    return cast(datetime | None, value)


def test_usage_arriving_during_every_call_is_the_next_syncs_work(
    billsync: Billsync, clock: ManualClock, gateway: StripeGateway
) -> None:
    create_account(billsync)
    platform = Platform(billsync, clock.now)
    platform.report()
    busy = UsageDuringCalls(gateway, lambda _name: platform.report())
    sync = service(billsync, busy)
    first = sync.sync_account("acme")
    assert first.ok, first.error
    assert first.pending_lines == 1  # the usage that came in during the run
    seen = [last_synced_at(billsync)]
    for _ in range(5):
        clock.advance(timedelta(minutes=15))
        busy.calls.clear()
        outcome = sync.sync_account("acme")
        assert outcome.ok, outcome.error  # never "did not converge"
        assert busy.calls == ["update_lines"]  # one call per window: the snapshot's amounts
        assert [type(op) for op in outcome.operations] == [UpdateLines]
        assert outcome.pending_lines == 1  # and what arrived during it waits for the next
        seen.append(last_synced_at(billsync))
    assert all(a is not None and b is not None and a < b for a, b in itertools.pairwise(seen))
    # Quiet again: one more sync takes everything; Stripe equals the ledger.
    final = service(billsync, gateway).sync_account("acme")
    assert final.ok
    assert final.pending_lines == 0
    report = Verifier(billsync.database, gateway).verify()
    assert report.ok, report.violations
    assert report.pending_lines == 0


def lifecycle(billsync: Billsync, clock: ManualClock, sync: SyncService) -> LifecycleService:
    return LifecycleService(
        billsync.database, clock, sync,
        LifecycleSettings(grace=timedelta(hours=1), review_window=timedelta(hours=1)),
    )  # fmt: skip


def november_usage_at() -> datetime:
    return T0  # mid-November: for November, whatever the clock says


def assert_every_event_billed_once(billsync: Billsync, gateway: StripeGateway) -> None:
    report = Verifier(billsync.database, gateway).verify()
    assert report.ok, report.violations
    assert report.pending_lines == 0


def test_approve_now_while_usage_arrives_loses_nothing(
    billsync: Billsync, clock: ManualClock, gateway: StripeGateway
) -> None:
    create_account(billsync)
    platform = Platform(billsync, november_usage_at)
    platform.report()
    service(billsync, gateway).sync_account("acme")
    clock.set(datetime.combine(DECEMBER, time(), tzinfo=UTC) + timedelta(minutes=10))
    quiet = lifecycle(billsync, clock, service(billsync, gateway))
    quiet.advance()  # November is closing: still taking usage, within its grace
    with billsync.database.read() as connection:
        period = sync_repository.get_period(connection, "acme", NOVEMBER)
    assert period is not None
    assert period.status is PeriodStatus.CLOSING
    # Approve now, while November's usage keeps arriving during every call of the final sync
    # and of the finalize itself.
    busy = UsageDuringCalls(gateway, lambda _name: platform.report())
    assert lifecycle(billsync, clock, service(billsync, busy)).approve_now("acme", NOVEMBER)
    assert "finalize" in busy.calls
    with billsync.database.read() as connection:
        period = sync_repository.get_period(connection, "acme", NOVEMBER)
        late = sync_repository.lines_of(connection, "acme", [DECEMBER])
    assert period is not None
    assert period.status is PeriodStatus.FINALIZED
    assert [line.late_from for line in late] == [NOVEMBER]  # what came after: a late line
    service(billsync, gateway).sync_account("acme")  # December's draft takes the late line
    assert_every_event_billed_once(billsync, gateway)


def test_the_end_of_grace_while_usage_arrives_loses_nothing(
    billsync: Billsync, clock: ManualClock, gateway: StripeGateway
) -> None:
    create_account(billsync)
    platform = Platform(billsync, november_usage_at)
    platform.report()
    service(billsync, gateway).sync_account("acme")
    end_of_grace = datetime.combine(DECEMBER, time(), tzinfo=UTC)
    clock.set(end_of_grace + timedelta(hours=1))
    platform.report()  # within the grace: the close has this to push, and usage arrives meanwhile
    busy = UsageDuringCalls(gateway, lambda _name: platform.report())
    report = lifecycle(billsync, clock, service(billsync, busy)).advance()
    assert report.review == [("acme", NOVEMBER)], report  # the draft is complete: review
    clock.advance(timedelta(hours=1))
    finalized = lifecycle(billsync, clock, service(billsync, busy)).advance()
    assert finalized.finalized == [("acme", NOVEMBER)], finalized
    with billsync.database.read() as connection:
        late = sync_repository.lines_of(connection, "acme", [DECEMBER])
    assert [line.late_from for line in late] == [NOVEMBER]
    service(billsync, gateway).sync_account("acme")
    assert_every_event_billed_once(billsync, gateway)
    # Usage arrived during the close's push and during the finalize call.
    assert busy.calls[0] == "update_lines"
    assert "finalize" in busy.calls
