"""Two installations on one Stripe account, and a ledger given a key of the other mode: each
installation writes under its own namespace and never adopts or touches another's objects; a
ledger tied to one Stripe mode refuses to sync with a key of the other (both stores)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import text, update

from billsync.bootstrap import Billsync, build
from billsync.clock import ManualClock
from billsync.config import Settings
from billsync.core.catalog import Catalog
from billsync.core.installation import NAMESPACE_KEY, key_mode, mode_conflict
from billsync.core.sync_plan import idempotency_key
from billsync.db import migrate
from billsync.db.database import Database
from billsync.db.tables import accounts, installation
from billsync.repositories import installation as installation_repository
from billsync.repositories import sync as sync_repository
from billsync.services.doctor import diagnose
from billsync.services.verify import EXTRA_IN_STRIPE, Verifier
from billsync.stripe_gateway import StripeGateway
from tests.conftest import T0, TEST_TOKEN, emulator_settings
from tests.factories import create_account, event
from tests.stripe_peer import REAL_KEY_VARIABLE, StripePeer

EGRESS = "bandwidth.egress.na-eu.gb"


def _settings(data_dir: Path, peer: StripePeer) -> Settings:
    """billsync's settings against the Stripe peer: the emulator, or real Stripe test mode
    when BILLSYNC_TEST_STRIPE_KEY is set (two installations sharing one test account)."""
    if peer.emulator is not None:
        return emulator_settings(data_dir, peer.emulator)
    return Settings(data_dir=data_dir, api_token=TEST_TOKEN,
                    stripe_api_key=os.environ[REAL_KEY_VARIABLE])  # fmt: skip


def _stripe(billsync: Billsync, method: str, path: str, data: Any = None) -> Any:
    settings = billsync.settings
    response = httpx.request(
        method, f"{settings.stripe_api_base or 'https://api.stripe.com'}{path}", data=data,
        headers={"Authorization": f"Bearer {settings.stripe_api_key}"}, timeout=30,
    )  # fmt: skip
    response.raise_for_status()
    return response.json()


@pytest.fixture
def laptop(
    tmp_path: Path,
    database: Database,
    clock: ManualClock,
    example_catalog: Catalog,
    stripe_peer: StripePeer,
) -> Iterator[Billsync]:
    billsync = build(
        _settings(tmp_path / "laptop", stripe_peer),
        clock=clock, database=database, catalog=example_catalog,
    )  # fmt: skip
    yield billsync
    billsync.close()


@pytest.fixture
def staging(
    tmp_path: Path, clock: ManualClock, example_catalog: Catalog, stripe_peer: StripePeer
) -> Iterator[Billsync]:
    """A second installation with a database of its own, on the same Stripe account."""
    database = Database(f"sqlite:///{tmp_path / 'staging.db'}")
    migrate.upgrade(database)
    billsync = build(
        _settings(tmp_path / "staging", stripe_peer),
        clock=clock, database=database, catalog=example_catalog,
    )  # fmt: skip
    yield billsync
    billsync.close()
    database.dispose()


def _sync(billsync: Billsync, account: str, gigabytes: str) -> str:
    """``account`` with ``gigabytes`` of egress, synced; returns its draft's id."""
    create_account(billsync, account)
    billsync.ingest.ingest([event(account, EGRESS, gigabytes, at=T0, region="iad")])
    assert billsync.sync is not None
    outcome = billsync.sync.service.sync_account(account)
    assert outcome.ok, outcome.error
    with billsync.database.read() as connection:
        periods = sync_repository.periods_to_sync(connection, account)
    assert len(periods) == 1
    assert periods[0].stripe_invoice_id is not None
    return periods[0].stripe_invoice_id


def _verifier(billsync: Billsync) -> Verifier:
    settings = billsync.settings
    gateway = StripeGateway(settings.stripe_api_key or "", api_base=settings.stripe_api_base)
    assert billsync.sync is not None
    return Verifier(billsync.database, gateway, namespace=billsync.sync.service.namespace)


def test_every_new_database_is_an_installation_of_its_own(
    laptop: Billsync, staging: Billsync
) -> None:
    assert laptop.sync is not None
    assert staging.sync is not None
    ours, theirs = laptop.sync.service.namespace, staging.sync.service.namespace
    assert len(ours) == len(theirs) == 8
    assert ours != theirs
    assert laptop.sync.service.key("customer", "acme") == f"billsync:{ours}:customer:acme"


def test_two_installations_on_one_stripe_account_keep_to_their_own_objects(
    laptop: Billsync, staging: Billsync
) -> None:
    """Same account id, same period, same Stripe account: each installation has its own
    customer and draft, each draft holds that installation's ledger, and each one's verify
    and reconcile find nothing wrong (the same keys used to hand the second installation the
    first one's customer and draft)."""
    laptop_draft = _sync(laptop, "acme", "10")
    staging_draft = _sync(staging, "acme", "3")
    assert laptop_draft != staging_draft
    customers = {
        _stripe(laptop, "GET", f"/v1/invoices/{draft}")["customer"]
        for draft in (laptop_draft, staging_draft)
    }
    assert len(customers) == 2
    for billsync, draft in ((laptop, laptop_draft), (staging, staging_draft)):
        assert billsync.sync is not None
        invoice = _stripe(billsync, "GET", f"/v1/invoices/{draft}")
        assert invoice["metadata"][NAMESPACE_KEY] == billsync.sync.service.namespace
        with billsync.database.read() as connection:
            (line,) = sync_repository.lines_of(connection, "acme", [T0.date().replace(day=1)])
        assert invoice["total"] == line.amount
        report = _verifier(billsync).verify()
        assert report.ok, report.to_dict()
        assert billsync.sync.reconciler is not None
        drift = billsync.sync.reconciler.reconcile("acme", repair=False)
        assert drift.items == []


