"""Scenes the support tests start from: an account with usage in November 2026 synced to the
emulator, its periods moved through their lifecycle with the manual clock, its invoices read back
from the emulator."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx

from billsync.bootstrap import Billsync
from billsync.clock import ManualClock
from billsync.core.periods import PeriodStatus
from billsync.repositories import sync as sync_repository
from billsync.repositories.sync import PeriodRow
from tests.conftest import T0
from tests.factories import create_account, event
from tests.stripe_peer import EMULATOR_KEY, RunningEmulator
from tests.waiting import wait_until

NOVEMBER = date(2026, 11, 1)
DECEMBER = date(2026, 12, 1)
PASSWORD = "correct horse battery"
IPV4 = "ip.ipv4.hours"  # $0.00274 an hour: 56,358 hours are $154.42
MACHINE = "machine.shared-cpu-1x.seconds"  # $0.00000075 a second: 3,653,333 seconds are $2.74


def stripe(emulator: RunningEmulator, method: str, path: str, **data: Any) -> dict[str, Any]:
    response = httpx.request(
        method, f"{emulator.url}{path}", data=data or None, params=None,
        headers={"Authorization": f"Bearer {EMULATOR_KEY}"}, timeout=10,
    )  # fmt: skip
    response.raise_for_status()
    answer: dict[str, Any] = response.json()
    return answer


def period(billsync: Billsync, start: date = NOVEMBER, account: str = "acme") -> PeriodRow:
    with billsync.database.read() as connection:
        found = sync_repository.get_period(connection, account, start)
    assert found is not None
    return found


def draft_lines(billsync: Billsync, emulator: RunningEmulator, start: date) -> list[Any]:
    """The lines of the period's invoice in the emulator: (amount, description), in order."""
    invoice = period(billsync, start).stripe_invoice_id
    assert invoice is not None
    lines = stripe(emulator, "GET", f"/v1/invoices/{invoice}/lines?limit=100")["data"]
    return sorted((line["amount"], line["description"]) for line in lines)


def disputed_account(billsync: Billsync, emulator: RunningEmulator, clock: ManualClock) -> None:
    """acme's November invoice (154.42) in review, held by support, and December open with a
    few cents of usage: the dispute of the case study."""
    assert billsync.sync is not None
    create_account(billsync, name="Acme Cloud", email="billing@acme.test")
    billsync.ingest.ingest([event("acme", IPV4, "56358", at=T0)])
    assert billsync.sync.service.sync_account("acme").ok
    clock.set(datetime(2026, 12, 1, 2, tzinfo=UTC))  # November's grace is over
    billsync.ingest.ingest([event("acme", IPV4, "11", at=clock.now())])  # 0.03 in December
    billsync.sync.lifecycle.advance()
    assert period(billsync).status is PeriodStatus.REVIEW
    billsync.sync.lifecycle.hold("acme", NOVEMBER)
    assert period(billsync).status is PeriodStatus.HELD


def pay_with(emulator: RunningEmulator, billsync: Billsync, method: str) -> None:
    """The customer's default payment method in the emulator (pm_card_visa pays,
    pm_card_chargeDeclined is declined)."""
    with billsync.database.read() as connection:
        account = sync_repository.get_account(connection, "acme")
    assert account is not None
    assert account.stripe_customer_id is not None
    stripe(
        emulator, "POST", f"/v1/customers/{account.stripe_customer_id}",
        **{"invoice_settings[default_payment_method]": method},
    )  # fmt: skip


def finalized_november(
    billsync: Billsync, emulator: RunningEmulator, clock: ManualClock, method: str
) -> str:
    """acme's November invoice (154.42 of IPv4 addresses, 2.74 of a machine) finalized by
    Stripe, its payment attempted with ``method``; Stripe's events about it in billsync's mirror.
    Returns the invoice id."""
    assert billsync.sync is not None
    create_account(billsync, name="Acme Cloud", email="billing@acme.test")
    billsync.ingest.ingest(
        [event("acme", IPV4, "56358", at=T0), event("acme", MACHINE, "3653333", at=T0)]
    )
    assert billsync.sync.service.sync_account("acme").ok
    pay_with(emulator, billsync, method)
    clock.set(datetime(2026, 12, 1, 2, tzinfo=UTC))
    billsync.sync.lifecycle.advance()
    clock.advance(timedelta(hours=2))
    billsync.sync.lifecycle.advance()
    invoice = period(billsync).stripe_invoice_id
    assert period(billsync).status is PeriodStatus.FINALIZED
    assert invoice is not None
    # Stripe collects on its own right after finalization (the emulator at its next request).
    wait_until(
        lambda: stripe(emulator, "GET", f"/v1/invoices/{invoice}")["attempt_count"] >= 1,
        "Stripe's first payment attempt",
    )
    mirrored(billsync)
    return invoice


def mirrored(billsync: Billsync) -> None:
    """Stripe's events since the last look, into billsync's inbox and mirror (the sweep)."""
    assert billsync.sync is not None
    billsync.sync.sweep.run()
    billsync.processor.process()
