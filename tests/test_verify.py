"""``billsync verify`` on SQLite and PostgreSQL against the emulator over HTTP: a clean ledger
passes; each invariant, broken on purpose (in Stripe through its API, or in the ledger by hand),
is reported under its own kind; lines waiting for a sync and differences a person accepted are
not violations."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from billsync.bootstrap import Billsync, build
from billsync.cli.main import app as cli
from billsync.clock import ManualClock
from billsync.core.catalog import Catalog
from billsync.db.database import Database
from billsync.db.tables import lines, usage_events
from billsync.repositories import sync as sync_repository
from billsync.services import console_views
from billsync.services.lifecycle import LifecycleService, LifecycleSettings
from billsync.services.reconcile import Reconciler
from billsync.services.sync import SyncService
from billsync.services.verify import Verifier, VerifyReport
from billsync.stripe_gateway import StripeGateway
from tests.conftest import T0, cli_against_emulator, emulator_settings
from tests.factories import create_account, event
from tests.stripe_peer import EMULATOR_KEY, RunningEmulator

NOVEMBER = date(2026, 11, 1)
HEADERS = {"Authorization": f"Bearer {EMULATOR_KEY}"}


class World:
    def __init__(self, billsync: Billsync, emulator: RunningEmulator, clock: ManualClock) -> None:
        self.billsync = billsync
        self.emulator = emulator
        self.clock = clock
        self.gateway = StripeGateway(
            EMULATOR_KEY, api_base=emulator.url, timeout=2.0, max_network_retries=0
        )
        self.sync = SyncService(billsync.database, self.gateway, billsync.catalog, clock)
        self.lifecycle = LifecycleService(
            billsync.database, clock, self.sync,
            LifecycleSettings(grace=timedelta(hours=1), review_window=timedelta(hours=2)),
        )  # fmt: skip
        self.verifier = Verifier(billsync.database, self.gateway)

    def verify(self) -> VerifyReport:
        return self.verifier.verify()

    def stripe(self, method: str, path: str, data: dict[str, Any] | None = None) -> Any:
        response = httpx.request(
            method, f"{self.emulator.url}{path}", data=data, headers=HEADERS, timeout=10
        )
        response.raise_for_status()
        return response.json()

    def egress(self, account: str, region: str, gb: str, at: datetime = T0) -> None:
        report = self.billsync.ingest.ingest(
            [event(account, "bandwidth.egress.na-eu.gb", gb, at=at, region=region)]
        )
        assert report.accepted == 1, report

    def synced(self, account: str = "acme", regions: tuple[str, ...] = ("iad", "cdg")) -> str:
        create_account(self.billsync, account)
        for region in regions:
            self.egress(account, region, "100")
        assert self.sync.sync_account(account).ok
        return self.invoice(account)

    def invoice(self, account: str = "acme", start: date = NOVEMBER) -> str:
        with self.billsync.database.read() as connection:
            period = sync_repository.get_period(connection, account, start)
        assert period is not None
        assert period.stripe_invoice_id is not None
        return period.stripe_invoice_id

    def stripe_lines(self, invoice_id: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.stripe(
            "GET", f"/v1/invoices/{invoice_id}/lines?limit=100"
        )["data"]
        return found


@pytest.fixture
def world(billsync: Billsync, running_emulator: RunningEmulator, clock: ManualClock) -> World:
    return World(billsync, running_emulator, clock)


def kinds(report: VerifyReport) -> dict[str, int]:
    return report.by_kind()


def test_a_clean_ledger_in_step_with_stripe_passes(world: World) -> None:
    world.synced("acme", ("iad", "cdg"))
    world.synced("globex", ("fra",))
    world.egress("acme", "iad", "5")  # a second event on a line
    assert world.sync.sync_account("acme").ok

    report = world.verify()

    assert report.ok, report.to_json()
    assert (report.accounts, report.periods, report.invoices) == (2, 2, 2)
    assert (report.lines, report.events, report.pending_lines) == (3, 4, 0)


def test_each_stripe_side_break_is_a_violation_of_its_kind(world: World) -> None:
    invoice = world.synced("acme", ("iad", "cdg", "fra"))
    by_region = {line["metadata"]["billsync_line_id"]: line for line in world.stripe_lines(invoice)}
    with world.billsync.database.read() as connection:
        ledger = {
            line.grouping["region"]: line
            for line in sync_repository.lines_of(connection, "acme", [NOVEMBER])
        }
    iad, cdg, fra = (by_region[str(ledger[region].id)] for region in ("iad", "cdg", "fra"))
    # Edited by hand, removed by hand, added by hand, and one of billsync's lines added twice.
    world.stripe("POST", f"/v1/invoices/{invoice}/update_lines",
                 {"lines[0][id]": iad["id"], "lines[0][amount]": "9999"})  # fmt: skip
    world.stripe("POST", f"/v1/invoices/{invoice}/remove_lines",
                 {"lines[0][id]": cdg["id"], "lines[0][behavior]": "delete"})  # fmt: skip
    world.stripe("POST", f"/v1/invoices/{invoice}/add_lines",
                 {"lines[0][amount]": "500", "lines[0][description]": "Goodwill"})  # fmt: skip
    world.stripe("POST", f"/v1/invoices/{invoice}/add_lines", {
        "lines[0][amount]": str(fra["amount"]), "lines[0][description]": "again",
        **{f"lines[0][metadata][{k}]": v for k, v in fra["metadata"].items()},
    })  # fmt: skip

    report = world.verify()

    assert not report.ok
    # The kinds reconcile records for the same breaks (one comparison: core.drift).
    assert kinds(report) == {
        "amount_differs": 1,
        "extra_in_stripe": 1,
        "duplicate_in_stripe": 1,
        "removed_in_stripe": 1,
        "total_differs": 1,
    }
    edited = next(v for v in report.violations if v.kind == "amount_differs")
    assert (edited.line_id, edited.ledger_amount, edited.stripe_amount) == (
        ledger["iad"].id, ledger["iad"].amount, 9999,
    )  # fmt: skip
    assert next(v for v in report.violations if v.kind == "removed_in_stripe").line_id == (
        ledger["cdg"].id
    )
    twice = next(v for v in report.violations if v.kind == "duplicate_in_stripe")
    assert twice.line_id == ledger["fra"].id
    assert twice.stripe_amount == ledger["fra"].amount  # the extra copy
    assert "is on the invoice 2 times" in twice.detail


def test_invoices_finalized_voided_or_unknown_to_the_ledger_are_violations(
    world: World,
) -> None:
    acme = world.synced("acme", ("iad",))
    globex = world.synced("globex", ("iad",))
    world.synced("initech", ("iad",))
    world.stripe("POST", f"/v1/invoices/{acme}/finalize")  # behind billsync's back
    world.stripe("POST", f"/v1/invoices/{globex}/finalize")
    world.stripe("POST", f"/v1/invoices/{globex}/void")
    with world.billsync.database.read() as connection:
        initech = sync_repository.get_account(connection, "initech")
    assert initech is not None
    assert initech.stripe_customer_id is not None
    stray = world.stripe("POST", "/v1/invoices", {
        "customer": initech.stripe_customer_id, "auto_advance": "false",
        "metadata[billsync_account]": "initech",
        "metadata[billsync_namespace]": world.sync.namespace,  # this installation's
    })  # fmt: skip
    world.stripe("POST", f"/v1/invoices/{stray['id']}/add_lines",
                 {"lines[0][amount]": "700", "lines[0][description]": "second charge"})  # fmt: skip

    report = world.verify()

    assert kinds(report) == {
        "finalized_in_stripe_only": 1,
        "invoice_voided": 1,
        "unknown_invoice": 1,
    }
    found = {v.kind: v for v in report.violations}
    assert found["finalized_in_stripe_only"].account == "acme"
    assert found["invoice_voided"].account == "globex"
    assert (found["unknown_invoice"].stripe_invoice_id, found["unknown_invoice"].stripe_amount) == (
        stray["id"], 700,
    )  # fmt: skip


def test_ledger_side_breaks_are_found_without_stripe(world: World, database: Database) -> None:
    create_account(world.billsync, "acme")
    world.billsync.ingest.ingest([
        event("acme", "bandwidth.egress.na-eu.gb", "100", at=T0, event_id="a", region="iad"),
        event("acme", "bandwidth.egress.na-eu.gb", "100", at=T0, event_id="b", region="cdg"),
        event("acme", "bandwidth.egress.na-eu.gb", "1", at=T0, event_id="c", region="iad"),
        event("acme", "ip.ipv4.hours", "24", at=T0, event_id="d"),
    ])  # fmt: skip
    verifier = Verifier(database, None)  # the ledger alone
    assert verifier.verify().ok
    with database.transaction() as connection:
        ids = dict(connection.execute(select(lines.c.line_key, lines.c.id)).all())
    cdg = ids["bandwidth.egress.na-eu.gb[region=cdg]"]

    def move(event_id: str, line_id: int) -> None:
        with database.transaction() as connection:
            connection.execute(
                update(usage_events).where(usage_events.c.id == event_id).values(line_id=line_id)
            )

    move("c", cdg)  # iad's event counted on cdg's line: both lines' sums and counts break
    report = verifier.verify()
    assert report.invoices == 0
    assert kinds(report) == {"line_event_count_differs": 2, "line_quantity_differs": 2}
    assert {v.line_id for v in report.violations} == {
        ids["bandwidth.egress.na-eu.gb[region=iad]"],
        cdg,
    }

    move("c", ids["bandwidth.egress.na-eu.gb[region=iad]"])
    move("d", 999_999)  # an event on no line at all
    lost = verifier.verify()
    assert kinds(lost) == {
        "event_without_line": 1, "line_event_count_differs": 1, "line_quantity_differs": 1,
    }  # fmt: skip
    assert next(v for v in lost.violations if v.kind == "event_without_line").event_id == "d"

    move("d", cdg)  # on a line of another metric
    wrong = verifier.verify()
    assert wrong.by_kind()["event_on_wrong_line"] == 1


def test_late_usage_on_the_next_period_passes_and_on_the_wrong_line_fails(
    world: World, database: Database, clock: ManualClock
) -> None:
    world.synced("acme", ("iad",))
    clock.set(datetime(2026, 12, 1, 2, 0, tzinfo=UTC))  # November closed: grace over → review
    world.lifecycle.advance()
    world.egress("acme", "iad", "10", at=T0)  # November's usage, arriving late
    assert world.sync.sync_account("acme").ok
    with database.read() as connection:
        late = [line for line in sync_repository.lines_of(
            connection, "acme", [date(2026, 12, 1)]) if line.late_from == NOVEMBER]  # fmt: skip
    assert len(late) == 1

    clean = world.verify()
    assert clean.ok, clean.to_json()

    with database.transaction() as connection:  # label it as December's own usage
        connection.execute(update(lines).where(lines.c.id == late[0].id).values(late_from=None))
    broken = world.verify()
    assert kinds(broken) == {"late_usage_misplaced": 1}
    assert "labelled late from None instead of 2026-11-01" in broken.violations[0].detail


def test_late_usage_arriving_on_two_invoices_gets_the_graduated_tiers_once(
    world: World, database: Database, clock: ManualClock
) -> None:
    """Volumes: the first 2,190 GB-hours of a period are free. November's own line holds 2,000;
    190 late GB-hours land on December's invoice (still free: 2,190 billed); 1,000 more arrive
    once December is closed too, on January's — all 1,000 are past the free tier. Counting only
    November's own line as billed before would grant 190 free GB-hours a second time (17¢
    instead of 21¢); verify, which re-rates every line, catches an amount that does."""
    create_account(world.billsync, "acme")

    def volume(gb_hours: str) -> None:
        at = datetime(2026, 11, 28, tzinfo=UTC)  # November's, within the usage horizon in January
        report = world.billsync.ingest.ingest([event("acme", "volume.gb_hours", gb_hours, at=at)])
        assert report.accepted == 1, report

    def late_lines() -> list[Any]:
        with database.read() as connection:
            found = sync_repository.lines_of(
                connection, "acme", [date(2026, 12, 1), date(2027, 1, 1)]
            )
        return sorted((line for line in found if line.late_from == NOVEMBER),
                      key=lambda line: line.period_start)  # fmt: skip

    clock.set(datetime(2026, 11, 28, 12, 0, tzinfo=UTC))
    volume("2000")
    clock.set(datetime(2026, 12, 1, 2, 0, tzinfo=UTC))  # November closed
    world.lifecycle.advance()
    volume("190")
    clock.set(datetime(2027, 1, 1, 2, 0, tzinfo=UTC))  # December closed too
    world.lifecycle.advance()
    volume("1000")
    first, second = late_lines()
    assert (first.period_start, first.amount) == (date(2026, 12, 1), 0)
    assert (second.period_start, second.amount) == (date(2027, 1, 1), 21)  # 1000 × 0.000205…

    verifier = Verifier(database, None, catalog=world.billsync.catalog)
    assert verifier.verify().ok, verifier.verify().to_json()
    with database.transaction() as connection:  # what counting the own line only gave
        connection.execute(update(lines).where(lines.c.id == second.id).values(amount=17))
    broken = verifier.verify()
    assert kinds(broken) == {"line_amount_differs": 1}
    assert "amounts to 0.17; 1000 rates to 0.21 after 2190 already billed" in (
        broken.violations[0].detail
    )


def test_lines_waiting_for_a_sync_are_pending_and_accepted_drift_is_not_a_violation(
    world: World, database: Database, clock: ManualClock
) -> None:
    invoice = world.synced("acme", ("iad",))
    world.egress("acme", "iad", "50")  # not pushed yet
    world.egress("acme", "fra", "5")  # a new line, not pushed yet
    report = world.verify()
    assert report.ok, report.to_json()
    assert report.pending_lines == 2

    assert world.sync.sync_account("acme").ok
    world.stripe("POST", f"/v1/invoices/{invoice}/add_lines",
                 {"lines[0][amount]": "250", "lines[0][description]": "Goodwill"})  # fmt: skip
    assert kinds(world.verify()) == {"extra_in_stripe": 1, "total_differs": 1}

    reconciler = Reconciler(database, world.gateway, world.sync, clock)
    (drift,) = reconciler.reconcile(repair=False).items
    reconciler.accept_stripe(drift.problem_id or 0)
    accepted = world.verify()
    # The accepted line explains the whole difference of the total: nothing is left red.
    assert sorted(v.kind for v in accepted.accepted) == ["extra_in_stripe", "total_differs"]
    assert accepted.ok, accepted.to_json()


def test_an_accepted_amount_is_what_the_customer_sees_stripe_charges_and_verify_explains(
    world: World, database: Database, clock: ManualClock
) -> None:
    """Support accepts Stripe's amount for an edited line: the customer's bill shows that
    amount (the invoice's, to the cent), verify counts the difference as explained, the line
    is in step (no sync wasted on it, the account not behind) — until the ledger line changes,
    when the ledger's amount is pushed again."""
    invoice = world.synced("acme", ("iad", "cdg"))
    first, second = world.stripe_lines(invoice)
    world.stripe("POST", f"/v1/invoices/{invoice}/update_lines",
                 {"lines[0][id]": first["id"], "lines[0][amount]": "7"})  # fmt: skip
    reconciler = Reconciler(database, world.gateway, world.sync, clock)
    (drift,) = reconciler.reconcile(repair=False).items
    assert drift.kind == "amount_differs"
    reconciler.accept_stripe(drift.problem_id or 0)

    report = world.verify()
    assert report.ok, report.to_json()
    assert sorted(v.kind for v in report.accepted) == ["amount_differs", "total_differs"]
    stripe_total = world.stripe("GET", f"/v1/invoices/{invoice}")["total"]
    with database.read() as connection:
        account = world.billsync.accounts.get(connection, "acme")
        bill = world.billsync.billing.bill(connection, account)
        behind = sync_repository.sync_row(connection, "acme")
    assert bill.total == stripe_total
    states = {item.line.key: (item.state.value, item.charged) for item in bill.lines}
    assert sorted(states.values()) == sorted([("accepted", 7), ("in_stripe", second["amount"])])
    assert behind is not None
    assert not behind["behind"]
    world.emulator.control("DELETE", "stats")
    assert world.sync.sync_account("acme").ok
    assert world.emulator.control("GET", "stats")["total"] == 0  # nothing to push

    world.egress("acme", "iad", "1")
    world.egress("acme", "cdg", "1")
    assert world.sync.sync_account("acme").ok
    with database.read() as connection:
        bill = world.billsync.billing.bill(connection, account)
    assert {item.state.value for item in bill.lines} == {"in_stripe"}
    assert bill.total == world.stripe("GET", f"/v1/invoices/{invoice}")["total"]
    assert world.verify().ok


def test_an_accepted_amount_stays_explained_once_the_invoice_is_finalized(
    world: World, database: Database, clock: ManualClock
) -> None:
    """The accepted difference goes onto the finalized invoice as Stripe's amount: reconcile
    then finds the finalized total what the lines' charged amounts add up to (no new
    ``total_differs`` for support to decide again), and verify still counts it as explained."""
    invoice = world.synced("acme", ("iad", "cdg"))
    first, second = world.stripe_lines(invoice)
    world.stripe("POST", f"/v1/invoices/{invoice}/update_lines",
                 {"lines[0][id]": first["id"], "lines[0][amount]": "7"})  # fmt: skip
    reconciler = Reconciler(database, world.gateway, world.sync, clock)
    (drift,) = reconciler.reconcile(repair=False).items
    reconciler.accept_stripe(drift.problem_id or 0)
    clock.set(datetime(2026, 12, 1, 2, 0, tzinfo=UTC))  # grace over: November in review
    world.lifecycle.advance()
    assert world.lifecycle.approve_now("acme", NOVEMBER) is True
    finalized = world.stripe("GET", f"/v1/invoices/{invoice}")
    assert finalized["status"] != "draft"
    assert finalized["total"] == 7 + second["amount"]  # Stripe's amount, as accepted
    after = reconciler.reconcile(repair=False)
    assert after.items == [], [(i.kind, i.detail) for i in after.items]
    report = world.verify()
    assert report.ok, report.to_json()
    assert "amount_differs" in {v.kind for v in report.accepted}


def test_the_cli_prints_a_readable_report_and_exits_1_on_a_violation(
    world: World, database: Database, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli_against_emulator(monkeypatch, tmp_path, database, world.emulator)
    invoice = world.synced("acme", ("iad",))
    runner = CliRunner()

    clean = runner.invoke(cli, ["verify"])
    assert clean.exit_code == 0, clean.output
    assert "all invariants hold" in clean.stdout
    assert "1 Stripe invoice(s)" in clean.stdout

    world.egress("acme", "iad", "1")
    waiting = runner.invoke(cli, ["verify", "--require-synced"])
    assert waiting.exit_code == 1, waiting.output
    assert "1 line(s) waiting for the next sync" in waiting.stdout

    assert world.sync.sync_account("acme").ok
    (line,) = world.stripe_lines(invoice)
    world.stripe("POST", f"/v1/invoices/{invoice}/update_lines",
                 {"lines[0][id]": line["id"], "lines[0][amount]": "1"})  # fmt: skip
    broken = runner.invoke(cli, ["verify", "--json"])
    assert broken.exit_code == 1, broken.output
    data = json.loads(broken.stdout)
    assert data["ok"] is False
    assert data["violations_by_kind"] == {"amount_differs": 1, "total_differs": 1}
    assert data["checked"]["invoices"] == 1
    table = runner.invoke(cli, ["verify"])
    assert table.exit_code == 1
    assert "amount_differs" in table.stdout
    assert "2 violation(s)" in table.stdout


def test_with_discounts_none_a_customers_coupon_stays_off_billsyncs_invoices(
    tmp_path: Path,
    database: Database,
    clock: ManualClock,
    example_catalog: Catalog,
    running_emulator: RunningEmulator,
) -> None:
    """``BILLSYNC_STRIPE_DISCOUNTS=none``: billsync's drafts do not inherit the customer's
    coupon, so Stripe charges the ledger's total; the customer's page shows no discount and
    verify has nothing to explain."""
    settings = emulator_settings(tmp_path, running_emulator, stripe_discounts="none")
    billsync = build(settings, clock=clock, database=database, catalog=example_catalog)
    assert billsync.sync is not None
    try:
        create_account(billsync, "acme")
        customer = billsync.sync.service.ensure_customer("acme")
        coupon = httpx.post(
            f"{running_emulator.url}/v1/coupons", data={"percent_off": "10", "duration": "forever"},
            headers=HEADERS, timeout=10,
        ).json()  # fmt: skip
        httpx.post(
            f"{running_emulator.url}/v1/customers/{customer}", data={"coupon": coupon["id"]},
            headers={**HEADERS, "Stripe-Version": "2025-02-24.acacia"}, timeout=10,
        ).raise_for_status()  # fmt: skip
        billsync.ingest.ingest(
            [event("acme", "bandwidth.egress.na-eu.gb", "5000", at=T0, region="iad")]
        )
        assert billsync.sync.service.sync_account("acme").ok
        with database.read() as connection:
            period = sync_repository.get_period(connection, "acme", NOVEMBER)
            assert period is not None
            account = billsync.accounts.get(connection, "acme")
            bill = billsync.billing.bill(connection, account)
        draft = httpx.get(
            f"{running_emulator.url}/v1/invoices/{period.stripe_invoice_id}",
            headers=HEADERS, timeout=10,
        ).json()  # fmt: skip
        assert draft["discounts"] == []
        assert draft["total"] == draft["subtotal"] > 0
        assert (bill.discount, bill.total) == (0, draft["total"])
        report = Verifier(database, billsync.sync.service.gateway).verify()
        assert report.ok, report.to_json()
        assert report.explained == []
    finally:
        billsync.close()


def test_a_coupon_a_credit_balance_and_the_minimum_charge_agree_everywhere(
    world: World, database: Database, clock: ManualClock
) -> None:
    """What Stripe adds besides the lines, end to end: acme has a 10 % coupon and a 1.50 credit;
    tiny owes 0.30, under Stripe's minimum charge. The customer's page shows the discount on
    the draft and, once finalized, the credit applied and the amount carried; verify finds the
    ledger equal to each invoice's lines and lists the coupon as explained."""
    create_account(world.billsync, "acme")
    create_account(world.billsync, "tiny")
    customer = world.sync.ensure_customer("acme")
    coupon = world.stripe("POST", "/v1/coupons", {"percent_off": "10", "duration": "forever"})
    # Customers take a coupon only on API versions before 2025-03-31 (the changelog's
    # "deprecate-singular-coupon-promotion-code"); billsync never sets one itself.
    httpx.post(
        f"{world.emulator.url}/v1/customers/{customer}", data={"coupon": coupon["id"]},
        headers={**HEADERS, "Stripe-Version": "2025-02-24.acacia"}, timeout=10,
    ).raise_for_status()  # fmt: skip
    world.stripe("POST", f"/v1/customers/{customer}/balance_transactions",
                 {"amount": "-150", "currency": "usd"})  # fmt: skip
    world.egress("acme", "iad", "5000")
    world.egress("tiny", "iad", "15")
    assert world.sync.sync_account("acme").ok
    assert world.sync.sync_account("tiny").ok

    draft = world.stripe("GET", f"/v1/invoices/{world.invoice('acme')}")
    discount = sum(d["amount"] for d in draft["total_discount_amounts"])
    assert discount > 0
    with database.read() as connection:
        account = world.billsync.accounts.get(connection, "acme")
        bill = world.billsync.billing.bill(connection, account)
    assert (bill.subtotal, bill.discount, bill.total) == (
        draft["subtotal"], discount, draft["total"]
    )  # fmt: skip
    report = world.verify()
    assert report.ok, report.to_json()
    assert [v.kind for v in report.explained] == ["total_differs"]

    clock.set(datetime(2026, 12, 1, 2, 0, tzinfo=UTC))  # November in review
    world.lifecycle.advance()
    clock.advance(timedelta(hours=2, minutes=1))  # the review window is over: finalized
    world.lifecycle.advance()
    acme = world.stripe("GET", f"/v1/invoices/{world.invoice('acme')}")
    tiny = world.stripe("GET", f"/v1/invoices/{world.invoice('tiny')}")
    assert acme["amount_due"] == acme["total"] - 150
    assert (tiny["status"], tiny["amount_due"]) == ("paid", 0)  # under the minimum: carried
    with database.read() as connection:
        past = {
            name: world.billsync.billing.bill(
                connection, world.billsync.accounts.get(connection, name)
            ).invoices
            for name in ("acme", "tiny")
        }
    (acme_bill,) = past["acme"]
    assert (acme_bill.total, acme_bill.discount) == (acme["total"], discount)
    assert (acme_bill.balance_applied, acme_bill.amount_due) == (-150, acme["amount_due"])
    (tiny_bill,) = past["tiny"]
    assert (tiny_bill.carried, tiny_bill.amount_due) == (tiny["total"], 0)
    final = world.verify()
    assert final.ok, final.to_json()
    assert [v.kind for v in final.explained] == ["total_differs"]
    # Support's console shows the same, each as a row of its own beside the lines.
    with database.read() as connection:
        seen = {
            name: next(
                pv.stripe_adds
                for pv in console_views.account_view(connection, name).periods  # type: ignore[union-attr]
                if pv.period.start == NOVEMBER
            )
            for name in ("acme", "tiny")
        }
    assert seen["acme"] == [
        ("Discount (coupon)", -discount),
        ("Customer balance applied", -150),
        ("Amount due", acme["amount_due"]),
    ]
    assert seen["tiny"] == [
        ("Under Stripe's minimum charge: carried to the next invoice", -tiny["total"]),
        ("Amount due", 0),
    ]