def test_a_line_of_another_installation_is_reported_never_adopted_or_removed(
    laptop: Billsync,
) -> None:
    """A line on this installation's draft that carries another namespace's metadata — even
    naming one of this ledger's line ids — is not counted as the ledger's line: verify and
    reconcile report it as added in Stripe, a repair leaves it, and the next sync neither
    confirms it nor removes it."""
    assert laptop.sync is not None
    draft = _sync(laptop, "acme", "10")
    with laptop.database.read() as connection:
        (line,) = sync_repository.lines_of(connection, "acme", [T0.date().replace(day=1)])
    _stripe(laptop, "POST", f"/v1/invoices/{draft}/add_lines", {
        "lines[0][amount]": "500", "lines[0][description]": "someone else's",
        "lines[0][metadata][billsync_line_id]": str(line.id),
        "lines[0][metadata][billsync_version]": str(line.version),
        "lines[0][metadata][billsync_account]": "acme",
        f"lines[0][metadata][{NAMESPACE_KEY}]": "staging",
    })  # fmt: skip
    report = _verifier(laptop).verify()
    assert [v.kind for v in report.violations] == [EXTRA_IN_STRIPE, "total_differs"]
    assert laptop.sync.reconciler is not None
    drift = laptop.sync.reconciler.reconcile("acme", repair=True)
    (extra,) = drift.items
    assert extra.kind == "extra_in_stripe"
    assert "'staging'" in extra.detail
    assert not extra.repaired
    laptop.ingest.ingest([event("acme", EGRESS, "1", at=T0, region="iad")])
    assert laptop.sync.service.sync_account("acme").ok
    after = _stripe(laptop, "GET", f"/v1/invoices/{draft}")
    descriptions = [item["description"] for item in after["lines"]["data"]]
    assert "someone else's" in descriptions
    with laptop.database.read() as connection:
        (grown,) = sync_repository.lines_of(connection, "acme", [T0.date().replace(day=1)])
    assert grown.amount > line.amount
    assert after["total"] == grown.amount + 500  # ours pushed, theirs left as it was


def test_a_ledger_synced_in_test_mode_refuses_a_live_key(
    laptop: Billsync, tmp_path: Path, stripe_peer: StripePeer
) -> None:
    running_emulator = stripe_peer.need_emulator()  # a live key is never sent to Stripe here
    database = laptop.database
    _sync(laptop, "acme", "10")
    with database.read() as connection:
        assert installation_repository.get(connection).stripe_mode == "test"
    live = emulator_settings(tmp_path / "live", running_emulator).model_copy(
        update={"stripe_api_key": "sk_live_billsyncEmulatorKey01"}
    )
    running_emulator.control("DELETE", "stats")
    billsync = build(live, clock=laptop.clock, database=database, catalog=laptop.catalog)
    try:
        assert billsync.sync is not None
        outcome = billsync.sync.service.sync_account("acme")
    finally:
        billsync.close()
    assert outcome.error is not None
    assert "synced to Stripe in test mode and the configured key is a live key" in outcome.error
    assert running_emulator.control("GET", "stats")["total"] == 0  # nothing sent to live mode
    with database.read() as connection:
        row = installation_repository.get(connection)
    checks = {c.name: c for c in diagnose(live, None, row)}
    assert checks == {"stripe key": checks["stripe key"]}  # no Stripe to check without a port
    gateway = StripeGateway(live.stripe_api_key or "", api_base=running_emulator.url)
    check = {c.name: c for c in diagnose(live, gateway, row)}["installation"]
    assert not check.ok
    assert "test mode" in check.found


def test_a_database_that_wrote_to_stripe_before_namespaces_keeps_its_keys(
    database: Database,
) -> None:
    """Upgrading keeps the keys and metadata an installation's objects were made with (the
    empty namespace); a database that has not written to Stripe yet gets one of its own."""
    with database.read() as connection:
        before = installation_repository.get(connection).namespace
    try:
        migrate.downgrade(database, "0008")
        migrate.upgrade(database)
        with database.read() as connection:
            fresh = installation_repository.get(connection).namespace
        assert len(fresh) == 8
        migrate.downgrade(database, "0008")
        with database.transaction() as connection:
            connection.execute(
                text(
                    "INSERT INTO accounts (id, name, currency, stripe_customer_id,"
                    " billing_anchor_day, created_at, updated_at)"
                    " VALUES ('old', 'old', 'usd', 'cus_old', 1, :t, :t)"
                ),
                {"t": T0.replace(tzinfo=None) if database.is_sqlite else T0},
            )
        migrate.upgrade(database)
        with database.read() as connection:
            assert installation_repository.get(connection).namespace == ""
        assert idempotency_key("customer", "old", namespace="") == "billsync:customer:old"
    finally:
        with database.transaction() as connection:
            connection.execute(accounts.delete().where(accounts.c.id == "old"))
            connection.execute(update(installation).values(namespace=before))


def test_namespaces_and_modes_are_checked() -> None:
    with pytest.raises(ValidationError, match="cannot be a Stripe namespace"):
        Settings(stripe_namespace="Staging Server")
    assert Settings(stripe_namespace="laptop-ana").stripe_namespace == "laptop-ana"
    assert key_mode("rk_live_x") == "live"
    assert key_mode("sk_test_x") == "test"
    assert key_mode("pk_test_x") is None
    assert mode_conflict("test", "test") is None
    assert mode_conflict(None, "live") is None
    assert mode_conflict("live", "test") is not None
    assert idempotency_key("invoice", "acme:2026-11-01", namespace="ns1") == (
        "billsync:ns1:invoice:acme:2026-11-01"
    )
